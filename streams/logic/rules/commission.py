"""Commission pricing (SPEC §5): level rate + monthly volume tier, capped per order,
new-customer bonus, points. Pure; money stays `Decimal`, rounded to 4 places like the
`Decimal(18, 4)` columns it lands in."""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from schemas.records import Conversion
from streams.logic.rules.checks import PAYABLE_STATUSES
from streams.logic.rules.ruleset import RuleSet

_Q = Decimal("0.0001")
ZERO = Decimal(0)


class Pricing(msgspec.Struct, frozen=True, kw_only=True):
    level: int
    rate: Decimal
    tier: int
    commission: Decimal
    bonus: Decimal
    points: int
    cap_applied: bool


def level_for(base_level: int, points_before: int, rules: RuleSet) -> int:
    """The promoter's level: his reference level, raised by points from earlier months."""
    earned = 1 + sum(1 for threshold in rules.level_points if points_before >= threshold)
    return max(1, min(max(base_level, earned), len(rules.level_rates)))


def tier_for(volume_before: Decimal, rules: RuleSet) -> int:
    """How many volume tiers the promoter's earlier sales this month have reached."""
    return sum(1 for t in rules.tiers if volume_before >= t.volume)


def price(
    amount: Decimal, base_level: int, points_before: int, volume_before: Decimal,
    first_order: bool, rules: RuleSet,
) -> Pricing:
    """Price one order of `amount` (already after discount) for a promoter."""
    level = level_for(base_level, points_before, rules)
    tier = tier_for(volume_before, rules)
    rate = rules.level_rates[level - 1] + (rules.tiers[tier - 1].bonus_rate if tier else ZERO)
    raw = (max(amount, ZERO) * rate).quantize(_Q, ROUND_HALF_EVEN)
    commission = min(raw, rules.cap_per_order)
    bonus = rules.new_customer_bonus if first_order else ZERO
    points = int((commission + bonus) * rules.points_per_unit)
    return Pricing(level=level, rate=rate, tier=tier, commission=commission, bonus=bonus,
                   points=points, cap_applied=raw > rules.cap_per_order)


def payable(p: Pricing, status: str) -> Pricing:
    """What the promoter is owed in `status`: nothing when rejected or reversed."""
    if status in PAYABLE_STATUSES:
        return p
    return msgspec.structs.replace(p, commission=ZERO, bonus=ZERO, points=0)


def counted_amount(c: Conversion) -> Decimal:
    """What an order adds to its promoter's monthly volume (the ledger's tiers): its amount
    unless it earns nothing."""
    return c.amount if c.status in PAYABLE_STATUSES else ZERO
