"""Payout planning (docs/payouts.md): what each promoter is owed now, minus what earlier
batches already booked, as the lines of one new batch. Pure: plain data in, plain data out.

CONTRACT (the types below are fixed; `plan_payout` is to be implemented):

- An order's *target* at the run's cut-off: its commission + bonus if it is approved and
  matured (`payable_at` <= cut-off; in instalments only the parts due by then), 0 if it
  ended rejected or reversed, else (held, not matured yet) what is already booked for it.
- Its line in the new batch is target - booked (booked = the sum of its lines in pending or
  paid batches); a negative line is a clawback. So the net paid for an order is never
  negative nor above its commission, and re-planning after a batch is written adds nothing
  (while it is pending; once it is confirmed, only the lines that waited for its clawbacks).
- Per promoter and currency, the payout is the sum of the new lines plus the rounding
  remainder of earlier batches (`ledger`: a pending batch's leftover waits for its
  confirmation), rounded down to the currency's minor unit. A payout below the rule book's
  minimum (`minimum_for`: `minimum_payouts[currency]`, else `minimum_payout`), negative, or
  zero (a payout is always > 0, also with a minimum of 0) is not paid: its lines are left out
  of the batch and carry over (they are planned again by the next run; `Plan.carried_lines`).
- An order with a line in a still-pending batch (`pending_orders`) does not move at all until
  that batch is confirmed or failed: a line planned against a pending line would stay booked
  when that batch fails (a clawback of a payment that never went out: a negative net).
- An order's positive line for its payee waits while another payee (the promoter or currency
  it was booked for before) still has a non-zero booked amount for it: the old payee's
  clawback is planned first, and once it is booked the next run pays the new payee. So an
  order's net over all its payees stays in [0, commission + bonus] whatever is carried over.
  (If the old payee's clawback keeps carrying over, as a negative balance, the new payee waits.)

Details of the implementation (`plan_payout`):

- "What is already booked" is clamped to [0, commission + bonus], so a held conversion whose
  commission shrank gives back the difference; an approved one keeps what it was paid when a
  later `payable_at` (a hold released by a new approve) puts fewer instalments due.
- An order booked for another payee (promoter, currency) than its conversion's now is clawed
  back from that payee. An order booked but missing from the entitlements does not move: only
  its conversion can say it was rejected or reversed.
- Holding and instalments follow the order's rule set (its `rule_version`; `book.at(order_ts)`
  when the book has no such version); the minimum payout and points cashing the cut-off's.
- Points (`points_cashable`): one POINTS line per promoter cashing whole currency units of his
  points of approved, matured conversions not cashed yet, in the currency he earned most in
  (ties: the first by name); order_id '', revision 0, payable_at the cut-off.
- Lines and payouts are sorted (promoter, currency, kind, order_id): same inputs, same plan.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from decimal import Decimal

import msgspec

from schemas.payouts import CLAWBACK, COMMISSION, POINTS
from streams.logic.payouts.ledger import Ledger, Payee, fold
from streams.logic.payouts.money import exact, round_down
from streams.logic.payouts.schedule import Due, due
from streams.logic.rules.checks import APPROVED, REJECTED, REVERSED
from streams.logic.rules.ruleset import RuleBook, RuleSet

#: statuses whose target is 0: the order will never be paid, and what was paid comes back
ENDED = frozenset({REJECTED, REVERSED})
ZERO = Decimal(0)


class Entitlement(msgspec.Struct, frozen=True, kw_only=True):
    """One conversion as `conversions_current` shows it, with what payouts need."""

    order_id: str
    revision: int
    promoter_id: str
    currency: str
    status: str  # approved | held | rejected | reversed (after reviews)
    commission: Decimal
    bonus: Decimal
    points: int
    order_ts: int
    payable_at: int  # epoch ms when it is (or was) payable; 0 when not approved
    rule_version: str


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a payout batch: an order's movement, or a promoter's cashed points."""

    promoter_id: str
    currency: str
    order_id: str  # '' for a points line
    revision: int
    kind: str  # COMMISSION | CLAWBACK | POINTS
    part: int  # instalments due so far (1 when not paid in instalments)
    parts: int  # instalments in all (1 when not paid in instalments)
    amount: Decimal  # exact, 4 places; negative for a clawback
    points: int  # points cashed (POINTS lines)
    payable_at: int
    order_ts: int


