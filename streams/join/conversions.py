"""Signup -> orders (the account join): pure functions over plain data.

State per `account_id`: the account's signup with its attribution (from the visitor join)
and the orders that may become or already are conversions. Every paid order of an
attributed account within the binding period is a conversion; refunds, cancellations and
chargebacks reverse it. A conversion is re-emitted with a higher `revision` whenever its
content changes, and re-sent unchanged when a redelivery touches it (idempotent outputs).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import msgspec

from schemas.records import AttributionRec, Conversion, OrderRec

#: later events win; at equal event time the more final status wins
STATUS_RANK = {"paid": 0, "cancelled": 1, "refunded": 2, "chargeback": 3}


@dataclass(frozen=True, slots=True)
class ConversionRules:
    binding_ms: int
    refund_window_ms: int
    model: str = "last_click"


@dataclass(frozen=True, slots=True)
class PromoterRef:
    promoter_id: str


#: tracking_code, event time -> the promoter owning the code then, or None
PromoterLookup = Callable[[str, int], "PromoterRef | None"]


class StatusEvent(msgspec.Struct, array_like=True):
    event_id: str
    ts: int
    status: str


class OrderState(msgspec.Struct, array_like=True):
    order: OrderRec  # the paid event when there is one, else the first seen
    events: list[StatusEvent]
    revision: int = 0
    digest: int = 0  # hash of the last emitted content

    @property
    def paid(self) -> bool:
        return any(e.status == "paid" for e in self.events)

    @property
    def status(self) -> str:
        return max(self.events, key=lambda e: (e.ts, STATUS_RANK[e.status], e.event_id)).status


class AccountState(msgspec.Struct, array_like=True):
    signup: AttributionRec | None = None
    orders: dict[str, OrderState] = {}


def in_binding(signup_ts: int, order_ts: int, rules: ConversionRules) -> bool:
    return signup_ts <= order_ts <= signup_ts + rules.binding_ms


def decide(
    o: OrderState, signup: AttributionRec, lookup: PromoterLookup, rules: ConversionRules,
    now_ms: int,
) -> Conversion | None:
    """The conversion for one order of an attributed account, or None if it is not one."""
    click = signup.click
    if click is None or not o.paid or not in_binding(signup.signup_ts, o.order.ts, rules):
        return None
    order = o.order
    order_status = o.status
    promoter = lookup(click.tracking_code, order.ts)
    reasons = []
    if promoter is None:
        reasons.append("unknown_promoter")
    if order_status != "paid":
        reasons.append(order_status)  # refunded | cancelled | chargeback
    status = "rejected" if promoter is None else ("reversed" if order_status != "paid" else "approved")
    conv = Conversion(
        order_id=order.order_id, revision=o.revision, status=status, reasons=reasons,
        promoter_id=promoter.promoter_id if promoter else "",
        tracking_code=click.tracking_code, campaign=click.campaign or "",
        account_id=order.account_id, visitor_id=signup.visitor_id,
        click_event_id=click.event_id, click_ts=click.ts,
        signup_event_id=signup.signup_event_id, signup_ts=signup.signup_ts,
        order_event_id=order.event_id, order_ts=order.ts, cart_id=order.cart_id or "",
        product=order.product, category=order.category or "", amount=order.amount,
        discount=order.discount, currency=order.currency, order_status=order_status,
        renewal=order.renewal, attribution_model=rules.model,
        attribution_final=signup.final, decided_at=now_ms,
    )
    content = msgspec.msgpack.encode(msgspec.structs.replace(conv, revision=0, decided_at=0))
    digest = int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "big")
    if digest != o.digest:
        o.revision += 1
        o.digest = digest
        conv.revision = o.revision
    return conv


def _emit(state: AccountState, order_ids, lookup, rules, now_ms) -> list[Conversion]:
    if state.signup is None:
        return []
    out = []
    for oid in order_ids:
        conv = decide(state.orders[oid], state.signup, lookup, rules, now_ms)
        if conv is not None:
            out.append(conv)
    return out


def _prune(state: AccountState, rules: ConversionRules) -> None:
    """Forget orders that can never be conversions of this account."""
    s = state.signup
    if s is None:
        return
    if s.click is None and s.final:
        state.orders = {}  # organic for good: nothing of this account will convert
    else:
        state.orders = {k: o for k, o in state.orders.items() if in_binding(s.signup_ts, o.order.ts, rules)}


def knows(state: AccountState, order: OrderRec) -> bool:
    """True if the order is already in state: its later events (a redelivery, a refund) are
    updates of a known order, never 'late', so a clawback is applied whenever it arrives."""
    return order.order_id in state.orders


def add_order(
    state: AccountState, order: OrderRec, lookup: PromoterLookup, rules: ConversionRules,
    now_ms: int,
) -> list[Conversion]:
    """Record an order event (idempotent by event_id); return conversions it touches."""
    o = state.orders.get(order.order_id)
    if o is None:
        o = state.orders[order.order_id] = OrderState(order, [])
    if not any(e.event_id == order.event_id for e in o.events):
        o.events.append(StatusEvent(order.event_id, order.ts, order.status))
        if order.status == "paid" and o.order.status != "paid":
            o.order = order
    out = _emit(state, [order.order_id], lookup, rules, now_ms)
    _prune(state, rules)
    return out


def add_attribution(
    state: AccountState, rec: AttributionRec, lookup: PromoterLookup, rules: ConversionRules,
    now_ms: int,
) -> list[Conversion]:
    """Apply a signup's (re-)attribution; return the account's conversions it touches.

    The account's earliest signup is the one that counts. Once final, an attribution is
    not overridden by a redelivered provisional one.
    """
    cur = state.signup
    if cur is None or (rec.signup_ts, rec.signup_event_id) < (cur.signup_ts, cur.signup_event_id):
        state.signup = rec
    elif rec.signup_event_id == cur.signup_event_id and not (cur.final and not rec.final):
        state.signup = rec
    out = _emit(state, list(state.orders), lookup, rules, now_ms)
    _prune(state, rules)
    return out


def _kept_until(s: AttributionRec, rules: ConversionRules) -> int:
    """Event time until which an account's state is kept: binding period, plus the refund
    window when attributed (for clawbacks)."""
    return s.signup_ts + rules.binding_ms + (rules.refund_window_ms if s.click else 0)


def due(state: AccountState, rules: ConversionRules) -> int | None:
    """Earliest watermark value past which `advance` changes `state` (None: not by time)."""
    s = state.signup
    if s is None:
        return min((o.order.ts for o in state.orders.values()), default=None)
    if s.click is None and s.final:
        return s.signup_ts
    return _kept_until(s, rules)


def advance(state: AccountState, watermark: int, rules: ConversionRules) -> bool:
    """Expire by event time; return True when the whole account state can be deleted.

    Orders waiting for a signup wait until the watermark passes them. An organic account
    waits for its final attribution (at most the binding period); an attributed one is
    kept through the binding period plus the refund window, for clawbacks.
    """
    s = state.signup
    if s is None:
        state.orders = {k: o for k, o in state.orders.items() if o.order.ts >= watermark}
        return not state.orders
    if s.click is None and s.final:
        return True
    return _kept_until(s, rules) < watermark
