"""Shared test data of the promoter stage's tests (test_pricing, test_overrides): times,
the account join's decisions, and `run`, which plays the stage over them."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from schemas.records import Conversion, DecisionRec
from schemas.units import DAY_MS, HOUR_MS
from streams.logic.pricing import PromoterBook, add, advance, reprice, unpriced
from streams.logic.rules.ruleset import RuleBook

NOW = 42  # wall-clock "now" of the stage's decisions (decided_at)
FAR = 10 * 365 * DAY_MS  # expires: the account join may still send decisions
JAN_CLOSES = 1_770_508_800_000  # 2026-02-08T00:00:00Z: January's close in UTC, month_close_days 7


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def jan(day: int, hour: int = 12) -> int:
    return ms(f"2026-01-{day:02d}T{hour:02d}:00:00Z")


def feb(day: int, hour: int = 12) -> int:
    return ms(f"2026-02-{day:02d}T{hour:02d}:00:00Z")


def decision(oid: str, ts: int, amount: str = "100", *, p: str = "P1", acct: str = "a1", rev: int = 1,
             status: str = "approved", **fields: object) -> DecisionRec:
    """A decision of the account join; the customer's first paid order defaults to this one."""
    base: dict = dict(
        order_id=oid, revision=rev, status=status, reasons=[], promoter_id=p, tracking_code="T-" + p,
        campaign="", account_id=acct, visitor_id="v-" + acct, click_event_id="c1", click_ts=ts - HOUR_MS,
        signup_event_id="s-" + acct, signup_ts=ts - HOUR_MS, order_event_id="e-" + oid, order_ts=ts, cart_id="",
        product="db-pro", category="saas", amount=Decimal(amount), discount=Decimal(0), currency="USD",
        order_status="paid", renewal=False, attribution_model="last_click", attribution_final=True, decided_at=0,
        rule_version="v1", customer_first_ts=ts, status_ts=ts, expires=ts + FAR)
    base.update(fields)
    return DecisionRec(**base)


def refunded(d: DecisionRec, at: int, rev: int = 2) -> DecisionRec:
    return msgspec.structs.replace(d, status="reversed", reasons=["refunded"], order_status="refunded", status_ts=at,
                                   revision=rev)


# -- playing the stage --------------------------------------------------------------
Step = DecisionRec | int  # a decision, or a watermark every book advances to


def feed(books: dict[str, PromoterBook], d: DecisionRec, book: RuleBook) -> list[Conversion]:
    """What one decision makes the pipeline send (the account join prices no promoter itself)."""
    if not d.promoter_id:
        return [unpriced(d, NOW)]
    state = books[d.promoter_id]
    touched, out = add(state, d, book, NOW)
    if touched is not None:
        out += reprice(state, {touched}, book, NOW)
    return out


def run(steps: Sequence[Step], book: RuleBook,
        books: dict[str, PromoterBook] | None = None) -> list[list[Conversion]]:
    """The conversions each step sent."""
    books = defaultdict(PromoterBook) if books is None else books
    sent: list[list[Conversion]] = []
    for step in steps:
        if isinstance(step, int):
            for state in books.values():
                advance(state, step, book)
            sent.append([])
        else:
            sent.append(feed(books, step, book))
    return sent
