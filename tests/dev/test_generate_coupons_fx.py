"""Sample traffic: coupon codes, a second currency (fx_rates) and recruiters. Pure tests on
the bytes the generator would produce, like tests/dev/test_generate.py (whose cases and
independent re-reading of docs/rules.md they reuse)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import FxRate, Order, Signup
from schemas.validate import decode
from streams.dev.traffic import Traffic, TrafficSpec, generate
from tests.dev.test_generate import (
    CASES,
    MAX_FUTURE_MS,
    decoded_of,
    expected_checks,
    expected_truth,
    traffic_of,
    truth_view,
)

# --- coupons, a second currency, recruiters ------------------------------------------------


@dataclass(frozen=True)
class FxCase:
    name: str
    spec: TrafficSpec


FX_CASES = [FxCase(c.name, c.spec) for c in CASES] + [
    FxCase("no-eur", TrafficSpec(seed=4, visitors=400, eur=False)),
    FxCase("program-currency-gbp", TrafficSpec(seed=6, visitors=400, currency="GBP")),
]


@cache
def fx_traffic(name: str) -> Traffic:
    case = next(c for c in FX_CASES if c.name == name)
    return traffic_of(name) if any(c.name == name for c in CASES) else generate(case.spec)


@pytest.mark.parametrize("case", FX_CASES, ids=[c.name for c in FX_CASES])
def test_fx_rates_cover_every_foreign_order(case: FxCase) -> None:
    """Every EUR order has a rate in force at its time (no fx_rate_missing in the traffic), the
    rates come with the reference data, keyed by currency and start, and the truth prices each
    order with the rate docs/events.md says."""
    t, spec = fx_traffic(case.name), case.spec
    decoded = [decode(topic, value, spec.end_ms, MAX_FUTURE_MS) for topic, _, value in t.messages]
    rates = [(ev, key, flag) for (_, key, _), ev, flag in zip(t.messages, decoded, t.flags) if isinstance(ev, FxRate)]
    orders = [ev for ev in decoded if isinstance(ev, Order)]
    assert {o.currency for o in orders} <= {spec.currency, "EUR"}
    foreign = [o for o in orders if o.currency == "EUR"]
    if not spec.eur:
        assert not rates and not foreign
    assert bool(rates) == bool(foreign), "rates exactly when someone pays in EUR"
    for ev, key, flag in rates:
        assert flag == "reference" and ev.currency == "EUR" and ev.effective_from is not None
        assert key == f"EUR/{time.strftime('%Y-%m-%d', time.gmtime(ev.effective_from / 1000))}".encode()
        assert Decimal("0.9") < ev.rate < Decimal("1.3")
    assert len({key for _, key, _ in rates}) == len(rates), "one key per rate: compaction keeps them all"
    if foreign:
        assert min(ev.effective_from for ev, _, _ in rates) < min(o.ts for o in foreign)

    def in_force(ts: int) -> Decimal:
        return max((ev.effective_from, ev.event_id, ev.rate) for ev, _, _ in rates if ev.effective_from <= ts)[2]

    paid = {o.order_id: o for o in orders if o.status == "paid"}
    for e in t.truth.expected.values():
        o = paid[e.order_id]
        assert e.currency == o.currency
        assert e.fx_rate == (in_force(o.ts) if o.currency == "EUR" else 1)
    assert set(t.truth.fx_rates) == ({"EUR"} if rates else set())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), coupon_rate=st.sampled_from([0.0, 0.01, 0.05]),
       eur=st.booleans(), fraud=st.booleans())
def test_truth_agrees_with_the_rereading_for_any_seed(seed: int, coupon_rate: float, eur: bool, fraud: bool) -> None:
    """Attribution (click or coupon) and expected checks agree with the independent re-reading
    of docs/rules.md whatever the seed, however many coupon customers."""
    spec = TrafficSpec(seed=seed, visitors=300, days=5, coupon_rate=coupon_rate, eur=eur, fraud=fraud)
    t = generate(spec)
    decoded = [ev for ev, f in zip((decode(topic, v, spec.end_ms, MAX_FUTURE_MS) for topic, _, v in t.messages),
                                   t.flags) if f != "malformed"]
    assert truth_view(t) == expected_truth(decoded, spec)
    assert {oid: e.reasons for oid, e in t.truth.expected.items()} == expected_checks(decoded, spec)


def test_truth_knows_coupons_currencies_and_recruiters() -> None:
    """The big case has every new shape: KOL codes used at signup and with an order, codes that
    win over a click, EUR customers, and recruited promoters (their recruiters earn overrides)."""
    t = traffic_of("default-shape")
    decoded = decoded_of("default-shape")
    kols = {p["promoter_id"]: p["coupon_codes"] for p in t.truth.promoters.values() if p.get("coupon_codes")}
    assert len(kols) == 3 and all(len(codes) == 1 for codes in kols.values())
    coupon = [a for a in t.truth.accounts.values() if a.coupons]
    assert len(coupon) >= 10
    assert any(a.tracking_code for a in coupon), "a code that wins over a click"
    assert any(not a.tracking_code for a in coupon), "a code that attributes an organic signup"
    at_signup = {ev.account_id for ev in decoded if isinstance(ev, Signup) and ev.coupon_code}
    with_order = {ev.account_id for ev in decoded if isinstance(ev, Order) and ev.coupon_code}
    assert at_signup and with_order and not at_signup & with_order
    for a in coupon:  # a coupon conversion has no click and goes to the code's owner
        for oid, code in a.coupons.items():
            e = t.truth.expected[oid]
            assert e.tracking_code == "" and code in kols[e.promoter_id]
    s = t.truth.summary()
    assert s["coupon_orders"] == sum(len(a.coupons) for a in coupon) >= 15
    assert 0.05 < s["foreign_currency_orders"] / s["attributed_orders"] < 0.25
    # recruiters: every fifth promoter of the pool, recruited by an older one; no cycle, no self
    ids = {p["promoter_id"] for p in t.truth.promoters.values()}
    parents = {p["promoter_id"]: p["parent_promoter_id"] for p in t.truth.promoters.values()
               if p.get("parent_promoter_id")}
    assert s["recruited_promoters"] == len(parents) == 4
    for child, parent in parents.items():
        assert parent in ids and parent != child and parents.get(parent) != child
        assert t.truth.recruiter(child) == parent
    assert t.truth.recruiter("P100001") == "" and t.truth.recruiter("nobody") == ""
    assert any(e.promoter_id in parents for e in t.truth.expected.values()), "recruits with conversions"
