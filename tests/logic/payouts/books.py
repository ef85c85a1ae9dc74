"""Test helpers for payouts: conversions in a line, and the books that runs write into."""
from __future__ import annotations

from decimal import Decimal

from streams.logic.payouts.plan import CLAWBACK, COMMISSION, Entitlement, Line, Payout, Plan, plan_payout
from streams.logic.rules.ruleset import RuleBook

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ent(order_id: str, status: str = "approved", commission: str = "150", *, bonus: str = "0", points: int = 0,
        promoter: str = "p1", currency: str = "USD", day: float = 0, payable_day: float | None = 30,
        version: str = "v1", revision: int = 1) -> Entitlement:
    """A conversion ordered on `day`, payable on `payable_day` (None: not approved, payable_at 0)."""
    return Entitlement(order_id=order_id, revision=revision, promoter_id=promoter, currency=currency, status=status,
                       commission=Decimal(commission), bonus=Decimal(bonus), points=points,
                       order_ts=int(T0 + day * DAY), payable_at=0 if payable_day is None else int(T0 + payable_day * DAY),
                       rule_version=version)


class Books:
    """Booked batches, as the run job keeps them: a batch is pending, paid or failed."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        self.batches: list[tuple[str, list[Line], list[Payout]]] = []

    @property
    def lines(self) -> list[Line]:
        return [ln for status, lines, _ in self.batches if status != "failed" for ln in lines]

    @property
    def payouts(self) -> list[Payout]:
        return [p for status, _, payouts in self.batches if status != "failed" for p in payouts]

    @property
    def pending(self) -> list[Payout]:
        return [p for status, _, payouts in self.batches if status == "pending" for p in payouts]

    @property
    def pending_orders(self) -> set[str]:
        """The orders with a line in a pending batch (what the job reads with the lines' batch status)."""
        return {ln.order_id for status, lines, _ in self.batches if status == "pending" for ln in lines if ln.order_id}

    def plan(self, ents: list[Entitlement], cutoff_ms: int) -> Plan:
        return plan_payout(ents, self.lines, self.payouts, cutoff_ms, self.book, self.pending,
                           pending_orders=self.pending_orders)

    def run(self, ents: list[Entitlement], cutoff_ms: int, outcome: str = "paid") -> Plan:
        """Plan at `cutoff_ms` and book the plan as a batch in `outcome` (an empty plan books nothing)."""
        plan = self.plan(ents, cutoff_ms)
        if plan.lines:
            self.batches.append((outcome, plan.lines, plan.payouts))
        return plan

    def fail(self, index: int) -> None:
        """A pending batch fails: its lines are released."""
        status, lines, payouts = self.batches[index]
        assert status == "pending"
        self.batches[index] = ("failed", lines, payouts)

    def confirm(self, index: int) -> None:
        status, lines, payouts = self.batches[index]
        assert status == "pending"
        self.batches[index] = ("paid", lines, payouts)


def waited(again: Plan, plan: Plan) -> list[Line]:
    """The lines of `again` (planned right after `plan`'s batch was confirmed) that waited for it: an
    order's positive line for its new payee, once `plan` booked the old payee's clawback. Asserts
    they are all `again` plans, with the lines their payees had carried over (`plan.carried_lines`)."""
    clawed = {(ln.order_id, (ln.promoter_id, ln.currency)) for ln in plan.lines if ln.kind == CLAWBACK}
    out = [ln for ln in again.lines if ln.kind == COMMISSION
           and any(o == ln.order_id and payee != (ln.promoter_id, ln.currency) for o, payee in clawed)]
    payees = {(ln.promoter_id, ln.currency) for ln in out}
    for ln in again.lines:
        assert (ln.promoter_id, ln.currency) in payees and (ln in out or ln in plan.carried_lines), ln
    return out


def places(d: Decimal) -> int:
    """Decimal places `d` is written with."""
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent
