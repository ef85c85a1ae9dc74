"""DiskBatchedTable over Faust's real RocksDB store (rocksdict, a temp dir): which partition's
database a key lands in, that it lands there only once the changelog took it, and what a
worker restarted after a crash finds. The broker is `Changelog`, a log per partition that
assigns offsets and acknowledges batches when a case says so."""
from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.record.default_records import DefaultRecordBatch
from faust.assignor.client_assignment import ClientAssignment
from faust.types import TP

from streams.delivery.changelog import (
    MAX_LOCAL_AGE_S,
    ROCKSDB_OPTIONS,
    BatchedTable,
    DiskBatchedTable,
    batched_table,
    drop_other_changelogs,
    drop_stale_databases,
    local_databases,
)
from streams.logic.partitioning import partition_for

PARTITIONS = 4
TOPIC = "t-visitors-changelog"


def key_in(p: int, n: int = 0) -> bytes:
    """The n-th key of `v-0`, `v-1`, ... that `partition_for` puts in partition p."""
    keys = (f"v-{i}".encode() for i in range(10_000))
    return [k for k in keys if partition_for(k, PARTITIONS) == p][n]


A0, B0, A1, A3 = key_in(0), key_in(0, 1), key_in(1), key_in(3)
CLOCK2 = b"\x00clock/2"


class Changelog:
    """The broker: `send_batch` appends to a partition's log when `ack` says so, in order."""

    _message_accumulator = SimpleNamespace(_compression_type=0)

    def __init__(self) -> None:
        self.log: dict[int, list[tuple[bytes, bytes | None]]] = defaultdict(list)
        self.unacked: list[tuple[asyncio.Future, int, Any]] = []

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.unacked.append((fut, partition, batch))
        return fut

    async def ack(self, n: int | None = None) -> None:
        """Append the first n sent batches (all) and acknowledge them."""
        n = len(self.unacked) if n is None else n
        taken, self.unacked = self.unacked[:n], self.unacked[n:]
        for fut, partition, batch in taken:
            first = len(self.log[partition])
            self.log[partition] += [(r.key, r.value) for r in DefaultRecordBatch(bytes(batch._builder.build()))]
            fut.set_result(SimpleNamespace(partition=partition, offset=first,
                                           topic_partition=TP(TOPIC, partition)))
        await asyncio.sleep(0)  # the done callbacks run


def open_table(datadir: Path, changelog: Changelog, actives: tuple[int, ...] = tuple(range(PARTITIONS))) -> Any:
    app = faust.App("t", store="rocksdb://", datadir=str(datadir), autodiscover=False)
    table = app.Table("visitors", partitions=PARTITIONS, key_type=bytes, value_type=bytes,
                      options=dict(ROCKSDB_OPTIONS))
    app.assignor._assignment = ClientAssignment(actives={TOPIC: list(actives)}, standbys={})
    t = batched_table(table, lambda: changelog, lambda exc: None, PARTITIONS)
    for p in actives:
        t.store._db_for_partition(p)  # what Faust's assignment of the partition does
    return t


def crash(t: DiskBatchedTable) -> None:
    """What a killed worker leaves: the databases as written (closed, as the OS would)."""
    t.store._dbs.clear()
    gc.collect()


def in_db(t: DiskBatchedTable, p: int) -> dict[bytes, bytes]:
    return dict(t.store._visible_items(t.store._db_for_partition(p)))


@dataclass
class Case:
    name: str
    ops: list[tuple]  # ("set", p, key, value) ("del", p, key) ("flush",) ("ack", n or None) ("crash",)
    reads: dict[bytes, bytes | None]  # what get() answers at the end
    dbs: dict[int, dict[bytes, bytes]]  # partition -> its database's keys at the end (others empty)
    offsets: dict[int, int | None] = field(default_factory=dict)  # persisted offsets at the end


