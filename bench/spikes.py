"""Spike detector on synthetic traffic: detection delay, recall, false positives, throughput.

Generates `--keys` keys over `--days` days of 5-minute buckets. Each key has a mean rate
between `--min-rate` and `--max-rate` events per bucket (log-uniform, stratified, so every
decade is represented) and a diurnal profile (peak/trough about 5.7x, peak hour shifted
per key as if in different time zones); events are a Poisson process (exponential gaps,
`random.Random(seed)`, no numpy). A share of the keys gets one spike (x10-x100 on top of
its normal traffic, 10-60 min, after the first 6 hours). Events arrive per bucket,
shuffled by up to `--jitter-s`, and the watermark trails the newest event by
`--lateness-s` (the pipeline's ALLOWED_LATENESS_S). With `--promoters N` the codes are dealt
at random to N promoters and every event also counts for its promoter (kind `promoter`,
as in the worker); a promoter alert is true when one of its codes has a spike.

Prints, all in event time:
- detection delay: from the first injected event of a spike to its alert's `detected_ts`
  (the detector's event-time clock when it decided);
- recall: spikes alerted / injected, also by the key's normal rate at the spike;
- false positives per key-day: alerts other than a spike's after its first event and
  before its end + 2 h, over the key-days outside those periods and the warm-up
  (per code, and per promoter with `--promoters`);
- throughput: observations per second spent in `SpikeDetector.process`.

    .venv/bin/python -m bench.spikes --help
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass

from schemas.units import DAY_MS, HOUR_MS
from streams.logic.spike import Alert, Obs, SpikeDetector, SpikeRules

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
BANDS = [0.5, 2, 10, 50, math.inf]  # normal rate at the spike, events per bucket


@dataclass
class Key:
    id: str
    rate: float  # mean events per bucket over a day
    peak_h: float  # hour (UTC) of the daily peak


@dataclass
class Spike:
    key: str
    start: int
    end: int
    mult: float
    rate: float = 0.0  # the key's normal rate per bucket at the spike's start
    first_ts: int | None = None  # first injected event


def profile(key: Key, t: int) -> float:
    """Diurnal multiplier, mean 1 over a day: 0.3 at the trough, 1.7 at the peak."""
    h = (t % DAY_MS) / HOUR_MS
    return 1 + 0.7 * math.cos(2 * math.pi * (h - key.peak_h) / 24)


def arrivals(rng: random.Random, rate_per_ms: float, start: int, end: int) -> list[int]:
    """Event times of a Poisson process of this rate on [start, end)."""
    out: list[int] = []
    if rate_per_ms <= 0:
        return out
    t = start + rng.expovariate(rate_per_ms)
    while t < end:
        out.append(int(t))
        t += rng.expovariate(rate_per_ms)
    return out


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spikes", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=120, help="tracking codes simulated")
    p.add_argument("--days", type=float, default=3, help="event-time days simulated")
    p.add_argument("--min-rate", type=float, default=0.05, help="events per 5 min")
    p.add_argument("--max-rate", type=float, default=500, help="events per 5 min")
    p.add_argument("--spike-share", type=float, default=0.5, help="share of keys with a spike")
    p.add_argument("--lateness-s", type=float, default=3600, help="watermark lag behind the newest event")
    p.add_argument("--jitter-s", type=float, default=10, help="arrival shuffle within a bucket")
    p.add_argument("--no-early", action="store_true", help="judge buckets only when they close")
    p.add_argument("--promoters", type=int, default=0, help="also detect per promoter, codes dealt to this many")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)

    rules = SpikeRules(early=not a.no_early)
    size = rules.bucket_ms
    rng = random.Random(a.seed)
    span = math.log(a.max_rate / a.min_rate)
    keys = [Key(f"k{i}", a.min_rate * math.exp(span * (i + rng.random()) / a.keys),
                rng.uniform(0, 24)) for i in range(a.keys)]
    end = T0 + int(a.days * DAY_MS) // size * size
    spikes: dict[str, Spike] = {}
    for k in rng.sample(keys, int(a.spike_share * a.keys)):
        start = rng.randrange(T0 + 6 * HOUR_MS, end - 2 * HOUR_MS)
        s = Spike(k.id, start, start + rng.randrange(10, 61) * 60_000,
                  math.exp(rng.uniform(math.log(10), math.log(100))))
        s.rate = k.rate * profile(k, start)
        spikes[k.id] = s

    deal = random.Random(a.seed + 1)  # its own stream: the traffic is the same with or without promoters
    owner = {k.id: f"p{deal.randrange(a.promoters)}" for k in keys} if a.promoters > 0 else {}
    det = SpikeDetector(rules)
    alerts: list[Alert] = []
    n_obs = n_late = 0
    busy = 0.0
    jitter = a.jitter_s * 1000
    lateness = int(a.lateness_s * 1000)
    say(f"{a.keys} keys, {a.days:g} days, {len(spikes)} spikes, lateness {a.lateness_s:g} s, "
        f"early={rules.early}")
    wall = time.perf_counter()
    for t in range(T0, end, size):
        batch: list[tuple[float, Obs]] = []
        for k in keys:
            lam = k.rate * profile(k, t + size // 2) / size
            for ts in arrivals(rng, lam, t, t + size):
                batch.append((ts + rng.random() * jitter, Obs("tracking_code", k.id, ts)))
            s = spikes.get(k.id)
            if s and s.start < t + size and s.end > t:
                extra = arrivals(rng, lam * (s.mult - 1), max(t, s.start), min(t + size, s.end))
                if extra and s.first_ts is None:
                    s.first_ts = extra[0]
                batch += [(ts + rng.random() * jitter, Obs("tracking_code", k.id, ts)) for ts in extra]
        batch += [(at, Obs("promoter", owner[o.id], o.ts)) for at, o in batch if o.id in owner]
        batch.sort(key=lambda x: x[0])
        obs = [o for _, o in batch]
        began = time.perf_counter()
        out = det.process(obs, max(o.ts for o in obs) - lateness if obs else None)
        if (t - T0) % HOUR_MS == 0:
            det.expire(det.watermark or t)
        busy += time.perf_counter() - began
        alerts += out.alerts
        n_obs += len(obs)
        n_late += len(out.late)
        if (t + size - T0) % (6 * HOUR_MS) == 0:
            say(f"day {(t + size - T0) / DAY_MS:.2f}: {n_obs:,} obs, {len(alerts)} alerts, "
                f"{len(det.keys)} keys, {time.perf_counter() - wall:.0f} s")
    out = det.process([], end + lateness + size)  # close everything
    alerts += out.alerts
    report(a, rules, keys, spikes, alerts, n_obs, n_late, busy, time.perf_counter() - wall, end)
    if owner:
        promoters(rules, owner, spikes, alerts, end)
    return 0


def report(a: argparse.Namespace, rules: SpikeRules, keys: list[Key], spikes: dict[str, Spike],
           alerts: list[Alert], n_obs: int, n_late: int, busy: float, wall: float, end: int) -> None:
    delays: list[float] = []
    found: dict[str, bool] = {}
    false = 0
    for al in (x for x in alerts if x.kind == "tracking_code"):
        s = spikes.get(al.id)
        if s is None or s.first_ts is None or not (
                s.first_ts <= al.detected_ts and al.bucket_start < s.end + 2 * HOUR_MS):
            false += 1
        elif not found.get(s.key):
            found[s.key] = True
            delays.append((al.detected_ts - s.first_ts) / 1000)
    spike_ms = sum(s.end + 2 * HOUR_MS - s.start + rules.bucket_ms for s in spikes.values())
    key_days = (len(keys) * (end - T0 - rules.warmup_ms) - spike_ms) / DAY_MS
    print(f"observations        {n_obs:,} ({n_late} late) in {wall:.1f} s wall")
    print(f"throughput          {n_obs / busy:,.0f} obs/s in the detector ({busy:.1f} s)")
    print(f"spikes              {len(spikes)} injected, {len(found)} detected: "
          f"recall {len(found) / max(1, len(spikes)):.2f}")
    big = [s for s in spikes.values() if s.rate * s.mult >= rules.min_count]
    print(f"  where rate x mult >= min_count ({rules.min_count}/bucket): "
          f"{sum(1 for s in big if found.get(s.key))}/{len(big)} detected")
    lo = 0.0
    for hi in BANDS:
        band = [s for s in spikes.values() if lo <= s.rate < hi]
        hit = sum(1 for s in band if found.get(s.key))
        print(f"  normal rate {lo:>4g}-{hi:<4g}/bucket: {hit}/{len(band)} detected")
        lo = hi
    print(f"detection delay (s) median {quantile(delays, 0.5):.0f}, p95 {quantile(delays, 0.95):.0f}, "
          f"max {max(delays, default=math.nan):.0f}   (event time, first spiking event -> alert)")
    print(f"false positives     {false} in {key_days:.0f} key-days: {false / key_days:.4f} per key-day")


def promoters(rules: SpikeRules, owner: dict[str, str], spikes: dict[str, Spike], alerts: list[Alert],
              end: int) -> None:
    """Recall, delay and false positives of the promoter alerts; a promoter's spikes are its codes'."""
    theirs: dict[str, list[Spike]] = {}
    for s in spikes.values():
        theirs.setdefault(owner[s.key], []).append(s)
    delays: list[float] = []
    found: set[str] = set()
    false = 0
    for al in (x for x in alerts if x.kind == "promoter"):
        hit = [s for s in theirs.get(al.id, []) if s.first_ts is not None
               and s.first_ts <= al.detected_ts and al.bucket_start < s.end + 2 * HOUR_MS]
        if not hit:
            false += 1
        elif al.id not in found:
            found.add(al.id)
            delays.append((al.detected_ts - min(s.first_ts or 0 for s in hit)) / 1000)
    n = len(set(owner.values()))
    spike_ms = sum(s.end + 2 * HOUR_MS - s.start + rules.bucket_ms for s in spikes.values())
    days = (n * (end - T0 - rules.warmup_ms) - spike_ms) / DAY_MS
    print(f"promoters           {n} ({len(owner) / n:.1f} codes each), {len(theirs)} with a spiking code, "
          f"{len(found)} alerted: recall {len(found) / max(1, len(theirs)):.2f}")
    print(f"  detection delay (s) median {quantile(delays, 0.5):.0f}, p95 {quantile(delays, 0.95):.0f} (event time)")
    print(f"  false positives   {false} in {days:.0f} promoter-days: {false / days:.4f} per promoter-day")


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
