"""Money properties of the promoter stage that span the features: the program-currency
amount is the order's amount at the rate in force at its time, whatever the arrival order
and whenever the rate arrives; an override line is reversed (and earns nothing) whenever
its recruit's conversion is."""
from __future__ import annotations

import random
from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import FxRate
from schemas.records import Conversion, DecisionRec
from streams.logic import pricing
from streams.logic.fx import FxDirectory
from streams.logic.rules.checks import REVERSED
from streams.logic.rules.commission import to_program
from streams.logic.rules.ruleset import RuleBook, RuleSet, Tier

D = Decimal
DAY = 86_400_000
JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BOOK = RuleBook([RuleSet(tiers=(Tier(D(300), D("0.01")),), cap_per_promoter_month=D(200),
                         override_rate=D("0.1"))], currency="USD")


def dec(i: int, ts: int, amount: D, currency: str, *, parent: str = "", rev: int = 1,
        status: str = "approved") -> DecisionRec:
    return DecisionRec(order_id=f"o{i}", revision=rev, status=status, reasons=[] if status == "approved" else ["refunded"],
                       promoter_id="P1", tracking_code="T", campaign="", account_id=f"a{i % 3}", visitor_id="v",
                       click_event_id="c", click_ts=ts - 1, signup_event_id="s", signup_ts=ts - 1,
                       order_event_id=f"e{i}", order_ts=ts, cart_id="", product="pro", category="", amount=amount,
                       discount=D(0), currency=currency,
                       order_status="paid" if status == "approved" else "refunded", renewal=False,
                       attribution_model="last_click", attribution_final=True, decided_at=0, customer_first_ts=ts,
                       status_ts=ts + DAY, expires=ts + 400 * DAY, parent_promoter_id=parent)


rates = st.lists(st.tuples(st.integers(0, 40), st.decimals(D("0.5"), D("2"), places=4)), min_size=1, max_size=5)
orders = st.lists(st.tuples(st.integers(0, 45 * DAY), st.decimals(D(1), D(500), places=2),
                            st.sampled_from(["USD", "EUR"])), min_size=1, max_size=8)


def latest(sent: list[Conversion]) -> dict[str, Conversion]:
    out: dict[str, Conversion] = {}
    for c in sent:
        if c.order_id not in out or c.revision >= out[c.order_id].revision:
            out[c.order_id] = c
    return out


@settings(max_examples=150, deadline=None)
@given(rate_list=rates, order_list=orders, seed=st.integers(0, 10**6), rates_first=st.booleans())
def test_program_amount_is_the_amount_at_the_rate_in_force(rate_list, order_list, seed, rates_first) -> None:
    fx = FxDirectory()
    events = [FxRate(event_id=f"r{k}", ts=JAN + day * DAY, currency="EUR", rate=r) for k, (day, r) in
              enumerate(rate_list)]
    decisions = [dec(i, JAN + t, a, c) for i, (t, a, c) in enumerate(order_list)]
    random.Random(seed).shuffle(decisions)
    state, sent = pricing.PromoterBook(), []
    if rates_first:
        for e in events:
            fx.add(e)
    for d in decisions:
        _, now = pricing.add(state, d, BOOK, 0, fx.rate)
        sent += now + pricing.reprice(state, {d.order_id}, BOOK, 0, fx.rate)
    for e in events:  # late rates: what waited is priced when they come
        fx.add(e)
    sent += pricing.refresh(state, BOOK, 0, fx.rate)
    final = latest(sent)
    for d in decisions:
        c = final[d.order_id]
        rate = D(1) if d.currency == "USD" else fx.rate("EUR", d.order_ts)
        assert c.program_currency == "USD"
        if rate is None:
            assert c.status == "held" and "fx_rate_missing" in c.reasons and c.commission == 0
        else:
            assert (c.fx_rate, c.program_amount) == (rate, to_program(d.amount, rate))
            assert "fx_rate_missing" not in c.reasons
    expected = pricing.price_all(decisions, BOOK, 0, fx.rate)
    assert {c.order_id: (c.program_amount, c.commission, c.tier) for c in expected} == {
        oid: (c.program_amount, c.commission, c.tier) for oid, c in final.items() if "#" not in oid}


