"""When an approved conversion's money is due: all at `payable_at`, or in monthly instalments.

Instalments (docs/payouts.md): when commission + bonus is above the order's rule set's
`instalment_above` (0 = never), it is paid in `instalment_months` parts; part k (1-based) is
due at payable_at + (k - 1) calendar months (UTC, the day clamped to the month's end). Each
part is total / N rounded down to 4 places and the last takes the rest, so the parts add up
exactly to the total.
"""
from __future__ import annotations

import calendar
from datetime import date, timedelta
from decimal import ROUND_DOWN, Decimal

import msgspec

from schemas.units import DAY_MS
from streams.logic.payouts.money import LINE_PLACES
from streams.logic.rules.ruleset import RuleSet

_EPOCH = date(1970, 1, 1)


class Due(msgspec.Struct, frozen=True, kw_only=True):
    """What of an order is due by a cut-off: `amount` of parts 1..`part` of `parts`."""

    amount: Decimal
    part: int  # parts due so far (0: none yet)
    parts: int  # parts in all (1: not paid in instalments)
    due_at: int  # epoch ms the last due part became due (payable_at when none is)


def add_months(ms: int, months: int) -> int:
    """`ms` moved by whole calendar months in UTC, the day clamped to the month's end."""
    days, in_day = divmod(ms, DAY_MS)
    d = _EPOCH + timedelta(days=days)
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return (date(year, month, day) - _EPOCH).days * DAY_MS + in_day


def parts_of(total: Decimal, rules: RuleSet) -> int:
    """How many parts `total` is paid in under `rules` (1: all at once)."""
    if rules.instalment_above > 0 and total > rules.instalment_above and rules.instalment_months > 1:
        return rules.instalment_months
    return 1


def part_amounts(total: Decimal, parts: int) -> list[Decimal]:
    """`total` cut into `parts`: each total / parts rounded down, the last one the rest."""
    each = (total / parts).quantize(LINE_PLACES, rounding=ROUND_DOWN)
    return [each] * (parts - 1) + [total - each * (parts - 1)]


def due(total: Decimal, payable_at: int, cutoff_ms: int, rules: RuleSet) -> Due:
    """What of `total`, payable from `payable_at`, is due by `cutoff_ms` under the order's `rules`."""
    parts = parts_of(total, rules)
    amounts = part_amounts(total, parts)
    times = [add_months(payable_at, k) for k in range(parts)]
    part = sum(1 for t in times if t <= cutoff_ms)
    return Due(amount=sum(amounts[:part], Decimal(0)), part=part, parts=parts,
               due_at=times[part - 1] if part else payable_at)
