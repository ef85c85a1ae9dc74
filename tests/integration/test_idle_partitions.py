"""Idle input partitions on the real stack (issue 15): a raw partition that never receives a
message does not hold event time back, and when it wakes up with old records exactly those
go to late-events."""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.logic.partitioning import partition_for
from streams.topology import RAW_TOPICS
from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
H = 3_600_000
PARTITIONS = 2
SILENT = ("clicks", 1)  # the partition that receives nothing until it wakes up


def key_on(partition: int, name: str) -> bytes:
    """A message key that the producer's partitioner sends to `partition` (murmur2, as the router's)."""
    return next(k for k in (f"{name}-{i}".encode() for i in range(1000)) if partition_for(k, PARTITIONS) == partition)


def raw(topic: str, partition: int, eid: str, ts: int, **fields: Any) -> tuple[str, bytes, bytes]:
    return topic, key_on(partition, eid), event(event_id=eid, ts=ts, **fields)


def tick(topic: str, partition: int, n: int, ts: int) -> tuple[str, bytes, bytes]:
    """Traffic that makes no conversion: a click nobody signs up after, an organic signup, an
    order of an account that never signed up."""
    eid = f"tick-{topic}-{partition}-{n}"
    body: dict[str, Any] = {"clicks": dict(tracking_code="T-X", visitor_id=eid),
                            "signups": dict(account_id=eid, visitor_id=eid),
                            "orders": dict(order_id=eid, account_id=eid, product="p", amount="1.00", currency="USD",
                                           status="paid")}[topic]
    return raw(topic, partition, eid, ts, **body)


class Trickle:
    """Keeps every raw partition but `SILENT` busy (one event each every `every_s`, event time
    a minute further each round) from a thread, until the `with` block ends: the other
    partitions never go idle, so only the silent one is left out of the watermark."""

    def __init__(self, p: Pipeline, start_ts: int, every_s: float = 0.5) -> None:
        self.p, self.start_ts, self.every_s = p, start_ts, every_s
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.busy = [(t, q) for t in RAW_TOPICS for q in range(PARTITIONS) if (t, q) != SILENT]

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.p.kafka)
        await producer.start()
        try:
            while not self._stop.is_set():
                ts = self.start_ts + self.rounds * 60_000
                sent = [await producer.send(self.p.topic(t), key=k, value=v)
                        for t, k, v in (tick(t, q, self.rounds, ts) for t, q in self.busy)]
                await asyncio.gather(*sent)
                self.rounds += 1
                await asyncio.sleep(self.every_s)
        finally:
            await producer.stop()

    def sent(self, topic: str) -> int:
        return self.rounds * sum(1 for t, _ in self.busy if t == topic)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def gauge(p: Pipeline, name: str, **labels: str) -> float:
    """Sum of gauge `name` over the samples with these labels on the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def last_values(p: Pipeline, topic: str) -> dict[bytes, bytes | None]:
    """The last value per key of a whole topic (a table's changelog: None is a deletion)."""
    async def read() -> dict[bytes, bytes | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=p.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, q) for q in range(PARTITIONS)]  # a table has the join's partitions
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: dict[bytes, bytes | None] = {}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    out.update((r.key, r.value) for r in records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_a_silent_partition_does_not_hold_event_time_and_its_old_records_are_late(stack, topic_prefix,
                                                                                   tmp_path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=PARTITIONS, allowed_lateness_s=3600,
                        idle_partition_s=2, attribution_window_days=0.25)  # clicks expire 6 h after
    t0 = int(time.time() * 1000) - 5 * 24 * H
    p.start_worker()
    try:
        p.produce([("promoters", b"T-A", event(event_id="p1", ts=t0 - 100 * H, promoter_id="alice",
                                               tracking_code="T-A"))])
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 1, 60, "promoters")
        p.produce([
            raw("clicks", 0, "c1", t0, tracking_code="T-A", visitor_id="v1"),
            raw("signups", 0, "s1", t0 + H, account_id="a1", visitor_id="v1"),
            raw("orders", 0, "o1", t0 + 2 * H, order_id="o1", account_id="a1", product="db-pro", amount="50.00",
                currency="USD", status="paid"),
        ])
        with Trickle(p, t0 + 20 * H) as trickle:
            # clicks/1 never heard from: without idleness the visitor join has no watermark,
            # so o1's attribution would never be final and v1's state would never expire
            final = {"conversions_current": 1, "conversions_open": 0}
            p.wait(lambda: final.items() <= (p.get("/counts") or {}).items(), 90, f"counts {final}")
            # each visitor partition leaves out the silent partition, and only it
            p.wait(lambda: gauge(p, "refstream_join_idle_sources", join="visitor") == PARTITIONS, 30,
                   "the visitor join's partitions leave out one source each")
            assert gauge(p, "refstream_join_idle_sources") == PARTITIONS  # no other join has an idle source
            assert gauge(p, "refstream_idle_input_partitions") == 1
            assert gauge(p, "refstream_idle_input_partitions", topic=p.topic("clicks")) == 1
        changelog = f"{p.env['REFSTREAM_APP_ID']}-visitors-changelog"
        p.wait(lambda: last_values(p, changelog).get(b"v1", b"") is None, 30, "v1's visitor state expired")

        # the silent partition wakes up: two records behind the watermark (late), one ahead
        p.produce([raw("clicks", 1, "c-old-1", t0 + 30 * 60_000, tracking_code="T-A", visitor_id="v-old-1"),
                   raw("clicks", 1, "c-new", t0 + 30 * H, tracking_code="T-A", visitor_id="v-new"),
                   raw("clicks", 1, "c-old-2", t0 + 10 * H, tracking_code="T-A", visitor_id="v-old-2")])
        p.wait_counts({"clicks": 1 + trickle.sent("clicks") + 3, "late_events": 2, "conversions_open": 0})
    finally:
        p.stop_workers()

    late = p.query("SELECT event_id, join, source FROM late_events FINAL ORDER BY event_id")
    assert [(r["event_id"], r["join"]) for r in late] == [("c-old-1", "visitor"), ("c-old-2", "visitor")]
    assert all(r["source"].startswith(p.topic("clicks") + "/1/") for r in late)
    [conversion] = p.query("SELECT order_id, promoter_id, attribution_final FROM conversions_current")
    assert (conversion["order_id"], conversion["promoter_id"], str(conversion["attribution_final"])) == (
        "o1", "alice", "True")