@settings(max_examples=150, deadline=None)
@given(order_list=orders, refunds=st.sets(st.integers(0, 7)), seed=st.integers(0, 10**6))
def test_an_override_line_is_reversed_with_its_recruit(order_list, refunds, seed) -> None:
    decisions = [dec(i, JAN + t, a, "USD", parent="P0") for i, (t, a, _) in enumerate(order_list)]
    stream = decisions + [msgspec.structs.replace(d, status=REVERSED, reasons=["refunded"], order_status="refunded",
                                                  revision=2) for i, d in enumerate(decisions) if i in refunds]
    rnd = random.Random(seed)
    rnd.shuffle(stream)
    stream.sort(key=lambda d: d.revision)  # an order's decisions keep their order
    state, sent = pricing.PromoterBook(), []
    for d in stream:
        _, now = pricing.add(state, d, BOOK, 0)
        sent += now + pricing.reprice(state, {d.order_id}, BOOK, 0)
    final = latest(sent)
    for d in decisions:
        child, line = final[d.order_id], final[d.order_id + "#override"]
        assert (line.promoter_id, line.override_of, line.status, line.revision) == ("P0", "P1", child.status,
                                                                                     child.revision)
        assert line.commission == (child.commission * D("0.1")).quantize(D("0.0001"))
        if child.status == REVERSED:
            assert line.commission == 0 and child.commission == 0


CAPPED = RuleBook([RuleSet(cap_per_promoter_month=D(30))], currency="USD")
JAN_CLOSES = pricing.closes_at(202601, CAPPED)


def play(steps: list[DecisionRec | int | FxRate], book: RuleBook) -> dict[str, Conversion]:
    """Decisions, watermarks (int: refresh then advance, as PromoterLogic.advance does) and
    rates, in that order; the latest conversion of each order."""
    fx, state, sent = FxDirectory(), pricing.PromoterBook(), []
    for step in steps:
        if isinstance(step, FxRate):
            fx.add(step)
        elif isinstance(step, int):
            sent += pricing.refresh(state, book, 0, fx.rate)
            pricing.advance(state, step, book, fx.rate)
        else:
            _, now = pricing.add(state, step, book, 0, fx.rate)
            sent += now + pricing.reprice(state, {step.order_id}, book, 0, fx.rate)
    return latest(sent)


def test_an_order_waiting_for_its_rate_when_its_month_closes_is_priced_when_the_rate_comes() -> None:
    o1 = dec(1, JAN + 4 * DAY, D(100), "EUR")
    late_rate = FxRate(event_id="r1", ts=JAN + 40 * DAY, currency="EUR", rate=D("1.1"), effective_from=JAN)
    got = play([o1, JAN_CLOSES + 1, late_rate, JAN_CLOSES + DAY], CAPPED)["o1"]
    assert (got.status, got.program_amount, got.commission) == ("approved", D("110.0000"), D("16.5000"))


def test_a_rate_replaced_for_a_past_time_reprices_before_the_month_closes() -> None:
    first = FxRate(event_id="r1", ts=JAN, currency="EUR", rate=D(1))
    better = FxRate(event_id="r2", ts=JAN + 20 * DAY, currency="EUR", rate=D("1.5"), effective_from=JAN + 5 * DAY)
    o1 = dec(1, JAN + 9 * DAY, D(100), "EUR")
    got = play([first, o1, better, JAN_CLOSES + 1], RuleBook([RuleSet()], currency="USD"))["o1"]
    assert (got.fx_rate, got.program_amount, got.commission) == (D("1.5"), D("150.0000"), D("22.5000"))


def test_late_decisions_of_a_closed_month_share_its_cap() -> None:
    o1, o2, o3 = (dec(i, JAN + (4 + i) * DAY, D(100), "USD") for i in (1, 2, 3))
    got = play([o1, JAN_CLOSES + 1, o2, JAN_CLOSES + 2, o3, JAN_CLOSES + 3], CAPPED)
    assert [got[o].commission for o in ("o1", "o2", "o3")] == [D(15), D(15), D(0)]
    assert got["o3"].cap == "promoter_month"
