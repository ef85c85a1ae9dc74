"""Click -> signup attribution (the visitor join): pure functions over plain data.

State per `visitor_id`: the visitor's recent clicks and its signups still open to change.
A signup is attributed to the last (or first) click of the same visitor within the
attribution window before it. A click that arrives after its signup, but not late, still
counts: the signup is re-attributed and the new choice is emitted. When the watermark
passes a signup its attribution is final and is emitted once more with `final=True`.

A signup's coupon code rides along to the account join, which also sees the orders' codes:
`order_source` (below) is the one rule that says whether an order is attributed by a click
or by a coupon code (`attribution_precedence`).
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from schemas.records import AttributionRec, ClickRec, ClickRef, SignupIdent, SignupRec
from streams.logic.rules.checks import is_bot
from streams.logic.rules.ruleset import RuleBook


@dataclass(frozen=True, slots=True)
class AttributionRules:
    window_ms: int
    model: str = "last_click"  # or "first_click"
    max_clicks: int = 64  # per visitor; a flood keeps the clicks the model can choose


class OpenSignup(msgspec.Struct, array_like=True):
    account_id: str
    event_id: str
    ts: int
    click: ClickRef | None
    final: bool = False
    ident: SignupIdent | None = None
    coupon: str | None = None  # trailing: states written before coupon codes still decode


class VisitorState(msgspec.Struct, array_like=True):
    clicks: list[ClickRef] = []  # sorted by (ts, event_id)
    signups: list[OpenSignup] = []

    @property
    def empty(self) -> bool:
        return not self.clicks and not self.signups


def click_ref(rec: ClickRec, book: RuleBook) -> ClickRef:
    """What the visitor join keeps of a click, with the bot check of the rule set in force
    at the click's time (the live join and replay both build it here)."""
    bot = is_bot(rec.user_agent, rec.method, book.at(rec.ts))
    return ClickRef(rec.event_id, rec.ts, rec.tracking_code, rec.campaign, rec.ip_hash, bot)


def signup_ident(rec: SignupRec) -> SignupIdent:
    """Who signed up, as far as the self-referral and farming checks need."""
    return SignupIdent(rec.ip_hash, rec.device_id, rec.email_hash, rec.email_domain, rec.realname_id_hash)


def choose_click(clicks: list[ClickRef], signup_ts: int, rules: AttributionRules) -> ClickRef | None:
    """The click a signup at `signup_ts` is attributed to, or None (organic).

    Eligible: `signup_ts - window <= click.ts <= signup_ts`. `clicks` is sorted, so ties in
    time are broken by event_id, the same way on every replay.
    """
    eligible = [c for c in clicks if signup_ts - rules.window_ms <= c.ts <= signup_ts]
    if not eligible:
        return None
    return eligible[-1] if rules.model == "last_click" else eligible[0]


def _record(visitor_id: str, s: OpenSignup) -> AttributionRec:
    return AttributionRec(s.account_id, s.event_id, s.ts, visitor_id, s.click, s.final, s.ident, s.coupon)


def add_click(
    state: VisitorState, visitor_id: str, click: ClickRef, rules: AttributionRules
) -> list[AttributionRec]:
    """Add a click (idempotent by event_id); return attributions it may have changed.

    Open signups whose window contains the click are re-emitted even when unchanged, so
    that a redelivered click repairs an attribution lost in a crash before it was sent.
    """
    if not any(c.event_id == click.event_id for c in state.clicks):
        bisect.insort(state.clicks, click, key=lambda c: (c.ts, c.event_id))
        if len(state.clicks) > rules.max_clicks:
            # keep the clicks the model can still pick: newest for last click, oldest for first
            state.clicks.pop(0 if rules.model == "last_click" else -1)
    out = []
    for s in state.signups:
        if not s.final and s.ts - rules.window_ms <= click.ts <= s.ts:
            s.click = choose_click(state.clicks, s.ts, rules)
            out.append(_record(visitor_id, s))
    return out


def add_signup(
    state: VisitorState, account_id: str, visitor_id: str, event_id: str, ts: int,
    rules: AttributionRules, ident: SignupIdent | None = None, coupon: str | None = None,
) -> list[AttributionRec]:
    """Add a signup (idempotent by event_id) and return its current attribution."""
    for s in state.signups:
        if s.event_id == event_id:
            return [_record(visitor_id, s)]
    s = OpenSignup(account_id, event_id, ts, choose_click(state.clicks, ts, rules), ident=ident, coupon=coupon)
    state.signups.append(s)
    return [_record(visitor_id, s)]


def knows(state: VisitorState, event_id: str) -> bool:
    """True if the event is already in state (a redelivery, never 'late')."""
    return any(c.event_id == event_id for c in state.clicks) or any(
        s.event_id == event_id for s in state.signups
    )


def due(state: VisitorState, rules: AttributionRules, grace_ms: int) -> int | None:
    """Earliest watermark value past which `advance` changes `state` (None: never)."""
    times = [s.ts if not s.final else s.ts + grace_ms for s in state.signups]
    if state.clicks:
        times.append(state.clicks[0].ts + rules.window_ms)
    return min(times) if times else None


def advance(
    state: VisitorState, visitor_id: str, watermark: int, rules: AttributionRules, grace_ms: int
) -> list[AttributionRec]:
    """Finalise signups the watermark has passed and expire what no on-time event can use.

    Returns the final attributions. A click older than `watermark - window` can no longer
    be chosen by an on-time signup; a final signup is kept `grace_ms` more so that its
    redeliveries are recognised as duplicates.
    """
    out = []
    for s in state.signups:
        if not s.final and s.ts < watermark:
            s.final = True
            out.append(_record(visitor_id, s))
    state.signups = [s for s in state.signups if not (s.final and s.ts + grace_ms < watermark)]
    state.clicks = [c for c in state.clicks if c.ts >= watermark - rules.window_ms]
    return out


# -- click or coupon code (the account join) -------------------------------------------------
CLICK, COUPON = "click", "coupon"


class CouponUse(NamedTuple):
    """A coupon code the customer used: at signup or with a paid order, at event time `ts`."""

    ts: int
    code: str


class Source(NamedTuple):
    """What attributes one order: `by` click or coupon, the coupon's code ('' for a click) and
    when the click or the code's use happened (a customer who paid before it is an existing one)."""

    by: str
    code: str
    ts: int


def order_source(click: ClickRef | None, uses: Sequence[CouponUse],
                 precedence: Callable[[int], str]) -> Source | None:
    """What attributes an order, or None (no conversion): the one home of `attribution_precedence`.

    `uses`: the codes the customer used up to and including this order, in event-time order
    (the signup's, then those of the account's paid orders). The latest use that wins over
    the click counts: a code wins when there is no click or when the precedence in force at
    its use (`precedence(ts)`) is "coupon" (the code wins over the cookie, like AffiliateWP);
    under "click" a code attributes only an account without a click. Else the click counts.
    So an order redeeming a code goes to that code, and so do the orders after it.
    """
    for use in reversed(uses):
        if click is None or precedence(use.ts) == COUPON:
            return Source(COUPON, use.code, use.ts)
    return Source(CLICK, "", click.ts) if click is not None else None
