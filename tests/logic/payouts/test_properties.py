"""Properties of payout runs (hypothesis) over random histories: conversions change state
(approve, hold, reject, refund, move to another promoter), runs come at increasing cut-offs,
batches are paid, left pending or failed; a last run after everything matured and ended."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streams.logic.payouts.ledger import Ledger, fold
from streams.logic.payouts.money import minor_unit, round_down
from streams.logic.payouts.plan import CLAWBACK, COMMISSION, POINTS, Entitlement, Plan, rules_for, target
from streams.logic.payouts.schedule import parts_of
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.logic.payouts.books import DAY, T0, Books, places

D = Decimal
BOOK = RuleBook([
    RuleSet(version="v1", effective_from=T0),
    RuleSet(version="v2", effective_from=T0 + 60 * DAY, holding_days=10, minimum_payout=D(50),
            instalment_above=D(1000), instalment_months=3, points_cashable=True, points_per_unit=100),
    RuleSet(version="v3", effective_from=T0 + 1500 * DAY, minimum_payout=D(0)),  # the last run's
])
FINAL_CUTOFF = T0 + 2000 * DAY
ENDED = ("rejected", "reversed")


@dataclass(frozen=True)
class Order:
    promoter: str
    currency: str
    commission: Decimal
    bonus: Decimal
    points: int
    day: int
    version: str


@dataclass(frozen=True)
class Change:
    order: int
    status: str
    delay_days: int  # an approve counts from the run's cut-off + this
    move: bool  # the order now belongs to the other promoter


@dataclass(frozen=True)
class RunAt:
    advance_days: int
    outcome: str  # paid | pending


@dataclass(frozen=True)
class Fail:
    pending: int  # which pending batch fails (modulo their number)


orders = st.builds(Order, st.sampled_from(["p1", "p2"]), st.sampled_from(["USD", "USD", "USD", "JPY", "KWD"]),
                   st.decimals(min_value=0, max_value=5000, places=4), st.sampled_from([D(0), D(50)]),
                   st.integers(0, 50_000), st.integers(0, 90), st.sampled_from(["v1", "v2", "gone"]))
steps = st.one_of(
    st.builds(RunAt, st.integers(10, 40), st.sampled_from(["paid", "paid", "pending"])),
    st.builds(Change, st.integers(0, 9), st.sampled_from(["approved", "held", "rejected", "reversed"]),
              st.integers(0, 60), st.booleans()),
    st.builds(RunAt, st.integers(0, 5), st.sampled_from(["paid", "pending"])),
    st.builds(Fail, st.integers(0, 9)),
)
histories = st.tuples(st.lists(orders, min_size=1, max_size=8), st.lists(steps, min_size=4, max_size=30),
                      st.lists(st.booleans(), min_size=8, max_size=8))


class World:
    """The conversions as `conversions_current` would show them, and the books of the runs."""

    def __init__(self, specs: list[Order]) -> None:
        self.specs = specs
        self.ents = {f"o{i}": self._approved(i, s.promoter, 1, 0) for i, s in enumerate(specs)}
        self.books = Books(BOOK)
        self.cutoff = T0

    def _approved(self, i: int, promoter: str, revision: int, not_before: int) -> Entitlement:
        s = self.specs[i]
        order_ts = T0 + s.day * DAY
        holding = rules_for(Entitlement(order_id="", revision=0, promoter_id="", currency="", status="",
                                        commission=D(0), bonus=D(0), points=0, order_ts=order_ts, payable_at=0,
                                        rule_version=s.version), BOOK).holding_ms
        return Entitlement(order_id=f"o{i}", revision=revision, promoter_id=promoter, currency=s.currency,
                           status="approved", commission=s.commission, bonus=s.bonus, points=s.points,
                           order_ts=order_ts, payable_at=max(order_ts + holding, not_before), rule_version=s.version)

    def change(self, i: int, status: str, not_before: int, move: bool) -> None:
        i %= len(self.specs)
        old = self.ents[f"o{i}"]
        promoter = {"p1": "p2", "p2": "p1"}[old.promoter_id] if move else old.promoter_id
        new = self._approved(i, promoter, old.revision + 1, not_before)
        if status != "approved":
            new = msgspec.structs.replace(new, status=status, payable_at=0)
        if status in ENDED:
            new = msgspec.structs.replace(new, commission=D(0), bonus=D(0), points=0)
        self.ents[new.order_id] = new

    def visible(self, cutoff: int) -> list[Entitlement]:
        """What `sinks.payouts.entitlements` returns: approved and matured, or booked before."""
        booked = {ln.order_id for ln in self.books.lines}
        return [e for e in self.ents.values()
                if (e.status == "approved" and e.payable_at <= cutoff) or e.order_id in booked]

    def run(self, cutoff: int, outcome: str) -> Plan:
        ents = self.visible(cutoff)
        before = fold(self.books.lines, self.books.payouts, self.books.pending)
        plan = self.books.run(ents, cutoff, outcome)
        after = fold(self.books.lines, self.books.payouts, self.books.pending)
        check_plan(plan, cutoff)
        check_targets(self, ents, plan, before, after, cutoff)
        check_points(self, plan, before, cutoff)
        # the same run again: nothing new, the same carried over; and the inputs' order is irrelevant
        again = self.books.plan(ents, cutoff)
        assert (again.lines, again.payouts, again.carried) == ([], [], plan.carried)
        assert self.books.plan(list(reversed(ents)), cutoff) == again
        # nobody is overpaid, whatever the pending batches become: paid, failed, or still pending
        paid = [(lines, payouts) for status, lines, payouts in self.books.batches if status == "paid"]
        for ledger in (fold(self.books.lines, self.books.payouts, self.books.pending),
                       fold([ln for lines, _ in paid for ln in lines], [p for _, payouts in paid for p in payouts]),
                       fold(self.books.lines, self.books.payouts)):
            assert all(r >= 0 for r in ledger.remainders.values())
        return plan


def check_plan(plan: Plan, cutoff: int) -> None:
    """Payouts add up their lines and remainder, rounded down by less than a minor unit."""
    for what in {ln.kind for ln in plan.lines} | {"instalment" for ln in plan.lines if ln.parts > 1}:
        event(what)
    for c in plan.carried:
        event("negative balance carried" if c.balance < 0 else "carried below the minimum")
    minimum = BOOK.at(cutoff).minimum_payout
    keys = [(ln.promoter_id, ln.currency, ln.kind, ln.order_id) for ln in plan.lines]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    by_payee: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for ln in plan.lines:
        by_payee[(ln.promoter_id, ln.currency)].append(ln.amount)
        assert ln.amount != 0 and places(ln.amount) <= 4
        assert (ln.kind == CLAWBACK) == (ln.amount < 0) and ln.kind in (COMMISSION, CLAWBACK, POINTS)
    assert [(p.promoter_id, p.currency) for p in plan.payouts] == list(by_payee)
    for p in plan.payouts:
        owed = p.lines_total + p.carried_in
        assert p.lines_total == sum(by_payee[(p.promoter_id, p.currency)]) and p.lines == len(by_payee[(p.promoter_id, p.currency)])
        assert p.carried_in >= 0
        assert p.amount == round_down(p.amount, p.currency) >= minimum
        assert D(0) <= owed - p.amount == p.carried_out < minor_unit(p.currency)
    for c in plan.carried:
        assert c.balance < 0 or round_down(c.balance, c.currency) < minimum
        assert (c.promoter_id, c.currency) not in by_payee


def check_targets(world: World, ents: list[Entitlement], plan: Plan, before: Ledger, after: Ledger,
                  cutoff: int) -> None:
    """Every order's booking per payee is its target after the run (or unchanged when carried),
    never negative nor above the order's commission + bonus."""
    carried = {(c.promoter_id, c.currency) for c in plan.carried}
    for order_id, ent in world.ents.items():
        spec = world.specs[int(order_id[1:])]
        rules = rules_for(ent, BOOK)
        payees = set(before.orders.get(order_id, {})) | set(after.orders.get(order_id, {})) | {(ent.promoter_id, ent.currency)}
        for payee in payees:
            was, now = before.booked(order_id, payee), after.booked(order_id, payee)
            assert D(0) <= now <= spec.commission + spec.bonus
            if ent not in ents or payee in carried:
                assert now == was
            elif payee != (ent.promoter_id, ent.currency) or ent.status in ENDED:
                assert now == 0
            else:
                assert now == target(ent, was, cutoff, rules)[0]
                if ent.status == "approved" and ent.payable_at <= cutoff and parts_of(spec.commission + spec.bonus, rules) == 1:
                    assert now == spec.commission + spec.bonus
        if ent in ents and order_id in after.orders:
            event("moved" if len(after.orders[order_id]) > 1 else "booked")


