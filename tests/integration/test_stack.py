"""The local stack: Tansu + Redis + topics end to end (integration)."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.adapters.topics import ensure_topics, ensure_topics_sync
from streams.dev import stack as local_stack
from streams.topology import INPUT_TOPICS, OUTPUT_TOPICS


@pytest.mark.integration
def test_topics_produce_consume_and_status(stack, topic_prefix: str) -> None:
    settings = stack.settings(topic_prefix=topic_prefix)
    names = INPUT_TOPICS + OUTPUT_TOPICS
    ensure_topics_sync(settings, names, 3)
    ensure_topics_sync(settings, names, 3)  # idempotent

    async def roundtrip() -> tuple[set[str], list[bytes]]:
        # Concurrent creators of the same topic must both succeed.
        await asyncio.gather(*(ensure_topics(settings, ["race"], 2) for _ in range(3)))
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("clicks"), b"hello", key=b"k1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            settings.topic("clicks"),
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        return topics, [msg.value]

    topics, values = asyncio.run(roundtrip())
    assert {settings.topic(n) for n in [*names, "race"]} <= topics
    assert values == [b"hello"]

    report = local_stack.status(settings)
    kafka, redis = report["kafka"], report["redis"]
    assert kafka["running"] and kafka["started_by_us"] and kafka["pid"]
    assert f"kafka://127.0.0.1:{kafka['port']}" == stack.kafka_url
    assert kafka["port"] != 9092
    assert redis["running"]


@pytest.mark.integration
def test_up_reuses_and_down_spares_foreign_services(stack, tmp_path) -> None:
    # A second data dir sees the session's services as someone else's.
    settings = stack.settings(data_dir=str(tmp_path))
    again = local_stack.up(settings)
    assert not any(s.started_by_us for s in again.services.values())
    local_stack.down(settings)
    report = local_stack.status(stack.base)
    assert report["kafka"]["running"] and report["redis"]["running"]
