"""Properties of payout runs (hypothesis) over random histories: conversions change state
(approve, hold, reject, refund, move to another promoter or currency), runs come at increasing
cut-offs, batches are paid, left pending or failed (also after later batches were planned);
last runs after everything matured and ended.

At every point of a history, whatever the pending batches become (paid or failed, each), every
order's booked net per payee and over all its payees is in [0, its commission + bonus]. At the
end the books balance: see `test_payout_runs`."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streams.logic.payouts.ledger import Ledger, fold
from streams.logic.payouts.money import minor_unit, round_down
from streams.logic.payouts.plan import CLAWBACK, COMMISSION, POINTS, Entitlement, Line, Plan, rules_for, target
from streams.logic.payouts.schedule import parts_of
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.logic.payouts.books import DAY, T0, Books, places, waited

D = Decimal
BOOK = RuleBook([
    RuleSet(version="v1", effective_from=T0, minimum_payouts={"JPY": D(1000)}),
    RuleSet(version="v2", effective_from=T0 + 60 * DAY, holding_days=10, minimum_payout=D(50),
            minimum_payouts={"JPY": D(5000), "KWD": D(20)},
            instalment_above=D(1000), instalment_months=3, points_cashable=True, points_per_unit=100),
    RuleSet(version="v3", effective_from=T0 + 1500 * DAY, minimum_payout=D(0)),  # the last run's
])
FINAL_CUTOFF = T0 + 2000 * DAY
ENDED = ("rejected", "reversed")
#: a move to another currency: the next in this cycle
NEXT_CURRENCY = {"USD": "JPY", "JPY": "KWD", "KWD": "USD"}


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
    move: str  # '' | 'promoter': now the other promoter's | 'currency': now in another currency


@dataclass(frozen=True)
class RunAt:
    advance_days: int
    outcome: str  # paid | pending


@dataclass(frozen=True)
class Fail:
    pending: int  # which pending batch fails (modulo their number)


Step = Change | RunAt | Fail
orders = st.builds(Order, st.sampled_from(["p1", "p2"]), st.sampled_from(["USD", "USD", "USD", "JPY", "KWD"]),
                   st.decimals(min_value=0, max_value=5000, places=4), st.sampled_from([D(0), D(50)]),
                   st.integers(0, 50_000), st.integers(0, 90), st.sampled_from(["v1", "v2", "gone"]))
steps = st.one_of(
    st.builds(RunAt, st.integers(10, 40), st.sampled_from(["paid", "paid", "pending"])),
    st.builds(Change, st.integers(0, 9), st.sampled_from(["approved", "held", "rejected", "reversed"]),
              st.integers(0, 60), st.sampled_from(["", "", "promoter", "currency"])),
    st.builds(RunAt, st.integers(0, 5), st.sampled_from(["paid", "pending"])),
    st.builds(Fail, st.integers(0, 9)),
    # a batch left pending, a refund or a move, a later run, then the pending batch fails
    st.builds(lambda run, change, later: (run, change, later, Fail(0)),
              st.builds(RunAt, st.integers(10, 40), st.just("pending")),
              st.builds(Change, st.integers(0, 9), st.sampled_from(["held", "rejected", "reversed"]), st.just(0),
                        st.sampled_from(["", "promoter", "currency"])),
              st.builds(RunAt, st.integers(30, 120), st.just("paid"))),
)
histories = st.tuples(st.lists(orders, min_size=1, max_size=8), st.lists(steps, min_size=4, max_size=30),
                      st.lists(st.booleans(), min_size=8, max_size=8))


class World:
    """The conversions as `conversions_current` would show them, and the books of the runs."""

    def __init__(self, specs: list[Order]) -> None:
        self.specs = specs
        self.ents = {f"o{i}": self._approved(i, s.promoter, s.currency, 1, 0) for i, s in enumerate(specs)}
        self.books = Books(BOOK)
        self.cutoff = T0

    def _approved(self, i: int, promoter: str, currency: str, revision: int, not_before: int) -> Entitlement:
        s = self.specs[i]
        order_ts = T0 + s.day * DAY
        holding = rules_for(Entitlement(order_id="", revision=0, promoter_id="", currency="", status="",
                                        commission=D(0), bonus=D(0), points=0, order_ts=order_ts, payable_at=0,
                                        rule_version=s.version), BOOK).holding_ms
        return Entitlement(order_id=f"o{i}", revision=revision, promoter_id=promoter, currency=currency,
                           status="approved", commission=s.commission, bonus=s.bonus, points=s.points,
                           order_ts=order_ts, payable_at=max(order_ts + holding, not_before), rule_version=s.version)

    def total(self, order_id: str) -> Decimal:
        """The order's commission + bonus (an ended conversion's is 0, what it was is the bound)."""
        spec = self.specs[int(order_id[1:])]
        return spec.commission + spec.bonus

    def change(self, i: int, status: str, not_before: int, move: str) -> None:
        i %= len(self.specs)
        old = self.ents[f"o{i}"]
        promoter = {"p1": "p2", "p2": "p1"}[old.promoter_id] if move == "promoter" else old.promoter_id
        currency = NEXT_CURRENCY[old.currency] if move == "currency" else old.currency
        new = self._approved(i, promoter, currency, old.revision + 1, not_before)
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
        """A run as the job does it: its batch is written pending; then paid, or left pending."""
        ents = self.visible(cutoff)
        before = fold(self.books.lines, self.books.payouts, self.books.pending)
        frozen = self.books.pending_orders
        plan = self.books.run(ents, cutoff, "pending")
        after = fold(self.books.lines, self.books.payouts, self.books.pending)
        check_plan(plan, cutoff)
        check_targets(self, ents, plan, before, after, cutoff, frozen)
        check_points(self, plan, before, cutoff)
        # the same run again while its batch is pending: nothing new, the same carried over; and
        # the inputs' order is irrelevant
        again = self.books.plan(ents, cutoff)
        assert (again.lines, again.payouts, again.carried, again.carried_lines) == (
            [], [], plan.carried, plan.carried_lines)
        assert self.books.plan(list(reversed(ents)), cutoff) == again
        if plan.lines and outcome == "paid":
            self.books.confirm(len(self.books.batches) - 1)
            # once paid, the same run again only pays what waited for this batch's clawbacks
            for _ in waited(self.books.plan(ents, cutoff), plan):
                event("a moved order paid once the old payee's clawback was booked")
        # nobody is overpaid, whatever the pending batches become: paid, failed, or still pending
        paid = [(lines, payouts) for status, lines, payouts in self.books.batches if status == "paid"]
        for ledger in (fold(self.books.lines, self.books.payouts, self.books.pending),
                       fold([ln for lines, _ in paid for ln in lines], [p for _, payouts in paid for p in payouts]),
                       fold(self.books.lines, self.books.payouts)):
            assert all(r >= 0 for r in ledger.remainders.values())
        check_orders(self)
        return plan

    def fail(self, which: int) -> None:
        pending = [i for i, (status, _, _) in enumerate(self.books.batches) if status == "pending"]
        if pending:
            index = pending[which % len(pending)]
            self.books.fail(index)
            event("a pending batch failed" + (" after later batches" if index < len(self.books.batches) - 1 else ""))
            check_orders(self)


def subset_sums(amounts: Iterable[Decimal]) -> set[Decimal]:
    """Every sum of a subset of `amounts` (the pending batches that end paid)."""
    sums = {D(0)}
    for a in amounts:
        sums |= {s + a for s in sums}
    return sums


def check_orders(world: World) -> None:
    """Whatever each pending batch becomes (paid or failed), every order's booked net is in
    [0, commission + bonus], per payee and over all its payees."""
    paid: dict[tuple[str, tuple[str, str] | None], Decimal] = defaultdict(Decimal)
    pending: dict[tuple[str, tuple[str, str] | None], list[Decimal]] = defaultdict(list)
    for status, lines, _ in world.books.batches:
        if status == "failed":
            continue
        per: dict[tuple[str, tuple[str, str] | None], Decimal] = defaultdict(Decimal)
        for ln in lines:
            if ln.order_id:
                per[(ln.order_id, (ln.promoter_id, ln.currency))] += ln.amount
                per[(ln.order_id, None)] += ln.amount  # None: over all payees
        for key, amount in per.items():
            if status == "paid":
                paid[key] += amount
            else:
                pending[key].append(amount)
    for key in paid.keys() | pending.keys():
        total = world.total(key[0])
        for s in subset_sums(pending.get(key, [])):
            assert D(0) <= paid[key] + s <= total, (key, paid[key], pending.get(key))
        if len(pending.get(key, [])) > 1:
            event("an order in more than one pending batch")


def minimum(run: RuleSet, currency: str) -> Decimal:
    """The rule book's minimum payout in `currency`: per currency, else the one for all."""
    return run.minimum_payouts[currency] if currency in run.minimum_payouts else run.minimum_payout


