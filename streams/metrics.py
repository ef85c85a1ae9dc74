"""Prometheus metrics of one worker. A registry per app keeps tests independent."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.sink_rows = Counter("refstream_sink_rows", "Rows written to ClickHouse", ["table"], registry=r)
        self.sink_seconds = Histogram(
            "refstream_sink_batch_seconds", "ClickHouse insert latency per table batch", ["table"],
            registry=r,
        )
        self.sink_failures = Counter(
            "refstream_sink_failures", "Failed ClickHouse inserts (retried)", ["table"], registry=r
        )

        # Operator metrics the alert rules and dashboards in deploy/ read (wired by the agents).
        self.consumer_lag = Gauge(
            "refstream_consumer_lag", "Messages behind the partition's end offset", ["topic", "partition"],
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
            "refstream_referral_spike_score", "Score of the last spike alert: -log10 of its tail probability", ["kind"], registry=r
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


def observe_lag(metrics: Metrics, consumer: Any) -> None:
    """Set `refstream_consumer_lag` per assigned partition: messages between the last one
    this worker read and the partition's end (its high watermark). Read at scrape time."""
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet, or mid-rebalance: nothing to report now
        return
    for tp in assigned:
        read = consumer._read_offset.get(tp)  # Faust keeps the last offset read per partition
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        lag = highwater - (read + 1 if read is not None else 0)
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
