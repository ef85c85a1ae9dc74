"""Spike alerts through the real stack: hours of steady referral traffic on four codes, then
a burst on one code -> one alert for the code and one for its promoter, in ClickHouse
`alerts`, `/api/alerts`, the Kafka `alerts` topic and `/metrics`; none for the others."""
from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer

from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
MIN = 60_000
H = 60 * MIN
BUCKET = 5 * MIN
OWNERS = {"T-A": "p1", "T-B": "p1", "T-C": "p2", "T-D": "p2"}
RATE = 6  # steady clicks per code per 5 minutes; a tenth of them sign up
BURST = 120  # extra clicks on T-A within 3 minutes


@dataclass
class Traffic:
    messages: list[tuple[str, bytes | None, bytes]]
    clicks: int
    first_burst_ts: int | None = None


def traffic(rng: random.Random, start: int, end: int, burst_at: int | None = None) -> Traffic:
    """Poisson clicks on every code over [start, end), signups 2 minutes after some, and
    optionally a burst on T-A; sorted by event time (nothing is late)."""
    items: list[tuple[int, str, dict]] = []
    for code in OWNERS:
        t = start + rng.expovariate(RATE / BUCKET)
        while t < end:
            items.append((int(t), code, {}))
            t += rng.expovariate(RATE / BUCKET)
    burst = sorted(burst_at + rng.randrange(3 * MIN) for _ in range(BURST)) if burst_at is not None else []
    items += [(ts, "T-A", {"burst": True}) for ts in burst]
    items.sort(key=lambda x: x[0])
    out: list[tuple[str, bytes | None, bytes]] = []
    for ts, code, extra in items:
        n = rng.getrandbits(48)
        visitor = f"v{n:x}"
        out.append(("clicks", visitor.encode(), event(event_id=f"c{n:x}", ts=ts, tracking_code=code,
                                                       visitor_id=visitor, ip=f"10.{n % 250}.{n % 7}.1")))
        if not extra and rng.random() < 0.1:
            out.append(("signups", visitor.encode(), event(event_id=f"s{n:x}", ts=ts + 2 * MIN,
                                                            account_id=f"a{n:x}", visitor_id=visitor)))
    return Traffic(out, len(items), burst[0] if burst else None)


def metrics(p: Pipeline) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line.startswith("refstream_referral"))}


def consume_alerts(p: Pipeline) -> list[dict]:
    async def run() -> list[dict]:
        consumer = AIOKafkaConsumer(p.topic("alerts"), bootstrap_servers=p.kafka, auto_offset_reset="earliest",
                                    group_id=None, enable_auto_commit=False)
        await consumer.start()
        out: list[dict] = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=3000)
                if not batch:
                    return out
                out += [json.loads(m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_burst_alerts_once_for_its_code_and_promoter(stack, topic_prefix, tmp_path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=2, spike_poll_s=1)
    rng = random.Random(7)
    t0 = (int(time.time() * 1000) - 3 * 24 * H) // H * H
    steady = traffic(rng, t0, t0 + 4 * H)
    burst_at = t0 + 4 * H + 10 * MIN + 30_000
    spiky = traffic(rng, t0 + 4 * H, t0 + 5 * H, burst_at)
    p.start_worker()
    try:
        p.produce([("promoters", None, event(event_id=f"p-{c}", ts=t0 - 24 * H, promoter_id=pid, tracking_code=c))
                   for c, pid in OWNERS.items()])
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == len(OWNERS), 60, "promoters")
        p.produce(steady.messages)
        p.wait_counts({"clicks": steady.clicks}, timeout=240)
        time.sleep(3)  # a few polls: the detector has learned the steady hours
        assert (p.get(f"/api/alerts?from={t0}&to={t0 + 6 * H}") or {}).get("alerts") == []

        sent = time.monotonic()
        p.produce(spiky.messages + spiky.messages[:50])  # some redelivered: counted once
        api: dict = {}

        def alerted() -> bool:
            api.update(p.get(f"/api/alerts?from={t0}&to={t0 + 6 * H}") or {})
            return len(api.get("alerts", [])) >= 2

        p.wait(alerted, 120, "spike alerts")
        wall_s = time.monotonic() - sent
        p.wait_counts({"clicks": steady.clicks + spiky.clicks}, timeout=240)
        time.sleep(5)  # more polls: nothing else fires
        api = p.get(f"/api/alerts?from={t0}&to={t0 + 6 * H}")
        seen = metrics(p)
    finally:
        p.stop_workers()

    expected = {("promoter", "p1"), ("tracking_code", "T-A")}
    assert {(a["kind"], a["key"]) for a in api["alerts"]} == expected and len(api["alerts"]) == 2
    assert seen['refstream_referral_spikes_total{kind="promoter"}'] == 1
    assert seen['refstream_referral_spikes_total{kind="tracking_code"}'] == 1
    assert seen['refstream_referral_spike_score{kind="tracking_code"}'] >= 6

    rows = p.query("SELECT kind, key, toUnixTimestamp64Milli(bucket_start) AS b, observed,"
                   " toUnixTimestamp64Milli(first_event_ts) AS f, toUnixTimestamp64Milli(detected_at) AS d"
                   " FROM alerts FINAL")
    assert {(r["kind"], r["key"]) for r in rows} == expected and len(rows) == 2
    kafka = consume_alerts(p)
    assert {(a["kind"], a["id"]) for a in kafka} == expected and len(kafka) == 2

    # a restart restores the detector from Redis: the burst's bucket, still open, does not alert again
    after = traffic(rng, t0 + 5 * H, t0 + 5 * H + 30 * MIN)
    p.start_worker()
    try:
        p.produce(after.messages)
        p.wait_counts({"clicks": steady.clicks + spiky.clicks + after.clicks}, timeout=240)
        time.sleep(5)
    finally:
        p.stop_workers()
    assert len(consume_alerts(p)) == 2
    assert '"restored": true' in (tmp_path / "worker-1.log").read_text()

    assert spiky.first_burst_ts is not None
    for a in kafka:
        assert a["bucket_start"] == burst_at - burst_at % BUCKET
        assert a["count"] >= 20 and a["first_event_ts"] <= spiky.first_burst_ts + BUCKET
        event_s = (a["detected_ts"] - spiky.first_burst_ts) / 1000
        assert 0 <= event_s <= BUCKET / 1000
        print(f"spike alert {a['kind']}={a['id']}: count {a['count']} vs baseline {a['baseline']:.1f}, "
              f"score {a['score']:.1f}; first burst event -> alert: {event_s:.0f} s event time, "
              f"{wall_s:.1f} s wall clock from producing the burst to /api/alerts")