def check_plan(plan: Plan, cutoff: int) -> None:
    """Payouts add up their lines and remainder, rounded down by less than a minor unit, above 0
    and at least the currency's minimum; the carried lines are the carried payees'."""
    for what in {ln.kind for ln in plan.lines} | {"instalment" for ln in plan.lines if ln.parts > 1}:
        event(what)
    for c in plan.carried:
        event("negative balance carried" if c.balance < 0 else "carried below the minimum")
    run = BOOK.at(cutoff)
    keys = [(ln.promoter_id, ln.currency, ln.kind, ln.order_id) for ln in plan.lines]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    by_payee: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for ln in plan.lines:
        by_payee[(ln.promoter_id, ln.currency)].append(ln.amount)
    for ln in plan.lines + plan.carried_lines:
        assert ln.amount != 0 and places(ln.amount) <= 4
        assert (ln.kind == CLAWBACK) == (ln.amount < 0) and ln.kind in (COMMISSION, CLAWBACK, POINTS)
    assert [(p.promoter_id, p.currency) for p in plan.payouts] == list(by_payee)
    for p in plan.payouts:
        owed = p.lines_total + p.carried_in
        assert p.lines_total == sum(by_payee[(p.promoter_id, p.currency)]) and p.lines == len(by_payee[(p.promoter_id, p.currency)])
        assert p.carried_in >= 0
        assert p.amount == round_down(p.amount, p.currency) > 0 and p.amount >= minimum(run, p.currency)
        assert D(0) <= owed - p.amount == p.carried_out < minor_unit(p.currency)
    carried_keys = [(ln.promoter_id, ln.currency, ln.kind, ln.order_id) for ln in plan.carried_lines]
    assert carried_keys == sorted(carried_keys) and len(set(carried_keys)) == len(carried_keys)
    assert [(c.promoter_id, c.currency) for c in plan.carried] == sorted(
        {(ln.promoter_id, ln.currency) for ln in plan.carried_lines})
    for c in plan.carried:
        amount = round_down(c.balance, c.currency)
        assert amount <= 0 or amount < minimum(run, c.currency)
        assert (c.promoter_id, c.currency) not in by_payee
        assert c.lines == sum(1 for ln in plan.carried_lines if (ln.promoter_id, ln.currency) == (c.promoter_id, c.currency))


