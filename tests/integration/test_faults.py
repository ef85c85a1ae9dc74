"""Faults with real parts: SIGTERM mid-stream, ClickHouse refusing writes, Redis restarted.

Every test feeds the same generated traffic and compares `conversions_current` with one
undisturbed worker's. The ClickHouse fault is a real one: the chdb directory tree is made
immutable (`chattr +i`, root on ext4 and the like), so inserts fail on the disk as they
would on a full or read-only volume. The Redis fault restarts a dedicated redis-server
(saved on shutdown, as a Redis with persistence would be), down for ~10 s. The worker
stopped during a ClickHouse outage also runs with its join state in RocksDB: its restart
catches up from the changelogs' tail.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from streams.agents.sink import EXIT_UNDRAINED
from streams.dev import stack as local_stack
from streams.dev.traffic import Traffic, TrafficSpec, generate
from streams.topology import SINK
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

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TrafficSpec(seed=31, visitors=1500, days=7, end_ms=settled_end_ms(), malformed=3))


@pytest.fixture(scope="module")
def reference(stack, traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return undisturbed(stack, traffic, tmp_path_factory.mktemp("calm"))


def rows_written(p: Pipeline, worker: subprocess.Popen | None = None) -> int:
    return sum(((p.get("/health", worker) or {}).get("sink") or {}).get("rows_written", {}).values())


def log_records(path: Path, msg: str) -> list[dict]:
    """The JSON log lines of a worker log with message `msg`."""
    out = []
    for line in path.read_text().splitlines():
        if f'"msg": "{msg}' in line:
            out.append(json.loads(line))
    return out


def worker_log(p: Pipeline, index: int) -> Path:
    return next(p.workdir.glob(f"worker-{index}*.log"))


# -- SIGTERM ---------------------------------------------------------------------------


def test_sigterm_drains_the_sink_and_commits_what_it_wrote(stack, topic_prefix, traffic, reference,
                                                           tmp_path) -> None:
    """A SIGTERMed sink writes what it already took, commits exactly that, and exits; the
    restarted sink goes on from there."""
    raw = raw_messages(traffic)
    p = Pipeline.create(stack, topic_prefix, tmp_path, comparable=True)
    try:
        sink = p.start_worker(role="sink")                       # worker-0
        joins = p.start_worker(role="stream")                    # worker-1
        load_reference(p, traffic, joins)
        p.produce(raw[: len(raw) // 2])
        p.wait(lambda: rows_written(p, sink) > 0, 120, "first rows")
        assert p.stop_worker(sink, signal.SIGTERM) == 0
        handled = log_records(worker_log(p, 0), "sink stopped")[0]["handled"]
        committed = p.committed(p.topology.group(SINK.name), SINK.reads)
        p.produce(raw[len(raw) // 2:])
        p.start_worker(role="sink")
        p.wait_done(expected_counts(traffic))
    finally:
        p.stop_workers()
    assert handled, "the sink had written something"
    assert {tp: committed.get(tp) for tp in handled} == handled, "committed offsets = what the sink wrote"
    assert_same_conversions(conversions(p), reference)


# -- ClickHouse ----------------------------------------------------------------------------


@contextmanager
def unwritable(root: Path) -> Iterator[None]:
    """Make `root` and its directories down to the tables' (store/xxx/uuid) immutable: no new
    files, so ClickHouse cannot create parts. Undone recursively, whatever happened."""
    dirs = [root, *(d for d in root.rglob("*") if d.is_dir() and len(d.relative_to(root).parts) <= 3)]
    try:
        for d in dirs:  # one by one: a merge may remove a directory meanwhile
            subprocess.run(["chattr", "+i", str(d)], capture_output=True)
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True)


def chattr_works(tmp: Path) -> bool:
    probe = tmp / "chattr-probe"
    probe.mkdir()
    try:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(probe)]).returncode:
            return False
        try:
            (probe / "x").touch()
            return False  # immutable but writable: not enforced here
        except OSError:
            return True
    finally:
        subprocess.run(["chattr", "-i", str(probe)])


#: the join state in RocksDB (Faust's persisted-offset check off on Tansu, whose listed end
#: offsets fall short of a batch's last record: tests/integration/test_crash.py)
ROCKSDB = STORES["rocksdb://"]


@pytest.mark.parametrize("stop_during_outage, store", [(False, {}), (True, {}), (True, ROCKSDB)],
                         ids=["outage waited out", "stop during the outage", "stop during the outage, rocksdb"])
def test_clickhouse_outage_loses_nothing(stack, topic_prefix, traffic, reference, tmp_path,
                                         stop_during_outage: bool, store: dict[str, str]) -> None:
    if not chattr_works(tmp_path):
        pytest.skip("needs chattr +i enforced on the temp dir (root on ext4/xfs)")
    raw = raw_messages(traffic)
    thirds = [raw[: len(raw) // 3], raw[len(raw) // 3: 2 * len(raw) // 3], raw[2 * len(raw) // 3:]]
    p = Pipeline.create(stack, topic_prefix, tmp_path / "p", comparable=True, **store)
    chdb = tmp_path / "p" / "clickhouse"

    def failures() -> float:
        return p.metric("refstream_sink_failures_total")

    try:
        w = p.start_worker()                                     # worker-0
        load_reference(p, traffic, w)
        p.produce(thirds[0])
        p.wait(lambda: rows_written(p) > 0, 120, "first rows")

        with unwritable(chdb):                                   # an outage the sink waits out
            p.produce(thirds[1])
            p.wait(lambda: failures() > 0, 60, "failed inserts")
            time.sleep(8)
            assert (p.get("/health") or {}).get("sink", {}).get("failing") is True
            before = rows_written(p)
        p.wait(lambda: not (p.get("/health") or {}).get("sink", {}).get("failing"), 60, "recovery")
        assert rows_written(p) > before

        if stop_during_outage:
            with unwritable(chdb):                               # SIGTERM during an outage
                seen = failures()
                p.produce(thirds[2])
                p.wait(lambda: failures() > seen, 60, "failed inserts")
                started = time.monotonic()
                code = p.stop_worker(w, signal.SIGTERM)
                stop_s = time.monotonic() - started
            p.start_worker()                                     # worker-1
        else:
            p.produce(thirds[2])
        p.wait_done(expected_counts(traffic))
    finally:
        p.stop_workers()
    first = worker_log(p, 0)
    assert log_records(first, "clickhouse write failed, retrying")
    assert log_records(first, "clickhouse writes recovered")
    if stop_during_outage:
        assert log_records(first, "stopping while clickhouse fails")
        assert code == EXIT_UNDRAINED and stop_s < 20, f"exit {code} after {stop_s:.1f} s"
    assert_same_conversions(conversions(p), reference)


# -- Redis ----------------------------------------------------------------------------------


def test_redis_restart_is_waited_out(stack, topic_prefix, traffic, reference, tmp_path) -> None:
    """A dedicated Redis stops (saving its data, as a Redis with persistence does) for ~10 s
    mid-stream and comes back: the pipeline retries and loses nothing."""
    port = local_stack.free_port()
    own = replace(stack.base, data_dir=str(tmp_path / "redis"), redis_url=f"redis://127.0.0.1:{port}/0")
    local_stack.up(own, redis_port=port)
    raw = raw_messages(traffic)
    p = Pipeline.create(stack, topic_prefix, tmp_path / "p", comparable=True, redis_url=own.redis_url)
    try:
        w = p.start_worker()                                     # worker-0
        load_reference(p, traffic, w)
        p.produce(raw[: len(raw) // 2])
        p.wait(lambda: rows_written(p) > 0, 120, "first rows")
        redis.Redis(port=port).shutdown(save=True)
        local_stack.down(own)                                    # reaps it; the data stays in its dir
        p.produce(raw[len(raw) // 2:])
        p.wait(lambda: p.metric("refstream_redis_failures_total") > 0, 60, "failed Redis calls")
        time.sleep(10)
        local_stack.up(own, redis_port=port)
        p.wait_done(expected_counts(traffic))
        failures = p.metric("refstream_redis_failures_total")
    finally:
        p.stop_workers()
        local_stack.down(own)
    assert failures > 0
    assert log_records(worker_log(p, 0), "redis unavailable, retrying")
    assert_same_conversions(conversions(p), reference)
