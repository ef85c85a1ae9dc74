"""The pipeline's topics on the brokers: creating the missing ones and reading partition
counts, through the Kafka clients' security settings (streams/adapters/kafka.py).

Topics are created with CreateTopics and Metadata requests only: the local broker (Tansu)
supports those but not DescribeConfigs or CreatePartitions, and production Kafka supports all.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.adapters.kafka import client_kwargs
from streams.config import Settings
from streams.topology import INPUT_TOPICS, LEGAL_TOPIC, OUTPUT_TOPICS


async def ensure_topics(
    settings: Settings,
    names: Sequence[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create each of `names` (prefixed via `settings.topic`) that does not exist yet.

    Existing topics are left as they are (their partition count is not changed).
    A topic created concurrently by someone else counts as success.
    """
    wanted = list(dict.fromkeys(settings.topic(n) for n in names))
    # Tansu also accepts 0 partitions and bad names where Kafka refuses: refuse them here.
    if partitions < 1 or replication_factor < 1:
        raise ValueError("partitions and replication_factor must be at least 1")
    bad = [t for t in wanted if not LEGAL_TOPIC.fullmatch(t) or t in (".", "..")]
    if bad:
        raise ValueError(f"illegal Kafka topic names (allowed: A-Z a-z 0-9 . _ -): {bad}")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-topics",
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(t, partitions, replication_factor) for t in missing],
            timeout_ms=int(timeout_s * 1000),
        )
        # create_topics does not raise per-topic errors; entries are (topic, code[, message]).
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            if code == 0 or code == TopicAlreadyExistsError.errno:
                continue
            message = entry[2] if len(entry) > 2 and entry[2] else ""
            raise for_code(code)(f"could not create topic {topic!r}: {message}".rstrip(": "))
    finally:
        await admin.close()


def ensure_topics_sync(
    settings: Settings,
    names: Sequence[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """`ensure_topics` for callers without an event loop (CLI, fixtures)."""
    asyncio.run(
        ensure_topics(
            settings, names, partitions,
            replication_factor=replication_factor, timeout_s=timeout_s,
        )
    )


async def ensure_pipeline_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Create the missing input and output topics (or `names`) as the settings ask."""
    await ensure_topics(settings, INPUT_TOPICS + OUTPUT_TOPICS if names is None else names,
                        settings.partitions, replication_factor=settings.replication_factor)


def ensure_pipeline_topics_sync(settings: Settings) -> None:
    asyncio.run(ensure_pipeline_topics(settings))


async def partition_counts(settings: Settings, names: Sequence[str], timeout_s: float = 30.0) -> dict[str, int]:
    """Partitions of each existing topic in `names` (prefixed); the joins' clocks need them."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=int(timeout_s * 1000), **client_kwargs(settings))
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata for every topic
        counts: dict[str, int] = {}
        for name in names:
            parts = consumer.partitions_for_topic(settings.topic(name))
            if not parts:
                raise RuntimeError(f"topic {settings.topic(name)!r} does not exist; create it or run "
                                   "`refstream worker` without --no-create-topics")
            counts[name] = len(parts)
        return counts
    finally:
        await consumer.stop()


def partition_counts_sync(settings: Settings, names: Sequence[str]) -> dict[str, int]:
    return asyncio.run(partition_counts(settings, names))
