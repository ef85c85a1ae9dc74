"""`refstream generate`: produce realistic sample traffic to the input topics.

The traffic itself (and its ground truth) is built by the pure `streams.dev.traffic.generate`;
this module sends it to Kafka. Two modes:

- bulk (default): the last `--days` of traffic up to now, produced as fast as the broker
  takes it, in delivery order (event-time order with jitter, some events out of order,
  a few late, a few duplicated, optionally a few malformed);
- live (`--rate N`): about N events/s for `--duration` seconds with event times near the
  wall clock, each message sent when its simulated delivery time comes. Delays between a
  visitor's click, signup and orders are compressed (a day becomes a minute) so that the
  whole funnel shows up during a demo; no late events are generated in this mode.

Both modes mix labelled fraud patterns into the honest traffic (`--no-fraud` leaves them
out, `--fraud-count PATTERN=N` changes one); the dry run prints the expected statuses and
the orders per pattern. Live traffic has no click spamming nor promoter turning enterprise
(they need days of history).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import deque
from dataclasses import replace
from typing import Any

from streams.config import Settings
from streams.dev.traffic import (  # re-exported: the public API of sample traffic lives here too
    DAY_MS,
    FRAUD_COUNTS,
    PATTERNS,
    TOPICS,
    AccountTruth,
    Counts,
    Expected,
    Traffic,
    TrafficSpec,
    Truth,
    compute_truth,
    generate,
)

__all__ = [
    "FRAUD_COUNTS", "PATTERNS", "AccountTruth", "Counts", "Expected", "Traffic", "TrafficSpec", "Truth",
    "add_arguments", "compute_truth", "generate", "produce", "run", "spec_from_args",
]

#: live mode: one simulated day of a visitor's journey per wall-clock minute
LIVE_TIME_SCALE = DAY_MS / 60_000
#: live mode: out-of-order displacement bound, so a demo does not hold events back for long
LIVE_MAX_DELAY_MS = 5_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def produce(
    settings: Settings,
    traffic: Traffic,
    *,
    progress: bool = True,
    batch: int = 500,
    paced: bool = False,
) -> dict[str, int]:
    """Send `traffic.messages` in order; return the number sent per topic (names unprefixed).

    Sends are not awaited one by one: acknowledgements are collected per `batch` messages,
    with one batch in flight while the next is being queued, and all at the end, so a
    delivery error surfaces (raises) instead of being lost. With `paced`, each message
    waits until the wall clock reaches its `traffic.deliver_at` (live mode).
    """
    from aiokafka import AIOKafkaProducer

    from streams.adapters.kafka import client_kwargs

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-generate",
        linger_ms=5,
        max_batch_size=settings.producer_max_batch_bytes,
        **client_kwargs(settings),
    )
    names = {t: settings.topic(t) for t in TOPICS}
    sent = dict.fromkeys(TOPICS, 0)
    total = len(traffic.messages)
    step = max(1, total // 10)
    inflight: deque[list[asyncio.Future[Any]]] = deque()
    current: list[asyncio.Future[Any]] = []
    await producer.start()
    try:
        for i, (topic, key, value) in enumerate(traffic.messages):
            if paced:
                wait_ms = traffic.deliver_at[i] - _now_ms()
                if wait_ms > 0:
                    await asyncio.sleep(wait_ms / 1000)
            current.append(await producer.send(names[topic], value, key=key))
            sent[topic] += 1
            if len(current) >= batch:
                inflight.append(current)
                current = []
                if len(inflight) > 1:  # keep one batch in flight, settle the older one
                    await asyncio.gather(*inflight.popleft())
            if progress and (i + 1) % step == 0:
                print(f"generate: {i + 1}/{total} messages", file=sys.stderr, flush=True)
        if progress and total % step:
            print(f"generate: {total}/{total} messages", file=sys.stderr, flush=True)
        inflight.append(current)
        await producer.flush()
        for futures in inflight:
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {t: n for t, n in sent.items() if n}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `refstream generate`."""
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a new one each run, printed so it can be replayed)")
    parser.add_argument("--promoters", type=int, default=20, help="number of promoters (default 20)")
    parser.add_argument("--visitors", type=int, default=5000,
                        help="visitors who click a tracking link (default 5000; bulk mode)")
    parser.add_argument("--days", type=float, default=14.0,
                        help="days of traffic up to now (default 14; bulk mode)")
    parser.add_argument("--malformed", type=int, default=0,
                        help="malformed messages to mix in, for the dead-letter topic (default 0)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="live mode: about this many events/s with event times near now")
    parser.add_argument("--duration", type=float, default=600.0,
                        help="live mode: seconds of traffic (default 600)")
    parser.add_argument("--end-ms", type=int, default=None,
                        help="bulk mode: simulated 'now' in epoch millis (default: the wall clock)")
    parser.add_argument("--fraud", action=argparse.BooleanOptionalAction, default=True,
                        help="mix labelled fraud patterns into the traffic (default: yes; --no-fraud: honest only)")
    parser.add_argument("--fraud-count", action="append", default=[], metavar="PATTERN=N",
                        type=_fraud_count,
                        help="actors of one fraud pattern (0 turns it off; repeatable); patterns: "
                             + ", ".join(f"{p} (default {n})" for p, n in FRAUD_COUNTS.items()))
    parser.add_argument("--eur", action=argparse.BooleanOptionalAction, default=True,
                        help="about one customer in eight pays in EUR, with daily fx_rates into USD "
                             "(default: yes; --no-eur: every order in USD, no fx_rates)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print counts and the expected attribution and statuses, produce nothing")


def _fraud_count(text: str) -> tuple[str, int]:
    """PATTERN=N, for --fraud-count."""
    name, sep, n = text.partition("=")
    if not sep or name not in FRAUD_COUNTS or not n.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected PATTERN=N with N >= 0 and PATTERN one of {', '.join(FRAUD_COUNTS)}; got {text!r}")
    return name, int(n)


def spec_from_args(args: argparse.Namespace, settings: Settings, now_ms: int) -> TrafficSpec:
    """The bulk-mode spec: lateness, window and binding period follow the pipeline settings."""
    return TrafficSpec(
        seed=args.seed, end_ms=args.end_ms or now_ms, promoters=args.promoters,
        visitors=args.visitors, days=args.days, malformed=args.malformed,
        allowed_lateness_ms=settings.lateness_ms, window_ms=settings.window_ms,
        binding_ms=settings.binding_ms, fraud=args.fraud, fraud_counts=dict(args.fraud_count) or None,
        eur=args.eur,
    )


def live_spec(args: argparse.Namespace, settings: Settings, now_ms: int) -> TrafficSpec:
    """A spec of about `args.rate` events/s over the next `args.duration` seconds."""
    duration_ms = int(args.duration * 1000)
    base = replace(
        spec_from_args(args, settings, now_ms), end_ms=now_ms + duration_ms,
        days=duration_ms / DAY_MS, time_scale=LIVE_TIME_SCALE, live=True, late=0.0,
        max_delay_ms=min(LIVE_MAX_DELAY_MS, int(0.9 * settings.lateness_ms)), exclusions=0,
    )
    # calibrate: how many traffic messages do the fraud patterns and one honest visitor make?
    def traffic(spec: TrafficSpec) -> int:
        return sum(1 for f in generate(spec).flags if f != "reference")

    fixed = traffic(replace(base, visitors=0, malformed=0))
    per_visitor = max(0.1, traffic(replace(base, visitors=2000, malformed=0, fraud=False)) / 2000)
    wanted = max(0.0, args.rate * args.duration - fixed)
    return replace(base, visitors=max(1, round(wanted / per_visitor)))


def summary(traffic: Traffic, sent: dict[str, int] | None = None) -> str:
    """Human-readable counts and truth, for the end of a run or a dry run."""
    c, s = traffic.counts, traffic.truth.summary()
    counts = sent if sent is not None else c.messages
    lines = [
        f"seed {traffic.spec.seed}, end-ms {traffic.spec.end_ms}: "
        + ", ".join(f"{t} {counts.get(t, 0)}" for t in TOPICS)
        + f" ({sum(counts.values())} messages{'' if sent is not None else ', dry run: none sent'})",
        f"  valid unique events {sum(c.events.values())}, duplicates {sum(c.duplicates.values())}, "
        f"late {sum(c.late.values())}, out of order {c.out_of_order}, malformed {sum(c.malformed.values())}",
        f"  expected: {s['signups']} signups ({s['attributed_signups']} attributed, "
        f"{s['organic_signups']} organic), {s['attributed_orders']} attributed orders "
        f"({s['reversed_orders']} refunded/cancelled), attributed GMV {s['attributed_gmv']} "
        f"{traffic.spec.currency}, {s['excluded_accounts']} excluded accounts",
        f"  {s['coupon_orders']} orders attributed by a coupon code, {s['foreign_currency_orders']} paid in EUR "
        f"(fx_rates), {s['recruited_promoters']} recruited promoters (their recruiters earn override lines)",
        "  expected statuses: " + (", ".join(f"{k} {v}" for k, v in s["statuses"].items()) or "none"),
        "  orders per fraud pattern: " + (", ".join(f"{k} {v}" for k, v in s["patterns"].items()) or "none"),
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of `refstream generate`. Returns the process exit code."""
    from aiokafka.errors import KafkaError

    from streams.adapters.topics import ensure_pipeline_topics
    from streams.topology import INPUT_TOPICS

    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    now = _now_ms()
    live = args.rate > 0
    try:
        spec = live_spec(args, settings, now) if live else spec_from_args(args, settings, now)
        traffic = generate(spec)
    except ValueError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(summary(traffic))
        return 0
    if live:
        print(f"generate: live, ~{args.rate:g} events/s for {args.duration:g}s "
              f"({len(traffic.messages)} messages, seed {spec.seed}); Ctrl-C stops", file=sys.stderr)
    try:
        await ensure_pipeline_topics(settings, INPUT_TOPICS)
        sent = await produce(settings, traffic, paced=live)
    except (KafkaError, OSError) as exc:
        print(f"generate: cannot produce to Kafka at {settings.kafka_url} "
              f"(REFSTREAM_KAFKA_URL): {exc!r}", file=sys.stderr)
        return 1
    print(summary(traffic, sent))
    return 0