def check_points(world: World, plan: Plan, before: Ledger, cutoff: int) -> None:
    """Points lines cash whole units of matured points not cashed before, and all of them."""
    ppu = BOOK.at(cutoff).points_per_unit
    for ln in plan.lines:
        if ln.kind != POINTS:
            continue
        assert BOOK.at(cutoff).points_cashable and ln.order_id == ""
        matured = sum(e.points for e in world.visible(cutoff)
                      if e.promoter_id == ln.promoter_id and e.status == "approved" and e.payable_at <= cutoff)
        cashed = before.points.get(ln.promoter_id, 0)
        assert ln.points > 0 and ln.points % ppu == 0 and ln.amount == ln.points // ppu
        assert cashed + ln.points <= matured < cashed + ln.points + ppu


@settings(max_examples=500, deadline=None)
@given(histories)
def test_payout_runs(history: tuple[list[Order], list[Change | RunAt | Fail], list[bool]]) -> None:
    specs, history_steps, ends_approved = history
    world = World(specs)
    for step in history_steps:
        if isinstance(step, Change):
            world.change(step.order, step.status, world.cutoff + step.delay_days * DAY, step.move)
        elif isinstance(step, RunAt):
            world.cutoff += step.advance_days * DAY
            world.run(world.cutoff, step.outcome)
        else:
            pending = [i for i, (status, _, _) in enumerate(world.books.batches) if status == "pending"]
            if pending:
                world.books.fail(pending[step.pending % len(pending)])
                event("failed batch")
    # the end: pending batches confirmed; every conversion approved and matured, or ended;
    # every instalment due; the last rule set pays any positive balance
    for i, (status, _, _) in enumerate(world.books.batches):
        if status == "pending":
            world.books.confirm(i)
    for i in range(len(specs)):
        world.change(i, "approved" if ends_approved[i] else "reversed", world.cutoff, False)
    last = world.run(FINAL_CUTOFF, "paid").payouts
    ledger = fold(world.books.lines, world.books.payouts)
    plan = world.books.plan(world.visible(FINAL_CUTOFF), FINAL_CUTOFF)
    unbooked = sum((c.balance - ledger.remainders.get((c.promoter_id, c.currency), D(0)) for c in plan.carried), D(0))
    booked = sum((ln.amount for ln in world.books.lines if ln.kind != POINTS), D(0))
    approved = sum((s.commission + s.bonus for s, end in zip(specs, ends_approved) if end), D(0))
    assert booked + unbooked == approved
    if not plan.carried:  # nobody ended with a negative balance: paid - clawed back = earned
        paid = sum((ln.amount for ln in world.books.lines if ln.kind == COMMISSION), D(0))
        clawed = -sum((ln.amount for ln in world.books.lines if ln.kind == CLAWBACK), D(0))
        assert paid - clawed == approved
    for p in last:  # whoever the last batch paid has less than a minor unit left
        assert ledger.remainders[(p.promoter_id, p.currency)] == p.carried_out < minor_unit(p.currency)
