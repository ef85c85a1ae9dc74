"""The router agent's work: route raw input (streams/logic/routing.py) and send it on.

Valid clicks and signups are counted for the fraud checks (Redis) and go to `visitor-join`
partitioned by visitor_id, orders to `account-join` partitioned by account_id, as msgpack
batch messages per destination partition (split under 512 KiB). Every batch also carries
the event-time progress of the raw partitions this router reads, and every join partition
hears it at least every second (a heartbeat, also when no input arrives: joins finalise
and expire state only when a message reaches them), so the joins' watermarks can follow
the slowest source. Invalid messages go
to `dead-letters` with the reason and their source topic, partition and offset.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from schemas.records import encode_batches, json_encoder
from streams.config import Settings
from streams.logic.privacy import Pseudonyms, dead_letter
from streams.logic.routing import Routing
from streams.metrics import Metrics


class Router:
    def __init__(self, settings: Settings, topics: Any, metrics: Metrics, signals: Any = None) -> None:
        self.settings = settings
        self.signals = signals  # SignalStore: flood and farming counters (None: not counted)
        self.topics = topics
        self.metrics = metrics
        self.salt = settings.pii_salt.encode()
        self.pseudonyms = Pseudonyms(self.salt, settings.id_fields_to_hash)
        self.routing = Routing(settings.partitions, len(settings.topic_prefix), int(settings.max_future_s * 1000),
                               settings.max_message_bytes, self.pseudonyms)
        self.last_heartbeat = 0.0
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
        for msg, reason in routed.invalid:
            await self.dead_letter(reason, msg)
        for topic, count in routed.counts.items():
            self.metrics.events_in.labels(topic).inc(count)
        if self.signals is not None:  # counted before the joins can decide on these events
            await self.signals.record_events([r for recs in routed.visitors.values() for r in recs])
        await self._send(routed.visitors, routed.accounts)

    async def _send(self, visitors: dict[int, list], accounts: dict[int, list]) -> None:
        """One batch message per join partition with records, and to every partition (only
        the clocks) when the last heartbeat is a second old."""
        now = time.monotonic()
        heartbeat = now - self.last_heartbeat >= 1.0
        if heartbeat:
            self.last_heartbeat = now
        for topic, join, batches in ((self.topics.visitor_join, "visitor", visitors),
                                     (self.topics.account_join, "account", accounts)):
            clocks = self.routing.progress[join]
            for p in range(self.settings.partitions):
                # also with no clocks (a restarted worker whose raw input was all read): the
                # joins' recovered clocks may have passed deadlines they never swept
                if p in batches or heartbeat:
                    for value in encode_batches(batches.get(p, []), clocks):
                        await topic.send(value=value, partition=p)

    def hash(self, value: str | None) -> str | None:
        return self.pseudonyms.hash(value)

    async def dead_letter(self, reason: str, msg: Any) -> None:
        self.metrics.dead_letters.labels(msg.topic).inc()
        letter = dead_letter(reason, msg, self.salt)
        key = letter.key.encode() if letter.key else None
        await self.topics.dead_letters.send(key=key, value=json_encoder.encode(letter))
