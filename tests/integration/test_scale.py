"""Several workers share the partitions and produce exactly what one worker produces.

On chdb (one process per ClickHouse directory) scaling means N `stream` workers (router,
joins) and one `sink` worker (ClickHouse). Both tests compare `conversions_current` with
the run of one `all` worker on the same generated traffic: two stream workers from the
start, and a stream worker joined mid-stream, another one SIGTERMed (drained) and the last
one SIGKILLed and restarted, with the join state in memory and in RocksDB. Faust's group join on Tansu takes ~5-8 s per rebalance.
"""
from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streams.dev.traffic import Traffic, TrafficSpec, generate
from tests.support.pipeline import (
    STORES,
    Pipeline,
    assert_same_conversions,
    conversions,
    expected_counts,
    load_reference,
    raw_messages,
    settled_end_ms,
    undisturbed,
)

integration = pytest.mark.integration


# -- on the local stack --------------------------------------------------------------------


def routed(p: Pipeline, w: subprocess.Popen) -> float:
    """Raw input messages a stream worker has routed so far."""
    return p.metric("refstream_events_in_total", w)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TrafficSpec(seed=23, visitors=2000, days=7, end_ms=settled_end_ms(), malformed=3))


@pytest.fixture(scope="module")
def reference(stack, traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return undisturbed(stack, traffic, tmp_path_factory.mktemp("one"))


#: Pipeline settings of each table store (Faust's persisted-offset check is off for RocksDB on
#: Tansu, whose listed end offsets fall short of a batch's last record: tests/integration/test_crash.py)


def scaled(stack, tmp: Path, store: str = "memory://") -> Pipeline:
    return Pipeline.create(stack, f"t{uuid.uuid4().hex[:8]}-", tmp, comparable=True, **STORES[store])


def start_in(p: Pipeline, name: str) -> subprocess.Popen:
    """A stream worker whose data directory (its table state) is `<workdir>/<name>`."""
    p.env["REFSTREAM_DATA_DIR"] = str(p.workdir / name)
    return p.start_worker(role="stream")


@integration
def test_two_stream_workers_and_a_sink_match_one_worker(stack, traffic, reference, tmp_path) -> None:
    p = scaled(stack, tmp_path)
    try:
        p.start_worker(role="sink")
        a = p.start_worker(role="stream")
        b = p.start_worker(role="stream")
        load_reference(p, traffic, a, b)
        p.produce(raw_messages(traffic))
        p.wait_done(expected_counts(traffic))
        shares = routed(p, a), routed(p, b)
        ready = [p.get("/ready", w) for w in p.workers]
    finally:
        p.stop_workers()
    assert all(shares), f"both stream workers must get input partitions: routed {shares}"
    assert all(r and r["ready"] for r in ready), ready
    assert_same_conversions(conversions(p), reference)


@integration
@pytest.mark.parametrize("store", STORES)
def test_join_drain_and_crash_mid_stream_lose_and_duplicate_nothing(stack, traffic, reference, tmp_path,
                                                                    store: str) -> None:
    """Each stream worker has a data directory of its own, as each pod its volume (RocksDB
    locks a database to one process); the restarted worker gets the killed one's back."""
    raw = raw_messages(traffic)
    third = len(raw) // 3
    p = scaled(stack, tmp_path, store)
    try:
        sink = p.start_worker(role="sink")
        a = start_in(p, "a")
        load_reference(p, traffic, a)
        p.produce(raw[:third])
        p.wait(lambda: (p.get("/health", sink) or {}).get("sink", {}).get("rows_written", {}).get("clicks", 0) > 0,
               120, "first rows")

        b = start_in(p, "b")                            # joins mid-stream: a rebalance moves partitions
        load_reference(p, traffic, b)
        p.produce(raw[third:2 * third])
        p.wait(lambda: routed(p, b) > 0, 120, "the second worker routing")

        started = time.monotonic()
        assert p.stop_worker(a, signal.SIGTERM) == 0, "SIGTERM must drain and exit cleanly"
        drained_s = time.monotonic() - started
        before = routed(p, b)
        p.produce(raw[2 * third:])                      # b takes over a's partitions
        p.wait(lambda: routed(p, b) > before, 120, "the remaining worker taking over")

        p.stop_worker(b, signal.SIGKILL)                # a crash, restarted at once
        start_in(p, "b")
        p.wait_done(expected_counts(traffic))
    finally:
        p.stop_workers()
    assert drained_s < 30, f"SIGTERM took {drained_s:.1f} s"
    assert_same_conversions(conversions(p), reference)