def check_targets(world: World, ents: list[Entitlement], plan: Plan, before: Ledger, after: Ledger,
                  cutoff: int, frozen: set[str]) -> None:
    """Every order's booking per payee is its target after the run; or unchanged when its payee
    is carried over, when it had a line in a pending batch, or when its payee's positive line
    waits for another payee's clawback to be booked. Never negative nor above commission + bonus."""
    carried = {(c.promoter_id, c.currency) for c in plan.carried}
    for order_id, ent in world.ents.items():
        total = world.total(order_id)
        rules = rules_for(ent, BOOK)
        current = (ent.promoter_id, ent.currency)
        was_booked = before.orders.get(order_id, {})
        payees = set(was_booked) | set(after.orders.get(order_id, {})) | {current}
        elsewhere = any(b.amount for p, b in was_booked.items() if p != current)
        for payee in payees:
            was, now = before.booked(order_id, payee), after.booked(order_id, payee)
            assert D(0) <= now <= total
            if ent not in ents or payee in carried or order_id in frozen:
                assert now == was
                if order_id in frozen and ent in ents and payee not in carried:
                    event("an order waits for its pending batch")
            elif payee != current or ent.status in ENDED:
                assert now == 0
            else:
                goal = target(ent, was, cutoff, rules)[0]
                if goal > was and elsewhere:
                    assert now == was
                    event("a moved order waits for the old payee's clawback")
                    continue
                assert now == goal
                if ent.status == "approved" and ent.payable_at <= cutoff and parts_of(total, rules) == 1:
                    assert now == total
        if ent in ents and order_id in after.orders:
            event("moved" if len(after.orders[order_id]) > 1 else "booked")


