"""A promoter's book stays a valid changelog record however many orders he has
(`pricing.shrink`): final prices that expire first go, then the earliest open orders are
fixed early; what is left still prices as before."""
from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from schemas.records import DecisionRec
from streams.logic import pricing
from streams.logic.rules.ruleset import RuleBook, RuleSet, Tier

D = Decimal
DAY = 86_400_000
JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BOOK = RuleBook([RuleSet(tiers=(Tier(D(500), D("0.01")),), cap_per_promoter_month=D(100_000))])


def dec(i: int, ts: int) -> DecisionRec:
    return DecisionRec(order_id=f"ord-{i:08d}", revision=1, status="approved", reasons=[], promoter_id="P1",
                       tracking_code="T-P1", campaign="cmp-video-0001", account_id=f"acc-{i:08d}",
                       visitor_id=f"v-{i:016d}", click_event_id=f"click-{i:032d}", click_ts=ts - 1000,
                       signup_event_id=f"signup-{i:032d}", signup_ts=ts - 500, order_event_id=f"order-{i:032d}",
                       order_ts=ts, cart_id=f"cart-{i:012d}", product="pro", category="saas", amount=D("40.00"),
                       discount=D(0), currency="USD", order_status="paid", renewal=False,
                       attribution_model="last_click", attribution_final=True, decided_at=0, customer_first_ts=ts,
                       expires=ts + 270 * DAY)


def book_of(n: int) -> pricing.PromoterBook:
    state = pricing.PromoterBook()
    for i in range(n):
        pricing.add(state, dec(i, JAN + i * 60_000), BOOK, 0)
    pricing.reprice(state, set(state.open), BOOK, 0)
    return state


def size(state: pricing.PromoterBook) -> int:
    return len(msgspec.msgpack.encode(state))


@pytest.mark.parametrize("n, bound", [(300, 30_000), (400, 80_000), (2_000, 200_000)])
def test_a_book_is_brought_under_its_bound(n: int, bound: int) -> None:
    state = book_of(n)
    before = {oid: (e.sent[1] if e.sent else None) for oid, e in state.open.items()}
    assert size(state) > bound
    touched = pricing.shrink(state, BOOK, bound)
    assert size(state) <= bound and touched > 0
    fixed = [oid for oid in before if oid in state.final]
    assert fixed == sorted(fixed)[:len(fixed)] and all(oid not in state.open for oid in fixed)
    # the earliest were fixed at the price they had; the rest price as they did
    assert all(state.final[oid].pricing == before[oid] for oid in fixed)
    again = {c.order_id: c for c in pricing.reprice(state, set(state.open), BOOK, 0)}
    assert all(again[oid].tier == before[oid].tier and again[oid].commission == before[oid].commission
               for oid in state.open)


def test_a_small_book_is_left_alone() -> None:
    state = book_of(10)
    assert pricing.shrink(state, BOOK, 1) == 0 and len(state.open) == 10


def test_final_prices_go_before_open_orders_are_fixed() -> None:
    state = book_of(600)
    pricing.advance(state, pricing.closes_at(202601, BOOK) + 1, BOOK)  # January closed: all final
    assert not state.open and len(state.final) == 600
    later = [dec(10_000 + i, JAN + 40 * DAY + i * 60_000) for i in range(300)]
    for d in later:
        pricing.add(state, d, BOOK, 0)
    pricing.reprice(state, set(state.open), BOOK, 0)
    pricing.shrink(state, BOOK, size(state) - 20_000)
    assert len(state.open) == 300 and len(state.final) < 600
