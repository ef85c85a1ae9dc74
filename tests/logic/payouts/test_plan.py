"""The payout planner through the lifecycle of conversions: one table of cases, each a few runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from streams.logic.payouts.plan import POINTS, Entitlement, Plan
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.logic.payouts.books import DAY, T0, Books, ent, waited

D = Decimal
DEFAULT = RuleBook([RuleSet(version="v1", effective_from=T0)])
INSTALMENTS = RuleBook([RuleSet(version="v1", effective_from=T0),
                        RuleSet(version="inst", effective_from=T0 - DAY, instalment_above=D(1000))])
POINTS_BOOK = RuleBook([RuleSet(version="v1", effective_from=T0, points_cashable=True, minimum_payout=D(0))])
VERSIONS = RuleBook([RuleSet(version="v1", effective_from=T0),
                     RuleSet(version="v2", effective_from=T0 + 35 * DAY, minimum_payout=D(10),
                             instalment_above=D(100), instalment_months=2)])
MINIMUMS = RuleBook([RuleSet(version="v1", effective_from=T0, minimum_payouts={"JPY": D(10_000), "KWD": D(30)}),
                     RuleSet(version="v2", effective_from=T0 + 35 * DAY, minimum_payout=D(50),
                             minimum_payouts={"JPY": D(5_000)})])


@dataclass
class Run:
    day: float  # the cut-off, days after T0
    ents: list[Entitlement]  # the conversions as `conversions_current` shows them then
    lines: list[str] = field(default_factory=list)  # "promoter currency kind order amount [part/parts] [Npt]"
    payouts: list[str] = field(default_factory=list)  # "promoter currency amount in=.. out=.. [pts=N]"
    carried: list[str] = field(default_factory=list)  # "promoter currency balance"
    outcome: str = "paid"  # what becomes of the batch: paid | pending
    fail: int | None = None  # a pending batch (index) that fails before this run
    confirm: int | None = None  # a pending batch (index) that is paid before this run


@dataclass
class Case:
    name: str
    runs: list[Run]
    book: RuleBook = DEFAULT


def fmt(d: Decimal) -> str:
    return f"{d.normalize():f}"


def show(plan: Plan) -> tuple[list[str], list[str], list[str]]:
    lines = [f"{ln.promoter_id} {ln.currency} {ln.kind} {ln.order_id or '-'} {fmt(ln.amount)}"
             + (f" {ln.part}/{ln.parts}" if ln.parts > 1 else "") + (f" {ln.points}pt" if ln.kind == POINTS else "")
             for ln in plan.lines]
    payouts = [f"{p.promoter_id} {p.currency} {fmt(p.amount)} in={fmt(p.carried_in)} out={fmt(p.carried_out)}"
               + (f" pts={p.points_cashed}" if p.points_cashed else "") for p in plan.payouts]
    carried = [f"{c.promoter_id} {c.currency} {fmt(c.balance)}" for c in plan.carried]
    return lines, payouts, carried


PAID_O1 = Run(30, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"])

CASES = [
    Case("the holding period matures", [
        Run(29.99, [ent("o1")]),
        PAID_O1,
    ]),
    Case("commission and bonus are paid together", [
        Run(30, [ent("o1", commission="100", bonus="50")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"]),
    ]),
    Case("held is never paid; a manual approve makes it payable from the approve", [
        Run(40, [ent("o1", "held", payable_day=None)]),
        Run(44.5, [ent("o1", payable_day=45, revision=2)]),
        Run(45, [ent("o1", payable_day=45, revision=2)], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"]),
    ]),
    Case("a refund inside the holding period: never payable", [
        Run(10, [ent("o1", "reversed", "0", payable_day=None)]),
        Run(40, [ent("o1", "reversed", "0", payable_day=None)]),
    ]),
    Case("a refund after payout: a clawback line in the next plan", [
        PAID_O1,
        Run(50, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o2", "approved", "300", payable_day=45)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 300"], ["p1 USD 150 in=0 out=0"]),
    ]),
    Case("a negative balance carries until later earnings cover it", [
        PAID_O1,
        Run(40, [ent("o1", "rejected", "0", payable_day=None, revision=2)], carried=["p1 USD -150"]),
        Run(41, [ent("o1", "rejected", "0", payable_day=None, revision=2)], carried=["p1 USD -150"]),
        Run(70, [ent("o1", "rejected", "0", payable_day=None, revision=2), ent("o2", "approved", "400", payable_day=60)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 400"], ["p1 USD 250 in=0 out=0"]),
    ]),
    Case("below the minimum payout: carried over, paid once it reaches it", [
        Run(30, [ent("o1", commission="60")], carried=["p1 USD 60"]),
        Run(40, [ent("o1", commission="60"), ent("o2", commission="39.99", payable_day=40)], carried=["p1 USD 99.99"]),
        Run(41, [ent("o1", commission="60"), ent("o2", commission="40", payable_day=40, revision=2)],
            ["p1 USD commission o1 60", "p1 USD commission o2 40"], ["p1 USD 100 in=0 out=0"]),
    ]),
    Case("instalments over calendar months, the day clamped, the rounding remainder carried", [
        Run(30, [ent("o1", commission="3000.01", version="inst")],  # payable 2026-01-31
            ["p1 USD commission o1 1000.0033 1/3"], ["p1 USD 1000 in=0 out=0.0033"]),
        Run(57.99, [ent("o1", commission="3000.01", version="inst")]),
        Run(58, [ent("o1", commission="3000.01", version="inst")],  # 2026-02-28
            ["p1 USD commission o1 1000.0033 2/3"], ["p1 USD 1000 in=0.0033 out=0.0066"]),
        Run(89, [ent("o1", commission="3000.01", version="inst")],  # 2026-03-31
            ["p1 USD commission o1 1000.0034 3/3"], ["p1 USD 1000.01 in=0.0066 out=0"]),
        Run(400, [ent("o1", commission="3000.01", version="inst")]),
    ], book=INSTALMENTS),
    Case("all instalments due at once when the run comes late; at the threshold no instalments", [
        Run(120, [ent("o1", commission="3000", version="inst"), ent("o2", commission="1000", version="inst")],
            ["p1 USD commission o1 3000 3/3", "p1 USD commission o2 1000"], ["p1 USD 4000 in=0 out=0"]),
    ], book=INSTALMENTS),
    Case("a refund between instalments claws back the parts paid", [
        Run(30, [ent("o1", commission="3000", version="inst")], ["p1 USD commission o1 1000 1/3"],
            ["p1 USD 1000 in=0 out=0"]),
        Run(40, [ent("o1", "reversed", "0", payable_day=None, version="inst", revision=2),
                 ent("o2", commission="1500", payable_day=40)],
            ["p1 USD clawback o1 -1000 1/3", "p1 USD commission o2 1500"], ["p1 USD 500 in=0 out=0"]),
        Run(120, [ent("o1", "reversed", "0", payable_day=None, version="inst", revision=2),
                  ent("o2", commission="1500", payable_day=40)]),
    ], book=INSTALMENTS),
    Case("JPY pays whole yen and carries the fraction", [
        Run(30, [ent("o1", commission="150.5", currency="JPY")], ["p1 JPY commission o1 150.5"],
            ["p1 JPY 150 in=0 out=0.5"]),
        Run(40, [ent("o1", commission="150.5", currency="JPY"),
                 ent("o2", commission="150.5", currency="JPY", payable_day=40)],
            ["p1 JPY commission o2 150.5"], ["p1 JPY 151 in=0.5 out=0"]),
    ]),
    Case("KWD pays fils (3 places)", [
        Run(30, [ent("o1", commission="123.4567", currency="KWD")], ["p1 KWD commission o1 123.4567"],
            ["p1 KWD 123.456 in=0 out=0.0007"]),
    ]),
    Case("currencies are paid apart, each against the minimum", [
        Run(30, [ent("o1", commission="150"), ent("o2", commission="50", currency="EUR")],
            ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"], ["p1 EUR 50"]),
    ]),
    Case("points: whole units, in the currency he earned most in; never below zero", [
        Run(30, [ent("o1", points=15_050), ent("o2", commission="20", currency="EUR", points=2_020)],
            ["p1 EUR commission o2 20", "p1 USD commission o1 150", "p1 USD points - 170 17000pt"],
            ["p1 EUR 20 in=0 out=0", "p1 USD 320 in=0 out=0 pts=17000"]),
        Run(40, [ent("o1", points=15_050), ent("o2", commission="20", currency="EUR", points=2_020),
                 ent("o3", commission="0.5", points=50, payable_day=40)],
            ["p1 USD commission o3 0.5", "p1 USD points - 1 100pt"], ["p1 USD 1.5 in=0 out=0 pts=100"]),
        Run(50, [ent("o1", "reversed", "0", payable_day=None, revision=2),
                 ent("o2", commission="20", currency="EUR", points=2_020),
                 ent("o3", commission="0.5", points=50, payable_day=40), ent("o4", points=99, payable_day=50)],
            carried=["p1 USD 0"]),  # nets to 0: no payout of 0 (it carries, like any balance below a minor unit)
    ], book=POINTS_BOOK),
    Case("points cashed in a pending batch are booked; a failed batch releases them", [
        Run(30, [ent("o1", points=250)], ["p1 USD commission o1 150", "p1 USD points - 2 200pt"],
            ["p1 USD 152 in=0 out=0 pts=200"], outcome="pending"),
        Run(31, [ent("o1", points=250), ent("o2", commission="10", points=60, payable_day=31)],
            ["p1 USD commission o2 10", "p1 USD points - 1 100pt"], ["p1 USD 11 in=0 out=0 pts=100"]),
        Run(32, [ent("o1", points=250), ent("o2", commission="10", points=60, payable_day=31)],
            ["p1 USD commission o1 150", "p1 USD points - 2 200pt"], ["p1 USD 152 in=0 out=0 pts=200"], fail=0),
        Run(33, [ent("o1", points=250), ent("o2", commission="10", points=60, payable_day=31)]),
    ], book=POINTS_BOOK),
    Case("points of unmatured or held conversions are not cashed", [
        Run(30, [ent("o1", points=150, payable_day=31), ent("o2", "held", points=500, payable_day=None)]),
    ], book=POINTS_BOOK),
    Case("holding and instalments by the order's version (or its time); minimum by the cut-off's", [
        Run(30, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"]),
        Run(40, [ent("o1"), ent("o2", version="v2", day=36, payable_day=40), ent("o3", version="gone", day=36, payable_day=40)],
            ["p1 USD commission o2 75 1/2", "p1 USD commission o3 75 1/2"], ["p1 USD 150 in=0 out=0"]),
        Run(71, [ent("o1"), ent("o2", version="v2", day=36, payable_day=40), ent("o3", version="gone", day=36, payable_day=40),
                 ent("o4", commission="20", version="v1", day=0, payable_day=71)],
            ["p1 USD commission o2 75 2/2", "p1 USD commission o3 75 2/2", "p1 USD commission o4 20"],
            ["p1 USD 170 in=0 out=0"]),
    ], book=VERSIONS),
    Case("an order moved to another promoter is clawed back from the first, then paid to the second", [
        PAID_O1,
        Run(40, [ent("o1", promoter="p2", revision=2), ent("o2", commission="300", payable_day=40)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 300"], ["p1 USD 150 in=0 out=0"]),
        Run(41, [ent("o1", promoter="p2", revision=2), ent("o2", commission="300", payable_day=40)],
            ["p2 USD commission o1 150"], ["p2 USD 150 in=0 out=0"]),
    ]),
    # M2: the old payee's clawback carried over (negative balance) while the new one was paid
    Case("a moved order waits for the old promoter's clawback to be booked: never paid twice", [
        PAID_O1,
        Run(40, [ent("o1", promoter="p2", revision=2)], carried=["p1 USD -150"]),
        Run(41, [ent("o1", promoter="p2", revision=2)], carried=["p1 USD -150"]),
        Run(50, [ent("o1", promoter="p2", revision=2), ent("o2", commission="400", payable_day=50)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 400"], ["p1 USD 250 in=0 out=0"]),
        Run(51, [ent("o1", promoter="p2", revision=2), ent("o2", commission="400", payable_day=50)],
            ["p2 USD commission o1 150"], ["p2 USD 150 in=0 out=0"]),
    ]),
    Case("a moved order whose clawback is in a pending batch waits for its confirmation", [
        PAID_O1,
        Run(40, [ent("o1", promoter="p2", revision=2), ent("o2", commission="400", payable_day=40)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 400"], ["p1 USD 250 in=0 out=0"], outcome="pending"),
        Run(41, [ent("o1", promoter="p2", revision=2), ent("o2", commission="400", payable_day=40)]),
        Run(42, [ent("o1", promoter="p2", revision=2), ent("o2", commission="400", payable_day=40)],
            ["p2 USD commission o1 150"], ["p2 USD 150 in=0 out=0"], confirm=1),
    ]),
    Case("an order moved to another currency waits for the clawback in the old one", [
        PAID_O1,
        Run(40, [ent("o1", currency="EUR", revision=2)], carried=["p1 USD -150"]),
        Run(50, [ent("o1", currency="EUR", revision=2), ent("o2", commission="300", payable_day=50)],
            ["p1 USD clawback o1 -150", "p1 USD commission o2 300"], ["p1 USD 150 in=0 out=0"]),
        Run(51, [ent("o1", currency="EUR", revision=2), ent("o2", commission="300", payable_day=50)],
            ["p1 EUR commission o1 150"], ["p1 EUR 150 in=0 out=0"]),
    ]),
    Case("an order moved back before its clawback was booked: nothing moves", [
        PAID_O1,
        Run(40, [ent("o1", promoter="p2", revision=2)], carried=["p1 USD -150"]),
        Run(41, [ent("o1", revision=3)]),
    ]),
    Case("a hold after payment keeps what was paid; a lower commission gives the difference back", [
        PAID_O1,
        Run(40, [ent("o1", "held", payable_day=None, revision=2)]),
        Run(45, [ent("o1", payable_day=44, revision=3)]),
        Run(46, [ent("o1", payable_day=60, revision=4)]),  # approved again, payable later: still nothing back
        Run(50, [ent("o1", "held", "100", payable_day=None, revision=5)], carried=["p1 USD -50"]),
    ]),
    Case("an instalment order re-approved later keeps the parts it was paid", [
        Run(30, [ent("o1", commission="3000", version="inst")], ["p1 USD commission o1 1000 1/3"],
            ["p1 USD 1000 in=0 out=0"]),
        Run(40, [ent("o1", commission="3000", version="inst", payable_day=40, revision=2)]),
        Run(67.99, [ent("o1", commission="3000", version="inst", payable_day=40, revision=2)]),
        Run(68, [ent("o1", commission="3000", version="inst", payable_day=40, revision=2)],  # 02-10 + a month
            ["p1 USD commission o1 1000 2/3"], ["p1 USD 1000 in=0 out=0"]),
    ], book=INSTALMENTS),
    # M8: with minimum_payout 0 a balance of 0.004 was paid as a payout of 0.00
    Case("with no minimum, a balance below one minor unit is carried, never a payout of 0", [
        Run(30, [ent("o1", commission="0.004")], carried=["p1 USD 0.004"]),
        Run(31, [ent("o1", commission="0.004"), ent("o2", commission="0.5", currency="JPY", payable_day=31)],
            carried=["p1 JPY 0.5", "p1 USD 0.004"]),
        Run(40, [ent("o1", commission="0.004"), ent("o2", commission="0.5", currency="JPY", payable_day=31),
                 ent("o3", commission="0.006", payable_day=40)],
            ["p1 USD commission o1 0.004", "p1 USD commission o3 0.006"], ["p1 USD 0.01 in=0 out=0"], ["p1 JPY 0.5"]),
    ], book=POINTS_BOOK),
    Case("the minimum per currency overrides minimum_payout; the cut-off's rule set sets both", [
        Run(30, [ent("o1", commission="150"), ent("o2", commission="5000", currency="JPY"),
                 ent("o3", commission="50", currency="KWD"), ent("o4", commission="50", currency="EUR")],
            ["p1 KWD commission o3 50", "p1 USD commission o1 150"], ["p1 KWD 50 in=0 out=0", "p1 USD 150 in=0 out=0"],
            ["p1 EUR 50", "p1 JPY 5000"]),
        Run(40, [ent("o1", commission="150"), ent("o2", commission="5000", currency="JPY"),
                 ent("o3", commission="50", currency="KWD"), ent("o4", commission="50", currency="EUR")],
            ["p1 EUR commission o4 50", "p1 JPY commission o2 5000"], ["p1 EUR 50 in=0 out=0", "p1 JPY 5000 in=0 out=0"]),
    ], book=MINIMUMS),
    Case("a balance below zero by a fraction is not paid, even with no minimum", [
        Run(30, [ent("o1", commission="10.004")], ["p1 USD commission o1 10.004"], ["p1 USD 10 in=0 out=0.004"]),
        Run(40, [ent("o1", "held", "9.999", payable_day=None, revision=2)], carried=["p1 USD -0.001"]),
    ], book=POINTS_BOOK),
    Case("the newest revision of an order counts", [
        Run(30, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o1", revision=1)]),
        Run(31, [ent("o1", revision=3), ent("o1", "reversed", "0", payable_day=None, revision=2)],
            ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"]),
    ]),
    Case("a pending batch counts as booked; a failed one is planned again", [
        Run(30, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"], outcome="pending"),
        Run(31, [ent("o1")]),
        Run(32, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"], fail=0),
        Run(33, [ent("o1")]),
    ]),
    # M1: B1 (pending) booked o1 +150, o1 was refunded, B2 clawed back -150 against B1's line, B1
    # failed: o1's net was -150, and the next run paid it +150 again
    Case("an order in a pending batch does not move until the batch fails: never a negative net", [
        Run(30, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"], outcome="pending"),
        Run(40, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o2", commission="300", payable_day=40)],
            ["p1 USD commission o2 300"], ["p1 USD 300 in=0 out=0"]),
        Run(41, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o2", commission="300", payable_day=40)],
            fail=0),
    ]),
    Case("an order in a pending batch does not move until the batch is confirmed: then clawed back", [
        Run(30, [ent("o1")], ["p1 USD commission o1 150"], ["p1 USD 150 in=0 out=0"], outcome="pending"),
        Run(40, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o2", commission="300", payable_day=40)],
            ["p1 USD commission o2 300"], ["p1 USD 300 in=0 out=0"]),
        Run(41, [ent("o1", "reversed", "0", payable_day=None, revision=2), ent("o2", commission="300", payable_day=40)],
            carried=["p1 USD -150"], confirm=0),
    ]),
    Case("an instalment in a pending batch: the next part waits for it", [
        Run(30, [ent("o1", commission="3000", version="inst")], ["p1 USD commission o1 1000 1/3"],
            ["p1 USD 1000 in=0 out=0"], outcome="pending"),
        Run(58, [ent("o1", commission="3000", version="inst")]),
        Run(59, [ent("o1", commission="3000", version="inst")], ["p1 USD commission o1 2000 2/3"],
            ["p1 USD 2000 in=0 out=0"], fail=0),
    ], book=INSTALMENTS),
    Case("a pending batch's leftover is not spent before it is confirmed (it may fail)", [
        Run(30, [ent("o1", commission="100.0049")], ["p1 USD commission o1 100.0049"],
            ["p1 USD 100 in=0 out=0.0049"], outcome="pending"),
        Run(40, [ent("o1", commission="100.0049"), ent("o2", commission="100.0051", payable_day=40)],
            ["p1 USD commission o2 100.0051"], ["p1 USD 100 in=0 out=0.0051"]),
        Run(41, [ent("o1", commission="100.0049"), ent("o2", commission="100.0051", payable_day=40)],
            ["p1 USD commission o1 100.0049"], ["p1 USD 100.01 in=0.0051 out=0"], fail=0),
    ]),
    Case("a confirmed batch's leftover is spent by the next", [
        Run(30, [ent("o1", commission="100.0049")], ["p1 USD commission o1 100.0049"],
            ["p1 USD 100 in=0 out=0.0049"], outcome="pending"),
        Run(40, [ent("o1", commission="100.0049"), ent("o2", commission="100.0051", payable_day=40)],
            ["p1 USD commission o2 100.0051"], ["p1 USD 100.01 in=0.0049 out=0"], confirm=0),
    ]),
    Case("an order without a promoter is never paid", [
        Run(30, [ent("o1", promoter="")]),
    ]),
    Case("a booked order missing from the entitlements does not move", [
        PAID_O1,
        Run(40, []),
    ]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lifecycle(case: Case) -> None:
    books = Books(case.book)
    for i, run in enumerate(case.runs):
        if run.fail is not None:
            books.fail(run.fail)
        if run.confirm is not None:
            books.confirm(run.confirm)
        cutoff = int(T0 + run.day * DAY)
        assert books.plan(list(reversed(run.ents)), cutoff) == books.plan(run.ents, cutoff), "order of the inputs"
        # as the job does: the batch is written pending, then finance confirms it (or not)
        plan = books.run(run.ents, cutoff, "pending")
        assert show(plan) == (run.lines, run.payouts, run.carried), f"run {i} (day {run.day})"
        again = books.plan(run.ents, cutoff)
        assert (again.lines, again.payouts) == ([], []), f"run {i} re-planned while its batch is pending"
        if plan.lines and run.outcome == "paid":
            books.confirm(len(books.batches) - 1)
            waited(books.plan(run.ents, cutoff), plan)  # only what waited for this batch's clawbacks
