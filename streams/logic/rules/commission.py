"""Commission pricing (SPEC §5, docs/rules.md "Commission"): level rate (renewal rate for
renewals) + monthly volume tier; the customer rules that take an order's commission away
(existing customer, recurring period, orders per customer); the caps per order, per
customer and per promoter-month; the new-customer bonus; points. Pure; money stays
`Decimal`, rounded half-even to 4 places like the `Decimal(18, 4)` columns it lands in.

Which orders come before which (volume, caps, points of earlier months) is the promoter
stage's business (streams/logic/pricing.py); these functions price one order given that.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

import msgspec

from schemas.records import DecisionRec
from streams.logic.rules.calendar import add_months
from streams.logic.rules.checks import PAYABLE_STATUSES, REJECTED, REVERSED
from streams.logic.rules.ruleset import RuleSet

_Q = Decimal("0.0001")
ZERO = Decimal(0)
#: `cap` values: the caps, in the order they apply, then the customer rules
ORDER_CAP, CUSTOMER_CAP, MONTH_CAP = "order", "customer", "promoter_month"
EXISTING_CUSTOMER, RECURRING_MONTHS, CUSTOMER_ORDERS = "existing_customer", "recurring_months", "customer_orders"


class Pricing(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    level: int
    rate: Decimal
    tier: int
    commission: Decimal
    bonus: Decimal
    points: int
    cap: str = ""  # which limit cut the commission ('' for none)

    @property
    def cap_applied(self) -> bool:
        return bool(self.cap)


#: what a conversion without a promoter (`unknown_promoter`) shows: nothing priced
NOT_PRICED = Pricing(level=0, rate=ZERO, tier=0, commission=ZERO, bonus=ZERO, points=0)


def level_for(base_level: int, points_before: int, rules: RuleSet) -> int:
    """The promoter's level: his reference level, raised by points from earlier months."""
    earned = 1 + sum(1 for threshold in rules.level_points if points_before >= threshold)
    return max(1, min(max(base_level, earned), len(rules.level_rates)))


def tier_for(volume_before: Decimal, rules: RuleSet) -> int:
    """How many volume tiers the promoter's earlier sales this month have reached."""
    return sum(1 for t in rules.tiers if volume_before >= t.volume)


def rate_for(level: int, tier: int, renewal: bool, rules: RuleSet) -> Decimal:
    rates = rules.renewal_level_rates if renewal and rules.renewal_level_rates else rules.level_rates
    return rates[level - 1] + (rules.tiers[tier - 1].bonus_rate if tier else ZERO)


def customer_rule(d: DecisionRec, rules: RuleSet, zone: ZoneInfo) -> str:
    """The customer rule that takes this order's commission away, '' for none."""
    if d.existing_customer and not rules.existing_customers_earn:
        return EXISTING_CUSTOMER
    if rules.max_orders_per_customer and d.customer_order > rules.max_orders_per_customer:
        return CUSTOMER_ORDERS
    if rules.recurring_months and d.order_ts >= add_months(d.customer_first_ts, rules.recurring_months, zone):
        return RECURRING_MONTHS
    return ""


def price(
    amount: Decimal, level: int, tier: int, first_order: bool, renewal: bool, rules: RuleSet, *,
    rule: str = "", customer_room: Decimal | None = None, month_room: Decimal | None = None,
) -> Pricing:
    """Price one order of `amount` (after discount) at `level` and `tier`. `rule` (a customer
    rule's name) takes the commission and bonus away; `customer_room` and `month_room` are
    what the customer and the promoter's month may still earn (None: no such cap)."""
    rate = rate_for(level, tier, renewal, rules)
    commission = (max(amount, ZERO) * rate).quantize(_Q, ROUND_HALF_EVEN)
    cap = ""
    if rule:
        commission, cap = ZERO, rule
    else:
        for name, room in ((ORDER_CAP, rules.cap_per_order), (CUSTOMER_CAP, customer_room),
                           (MONTH_CAP, month_room)):
            if room is not None and commission > room:
                commission, cap = max(room, ZERO), name
    bonus = rules.new_customer_bonus if first_order and not rule else ZERO
    points = int((commission + bonus) * rules.points_per_unit)
    return Pricing(level=level, rate=rate, tier=tier, commission=commission, bonus=bonus, points=points, cap=cap)


def to_program(amount: Decimal, rate: Decimal) -> Decimal:
    """An order's amount in the program currency: amount x rate, half-even to 4 places."""
    return (amount * rate).quantize(_Q, ROUND_HALF_EVEN)


def payable(p: Pricing, status: str) -> Pricing:
    """What the promoter is owed in `status`: nothing when rejected or reversed."""
    if status in PAYABLE_STATUSES:
        return p
    return msgspec.structs.replace(p, commission=ZERO, bonus=ZERO, points=0)


def counts(d: DecisionRec, month_closes: int) -> bool:
    """Whether an order counts towards its promoter's month (volume for tiers, the monthly
    and customer caps, points for levels): not rejected, and not reversed before the month
    closed (`month_closes`). A reversal after that takes back only its own commission."""
    if d.status == REJECTED:
        return False
    return d.status != REVERSED or d.status_ts >= month_closes
