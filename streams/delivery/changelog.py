"""Join state in a Faust table whose changelog gets one record batch per partition and step.

Faust sends one changelog message per table write, each through its producer buffer and
the Kafka client's per-message path. The joins write a state for nearly every click, and
that path was about a fifth of a stream worker's CPU. `BatchedTable` writes to the
table's store directly and `flush()` hands each partition's writes of the step (the last
value per key) to the client as whole record batches.

The changelog is the one Faust recovers from, in Faust's format (raw key, raw value, a
None value deletes). Offsets stay safe: a consumer commit first waits for every batch the
producer holds (`Consumer._commit_offsets` flushes it), and a batch the broker never took
stops all further commits of the worker (`on_failure`: the commit guard refuses them and
the worker crashes), so a step's input is never committed without its state changes.

With the RocksDB store (`rocksdb://`) the state outlives the process and a restart
replays only the changelog past the offset the store persisted: `DiskBatchedTable`.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from streams.logic.partitioning import partition_for

log = logging.getLogger(__name__)
BATCH_BYTES = 512 * 1024  # well under the 1 MB message size limit Kafka brokers default to
Write = tuple[bytes, bytes | None]  # a changelog record: key, value (None: a tombstone)

#: Faust's RocksDB defaults give every partition's database 3 x 64 MiB of write buffers and a
#: 2 GiB block cache of its own: with three tables, their standbys and 8 partitions that is
#: no memory limit at all. These bound one database to about 16 MiB of RAM (bench/state.py).
ROCKSDB_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
}
#: A local partition database last open longer ago than this is deleted before use, and the
#: partition replayed in full: the changelog's compaction drops tombstones once they are
#: `delete.retention.ms` old (24 h by default), so replaying only the tail of an older copy
#: could bring deleted keys back.
MAX_LOCAL_AGE_S = 12 * 3600.0


def batched_table(table: Any, producer: Callable[[], Any], on_failure: Callable[[BaseException], None],
                  partitions: int) -> BatchedTable:
    """The `BatchedTable` for `table`'s store: `DiskBatchedTable` for Faust's RocksDB store."""
    if isinstance(table.data, RocksDBStore):
        return DiskBatchedTable(table, producer, on_failure, partitions)
    return BatchedTable(table, producer, on_failure, partitions)


class BatchedTable:
    """The store of Faust table `table`, with writes staged per changelog partition.

    `producer()` returns the app's started `aiokafka` producer; `on_failure(exc)` is
    called when the broker did not take a batch; `partitions` is the table's partition
    count (a key's partition is `partition_for(key, partitions)`). Reads see every write
    at once; a write reaches the changelog at the next `flush()`.
    """

    def __init__(self, table: Any, producer: Callable[[], Any],
                 on_failure: Callable[[BaseException], None], partitions: int) -> None:
        if (table.key_serializer, table.value_serializer) != ("raw", "raw"):
            raise ValueError(f"table {table.name}: BatchedTable writes raw bytes; create it with "
                             "key_type=bytes and value_type=bytes (serializers 'raw')")
        self.table = table
        self.partitions = partitions
        self._producer = producer
        self._on_failure = on_failure
        self._staged: dict[int, dict[bytes, bytes | None]] = defaultdict(dict)

    def get(self, key: bytes) -> bytes | None:
        return self.table.data.get(key)

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.table.data.keys()))

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self.table.data[key] = value
        self._staged[partition][key] = value

    def delete(self, partition: int, key: bytes) -> None:
        if key in self.table.data:
            del self.table.data[key]
        elif key not in self._staged.get(partition, ()):
            return  # never written: nothing to delete in the changelog either
        self._staged[partition][key] = None  # a tombstone

    async def flush(self) -> None:
        """Hand the staged writes to the producer, one record batch (or a few) per partition.
        Returns once they are queued in the client, before the broker acknowledged them."""
        staged, self._staged = self._staged, defaultdict(dict)
        if not staged:
            return
        upto = self._upto()
        producer = self._producer()
        topic = self.table.changelog_topic.get_topic_name()
        for partition, writes in staged.items():
            batch, first = self._new_batch(producer), 0
            for key, value in writes.items():
                if batch.append(timestamp=None, key=key, value=value) is None:  # full
                    first = await self._send(producer, batch, topic, partition, writes, first, upto)
                    batch = self._new_batch(producer)
                    batch.append(timestamp=None, key=key, value=value)
            await self._send(producer, batch, topic, partition, writes, first, upto)

    @staticmethod
    def _new_batch(producer: Any) -> BatchBuilder:
        return BatchBuilder(BATCH_BYTES, producer._message_accumulator._compression_type)

    def _upto(self) -> int:
        """What a flush's acknowledgements settle (a persistent store: its writes so far)."""
        return 0

    async def _send(self, producer: Any, batch: BatchBuilder, topic: str, partition: int,
                    writes: dict[bytes, bytes | None], first: int, upto: int) -> int:
        """Send `batch`, the writes from the `first`-th of `writes` on; return the next one's index."""
        n = batch.record_count()
        delivered = await producer.send_batch(batch, topic, partition=partition)
        delivered.add_done_callback(lambda fut: self._delivered(fut, writes, first, n, upto))
        return first + n

    def _delivered(self, fut: Any, writes: dict[bytes, bytes | None], first: int, n: int, upto: int) -> None:
        exc = RuntimeError("changelog batch cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            try:
                self._written(fut.result(), writes, first, n, upto)
                return
            except Exception as failed:  # the local store could not take it (disk full, I/O error)
                exc = failed
        log.error("a changelog batch was not written (or not stored locally): no further commits; the worker stops",
                  extra={"table": self.table.name, "error": repr(exc)})
        self._on_failure(exc)

    def _written(self, meta: Any, writes: dict[bytes, bytes | None], first: int, n: int, upto: int) -> None:
        """The broker appended `n` records, the writes from the `first`-th of `writes` (a step's,
        no longer changed) on, from offset `meta.offset` on, of a flush made when `_upto()` was
        `upto`. In memory: nothing to do."""


class DiskBatchedTable(BatchedTable):
    """A `BatchedTable` over Faust's RocksDB store, which holds one database per partition.

    Partition-explicit: Faust's store finds a key's database from the event being
    processed (`current_event()`), and a join step runs outside one, over several keys. A
    key's partition here is the one it is written with (`set`, `delete`), the one its
    event clock key names (`b"\\x00clock/<p>"`), or else `partition_for(key, partitions)`.

    A write reaches the database only once the broker appended it to the changelog, at the
    offset the store then persists with it (one RocksDB write batch): the local database is
    always a prefix of the changelog (plus records appended after it), never ahead of it.
    After a crash, Faust's recovery replays the changelog from that offset on, and the
    state is what a full replay gives, whatever was in flight; the uncommitted input is
    redelivered as with the memory store. Until then the write is in `_pending`, which
    reads see first.

    Rebalances: a revoked partition's database is closed by Faust and kept; when the
    partition comes back, Faust replays the changelog from its persisted offset, through
    everything its other owner wrote. A copy older than `MAX_LOCAL_AGE_S` is deleted first
    (compaction may have dropped tombstones since), and unheld copies that old are deleted
    after each recovery. A copy made from another changelog (a new app id on the same
    volume) is deleted at start.
    """

    def __init__(self, table: Any, producer: Callable[[], Any],
                 on_failure: Callable[[BaseException], None], partitions: int) -> None:
        super().__init__(table, producer, on_failure, partitions)
        self.store: RocksDBStore = table.data
        #: written, not yet in the database: key -> (write number, value or None)
        self._pending: dict[bytes, tuple[int, bytes | None]] = {}
        self._writes = 0  # numbers the writes: an acknowledgement settles those up to its flush's
        self._clock_prefix = b"\x00clock/"
        drop_other_changelogs(self.store, table.changelog_topic.get_topic_name())
        drop_stale_databases(self.store, time.time())
        table.on_recover(self._drop_unassigned)
        # Faust's recovery re-applies the changelog from the offset it read when the rebalance
        # began; records this table applied since (acks of steps still running) must not be
        # overwritten by older ones: the recovery applies only what follows the database.
        self._apply_changelog = self.store.apply_changelog_batch
        self.store.apply_changelog_batch = self._recovered
        self._open_database = self.store._open_for_partition
        self.store._open_for_partition = self._open_fresh

    def partition_of(self, key: bytes) -> int:
        if key.startswith(self._clock_prefix):
            return int(key[len(self._clock_prefix):])
        return partition_for(key, self.partitions)

    def get(self, key: bytes) -> bytes | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[1]
        partition = self.partition_of(key)
        db = self.store._dbs.get(partition)
        if db is None:  # never reopen a revoked partition's database from a read (a step finishing late)
            if partition not in self._actives():
                return None
            db = self.store._db_for_partition(partition)
        value: bytes | None = db.get(key)
        return value

    def _actives(self) -> set[int]:
        topic = self.table.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.store.app.assignor.assigned_actives() if tp.topic == topic}

    def keys(self) -> Iterator[bytes]:
        """The keys of the partitions Faust has assigned to this worker as active (standby
        copies are not the joins' business), as `get` sees them."""
        pending = {key: value for key, (_, value) in self._pending.items()}
        for partition in sorted(self._actives()):
            for key in self.store._visible_keys(self.store._db_for_partition(partition)):
                if key not in pending:
                    yield key
        yield from (key for key, value in pending.items() if value is not None)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._writes += 1
        self._pending[key] = (self._writes, value)
        self._staged[partition][key] = value

    def delete(self, partition: int, key: bytes) -> None:
        if self.get(key) is None:
            return  # not stored (or deleted already): nothing to delete
        self._writes += 1
        self._pending[key] = (self._writes, None)
        self._staged[partition][key] = None

    def _upto(self) -> int:
        return self._writes

    def _written(self, meta: Any, writes: dict[bytes, bytes | None], first: int, n: int, upto: int) -> None:
        """Apply what the broker appended to the partition's database, with its offset."""
        records = list(islice(writes.items(), first, first + n))
        db = self.store._dbs.get(meta.partition)  # not reopened: a revoked partition is its new owner's
        if db is not None:
            self._apply(db, meta.topic_partition, meta.offset, records)
        pending = self._pending
        for key, _ in records:
            entry = pending.get(key)
            if entry is not None and entry[0] <= upto:  # not written again since that flush
                del pending[key]

    def _apply(self, db: Any, tp: TP, first: int, records: list[Write]) -> None:
        """Write `records` (changelog offsets `first`...) not yet in `db`; advance its
        persisted offset when they follow it. After a gap (records of another owner, a
        recovery still reading) they are written all the same (reads rely on it) but the
        offset stays, so that a restart replays from before the gap, through them."""
        from rocksdict import WriteBatch  # installed with the RocksDB store (pyproject)

        done = self._persisted(tp)
        batch = WriteBatch(raw_mode=True)
        for offset, (key, value) in enumerate(records, first):
            if offset <= done:
                continue  # the recovery applied it already, and maybe later records too
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        last = first + len(records) - 1
        if first <= done + 1:
            if last > done:
                batch.put(self.store.offset_key, str(last).encode())
        else:
            log.warning("changelog records do not follow the local state's offset: a restart replays from it",
                        extra={"table": self.table.name, "partition": tp.partition, "offset": done, "first": first})
        db.write(batch)

    def _persisted(self, tp: TP) -> int:
        offset = self.store.persisted_offset(tp)
        return -1 if offset is None else offset

    def _recovered(self, batch: Any, to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]) -> None:
        """Faust's `apply_changelog_batch`, for the records past each partition's persisted offset."""
        done: dict[TP, int] = {}

        def fresh(event: Any) -> bool:
            tp = event.message.tp
            if tp not in done:
                done[tp] = self._persisted(tp)
            return bool(event.message.offset > done[tp])

        self._apply_changelog([event for event in batch if fresh(event)], to_key, to_value)

    def _open_fresh(self, partition: int) -> Any:
        """Faust's opening of a partition's database (at its assignment), after deleting a copy
        too old to catch up from the changelog tail (`MAX_LOCAL_AGE_S`): one this worker
        held long ago, before the partition moved away."""
        path = self.store.partition_path(partition)
        if path.is_dir() and stale(path, time.time()) and not locked(path):
            log.warning("local table state too old to catch up from the changelog tail: replaying it in full",
                        extra={"table": self.table.name, "partition": partition})
            shutil.rmtree(path, ignore_errors=True)
        return self._open_database(partition)

    async def _drop_unassigned(self) -> None:
        """After a recovery: free the disk of the databases of partitions this worker holds
        neither as active nor as standby, once they are too old to be of use. (Kept until
        then: a partition that comes back soon catches up from its tail.)"""
        assignor = self.store.app.assignor
        topic = self.table.changelog_topic.get_topic_name()
        held = {tp.partition for tp in assignor.assigned_actives() | assignor.assigned_standbys()
                if tp.topic == topic}
        now = time.time()
        for partition, path in local_databases(self.store).items():
            if partition not in held and partition not in self.store._dbs and stale(path, now) and not locked(path):
                log.info("deleting the old local state of a partition this worker no longer holds",
                         extra={"table": self.table.name, "partition": partition, "path": str(path)})
                shutil.rmtree(path, ignore_errors=True)


