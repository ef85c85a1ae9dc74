"""BatchedTable against the real broker: what a reader of the changelog rebuilds is the store,
in memory and in RocksDB."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from streams.adapters.topics import ensure_topics_sync
from streams.delivery.changelog import BATCH_BYTES, BatchedTable, DiskBatchedTable, batched_table

BIG = b"x" * (BATCH_BYTES // 3)  # four of these in one partition need two record batches

# A step: (op, partition, key, value) writes, then a flush. "set" or "del".
Step = list[tuple[str, int, bytes, bytes | None]]


@dataclass
class Case:
    name: str
    steps: list[Step]
    store: dict[bytes, bytes]  # the table's store at the end
    records: int  # changelog records written (last value per key and step)


CASES = [
    Case("one write per key and step", [[("set", 0, b"a", b"1"), ("set", 0, b"a", b"2"), ("set", 1, b"b", b"3")]],
         {b"a": b"2", b"b": b"3"}, 2),
    Case("a delete is a tombstone in a later step", [[("set", 0, b"a", b"1")], [("del", 0, b"a", None)]], {}, 2),
    Case("set and delete in one step still tombstones", [[("set", 0, b"a", b"1"), ("del", 0, b"a", None)]], {}, 1),
    Case("deleting an unknown key writes nothing", [[("del", 0, b"zz", None), ("set", 0, b"a", b"1")]],
         {b"a": b"1"}, 1),
    Case("a step larger than a record batch", [[("set", 0, k, BIG) for k in (b"k1", b"k2", b"k3", b"k4")]],
         {k: BIG for k in (b"k1", b"k2", b"k3", b"k4")}, 4),
]


def fake_table(topic: str) -> Any:
    """What BatchedTable uses of a Faust table: name, serializers, store, changelog topic."""
    return SimpleNamespace(name="t", key_serializer="raw", value_serializer="raw", data={},
                           changelog_topic=SimpleNamespace(get_topic_name=lambda: topic))


def disk_table(datadir: Path, app_id: str) -> Any:
    """A Faust table on Faust's RocksDB store, its partitions' databases open (as when assigned)."""
    app = faust.App(app_id, store="rocksdb://", datadir=str(datadir), autodiscover=False)
    table = app.Table("t", partitions=2, key_type=bytes, value_type=bytes)
    for p in (0, 1):
        table.data._db_for_partition(p)
    return table


async def run(kafka: list[str], topic: str, steps: list[Step], table: Any = None) -> tuple[dict, dict, int, list]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    failures: list[BaseException] = []
    table = fake_table(topic) if table is None else table
    batched = batched_table(table, lambda: producer, failures.append, partitions=2)
    try:
        for step in steps:
            for op, p, key, value in step:
                if op == "set":
                    assert value is not None
                    batched.set(p, key, value)
                else:
                    batched.delete(p, key)
            await batched.flush()
        await producer.flush()
        await asyncio.sleep(0)  # the acks' callbacks
    finally:
        await producer.stop()
    rebuilt, records = await read_back(kafka, topic)
    if isinstance(batched, DiskBatchedTable):
        store = batched.store
        return {k: v for p in (0, 1) for k, v in store._visible_items(store._db_for_partition(p))}, rebuilt, records, failures
    return dict(table.data), rebuilt, records, failures


async def read_back(kafka: list[str], topic: str) -> tuple[dict, int]:
    """Replay the changelog like a recovery: last value per key, None deletes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        state: dict[bytes, bytes] = {}
        records = 0
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    records += 1
                    if m.value is None:
                        state.pop(m.key, None)
                    else:
                        state[m.key] = m.value
            if not batch and records:
                break
        return state, records
    finally:
        await consumer.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_changelog_rebuilds_the_store(stack, topic_prefix, case: Case) -> None:
    topic = f"{topic_prefix}changelog"
    ensure_topics_sync(stack.base, [topic], 2)
    store, rebuilt, records, failures = asyncio.run(run(stack.base.bootstrap_servers, topic, case.steps))
    assert store == case.store
    assert rebuilt == case.store
    assert records == case.records
    assert failures == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_rocksdb_store_holds_what_the_changelog_has_up_to_its_offset(stack, topic_prefix, tmp_path,
                                                                         case: Case) -> None:
    """Each database gets its partition's records once the broker took them, with the offset
    of the last one: what a restart replays from (offsets as the real broker assigned them)."""
    table = disk_table(tmp_path, f"{topic_prefix}app")
    topic = table.changelog_topic.get_topic_name()
    ensure_topics_sync(stack.base, [topic], 2)
    store, rebuilt, records, failures = asyncio.run(run(stack.base.bootstrap_servers, topic, case.steps, table))
    assert store == rebuilt == case.store
    assert failures == []
    written = {p for step in case.steps for _, p, _, _ in step}
    ends = asyncio.run(last_offsets(stack.base.bootstrap_servers, topic))
    assert {p: table.data.persisted_offset(TP(topic, p)) for p in written} == {p: ends[p] for p in written}


async def last_offsets(kafka: list[str], topic: str) -> dict[int, int]:
    """The offset of each partition's last record, read back (Tansu's listed end offsets fall short)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
        last: dict[int, int] = {}
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                last[tp.partition] = messages[-1].offset
            if not batch and last:
                return last
        return last
    finally:
        await consumer.stop()


def test_a_batch_the_broker_never_took_is_reported() -> None:
    failures: list[BaseException] = []
    batched = BatchedTable(fake_table("t"), lambda: None, failures.append, partitions=2)
    lost: asyncio.Future = asyncio.new_event_loop().create_future()
    lost.set_exception(TimeoutError("request timed out"))
    batched._delivered(lost, {b"a": b"1"}, 0, 1, 0)
    assert [type(e) for e in failures] == [TimeoutError]


def test_a_table_that_does_not_hold_raw_bytes_is_refused() -> None:
    table = fake_table("t")
    table.value_serializer = "json"
    with pytest.raises(ValueError, match="value_type=bytes"):
        BatchedTable(table, lambda: None, lambda exc: None, partitions=2)