class Payout(msgspec.Struct, frozen=True, kw_only=True):
    """What one promoter is paid in one currency by one batch."""

    promoter_id: str
    currency: str
    lines_total: Decimal  # sum of the batch's lines for him
    carried_in: Decimal  # rounding remainder of his earlier batches
    amount: Decimal  # lines_total + carried_in, rounded down to the minor unit
    carried_out: Decimal  # amount's remainder, carried to the next batch
    points_cashed: int
    lines: int


class Carry(msgspec.Struct, frozen=True, kw_only=True):
    """A promoter not paid this time: his balance is below the minimum, or negative."""

    promoter_id: str
    currency: str
    balance: Decimal  # his new lines + his remainder (`Payout.carried_in`), not rounded
    lines: int


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    lines: list[Line]  # the batch's
    payouts: list[Payout]
    carried: list[Carry]
    #: the lines of the carried payees: planned, not in the batch (the next run plans them again)
    carried_lines: list[Line] = []


def minimum_for(run: RuleSet, currency: str) -> Decimal:
    """The minimum payout in `currency` under the run's rule set: `minimum_payouts`, else `minimum_payout`."""
    return run.minimum_payouts.get(currency, run.minimum_payout)


def rules_for(ent: Entitlement, book: RuleBook) -> RuleSet:
    """The rule set that priced `ent`: its `rule_version`, else the one in force at its order."""
    for rules in book.rule_sets:
        if rules.version == ent.rule_version:
            return rules
    return book.at(ent.order_ts)


def target(ent: Entitlement, booked: Decimal, cutoff_ms: int, rules: RuleSet) -> tuple[Decimal, Due | None]:
    """What `ent`'s payee should have been booked for it by `cutoff_ms`, given `booked` so far;
    with the instalment schedule when it is what sets the target (approved and due)."""
    if ent.status in ENDED or not ent.promoter_id:
        return ZERO, None
    total = max(ent.commission + ent.bonus, ZERO)
    kept = min(max(booked, ZERO), total)
    if ent.status == APPROVED:
        owed = due(total, ent.payable_at, cutoff_ms, rules)
        if owed.amount >= kept:
            return owed.amount, owed
    return kept, None


def plan_payout(entitlements: Iterable[Entitlement], booked: Iterable[Line], booked_payouts: Iterable[Payout],
                cutoff_ms: int, book: RuleBook, pending_payouts: Iterable[Payout] = (), *,
                pending_orders: Collection[str] = ()) -> Plan:
    """The next batch at `cutoff_ms` (module docstring): `booked` are the lines of pending and
    paid batches, `booked_payouts` their payouts, `pending_payouts` those of them whose batch is
    still pending (their leftover remainder is not spent before they are confirmed: `ledger`),
    `pending_orders` the order ids with a line in a pending batch (they do not move)."""
    run = book.at(cutoff_ms)
    ledger = fold(booked, booked_payouts, pending_payouts)
    latest: dict[str, Entitlement] = {}
    for ent in entitlements:
        if ent.order_id not in latest or ent.revision > latest[ent.order_id].revision:
            latest[ent.order_id] = ent
    frozen = frozenset(pending_orders)
    lines = [ln for ent in latest.values() if ent.order_id not in frozen
             for ln in _order_lines(ent, ledger, cutoff_ms, rules_for(ent, book))]
    if run.points_cashable:
        lines += _points_lines(latest.values(), ledger, cutoff_ms, run)
    return _batch(lines, ledger, run)


