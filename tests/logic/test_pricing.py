"""The promoter stage (streams/logic/pricing.py), through its API: decisions in, priced
conversions out, by event time whatever the order of arrival (docs/rules.md "Commission").

`run` plays what the stage does with a stream of steps: a decision goes to its promoter's
book (`add`, then `reprice` of what it touched), a watermark closes months in every book
(`advance`). Each case checks the latest conversion of every order (the one with the
highest revision: what `conversions_current` keeps) and, unless months closed around a
late decision, that it equals `price_all` of the same decisions.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Conversion, DecisionRec
from schemas.units import DAY_MS, HOUR_MS
from streams.logic.pricing import REVISION_BITS, PromoterBook, advance, due, price_all
from streams.logic.rules.calendar import month_of, month_start
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.logic.fixtures import FAR, JAN_CLOSES, NOW, Step, decision, feb, feed, jan, ms, refunded, run

D = Decimal
R1, R2, R3 = (1 << REVISION_BITS, 2 << REVISION_BITS, 3 << REVISION_BITS)  # decision revisions 1..3, unchanged
dec = decision


def moved(d: DecisionRec, to: str, rev: int) -> list[DecisionRec]:
    """What the account join sends when `d`'s order is re-attributed to promoter `to`: a
    removal to the old promoter, then the new decision (to the stage, or unpriced if '')."""
    new = msgspec.structs.replace(d, promoter_id=to, revision=rev)
    return [msgspec.structs.replace(new, promoter_id=d.promoter_id, removed=True), new]


# -- playing the stage --------------------------------------------------------------
def latest(convs: list[Conversion]) -> dict[str, Conversion]:
    out: dict[str, Conversion] = {}
    for c in convs:
        if c.order_id not in out or c.revision > out[c.order_id].revision:
            out[c.order_id] = c
    return out


def content(c: Conversion) -> dict:
    """Everything but the revision and when it was decided."""
    return {k: v for k, v in msgspec.structs.asdict(c).items() if k not in ("revision", "decided_at")}


def price_of(c: Conversion) -> tuple:
    return (c.level, c.tier, c.commission, c.bonus, c.points, c.cap)


# -- cases --------------------------------------------------------------------------
LEVELS = {"level_points": (1500, 3000, 4500, 6000)}  # 100 at level 1 (15 -> 1500 points) reaches level 2
RENEWAL_RATES = {"renewal_level_rates": tuple(D(r) for r in ("0.05", "0.06", "0.07", "0.08", "0.09"))}
O1 = dec("o1", jan(5), "10000")  # 1500 commission: tier 1 for what follows it in January


@dataclass
class Case:
    name: str
    steps: Sequence[Step]
    #: order -> (level, tier, commission, bonus, points, cap) of its latest conversion
    expected: dict[str, tuple]
    rules: dict = field(default_factory=dict)
    zone: str = "UTC"
    last: set[str] | None = None  # the orders the last step sent conversions of
    revisions: dict[str, list[int]] = field(default_factory=dict)  # every revision sent, per order
    like_price_all: bool = True  # False: a decision came after its month closed


def p(level: int, tier: int, commission: str, bonus: str = "0", points: int | None = None, cap: str = "") -> tuple:
    if points is None:
        points = int((D(commission) + D(bonus)) * 100)
    return (level, tier, commission, bonus, points, cap)


CASES = [
    Case("one order", [dec("o1", jan(5))], {"o1": p(1, 0, "15")}, revisions={"o1": [R1]}),
    Case("no promoter: unpriced, revision decision << 16", [dec("o1", jan(5), p="")],
         {"o1": (0, 0, "0", "0", 0, "")}, revisions={"o1": [R1]}),
    # tiers: the month's counted volume before the order
    Case("tier: volume before exactly the threshold", [O1, dec("o2", jan(6))],
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "16")}),
    Case("tier: a cent short", [dec("o1", jan(5), "9999.99"), dec("o2", jan(6))],
         {"o1": p(1, 0, "1499.9985"), "o2": p(1, 0, "15")}),
    Case("tier: by order time, not arrival", [dec("o2", jan(6)), O1],
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "16")}, last={"o1", "o2"}, revisions={"o2": [R1, R1 + 1]}),
    Case("tier: the same time, order id first", [dec("b", jan(5)), dec("a", jan(5), "10000")],
         {"a": p(1, 0, "1500"), "b": p(1, 1, "16")}),
    Case("tier: the order's own amount is not before it", [dec("o1", jan(5), "20000")], {"o1": p(1, 0, "3000")}),
    Case("tier: a new month starts from nothing", [O1, dec("o2", feb(2))],
         {"o1": p(1, 0, "1500"), "o2": p(2, 0, "20")}),  # level 2 from January's 150 000 points
    Case("tier: rejected volume does not count", [dec("o1", jan(5), "10000", status="rejected"), dec("o2", jan(6))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}),
    Case("tier: another promoter's volume does not count", [dec("o1", jan(5), "10000", p="P2"), dec("o2", jan(6))],
         {"o1": p(1, 0, "1500"), "o2": p(1, 0, "15")}),
    # levels: points of all earlier months
    Case("level: exactly the points of level 2", [dec("o1", jan(10)), dec("o2", feb(3))],
         {"o1": p(1, 0, "15"), "o2": p(2, 0, "20")}, rules=LEVELS),
    Case("level: one point short", [dec("o1", jan(10), "99.99"), dec("o2", feb(3))],
         {"o1": p(1, 0, "14.9985"), "o2": p(1, 0, "15")}, rules=LEVELS),
    Case("level: the same month's points do not count", [dec("o1", jan(10)), dec("o2", jan(20))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15")}, rules=LEVELS),
    Case("level: earlier months add up", [dec("o1", jan(10), "50"), dec("o2", feb(10), "50"),
                                          dec("o3", ms("2026-03-02T00:00:00Z"))],
         {"o1": p(1, 0, "7.5"), "o2": p(1, 0, "7.5"), "o3": p(2, 0, "20")}, rules=LEVELS),
    Case("level: a later month's points do not count", [dec("o2", feb(3)), dec("o1", ms("2026-03-02T00:00:00Z"))],
         {"o1": p(2, 0, "20"), "o2": p(1, 0, "15")}, rules=LEVELS),
    Case("level: the bonus earns points", [dec("o1", jan(10), "0", first_order=True), dec("o2", feb(3))],
         {"o1": p(1, 0, "0", "50"), "o2": p(4, 0, "28")}, rules=LEVELS),  # 5000 points
    Case("level: the reference level when higher", [dec("o1", jan(10)), dec("o2", feb(3), base_level=4)],
         {"o1": p(1, 0, "15"), "o2": p(4, 0, "28")}, rules=LEVELS),
    Case("level: never above the rate table", [dec("o1", jan(10), "10000"), dec("o2", feb(3), base_level=9)],
         {"o1": p(1, 0, "1500"), "o2": p(5, 0, "31")}, rules=LEVELS),
    Case("level: rejected orders earn no points", [dec("o1", jan(10), status="rejected"), dec("o2", feb(3))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, rules=LEVELS),
    # the program's time zone: 2026-01-31T17:00Z is February 1st in Shanghai
    Case("zone: a UTC-January order is February in Shanghai (level)",
         [dec("o1", jan(10)), dec("o2", ms("2026-01-31T17:00:00Z"))],
         {"o1": p(1, 0, "15"), "o2": p(2, 0, "20")}, rules=LEVELS, zone="Asia/Shanghai"),
    Case("zone: the same orders in UTC are one month", [dec("o1", jan(10)), dec("o2", ms("2026-01-31T17:00:00Z"))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15")}, rules=LEVELS),
    Case("zone: tier volume of the local month", [dec("o1", ms("2026-01-31T17:00:00Z"), "10000"), dec("o2", feb(3))],
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "16")}, zone="Asia/Shanghai"),
    Case("zone: in UTC that volume was January's", [dec("o1", ms("2026-01-31T17:00:00Z"), "10000"), dec("o2", feb(3))],
         {"o1": p(1, 0, "1500"), "o2": p(2, 0, "20")}),
    # cap per promoter-month
    Case("month cap reached mid-month", [dec(f"o{i}", jan(4 + i)) for i in range(1, 5)],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15"), "o3": p(1, 0, "10", cap="promoter_month"),
          "o4": p(1, 0, "0", cap="promoter_month")}, rules={"cap_per_promoter_month": D(40)}),
    Case("month cap: arrival order does not matter", [dec(f"o{i}", jan(4 + i)) for i in range(4, 0, -1)],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15"), "o3": p(1, 0, "10", cap="promoter_month"),
          "o4": p(1, 0, "0", cap="promoter_month")}, rules={"cap_per_promoter_month": D(40)}),
    Case("month cap: a new month, a new cap", [dec("o1", jan(5)), dec("o2", jan(6)), dec("o3", jan(7)),
                                               dec("o4", feb(1))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15"), "o3": p(1, 0, "10", cap="promoter_month"), "o4": p(1, 0, "15")},
         rules={"cap_per_promoter_month": D(40)}),
    Case("month cap: rejected orders use none of it",
         [dec("o1", jan(5), status="rejected")] + [dec(f"o{i}", jan(4 + i)) for i in range(2, 5)],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15"), "o3": p(1, 0, "15"),
          "o4": p(1, 0, "10", cap="promoter_month")}, rules={"cap_per_promoter_month": D(40)}),
    Case("month cap: the bonus is not commission", [dec("o1", jan(5), first_order=True), dec("o2", jan(6)),
                                                    dec("o3", jan(7))],
         {"o1": p(1, 0, "15", "50"), "o2": p(1, 0, "15"), "o3": p(1, 0, "10", cap="promoter_month")},
         rules={"cap_per_promoter_month": D(40)}),
    # cap per customer
    Case("customer cap, lifetime", [dec("o1", jan(5)), dec("o2", ms("2026-03-05T00:00:00Z"), customer_first_ts=jan(5)),
                                    dec("o3", ms("2026-03-06T00:00:00Z"), acct="a2"),
                                    dec("o4", ms("2026-09-01T00:00:00Z"), customer_first_ts=jan(5))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "5", cap="customer"), "o3": p(1, 0, "15"),
          "o4": p(1, 0, "0", cap="customer")}, rules={"cap_per_customer": D(20)}),
    Case("customer cap, 1-month windows from the first paid order",
         [dec("o1", jan(15)), dec("o2", ms("2026-02-15T11:59:59.999Z"), customer_first_ts=jan(15)),
          dec("o3", feb(15), customer_first_ts=jan(15)), dec("o4", feb(20), customer_first_ts=jan(15))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "5", cap="customer"), "o3": p(1, 0, "15"),
          "o4": p(1, 0, "5", cap="customer")}, rules={"cap_per_customer": D(20), "cap_per_customer_months": 1}),
    Case("caps in order: the last that cut names it", [dec("o1", jan(5)), dec("o2", jan(6), customer_first_ts=jan(5)),
                                                       dec("o3", jan(7), acct="a2")],
         {"o1": p(1, 0, "12", cap="order"), "o2": p(1, 0, "6", cap="promoter_month"),
          "o3": p(1, 0, "0", cap="promoter_month")},
         rules={"cap_per_order": D(12), "cap_per_customer": D(20), "cap_per_promoter_month": D(18)}),
    Case("caps in order: the customer's cut, the month's room above it",
         [dec("o1", jan(5)), dec("o2", jan(6), customer_first_ts=jan(5))],
         {"o1": p(1, 0, "12", cap="order"), "o2": p(1, 0, "8", cap="customer")},
         rules={"cap_per_order": D(12), "cap_per_customer": D(20), "cap_per_promoter_month": D(30)}),
    # renewals
    Case("renewal rates", [dec("o1", jan(5), renewal=True), dec("o2", jan(6))],
         {"o1": p(1, 0, "5"), "o2": p(1, 0, "15")}, rules=RENEWAL_RATES),
    Case("renewal rate + tier", [O1, dec("o2", jan(6), renewal=True)],
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "6")}, rules=RENEWAL_RATES),
    Case("renewal without renewal rates: level rates", [dec("o1", jan(5), renewal=True)], {"o1": p(1, 0, "15")}),
    # customer rules
    Case("recurring months: the last ms earns, N months on does not",
         [dec("o1", ms("2027-01-15T11:59:59.999Z"), customer_first_ts=jan(15)),
          dec("o2", ms("2027-01-15T12:00:00Z"), customer_first_ts=jan(15))],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "0", cap="recurring_months")}, rules={"recurring_months": 12}),
    Case("max orders per customer", [dec(f"o{i}", jan(4 + i), customer_order=i) for i in (1, 2, 3)],
         {"o1": p(1, 0, "15"), "o2": p(1, 0, "15"), "o3": p(1, 0, "0", cap="customer_orders")},
         rules={"max_orders_per_customer": 2}),
    Case("existing customers earn by default", [dec("o1", jan(5), existing_customer=True, first_order=True)],
         {"o1": p(1, 0, "15", "50")}),
    Case("existing customers not earning: no commission, no bonus",
         [dec("o1", jan(5), existing_customer=True, first_order=True)],
         {"o1": p(1, 0, "0", cap="existing_customer")}, rules={"existing_customers_earn": False}),
    Case("a customer rule's order still counts towards volume",
         [dec("o1", jan(5), "10000", existing_customer=True), dec("o2", jan(6))],
         {"o1": p(1, 0, "0", cap="existing_customer"), "o2": p(1, 1, "16")}, rules={"existing_customers_earn": False}),
    Case("a customer rule's order uses no month cap",
         [dec("o1", jan(5), existing_customer=True), dec("o2", jan(6)), dec("o3", jan(7))],
         {"o1": p(1, 0, "0", cap="existing_customer"), "o2": p(1, 0, "15"), "o3": p(1, 0, "5", cap="promoter_month")},
         rules={"existing_customers_earn": False, "cap_per_promoter_month": D(20)}),
    # refunds: before the month closes (as if never), after (only its own commission)
    Case("refund before the close: the rest re-priced", [O1, dec("o2", jan(6)), refunded(O1, JAN_CLOSES - 1)],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, last={"o1", "o2"}),
    Case("refund at the close: the month keeps its prices", [O1, dec("o2", jan(6)), refunded(O1, JAN_CLOSES)],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 1, "16")}, last={"o1"}),
    Case("refund after the month closed in the stage",
         [O1, dec("o2", jan(6)), JAN_CLOSES + 1, refunded(O1, feb(9))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 1, "16")}, last={"o1"}, revisions={"o1": [R1, R2]}),
    Case("refund after the close keeps the next month's level",
         [O1, JAN_CLOSES + 1, refunded(O1, feb(9)), dec("o2", feb(10))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(2, 0, "20")}),
    Case("refund before the close lowers the next month's level",
         [O1, dec("o2", feb(3)), refunded(O1, feb(4))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, last={"o1", "o2"}),
    Case("refund before the close frees the month cap",
         [dec("o1", jan(5)), dec("o2", jan(6)), refunded(dec("o1", jan(5)), jan(20))],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, rules={"cap_per_promoter_month": D(20)},
         last={"o1", "o2"}),
    Case("a watermark at the close does not close the month",
         [O1, dec("o2", jan(6)), JAN_CLOSES, refunded(O1, JAN_CLOSES - 1)],
         {"o1": (1, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, last={"o1", "o2"}),
    # re-attribution: the old promoter forgets the order and re-prices the rest
    Case("a moved order re-prices the rest", [O1, dec("o2", jan(6))] + moved(O1, "P2", 2),
         {"o1": p(1, 0, "1500"), "o2": p(1, 0, "15")}, revisions={"o1": [R1, R2], "o2": [R1, R1 + 1]}),
    Case("moved to the new promoter's volume", [O1, dec("o2", jan(6), p="P2")] + moved(O1, "P2", 2),
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "16")}, revisions={"o1": [R1, R2], "o2": [R1, R1 + 1]}),
    Case("moved to no promoter", [O1, dec("o2", jan(6))] + moved(O1, "", 2),
         {"o1": (0, 0, "0", "0", 0, ""), "o2": p(1, 0, "15")}, revisions={"o1": [R1, R2]}),
    Case("moved away and back", [O1, dec("o2", jan(6))] + moved(O1, "P2", 2) + moved(
        msgspec.structs.replace(O1, promoter_id="P2"), "P1", 3),
         {"o1": p(1, 0, "1500"), "o2": p(1, 1, "16")}, revisions={"o1": [R1, R2, R3], "o2": [R1, R1 + 1, R1 + 2]}),
    Case("removing an order never seen sends nothing", [msgspec.structs.replace(O1, removed=True)], {}, last=set()),
    # a first decision for a month already closed: priced after all of that month's orders
    Case("a late first decision for a closed month",
         [O1, dec("o2", jan(6)), JAN_CLOSES + 1, dec("o0", jan(1))],
         {"o0": p(1, 1, "0", cap="promoter_month"), "o1": p(1, 0, "1500"), "o2": p(1, 1, "10", cap="promoter_month")},
         rules={"cap_per_promoter_month": D(1510)}, last={"o0"}, like_price_all=False),
    Case("a late first decision takes its level from earlier months",
         [dec("o1", jan(5)), dec("o2", feb(5)), ms("2026-03-08T00:00:01Z"), dec("o0", feb(1))],
         {"o0": p(2, 0, "20"), "o1": p(1, 0, "15"), "o2": p(2, 0, "20")}, rules=LEVELS, last={"o0"},
         like_price_all=False),
    # revisions: decision << 16, + 1 per re-pricing
    Case("revisions grow with re-pricing and new decisions",
         [dec("o1", jan(6)), dec("o0", jan(5), "10000"), dec("o1", jan(6), rev=2, status="held"),
          dec("o0", jan(5), "10000", rev=2, status="rejected")],
         {"o0": (1, 0, "0", "0", 0, ""), "o1": p(1, 0, "15")}, revisions={"o1": [R1, R1 + 1, R2, R2 + 1],
                                                                           "o0": [R1, R2]}),
    Case("a redelivered decision is sent again, unchanged", [dec("o1", jan(6)), dec("o1", jan(6))],
         {"o1": p(1, 0, "15")}, revisions={"o1": [R1, R1]}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_stage(case: Case) -> None:
    book = RuleBook([RuleSet(version="v1", **case.rules)], case.zone)
    sent = run(case.steps, book)
    convs = [c for step in sent for c in step]
    final = latest(convs)
    assert {oid: price_of(c) for oid, c in final.items()} == {  # Decimal('15.0000') == Decimal('15')
        oid: (level, tier, D(commission), D(bonus), points, cap)
        for oid, (level, tier, commission, bonus, points, cap) in case.expected.items()}
    for c in final.values():  # the breakdown matches the level and tier it shows
        rates = book.at(c.order_ts).renewal_level_rates if c.renewal and case.rules.get("renewal_level_rates") else (
            book.at(c.order_ts).level_rates)
        assert c.rate == (rates[c.level - 1] + (book.at(0).tiers[c.tier - 1].bonus_rate if c.tier else 0)
                          if c.level else 0)
        assert c.cap_applied == bool(c.cap) and c.decided_at == NOW
    if case.last is not None:
        assert {c.order_id for c in sent[-1]} == case.last
    for oid, revisions in case.revisions.items():
        assert [c.revision for c in convs if c.order_id == oid] == revisions
    if case.like_price_all:
        decisions = [s for s in case.steps if isinstance(s, DecisionRec)]
        assert {c.order_id: content(c) for c in price_all(decisions, book, NOW)} == {
            oid: content(c) for oid, c in final.items()}


def test_price_all_sends_one_conversion_per_order() -> None:
    """An order first decided without a promoter, then re-attributed to one: the final
    answer is one conversion, priced by its promoter."""
    first = dec("o1", jan(5), p="")
    convs = price_all([first, msgspec.structs.replace(first, promoter_id="P1", revision=2)], RuleBook([]), NOW)
    assert [(c.order_id, c.promoter_id, c.revision, c.commission) for c in convs] == [("o1", "P1", R2, D(15))]


# -- closing months: due and advance ---------------------------------------------------
@dataclass
class TimeCase:
    name: str
    steps: Sequence[Step]
    watermark: int
    due_before: int | None  # `due` before advancing to `watermark`
    open_after: set[str]  # orders still open after it
    final_after: set[str]  # orders of closed months kept for a refund
    closed_after: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # month -> volume, commission, points
    due_after: int | None = None
    rules: dict = field(default_factory=dict)
    zone: str = "UTC"
    later: list[RuleSet] = field(default_factory=list)  # rule sets after the first


TIME_CASES = [
    TimeCase("an empty book", [], JAN_CLOSES, None, set(), set()),
    TimeCase("January closes 7 days after it ends", [O1], JAN_CLOSES, JAN_CLOSES, {"o1"}, set(),
             due_after=JAN_CLOSES),
    TimeCase("once the watermark passes the close", [O1], JAN_CLOSES + 1, JAN_CLOSES, set(), {"o1"},
             {202601: (10000, 1500, 150_000)}, due_after=O1.expires),
    TimeCase("a later month stays open", [O1, dec("o2", feb(1))], JAN_CLOSES + 1, JAN_CLOSES, {"o2"}, {"o1"},
             {202601: (10000, 1500, 150_000)}, due_after=ms("2026-03-08T00:00:00Z")),
    TimeCase("months close together", [O1, dec("o2", feb(1))], ms("2026-03-09T00:00:00Z"), JAN_CLOSES, set(),
             {"o1", "o2"}, {202601: (10000, 1500, 150_000), 202602: (100, 20, 2000)}, due_after=O1.expires),
    TimeCase("rejected and early-reversed orders add nothing to the totals",
             [O1, dec("o2", jan(6), status="rejected"), refunded(dec("o3", jan(7)), jan(8))], JAN_CLOSES + 1,
             JAN_CLOSES, set(), {"o1", "o2", "o3"}, {202601: (10000, 1500, 150_000)}, due_after=O1.expires),
    TimeCase("refund horizon over: only the totals stay", [O1], O1.expires + 1, JAN_CLOSES, set(), set(),
             {202601: (10000, 1500, 150_000)}, due_after=None),
    TimeCase("month_close_days is a setting", [O1], ms("2026-02-03T00:00:00Z"), ms("2026-02-03T00:00:00Z"), {"o1"},
             set(), rules={"month_close_days": 2}, due_after=ms("2026-02-03T00:00:00Z")),
    TimeCase("the close in the program's zone", [O1], ms("2026-02-07T16:00:00.001Z"), ms("2026-02-07T16:00:00Z"),
             set(), {"o1"}, {202601: (10000, 1500, 150_000)}, zone="Asia/Shanghai", due_after=O1.expires),
    TimeCase("the close days of the rule set in force at the month's end", [O1], JAN_CLOSES,
             ms("2026-02-04T00:00:00Z"), set(), {"o1"}, {202601: (10000, 1500, 150_000)},
             later=[RuleSet(version="v2", effective_from=jan(20), month_close_days=3)], due_after=O1.expires),
]


@pytest.mark.parametrize("case", TIME_CASES, ids=lambda c: c.name)
def test_due_and_advance(case: TimeCase) -> None:
    book = RuleBook([RuleSet(version="v1", **case.rules), *case.later], case.zone)
    state = PromoterBook()
    run(case.steps, book, {"P1": state})
    assert due(state, book) == case.due_before
    empty = advance(state, case.watermark, book)
    assert (set(state.open), set(state.final)) == (case.open_after, case.final_after)
    assert {m: (t.volume, t.commission, t.points) for m, t in state.closed.items()} == case.closed_after
    assert due(state, book) == case.due_after
    assert empty == (not case.steps)  # a book that ever closed a month keeps its totals for good


# -- properties ------------------------------------------------------------------------
T0 = ms("2026-01-01T00:00:00Z")
TIMES_OF_DAY = [0, 5 * HOUR_MS - 1, 5 * HOUR_MS, 16 * HOUR_MS - 1, 16 * HOUR_MS, DAY_MS - 1]  # local midnights
AMOUNTS = ["0", "19.99", "100", "666.67", "2500", "9999.99", "10000", "45000"]


@dataclass
class Scenario:
    book: RuleBook
    orders: list[list[DecisionRec]]  # per order, its decisions in the order the account join sends them
    arrival: list[int]  # which order's next decision arrives, one per decision
    watermarks: list[int | None]  # before each arrival, a watermark to try (None: no advance)

    def canonical(self) -> list[DecisionRec]:
        return [d for seq in self.orders for d in seq]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    zone = draw(st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York"]))
    common: dict[str, Any] = dict(
        level_points=(2000, 6000, 20_000, 60_000), cap_per_customer=D(draw(st.sampled_from([0, 300, 1000]))),
        cap_per_customer_months=draw(st.sampled_from([0, 1, 2])), recurring_months=draw(st.sampled_from([0, 1, 2])),
        max_orders_per_customer=draw(st.sampled_from([0, 2])), existing_customers_earn=draw(st.booleans()),
        **draw(st.sampled_from([{}, RENEWAL_RATES])))
    v1 = RuleSet(version="v1", cap_per_order=D(draw(st.sampled_from([100, 100_000]))),
                 cap_per_promoter_month=D(draw(st.sampled_from([0, 250, 800]))),
                 month_close_days=draw(st.integers(2, 10)), **common)
    # a second version from a month's start, so that one cap holds for each month
    v2 = RuleSet(version="v2", effective_from=month_start(202603, ZoneInfo(zone)),
                 cap_per_order=D(draw(st.sampled_from([150, 100_000]))),
                 cap_per_promoter_month=D(draw(st.sampled_from([0, 400]))), month_close_days=draw(st.integers(2, 10)),
                 level_rates=tuple(D(r) for r in ("0.10", "0.12", "0.14", "0.16", "0.18")), **common)
    book = RuleBook([v1, v2] if draw(st.booleans()) else [v1], zone)
    first_paid = {a: T0 + draw(st.integers(0, 20)) * DAY_MS for a in ("a1", "a2", "a3")}
    orders = []
    for i in range(draw(st.integers(1, 8))):
        acct = draw(st.sampled_from(sorted(first_paid)))
        ts = first_paid[acct] + draw(st.integers(0, 100)) * DAY_MS + draw(st.sampled_from(TIMES_OF_DAY))
        d = dec(f"o{i}", ts, draw(st.sampled_from(AMOUNTS)), p=draw(st.sampled_from(["P1", "P1", "P2", ""])),
                acct=acct, status=draw(st.sampled_from(["approved", "approved", "held", "rejected"])),
                first_order=draw(st.booleans()), renewal=draw(st.booleans()),
                existing_customer=draw(st.sampled_from([False, False, False, True])),
                customer_order=draw(st.integers(1, 4)),
                base_level=draw(st.integers(1, 3)), customer_first_ts=first_paid[acct], expires=T0 + FAR)
        seq = [d]
        for to in draw(st.lists(st.sampled_from(["P1", "P2", ""]), max_size=2)):
            if to != seq[-1].promoter_id:  # the account join only sends a change
                new = moved(seq[-1], to, seq[-1].revision + 1)
                seq += new if seq[-1].promoter_id else new[1:]  # nothing was sent to a stage for ''
        if seq[-1].status != "rejected" and draw(st.booleans()):
            seq.append(refunded(seq[-1], ts + draw(st.integers(0, 70)) * DAY_MS + draw(st.integers(0, DAY_MS)),
                                seq[-1].revision + 1))
        orders.append(seq)
    arrival = list(draw(st.permutations([i for i, seq in enumerate(orders) for _ in seq])))
    if draw(st.booleans()):  # as a live stream mostly is: by event time, so that months close on the way
        steps = [(i, k) for i, seq in enumerate(orders) for k in range(len(seq))]
        arrival = [i for i, k in sorted(steps, key=lambda ik: (event_time(orders[ik[0]][ik[1]]), ik[1]))]
    # None: no advance; T0 + FAR: as far as legal; else a time in the orders' range
    tries = st.sampled_from([None, T0 + FAR]) | st.integers(0, 130 * DAY_MS).map(lambda x: T0 + x)
    watermarks = draw(st.lists(tries, min_size=len(arrival), max_size=len(arrival)))
    return Scenario(book, orders, arrival, watermarks)


def event_time(d: DecisionRec) -> int:
    """When what this decision reports happened: a refund at its status time, anything else
    (the order, a re-attribution) at the order's time."""
    return d.status_ts if d.status == "reversed" else d.order_ts


