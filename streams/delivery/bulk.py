"""Read the raw input topics in bulk: one handler call per fetched batch, not one Faust
event per message.

Faust hands every fetched message to its streams one by one: a four-task `wait_first`
in the fetch loop, an event, a queue put, a stream step and an ack per message. For the
raw topics, where a worker reads tens of thousands of small messages a second, that was
most of the router's cost. `drain` is Faust's fetch loop (`Consumer._drain_messages`,
faust-streaming 0.15.3) with one change: messages of the bulk topics are collected and
given to the handler a batch at a time (what one fetch returned, at most `max_messages`),
then finished in the commit ledger and acked, so the commit passes them only after the
handler returned. Messages of other topics take Faust's path unchanged.

A batch taken while a rebalance starts (flow stopped, or a new generation) is dropped
unhandled: it stays pending in the ledger, and the recovery seeks the partitions back to
their committed offsets. A batch cut off by shutdown is not finished either, and the
next owner of its partitions reads it again: routing twice is harmless (downstream
dedupes by event id, the fraud counters are sets).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING


@dataclass(frozen=True)
class BulkReader:
    """Who reads which topics in bulk: `handler(messages)` for up to `max_messages` at a time."""

    topics: frozenset[str]
    handler: Callable[[list[Any]], Awaitable[None]]
    max_messages: int


async def drain(consumer: Any, fetcher: Any, bulk: BulkReader) -> None:
    """Faust's `_drain_messages` for `consumer` (a GuardedConsumer), bulk topics in batches."""
    callback, getmany = consumer.callback, consumer.getmany
    consumer_should_stop, fetcher_should_stop = consumer._stopped.is_set, fetcher._stopped.is_set
    read_offset = consumer._read_offset
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    delivered = consumer.ledger.delivered
    diag = consumer.diag
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            diag.set_flag(CONSUMER_FETCHING)
            generation = consumer.app.consumer_generation_id
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)  # getmany may return at once, again and again
            if consumer.should_stop:
                continue
            taken: list[Any] = []
            seen = 0
            async for tp, message in ait:
                seen += 1
                if not seen % 100:
                    await asyncio.sleep(0)
                offset = message.offset
                r_offset = read_offset[tp]
                if r_offset is not None and offset < r_offset:
                    continue  # read already (Faust drops these too)
                if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                    await consumer._add_gap(tp, r_offset + 1, offset)
                if message.topic in bulk.topics:
                    delivered(message)
                    taken.append(message)
                    if len(taken) >= bulk.max_messages:
                        await _hand_over(consumer, bulk, taken, generation)
                        taken = []
                else:
                    await _maybe_commit(consumer)
                    await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                read_offset[tp] = offset
            if taken:
                await _hand_over(consumer, bulk, taken, generation)
            diag.unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        diag.unset_flag(CONSUMER_FETCHING)


async def _hand_over(consumer: Any, bulk: BulkReader, messages: list[Any], generation: int) -> None:
    if not consumer.flow_active or consumer.app.consumer_generation_id != generation:
        return  # a rebalance began: its recovery reads these again
    await bulk.handler(messages)
    finish, ack = consumer.ledger.finish, consumer.ack
    for message in messages:
        finish(message)
        ack(message)
    await _maybe_commit(consumer)


async def _maybe_commit(consumer: Any) -> None:
    """Faust commits every `broker_commit_every` acks from the fetch loop (and on a timer)."""
    every = consumer._commit_every
    if every is not None and consumer._n_acked >= every:
        consumer._n_acked = 0
        await consumer.commit()
