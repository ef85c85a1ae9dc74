"""Prometheus metrics of one worker. A registry per app keeps tests independent."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streams.logic.idleness import Position

SPIKE_KINDS = ("promoter", "tracking_code")


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("refstream_events_in", "Input messages consumed", ["topic"], registry=r)
        self.dead_letters = Counter(
            "refstream_dead_letters", "Input messages dead-lettered", ["topic"], registry=r
        )
        self.late_events = Counter(
            "refstream_late_events", "Events later than the allowed lateness", ["join", "kind"], registry=r
        )
        self.join_results = Counter(
            "refstream_join_results",
            "Join outcomes: signups attributed (hit) or organic (miss)",
            ["join", "result"], registry=r,
        )
        self.conversions = Counter(
            "refstream_conversions", "Conversion states emitted", ["status"], registry=r
        )
        self.watermark = Gauge(
            "refstream_watermark_ms", "Event-time watermark per join partition", ["join", "partition"],
            registry=r,
        )
        self.state_keys = Gauge("refstream_state_keys", "Keys in join state", ["join"], registry=r)
        self.join_idle_sources = Gauge(
            "refstream_join_idle_sources",
            "Idle source partitions a join partition leaves out of its watermark (set at every step)",
            ["join", "partition"], registry=r,
        )
        self.join_sources = Gauge(
            "refstream_join_sources",
            "Source partitions a join partition's watermark follows (idle ones included)",
            ["join", "partition"], registry=r,
        )
        self.idle_input_partitions = Gauge(
            "refstream_idle_input_partitions",
            "Raw input partitions this worker reads that are idle: no record for IDLE_PARTITION_S, nothing to read",
            ["topic"], registry=r,
        )
        self.state_refused = Counter(
            "refstream_state_refused", "Raw events dead-lettered because their key's join state is full",
            ["join"], registry=r,
        )
        self.sink_rows = Counter("refstream_sink_rows", "Rows written to ClickHouse", ["table"], registry=r)
        self.sink_seconds = Histogram(
            "refstream_sink_batch_seconds", "ClickHouse insert latency per table batch", ["table"],
            registry=r,
        )
        self.sink_failures = Counter(
            "refstream_sink_failures", "Failed ClickHouse inserts (retried)", ["table"], registry=r
        )
        self.sink_rejected_rows = Counter(
            "refstream_sink_rejected_rows", "Rows ClickHouse refused (dead-lettered, not retried)", ["table"],
            registry=r,
        )  # its labels, one per table, are exported at 0 by the sink (`SinkStep`): it knows the tables

        # Operator metrics the alert rules and dashboards in deploy/ read (wired by the agents).
        self.consumer_lag = Gauge(
            "refstream_consumer_lag", "Messages behind the end offset, per partition of an input or join topic",
            ["topic", "partition"],
            registry=r,
        )
        self.spikes = Counter(
            "refstream_referral_spikes", "Referral spike alerts", ["kind"], registry=r
        )
        # Export both kinds at 0 from the start: increase() in the alert rule cannot see
        # a counter's first increment when the series appears with it.
        for kind in SPIKE_KINDS:
            self.spikes.labels(kind)
        self.spike_score = Gauge(
            "refstream_referral_spike_score", "Score of the last spike alert: -log10 of its tail probability",
            ["kind"], registry=r,
        )
        self.fraud_reasons = Counter(
            "refstream_conversion_reasons", "Reasons attached to conversions", ["reason"], registry=r
        )
        self.redis_failures = Counter(
            "refstream_redis_failures", "Failed Redis operations", ["op"], registry=r
        )
        self.rereads = Counter(
            "refstream_rereads", "Partitions read again from a message Faust dropped before an agent finished it",
            ["topic"], registry=r
        )
        self.sink_batch_rows = Histogram(
            "refstream_sink_batch_rows", "Rows per ClickHouse table batch", ["table"], registry=r,
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


Partition = tuple[str, int]  # (topic, partition)


def partition_lag(assigned: Iterable[Any], read: Mapping[Any, int | None], committed: Mapping[Any, int | None],
                  highwaters: Mapping[Any, int | None], wanted: Collection[str]) -> dict[Partition, int]:
    """Lag per assigned partition of a `wanted` topic: messages from the next one to read to
    the partition's end (its high watermark, the offset the next message will get).

    Only the topics the worker's agents read count: Faust also assigns the tables'
    changelog topics, which it reads only to recover a table and not while it writes them,
    so their "lag" is whatever was written since the start (never worked off).

    The next offset is the last one read + 1, else (nothing read since the start or a
    rebalance) the committed offset, which in Kafka is already the next to read, else (a
    group that never committed) the start: a stall before the first commit shows as lag.
    A partition with no known end is skipped."""
    lags: dict[Partition, int] = {}
    for tp in assigned:
        if tp.topic not in wanted:
            continue
        end = highwaters.get(tp)
        if end is None:
            continue
        lags[(tp.topic, tp.partition)] = max(end - next_offset(tp, read, committed), 0)
    return lags


def next_offset(tp: Any, read: Mapping[Any, int | None], committed: Mapping[Any, int | None]) -> int:
    """The next offset a worker reads in `tp` (see `partition_lag`)."""
    last = read.get(tp)  # .get: Faust keeps both offsets in defaultdicts, [] would add keys
    return last + 1 if last is not None else committed.get(tp) or 0


def consumer_positions(consumer: Any, wanted: Collection[str]) -> dict[str, Position] | None:
    """Where a Faust consumer is in each assigned partition of the `wanted` topics, as
    {"topic/partition": Position}: what the router's idleness decision needs
    (streams/logic/idleness.py). The next offset is aiokafka's fetch position, which also
    steps over transaction markers (Faust's last read offset would stay below the end of a
    transactionally written partition forever); the end is its high watermark, which every
    fetch response carries, also for an empty partition. None when the consumer cannot tell
    now (not started, a rebalance under way)."""
    try:
        client = consumer._thread._ensure_consumer()  # Faust's aiokafka driver: the AIOKafkaConsumer
        subscription = client._subscription
        if subscription.reassignment_in_progress:
            return None
        states = subscription.subscription.assignment
        positions = {}
        for tp in consumer.assignment():
            if tp.topic in wanted:
                state = states.state_value(tp)
                at = state.position if state is not None and state.has_valid_position else None
                positions[f"{tp.topic}/{tp.partition}"] = Position(at, consumer.highwater(tp))
        return positions
    except Exception:
        return None


def observe_lag(metrics: Metrics, consumer: Any, wanted: Collection[str]) -> None:
    """Set `refstream_consumer_lag` from a Faust consumer at scrape time (`partition_lag`).
    Every label set is cleared first, so partitions moved to another worker disappear."""
    metrics.consumer_lag.clear()
    try:
        assigned = consumer.assignment()
        highwaters = {tp: consumer.highwater(tp) for tp in assigned if tp.topic in wanted}
    except Exception:  # not started yet, or mid-rebalance: nothing to report now
        return
    lags = partition_lag(assigned, consumer._read_offset, consumer._committed_offset, highwaters, wanted)
    for (topic, partition), lag in lags.items():
        metrics.consumer_lag.labels(topic, str(partition)).set(lag)
