"""Anomalous referral spikes per promoter / tracking code: pure event-time detection.

Every key (`kind` "promoter" or "tracking_code", `id`) keeps a fixed-size summary of its
own history: an exponentially weighted mean and variance of its event count per
event-time bucket (`SpikeRules.bucket_ms`, 5 min). A bucket is **anomalous** when all of
these hold, with baseline = max(EWMA mean, `prior_rate`):

- count >= `min_count` (3 clicks on a quiet code are not an incident),
- count >= `min_ratio` x baseline (steady busy keys are not spikes),
- -log10 P(X >= count) >= `min_score`, X negative binomial with the baseline mean and
  the EWMA variance (Poisson when the key is not overdispersed).

The tests reduce to one number per key, `KeyState.need`: the smallest anomalous count.
Buckets are judged:

- **at close**, when the watermark passes the bucket's end, against the baseline of the
  buckets before (idle ones learned as zeros); then the bucket is learned, its count
  capped at `min_ratio` x baseline, so a spike barely moves the baseline while a lasting
  level shift is absorbed within hours;
- **early** (`rules.early`, default on), on every observation, as soon as the open
  bucket's count reaches `need` computed from the closed buckets: counts only grow, so
  this is the close-time test on a partial count, and the alert comes seconds after the
  spike starts instead of a bucket plus the watermark's lateness later.

One incident, one alert: every anomalous bucket, alerted or not, pushes the key's
`hot_until` to its end + `cooldown_ms`; buckets starting before it do not alert. A fresh
detector (every key new) does not alert during its first `warmup_ms` of event time.
Observations for closed buckets (end <= watermark, or already learned) are late:
returned as `Late`, counted in `late`, never applied.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from schemas.units import HOUR_MS, MINUTE_MS

LN10 = math.log(10)


@dataclass(frozen=True)
class SpikeRules:
    """Detection settings; the defaults suit 5-minute click counts."""

    bucket_ms: int = 5 * MINUTE_MS  # event-time bucket the counts are taken over
    half_life_buckets: float = 12.0  # baseline memory: 1 h at 5-minute buckets
    min_count: int = 20  # an alert needs at least this many events in the bucket,
    min_ratio: float = 5.0  # ... at least this multiple of the baseline,
    min_score: float = 6.0  # ... and a tail probability <= 10**-min_score
    prior_rate: float = 0.5  # floor of the baseline (events per bucket): new and quiet keys
    max_dispersion: float = 10.0  # cap on variance / mean, so a noisy key stays detectable
    cooldown_ms: int = HOUR_MS  # calm time after an incident before the key alerts again
    warmup_ms: int = HOUR_MS  # a fresh detector (every key new) stays silent this long
    idle_ms: int = 12 * HOUR_MS  # `expire` drops keys without events for this long
    max_open_buckets: int = 24  # per key; beyond it the oldest open bucket is closed early
    early: bool = True  # also judge open buckets on every observation

    @property
    def alpha(self) -> float:
        """EWMA weight of the newest bucket."""
        return float(1.0 - 0.5 ** (1.0 / self.half_life_buckets))


class Obs(NamedTuple):
    """`n` events of one key at event time `ts` (epoch ms); n > 1 feeds pre-counted buckets."""

    kind: str
    id: str
    ts: int
    n: int = 1


class Alert(msgspec.Struct, frozen=True):
    kind: str
    id: str
    bucket_start: int
    count: int  # events in the bucket when it was judged
    baseline: float  # expected events per bucket
    score: float  # -log10 of the tail probability of `count` given the baseline
    first_event_ts: int  # earliest event of the bucket: detection latency starts here
    detected_ts: int  # event-time clock at the decision: newest event or watermark seen
    early: bool  # decided while the bucket was open


class Late(msgspec.Struct, frozen=True):
    obs: Obs
    bucket_start: int


class Bucket(msgspec.Struct, array_like=True):
    start: int
    count: int
    first_ts: int


class KeyState(msgspec.Struct, array_like=True):
    """One key's memory: O(max_open_buckets) whatever its history."""

    kind: str
    id: str
    mean: float = 0.0
    var: float = 0.0
    n: int = 0  # buckets learned (caps the EWMA weight while the key is young)
    learned: int | None = None  # start of the last learned bucket; all before it are closed
    active: int = 0  # start of the newest bucket with an event
    hot_until: int = 0  # anomalous buckets starting before this do not alert
    need: int = 0  # smallest anomalous count for the current baseline
    open: list[Bucket] = []  # sorted by start


