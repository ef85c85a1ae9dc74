"""Signup -> orders (the account join): pure functions over plain data.

State per `account_id`: the account's signup with its attribution (from the visitor join)
and the orders that may become or already are conversions. Every paid order of an
attributed account within the binding period is a conversion; refunds, cancellations and
chargebacks reverse it. Each one is checked here (streams/logic/rules) and decided as a
`DecisionRec`, not priced: its price depends on the promoter's other orders, which the
promoter stage (streams/logic/pricing.py) holds. A decision is re-emitted with a higher
`revision` whenever its content changes, and re-sent unchanged when a redelivery touches
it (idempotent outputs). An order whose promoter changes (re-attribution) is first
withdrawn from the old promoter (`reroute`).

An account is attributed by its signup's click or by a coupon code: the signup's, or one
redeemed with a paid order (`attribution.order_source` says which wins, per order). Until its
binding period ends, an organic account may still be attributed by an order's code, so it
is kept that long (its signup only: orders behind the watermark cannot follow a coupon
order still to come).
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from schemas.records import AttributionRec, DecisionRec, OrderRec
from streams.logic.attribution import COUPON, CouponUse, Source, order_source
from streams.logic.pricing import content_digest
from streams.logic.rules import windows
from streams.logic.rules.checks import Evidence, PromoterRef, Signals, identity_match, reasons, status_of
from streams.logic.rules.ruleset import RuleBook

#: later events win; at equal event time the more final status wins
STATUS_RANK = {"paid": 0, "cancelled": 1, "refunded": 2, "chargeback": 3}


@dataclass(frozen=True, slots=True)
class ConversionRules:
    binding_ms: int
    refund_window_ms: int
    model: str = "last_click"


#: tracking_code, event time -> the promoter owning the code then, or None
PromoterLookup = Callable[[str, int], "PromoterRef | None"]
#: account_id, email domain, event time -> owner (direct_sales | channel_partner) or None
ExclusionLookup = Callable[[str, "str | None", int], "str | None"]


def no_exclusions(account_id: str, email_domain: str | None, ts: int) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a decision reads besides the account's own state."""

    rules: ConversionRules
    book: RuleBook = field(default_factory=lambda: RuleBook([]))
    promoter: PromoterLookup = lambda code, ts: None
    exclusion: ExclusionLookup = no_exclusions
    #: coupon code, event time -> the promoter owning the code then (`PromoterDirectory.by_coupon`)
    coupon: PromoterLookup = lambda code, ts: None
    #: promoter id, event time -> who recruited him then (`PromoterDirectory.parent_of`)
    parent_of: Callable[[str, int], str | None] = lambda promoter_id, ts: None

    def recruiter(self, promoter: PromoterRef | None, ts: int) -> str:
        """Who earns an override on `promoter`'s order at `ts`: his recruiter, but nobody on
        self-recruitment or a two-promoter cycle (docs/rules.md "Two-level referrals")."""
        parent = promoter.parent_promoter_id if promoter else None
        if not parent or promoter is None or parent == promoter.promoter_id:
            return ""
        return "" if self.parent_of(parent, ts) == promoter.promoter_id else parent

    def precedence(self, ts: int) -> str:
        """`attribution_precedence` of the rule set in force at `ts`."""
        return self.book.at(ts).attribution_precedence


class StatusEvent(msgspec.Struct, array_like=True):
    event_id: str
    ts: int
    status: str


class OrderState(msgspec.Struct, array_like=True):
    order: OrderRec  # the earliest paid event when there is one (whatever arrived first), else the first seen
    events: list[StatusEvent]
    revision: int = 0
    digest: int = 0  # hash of the last emitted content
    #: the promoter its last decision went to ('' for none yet, or no promoter): a later
    #: decision for another one first withdraws it there (`reroute`)
    promoter_id: str = ""

    @property
    def paid(self) -> bool:
        return any(e.status == "paid" for e in self.events)

    @property
    def status(self) -> str:
        return max(self.events, key=_latest).status


