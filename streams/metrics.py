"""Prometheus metrics of one worker. A registry per app keeps tests independent."""
from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
