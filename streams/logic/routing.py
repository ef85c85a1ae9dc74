"""Routing raw input (pure): validate, hash personal data, turn events into join records and
group them by the join partition of their key, noting each source partition's event-time
progress. The router agent (streams/agents/router.py) sends what this returns."""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.events import Click, Event, Order, Signup, millis
from schemas.records import ClickRec, OrderRec, SignupRec
from schemas.validate import Invalid, decode
from streams.logic.messages import Message
from streams.logic.partitioning import partition_for
from streams.logic.privacy import Pseudonyms

log = logging.getLogger(__name__)
JOINS = ("visitor", "account")
ORDERS = "orders"  # the raw topic (without prefix) routed to the account join


def to_record(event: Event, src: str) -> ClickRec | SignupRec | OrderRec:
    """The join record of a valid click, signup or order (personal fields already hashed)."""
    if isinstance(event, Click):
        return ClickRec(
            event.event_id, millis(event.ts), event.visitor_id, event.tracking_code, event.campaign,
            event.material_id, event.ip, event.user_agent, event.url,
            event.referrer, event.method.upper(), src,
        )
    if isinstance(event, Signup):
        return SignupRec(
            event.event_id, millis(event.ts), event.account_id, event.visitor_id, event.ip,
            event.user_agent, event.email_domain, event.email_hash, event.account_type,
            event.realname_id_hash, event.device_id, src, event.coupon_code,
        )
    if isinstance(event, Order):
        return OrderRec(
            event.event_id, millis(event.ts), event.order_id, event.account_id, event.product, event.amount,
            event.currency, event.status, event.discount, event.cart_id, event.sku, event.category,
            event.renewal, src, event.coupon_code,
        )
    raise TypeError(f"no join record for {type(event).__name__}")


@dataclass
class Routed:
    """One batch of raw messages, routed: records per join partition, the invalid messages
    with their reasons, how many messages each topic gave, and the source partitions
    ("topic/partition") that gave valid records (they are not idle)."""

    visitors: dict[int, list[ClickRec | SignupRec]] = field(default_factory=lambda: defaultdict(list))
    accounts: dict[int, list[OrderRec]] = field(default_factory=lambda: defaultdict(list))
    invalid: list[tuple[Message, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sources: set[str] = field(default_factory=set)


@dataclass
class Routing:
    """Routes raw messages and keeps, per join, the highest event time seen from every
    source partition ("topic/partition"): the clocks the joins' watermarks follow."""

    partitions: int
    prefix_len: int  # of the topic names: the input topic is the name after the prefix
    max_future_ms: int
    max_message_bytes: int
    pseudonyms: Pseudonyms
    progress: dict[str, dict[str, int]] = field(default_factory=lambda: {join: {} for join in JOINS})

    def route(self, messages: list[Message], now_ms: int) -> Routed:
        out = Routed()
        for msg in messages:
            out.counts[msg.topic] += 1
            try:
                rec = self.record(msg, now_ms)
            except Exception as exc:  # a bug tripped by one message must not stop the pipeline
                log.exception("cannot route a message: dead-lettered",
                              extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                rec = Invalid(f"internal error while routing ({type(exc).__name__}); see the worker log")
            if isinstance(rec, Invalid):
                out.invalid.append((msg, rec.reason))
                continue
            source = f"{msg.topic}/{msg.partition}"
            out.sources.add(source)
            if isinstance(rec, OrderRec):
                self._observe("account", source, rec.ts)
                out.accounts[partition_for(rec.account_id.encode(), self.partitions)].append(rec)
            else:
                self._observe("visitor", source, rec.ts)
                out.visitors[partition_for(rec.visitor_id.encode(), self.partitions)].append(rec)
        return out

    def record(self, msg: Message, now_ms: int) -> ClickRec | SignupRec | OrderRec | Invalid:
        event = decode(msg.topic[self.prefix_len:], msg.value, now_ms, self.max_future_ms, self.max_message_bytes)
        if isinstance(event, Invalid):
            return event
        return to_record(self.pseudonyms.apply(event), f"{msg.topic}/{msg.partition}/{msg.offset}")

    def by_join(self, sources: Iterable[str]) -> dict[str, list[str]]:
        """Source partitions ("topic/partition") by the join they feed: orders the account
        join, clicks and signups the visitor join (each list in the given order)."""
        out: dict[str, list[str]] = {join: [] for join in JOINS}
        for source in sources:
            topic = source.rsplit("/", 1)[0][self.prefix_len:]
            out["account" if topic == ORDERS else "visitor"].append(source)
        return out

    def _observe(self, join: str, source: str, ts: int) -> None:
        progress = self.progress[join]
        if ts > progress.get(source, 0):
            progress[source] = ts