CASES = [
    Case("each key in its partition's database",
         [("set", 0, A0, b"a"), ("set", 1, A1, b"b"), ("set", 3, A3, b"c"), ("set", 0, B0, b"d"), ("flush",), ("ack", None)],
         {A0: b"a", A1: b"b", A3: b"c", B0: b"d"}, {0: {A0: b"a", B0: b"d"}, 1: {A1: b"b"}, 3: {A3: b"c"}},
         {0: 1, 1: 0, 2: None, 3: 0}),
    Case("a clock key in the partition it names",
         [("set", 2, CLOCK2, b"clock"), ("flush",), ("ack", None)], {CLOCK2: b"clock"}, {2: {CLOCK2: b"clock"}}, {2: 0}),
    Case("read at once, in the database once the changelog took it",
         [("set", 0, A0, b"a"), ("flush",)], {A0: b"a"}, {}, {0: None}),
    Case("unflushed writes are read too", [("set", 0, A0, b"a")], {A0: b"a"}, {}),
    Case("an earlier write's ack leaves the later one",
         [("set", 0, A0, b"1"), ("flush",), ("set", 0, A0, b"2"), ("flush",), ("ack", 1)],
         {A0: b"2"}, {0: {A0: b"1"}}, {0: 0}),
    Case("both acked: the last one", [("set", 0, A0, b"1"), ("flush",), ("set", 0, A0, b"2"), ("flush",), ("ack", None)],
         {A0: b"2"}, {0: {A0: b"2"}}, {0: 1}),
    Case("a delete is a tombstone, in the database at its ack",
         [("set", 0, A0, b"1"), ("flush",), ("ack", None), ("del", 0, A0), ("flush",), ("ack", None)],
         {A0: None}, {}, {0: 1}),
    Case("a delete not acked yet hides the stored value",
         [("set", 0, A0, b"1"), ("flush",), ("ack", None), ("del", 0, A0), ("flush",)], {A0: None}, {0: {A0: b"1"}}, {0: 0}),
    Case("deleting an unknown key writes nothing", [("del", 0, A0), ("flush",), ("ack", None)], {A0: None}, {}, {0: None}),
    Case("an earlier delete's ack leaves a later delete (tombstones are all None)",
         [("set", 0, A0, b"0"), ("flush",), ("ack", None), ("del", 0, A0), ("flush",), ("set", 0, A0, b"1"), ("flush",),
          ("del", 0, A0), ("flush",), ("ack", 1), ("ack", 1)],
         {A0: None}, {0: {A0: b"1"}}, {0: 2}),
    Case("a crash before the ack: the restarted worker has the acked prefix",
         [("set", 0, A0, b"1"), ("set", 1, A1, b"x"), ("flush",), ("ack", None), ("set", 0, A0, b"2"), ("set", 0, B0, b"3"),
          ("flush",), ("crash",)],
         {A0: b"1", A1: b"x", B0: None}, {0: {A0: b"1"}, 1: {A1: b"x"}}, {0: 0, 1: 0}),
    Case("a crash after the ack: all of it",
         [("set", 0, A0, b"1"), ("flush",), ("ack", None), ("set", 0, A0, b"2"), ("flush",), ("ack", None), ("crash",)],
         {A0: b"2"}, {0: {A0: b"2"}}, {0: 1}),
]


async def play(datadir: Path, ops: list[tuple]) -> tuple[DiskBatchedTable, Changelog]:
    changelog = Changelog()
    t = open_table(datadir, changelog)
    for op in ops:
        if op[0] == "set":
            t.set(op[1], op[2], op[3])
        elif op[0] == "del":
            t.delete(op[1], op[2])
        elif op[0] == "flush":
            await t.flush()
        elif op[0] == "ack":
            await changelog.ack(op[1])
        else:
            crash(t)
            t = open_table(datadir, changelog)
    return t, changelog


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_disk_table(tmp_path: Path, case: Case) -> None:
    t, _ = asyncio.run(play(tmp_path, case.ops))
    assert isinstance(t, DiskBatchedTable)
    assert {k: t.get(k) for k in case.reads} == case.reads
    assert {p: in_db(t, p) for p in range(PARTITIONS)} == {p: case.dbs.get(p, {}) for p in range(PARTITIONS)}
    assert {p: t.store.persisted_offset(TP(TOPIC, p)) for p in case.offsets} == case.offsets
    assert sorted(t.keys()) == sorted(k for k, v in case.reads.items() if v is not None)


def test_the_changelog_rebuilds_the_database(tmp_path: Path) -> None:
    """What the restarted worker holds is what replaying its changelog gives, key by key."""
    ops = [("set", 0, A0, b"1"), ("set", 1, A1, b"x"), ("flush",), ("del", 0, A0), ("set", 0, B0, b"2"), ("flush",),
           ("set", 3, A3, b"y"), ("flush",), ("ack", 3), ("crash",)]  # the first two flushes' three batches
    t, changelog = asyncio.run(play(tmp_path, ops))
    replayed: dict[bytes, bytes] = {}
    for p in range(PARTITIONS):
        for key, value in changelog.log[p]:
            if value is None:
                replayed.pop(key, None)
            else:
                replayed[key] = value
    assert {k: v for p in range(PARTITIONS) for k, v in in_db(t, p).items()} == replayed == {A1: b"x", B0: b"2"}


