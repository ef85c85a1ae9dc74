"""Commission pricing: level rate + tier, cap, new-customer bonus, points, level by points, payable."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
import pytest

from streams.logic.rules.commission import payable, price
from streams.logic.rules.ruleset import RuleSet

D = Decimal


@dataclass
class Case:
    name: str
    amount: str
    #: level, rate, tier, commission, bonus, points, cap_applied (after `payable` in `status`)
    expected: tuple[int, str, int, str, str, int, bool]
    level: int = 1  # the promoter's level in the reference data
    points_before: int = 0
    volume_before: str = "0"
    first: bool = False
    status: str = "approved"
    rules: dict = field(default_factory=dict)


CASES = [
    # level rates on the paid amount
    Case("level 1", "100", (1, "0.15", 0, "15", "0", 1500, False)),
    Case("level 2", "100", (2, "0.20", 0, "20", "0", 2000, False), level=2),
    Case("level 3", "100", (3, "0.25", 0, "25", "0", 2500, False), level=3),
    Case("level 4", "100", (4, "0.28", 0, "28", "0", 2800, False), level=4),
    Case("level 5", "100", (5, "0.31", 0, "31", "0", 3100, False), level=5),
    Case("reference level above the table is capped at 5", "100", (5, "0.31", 0, "31", "0", 3100, False), level=7),
    Case("reference level 0 counts as 1", "100", (1, "0.15", 0, "15", "0", 1500, False), level=0),
    # Decimal exactness
    Case("cents stay exact", "19.99", (1, "0.15", 0, "2.9985", "0", 299, False)),
    Case("4 places, rounded", "33.3333", (4, "0.28", 0, "9.3333", "0", 933, False), level=4),
    Case("half to even: 0.00015 -> 0.0002", "0.0006", (3, "0.25", 0, "0.0002", "0", 0, False), level=3),
    Case("half to even: 0.00005 -> 0.0000", "0.0002", (3, "0.25", 0, "0", "0", 0, False), level=3),
    Case("zero amount", "0", (1, "0.15", 0, "0", "0", 0, False)),
    Case("negative amount earns nothing", "-10", (1, "0.15", 0, "0", "0", 0, False)),
    # cap per order
    Case("cap hit", "1000000", (1, "0.15", 0, "100000", "0", 10_000_000, True)),
    Case("exactly the cap is not cut", "500000", (2, "0.20", 0, "100000", "0", 10_000_000, False), level=2),
    Case("just under the cap", "499999.99", (2, "0.20", 0, "99999.998", "0", 9_999_999, False), level=2),
    Case("just over the cap", "500000.01", (2, "0.20", 0, "100000", "0", 10_000_000, True), level=2),
    Case("cap is a setting", "100", (1, "0.15", 0, "10", "0", 1000, True), rules={"cap_per_order": D(10)}),
    Case("bonus on top of a capped commission", "1000000", (1, "0.15", 0, "100000", "50", 10_005_000, True),
         first=True),
    # monthly volume tiers
    Case("volume under tier 1", "100", (1, "0.15", 0, "15", "0", 1500, False), volume_before="9999.9999"),
    Case("volume at tier 1", "100", (1, "0.16", 1, "16", "0", 1600, False), volume_before="10000"),
    Case("volume under tier 2", "100", (1, "0.16", 1, "16", "0", 1600, False), volume_before="49999.99"),
    Case("volume at tier 2", "100", (1, "0.17", 2, "17", "0", 1700, False), volume_before="50000"),
    Case("huge volume stays tier 2", "100", (5, "0.33", 2, "33", "0", 3300, False), level=5,
         volume_before="1000000000"),
    # new-customer bonus and points
    Case("bonus on the first order", "100", (1, "0.15", 0, "15", "50", 6500, False), first=True),
    Case("points floor (commission + bonus) * 100", "19.99", (1, "0.15", 0, "2.9985", "50", 5299, False),
         first=True),
    Case("points per unit is a setting", "19.99", (1, "0.15", 0, "2.9985", "0", 2, False),
         rules={"points_per_unit": 1}),
    # level raised by points from earlier months
    Case("99 999 points: level 1", "100", (1, "0.15", 0, "15", "0", 1500, False), points_before=99_999),
    Case("100 000 points: level 2", "100", (2, "0.20", 0, "20", "0", 2000, False), points_before=100_000),
    Case("500 000 points: level 3", "100", (3, "0.25", 0, "25", "0", 2500, False), points_before=500_000),
    Case("2 000 000 points: level 4", "100", (4, "0.28", 0, "28", "0", 2800, False), points_before=2_000_000),
    Case("10 000 000 points: level 5", "100", (5, "0.31", 0, "31", "0", 3100, False), points_before=10_000_000),
    Case("never above 5", "100", (5, "0.31", 0, "31", "0", 3100, False), points_before=10**12),
    Case("never below the reference level", "100", (4, "0.28", 0, "28", "0", 2800, False), level=4,
         points_before=100_000),
    # payable by status
    Case("held keeps its commission", "100", (1, "0.15", 0, "15", "50", 6500, False), first=True, status="held"),
    Case("rejected pays nothing, breakdown kept", "100", (2, "0.21", 1, "0", "0", 0, False), level=2,
         volume_before="10000", first=True, status="rejected"),
    Case("reversed pays nothing, cap flag kept", "1000000", (1, "0.15", 0, "0", "0", 0, True), first=True,
         status="reversed"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_price(case: Case) -> None:
    rules = msgspec.structs.replace(RuleSet(), **case.rules)
    p = payable(price(D(case.amount), case.level, case.points_before, D(case.volume_before), case.first, rules),
                case.status)
    level, rate, tier, commission, bonus, points, cap = case.expected
    assert (p.level, p.rate, p.tier, p.commission, p.bonus, p.points, p.cap_applied) == (
        level, D(rate), tier, D(commission), D(bonus), points, cap)
    assert all(isinstance(v, Decimal) for v in (p.rate, p.commission, p.bonus))
    assert -p.commission.as_tuple().exponent <= 4  # Decimal(18, 4): never more than 4 places