def _order_lines(ent: Entitlement, ledger: Ledger, cutoff_ms: int, rules: RuleSet) -> list[Line]:
    payee = (ent.promoter_id, ent.currency)
    booked = ledger.orders.get(ent.order_id, {})
    #: another payee still holds some of it: the payee's positive line waits for that clawback
    elsewhere = any(b.amount for p, b in booked.items() if p != payee)
    out = []
    for p in sorted(set(booked) | {payee}):
        already = booked[p].amount if p in booked else ZERO
        amount, owed = target(ent, already, cutoff_ms, rules) if p == payee else (ZERO, None)
        delta = exact(amount - already)
        if not delta or (delta > 0 and p == payee and elsewhere):
            continue
        if owed is not None:
            part, parts, payable_at = owed.part, owed.parts, owed.due_at
        else:  # without the schedule a line only moves back what was booked: p is in `booked`
            part, parts, payable_at = booked[p].part, booked[p].parts, ent.payable_at
        out.append(Line(promoter_id=p[0], currency=p[1], order_id=ent.order_id, revision=ent.revision,
                        kind=COMMISSION if delta > 0 else CLAWBACK, part=part, parts=parts, amount=delta,
                        points=0, payable_at=payable_at, order_ts=ent.order_ts))
    return out


def _points_lines(ents: Iterable[Entitlement], ledger: Ledger, cutoff_ms: int, run: RuleSet) -> list[Line]:
    """Per promoter, his matured points not cashed yet, in whole currency units."""
    if run.points_per_unit <= 0:
        return []
    points: dict[str, int] = defaultdict(int)
    earned: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for ent in ents:
        if ent.status == APPROVED and ent.promoter_id and ent.payable_at <= cutoff_ms:
            points[ent.promoter_id] += ent.points
            earned[ent.promoter_id][ent.currency] += ent.commission + ent.bonus
    out = []
    for promoter in sorted(points):
        units = (points[promoter] - ledger.points.get(promoter, 0)) // run.points_per_unit
        if units <= 0:
            continue
        currency = min(earned[promoter].items(), key=lambda item: (-item[1], item[0]))[0]
        out.append(Line(promoter_id=promoter, currency=currency, order_id="", revision=0, kind=POINTS, part=1,
                        parts=1, amount=exact(Decimal(units)), points=units * run.points_per_unit,
                        payable_at=cutoff_ms, order_ts=0))
    return out


def _batch(lines: list[Line], ledger: Ledger, run: RuleSet) -> Plan:
    """Per payee: pay the lines with his remainder, rounded down, if that is above 0 and reaches
    the minimum; else carry them over."""
    by_payee: dict[Payee, list[Line]] = defaultdict(list)
    for ln in lines:
        by_payee[(ln.promoter_id, ln.currency)].append(ln)
    paid: list[Line] = []
    payouts: list[Payout] = []
    carried: list[Carry] = []
    carried_lines: list[Line] = []
    for (promoter, currency), mine in sorted(by_payee.items()):
        lines_total = sum((ln.amount for ln in mine), ZERO)
        carried_in = ledger.remainders.get((promoter, currency), ZERO)
        balance = lines_total + carried_in
        amount = round_down(balance, currency)
        mine.sort(key=lambda ln: (ln.kind, ln.order_id))
        if amount <= 0 or amount < minimum_for(run, currency):
            carried.append(Carry(promoter_id=promoter, currency=currency, balance=balance, lines=len(mine)))
            carried_lines += mine
            continue
        paid += mine
        payouts.append(Payout(promoter_id=promoter, currency=currency, lines_total=lines_total,
                              carried_in=carried_in, amount=amount, carried_out=balance - amount,
                              points_cashed=sum(ln.points for ln in mine if ln.kind == POINTS), lines=len(mine)))
    return Plan(lines=paid, payouts=payouts, carried=carried, carried_lines=carried_lines)
