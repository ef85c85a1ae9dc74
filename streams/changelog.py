"""A Faust table whose changelog writes go out as record batches, once per processed message.

Faust sends one changelog message per table write through its producer buffer, at a cost
of tens of microseconds each; a join writes a key per event, so that cost dominated. Here
writes are collected while a message is processed and `flush_changelog` hands them to
Faust's own aiokafka producer as batches. Faust's commit flushes that producer before it
commits offsets, so at-least-once holds as before, and recovery reads the same changelog.

The last write of each flush goes in a batch of its own: some Kafka-compatible brokers
report a partition's end offset as the first offset of its last batch + 1, which would
make recovery stop short of a multi-record last batch.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import faust


class BatchedTable(faust.Table):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[int, bytes, bytes | None]] = []
        self._sent: list[asyncio.Future] = []

    def on_key_set(self, key: Any, value: Any) -> None:
        self._pending.append((self.partition_for_key(key), key, value))

    def on_key_del(self, key: Any) -> None:
        self._pending.append((self.partition_for_key(key), key, None))

    async def flush_changelog(self) -> None:
        """Send the writes made since the last flush, in order per partition."""
        self._raise_failed()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        producer = self.app.producer._ensure_producer()  # the aiokafka producer Faust flushes
        topic = self.changelog_topic.get_topic_name()
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = defaultdict(list)
        for partition, key, value in pending:
            by_partition[partition].append((key, value))
        for partition, writes in by_partition.items():
            *body, last = writes
            batch = producer.create_batch()
            for key, value in body:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    self._sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            if batch.record_count():
                self._sent.append(await producer.send_batch(batch, topic, partition=partition))
            alone = producer.create_batch()
            alone.append(key=last[0], value=last[1], timestamp=None)
            self._sent.append(await producer.send_batch(alone, topic, partition=partition))

    def _raise_failed(self) -> None:
        """Surface a failed changelog send (crashing the agent) instead of losing state."""
        still = []
        for fut in self._sent:
            if not fut.done():
                still.append(fut)
            elif fut.exception() is not None:
                raise RuntimeError(f"changelog write to {self.changelog_topic.get_topic_name()} failed") \
                    from fut.exception()
        self._sent = still


def batched_table(app: faust.App, name: str, **kwargs: Any) -> BatchedTable:
    """Register a BatchedTable the way `app.Table` registers a plain one."""
    return app.tables.add(BatchedTable(app, name=name, beacon=app.tables.beacon, **kwargs))
