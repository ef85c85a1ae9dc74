"""The pipeline's topics: which exist, which role reads and writes which, and creating them.

The one place that says it: the app's Faust topics (`streams.agents.app.make_topics`), the
sink's decoding per topic, the alerts topic, the tests' and the bench's consumer-group
checks all read the names and roles below. Names are without the prefix;
`Topology.topic` adds `REFSTREAM_TOPIC_PREFIX`.

Topics are created with CreateTopics and Metadata requests only: the local broker (Tansu)
supports those but not DescribeConfigs or CreatePartitions, and production Kafka supports all.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.adapters.kafka import client_kwargs
from streams.config import ROLES as ROLE_NAMES
from streams.config import Settings

CLICKS, SIGNUPS, ORDERS = "clicks", "signups", "orders"
PROMOTERS, EXCLUSIONS, FX_RATES = "promoters", "exclusions", "fx_rates"
REVIEWS = "reviews"
VISITOR_JOIN, ACCOUNT_JOIN, PROMOTER_JOIN = "visitor-join", "account-join", "promoter-join"
CONVERSIONS, LATE_EVENTS, DEAD_LETTERS, ALERTS = "conversions", "late-events", "dead-letters", "alerts"

RAW_TOPICS = (CLICKS, SIGNUPS, ORDERS)  # raw events, routed to the joins
REFERENCE_TOPICS = (PROMOTERS, EXCLUSIONS, FX_RATES)  # compacted reference data
#: inputs the sink's `reference` agent validates and writes straight to ClickHouse: the
#: reference data, and review decisions (not compacted, not read by the joins)
STORED_INPUTS = REFERENCE_TOPICS + (REVIEWS,)
#: the join topics the sink stores: they carry the raw events (and the attributions)
STORED_JOINS = (VISITOR_JOIN, ACCOUNT_JOIN)
#: internal msgpack batches between router and joins; Faust creates them (`Settings.partitions`).
#: `promoter-join` carries the account join's decisions to the promoter stage: derived records
#: the sink does not store (it stores their priced conversions)
JOIN_TOPICS = STORED_JOINS + (PROMOTER_JOIN,)
RESULT_TOPICS = (CONVERSIONS, LATE_EVENTS, DEAD_LETTERS)  # what the joins (and router) output
SINK_INPUTS = STORED_JOINS + RESULT_TOPICS  # what `sink_to_clickhouse` stores
INPUT_TOPICS = RAW_TOPICS + STORED_INPUTS
OUTPUT_TOPICS = RESULT_TOPICS + (ALERTS,)
Sources = tuple[str, ...]  # the upstream clocks one join's watermark waits for
# Kafka's rule for topic names.
_LEGAL = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


@dataclass(frozen=True)
class Role:
    """What the workers of one role (`REFSTREAM_ROLE`) consume and produce."""

    name: str
    reads: tuple[str, ...]  # consumed by its agents in its consumer group (offsets committed)
    follows: tuple[str, ...]  # read whole from the start by a group-less consumer, never committed
    writes: tuple[str, ...]


#: router and joins; the joins' reference directories follow promoters, exclusions and fx_rates
STREAM = Role("stream", reads=RAW_TOPICS + JOIN_TOPICS, follows=REFERENCE_TOPICS,
              writes=JOIN_TOPICS + RESULT_TOPICS)
#: ClickHouse sink and the writer of the stored inputs (bad messages are dead-lettered), spike alerts,
#: and the review queue's decisions (the dashboard's approve / reject publish to `reviews`)
SINK = Role("sink", reads=STORED_INPUTS + SINK_INPUTS, follows=(), writes=(DEAD_LETTERS, ALERTS, REVIEWS))
ALL = Role("all", reads=_union(STREAM.reads, SINK.reads), follows=STREAM.follows,
           writes=_union(STREAM.writes, SINK.writes))
ROLES: dict[str, Role] = {r.name: r for r in (ALL, STREAM, SINK)}
assert set(ROLES) == set(ROLE_NAMES), "every role Settings accepts has its topics here"


@dataclass(frozen=True)
class Topology:
    """The roles' topics and consumer groups under one deployment's settings (prefix, app id)."""

    settings: Settings

    def topic(self, name: str) -> str:
        """The Kafka name of topic `name`: with the prefix."""
        return self.settings.topic(name)

    def topics(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.topic(n) for n in names)

    def name_of(self, topic: str) -> str:
        """The name (without the prefix) of a prefixed Kafka topic name."""
        prefix = self.settings.topic_prefix
        return topic[len(prefix):] if topic.startswith(prefix) else topic

    def role(self, name: str | None = None) -> Role:
        """Role `name`, by default the settings' own."""
        return ROLES[name or self.settings.role]

    def group(self, role: str | None = None) -> str:
        """The consumer group of role `role` (default: the settings' role; see `Settings.group_id`)."""
        return dataclasses.replace(self.settings, role=role or self.settings.role).group_id

    def groups(self, roles: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Consumer group -> the topics (names) it reads, for workers of `roles`; roles that
        share a group (`all` and `stream`) read the union."""
        out: dict[str, tuple[str, ...]] = {}
        for name in roles:
            group = self.group(name)
            out[group] = _union(out.get(group, ()), ROLES[name].reads)
        return out

    def join_sources(self, raw_partitions: Mapping[str, int]) -> tuple[Sources, Sources, Sources]:
        """The upstream partitions whose event-time progress each join's watermark waits for,
        as (visitor, account, promoter): the raw partitions routed to a join, for the account
        join also the visitor join's partitions, for the promoter stage the account join's."""
        def raw(name: str) -> list[str]:
            return [f"{self.topic(name)}/{i}" for i in range(raw_partitions[name])]
        joins = range(self.settings.partitions)
        visitor = tuple(raw(CLICKS) + raw(SIGNUPS))
        account = tuple(raw(ORDERS) + [visitor_source(p) for p in joins])
        promoter = tuple(account_source(p) for p in joins)
        return visitor, account, promoter


def visitor_source(partition: int) -> str:
    """The clock name under which visitor-join partition `partition` feeds the account join."""
    return f"visitor/{partition}"


def account_source(partition: int) -> str:
    """The clock name under which account-join partition `partition` feeds the promoter stage."""
    return f"account/{partition}"


def is_derived(source: str) -> bool:
    """Whether `source` is a join partition (its clock that join's watermark), not a raw
    input partition (`<prefix>clicks/3`: raw topic names never end in visitor or account)."""
    return source.startswith(("visitor/", "account/"))


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
    bad = [t for t in wanted if not _LEGAL.fullmatch(t) or t in (".", "..")]
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