class AccountState(msgspec.Struct, array_like=True):
    signup: AttributionRec | None = None
    orders: dict[str, OrderState] = {}
    #: flood / farming counters (Redis keeps them only for days): read when the attribution
    #: arrives, and once more, for good, when the watermark has closed their windows
    signals: Signals | None = None
    signals_final: bool = False
    #: (event time, order_id) of paid orders of an organic account that expiry dropped: a
    #: coupon order later must still know it is not the customer's first (`paid_orders`)
    paid_before: list[tuple[int, str]] = []


def in_binding(signup_ts: int, order_ts: int, rules: ConversionRules) -> bool:
    return signup_ts <= order_ts <= signup_ts + rules.binding_ms


def _in_binding(state: AccountState, rules: ConversionRules) -> list[OrderState]:
    """The account's paid orders within its binding period, in event-time order."""
    s = state.signup
    if s is None:
        return []
    found = [o for o in state.orders.values() if o.paid and in_binding(s.signup_ts, o.order.ts, rules)]
    return sorted(found, key=lambda o: (o.order.ts, o.order.order_id))


def coupon_uses(state: AccountState, rules: ConversionRules) -> bool:
    """True if the customer used a coupon code: at signup or with a paid order in binding."""
    s = state.signup
    return s is not None and (bool(s.coupon) or any(o.order.coupon_code for o in _in_binding(state, rules)))


def attributed(state: AccountState, rules: ConversionRules) -> bool:
    """The account has (or may have, as its orders come) conversions: a click or a coupon code."""
    return state.signup is not None and (state.signup.click is not None or coupon_uses(state, rules))


def sources(state: AccountState, ctx: Context) -> dict[str, Source]:
    """order_id -> what attributes it, for every order that is a conversion (paid, within
    binding, attributed by the click or a coupon code: `attribution.order_source`)."""
    s = state.signup
    if s is None:
        return {}
    uses = [CouponUse(s.signup_ts, s.coupon)] if s.coupon else []
    out = {}
    for o in _in_binding(state, ctx.rules):
        if o.order.coupon_code:
            uses.append(CouponUse(o.order.ts, o.order.coupon_code))
        source = order_source(s.click, uses, ctx.precedence)
        if source is not None:
            out[o.order.order_id] = source
    return out


def paid_orders(state: AccountState) -> list[tuple[int, str]]:
    """(event time, order_id) of the account's paid orders, in that order: the customer's
    order history that pricing's customer rules read."""
    kept = {(o.order.ts, o.order.order_id) for o in state.orders.values() if o.paid}
    return sorted(kept.union(state.paid_before))