class OrdersOnly(Trickle):
    """Only the orders partitions carry traffic: a night without clicks or signups."""

    def __init__(self, p: Pipeline, start_ts: int) -> None:
        super().__init__(p, start_ts)
        self.busy = [("orders", q) for q in range(PARTITIONS)]


def test_orders_alone_keep_the_account_join_moving_when_clicks_and_signups_are_idle(stack, topic_prefix,
                                                                                    tmp_path) -> None:
    """Every clicks and signups partition idle: each visitor partition is idle for the account
    join too, whose watermark then follows the orders (else it would wait for clicks)."""
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=PARTITIONS, allowed_lateness_s=3600,
                        idle_partition_s=2)
    t0 = int(time.time() * 1000) - 5 * 24 * H
    p.start_worker()
    try:
        p.produce([raw("clicks", 0, "c1", t0, tracking_code="T-A", visitor_id="v1"),
                   raw("signups", 0, "s1", t0 + H, account_id="a1", visitor_id="v1")])
        with OrdersOnly(p, t0 + 20 * H):
            def account_watermarks() -> list[float]:
                return [gauge(p, "refstream_watermark_ms", join="account", partition=str(q)) for q in range(PARTITIONS)]
            p.wait(lambda: min(account_watermarks()) > t0 + 19 * H - 3600_000, 90,
                   "the account join's watermark follows the orders")
            assert gauge(p, "refstream_join_idle_sources", join="account") == PARTITIONS * PARTITIONS  # visitor/*
            assert gauge(p, "refstream_join_idle_sources", join="visitor") == PARTITIONS * 2 * PARTITIONS
            assert gauge(p, "refstream_join_sources", join="visitor", partition="0") == 2 * PARTITIONS
    finally:
        p.stop_workers()
