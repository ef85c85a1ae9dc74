"""Spike alerts in the running worker: poll ClickHouse counts, feed the detector, publish.

**What is counted.** Referrals per event-time bucket (`spike_bucket_s`): distinct clicks
(`clicks`, by `event_id`) plus distinct attributed signups (`attributions_current`, by
`signup_event_id`), per tracking code and per promoter (the code's current owner in
`promoters_current`). Counting distinct ids in ClickHouse makes the counts exact under
Kafka redelivery and retried inserts.

**How it is fed.** Every `spike_poll_s` the leader worker (the one holding Faust's leader
partition; the others skip) reads those counts for every bucket the detector has not
closed yet, through the sink's client (`SinkStep.read`: chdb is one process per
directory). `fed` remembers what each open (kind, id, bucket) has already contributed,
so only the increment goes to `SpikeDetector` as `Obs(kind, id, ts, n)` at the bucket's
newest event time (the detector's clock); a new bucket's first event goes alone at its own
time, so alerts know when the bucket began. Counts only grow; a drop (a re-attributed
signup) is ignored. Increments are fed in event-time
order, one bucket at a time, with watermark = newest event time seen − `allowed_lateness_s`,
so a backlog (a fresh start, a slow poll) is replayed as it happened.

**Outputs and restarts.** Each alert goes to the ClickHouse `alerts` table, the Kafka topic
`alerts` (JSON, the `Alert` fields), Prometheus (`refstream_referral_spikes{kind}`, the
last score in `refstream_referral_spike_score{kind}`) and the log. Then the whole state
(detector, `fed`, clock) is saved to Redis as msgpack; a worker that becomes leader
loads it. Outputs go before the save, so a crash in between repeats alerts (at least
once; ClickHouse keeps one row per kind, key and bucket) rather than losing them; when
an output fails, the in-memory state is dropped and the poll is redone from the last save.
Without a saved state the detector starts from the last `BACKFILL_MS` of stored events.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from itertools import groupby
from typing import Any, NamedTuple

import msgspec

from sinks.stats import ALERTS
from streams.logic.spike import HOUR_MS, Alert, DetectorState, Obs, Output, SpikeDetector, SpikeRules

log = logging.getLogger(__name__)

BACKFILL_MS = 6 * HOUR_MS  # history read on a fresh start: the baseline's memory is ~1 h

Key = tuple[str, str, int]  # (kind, id, bucket start)


class Row(NamedTuple):
    """Distinct events of one tracking code in one bucket, as read from ClickHouse."""

    code: str
    bucket: int
    n: int
    first_ts: int
    last_ts: int


class Count(NamedTuple):
    n: int
    first_ts: int
    last_ts: int


class WatchState(msgspec.Struct):
    """Everything the watcher needs after a restart (saved to Redis)."""

    detector: DetectorState = msgspec.field(default_factory=DetectorState)
    fed: list[tuple[str, str, int, int]] = []  # (kind, id, bucket, events fed) of open buckets
    clock: int | None = None  # newest event time seen


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(WatchState).decode


# --- pure steps ------------------------------------------------------------------------


def totals(rows: Iterable[Row], owners: Mapping[str, str]) -> dict[Key, Count]:
    """Sum rows (clicks and signups of a code may come as separate rows) per tracking code and
    per promoter; codes without a known promoter count for the code only."""
    out: dict[Key, Count] = {}
    for r in rows:
        keys = [("tracking_code", r.code, r.bucket)]
        if owners.get(r.code):
            keys.append(("promoter", owners[r.code], r.bucket))
        for key in keys:
            c = out.get(key)
            out[key] = Count(r.n, r.first_ts, r.last_ts) if c is None else Count(
                c.n + r.n, min(c.first_ts, r.first_ts), max(c.last_ts, r.last_ts))
    return out


def increments(counts: Mapping[Key, Count], fed: Mapping[Key, int]) -> tuple[list[Obs], dict[Key, int]]:
    """Observations for what `counts` holds beyond `fed`, sorted by time, and the new `fed`."""
    obs: list[Obs] = []
    new = dict(fed)
    for key, c in counts.items():
        before = fed.get(key, 0)
        if c.n > before:
            kind, id_, _ = key
            if before == 0:
                obs.append(Obs(kind, id_, c.first_ts, 1))
                before = 1
            if c.n > before:
                obs.append(Obs(kind, id_, c.last_ts, c.n - before))
            new[key] = c.n
    obs.sort(key=lambda o: (o.ts, o.kind, o.id))
    return obs, new


def feed(det: SpikeDetector, obs: list[Obs], clock: int | None, lateness_ms: int) -> tuple[Output, int | None]:
    """Process time-sorted `obs` one bucket at a time, advancing the watermark to the newest
    event time so far − `lateness_ms` after each; returns the output and the new clock."""
    out = Output()
    size = det.rules.bucket_ms
    for _, group in groupby(obs, key=lambda o: o.ts - o.ts % size):
        batch = list(group)
        clock = max(clock if clock is not None else batch[-1].ts, batch[-1].ts)
        step = det.process(batch, clock - lateness_ms)
        out.alerts += step.alerts
        out.late += step.late
    return out, clock


class Watcher:
    """The detector and what it has been fed: pure, driven by one poll's rows at a time."""

    def __init__(self, rules: SpikeRules, lateness_ms: int, state: WatchState | None = None) -> None:
        state = state or WatchState()
        self.rules = rules
        self.lateness_ms = lateness_ms
        self.detector = SpikeDetector(rules, state.detector)
        self.fed: dict[Key, int] = {(k, i, b): n for k, i, b, n in state.fed}
        self.clock = state.clock

    def since(self) -> int | None:
        """Start of the oldest bucket still open (the watermark's), or None before any data."""
        wm = self.detector.watermark
        return None if wm is None else wm - wm % self.rules.bucket_ms

    def step(self, rows: Iterable[Row], owners: Mapping[str, str]) -> Output:
        obs, self.fed = increments(totals(rows, owners), self.fed)
        out, self.clock = feed(self.detector, obs, self.clock, self.lateness_ms)
        if self.detector.watermark is not None:
            closed = self.since()
            self.fed = {k: n for k, n in self.fed.items() if k[2] >= closed}
            self.detector.expire(self.detector.watermark)
        return out

    def snapshot(self) -> bytes:
        return _encode(WatchState(self.detector.snapshot(), [(*k, n) for k, n in self.fed.items()], self.clock))

    @classmethod
    def restore(cls, rules: SpikeRules, lateness_ms: int, data: bytes | None) -> "Watcher":
        return cls(rules, lateness_ms, _decode(data) if data else None)