def decide(
    o: OrderState, state: AccountState, ctx: Context, is_first: bool, now_ms: int,
    paid: list[tuple[int, str]] | None = None, source: Source | None = None,
) -> DecisionRec:
    """The decision for one candidate order: checks, status, reasons, the evidence behind
    the reasons (for the review queue) and what pricing needs of the customer; no price.
    `paid` is `paid_orders(state)` and `source` `sources(state, ctx)[order_id]` when the
    caller has them (one pass per account). A coupon conversion's promoter is the code's
    owner at the order's time; it has no click (no tracking code, no click checks)."""
    signup = state.signup
    source = sources(state, ctx)[o.order.order_id] if source is None else source
    assert signup is not None
    order, order_status = o.order, o.status
    by_coupon = source.by == COUPON
    click = None if by_coupon else signup.click
    paid = paid_orders(state) if paid is None else paid
    ruleset = ctx.book.at(order.ts)
    promoter = ctx.coupon(source.code, order.ts) if click is None else ctx.promoter(click.tracking_code, order.ts)
    ident = signup.ident
    evidence = Evidence(promoter, signup, order, order_status,
                        ctx.exclusion(order.account_id, ident.email_domain if ident else None, order.ts),
                        state.signals or Signals(), source.code)
    reason_codes = reasons(evidence, ruleset)
    dec = DecisionRec(
        order_id=order.order_id, revision=o.revision, status=status_of(reason_codes), reasons=reason_codes,
        promoter_id=promoter.promoter_id if promoter else "",
        tracking_code=click.tracking_code if click else "", campaign=(click.campaign if click else None) or "",
        account_id=order.account_id, visitor_id=signup.visitor_id,
        click_event_id=click.event_id if click else "", click_ts=click.ts if click else 0,
        signup_event_id=signup.signup_event_id, signup_ts=signup.signup_ts,
        order_event_id=order.event_id, order_ts=order.ts, cart_id=order.cart_id or "",
        product=order.product, category=order.category or "", amount=order.amount,
        discount=order.discount, currency=order.currency, order_status=order_status,
        renewal=order.renewal, attribution_model=ctx.rules.model,
        attribution_final=signup.final, decided_at=now_ms,
        first_order=is_first, rule_version=ruleset.version,
        flood_clicks=evidence.signals.flood_clicks if click else 0, farm_signups=evidence.signals.farm_signups,
        exclusion_owner=evidence.exclusion_owner or "", identity_match=identity_match(promoter, evidence),
        base_level=promoter.level if promoter else 1,
        customer_order=bisect_left(paid, (order.ts, order.order_id)) + 1,
        customer_first_ts=paid[0][0], existing_customer=paid[0][0] < source.ts,
        status_ts=max(o.events, key=_latest).ts, expires=_kept_until(state, ctx.rules),
        attributed_by=source.by, coupon_code=source.code,
        parent_promoter_id=ctx.recruiter(promoter, order.ts),
        promoter_joined_at=(promoter.joined_at or 0) if promoter else 0,
    )
    digest = content_digest(dec)
    if digest != o.digest:
        o.revision += 1
        o.digest = digest
        dec.revision = o.revision
    return dec


def decide_all(state: AccountState, touched: set[str], ctx: Context, now_ms: int) -> list[DecisionRec]:
    """Decide every candidate order; return those that changed, plus the `touched` ones
    (re-sent unchanged, so a redelivery repairs an output lost in a crash)."""
    paid = paid_orders(state)
    first = paid[0][1] if paid else None  # the customer's first paid order earns the new-customer bonus
    out = []
    for oid, source in sources(state, ctx).items():
        o = state.orders[oid]
        before = o.revision
        dec = decide(o, state, ctx, oid == first, now_ms, paid, source)
        if oid in touched or o.revision != before:
            out.append(dec)
    return out


def reroute(state: AccountState, decided: list[DecisionRec]) -> list[DecisionRec]:
    """The withdrawals `decided` needs: for each order whose last decision went to another
    promoter, a copy of its new decision with `removed=True` addressed to the old one (which
    forgets the order and re-prices its others). Records where each order goes now.

    Idempotent under redelivery: the state is stored only after the step's outputs were
    sent, so a re-run step withdraws again (the old promoter ignores a second withdrawal)."""
    out = []
    for d in decided:
        o = state.orders[d.order_id]
        if o.promoter_id and o.promoter_id != d.promoter_id:
            out.append(msgspec.structs.replace(d, promoter_id=o.promoter_id, removed=True))
        o.promoter_id = d.promoter_id
    return out


def prune(state: AccountState, rules: ConversionRules) -> None:
    """Forget orders that can never be conversions of this account (after its binding period;
    an organic account's, by event time: `advance`). Orders before the signup stay: an
    earlier signup of the account may still arrive."""
    s = state.signup
    if s is not None:
        state.orders = {k: o for k, o in state.orders.items() if o.order.ts <= s.signup_ts + rules.binding_ms}


def knows(state: AccountState, order: OrderRec) -> bool:
    """True if the order is already in state: its later events (a redelivery, a refund) are
    updates of a known order, never 'late', so a clawback is applied whenever it arrives."""
    return order.order_id in state.orders


def add_order(state: AccountState, order: OrderRec) -> set[str]:
    """Record an order event (idempotent by event_id); return the order ids it touches."""
    o = state.orders.get(order.order_id)
    if o is None:
        o = state.orders[order.order_id] = OrderState(order, [])
    if not any(e.event_id == order.event_id for e in o.events):
        o.events.append(StatusEvent(order.event_id, order.ts, order.status))
        earlier = (order.ts, order.event_id) < (o.order.ts, o.order.event_id)
        if order.status == "paid" and (o.order.status != "paid" or earlier):
            o.order = order
        o.events = deciding_events(o.events)
    return {order.order_id}