def stream(s: Scenario) -> tuple[list[Conversion], dict[str, PromoterBook]]:
    """The decisions in arrival order, with watermarks where legal: the stage's watermark
    follows the account join's, which has passed no event that a decision still to come
    reports. So a watermark is legal up to the event time of every decision not yet sent
    (its month then still open unless it is a refund at or after the close); the tried
    watermark is clamped to that, and never goes back."""
    books: dict[str, PromoterBook] = defaultdict(PromoterBook)
    pending = [iter(seq) for seq in s.orders]
    queue = [next(pending[i]) for i in s.arrival]
    out: list[Conversion] = []
    watermark = 0
    for n, (d, tried) in enumerate(zip(queue, s.watermarks)):
        legal = min(event_time(r) for r in queue[n:])
        if tried is not None and min(tried, legal) > watermark:
            watermark = min(tried, legal)
            for state in books.values():
                advance(state, watermark, s.book)
        out += feed(books, d, s.book)
    for state in books.values():  # every month closes; the refund horizon is far
        advance(state, T0 + 400 * DAY_MS, s.book)
    return out, books


@settings(max_examples=300, deadline=None)
@given(s=scenarios())
def test_any_arrival_order_prices_like_price_all(s: Scenario) -> None:
    """(1) per order the latest conversion equals `price_all` of the same decisions, field
    by field but the revision and decided_at."""
    expected = price_all(s.canonical(), s.book, NOW)
    assert len({c.order_id for c in expected}) == len(expected)  # one conversion per order
    out, _ = stream(s)
    assert {oid: content(c) for oid, c in latest(out).items()} == {c.order_id: content(c) for c in expected}


