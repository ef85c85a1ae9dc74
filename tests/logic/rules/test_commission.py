"""Commission pricing of one order (docs/rules.md "Commission"): level rate (renewal rate
for renewals) + tier bonus, rounding, the customer rules that take the commission away, the
caps per order / customer / promoter-month (and which one cut), bonus, points, payable;
and the inputs the promoter stage computes: level from points, tier from volume, the
customer rule that applies, whether an order counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import pytest

from schemas.records import DecisionRec
from streams.logic.rules.commission import NOT_PRICED, counts, customer_rule, level_for, payable, price, tier_for
from streams.logic.rules.ruleset import RuleSet

D = Decimal
RENEWAL_RATES = tuple(D(r) for r in ("0.05", "0.06", "0.07", "0.08", "0.09"))


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Case:
    name: str
    amount: str
    #: level, rate, tier, commission, bonus, points, cap (after `payable` in `status`)
    expected: tuple[int, str, int, str, str, int, str]
    level: int = 1
    tier: int = 0
    first: bool = False
    renewal: bool = False
    rule: str = ""
    customer_room: str | None = None
    month_room: str | None = None
    status: str = "approved"
    rules: dict = field(default_factory=dict)


CASES = [
    # level rates on the paid amount
    Case("level 1", "100", (1, "0.15", 0, "15", "0", 1500, "")),
    Case("level 2", "100", (2, "0.20", 0, "20", "0", 2000, ""), level=2),
    Case("level 5", "100", (5, "0.31", 0, "31", "0", 3100, ""), level=5),
    # tier bonus rates on top
    Case("tier 1 adds 1%", "100", (1, "0.16", 1, "16", "0", 1600, ""), tier=1),
    Case("tier 2 adds 2%", "100", (3, "0.27", 2, "27", "0", 2700, ""), level=3, tier=2),
    # renewal rates
    Case("renewal without renewal rates: level rates", "100", (2, "0.20", 0, "20", "0", 2000, ""), level=2,
         renewal=True),
    Case("renewal with renewal rates", "100", (2, "0.06", 0, "6", "0", 600, ""), level=2, renewal=True,
         rules={"renewal_level_rates": RENEWAL_RATES}),
    Case("renewal rate + tier bonus", "100", (2, "0.07", 1, "7", "0", 700, ""), level=2, tier=1, renewal=True,
         rules={"renewal_level_rates": RENEWAL_RATES}),
    Case("new order with renewal rates set: level rates", "100", (2, "0.20", 0, "20", "0", 2000, ""), level=2,
         rules={"renewal_level_rates": RENEWAL_RATES}),
    # Decimal exactness, half-even to 4 places
    Case("cents stay exact", "19.99", (1, "0.15", 0, "2.9985", "0", 299, "")),
    Case("4 places, rounded", "33.3333", (4, "0.28", 0, "9.3333", "0", 933, ""), level=4),
    Case("half to even: 0.00015 -> 0.0002", "0.0006", (3, "0.25", 0, "0.0002", "0", 0, ""), level=3),
    Case("half to even: 0.00005 -> 0.0000", "0.0002", (3, "0.25", 0, "0", "0", 0, ""), level=3),
    Case("zero amount", "0", (1, "0.15", 0, "0", "0", 0, "")),
    Case("negative amount earns nothing", "-10", (1, "0.15", 0, "0", "0", 0, "")),
    # cap per order
    Case("order cap hit", "1000000", (1, "0.15", 0, "100000", "0", 10_000_000, "order")),
    Case("exactly the order cap is not cut", "500000", (2, "0.20", 0, "100000", "0", 10_000_000, ""), level=2),
    Case("just over the order cap", "500000.01", (2, "0.20", 0, "100000", "0", 10_000_000, "order"), level=2),
    Case("order cap is a setting", "100", (1, "0.15", 0, "10", "0", 1000, "order"), rules={"cap_per_order": D(10)}),
    Case("rounded before capping", "66.6666", (1, "0.15", 0, "10", "0", 1000, ""), rules={"cap_per_order": D(10)}),
    # cap per customer: what the customer may still earn
    Case("customer room above the commission", "100", (1, "0.15", 0, "15", "0", 1500, ""), customer_room="15.0001"),
    Case("customer room exactly the commission", "100", (1, "0.15", 0, "15", "0", 1500, ""), customer_room="15"),
    Case("customer room cuts", "100", (1, "0.15", 0, "4.5", "0", 450, "customer"), customer_room="4.5"),
    Case("customer room used up", "100", (1, "0.15", 0, "0", "0", 0, "customer"), customer_room="0"),
    Case("customer room overdrawn: 0, never negative", "100", (1, "0.15", 0, "0", "0", 0, "customer"),
         customer_room="-3"),
    # cap per promoter-month
    Case("month room cuts", "100", (1, "0.15", 0, "10", "0", 1000, "promoter_month"), month_room="10"),
    Case("month room exactly the commission", "100", (1, "0.15", 0, "15", "0", 1500, ""), month_room="15"),
    Case("month room used up", "100", (1, "0.15", 0, "0", "0", 0, "promoter_month"), month_room="0"),
    Case("month room overdrawn: 0", "100", (1, "0.15", 0, "0", "0", 0, "promoter_month"), month_room="-1"),
    # caps in order: per order, per customer, per promoter-month; `cap` is the last that cut
    Case("order then customer", "100", (1, "0.15", 0, "8", "0", 800, "customer"), customer_room="8",
         rules={"cap_per_order": D(12)}),
    Case("order cut, customer room above it", "100", (1, "0.15", 0, "12", "0", 1200, "order"), customer_room="13",
         rules={"cap_per_order": D(12)}),
    Case("all three cut: the month names it", "100", (1, "0.15", 0, "6", "0", 600, "promoter_month"),
         customer_room="8", month_room="6", rules={"cap_per_order": D(12)}),
    Case("customer cut, month room above it", "100", (1, "0.15", 0, "8", "0", 800, "customer"),
         customer_room="8", month_room="9"),
    Case("month room below the customer's", "100", (1, "0.15", 0, "5", "0", 500, "promoter_month"),
         customer_room="8", month_room="5"),
    # customer rules take commission and bonus away and name themselves
    Case("existing customer", "100", (1, "0.15", 0, "0", "0", 0, "existing_customer"), first=True,
         rule="existing_customer"),
    Case("recurring period over", "100", (2, "0.21", 1, "0", "0", 0, "recurring_months"), level=2, tier=1,
         rule="recurring_months"),
    Case("too many orders", "100", (1, "0.15", 0, "0", "0", 0, "customer_orders"), rule="customer_orders"),
    Case("a customer rule beats the caps", "1000000", (1, "0.15", 0, "0", "0", 0, "customer_orders"),
         rule="customer_orders", customer_room="1", month_room="1"),
    # new-customer bonus and points
    Case("bonus on the first order", "100", (1, "0.15", 0, "15", "50", 6500, ""), first=True),
    Case("bonus on top of a capped commission", "1000000", (1, "0.15", 0, "100000", "50", 10_005_000, "order"),
         first=True),
    Case("bonus is not cut by the month cap", "100", (1, "0.15", 0, "0", "50", 5000, "promoter_month"),
         first=True, month_room="0"),
    Case("points floor (commission + bonus) * 100", "19.99", (1, "0.15", 0, "2.9985", "50", 5299, ""), first=True),
    Case("points per unit is a setting", "19.99", (1, "0.15", 0, "2.9985", "0", 2, ""),
         rules={"points_per_unit": 1}),
    Case("bonus is a setting", "100", (1, "0.15", 0, "15", "20", 3500, ""), first=True,
         rules={"new_customer_bonus": D(20)}),
    # payable by status
    Case("held keeps its commission", "100", (1, "0.15", 0, "15", "50", 6500, ""), first=True, status="held"),
    Case("rejected pays nothing, breakdown kept", "100", (2, "0.21", 1, "0", "0", 0, ""), level=2, tier=1,
         first=True, status="rejected"),
    Case("reversed pays nothing, cap kept", "1000000", (1, "0.15", 0, "0", "0", 0, "order"), first=True,
         status="reversed"),
]


def room(value: str | None) -> Decimal | None:
    return None if value is None else D(value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_price(case: Case) -> None:
    rules = msgspec.structs.replace(RuleSet(), **case.rules)
    p = payable(price(D(case.amount), case.level, case.tier, case.first, case.renewal, rules, rule=case.rule,
                      customer_room=room(case.customer_room), month_room=room(case.month_room)), case.status)
    level, rate, tier, commission, bonus, points, cap = case.expected
    assert (p.level, p.rate, p.tier, p.commission, p.bonus, p.points, p.cap) == (
        level, D(rate), tier, D(commission), D(bonus), points, cap)
    assert p.cap_applied == bool(cap)
    assert all(isinstance(v, Decimal) for v in (p.rate, p.commission, p.bonus))
    exponent = p.commission.as_tuple().exponent
    assert isinstance(exponent, int) and -exponent <= 4  # Decimal(18, 4): never more than 4 places


def test_not_priced_is_all_zero() -> None:
    p = NOT_PRICED
    assert (p.level, p.rate, p.tier, p.commission, p.bonus, p.points, p.cap, p.cap_applied) == (
        0, 0, 0, 0, 0, 0, "", False)


# -- level from the points of earlier months, tier from the month's volume ------------
LEVEL_RULES = {"level_points": (1000, 5000, 20_000, 100_000)}


@dataclass
class LevelCase:
    name: str
    base_level: int
    points_before: int
    expected: int
    rules: dict = field(default_factory=lambda: dict(LEVEL_RULES))


LEVEL_CASES = [
    LevelCase("no points: level 1", 1, 0, 1),
    LevelCase("one point short of level 2", 1, 999, 1),
    LevelCase("exactly level 2", 1, 1000, 2),
    LevelCase("exactly level 3", 1, 5000, 3),
    LevelCase("exactly level 5", 1, 100_000, 5),
    LevelCase("never above the rate table", 1, 10**12, 5),
    LevelCase("reference level above earned", 4, 1000, 4),
    LevelCase("earned above reference level", 2, 20_000, 4),
    LevelCase("reference level above the table: the last", 9, 0, 5),
    LevelCase("reference level 0 counts as 1", 0, 0, 1),
    LevelCase("shorter rate table caps the level", 1, 10**6, 3,
              rules=LEVEL_RULES | {"level_rates": (D("0.1"), D("0.2"), D("0.3"))}),
    LevelCase("default thresholds: 100 000 points", 1, 100_000, 2, rules={}),
    LevelCase("default thresholds: 99 999 points", 1, 99_999, 1, rules={}),
]


@pytest.mark.parametrize("case", LEVEL_CASES, ids=lambda c: c.name)
def test_level_for(case: LevelCase) -> None:
    assert level_for(case.base_level, case.points_before, msgspec.structs.replace(RuleSet(), **case.rules)) == (
        case.expected)


@pytest.mark.parametrize(("volume_before", "expected"), [
    ("0", 0), ("9999.9999", 0), ("10000", 1), ("49999.99", 1), ("50000", 2), ("1000000000", 2), ("-5", 0),
])
def test_tier_for(volume_before: str, expected: int) -> None:
    assert tier_for(D(volume_before), RuleSet()) == expected


# -- which customer rule takes the commission away -------------------------------------
FIRST = "2026-01-31T12:00:00Z"  # the customer's first paid order


def decision(**fields: object) -> DecisionRec:
    base: dict = dict(
        order_id="o1", revision=1, status="approved", reasons=[], promoter_id="P1", tracking_code="T1",
        campaign="", account_id="a1", visitor_id="v1", click_event_id="c1", click_ts=0, signup_event_id="s1",
        signup_ts=0, order_event_id="e1", order_ts=ms(FIRST), cart_id="", product="db-pro", category="",
        amount=D(100), discount=D(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=0, customer_first_ts=ms(FIRST))
    base.update(fields)
    return DecisionRec(**base)


@dataclass
class RuleCase:
    name: str
    decision: dict  # fields of the decision; times as ISO
    rules: dict
    expected: str
    zone: str = "UTC"


RULE_CASES = [
    RuleCase("defaults: no rule", {"existing_customer": True, "customer_order": 99, "order_ts": "2036-01-01T00:00:00Z"},
             {}, ""),
    RuleCase("existing customers earn by default", {"existing_customer": True}, {}, ""),
    RuleCase("existing customer, not earning", {"existing_customer": True}, {"existing_customers_earn": False},
             "existing_customer"),
    RuleCase("new customer, existing ones not earning", {}, {"existing_customers_earn": False}, ""),
    RuleCase("order within the limit", {"customer_order": 2}, {"max_orders_per_customer": 2}, ""),
    RuleCase("order over the limit", {"customer_order": 3}, {"max_orders_per_customer": 2}, "customer_orders"),
    RuleCase("no limit", {"customer_order": 300}, {"max_orders_per_customer": 0}, ""),
    RuleCase("recurring: 1 ms before N months", {"order_ts": "2026-02-28T11:59:59.999Z"}, {"recurring_months": 1},
             ""),  # Jan 31 + 1 month = Feb 28 (clamped)
    RuleCase("recurring: exactly N months", {"order_ts": "2026-02-28T12:00:00Z"}, {"recurring_months": 1},
             "recurring_months"),
    RuleCase("recurring: 12 months, just before", {"order_ts": "2027-01-31T11:59:59.999Z"},
             {"recurring_months": 12}, ""),
    RuleCase("recurring: 12 months, at", {"order_ts": "2027-01-31T12:00:00Z"}, {"recurring_months": 12},
             "recurring_months"),
    # first paid order Jan 30 20:00Z: + 1 month is Feb 28 20:00Z in UTC, but local Jan 31 04:00
    # + 1 month = local Feb 28 04:00 = Feb 27 20:00Z in Shanghai
    RuleCase("recurring months in UTC", {"customer_first_ts": "2026-01-30T20:00:00Z",
                                         "order_ts": "2026-02-28T00:00:00Z"}, {"recurring_months": 1}, ""),
    RuleCase("recurring months in the program's zone", {"customer_first_ts": "2026-01-30T20:00:00Z",
                                                        "order_ts": "2026-02-28T00:00:00Z"},
             {"recurring_months": 1}, "recurring_months", zone="Asia/Shanghai"),
    RuleCase("existing customer named first", {"existing_customer": True, "customer_order": 5,
                                               "order_ts": "2030-01-01T00:00:00Z"},
             {"existing_customers_earn": False, "max_orders_per_customer": 1, "recurring_months": 1},
             "existing_customer"),
    RuleCase("orders named before recurring", {"customer_order": 5, "order_ts": "2030-01-01T00:00:00Z"},
             {"max_orders_per_customer": 1, "recurring_months": 1}, "customer_orders"),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.name)
def test_customer_rule(case: RuleCase) -> None:
    fields = {k: ms(v) if k.endswith("_ts") else v for k, v in case.decision.items()}
    rules = msgspec.structs.replace(RuleSet(), **case.rules)
    assert customer_rule(decision(**fields), rules, ZoneInfo(case.zone)) == case.expected


CLOSE = ms("2026-02-08T00:00:00Z")  # January closes 7 days after it ends


@pytest.mark.parametrize(("status", "status_ts", "expected"), [
    ("approved", 0, True),
    ("held", 0, True),
    ("rejected", 0, False),
    ("rejected", CLOSE + 1, False),  # rejected never counts, whenever
    ("reversed", CLOSE - 1, False),  # reversed before the month closed: as if it never was
    ("reversed", CLOSE, True),  # at or after the close: the month's prices are final
    ("reversed", CLOSE + 1, True),
])
def test_counts(status: str, status_ts: int, expected: bool) -> None:
    assert counts(decision(status=status, status_ts=status_ts), CLOSE) is expected
