"""Properties of pricing and decisions (hypothesis)."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import AttributionRec, ClickRef, Conversion, OrderRec
from streams.logic import conversions as conv
from streams.logic.rules.commission import payable, price
from streams.logic.rules.ruleset import RuleBook, RuleSet

D = Decimal
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RULES = RuleSet()
CONV_RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
BOOK = RuleBook([RuleSet(version="v1", effective_from=T0),
                 RuleSet(version="v2", effective_from=T0 + 20 * DAY, cap_per_order=D(40),
                         level_rates=tuple(D(r) for r in ("0.18", "0.22", "0.26", "0.29", "0.32")))])
PROMOTERS = {"A": conv.PromoterRef(promoter_id="p-alice", level=2),
             "B": conv.PromoterRef(promoter_id="p-bob", enterprise_since=T0 + 15 * DAY),
             "C": conv.PromoterRef(promoter_id="p-carol", is_employee=True)}
CTX = conv.Context(CONV_RULES, BOOK, lambda code, ts: PROMOTERS.get(code),
                   lambda account, domain, ts: "channel_partner" if ts >= T0 + 25 * DAY else None)

amounts = st.decimals(min_value=0, max_value=10**9, places=4, allow_nan=False, allow_infinity=False)
volumes = st.decimals(min_value=0, max_value=10**12, places=4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(amount=amounts, level=st.integers(1, 5), points_before=st.integers(0, 10**10), volume=volumes,
       first=st.booleans())
def test_commission_is_between_zero_and_the_cap(amount: Decimal, level: int, points_before: int, volume: Decimal,
                                                first: bool) -> None:
    p = price(amount, level, points_before, volume, first, RULES)
    assert D(0) <= p.commission <= RULES.cap_per_order
    assert p.cap_applied == (amount * p.rate > RULES.cap_per_order)
    assert p.commission == min((amount * p.rate).quantize(D("0.0001")), RULES.cap_per_order)
    assert level <= p.level <= 5 and 0 <= p.tier <= 2
    assert p.points == int((p.commission + p.bonus) * 100) >= 0
    assert -p.commission.as_tuple().exponent <= 4


@settings(max_examples=200, deadline=None)
@given(amount=amounts, level=st.integers(1, 5), volume=volumes, first=st.booleans(),
       status=st.sampled_from(["rejected", "reversed", "approved", "held"]))
def test_only_approved_and_held_are_payable(amount: Decimal, level: int, volume: Decimal, first: bool,
                                            status: str) -> None:
    p = price(amount, level, 0, volume, first, RULES)
    owed = payable(p, status)
    if status in ("rejected", "reversed"):
        assert (owed.commission, owed.bonus, owed.points) == (D(0), D(0), 0)
        assert (owed.level, owed.rate, owed.tier, owed.cap_applied) == (p.level, p.rate, p.tier, p.cap_applied)
    else:
        assert owed == p


# --- sequences of account-join steps -------------------------------------------------------

attributions = st.builds(
    lambda code, signup_day, eid, final: AttributionRec(
        "acc", eid, T0 + signup_day * DAY, "v", ClickRef("c-" + code, T0 + signup_day * DAY - 60_000, code)
        if code else None, final),
    st.sampled_from(["A", "B", "C", "Z", None]), st.integers(0, 3), st.sampled_from(["s1", "s2"]), st.booleans())
orders = st.builds(
    lambda oid, day, status, amount: OrderRec(f"{oid}-{status}-{day}", T0 + day * DAY, oid, "acc", "db-pro",
                                              amount, "USD", status),
    st.sampled_from(["o1", "o2", "o3"]), st.integers(-1, 40), st.sampled_from(["paid", "paid", "refunded",
                                                                                "chargeback", "cancelled"]),
    st.decimals(min_value=0, max_value=200_000, places=2, allow_nan=False, allow_infinity=False))
step_lists = st.lists(st.one_of(attributions, orders), max_size=12)


def live(oid: str) -> conv.Live:
    return conv.Live(volume_before=D({"o1": 0, "o2": 10_000, "o3": 60_000}[oid]),
                     points_before={"o1": 0, "o2": 150_000, "o3": 0}[oid])


def process(steps: list) -> list[Conversion]:
    """Every conversion the account join emits for `steps`, from a fresh state."""
    state, out = conv.AccountState(), []
    for step in steps:
        touched = conv.add_order(state, step) if isinstance(step, OrderRec) else conv.add_attribution(state, step)
        out.extend(conv.decide_all(state, touched, CTX, live, now_ms=42))
        conv.prune(state, CONV_RULES)
    return out


def final(out: list[Conversion]) -> dict[str, tuple]:
    last = {c.order_id: c for c in out}
    return {oid: (c.status, c.reasons, c.commission, c.bonus, c.points, c.promoter_id, c.rule_version)
            for oid, c in last.items()}


@settings(max_examples=200, deadline=None)
@given(steps=step_lists)
def test_processing_is_deterministic(steps: list) -> None:
    assert process(steps) == process(steps)


@settings(max_examples=200, deadline=None)
@given(steps=step_lists)
def test_redelivery_changes_no_final_conversion(steps: list) -> None:
    twice = [s for step in steps for s in (step, step)]
    assert final(process(twice)) == final(process(steps))


reattributions = st.builds(  # the same signup, re-attributed to an eligible promoter, final or not
    lambda code, eid, fin: AttributionRec("acc", eid, T0, "v", ClickRef("c-" + code, T0 - 60_000, code), fin),
    st.sampled_from(["A", "B"]), st.sampled_from(["s1", "s2"]), st.booleans())
redelivered_payments = st.builds(
    lambda n: OrderRec(f"o1-paid-{n}", T0 + DAY, "o1", "acc", "db-pro", D(1), "USD", "paid"), st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(amount=st.decimals(min_value=D("0.01"), max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
       middle=st.lists(st.one_of(reattributions, redelivered_payments), max_size=6),
       clawback=st.sampled_from(["refunded", "chargeback", "cancelled"]))
def test_a_reversal_brings_the_promoters_balance_to_zero(amount: Decimal, middle: list, clawback: str) -> None:
    """The ledger keeps each order's latest payable commission: summing the changes of an
    order's revisions, a final reversal leaves the promoter nothing for that order."""
    start = [AttributionRec("acc", "s1", T0, "v", ClickRef("c-A", T0 - 60_000, "A")),
             OrderRec("o1-paid", T0 + DAY, "o1", "acc", "db-pro", amount, "USD", "paid")]
    out = process(start + middle + [OrderRec(f"o1-{clawback}", T0 + 2 * DAY, "o1", "acc", "db-pro", amount,
                                             "USD", clawback)])
    history = [c for c in out if c.order_id == "o1"]
    balance, before = D(0), D(0)
    for c in history:
        balance += c.commission + c.bonus - before
        before = c.commission + c.bonus
    assert history[0].status in ("approved", "held") and history[0].bonus == 50  # it did earn first
    assert history[-1].status == "reversed" and clawback in history[-1].reasons
    assert balance == 0 and history[-1].points == 0
    assert [c.revision for c in history] == sorted(c.revision for c in history)
