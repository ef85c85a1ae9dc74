"""Properties of pricing one order (hypothesis). The promoter stage's properties (order of
arrival, caps over a month) are in tests/logic/test_pricing.py."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.logic.rules.commission import CUSTOMER_ORDERS, EXISTING_CUSTOMER, RECURRING_MONTHS, payable, price
from streams.logic.rules.ruleset import RuleSet

D = Decimal
RULES = RuleSet(cap_per_order=D(5_000), renewal_level_rates=tuple(D(r) for r in ("0.05", "0.06", "0.07", "0.08",
                                                                                 "0.09")))

amounts = st.decimals(min_value=-100, max_value=10**9, places=4, allow_nan=False, allow_infinity=False)
rooms = st.none() | st.decimals(min_value=-1_000, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)
rules_ = st.sampled_from(["", "", "", EXISTING_CUSTOMER, RECURRING_MONTHS, CUSTOMER_ORDERS])


@settings(max_examples=300, deadline=None)
@given(amount=amounts, level=st.integers(1, 5), tier=st.integers(0, 2), first=st.booleans(), renewal=st.booleans(),
       rule=rules_, customer_room=rooms, month_room=rooms)
def test_commission_is_between_zero_and_every_cap(amount: Decimal, level: int, tier: int, first: bool, renewal: bool,
                                                   rule: str, customer_room: Decimal | None,
                                                   month_room: Decimal | None) -> None:
    p = price(amount, level, tier, first, renewal, RULES, rule=rule, customer_room=customer_room,
              month_room=month_room)
    rooms_set = [RULES.cap_per_order] + [r for r in (customer_room, month_room) if r is not None]
    limits = [max(r, D(0)) for r in rooms_set]  # an overdrawn room leaves 0, never less
    uncapped = (max(amount, D(0)) * p.rate).quantize(D("0.0001"))
    assert (p.level, p.tier) == (level, tier)
    assert p.rate == (RULES.renewal_level_rates if renewal else RULES.level_rates)[level - 1] + (
        RULES.tiers[tier - 1].bonus_rate if tier else 0)
    if rule:  # a customer rule takes everything away and names itself
        assert (p.commission, p.bonus, p.points, p.cap) == (D(0), D(0), 0, rule)
        return
    assert D(0) <= p.commission <= min(limits)
    assert p.commission == min([uncapped] + limits)  # the tightest limit wins
    assert p.cap_applied == (uncapped > min(rooms_set))  # named exactly when a limit is below the commission
    assert p.bonus == (RULES.new_customer_bonus if first else 0)
    assert p.points == int((p.commission + p.bonus) * RULES.points_per_unit) >= 0
    exponent = p.commission.as_tuple().exponent
    assert isinstance(exponent, int) and -exponent <= 4  # Decimal(18, 4)


@settings(max_examples=200, deadline=None)
@given(amount=amounts, level=st.integers(1, 5), tier=st.integers(0, 2), first=st.booleans(),
       status=st.sampled_from(["rejected", "reversed", "approved", "held"]), month_room=rooms)
def test_only_approved_and_held_are_payable(amount: Decimal, level: int, tier: int, first: bool, status: str,
                                            month_room: Decimal | None) -> None:
    p = price(amount, level, tier, first, False, RULES, month_room=month_room)
    owed = payable(p, status)
    if status in ("rejected", "reversed"):
        assert (owed.commission, owed.bonus, owed.points) == (D(0), D(0), 0)
        assert (owed.level, owed.rate, owed.tier, owed.cap) == (p.level, p.rate, p.tier, p.cap)
    else:
        assert owed == p
