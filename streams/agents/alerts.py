"""Spike alerts in the running worker: a leader-only timer that polls, detects and publishes.

Every `spike_poll_s` the leader worker (the one holding Faust's leader partition; the
others skip) reads the referral counts of every bucket the detector has not closed yet
(`sinks.alerts.read_counts`, through the sink's client: chdb is one process per
directory) and feeds them to the detector (`streams.logic.spike_feed.Watcher`).

**Outputs and restarts.** Each alert goes to the ClickHouse `alerts` table, the Kafka topic
`alerts` (JSON, the `Alert` fields), Prometheus (`refstream_referral_spikes{kind}`, the
last score in `refstream_referral_spike_score{kind}`) and the log. Then the whole state
is saved to Redis (`streams.adapters.spike_state`); a worker that becomes leader loads
it. Outputs go before the save, so a crash in between repeats alerts (at least once;
ClickHouse keeps one row per kind, key and bucket) rather than losing them; when an
output fails, the in-memory state is dropped and the poll is redone from the last save.
Without a saved state the detector starts from the last `BACKFILL_MS` of stored events.
A failed poll is retried by the next tick of the timer: no backoff of its own.
"""
from __future__ import annotations

import asyncio
import logging

import faust
import msgspec
from faust.types import TopicT

from sinks.alerts import read_counts
from streams.adapters.spike_state import SpikeStateStore
from streams.agents.sink import SinkStep
from streams.config import Settings
from streams.logic.spike import Alert, SpikeRules
from streams.logic.spike_feed import BACKFILL_MS, Watcher
from streams.metrics import Metrics
from streams.topology import ALERTS, Topology

log = logging.getLogger(__name__)


class AlertWatch:
    """One poll at a time: state from Redis when needed, counts from ClickHouse, alerts out."""

    def __init__(self, rules: SpikeRules, lateness_ms: int, sink: SinkStep, metrics: Metrics, topic: TopicT,
                 store: SpikeStateStore) -> None:
        self.rules, self.lateness_ms, self.sink, self.metrics = rules, lateness_ms, sink, metrics
        self.topic, self.store = topic, store
        self.watcher: Watcher | None = None  # None: (re)load from Redis on the next poll

    async def poll(self, leader: bool) -> list[Alert]:
        if not leader:
            self.watcher = None  # another worker leads: its saves supersede our memory
            return []
        if self.watcher is None:
            try:
                data = await self.store.load()
            except Exception as exc:  # no state, no polling: a fresh detector would repeat alerts
                self.metrics.redis_failures.labels("spikes_load").inc()
                log.warning("spike state not loaded, retrying", extra={"error": repr(exc)})
                return []
            self.watcher = Watcher.restore(self.rules, self.lateness_ms, data)
            log.info("spike detector ready", extra={"keys": len(self.watcher.detector.keys),
                                                    "restored": data is not None})
        w = self.watcher
        since, size = w.since(), self.rules.bucket_ms
        try:
            rows, owners = await self.sink.read(lambda c: read_counts(c, since, size, BACKFILL_MS))
            out = w.step(rows, owners)
            if out.alerts:
                await self.publish(out.alerts)
        except Exception as exc:
            self.watcher = None  # redo from the last saved state
            log.warning("spike poll failed, retrying from the saved state", extra={"error": repr(exc)})
            return []
        try:
            await self.store.save(w.snapshot())
        except Exception as exc:  # alerts are out: keep the memory, save next time
            self.metrics.redis_failures.labels("spikes_save").inc()
            log.warning("spike state not saved", extra={"error": repr(exc)})
        return out.alerts

    async def publish(self, alerts: list[Alert]) -> None:
        await self.sink.write_alerts(alerts)
        sent = [await self.topic.send(key=f"{a.kind}:{a.id}".encode(), value=msgspec.json.encode(a))
                for a in alerts]
        await asyncio.gather(*sent)  # delivered before the state that forgets them is saved
        for a in alerts:
            self.metrics.spikes.labels(a.kind).inc()
            self.metrics.spike_score.labels(a.kind).set(a.score)
            log.warning("referral spike", extra={"kind": a.kind, "id": a.id, "bucket_start": a.bucket_start,
                                                 "count": a.count, "baseline": round(a.baseline, 2),
                                                 "score": round(a.score, 1), "early": a.early,
                                                 "first_event_ts": a.first_event_ts, "detected_ts": a.detected_ts})


def rules_for(settings: Settings) -> SpikeRules:
    return SpikeRules(bucket_ms=int(settings.spike_bucket_s * 1000))


def register_alerts(app: faust.App, sink: SinkStep, settings: Settings, metrics: Metrics) -> AlertWatch:
    """Add the `alerts` output topic and the leader-only poll timer to the Faust `app`."""
    topic = app.topic(Topology(settings).topic(ALERTS), key_serializer="raw", value_serializer="raw")
    watch = AlertWatch(rules_for(settings), settings.lateness_ms, sink, metrics, topic,
                       SpikeStateStore(settings.redis_url, settings.redis_namespace))

    @app.timer(settings.spike_poll_s)
    async def watch_spikes() -> None:
        await watch.poll(app.is_leader())

    return watch