class DetectorState(msgspec.Struct):
    started: int | None = None  # first event time seen: the warm-up runs from here
    watermark: int | None = None
    now: int = 0  # event-time clock: the newest event time or watermark seen
    late: int = 0
    keys: list[KeyState] = []


@dataclass
class Output:
    alerts: list[Alert] = field(default_factory=list)
    late: list[Late] = field(default_factory=list)


def tail_score(count: int, mean: float, var: float) -> float:
    """-log10 P(X >= count), X negative binomial of this mean and variance (Poisson if var <= mean)."""
    if count <= mean:
        return 0.0
    if var <= mean * 1.000001:
        logp = count * math.log(mean) - mean - math.lgamma(count + 1)
        r, q = math.inf, 0.0
    else:
        r = mean * mean / (var - mean)
        q = mean / (r + mean)
        logp = (math.lgamma(count + r) - math.lgamma(r) - math.lgamma(count + 1)
                + count * math.log(q) + r * math.log1p(-q))
    total = term = 1.0  # P(X >= count) / P(X = count), summed term by term
    k = count
    for _ in range(5000):
        term *= mean / (k + 1) if r == math.inf else q * (k + r) / (k + 1)
        total += term
        k += 1
        if term < 1e-9 * total:
            break
    return max(0.0, -(logp + math.log(total)) / LN10)


def baseline(st: KeyState, rules: SpikeRules) -> tuple[float, float]:
    """Expected count per bucket and its variance (floored at Poisson, capped at max_dispersion)."""
    lam = max(st.mean, rules.prior_rate)
    return lam, min(max(st.var, lam), lam * rules.max_dispersion)