def alert_row(a: Alert) -> tuple:
    """The `alerts` table row of an alert (columns of `sinks.stats.ALERTS`)."""
    return (a.kind, a.id, a.bucket_start, a.count, a.baseline, a.score, a.first_event_ts, a.detected_ts)


# --- ClickHouse ------------------------------------------------------------------------

_BUCKET = "intDiv(toUnixTimestamp64Milli({col}), {{size:UInt64}}) * {{size:UInt64}}"
_SINCE = "{col} >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')"
CLICKS_SQL = (f"SELECT tracking_code, {_BUCKET.format(col='ts')} AS bucket, uniqExact(event_id) AS n,"
              " min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts)) FROM clicks"
              f" WHERE {_SINCE.format(col='ts')} AND tracking_code != '' GROUP BY tracking_code, bucket")
SIGNUPS_SQL = (f"SELECT tracking_code, {_BUCKET.format(col='signup_ts')} AS bucket,"
               " uniqExact(signup_event_id) AS n, min(toUnixTimestamp64Milli(signup_ts)),"
               " max(toUnixTimestamp64Milli(signup_ts)) FROM attributions_current"
               f" WHERE {_SINCE.format(col='signup_ts')} AND tracking_code != '' GROUP BY tracking_code, bucket")
OWNERS_SQL = "SELECT tracking_code, promoter_id FROM promoters_current WHERE tracking_code IN {codes:Array(String)}"
NEWEST_SQL = "SELECT toUnixTimestamp64Milli(max(ts)) FROM clicks"
LIMITS = {"max_execution_time": 30}  # bounds how long a poll holds the sink's client


