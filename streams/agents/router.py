"""The router agent's work: route raw input (streams/logic/routing.py) and send it on.

Valid clicks and signups are counted for the fraud checks (Redis) and go to `visitor-join`
partitioned by visitor_id, orders to `account-join` partitioned by account_id, as msgpack
batch messages per destination partition (split under 512 KiB). Every batch also carries
the event-time progress of the raw partitions this router reads, and every join partition
hears it at least every second (a heartbeat, also when no input arrives: joins finalise
and expire state only when a message reaches them), so the joins' watermarks can follow
the slowest source. Every batch also names the raw partitions this router reads that are
idle (no record for `IDLE_PARTITION_S`, nothing left to read: streams/logic/idleness.py),
which the joins leave out of their watermarks until they have records again. Invalid
messages go to `dead-letters` with the reason and their source topic, partition and offset.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from schemas.records import ClickRec, OrderRec, SignupRec
from streams.agents.outputs import DeadLetters, Every, feed_join
from streams.config import Settings
from streams.logic.idleness import IdleSources, Position, busy
from streams.logic.privacy import Pseudonyms
from streams.logic.routing import Routing
from streams.metrics import Metrics

HEARTBEAT_S = 1.0
#: the raw partitions this worker reads: "topic/partition" -> where it is in it; None when the
#: consumer cannot tell now (not started, mid-rebalance)
Positions = Callable[[], Mapping[str, Position] | None]


def no_positions() -> Mapping[str, Position] | None:
    return None


class Router:
    def __init__(self, settings: Settings, topics: Any, metrics: Metrics, dead_letters: DeadLetters,
                 signals: Any = None, positions: Positions = no_positions,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.positions = positions  # answering None: no partition is idle (the default: never)
        self.idleness = IdleSources(settings.idle_partition_s)
        self._monotonic = monotonic
        self.signals = signals  # SignalStore: flood and farming counters (None: not counted)
        self.topics = topics
        self.metrics = metrics
        self.dead_letters = dead_letters
        pseudonyms = Pseudonyms(settings.pii_salt.encode(), settings.id_fields_to_hash)
        self.routing = Routing(settings.partitions, len(settings.topic_prefix), int(settings.max_future_s * 1000),
                               settings.max_message_bytes, pseudonyms)
        self.heartbeats = Every(HEARTBEAT_S)
        # one route or heartbeat at a time: clocks must never reach a join before the records
        # (and the Redis counts) they cover
        self._sending = asyncio.Lock()

    async def route(self, messages: list[Any]) -> None:
        """Route one batch of Kafka messages from the raw input topics."""
        async with self._sending:
            await self._route(messages)

    async def heartbeat(self) -> None:
        """Every join partition hears the progress if nothing was sent for a second (a timer
        calls this: with no input nothing else would move the joins' event time)."""
        async with self._sending:
            await self._send({}, {})  # sends only once the last heartbeat is a second old

    async def _route(self, messages: list[Any]) -> None:
        routed = self.routing.route(messages, int(time.time() * 1000))
        self.idleness.heard(routed.sources, self._monotonic())
        for msg, reason in routed.invalid:
            await self.dead_letters.invalid(reason, msg)
        for topic, count in routed.counts.items():
            self.metrics.events_in.labels(topic).inc(count)
        if self.signals is not None:  # counted before the joins can decide on these events
            await self.signals.record_events([r for recs in routed.visitors.values() for r in recs])
        await self._send(routed.visitors, routed.accounts)

    async def _send(self, visitors: dict[int, list[ClickRec | SignupRec]], accounts: dict[int, list[OrderRec]]) -> None:
        """Records to the join partitions that have some, and every second the clocks to all
        (also with no clocks: a restarted worker whose raw input was all read must still let
        the joins sweep the deadlines their recovered clocks passed)."""
        heartbeat = self.heartbeats.due()
        n, progress = self.settings.partitions, self.routing.progress
        idle_sources, busy_sources = self.source_states()
        idle, busy = self.routing.by_join(idle_sources), self.routing.by_join(busy_sources)
        await feed_join(self.topics.visitor_join, n, visitors, progress["visitor"], heartbeat, idle["visitor"],
                        busy["visitor"])
        await feed_join(self.topics.account_join, n, accounts, progress["account"], heartbeat, idle["account"],
                        busy["account"])

    def source_states(self) -> tuple[list[str], list[str]]:
        """The raw partitions this router reads that are idle now (also a gauge per topic), and
        those with records left to read (busy: a join that knew them idle takes them back)."""
        positions = self.positions()
        if positions is None:  # unknown now: name none; the joins keep those they know idle
            return [], []
        idle = self.idleness.idle(positions, self._monotonic())
        gauge = self.metrics.idle_input_partitions
        gauge.clear()  # partitions moved to another worker disappear
        for source in positions:
            gauge.labels(source.rsplit("/", 1)[0])  # every read topic shows, at 0 when none is idle
        for source in idle:
            gauge.labels(source.rsplit("/", 1)[0]).inc()
        return idle, busy(positions)
