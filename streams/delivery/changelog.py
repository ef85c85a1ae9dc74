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
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

log = logging.getLogger(__name__)
BATCH_BYTES = 512 * 1024  # well under the 1 MB message size limit Kafka brokers default to


class BatchedTable:
    """The store of Faust table `table`, with writes staged per changelog partition.

    `producer()` returns the app's started `aiokafka` producer; `on_failure(exc)` is
    called when the broker did not take a batch. Reads see every write at once; a write
    reaches the changelog at the next `flush()`.
    """

    def __init__(self, table: Any, producer: Callable[[], Any],
                 on_failure: Callable[[BaseException], None]) -> None:
        if (table.key_serializer, table.value_serializer) != ("raw", "raw"):
            raise ValueError(f"table {table.name}: BatchedTable writes raw bytes; create it with "
                             "key_type=bytes and value_type=bytes (serializers 'raw')")
        self.table = table
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
        producer = self._producer()
        topic = self.table.changelog_topic.get_topic_name()
        for partition, writes in staged.items():
            batch = self._new_batch(producer)
            for key, value in writes.items():
                if batch.append(timestamp=None, key=key, value=value) is None:  # full
                    await self._send(producer, batch, topic, partition)
                    batch = self._new_batch(producer)
                    batch.append(timestamp=None, key=key, value=value)
            await self._send(producer, batch, topic, partition)

    @staticmethod
    def _new_batch(producer: Any) -> BatchBuilder:
        return BatchBuilder(BATCH_BYTES, producer._message_accumulator._compression_type)

    async def _send(self, producer: Any, batch: BatchBuilder, topic: str, partition: int) -> None:
        n = batch.record_count()
        delivered = await producer.send_batch(batch, topic, partition=partition)
        delivered.add_done_callback(lambda fut: self._delivered(fut, n))

    def _delivered(self, fut: Any, n: int) -> None:
        exc = RuntimeError("changelog batch cancelled") if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("a changelog batch was not written: no further commits; the worker stops",
                      extra={"table": self.table.name, "error": repr(exc)})
            self._on_failure(exc)
            return
        meta = fut.result()  # the batch's first offset: persistent stores note the last one
        set_persisted = getattr(self.table.data, "set_persisted_offset", None)
        if set_persisted is not None:
            set_persisted(meta.topic_partition, meta.offset + n - 1)