def local_databases(store: RocksDBStore) -> dict[int, Path]:
    """Partition -> the directory of its database, for the partitions `store` has on disk."""
    prefix = store.partition_path(0).name.removesuffix("0.db")
    found = {}
    for path in store.path.glob(f"{prefix}*.db") if store.path.is_dir() else ():
        number = path.name[len(prefix):-len(".db")]
        if number.isdigit() and path.is_dir():
            found[int(number)] = path
    return found


def drop_other_changelogs(store: RocksDBStore, topic: str) -> list[int]:
    """Delete the partition databases of `store` made from another changelog than `topic` (a
    new REFSTREAM_APP_ID on the same data directory: its tables start empty, and the old
    state would pass for theirs); return their partitions. The name of the changelog the
    databases follow is kept beside them, in `<table>.changelog`."""
    marker = store.path / f"{store.basename}.changelog"
    dropped = []
    if marker.exists() and marker.read_text().strip() != topic:
        for partition, path in sorted(local_databases(store).items()):
            if not locked(path):
                log.warning("local table state of another changelog: deleted",
                            extra={"table": store.table_name, "partition": partition,
                                   "changelog": marker.read_text().strip(), "now": topic})
                shutil.rmtree(path, ignore_errors=True)
                dropped.append(partition)
    store.path.mkdir(parents=True, exist_ok=True)
    marker.write_text(topic + "\n")
    return dropped


def drop_stale_databases(store: RocksDBStore, now: float, max_age_s: float = MAX_LOCAL_AGE_S) -> list[int]:
    """Delete the partition databases of `store` that are `stale`; return their partitions.
    Call before any is opened."""
    dropped = []
    for partition, path in sorted(local_databases(store).items()):
        if stale(path, now, max_age_s) and not locked(path):  # a locked one is another worker's, in use
            log.warning("local table state too old to catch up from the changelog tail: replaying it in full",
                        extra={"table": store.table_name, "partition": partition})
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(partition)
    return dropped


def stale(path: Path, now: float, max_age_s: float = MAX_LOCAL_AGE_S) -> bool:
    """True if no file of the database at `path` was written (it was last open) within
    `max_age_s` before `now`. RocksDB writes its LOG at every opening and closing."""
    newest = max((f.stat().st_mtime for f in path.iterdir()), default=0.0)
    return now - newest > max_age_s


def locked(path: Path) -> bool:
    """True while another process has the RocksDB database at `path` open (its LOCK file is
    locked). Only for databases this process does not have open: POSIX locks are per process,
    and closing this probe would release this process's own lock."""
    try:
        fd = os.open(path / "LOCK", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock
    return False