def changelog_event(p: int, offset: int, key: bytes, value: bytes | None) -> Any:
    message = SimpleNamespace(tp=TP(TOPIC, p), partition=p, offset=offset, key=key, value=value)
    return SimpleNamespace(message=message, key=key, value=value)


@pytest.mark.parametrize("offsets, expected, persisted", [
    ([0], b"acked", 1),                  # behind the table's own ack: skipped
    ([1], b"acked", 1),                  # the persisted offset itself (Faust seeks to it): skipped
    ([2], b"replayed", 2),               # past it: applied
    ([0, 1, 2, 3], b"replayed", 3),
], ids=["behind", "at the offset", "past it", "across it"])
def test_recovery_applies_only_what_follows_the_database(tmp_path: Path, offsets: list[int], expected: bytes,
                                                         persisted: int) -> None:
    async def run() -> DiskBatchedTable:
        t, changelog = await play(tmp_path, [("set", 0, B0, b"x"), ("set", 0, A0, b"acked"), ("flush",), ("ack", None)])
        t.table.apply_changelog_batch([changelog_event(0, o, A0, b"replayed") for o in offsets])
        return t

    t = asyncio.run(run())
    assert t.get(A0) == expected
    assert t.store.persisted_offset(TP(TOPIC, 0)) == persisted


def test_records_after_a_gap_are_stored_but_the_offset_stays(tmp_path: Path) -> None:
    async def run() -> DiskBatchedTable:
        t, changelog = await play(tmp_path, [("set", 0, A0, b"1"), ("flush",), ("ack", None)])
        changelog.log[0] += [(b"other-owner", b"?")] * 5  # another owner's records since
        await play_more(t, changelog, [("set", 0, A0, b"2"), ("flush",), ("ack", None)])
        return t

    t = asyncio.run(run())
    assert in_db(t, 0) == {A0: b"2"}
    assert t.store.persisted_offset(TP(TOPIC, 0)) == 0  # a restart replays offsets 1... again


async def play_more(t: DiskBatchedTable, changelog: Changelog, ops: list[tuple]) -> None:
    for op in ops:
        if op[0] == "set":
            t.set(op[1], op[2], op[3])
        elif op[0] == "flush":
            await t.flush()
        else:
            await changelog.ack(op[1])


def test_a_revoked_partitions_ack_does_not_reopen_its_database(tmp_path: Path) -> None:
    async def run() -> DiskBatchedTable:
        t, changelog = await play(tmp_path, [("set", 0, A0, b"1"), ("flush",), ("ack", None), ("set", 0, A0, b"2"),
                                             ("flush",)])
        t.store.revoke_partitions(t.table, {TP(TOPIC, 0)})  # what Faust does at a rebalance
        await changelog.ack()
        assert 0 not in t.store._dbs
        return t

    t = asyncio.run(run())
    assert in_db(t, 0) == {A0: b"1"} and t.store.persisted_offset(TP(TOPIC, 0)) == 0  # replayed from there


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for f in [path, *path.iterdir()]:
        os.utime(f, (then, then))


@pytest.mark.parametrize("ages, dropped", [
    ({0: 60.0, 1: 3600.0}, []),
    ({0: 60.0, 1: MAX_LOCAL_AGE_S + 60}, [1]),
    ({0: MAX_LOCAL_AGE_S + 1, 1: 10 * MAX_LOCAL_AGE_S}, [0, 1]),
], ids=["fresh", "one stale", "all stale"])
def test_stale_local_state_is_dropped_at_start(tmp_path: Path, ages: dict[int, float], dropped: list[int]) -> None:
    t, _ = asyncio.run(play(tmp_path, [("set", 0, A0, b"1"), ("set", 1, A1, b"2"), ("flush",), ("ack", None)]))
    crash(t)
    for p, seconds in ages.items():
        age(local_databases(t.store)[p], seconds)
    assert drop_stale_databases(t.store, time.time()) == dropped
    assert sorted(local_databases(t.store)) == sorted(set(range(PARTITIONS)) - set(dropped))


