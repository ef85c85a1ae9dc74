"""The local stack: port helpers (unit) and Tansu + Redis + topics end to end (integration)."""
from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams import stack as local_stack
from streams.config import Settings
from streams.topics import INPUT_TOPICS, OUTPUT_TOPICS, ensure_topics, ensure_topics_sync


def test_free_port_is_bindable() -> None:
    port = local_stack.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_port_times_out_with_clear_message() -> None:
    port = local_stack.free_port()
    with pytest.raises(TimeoutError, match=rf"127\.0\.0\.1:{port} within 0\.2 s"):
        local_stack.wait_port("127.0.0.1", port, timeout=0.2)


def test_wait_port_returns_once_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        local_stack.wait_port("127.0.0.1", s.getsockname()[1], timeout=2)


def test_tansu_binary_is_executable() -> None:
    assert local_stack.tansu_binary().stat().st_mode & 0o111


def test_probes_tell_services_apart() -> None:
    with socket.socket() as s:  # listens but never speaks Kafka or Redis
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not local_stack.kafka_answers("127.0.0.1", port, timeout=0.2)
        assert not local_stack.redis_answers("127.0.0.1", port, timeout=0.2)


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
    assert {settings.topic(n) for n in names + ["race"]} <= topics
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


def test_ensure_topics_refuses_what_kafka_refuses() -> None:
    # Tansu would accept these; production Kafka would not. No broker is contacted.
    with pytest.raises(ValueError, match="illegal"):
        ensure_topics_sync(Settings(), ["no spaces"], 1)
    with pytest.raises(ValueError, match="at least 1"):
        ensure_topics_sync(Settings(), ["ok"], 0)