def _latest(e: StatusEvent) -> tuple[int, int, str]:
    return e.ts, STATUS_RANK[e.status], e.event_id


def deciding_events(events: list[StatusEvent]) -> list[StatusEvent]:
    """The events that decide an order: the latest (its status) and the earliest payment
    (that it was paid). Others change neither and are dropped, so an order's state stays
    small however many events it gets; a redelivered dropped event is dropped again."""
    keep = {max(events, key=_latest).event_id}
    paid = [e for e in events if e.status == "paid"]
    if paid:
        keep.add(min(paid, key=lambda e: (e.ts, e.event_id)).event_id)
    return [e for e in events if e.event_id in keep]


def add_attribution(state: AccountState, rec: AttributionRec) -> set[str]:
    """Apply a signup's (re-)attribution; return the order ids it touches (all of them).

    The account's earliest signup is the one that counts. Once final, an attribution is
    not overridden by a redelivered provisional one.
    """
    cur = state.signup
    if cur is None or (rec.signup_ts, rec.signup_event_id) < (cur.signup_ts, cur.signup_event_id):
        state.signup = rec
    elif rec.signup_event_id == cur.signup_event_id and not (cur.final and not rec.final):
        state.signup = rec
    return set(state.orders)


def _kept_until(state: AccountState, rules: ConversionRules) -> int:
    """Event time until which an account's state is kept: binding period (an order's coupon
    code may still attribute it), plus the refund window when attributed (for clawbacks)."""
    s = state.signup
    assert s is not None
    return s.signup_ts + rules.binding_ms + (rules.refund_window_ms if attributed(state, rules) else 0)


def _organic_for_now(state: AccountState, rules: ConversionRules) -> bool:
    """Final, no click and no coupon code yet: only an order with a code can attribute it, and
    the orders before that one stay organic."""
    s = state.signup
    return s is not None and s.final and not attributed(state, rules)


def signals_close(s: AttributionRec) -> int:
    """Event time at which the attributed click's hour (if any) and the signup's day are
    over: from then on (watermark past it) their flood and farming counts can no longer grow."""
    return windows.closes_at(s.click.ts if s.click is not None else s.signup_ts, s.signup_ts)


def needs_final_signals(state: AccountState, watermark: int) -> bool:
    """Every final account's counters are read for good when their windows close, organic
    ones too: an order's coupon code may attribute them after Redis dropped the counts."""
    s = state.signup
    return s is not None and s.final and not state.signals_final and signals_close(s) < watermark


def due(state: AccountState, rules: ConversionRules) -> int | None:
    """Earliest watermark value past which `advance` changes `state` (None: not by time)."""
    s = state.signup
    if s is None:
        return min((o.order.ts for o in state.orders.values()), default=None)
    times = [_kept_until(state, rules)]
    if not state.signals_final:
        times.append(signals_close(s))
    if _organic_for_now(state, rules) and state.orders:
        times.append(min(o.order.ts for o in state.orders.values()))
    return min(times)


def advance(state: AccountState, watermark: int, rules: ConversionRules) -> bool:
    """Expire by event time; return True when the whole account state can be deleted.

    Orders waiting for a signup wait until the watermark passes them, and so do the orders
    of an account organic so far (a coupon order still to come is later: they stay organic).
    An account is kept through its binding period, plus the refund window when attributed
    (for clawbacks).
    """
    s = state.signup
    if s is None or _organic_for_now(state, rules):
        if s is not None:  # the customer's history outlives the orders
            gone = {(o.order.ts, o.order.order_id) for o in state.orders.values() if o.paid and o.order.ts < watermark}
            state.paid_before = sorted(gone.union(state.paid_before))
        state.orders = {k: o for k, o in state.orders.items() if o.order.ts >= watermark}
    if s is None:
        return not state.orders
    return _kept_until(state, rules) < watermark