def test_a_database_another_worker_has_open_is_kept(tmp_path: Path) -> None:
    t, _ = asyncio.run(play(tmp_path, [("set", 1, A1, b"2"), ("flush",), ("ack", None)]))
    crash(t)
    path = local_databases(t.store)[1]
    age(path, 10 * MAX_LOCAL_AGE_S)
    holder = subprocess.Popen([sys.executable, "-c", "import rocksdict, sys, time; db = rocksdict.Rdict(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert drop_stale_databases(t.store, time.time()) == []
    finally:
        holder.kill()
        holder.wait()
    age(path, 10 * MAX_LOCAL_AGE_S)  # its opening wrote files
    assert drop_stale_databases(t.store, time.time()) == [1]


def test_after_a_recovery_old_unheld_partitions_are_deleted(tmp_path: Path) -> None:
    async def run() -> DiskBatchedTable:
        t, _ = await play(tmp_path, [("set", p, key_in(p), b"x") for p in range(PARTITIONS)] + [("flush",), ("ack", None)])
        t.store.revoke_partitions(t.table, {TP(TOPIC, 1), TP(TOPIC, 2), TP(TOPIC, 3)})
        gc.collect()
        for p in (1, 3):
            age(local_databases(t.store)[p], 2 * MAX_LOCAL_AGE_S)
        t.store.app.assignor._assignment = ClientAssignment(actives={TOPIC: [0]}, standbys={TOPIC: [1]})
        await t.table.call_recover_callbacks()
        return t

    t = asyncio.run(run())
    # 1: a standby here; 2: revoked lately, kept for a quick return; 3: revoked long ago
    assert sorted(local_databases(t.store)) == [0, 1, 2]
    assert sorted(t.keys()) == [key_in(0)]  # the actives' keys only


def test_an_old_copy_is_replaced_when_its_partition_comes_back(tmp_path: Path) -> None:
    async def run() -> DiskBatchedTable:
        t, _ = await play(tmp_path, [("set", 1, A1, b"old"), ("flush",), ("ack", None)])
        t.store.revoke_partitions(t.table, {TP(TOPIC, 1)})
        gc.collect()
        age(local_databases(t.store)[1], 2 * MAX_LOCAL_AGE_S)
        await t.store.assign_partitions(t.table, {TP(TOPIC, 1)})  # back, much later
        return t

    t = asyncio.run(run())
    assert t.get(A1) is None and t.store.persisted_offset(TP(TOPIC, 1)) is None  # replayed in full


@pytest.mark.parametrize("topic, dropped", [
    (TOPIC, []),
    ("app2-visitors-changelog", [0, 1, 2, 3]),  # a new REFSTREAM_APP_ID on the same volume
], ids=["same changelog", "another changelog"])
def test_the_state_of_another_changelog_is_dropped(tmp_path: Path, topic: str, dropped: list[int]) -> None:
    t, _ = asyncio.run(play(tmp_path, [("set", 0, A0, b"1"), ("flush",), ("ack", None)]))
    crash(t)
    assert drop_other_changelogs(t.store, topic) == dropped
    assert (t.store.path / "visitors.changelog").read_text().strip() == topic


def test_the_memory_store_gets_the_memory_table(tmp_path: Path) -> None:
    app = faust.App("t", store="memory://", datadir=str(tmp_path), autodiscover=False)
    table = app.Table("visitors", partitions=PARTITIONS, key_type=bytes, value_type=bytes)
    t = batched_table(table, lambda: None, lambda exc: None, PARTITIONS)
    assert type(t) is BatchedTable


def test_a_read_never_reopens_a_revoked_partitions_database(tmp_path: Path) -> None:
    """A step finishing after its partition was revoked reads nothing of it, and reopens
    nothing: the database stays closed for its next owner and for the stale-copy check."""
    async def run() -> DiskBatchedTable:
        t, _ = await play(tmp_path, [("set", 0, A0, b"1"), ("flush",), ("ack", None)])
        t.store.revoke_partitions(t.table, {TP(TOPIC, 0)})
        t.store.app.assignor.assigned_actives = lambda: {TP(TOPIC, p) for p in range(1, PARTITIONS)}
        return t
    t = asyncio.run(run())
    assert (t.get(A0), 0 in t.store._dbs) == (None, False)
    t.delete(0, A0)  # reads first: nothing to delete, nothing reopened
    assert 0 not in t.store._dbs


def test_a_local_store_failure_at_an_ack_stops_the_commits(tmp_path: Path) -> None:
    """RocksDB refusing an acknowledged batch (disk full) is reported like a batch the broker
    refused (`on_failure`: no further commits), not lost in the event loop's log."""
    failures: list[BaseException] = []

    async def run() -> None:
        changelog = Changelog()
        t = open_table(tmp_path, changelog)
        t._on_failure = failures.append
        db = t.store._dbs[0]

        class Full:
            def __getattr__(self, name: str) -> Any:
                return getattr(db, name)

            def write(self, batch: Any) -> None:
                raise OSError(28, "No space left on device")
        t.store._dbs[0] = Full()
        t.set(0, A0, b"1")
        await t.flush()
        await changelog.ack(None)
    asyncio.run(run())
    assert [type(e) for e in failures] == [OSError]