@settings(max_examples=300, deadline=None)
@given(s=scenarios())
def test_caps_hold_and_revisions_grow(s: Scenario) -> None:
    out, books = stream(s)
    # (2) 0 <= commission <= every cap set, in every conversion sent
    for c in out:
        rs = s.book.at(c.order_ts)
        caps = [rs.cap_per_order] + [cap for cap in (rs.cap_per_customer, rs.cap_per_promoter_month) if cap]
        assert D(0) <= c.commission <= min(caps)
        assert c.bonus in (D(0), rs.new_customer_bonus)
    # (3) per promoter-month, the counted commission stays within the month's cap
    for state in books.values():
        assert not state.open  # every month closed
        for month, totals in state.closed.items():
            cap = s.book.at(month_start(month, s.book.zone)).cap_per_promoter_month
            assert not cap or totals.commission <= cap
        cap = s.book.at(0).cap_per_customer  # the same in every version
        for customer in state.customers.values():
            assert not cap or all(v <= cap for v in customer.windows.values())
    paid: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    for c in latest(out).values():
        if c.promoter_id:
            paid[c.promoter_id, month_of(c.order_ts, s.book.zone)] += c.commission
    for (_, month), total in paid.items():
        cap = s.book.at(month_start(month, s.book.zone)).cap_per_promoter_month
        assert not cap or total <= cap
    # (4) an order's revisions strictly grow; only a re-send of the same content repeats one
    last: dict[str, Conversion] = {}
    for c in out:
        before = last.get(c.order_id)
        if before is not None:
            assert c.revision > before.revision or (c.revision == before.revision and content(c) == content(before))
        last[c.order_id] = c
