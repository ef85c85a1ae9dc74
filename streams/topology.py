"""The pipeline's topics: which exist and which role reads and writes which (creating them on
the brokers: streams/adapters/topics.py).

The one place that says it: the app's Faust topics (`streams.agents.app.make_topics`), the
sink's decoding per topic, the alerts topic, the tests' and the bench's consumer-group
checks all read the names and roles below. Names are without the prefix;
`Topology.topic` adds `REFSTREAM_TOPIC_PREFIX`.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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
LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


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
