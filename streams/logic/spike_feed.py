"""Feeding the spike detector from stored counts (pure): increments, promoters, restarts.

**What is counted.** Referrals per event-time bucket: distinct clicks plus distinct
attributed signups, per tracking code and per promoter (the code's current owner), read
from ClickHouse by `sinks.alerts.read_counts` as one `BucketCount` per code and bucket.
Counting distinct ids there makes the counts exact under Kafka redelivery and retried
inserts.

**How it is fed.** `Watcher.step` takes one poll's counts for every bucket the detector
has not closed yet. `fed` remembers what each open (kind, id, bucket) has already
contributed, so only the increment goes to `SpikeDetector` as `Obs(kind, id, ts, n)` at
the bucket's newest event time (the detector's clock); a new bucket's first event goes
alone at its own time, so alerts know when the bucket began. Counts only grow; a drop (a
re-attributed signup) is ignored. Increments are fed in event-time order, one bucket at a
time, with watermark = newest event time seen - lateness, so a backlog (a fresh start, a
slow poll) is replayed as it happened.

**Restarts.** `Watcher.snapshot` is the whole state (detector, `fed`, clock) as msgpack;
`Watcher.restore` continues from it without feeding an open bucket twice.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import groupby
from typing import NamedTuple, Protocol

import msgspec

from schemas.units import HOUR_MS
from streams.logic.spike import DetectorState, Obs, Output, SpikeDetector, SpikeRules

#: history read on a fresh start (no saved state): the baseline's memory is ~1 h
BACKFILL_MS = 6 * HOUR_MS

Key = tuple[str, str, int]  # (kind, id, bucket start)


class BucketCount(Protocol):
    """Distinct events of one tracking code in one bucket (a row of `sinks.alerts.read_counts`)."""

    @property
    def code(self) -> str: ...
    @property
    def bucket(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def first_ts(self) -> int: ...
    @property
    def last_ts(self) -> int: ...


class Count(NamedTuple):
    n: int
    first_ts: int
    last_ts: int


class WatchState(msgspec.Struct):
    """Everything the watcher needs after a restart (saved by `streams.adapters.spike_state`)."""

    detector: DetectorState = msgspec.field(default_factory=DetectorState)
    fed: list[tuple[str, str, int, int]] = []  # (kind, id, bucket, events fed) of open buckets
    clock: int | None = None  # newest event time seen


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(WatchState).decode


def totals(rows: Iterable[BucketCount], owners: Mapping[str, str]) -> dict[Key, Count]:
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
    event time so far - `lateness_ms` after each; returns the output and the new clock."""
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
    """The detector and what it has been fed, driven by one poll's counts at a time."""

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

    def step(self, rows: Iterable[BucketCount], owners: Mapping[str, str]) -> Output:
        obs, self.fed = increments(totals(rows, owners), self.fed)
        out, self.clock = feed(self.detector, obs, self.clock, self.lateness_ms)
        if self.detector.watermark is not None:
            closed = self.detector.watermark - self.detector.watermark % self.rules.bucket_ms
            self.fed = {k: n for k, n in self.fed.items() if k[2] >= closed}
            self.detector.expire(self.detector.watermark)
        return out

    def snapshot(self) -> bytes:
        return _encode(WatchState(self.detector.snapshot(), [(*k, n) for k, n in self.fed.items()], self.clock))

    @classmethod
    def restore(cls, rules: SpikeRules, lateness_ms: int, data: bytes | None) -> Watcher:
        return cls(rules, lateness_ms, _decode(data) if data else None)
