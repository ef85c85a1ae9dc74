"""Decisions of the account join (conversions.decide_all) with rule versions, reference lookups
and live ledger values: what each conversion records, revision by revision."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from schemas.records import AttributionRec, ClickRef, Conversion, OrderRec, SignupIdent
from streams.logic import conversions as conv
from streams.logic.rules.commission import counted_amount
from streams.logic.rules.ruleset import RuleBook, RuleSet
from streams.logic.rules.windows import month_of

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
    "A": conv.PromoterRef(promoter_id="p-alice"),
    "B": conv.PromoterRef(promoter_id="p-bob", level=3),
    # personal at every order here, enterprise from T0 + 30 days
    "E": conv.PromoterRef(promoter_id="p-eve", enterprise_since=T0 + 30 * DAY),
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
    expected: dict[str, dict]  # order_id -> fields of its last emitted conversion
    last_step: set[str] | None = None  # order ids the last step emits, if checked
    live: dict[str, conv.Live] = field(default_factory=dict)  # order_id -> live ledger values


CASES = [
    Case("rule version change between two orders of one account",
         [attribution("A"), order("o1", T0 + DAY), order("o2", V2_FROM + DAY)],
         {"o1": dict(revision=1, rule_version="v1", rate=D("0.15"), commission=D(15), bonus=D(50), first_order=True),
          "o2": dict(revision=1, rule_version="v2", rate=D("0.18"), commission=D(18), bonus=D(0), first_order=False)}),
    Case("an order at the new version's start takes it",
         [attribution("A"), order("o1", V2_FROM)],
         {"o1": dict(revision=1, rule_version="v2", rate=D("0.18"), commission=D(18))}),
    Case("multi-order cart: each order priced and capped on its own, bonus on the first",
         [attribution("A"), order("o2", T0 + DAY, amount="1000000", cart="k"),
          order("o3", T0 + DAY, amount="10", cart="k"), order("o1", T0 + DAY, amount="700000", cart="k")],
         {"o1": dict(revision=1, status="held", commission=D(100_000), cap_applied=True, bonus=D(50),
                     first_order=True, points=10_005_000),
          "o2": dict(revision=2, status="held", commission=D(100_000), cap_applied=True, bonus=D(0),
                     first_order=False, points=10_000_000),
          "o3": dict(revision=1, status="approved", commission=D("1.5"), cap_applied=False, bonus=D(0),
                     first_order=False, points=150)},
         last_step={"o1", "o2"}),
    Case("refund after approval",
         [attribution("A"), order("o1", T0 + DAY), order("o1", T0 + 2 * DAY, "refunded")],
         {"o1": dict(revision=2, status="reversed", reasons=["refunded"], commission=D(0), bonus=D(0), points=0,
                     rate=D("0.15"), order_status="refunded", amount=D(100))},
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
         [attribution("A"), order("o1", T0 + DAY), order("o2", T0 + 2 * DAY), order("o3", T0 + 3 * DAY)],
         {"o1": dict(tier=0, rate=D("0.15"), commission=D(15)),
          "o2": dict(tier=1, rate=D("0.16"), commission=D(16)),
          "o3": dict(tier=2, rate=D("0.17"), commission=D(17))},
         live={"o1": conv.Live(volume_before=D("9999.99")), "o2": conv.Live(volume_before=D(10_000)),
               "o3": conv.Live(volume_before=D(50_000))}),
    Case("level from reference data, raised by earlier months' points",
         [attribution("B"), order("o1", T0 + DAY), order("o2", T0 + 2 * DAY)],
         {"o1": dict(level=3, rate=D("0.25")), "o2": dict(level=4, rate=D("0.28"))},
         live={"o2": conv.Live(points_before=2_000_000)}),
    Case("first order moves when an earlier paid order arrives later",
         [attribution("A"), order("o2", T0 + 2 * DAY), order("o1", T0 + DAY)],
         {"o1": dict(revision=1, first_order=True, bonus=D(50), points=6500),
          "o2": dict(revision=2, first_order=False, bonus=D(0), points=1500)},
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
    pytest.param(Case("an earlier signup arriving late keeps orders made between the two signups",
                      [attribution("A", signup_ts=T0 + 5 * DAY, eid="s2"), order("o1", T0 + 2 * DAY),
                       attribution("A", signup_ts=T0, eid="s1")],
                      {"o1": dict(revision=1, status="approved", signup_event_id="s1")}),
                 ),
]


def run(case: Case) -> tuple[dict[str, Conversion], set[str]]:
    """Feed the steps through the account join's pure steps; last conversion per order, and
    the order ids the last step emitted."""
    enterprise: dict[str, int] = {}

    def promoter(code: str, ts: int) -> conv.PromoterRef | None:
        p = PROMOTERS.get(code)
        if p is not None and code in enterprise and enterprise[code] > ts:
            p = conv.PromoterRef(promoter_id=p.promoter_id, level=p.level, enterprise_since=enterprise[code])
        return p

    ctx = conv.Context(RULES, BOOK, promoter, exclusion)
    state, last, emitted = conv.AccountState(), {}, set()
    for step in case.steps:
        if isinstance(step, TurnsEnterprise):
            enterprise[step.code] = step.since
            touched = set(state.orders)
        elif isinstance(step, OrderRec):
            touched = conv.add_order(state, step)
        else:
            touched = conv.add_attribution(state, step)
        out = conv.decide_all(state, touched, ctx, lambda oid: case.live.get(oid, conv.Live()), now_ms=1)
        conv.prune(state, RULES)
        emitted = {c.order_id for c in out}
        last.update((c.order_id, c) for c in out)
    return last, emitted


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decisions(case: Case) -> None:
    last, emitted = run(case)
    got = {oid: {f: getattr(c, f) for f in case.expected.get(oid, {})} for oid, c in last.items()}
    assert got == case.expected
    if case.last_step is not None:
        assert emitted == case.last_step


def test_monthly_volume_counts_only_earning_orders() -> None:
    """What feeds Live.volume_before: held and approved amounts, in the order's UTC month."""
    state = conv.AccountState()
    conv.add_attribution(state, attribution("A"))
    for o in (order("o1", T0 + DAY, amount="70"), order("o2", T0 + DAY, amount="60000"),
              order("o3", T0 + DAY, amount="5"), order("o3", T0 + 2 * DAY, "refunded", amount="5")):
        conv.add_order(state, o)
    ctx = conv.Context(RULES, BOOK, PROMOTERS.get, exclusion)
    out = conv.decide_all(state, set(state.orders), ctx, lambda oid: conv.Live(), now_ms=1)
    assert {c.order_id: (c.status, counted_amount(c)) for c in out} == {
        "o1": ("approved", D(70)), "o2": ("held", D(60000)), "o3": ("reversed", D(0))}
    assert (month_of(T0 - 1), month_of(T0), month_of(T0 + 31 * DAY - 1), month_of(T0 + 31 * DAY)) == (
        202512, 202601, 202601, 202602)
