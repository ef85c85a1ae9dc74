"""Sample traffic generator: pure tests, no broker.

Every property is checked on the *bytes* the generator would produce, decoded with the
pipeline's own `schemas.validate.decode`, against the claims documented in streams/traffic.py.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache

import pytest

from schemas.events import Click, Order, Signup
from schemas.validate import Invalid, decode
from streams import generate as gen
from streams.config import Settings
from streams.traffic import DAY_MS, Traffic, TrafficSpec, generate

MAX_FUTURE_MS = 3_600_000
STATUS_RANK = {"paid": 0, "cancelled": 1, "refunded": 2, "chargeback": 3}


@dataclass(frozen=True)
class Case:
    name: str
    spec: TrafficSpec
    rich: bool = False  # big enough that every shape of traffic must occur


CASES = [
    Case("default-shape", TrafficSpec(seed=7, visitors=4000), rich=True),
    Case("malformed", TrafficSpec(seed=11, visitors=1000, malformed=12)),
    Case("disorderly", TrafficSpec(seed=3, visitors=1500, out_of_order=0.6, duplicates=0.1,
                                   late=0.03, iso_ts=0.3, malformed=6)),
    Case("one-promoter-short-lateness", TrafficSpec(seed=5, promoters=1, visitors=300, days=3,
                                                    allowed_lateness_ms=60_000)),
    Case("no-disorder", TrafficSpec(seed=2, visitors=500, out_of_order=0, late=0, duplicates=0,
                                    iso_ts=0)),
    Case("live-compressed", TrafficSpec(seed=9, visitors=800, days=600_000 / DAY_MS,
                                        time_scale=gen.LIVE_TIME_SCALE, live=True, late=0,
                                        max_delay_ms=20_000, malformed=3)),
]
IDS = [c.name for c in CASES]


@lru_cache(maxsize=None)
def traffic_of(name: str) -> Traffic:
    return generate(next(c for c in CASES if c.name == name).spec)


@lru_cache(maxsize=None)
def decoded_of(name: str) -> list:
    t = traffic_of(name)
    return [decode(topic, value, t.spec.end_ms, MAX_FUTURE_MS) for topic, _, value in t.messages]


def expected_truth(events: list, spec: TrafficSpec) -> dict[str, tuple]:
    """Independent re-computation of the attribution from decoded, de-duplicated events.

    account -> (tracking code or None, {attributed paid order_id: amount}, {order_id: final status})
    """
    seen: set[str] = set()
    clicks: dict[str, list[Click]] = {}
    signups: dict[str, Signup] = {}
    orders: dict[str, dict[str, list[Order]]] = {}
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        if isinstance(e, Click):
            clicks.setdefault(e.visitor_id, []).append(e)
        elif isinstance(e, Signup):
            cur = signups.get(e.account_id)
            if cur is None or (e.ts, e.event_id) < (cur.ts, cur.event_id):
                signups[e.account_id] = e
        elif isinstance(e, Order):
            orders.setdefault(e.account_id, {}).setdefault(e.order_id, []).append(e)
    out = {}
    for account, s in signups.items():
        eligible = sorted((c for c in clicks.get(s.visitor_id, []) if s.ts - spec.window_ms <= c.ts <= s.ts),
                          key=lambda c: (c.ts, c.event_id))
        code = eligible[-1].tracking_code if eligible else None
        amounts, final = {}, {}
        if code is not None:
            for oid, evs in orders.get(account, {}).items():
                paid = [o for o in evs if o.status == "paid"]
                if paid and s.ts <= paid[0].ts <= s.ts + spec.binding_ms:
                    amounts[oid] = paid[0].amount
                    last = max(evs, key=lambda o: (o.ts, STATUS_RANK[o.status], o.event_id))
                    if last.status != "paid":
                        final[oid] = last.status
        out[account] = (code, amounts, final)
    return out


def truth_view(t: Traffic) -> dict[str, tuple]:
    return {a.account_id: (a.tracking_code, a.orders, a.reversed) for a in t.truth.accounts.values()}


# --- properties of every case ----------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_messages_decode_unless_malformed(case: Case) -> None:
    t, decoded = traffic_of(case.name), decoded_of(case.name)
    assert len(t.messages) == len(t.flags) == len(t.ts) == len(t.event_ids) == len(t.deliver_at)
    for (topic, key, _), flag, ts, eid, ev in zip(t.messages, t.flags, t.ts, t.event_ids, decoded):
        if flag == "malformed":
            assert isinstance(ev, Invalid), (topic, ev)
            continue
        assert not isinstance(ev, Invalid), (topic, ev)
        assert ev.ts == ts <= case.spec.end_ms
        assert ev.event_id == eid
        assert key is not None
    assert t.flags.count("malformed") == case.spec.malformed == sum(t.counts.malformed.values())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_event_ids_unique_except_deliberate_duplicates(case: Case) -> None:
    t = traffic_of(case.name)
    first: dict[str, tuple] = {}
    for msg, flag, eid in zip(t.messages, t.flags, t.event_ids):
        if flag == "malformed":
            continue
        if flag == "duplicate":
            assert first[eid] == msg, "a duplicate repeats an earlier message byte for byte"
        else:
            assert eid not in first, f"event_id {eid} reused"
            first[eid] = msg
    assert sum(t.counts.duplicates.values()) == t.flags.count("duplicate")
    assert sum(t.counts.events.values()) == len(first)
    assert Counter(m[0] for m in t.messages) == {k: v for k, v in t.counts.messages.items() if v}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_delivery_respects_lateness_bounds(case: Case) -> None:
    t, spec = traffic_of(case.name), case.spec
    lateness = spec.allowed_lateness_ms
    assert spec.max_delay < lateness
    first_traffic = next(i for i, f in enumerate(t.flags) if f != "reference")
    assert all(f == "reference" for f in t.flags[:first_traffic])
    assert "reference" not in t.flags[first_traffic:]
    assert max(t.ts[:first_traffic]) < min(ts for ts in t.ts[first_traffic:] if ts is not None)
    assert t.deliver_at == sorted(t.deliver_at)
    high = None  # highest traffic event time delivered so far
    for msg, flag, ts in zip(t.messages[first_traffic:], t.flags[first_traffic:], t.ts[first_traffic:]):
        if flag == "malformed":
            continue
        if flag == "late":
            assert high is not None and high > ts + lateness
            assert msg[0] in ("clicks", "orders")
        elif high is not None:
            assert high <= ts + spec.max_delay, (flag, high - ts)
        high = ts if high is None else max(high, ts)
    if spec.late == 0:
        assert "late" not in t.flags
    if spec.out_of_order == 0 and spec.late == 0:
        assert "delayed" not in t.flags


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_truth_matches_the_produced_events(case: Case) -> None:
    """Truth = attribution from non-late, de-duplicated events; late ones would not change it."""
    t, decoded = traffic_of(case.name), decoded_of(case.name)
    valid = [(ev, f) for ev, f in zip(decoded, t.flags) if f != "malformed"]
    on_time = [ev for ev, f in valid if f != "late"]
    assert truth_view(t) == expected_truth(on_time, case.spec)
    assert truth_view(t) == expected_truth([ev for ev, _ in valid], case.spec)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_attributed_orders_have_a_click_within_the_window(case: Case) -> None:
    t, decoded = traffic_of(case.name), decoded_of(case.name)
    clicks: dict[str, list[Click]] = {}
    orders: dict[str, Order] = {}
    for ev in decoded:
        if isinstance(ev, Click):
            clicks.setdefault(ev.visitor_id, []).append(ev)
        elif isinstance(ev, Order) and ev.status == "paid":
            orders[ev.order_id] = ev
    codes = set(t.truth.promoters)
    for a in t.truth.accounts.values():
        if a.tracking_code is None:
            assert not a.orders
            continue
        assert a.tracking_code in codes
        assert any(c.tracking_code == a.tracking_code and c.event_id == a.click_event_id
                   and a.signup_ts - case.spec.window_ms <= c.ts <= a.signup_ts
                   for c in clicks[a.visitor_id])
        for oid, amount in a.orders.items():
            assert orders[oid].account_id == a.account_id and orders[oid].amount == amount
            assert a.signup_ts <= orders[oid].ts
        assert set(a.reversed) <= set(a.orders)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deterministic_for_a_seed(case: Case) -> None:
    again = generate(case.spec)
    t = traffic_of(case.name)
    assert again.messages == t.messages and again.flags == t.flags and again.deliver_at == t.deliver_at
    assert truth_view(again) == truth_view(t)
    other = generate(replace(case.spec, seed=case.spec.seed + 1))
    assert other.messages != t.messages


# --- shapes of realistic traffic (the big case only) -----------------------------------


RICH = [c for c in CASES if c.rich]


@pytest.mark.parametrize("case", RICH, ids=[c.name for c in RICH])
def test_realistic_shapes(case: Case) -> None:
    t, decoded = traffic_of(case.name), decoded_of(case.name)
    spec = case.spec
    evs = [ev for ev, f in zip(decoded, t.flags) if f not in ("malformed", "duplicate")]
    clicks = [e for e in evs if isinstance(e, Click)]
    signups = [e for e in evs if isinstance(e, Signup)]
    orders = [e for e in evs if isinstance(e, Order)]
    clicked = {c.visitor_id for c in clicks}

    # skewed share of clicks per promoter; campaigns per promoter
    per_code = Counter(c.tracking_code for c in clicks).most_common()
    assert per_code[0][1] > 4 * per_code[len(per_code) // 2][1]
    assert all(c.campaign and c.material_id and c.url and c.ip and c.user_agent for c in clicks)
    # most visitors never sign up; organic signups (no click at all) exist
    assert 0.05 < sum(s.visitor_id in clicked for s in signups) / len(clicked) < 0.12
    assert any(s.visitor_id not in clicked for s in signups)
    # a signup whose only click is older than the window: unattributed
    by_visitor: dict[str, list[Click]] = {}
    for c in clicks:
        by_visitor.setdefault(c.visitor_id, []).append(c)
    stale = [s for s in signups if s.visitor_id in by_visitor
             and all(c.ts < s.ts - spec.window_ms for c in by_visitor[s.visitor_id])]
    assert stale and all(t.truth.accounts[s.account_id].tracking_code is None for s in stale)
    # fast and slow signups
    delays = [s.ts - max(c.ts for c in by_visitor[s.visitor_id] if c.ts <= s.ts)
              for s in signups if any(c.ts <= s.ts for c in by_visitor.get(s.visitor_id, []))]
    assert min(delays) < 60_000 and max(delays) > 5 * DAY_MS
    # carts with several orders; repeat buyers; renewals
    paid = [o for o in orders if o.status == "paid"]
    assert max(Counter(o.cart_id for o in paid).values()) >= 2
    assert max(Counter(o.account_id for o in paid).values()) >= 3
    assert any(o.renewal for o in paid)
    assert {o.currency for o in orders} == {"USD"} and len({o.category for o in orders}) >= 5
    # refunds / cancellations follow their paid event, same order_id, later ts
    paid_by_id = {o.order_id: o for o in paid}
    reversals = [o for o in orders if o.status != "paid"]
    assert {o.status for o in reversals} == {"refunded", "cancelled"}
    assert all(o.ts > paid_by_id[o.order_id].ts for o in reversals)
    # orders of accounts that never came through a referral
    attributed = {a for a, x in t.truth.accounts.items() if x.tracking_code}
    assert any(o.account_id not in attributed for o in paid)
    assert any(o.account_id not in t.truth.accounts for o in paid)  # existing customers
    # some timestamps are sent as ISO-8601 strings
    assert sum(b'"ts":"' in v for _, _, v in t.messages) > 10
    # truth summary
    s = t.truth.summary()
    assert s["attributed_orders"] > 50 and s["reversed_orders"] > 0 and s["excluded_accounts"] == 3
    # promoters join long before any traffic, some are ineligible
    assert sum(p["is_employee"] or p["is_partner_staff"] or p["account_type"] == "enterprise"
               for p in t.truth.promoters.values()) == 3


# --- spec validation, CLI wiring, speed ------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"promoters": 0}, {"days": 0}, {"late": 1.5}, {"duplicates": -0.1}, {"malformed": -1},
    {"allowed_lateness_ms": 0}, {"time_scale": 0.5},
])
def test_bad_spec_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        generate(TrafficSpec(visitors=10, **bad))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gen.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_dry_run_prints_summary_and_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(kafka_url="kafka://127.0.0.1:1")  # nothing listens there
    code = asyncio.run(gen.run(_args("--seed", "4", "--visitors", "300", "--malformed", "6", "--dry-run"),
                               settings))
    out = capsys.readouterr().out
    assert code == 0 and "seed 4" in out and "malformed 6" in out and "attributed orders" in out


def test_live_spec_matches_the_rate() -> None:
    settings = Settings()
    spec = gen.live_spec(_args("--seed", "1", "--rate", "50", "--duration", "120"), settings, 1_767_225_600_000)
    t = generate(spec)
    traffic = sum(1 for f in t.flags if f != "reference")
    assert 0.7 * 6000 < traffic < 1.3 * 6000
    times = [x for x, f in zip(t.ts, t.flags) if f not in ("reference", "malformed")]
    assert "late" not in t.flags and spec.start_ms <= min(times) and max(times) <= spec.end_ms


def test_spec_follows_pipeline_settings() -> None:
    settings = Settings(allowed_lateness_s=600, attribution_window_days=7, binding_days=30)
    spec = gen.spec_from_args(_args("--seed", "1"), settings, 1_767_225_600_000)
    assert (spec.allowed_lateness_ms, spec.window_ms, spec.binding_ms) == (600_000, 7 * DAY_MS, 30 * DAY_MS)


def test_generates_100k_messages_in_seconds() -> None:
    started = time.perf_counter()
    t = generate(TrafficSpec(seed=1, visitors=52_000))
    elapsed = time.perf_counter() - started
    assert len(t.messages) > 95_000
    assert elapsed < 15, f"{len(t.messages)} messages took {elapsed:.1f}s"
    assert t.truth.summary()["attributed_orders"] > 1000 and Decimal(t.truth.summary()["attributed_gmv"]) > 0
