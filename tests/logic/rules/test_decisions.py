"""Decisions of the account join (conversions.decide_all) with rule versions and reference
lookups, priced as the promoter stage ends up pricing them (`pricing.price_all` over every
decision sent): what each conversion records, revision by revision."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from schemas.records import AttributionRec, ClickRef, Conversion, DecisionRec, OrderRec, SignupIdent
from streams.logic import conversions as conv
from streams.logic import pricing
from streams.logic.rules.checks import PromoterRef
from streams.logic.rules.ruleset import RuleBook, RuleSet

D = Decimal
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
V2_FROM = T0 + 10 * DAY
RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
BOOK = RuleBook([
    RuleSet(version="v2", effective_from=V2_FROM,
            level_rates=tuple(D(r) for r in ("0.18", "0.22", "0.26", "0.29", "0.32"))),
    RuleSet(version="v1", effective_from=T0),
])
PROMOTERS = {
    "A": PromoterRef(promoter_id="p-alice"),
    "B": PromoterRef(promoter_id="p-bob", level=3),
    # personal at every order here, enterprise from T0 + 30 days
    "E": PromoterRef(promoter_id="p-eve", enterprise_since=T0 + 30 * DAY),
}


def exclusion(account_id: str, email_domain: str | None, ts: int) -> str | None:
    return "direct_sales" if email_domain == "bigcorp.example" and ts >= T0 else None


@dataclass(frozen=True)
class TurnsEnterprise:
    """A later enterprise version of the promoter on `code` arrives; the account is re-decided."""

    code: str
    since: int


def attribution(code: str, signup_ts: int = T0, eid: str = "s1", domain: str | None = None) -> AttributionRec:
    click = ClickRef("c-" + code, signup_ts - 3_600_000, code)
    return AttributionRec("acc", eid, signup_ts, "v", click, True, SignupIdent(email_domain=domain))


def order(oid: str, ts: int, status: str = "paid", amount: str = "100", discount: str = "0",
          cart: str | None = None) -> OrderRec:
    return OrderRec(f"{oid}-{status}", ts, oid, "acc", "db-pro", D(amount), "USD", status, D(discount),
                    cart_id=cart)


@dataclass
class Case:
    name: str
    steps: list  # AttributionRec | OrderRec | TurnsEnterprise, in arrival order
    #: order_id -> fields of its conversion: the price (PRICE_FIELDS) as the promoter stage
    #: ends up with it, the rest (revision: of the decision) of its last decision
    expected: dict[str, dict]
    last_step: set[str] | None = None  # order ids the last step decides, if checked


FEB = T0 + 31 * DAY  # 2026-02-01T00:00:00Z
PRICE_FIELDS = {"level", "rate", "tier", "commission", "bonus", "points", "cap_applied", "cap"}

CASES = [
    Case("rule version change between two orders of one account",
         [attribution("A"), order("o1", T0 + DAY), order("o2", V2_FROM + DAY)],
         {"o1": dict(revision=1, rule_version="v1", rate=D("0.15"), commission=D(15), bonus=D(50), first_order=True),
          "o2": dict(revision=1, rule_version="v2", rate=D("0.18"), commission=D(18), bonus=D(0), first_order=False)}),
    Case("an order at the new version's start takes it",
         [attribution("A"), order("o1", V2_FROM)],
         {"o1": dict(revision=1, rule_version="v2", rate=D("0.18"), commission=D(18))}),
    Case("multi-order cart: each order capped on its own, in (time, order id) order, bonus on the first",
         [attribution("A"), order("o2", T0 + DAY, amount="1000000", cart="k"),
          order("o3", T0 + DAY, amount="10", cart="k"), order("o1", T0 + DAY, amount="700000", cart="k")],
         {"o1": dict(revision=1, status="held", tier=0, commission=D(100_000), cap_applied=True, cap="order",
                     bonus=D(50), first_order=True, points=10_005_000),
          "o2": dict(revision=2, status="held", tier=2, commission=D(100_000), cap_applied=True, cap="order",
                     bonus=D(0), first_order=False, points=10_000_000),
          # its rank among the customer's orders changed: a new decision
          "o3": dict(revision=2, status="approved", tier=2, commission=D("1.7"), cap_applied=False, cap="",
                     bonus=D(0), first_order=False, customer_order=3, points=170)},
         last_step={"o1", "o2", "o3"}),
    Case("refund after approval",
         [attribution("A"), order("o1", T0 + DAY), order("o1", T0 + 2 * DAY, "refunded")],
         {"o1": dict(revision=2, status="reversed", reasons=["refunded"], commission=D(0), bonus=D(0), points=0,
                     rate=D("0.15"), order_status="refunded", amount=D(100), status_ts=T0 + 2 * DAY)},
         last_step={"o1"}),
    Case("redelivered refund is re-sent unchanged",
         [attribution("A"), order("o1", T0 + DAY), order("o1", T0 + 2 * DAY, "refunded"),
          order("o1", T0 + 2 * DAY, "refunded")],
         {"o1": dict(revision=2, status="reversed", reasons=["refunded"])}, last_step={"o1"}),
    Case("promoter enterprise later than the order: reversed at once",
         [attribution("E"), order("o1", T0 + DAY)],
         {"o1": dict(revision=1, status="reversed", reasons=["promoter_became_enterprise"], promoter_id="p-eve",
                     commission=D(0), bonus=D(0), points=0)}),
    Case("promoter turns enterprise after approval: retroactive reversal",
         [attribution("A"), order("o1", T0 + DAY), order("o2", T0 + 2 * DAY), TurnsEnterprise("A", T0 + 5 * DAY)],
         {"o1": dict(revision=2, status="reversed", reasons=["promoter_became_enterprise"], commission=D(0)),
          "o2": dict(revision=2, status="reversed", reasons=["promoter_became_enterprise"], commission=D(0))},
         last_step={"o1", "o2"}),
    Case("tier from the promoter's earlier volume this month",
         [attribution("A"), order("o0", T0 + DAY, amount="9999.99"), order("o1", T0 + 2 * DAY, amount="0.01"),
          order("o2", T0 + 3 * DAY, amount="40000"), order("o3", T0 + 4 * DAY)],
         {"o0": dict(tier=0, rate=D("0.15")),
          "o1": dict(tier=0, rate=D("0.15")),  # 9,999.99 before it
          "o2": dict(tier=1, rate=D("0.16"), commission=D(6400)),  # 10,000 before it
          "o3": dict(tier=2, rate=D("0.17"), commission=D(17))}),  # 50,000 before it
    Case("tier volume arriving in any order",
         [attribution("A"), order("o3", T0 + 4 * DAY), order("o2", T0 + 3 * DAY, amount="40000"),
          order("o0", T0 + DAY, amount="10000")],
         {"o0": dict(tier=0), "o2": dict(tier=1), "o3": dict(tier=2, rate=D("0.17"))}),
    Case("a new month starts from zero volume",
         [attribution("A"), order("o1", FEB - 1, amount="20000"), order("o2", FEB)],
         # January's points (305,000) raise February's level; v2 rates from V2_FROM
         {"o1": dict(tier=0), "o2": dict(tier=0, level=2, rate=D("0.22"))}),
    Case("held orders count towards the tier",
         [attribution("A"), order("o1", T0 + DAY, amount="60000"), order("o2", T0 + 2 * DAY)],
         {"o1": dict(status="held"), "o2": dict(tier=2, rate=D("0.17"))}),
    Case("orders reversed within the month add no volume",
         [attribution("A"), order("o1", T0 + DAY, amount="20000"), order("o1", T0 + 2 * DAY, "refunded"),
          order("o2", T0 + 3 * DAY)],
         {"o1": dict(status="reversed", commission=D(0)), "o2": dict(tier=0, rate=D("0.15"))}),
    Case("rejected orders add no volume",
         [attribution("A", domain="bigcorp.example"), order("o1", T0 + DAY, amount="20000"),
          order("o2", T0 + 2 * DAY)],
         {"o1": dict(status="rejected"), "o2": dict(status="rejected", tier=0, commission=D(0))}),
    Case("level from reference data, raised by earlier months' points",
         [attribution("B"), order("o1", T0 + DAY, amount="80000"), order("o2", FEB + DAY)],
         {"o1": dict(level=3, rate=D("0.25"), points=2_005_000, base_level=3),  # held: it counts
          "o2": dict(level=4, rate=D("0.29"), base_level=3)}),  # v2 rates
    Case("points of the same month do not raise the level",
         [attribution("B"), order("o1", T0 + DAY, amount="80000"), order("o2", T0 + 2 * DAY)],
         {"o1": dict(level=3), "o2": dict(level=3, tier=2, rate=D("0.27"))}),
    Case("first order moves when an earlier paid order arrives later",
         [attribution("A"), order("o2", T0 + 2 * DAY), order("o1", T0 + DAY)],
         {"o1": dict(revision=1, first_order=True, customer_order=1, bonus=D(50), points=6500),
          "o2": dict(revision=2, first_order=False, customer_order=2, bonus=D(0), points=1500)},
         last_step={"o1", "o2"}),
    Case("held for high value keeps its commission",
         [attribution("A"), order("o1", T0 + DAY, amount="60000")],
         {"o1": dict(revision=1, status="held", reasons=["high_value_review"], commission=D(9000), bonus=D(50),
                     points=905_000)}),
    Case("commission on the amount paid after the discount",
         [attribution("A"), order("o1", T0 + DAY, amount="90", discount="10")],
         {"o1": dict(amount=D(90), discount=D(10), commission=D("13.5"))}),
    Case("customer owned by direct sales via the signup's email domain",
         [attribution("A", domain="bigcorp.example"), order("o1", T0 + DAY)],
         {"o1": dict(status="rejected", reasons=["customer_owned_by_direct_sales"], commission=D(0))}),
    Case("no promoter: rejected and not priced",
         [attribution("Z"), order("o1", T0 + DAY)],
         {"o1": dict(revision=1, status="rejected", reasons=["unknown_promoter"], promoter_id="", level=0,
                     rate=D(0), commission=D(0), bonus=D(0), points=0)}),
    Case("an earlier signup arriving late keeps orders made between the two signups",
         [attribution("A", signup_ts=T0 + 5 * DAY, eid="s2"), order("o1", T0 + 2 * DAY),
          attribution("A", signup_ts=T0, eid="s1")],
         {"o1": dict(revision=1, status="approved", signup_event_id="s1")}),
]


def run(case: Case) -> tuple[dict[str, DecisionRec], set[str], dict[str, Conversion]]:
    """Feed the steps through the account join's pure steps: the last decision per order,
    the order ids the last step decided, and the conversions the promoter stage ends with."""
    enterprise: dict[str, int] = {}

    def promoter(code: str, ts: int) -> PromoterRef | None:
        p = PROMOTERS.get(code)
        if p is not None and code in enterprise and enterprise[code] > ts:
            p = PromoterRef(promoter_id=p.promoter_id, level=p.level, enterprise_since=enterprise[code])
        return p

    ctx = conv.Context(RULES, BOOK, promoter, exclusion)
    state, last = conv.AccountState(), dict[str, DecisionRec]()
    emitted: set[str] = set()
    sent: list[DecisionRec] = []
    for step in case.steps:
        if isinstance(step, TurnsEnterprise):
            enterprise[step.code] = step.since
            touched = set(state.orders)
        elif isinstance(step, OrderRec):
            touched = conv.add_order(state, step)
        else:
            touched = conv.add_attribution(state, step)
        out = conv.decide_all(state, touched, ctx, now_ms=1)
        sent += conv.reroute(state, out) + out
        conv.prune(state, RULES)
        emitted = {c.order_id for c in out}
        last.update((c.order_id, c) for c in out)
    return last, emitted, {c.order_id: c for c in pricing.price_all(sent, BOOK)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decisions(case: Case) -> None:
    last, emitted, priced = run(case)
    got = {oid: {f: getattr(priced[oid] if f in PRICE_FIELDS else d, f) for f in case.expected.get(oid, {})}
           for oid, d in last.items()}
    assert got == case.expected
    assert set(priced) == set(last)
    if case.last_step is not None:
        assert emitted == case.last_step


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decisions_carry_no_price(case: Case) -> None:
    """Pricing is the promoter stage's: a decision leaves every price field at its default."""
    last, _, _ = run(case)
    blank = DecisionRec(order_id="", revision=0, status="", reasons=[], promoter_id="", tracking_code="",
                        campaign="", account_id="", visitor_id="", click_event_id="", click_ts=0,
                        signup_event_id="", signup_ts=0, order_event_id="", order_ts=0, cart_id="", product="",
                        category="", amount=D(0), discount=D(0), currency="", order_status="", renewal=False,
                        attribution_model="", attribution_final=False, decided_at=0)
    assert all(getattr(d, f) == getattr(blank, f) for d in last.values() for f in PRICE_FIELDS)