def check_points(world: World, plan: Plan, before: Ledger, cutoff: int) -> None:
    """Points lines cash whole units of matured points not cashed before (points cashed in a
    pending batch count as cashed), and all of them."""
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
def test_payout_runs(history: tuple[list[Order], list[Step | tuple[Step, ...]], list[bool]]) -> None:
    """A history, then the end: the pending batches confirmed; every conversion approved and
    matured, or reversed, on its last payee; every instalment due; the last rule set (minimum 0)
    pays any positive balance; runs until one books nothing. Then, with B = the booked ledger
    (every batch paid) and C = the lines still planned (`Plan.carried_lines`: of payees whose
    balance is below one minor unit, e.g. negative), per order:

    - reversed: B + C over all its payees = 0;
    - approved: B + C = its commission + bonus, or 0 when it *waits*: its payee has nothing
      booked because an old payee's clawback is carried in C (docs: the new payee is paid once
      that clawback is booked);

    so, in money lines (not points): paid - clawed back (B) = commission + bonus of the orders
    that ended approved (A) - C - W (W: commission + bonus of the waiting orders), and = A when
    nobody is carried over. Whoever the last runs paid has less than one minor unit left.
    """
    specs, history_steps, ends_approved = history
    world = World(specs)
    for step in (s for item in history_steps for s in (item if isinstance(item, tuple) else (item,))):
        if isinstance(step, Change):
            world.change(step.order, step.status, world.cutoff + step.delay_days * DAY, step.move)
        elif isinstance(step, RunAt):
            world.cutoff += step.advance_days * DAY
            world.run(world.cutoff, step.outcome)
        else:
            world.fail(step.pending)
    for i, (status, _, _) in enumerate(world.books.batches):
        if status == "pending":
            world.books.confirm(i)
    for i in range(len(specs)):
        world.change(i, "approved" if ends_approved[i] else "reversed", world.cutoff, "")
    last: dict[tuple[str, str], Decimal] = {}  # payee -> what the last runs left him (carried_out)
    for _ in range(4):
        final = world.run(FINAL_CUTOFF, "paid")
        last.update({(p.promoter_id, p.currency): p.carried_out for p in final.payouts})
        if not final.lines:
            break
    plan = world.books.plan(world.visible(FINAL_CUTOFF), FINAL_CUTOFF)
    assert plan.lines == [], "the last runs did not settle"
    ledger = fold(world.books.lines, world.books.payouts)
    planned: dict[str, list[Line]] = defaultdict(list)
    for ln in plan.carried_lines:
        planned[ln.order_id].append(ln)
    approved = waiting = D(0)
    for i, (spec, end) in enumerate(zip(specs, ends_approved, strict=False)):
        order_id, ent = f"o{i}", world.ents[f"o{i}"]
        net = sum((b.amount for b in ledger.orders.get(order_id, {}).values()), D(0))
        net += sum((ln.amount for ln in planned[order_id]), D(0))
        if not end:
            assert net == 0
            continue
        total = spec.commission + spec.bonus
        approved += total
        if net != total:
            current = (ent.promoter_id, ent.currency)
            assert net == 0 and ledger.booked(order_id, current) == 0 and total > 0
            assert any(ln.kind == CLAWBACK and (ln.promoter_id, ln.currency) != current for ln in planned[order_id])
            waiting += total
            event("ends waiting for a carried clawback")
    carried = sum((ln.amount for ln in plan.carried_lines if ln.kind != POINTS), D(0))
    paid = sum((ln.amount for ln in world.books.lines if ln.kind == COMMISSION), D(0))
    clawed = -sum((ln.amount for ln in world.books.lines if ln.kind == CLAWBACK), D(0))
    assert paid - clawed == approved - carried - waiting
    if not plan.carried:
        assert paid - clawed == approved
    for c in plan.carried:  # a carried balance is its planned lines + its remainder
        mine = sum((ln.amount for ln in plan.carried_lines if (ln.promoter_id, ln.currency) == (c.promoter_id, c.currency)), D(0))
        assert c.balance == mine + ledger.remainders.get((c.promoter_id, c.currency), D(0))
    for payee, remainder in ledger.remainders.items():  # whoever the last runs paid has less than a minor unit left
        assert remainder == last[payee] < minor_unit(payee[1]) if payee in last else remainder >= 0