def threshold(st: KeyState, rules: SpikeRules) -> int:
    """Smallest count that passes all three tests against the key's baseline."""
    lam, var = baseline(st, rules)
    lo = max(1, rules.min_count, math.ceil(rules.min_ratio * lam))

    def passes(c: int) -> bool:
        return tail_score(c, lam, var) >= rules.min_score

    if passes(lo):
        return lo
    hi = lo * 2
    while not passes(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # lo fails, hi passes
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return hi


def learn(st: KeyState, count: int, rules: SpikeRules) -> None:
    """Fold one closed bucket into the EWMA mean and variance (West's update)."""
    x = min(count, rules.min_ratio * max(st.mean, rules.prior_rate))  # a spike teaches little
    a = max(rules.alpha, 1 / (st.n + 1))  # plain average while young: fast start
    diff = x - st.mean
    st.mean += a * diff
    st.var = (1 - a) * (st.var + diff * a * diff)
    st.n = min(st.n + 1, 1 << 30)


def catch_up(st: KeyState, upto: int, rules: SpikeRules) -> None:
    """Learn the event-less buckets between the last learned one and `upto` as zeros."""
    if st.learned is None:
        return  # a new key: nothing is known before its first bucket
    gap = (upto - st.learned) // rules.bucket_ms - 1
    if gap <= 0:
        return
    for _ in range(min(gap, int(20 * rules.half_life_buckets) + 1)):  # then it is ~0 anyway
        learn(st, 0, rules)
    st.learned = upto - rules.bucket_ms
    st.need = threshold(st, rules)


Key = tuple[str, str]


class SpikeDetector:
    """Spike detection over many keys, driven by observations and a watermark.

    Not thread-safe; one instance per partition. `snapshot()` returns plain data
    (msgspec structs) and `SpikeDetector(rules, state)` restores it.
    """

    def __init__(self, rules: SpikeRules = SpikeRules(), state: DetectorState | None = None) -> None:
        self.rules = rules
        s = state or DetectorState()
        self.started, self.watermark, self.now, self.late = s.started, s.watermark, s.now, s.late
        self.keys: dict[Key, KeyState] = {(k.kind, k.id): k for k in s.keys}
        # open buckets by end, so a watermark step visits only the keys it closes
        self._closing: dict[int, dict[Key, None]] = {}
        for key, st in self.keys.items():
            for b in st.open:
                self._closing.setdefault(b.start + rules.bucket_ms, {})[key] = None

    def snapshot(self) -> DetectorState:
        """The whole state as plain data (shares the key structs: encode it before mutating)."""
        return DetectorState(self.started, self.watermark, self.now, self.late,
                             list(self.keys.values()))

    def process(self, batch: Iterable[Obs], watermark: int | None = None) -> Output:
        """Apply observations in arrival order, then advance to `watermark` (if given).

        Observations are judged late against the watermark from before the batch.
        """
        out = Output()
        for obs in batch:
            self._observe(obs, out)
        if watermark is not None:
            self._advance(watermark, out)
        return out

    def expire(self, watermark: int) -> int:
        """Drop keys idle for `idle_ms` (no open bucket, out of cool-down); returns how many."""
        r = self.rules
        idle = [key for key, st in self.keys.items() if not st.open
                and st.active + r.bucket_ms + r.idle_ms <= watermark and st.hot_until <= watermark]
        for key in idle:
            del self.keys[key]
        return len(idle)

    def _observe(self, o: Obs, out: Output) -> None:
        r, wm = self.rules, self.watermark
        start = o.ts - o.ts % r.bucket_ms
        key = (o.kind, o.id)
        st = self.keys.get(key)
        if (wm is not None and start + r.bucket_ms <= wm) or (
                st is not None and st.learned is not None and start <= st.learned):
            self.late += o.n
            out.late.append(Late(o, start))
            return
        if self.started is None:
            self.started = o.ts
        self.now = max(self.now, o.ts)
        if st is None:
            st = self.keys[key] = KeyState(o.kind, o.id)
            st.need = threshold(st, r)
        for b in st.open:
            if b.start == start:
                break
        else:
            if wm is not None:  # buckets before the watermark's are closed: learn them now
                catch_up(st, wm - wm % r.bucket_ms, r)
            b = Bucket(start, 0, o.ts)
            st.open.append(b)
            st.open.sort(key=lambda x: x.start)
            self._closing.setdefault(start + r.bucket_ms, {})[key] = None
        b.count += o.n
        b.first_ts = min(b.first_ts, o.ts)
        st.active = max(st.active, start)
        if r.early and b.count >= st.need:
            self._anomalous(st, b, True, out)
        while len(st.open) > r.max_open_buckets:  # no watermark for too long: bound memory
            old = st.open.pop(0)
            waiting = self._closing.get(old.start + r.bucket_ms, {})
            waiting.pop(key, None)
            if not waiting:
                self._closing.pop(old.start + r.bucket_ms, None)
            self._close(st, old, out)

    def _advance(self, wm: int, out: Output) -> None:
        if self.watermark is not None and wm <= self.watermark:
            return  # never backwards
        self.watermark = wm
        self.now = max(self.now, wm)
        if self.started is None:
            self.started = wm
        size = self.rules.bucket_ms
        for end in sorted(e for e in self._closing if e <= wm):
            for key in self._closing.pop(end):
                st = self.keys[key]
                while st.open and st.open[0].start + size <= wm:
                    self._close(st, st.open.pop(0), out)

    def _close(self, st: KeyState, b: Bucket, out: Output) -> None:
        r = self.rules
        catch_up(st, b.start, r)
        if b.count >= st.need:
            self._anomalous(st, b, False, out)
        learn(st, b.count, r)
        st.learned = b.start
        st.need = threshold(st, r)

    def _anomalous(self, st: KeyState, b: Bucket, early: bool, out: Output) -> None:
        r = self.rules
        assert self.started is not None
        if b.start >= st.hot_until and b.start >= self.started + r.warmup_ms:
            lam, var = baseline(st, r)
            out.alerts.append(Alert(st.kind, st.id, b.start, b.count, lam,
                                    tail_score(b.count, lam, var), b.first_ts, self.now, early))
        st.hot_until = max(st.hot_until, b.start + r.bucket_ms + r.cooldown_ms)
