"""What earlier batches booked, folded for the planner: per order and payee the net amount,
per promoter the points cashed, per payee the rounding remainder. Booked = the lines and
payouts of pending and paid batches (a failed batch released its lines: not passed in).

The remainder a run may spend is the booked lines - the booked payouts, less what pending
batches left over: a pending batch may still fail, and a later batch that had spent its
leftover would then have paid a fraction nobody earned. What a pending batch spent stays
spent. So the remainder is never negative, whatever pending batches become (a later
confirmation only adds to it), and it is all paid out with the payee's next lines.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

import msgspec

#: (promoter_id, currency): who is paid, in what
Payee = tuple[str, str]
ZERO = Decimal(0)


class BookedLine(Protocol):
    """The fields of `plan.Line` the ledger reads (plan imports the ledger, not the reverse)."""

    @property
    def promoter_id(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def order_id(self) -> str: ...  # '' for a points line
    @property
    def part(self) -> int: ...
    @property
    def parts(self) -> int: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def points(self) -> int: ...


class BookedPayout(Protocol):
    """The fields of `plan.Payout` the ledger reads."""

    @property
    def promoter_id(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def lines_total(self) -> Decimal: ...


class OrderBooking(msgspec.Struct, frozen=True, kw_only=True):
    """An order's booked lines for one payee, added up."""

    amount: Decimal
    part: int  # the most instalments any of its lines paid
    parts: int


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    orders: dict[str, dict[Payee, OrderBooking]]
    points: dict[str, int]  # promoter -> points cashed
    remainders: dict[Payee, Decimal]  # booked lines - booked payouts - pending batches' leftovers

    def booked(self, order_id: str, payee: Payee) -> Decimal:
        found = self.orders.get(order_id, {}).get(payee)
        return found.amount if found else ZERO


def fold(lines: Iterable[BookedLine], payouts: Iterable[BookedPayout],
         pending: Iterable[BookedPayout] = ()) -> Ledger:
    """The ledger of booked `lines` and their batches' `payouts`, of which `pending` are those
    of batches not confirmed yet."""
    amounts: dict[str, dict[Payee, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    parts: dict[str, dict[Payee, tuple[int, int]]] = defaultdict(dict)
    points: dict[str, int] = defaultdict(int)
    remainders: dict[Payee, Decimal] = defaultdict(Decimal)
    for ln in lines:
        payee = (ln.promoter_id, ln.currency)
        remainders[payee] += ln.amount
        if not ln.order_id:  # a points line
            points[ln.promoter_id] += ln.points
            continue
        amounts[ln.order_id][payee] += ln.amount
        part, of = parts[ln.order_id].get(payee, (0, 0))
        parts[ln.order_id][payee] = (max(part, ln.part), max(of, ln.parts))
    for p in payouts:
        remainders[(p.promoter_id, p.currency)] -= p.amount
    for p in pending:
        remainders[(p.promoter_id, p.currency)] -= max(p.lines_total - p.amount, ZERO)
    orders = {oid: {payee: OrderBooking(amount=amount, part=parts[oid][payee][0], parts=parts[oid][payee][1])
                    for payee, amount in by_payee.items()}
              for oid, by_payee in amounts.items()}
    return Ledger(orders=orders, points=dict(points), remainders=dict(remainders))
