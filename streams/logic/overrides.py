"""Two-level referrals: the override line a recruiting promoter earns on his recruit's order.

A promoter's `parent_promoter_id` (who recruited him, as of the order's time) earns
`override_rate` of the recruit's commission (not of the bonus), on orders within
`override_months` of the recruit joining (0: always). The line is a conversion row of its
own, `order_id` + `OVERRIDE_SUFFIX`, credited to the parent, with `override_of` naming the
recruit. It is derived from the recruit's conversion each time that one is sent, with the
same status, reasons and revision, so it is reversed or rejected with it. No override on
self-recruitment; a two-promoter cycle is cut where the parent is looked up (the account
join sends no parent whose own parent is the promoter). A line that no longer applies (the
order moved to another promoter, the recruit's parent is gone) is sent once more,
`withdrawn`: reversed, earning nothing.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

import msgspec

from schemas.records import Conversion, DecisionRec
from streams.logic.rules.calendar import add_months
from streams.logic.rules.checks import REVERSED
from streams.logic.rules.ruleset import RuleSet

OVERRIDE_SUFFIX = "#override"
WITHDRAWN = "override_withdrawn"
_Q = Decimal("0.0001")


def earns(d: DecisionRec, rules: RuleSet, zone: ZoneInfo) -> bool:
    """Whether the recruiter of `d`'s promoter earns an override on it."""
    parent = d.parent_promoter_id
    if not parent or parent == d.promoter_id or rules.override_rate <= 0:
        return False
    return not (rules.override_months and d.promoter_joined_at
                and d.order_ts >= add_months(d.promoter_joined_at, rules.override_months, zone))


def withdrawn(c: Conversion, parent: str) -> Conversion:
    """The line `parent` earned on `c`'s order, taken back: the order left his recruit, or
    no longer earns an override (sent at `c`'s revision, so it replaces the old line)."""
    reasons = [*c.reasons, WITHDRAWN]
    return msgspec.structs.replace(
        c, order_id=c.order_id + OVERRIDE_SUFFIX, promoter_id=parent, override_of=c.promoter_id, status=REVERSED,
        reasons=reasons, rate=Decimal(0), tier=0, level=0, commission=Decimal(0), bonus=Decimal(0), points=0,
        cap="", cap_applied=False, first_order=False)


def line(c: Conversion, d: DecisionRec, rules: RuleSet, zone: ZoneInfo) -> Conversion | None:
    """The parent's override line of conversion `c` (already payable), or None."""
    if not earns(d, rules, zone):
        return None
    commission = (c.commission * rules.override_rate).quantize(_Q, ROUND_HALF_EVEN)
    return msgspec.structs.replace(
        c, order_id=c.order_id + OVERRIDE_SUFFIX, promoter_id=d.parent_promoter_id, override_of=c.promoter_id,
        rate=rules.override_rate, tier=0, level=0, commission=commission, bonus=Decimal(0),
        points=0, cap="", cap_applied=False, first_order=False)
