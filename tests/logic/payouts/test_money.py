"""Minor units, rounding down, calendar months and instalment parts."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.logic.payouts.money import minor_digits, minor_unit, round_down
from streams.logic.payouts.schedule import add_months, due, part_amounts
from streams.logic.rules.ruleset import RuleSet
from tests.logic.payouts.books import DAY, T0, places

D = Decimal
HOUR = 3_600_000

ROUNDING = [
    # (currency, amount, rounded down, minor digits)
    ("USD", "10.4999", "10.49", 2),
    ("usd", "10.4999", "10.49", 2),
    ("EUR", "0.0099", "0.00", 2),
    ("XYZ", "1.239", "1.23", 2),  # unknown currencies: 2
    ("JPY", "150.9999", "150", 0),
    ("KRW", "1.5", "1", 0),
    ("VND", "99.99", "99", 0),
    ("CLP", "7", "7", 0),
    ("ISK", "0.5", "0", 0),
    ("UGX", "2.0001", "2", 0),
    ("XAF", "3.3", "3", 0),
    ("XOF", "3.3", "3", 0),
    ("BHD", "1.2345", "1.234", 3),
    ("KWD", "0.0009", "0.000", 3),
    ("OMR", "5.5555", "5.555", 3),
    ("JOD", "5.0001", "5.000", 3),
    ("TND", "5.9999", "5.999", 3),
    ("USD", "-1.239", "-1.23", 2),  # toward zero (never paid: a negative balance carries)
]


@pytest.mark.parametrize("currency,amount,expected,digits", ROUNDING)
def test_round_down(currency: str, amount: str, expected: str, digits: int) -> None:
    rounded = round_down(D(amount), currency)
    assert rounded == D(expected) and places(rounded) == digits
    assert minor_digits(currency) == digits and minor_unit(currency) == D(1).scaleb(-digits)


MONTHS = [
    # (from, months, to): UTC calendar months, the day clamped, the time of day kept
    ("2026-01-31T10:00", 1, "2026-02-28T10:00"),
    ("2028-01-31T00:00", 1, "2028-02-29T00:00"),
    ("2026-01-31T23:59", 2, "2026-03-31T23:59"),
    ("2026-03-31T00:00", 1, "2026-04-30T00:00"),
    ("2026-11-15T12:00", 2, "2027-01-15T12:00"),
    ("2026-12-31T00:00", 12, "2027-12-31T00:00"),
    ("2026-05-01T00:00", 0, "2026-05-01T00:00"),
    ("1969-12-31T00:00", 1, "1970-01-31T00:00"),
]


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("start,months,end", MONTHS)
def test_add_months(start: str, months: int, end: str) -> None:
    assert add_months(ms(start), months) == ms(end)


INSTALMENTS = RuleSet(instalment_above=D(1000), instalment_months=3)
DUE = [
    # (total, cut-off hours after payable_at, (amount due, part, parts))
    ("3000.01", -1, ("0", 0, 3)),
    ("3000.01", 0, ("1000.0033", 1, 3)),
    ("3000.01", 28 * 24, ("2000.0066", 2, 3)),  # payable 2026-01-31: the second part on 02-28
    ("3000.01", 59 * 24 - 1, ("2000.0066", 2, 3)),
    ("3000.01", 59 * 24, ("3000.01", 3, 3)),  # 03-31
    ("1000", 0, ("1000", 1, 1)),  # at the threshold: all at once
    ("1000.0001", 0, ("333.3333", 1, 3)),
    ("0", 0, ("0", 1, 1)),
]


@pytest.mark.parametrize("total,hours,expected", DUE)
def test_due(total: str, hours: int, expected: tuple[str, int, int]) -> None:
    payable = ms("2026-01-31T00:00")
    owed = due(D(total), payable, payable + hours * HOUR, INSTALMENTS)
    assert (owed.amount, owed.part, owed.parts) == (D(expected[0]), expected[1], expected[2])


@settings(max_examples=300, deadline=None)
@given(total=st.decimals(min_value=0, max_value=10**9, places=4), parts=st.integers(1, 36))
def test_parts_add_up_exactly(total: Decimal, parts: int) -> None:
    amounts = part_amounts(total, parts)
    assert len(amounts) == parts and sum(amounts, D(0)) == total
    assert len(set(amounts[:-1])) <= 1 and all(places(a) <= 4 for a in amounts)
    assert D(0) <= amounts[-1] - amounts[0] < parts * D("0.0001")


@settings(max_examples=300, deadline=None)
@given(start=st.integers(T0 - 3000 * DAY, T0 + 3000 * DAY), months=st.integers(0, 48))
def test_months_are_calendar_months(start: int, months: int) -> None:
    end = add_months(start, months)
    assert end % DAY == start % DAY  # the time of day is kept
    assert 28 * months * DAY <= end - start <= 31 * months * DAY
    assert add_months(start, months + 1) > end


@settings(max_examples=300, deadline=None)
@given(amount=st.decimals(min_value=0, max_value=10**12, places=4),
       currency=st.sampled_from(["USD", "JPY", "KWD", "EUR", "CLP", "BHD"]))
def test_rounding_never_overpays_nor_loses_a_unit(amount: Decimal, currency: str) -> None:
    rounded = round_down(amount, currency)
    assert D(0) <= amount - rounded < minor_unit(currency)
    assert round_down(rounded, currency) == rounded
