"""Route raw input messages: validate, strip personal data, re-key for the joins.

Valid clicks and signups are counted for the fraud checks (Redis) and go to `visitor-join` partitioned by visitor_id, orders to
`account-join` partitioned by account_id, as one msgpack batch message per destination
partition. Every batch also carries the event-time progress of the raw partitions this
router reads, and every join partition hears it at least every second (a heartbeat, also
when no input arrives: joins finalise and expire state only when a message reaches
them), so the joins' watermarks can follow the slowest source. Invalid messages go
to `dead-letters` with the reason and their source topic, partition and offset.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Iterable

from schemas.events import Click, Order, Signup
from schemas.records import ClickRec, OrderRec, SignupRec, encode_batches, json_encoder
from schemas.validate import Invalid, decode
from streams.config import Settings
from streams.metrics import Metrics
from streams.logic.partitioning import partition_for
from streams.logic.privacy import Pseudonyms, dead_letter

log = logging.getLogger(__name__)


def to_record(event: Any, src: str) -> ClickRec | SignupRec | OrderRec:
    """The join record of a valid click, signup or order (personal fields already hashed)."""
    if isinstance(event, Click):
        return ClickRec(
            event.event_id, event.ts, event.visitor_id, event.tracking_code, event.campaign,
            event.material_id, event.ip, event.user_agent, event.url,
            event.referrer, event.method.upper(), src,
        )
    if isinstance(event, Signup):
        return SignupRec(
            event.event_id, event.ts, event.account_id, event.visitor_id, event.ip,
            event.user_agent, event.email_domain, event.email_hash, event.account_type,
            event.realname_id_hash, event.device_id, src,
        )
    assert isinstance(event, Order)
    return OrderRec(
        event.event_id, event.ts, event.order_id, event.account_id, event.product, event.amount,
        event.currency, event.status, event.discount, event.cart_id, event.sku, event.category,
        event.renewal, src,
    )


class Router:
    def __init__(self, settings: Settings, topics: Any, metrics: Metrics, signals: Any = None) -> None:
        self.settings = settings
        self.signals = signals  # SignalStore: flood and farming counters (None: not counted)
        self.topics = topics
        self.metrics = metrics
        self.salt = settings.pii_salt.encode()
        self.pseudonyms = Pseudonyms(self.salt, settings.id_fields_to_hash)
        self.max_future_ms = int(settings.max_future_s * 1000)
        self.prefix_len = len(settings.topic_prefix)
        self.progress: dict[str, dict[str, int]] = {"visitor": {}, "account": {}}
        self.last_heartbeat = 0.0
        # one route or heartbeat at a time: clocks must never reach a join before the records
        # (and the Redis counts) they cover
        self._sending = asyncio.Lock()

    async def route(self, messages: Iterable[Any]) -> None:
        """Route one batch of Kafka messages from the raw input topics."""
        async with self._sending:
            await self._route(messages)

    async def heartbeat(self) -> None:
        """Every join partition hears the progress if nothing was sent for a second (a timer
        calls this: with no input nothing else would move the joins' event time)."""
        async with self._sending:
            await self._send({}, {})  # sends only once the last heartbeat is a second old

    async def _route(self, messages: Iterable[Any]) -> None:
        n = self.settings.partitions
        visitors: dict[int, list] = defaultdict(list)
        accounts: dict[int, list] = defaultdict(list)
        now = int(time.time() * 1000)
        counts: dict[str, int] = defaultdict(int)
        for msg in messages:
            counts[msg.topic] += 1
            try:
                rec = self._record(msg, now)
            except Exception as exc:  # a bug tripped by one message must not stop the pipeline
                log.exception("cannot route a message: dead-lettered", extra={"topic": msg.topic,
                              "partition": msg.partition, "offset": msg.offset})
                rec = Invalid(f"internal error while routing ({type(exc).__name__}); see the worker log")
            if isinstance(rec, Invalid):
                await self.dead_letter(rec.reason, msg)
                continue
            source = rec.src.rsplit("/", 1)[0]
            join = "account" if isinstance(rec, OrderRec) else "visitor"
            progress = self.progress[join]
            if rec.ts > progress.get(source, 0):
                progress[source] = rec.ts
            if join == "account":
                accounts[partition_for(rec.account_id.encode(), n)].append(rec)
            else:
                visitors[partition_for(rec.visitor_id.encode(), n)].append(rec)
        for topic, count in counts.items():
            self.metrics.events_in.labels(topic).inc(count)
        if self.signals is not None:  # counted before the joins can decide on these events
            await self.signals.record_events([r for recs in visitors.values() for r in recs])
        await self._send(visitors, accounts)

    def _record(self, msg: Any, now: int) -> ClickRec | SignupRec | OrderRec | Invalid:
        event = decode(msg.topic[self.prefix_len:], msg.value, now, self.max_future_ms,
                       self.settings.max_message_bytes)
        if isinstance(event, Invalid):
            return event
        return to_record(self.pseudonyms(event), f"{msg.topic}/{msg.partition}/{msg.offset}")

    async def _send(self, visitors: dict[int, list], accounts: dict[int, list]) -> None:
        """One batch message per join partition with records, and to every partition (only
        the clocks) when the last heartbeat is a second old."""
        now = time.monotonic()
        heartbeat = now - self.last_heartbeat >= 1.0
        if heartbeat:
            self.last_heartbeat = now
        for topic, join, batches in ((self.topics.visitor_join, "visitor", visitors),
                                     (self.topics.account_join, "account", accounts)):
            clocks = self.progress[join]
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
