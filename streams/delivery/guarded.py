"""A Faust app whose offset commits pass only what its agents finished.

Corrections to faust-streaming 0.15.3 (pinned), each of which lost messages in the
crash, drain, rebalance and ClickHouse-outage tests:

- `GuardedConsumer` never commits past a message an agent has not finished (the ledger,
  `streams.delivery.ledger`), whatever Faust acked, and reads again a message Faust gave
  up on outside a rebalance.
- `GuardedRecovery` seeks the stream partitions to their committed offsets *before*
  resuming them. Faust resumes first (the ordering upstream fixed in one place only,
  faust #216/#217; #596): the fetcher then delivered a few records from the old position,
  the consumer's read-offset bookkeeping turned the jump into a "gap" it counts as acked,
  and dropped the re-fetched records as already read.
- `GuardedRecovery` also reads every changelog partition to the end its fetches report,
  where the broker's listed end offset falls short (Tansu's does for batched writes).
- `FlushingProducerBuffer.flush` waits until every buffered message (table changelog
  writes) reached the Kafka client. Faust's returns as soon as no message was sent for
  0.1 s, and the commit it precedes could then pass state changes never produced.
- Skipped messages and `take_events` buffers abandoned by their agent are acked by Faust:
  they stay pending in the ledger all the same.
- `GuardedConsumer.wait_empty` (shutdown) waits for the agents only while they make
  progress. Faust waits until every delivered message is acked, and a message one agent
  finished but another never took (the queue was cleared at stop) kept a worker from
  exiting for good. What is left unfinished stays uncommitted (the ledger) and is read
  again by the next owner.
- `GuardedApp.refuse_commits` stops all further commits once a state change could not be
  written to its changelog (`streams.delivery.changelog`), and stops the worker.
- `GuardedApp.read_in_bulk` reads the raw input topics a fetched batch at a time,
  without Faust's per-message machinery (`streams.delivery.bulk`).

Agents call `finished(app)(events)` (the ledger's `finish_events`) when they are done with a batch.
"""
from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from time import monotonic
from typing import Any, cast

import faust
from aiokafka.errors import IllegalStateError
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_WAIT_EMPTY, ensure_TP
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode import Service

from streams.delivery.bulk import BulkReader, drain
from streams.delivery.changelog import ROCKSDB_OPTIONS, BatchedTable, batched_table
from streams.delivery.ledger import CommitLedger, commit_run

log = logging.getLogger(__name__)
STALL_S = 5.0  # shutdown stops waiting for agents that finished nothing for this long


class GuardedConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, with the ledger between delivery and commits."""

    def __init__(self, *args: Any, ledger: CommitLedger, on_reread: Callable[[TP], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger
        self._on_reread = on_reread
        self._reread: dict[TP, tuple[int, float]] = {}  # partition -> (offset, when) of the last seek back
        deliver = self.callback
        delivered = ledger.delivered

        async def callback(message: Any) -> None:
            delivered(message)
            await deliver(message)

        self.callback = callback  # read by Consumer._drain_messages for every fetched message

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's, with `commit_run` deciding how far the acked run goes."""
        committed = self._committed_offset[tp]
        limit = self.ledger.limit(tp, committed)
        if limit is not None:
            self._maybe_read_again(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]  # offsets the fetcher skipped over (holes): they count as acked
        if gaps:
            high = max(acked)
            holes = sorted(gaps.overlap(0, high), key=lambda iv: iv.begin)
            if holes:
                filled = [o for iv in holes for o in range(iv.begin, iv.end)]
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], high + 1))
        acked.sort()
        n = commit_run(acked, committed, limit)
        if not n:
            return None
        run = acked[:n]
        del acked[:n]
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1

    def _maybe_read_again(self, tp: TP) -> None:
        """Faust gave up on a message an agent never finished (an agent restarted with a
        buffer, or a stream skipped it): outside a rebalance nothing would fetch it again,
        and its partition could not commit past it, so seek back to it."""
        lost = self.ledger.abandoned(tp)
        app = self.app
        if lost is None or app.rebalancing or app.should_stop or not self.flow_active:
            return
        offset, generation = lost
        if generation != app.consumer_generation_id:
            return  # from before the last rebalance, whose recovery read the partition again
        last = self._reread.get(tp)
        if last is not None and last[0] == offset and monotonic() - last[1] < 30.0:
            return  # sought already; the new copy is on its way
        self._reread[tp] = (offset, monotonic())
        log.warning("a message was dropped before an agent finished it: reading its partition again from it",
                    extra={"topic": tp.topic, "partition": tp.partition, "offset": offset})
        self._on_reread(tp)
        asyncio.ensure_future(self.seek(tp, offset))

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, which aiokafka skips for a partition with no
        commit (0 or none): it kept the position its fetcher had reached, and the records
        Faust dropped from that fetch (flow stopped mid-batch, a rebalance) were never read.
        Such stream partitions are rewound to their beginning (`auto_offset_reset` earliest)."""
        committed = await self.seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)]
        if fresh and self.app.conf.consumer_auto_offset_reset == "earliest":
            await self._thread.seek_to_beginning(*fresh)
        self._read_offset.update(
            {tp: offset if offset is not None and offset >= 0 else None for tp, offset in committed.items()})
        self._committed_offset.update(
            {ensure_TP(tp): offset if offset else None for tp, offset in committed.items() if offset is not None})

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop; with a bulk reader, its topics are read in batches (`bulk.py`)."""
        bulk = cast(GuardedApp, self.app).bulk
        if bulk is None:
            await super()._drain_messages(fetcher)
        else:
            await drain(self, fetcher, bulk)

    async def _commit(self, offsets: Any) -> bool:
        refused = cast(GuardedApp, self.app).commits_refused
        if refused is not None:
            log.error("commit refused: a state change never reached its changelog",
                      extra={"error": repr(refused)})
            return False
        return await super()._commit(offsets)

    @Service.transitions_to(CONSUMER_WAIT_EMPTY)
    async def wait_empty(self) -> None:
        """Faust's wait at shutdown for the messages the agents took, ending when they have
        finished nothing for `STALL_S` (then commit what they did finish)."""
        progress, since = None, monotonic()
        while not self.should_stop and self._unacked_messages:
            gc.collect()  # messages nobody references any more are no longer waited for
            await self.commit()
            self._clean_unacked_messages()
            if not self._unacked_messages:
                break
            now = (len(self._unacked_messages), self.ledger.finished_total)
            if now != progress:
                progress, since = now, monotonic()
            elif monotonic() - since >= STALL_S:
                log.warning("stopping without waiting for messages no agent is working on: they stay "
                            "uncommitted and are read again", extra={"messages": len(self._unacked_messages)})
                break
            await self._wait_for_ack(timeout=1)
        await self.commit_and_end_transactions()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Partitions that moved away are the new owners' business. (Not at revocation: the
        # partitions stay committable until the group has moved on.)
        self.ledger.keep_only(assigned)
        for tp in set(self._reread) - set(assigned):
            del self._reread[tp]
        await super().on_partitions_assigned(assigned, generation_id)


class GuardedRecovery(Recovery):
    """Faust's recovery, (1) seeking stream partitions to their committed offsets before
    resuming them (both places where Faust resumes them first), and (2) reading each
    changelog partition up to the high watermark its fetches report when that is above
    the end offset the broker listed: Tansu lists the last record batch's first offset
    + 1, and Faust stopped there, losing the rest of that batch's table writes (on Apache
    Kafka both agree and this changes nothing)."""

    def need_recovery(self) -> bool:
        consumer = self.app.consumer
        targets = self.active_highwaters
        for tp, target in list(targets.items()):
            try:
                fetched = consumer.highwater(tp)  # the end of the partition, from the last fetch response
            except (AssertionError, IllegalStateError):  # no longer assigned: a rebalance is under way
                continue
            if fetched is not None and target is not None and fetched - 1 > target:
                targets[tp] = fetched - 1
        return super().need_recovery()

    async def _seek_then_resume(self, standbys_ready: bool) -> None:
        app = self.app
        consumer = app.consumer
        assignment = consumer.assignment()
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await cast(Any, app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if standbys_ready:
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app = self.app
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        done = [asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table])) for table in self.tables.values()]
        if done:
            await asyncio.wait(done)
        if app.consumer_generation_id != generation_id:
            self.log.warning(f"Recovery rebalancing again app id {app.consumer_generation_id} param {generation_id}")
            return
        await self._seek_then_resume(standbys_ready=not app.assignor.assigned_standbys())

    async def _resume_streams(self, generation_id: int = 0) -> None:
        app = self.app
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(standbys_ready=True)


class GuardedTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = GuardedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class FlushingProducerBuffer(ProducerBuffer):
    """Faust's producer buffer (messages sent with `send_soon`: table changelog writes), whose
    `flush` returns only when every buffered message was handed to the Kafka client."""

    _in_flight = 0  # taken off the queue, not yet handed over

    async def flush(self) -> None:
        while self.size or self._in_flight:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=5.0)
            except TimeoutError:
                log.warning("producer buffer not draining", extra={"buffered": self.size})

    async def flush_atmost(self, max_messages: int | None) -> int:
        if max_messages is None:
            await self.flush()
            return 0
        return await super().flush_atmost(max_messages)

    async def _send_pending(self, fut: Any) -> None:
        self._in_flight += 1
        try:
            await super()._send_pending(fut)
        finally:
            self._in_flight -= 1


class GuardedApp(faust.App):
    """faust.App with the guards above. Call `count_readers()` once the agents are defined."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", GuardedTableManager)
        super().__init__(*args, **kwargs)
        self.ledger = CommitLedger()
        self.on_reread: Callable[[TP], None] = lambda tp: None
        self.bulk: BulkReader | None = None
        self.commits_refused: BaseException | None = None

    def refuse_commits(self, exc: BaseException) -> None:
        """A table write never reached its changelog: commit nothing more (the next owner
        of these partitions reads them again from the last commit) and stop the worker."""
        if self.commits_refused is None:
            self.commits_refused = exc
            asyncio.ensure_future(self.crash(exc))

    def batched(self, table: Any) -> BatchedTable:
        """`table` (key and value types bytes, just created), its changelog written in batches,
        its store accessed by partition (`changelog.py`)."""
        if self.conf.store.scheme == "rocksdb" and table.options is None:
            table.options = dict(ROCKSDB_OPTIONS)  # before its store exists: Faust opens it with them
        producer: Any = self.producer  # Faust's ProducerT does not declare the aiokafka producer
        return batched_table(table, lambda: producer._ensure_producer(), self.refuse_commits,
                             table.partitions or self.conf.topic_partitions)

    def read_in_bulk(self, topic: Any, handler: Callable[[list[Any]], Awaitable[None]], max_messages: int) -> None:
        """Read `topic` (a Faust topic) in fetched batches: `await handler(messages)` with up
        to `max_messages` Kafka messages at a time, committed once it returned (`bulk.py`).
        One bulk reader per app; nothing else may read these topics."""
        assert self.bulk is None, "one bulk reader per app"
        self.bulk = BulkReader(frozenset(topic.topics), handler, max_messages)
        self.topics.add(topic)  # subscribed like an agent's topic, acks enabled

    def count_readers(self) -> dict[str, int]:
        """Guard every topic an agent (or the bulk reader) of this worker reads, counting its readers."""
        readers: Counter[str] = Counter()
        for agent in self.agents.values():
            readers.update(agent.channel.topics)
        if self.bulk is not None:
            readers.update(self.bulk.topics)
        self.ledger.readers = dict(readers)
        return self.ledger.readers

    def _new_consumer(self) -> GuardedConsumer:
        return GuardedConsumer(
            self.transport, callback=self.topics.on_message, loop=self.transport.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon, ledger=self.ledger, on_reread=lambda tp: self.on_reread(tp),
        )

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        buffer = FlushingProducerBuffer(loop=producer.loop, beacon=producer.beacon)
        buffer.app = self
        producer.buffer = buffer  # before the producer starts (it starts its buffer then)
        return producer


def finished(app: Any) -> Callable[[Iterable[Any]], None]:
    """The function an agent calls with the Faust events it is done with."""
    return cast(GuardedApp, app).ledger.finish_events