def read_counts(client: Any, since: int | None, size: int) -> tuple[list[Row], dict[str, str]]:
    """Rows per tracking code and bucket from `since` (default: the newest click − BACKFILL_MS),
    and the current owner of each code seen (runs in the sink's thread)."""
    if since is None:
        newest = int(client.query(NEWEST_SQL, settings=LIMITS).result_rows[0][0] or 0)
        if newest <= 0:
            return [], {}
        since = newest - BACKFILL_MS - newest % size
    params = {"since": since, "size": size}
    rows = [Row(str(c), int(b), int(n), int(f), int(la))
            for sql in (CLICKS_SQL, SIGNUPS_SQL)
            for c, b, n, f, la in client.query(sql, parameters=params, settings=LIMITS).result_rows]
    codes = sorted({r.code for r in rows})
    if not codes:
        return rows, {}
    owners = client.query(OWNERS_SQL, parameters={"codes": codes}, settings=LIMITS).result_rows
    return rows, {str(c): str(p) for c, p in owners}


# --- the worker's task -----------------------------------------------------------------


class AlertWatch:
    """One poll at a time: state from Redis when needed, counts from ClickHouse, alerts out."""

    def __init__(self, rules: SpikeRules, settings: Any, sink: Any, metrics: Any, topic: Any, redis: Any) -> None:
        self.rules, self.settings, self.sink, self.metrics = rules, settings, sink, metrics
        self.topic, self.redis = topic, redis
        self.key = f"{settings.redis_namespace}:spikes"
        self.watcher: Watcher | None = None  # None: (re)load from Redis on the next poll

    async def poll(self, leader: bool) -> list[Alert]:
        if not leader:
            self.watcher = None  # another worker leads: its saves supersede our memory
            return []
        if self.watcher is None:
            try:
                data = await self.redis.get(self.key)
            except Exception as exc:  # no state, no polling: a fresh detector would repeat alerts
                self.metrics.redis_failures.labels("spikes_load").inc()
                log.warning("spike state not loaded, retrying", extra={"error": repr(exc)})
                return []
            self.watcher = Watcher.restore(self.rules, self.settings.lateness_ms, data)
            log.info("spike detector ready", extra={"keys": len(self.watcher.detector.keys),
                                                    "restored": data is not None})
        w = self.watcher
        try:
            rows, owners = await self.sink.read(lambda c: read_counts(c, w.since(), self.rules.bucket_ms))
            out = w.step(rows, owners)
            if out.alerts:
                await self.publish(out.alerts)
        except Exception as exc:
            self.watcher = None  # redo from the last saved state
            log.warning("spike poll failed, retrying from the saved state", extra={"error": repr(exc)})
            return []
        try:
            await self.redis.set(self.key, w.snapshot())
        except Exception as exc:  # alerts are out: keep the memory, save next time
            self.metrics.redis_failures.labels("spikes_save").inc()
            log.warning("spike state not saved", extra={"error": repr(exc)})
        return out.alerts

    async def publish(self, alerts: list[Alert]) -> None:
        rows = [alert_row(a) for a in alerts]
        await self.sink.read(lambda c: c.insert(ALERTS.name, rows, column_names=ALERTS.insert_columns,
                                                column_type_names=ALERTS.insert_types))
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


def rules_for(settings: Any) -> SpikeRules:
    return SpikeRules(bucket_ms=int(settings.spike_bucket_s * 1000))


def register_alerts(app: Any, sink: Any, settings: Any, metrics: Any) -> AlertWatch:
    """Add the `alerts` output topic and the leader-only poll timer to the Faust `app`."""
    import redis.asyncio as aioredis

    topic = app.topic(settings.topic("alerts"), key_serializer="raw", value_serializer="raw")
    watch = AlertWatch(rules_for(settings), settings, sink, metrics, topic,
                       aioredis.from_url(settings.redis_url, socket_timeout=5))

    @app.timer(settings.spike_poll_s)
    async def watch_spikes() -> None:
        await watch.poll(app.is_leader())

    return watch
