"""Money in payouts: minor units per currency and the rounding rule.

The rounding rule: lines stay exact (4 places, as stored, like every commission). Only a
promoter's payout is rounded, **down** to his currency's minor unit (cents; whole yen; fils),
and the remainder (less than one minor unit) carries to his next batch, where it is added
to the next lines before rounding again. So nobody is ever overpaid and no fraction is lost:
over all batches, payouts + the last remainder = the sum of the lines.
"""
from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

#: ISO 4217 minor digits that differ from the usual 2
MINOR_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                     "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
DEFAULT_DIGITS = 2
#: the exactness of lines and commissions (the `Decimal(18, 4)` columns)
LINE_PLACES = Decimal("0.0001")


def minor_digits(currency: str) -> int:
    """Decimal places of `currency`'s minor unit (2 unless ISO 4217 says otherwise)."""
    return MINOR_DIGITS.get(currency.upper(), DEFAULT_DIGITS)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount that can be paid in `currency`: 0.01 USD, 1 JPY, 0.001 KWD."""
    return Decimal(1).scaleb(-minor_digits(currency))


def round_down(amount: Decimal, currency: str) -> Decimal:
    """`amount` cut to `currency`'s minor unit, toward zero (a payout is never negative)."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_DOWN)


def exact(amount: Decimal) -> Decimal:
    """`amount` at the 4 places lines are stored with (already exact for sums of lines)."""
    return amount.quantize(LINE_PLACES)
