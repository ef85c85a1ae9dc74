"""SIGKILL a worker mid-stream, restart it: the result equals an uninterrupted run's, with
the join state in memory (rebuilt from the changelogs at each start) and in RocksDB (kept
on disk: a restart reads only the changelogs' tail).

Restarts are immediate (the killed member is still in the consumer group); set
REFSTREAM_TEST_RESTART_DELAY_S to wait before each restart instead.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.dev.traffic import Traffic, TrafficSpec, generate
from tests.support.pipeline import STORES, Pipeline, expected_counts, raw_messages, settled_end_ms

pytestmark = pytest.mark.integration
RESTART_DELAY_S = float(os.environ.get("REFSTREAM_TEST_RESTART_DELAY_S", 0))
COMPARED = ("order_id", "status", "reasons", "promoter_id", "tracking_code", "account_id", "amount", "level", "tier", "cap",
            "click_event_id", "signup_event_id", "order_status", "rate", "commission", "bonus", "points",
            "attribution_final")


def conversions(p: Pipeline) -> dict[str, tuple]:
    rows = p.query(f"SELECT {', '.join(COMPARED)} FROM conversions_current")
    return {r["order_id"]: tuple(str(r[c]) for c in COMPARED) for r in rows}


def start(p: Pipeline, traffic, promoters: int) -> None:
    p.start_worker()
    p.produce([m for m in traffic.messages if m[0] in ("promoters", "exclusions")])
    p.wait(lambda: (p.get("/health") or {}).get("promoters") == promoters, 60, "promoters")


def crash_and_recover(p: Pipeline, traffic, raw: list, promoters: int, expected: dict[str, int]) -> list[dict[str, int]]:
    """Feed the traffic through a worker that is SIGKILLed twice, then let it finish; return
    the changelogs' end offsets after each kill."""
    def some_rows_written() -> bool:
        return (p.get("/health") or {}).get("sink", {}).get("rows_written", {}).get("clicks", 0) > 0

    ends = []
    start(p, traffic, promoters)
    half = len(raw) // 2
    p.produce(raw[:half])
    p.wait(some_rows_written, 120, "first rows")   # kill as soon as some of the first half is written
    p.stop_workers(sig=signal.SIGKILL)
    ends.append(changelog_ends(p))
    p.produce(raw[half:])                          # traffic keeps coming while the worker is down
    time.sleep(RESTART_DELAY_S)
    p.start_worker()
    p.wait(some_rows_written, 120, "rows after restart")
    p.stop_workers(sig=signal.SIGKILL)             # and once more, right after restarting
    ends.append(changelog_ends(p))
    time.sleep(RESTART_DELAY_S)
    p.start_worker()
    p.wait_counts(expected)
    return ends


TABLES = ("visitors", "accounts", "promoter-books")


def changelog_ends(p: Pipeline) -> dict[str, int]:
    """"topic/partition" -> the end offset of the join tables' changelogs, as the broker lists it."""
    async def read() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=p.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()
            app_id = p.env["REFSTREAM_APP_ID"]
            tps = [TopicPartition(topic, n) for topic in (f"{app_id}-{t}-changelog" for t in TABLES)
                   for n in sorted(consumer.partitions_for_topic(topic) or ())]
            return {f"{tp.topic}/{tp.partition}": n for tp, n in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def recovery_starts(log: Path) -> dict[str, int]:
    """"topic/partition" -> the changelog offset the worker's first recovery started reading
    at (Faust's "Reading Starts At - Active" table; -1: from the beginning)."""
    for line in log.read_text().splitlines():
        if "Reading Starts At - Active" in line:
            starts, topic = {}, ""
            for row in json.loads(line)["msg"].splitlines():
                cells = [c.strip() for c in row.strip("|").split("|")]
                if len(cells) == 3 and cells[2].lstrip("-").isdigit():
                    topic = topic if cells[0] == "\u3003" else cells[0]
                    starts[f"{topic}/{cells[1]}"] = int(cells[2])
            return starts
    raise AssertionError(f"no recovery in {log}")


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TrafficSpec(seed=11, visitors=3000, days=10, end_ms=settled_end_ms(), malformed=3))


@pytest.fixture(scope="module")
def reference(stack, traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """conversions_current of one worker that nothing disturbs."""
    prefix = f"t{uuid.uuid4().hex[:8]}-calm-"
    calm = Pipeline.create(stack, prefix, tmp_path_factory.mktemp("calm"), comparable=True)
    start(calm, traffic, len(traffic.truth.promoters))
    calm.produce(raw_messages(traffic))
    try:
        calm.wait_counts(expected_counts(traffic))
    finally:
        calm.stop_workers()
    result = conversions(calm)
    truth = {oid for acc in traffic.truth.accounts.values() for oid in acc.orders}
    assert set(result) == truth, "the uninterrupted run must match the generator's ground truth"
    return result


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_crash_and_restart_gives_the_same_conversions(stack, topic_prefix, tmp_path, traffic, reference,
                                                      store: str) -> None:
    raw = raw_messages(traffic)
    crashy = Pipeline.create(stack, topic_prefix + "crash-", tmp_path / "crash", comparable=True, **STORES[store])
    try:
        ends = crash_and_recover(crashy, traffic, raw, len(traffic.truth.promoters), expected_counts(traffic))
    finally:
        crashy.stop_workers()
    assert conversions(crashy) == reference

    # what each restart read of the changelogs: all of it from memory, the tail from RocksDB
    written = {tp: n for tp, n in ends[0].items() if n > 0}
    assert written, "the first run wrote join state"
    for restart, end in zip((1, 2), ends):
        starts = recovery_starts(tmp_path / "crash" / f"worker-{restart}.log")
        if store == "memory://":
            assert all(starts[tp] == -1 for tp in written), starts
        else:  # from the offset the local state had reached: at most the batches in flight at the kill
            replayed = sum(end[tp] - max(starts[tp], 0) for tp in end)
            assert all(starts[tp] >= 0 for tp in written), starts
            assert replayed <= 0.1 * sum(end.values()), (starts, end)
