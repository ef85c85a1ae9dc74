"""Replay on stored events (pure): each rule decided as the live pipeline and
`conversions_current` decide it, with complete counters; and the comparison of two books."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from schemas.events import Exclusion, Promoter
from schemas.records import ClickRec, OrderRec, SignupRec, StoredEvents
from streams.logic import replay
from streams.logic.rules.ruleset import RuleBook, RuleSet

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
H = 60 * MIN
DAY = 24 * H
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@dataclass
class Case:
    """One customer: a click on T1 at T0, a signup `delay_ms` later, an order a day after that."""

    name: str
    reasons: list[str]
    status: str
    delay_ms: int = 20 * MIN
    click: dict = field(default_factory=dict)
    signup: dict = field(default_factory=dict)
    extra: list = field(default_factory=list)  # more clicks, signups, promoters, exclusions
    rules: dict = field(default_factory=dict)
    promoter: dict = field(default_factory=dict)  # overrides of P1, who owns T1
    #: flood_clicks, farm_signups, exclusion_owner, identity_match: the evidence the live join shows
    #: (the click and the signup count themselves)
    evidence: tuple = (1, 1, "", "")


def events(case: Case) -> StoredEvents:
    click = ClickRec("c0", T0, "v0", "T1", **({"ip_hash": "ip0", "user_agent": CHROME} | case.click))
    signup = SignupRec("s0", T0 + case.delay_ms, "a0", "v0", **({"ip_hash": "ip-s0"} | case.signup))
    order = OrderRec("e0", T0 + case.delay_ms + DAY, "o0", "a0", "pro", Decimal(100), "USD", "paid")
    ev = StoredEvents([click], [signup], [order], [Promoter(**({"event_id": "p1", "ts": T0 - DAY, "promoter_id": "P1",
                                                                "tracking_code": "T1"} | case.promoter))], [])
    for x in case.extra:
        {ClickRec: ev.clicks, SignupRec: ev.signups, Promoter: ev.promoters, Exclusion: ev.exclusions}[type(x)].append(x)
    return ev


CASES = [
    Case("honest", [], "approved"),
    Case("bot user agent", ["bot_traffic"], "rejected", click={"user_agent": "Googlebot/2.1"}),
    Case("click injection", ["click_injection"], "rejected", delay_ms=2_000),
    Case("click flooding from the click's IP in its hour", ["click_flooding"], "rejected", evidence=(21, 1, "", ""),
         extra=[ClickRec(f"f{i}", T0 + i * MIN, f"vf{i}", "T1", ip_hash="ip0") for i in range(1, 21)]),
    Case("20 clicks in the hour are no flood", [], "approved", evidence=(20, 1, "", ""),
         extra=[ClickRec(f"f{i}", T0 + i * MIN, f"vf{i}", "T1", ip_hash="ip0") for i in range(1, 20)]),
    Case("clicks of the next hour count in theirs", [], "approved", evidence=(1, 1, "", ""),
         extra=[ClickRec(f"f{i}", T0 + H + i * MIN, f"vf{i}", "T1", ip_hash="ip0") for i in range(1, 30)]),
    Case("signup farming from the signup's device in its day", ["signup_farming"], "rejected",
         signup={"device_id": "d1"}, evidence=(1, 4, "", ""),
         extra=[SignupRec(f"fs{i}", T0 + i * MIN, f"fa{i}", f"vfa{i}", device_id="d1") for i in range(1, 4)]),
    Case("self-referral from the promoter's device", ["self_referral"], "rejected", evidence=(1, 1, "", "device"),
         signup={"device_id": "d-promoter"}, promoter={"device_id": "d-promoter"}),
    Case("customer owned by direct sales", ["customer_owned_by_direct_sales"], "rejected",
         evidence=(1, 1, "direct_sales", ""),
         extra=[Exclusion(event_id="x1", ts=T0 - DAY, account_id="a0", owner="direct_sales", since=T0 - DAY)]),
    Case("click spamming over the code's signups", ["click_spamming"], "held", delay_ms=30 * H,
         extra=[x for i in range(1, 20) for x in (ClickRec(f"sc{i}", T0 - 3 * DAY, f"vs{i}", "T1"),
                                                  SignupRec(f"ss{i}", T0 - DAY, f"sa{i}", f"vs{i}"))]),
    Case("spamming thresholds are settings", [], "approved", delay_ms=30 * H, rules={"spam_min_signups": 21},
         extra=[x for i in range(1, 20) for x in (ClickRec(f"sc{i}", T0 - 3 * DAY, f"vs{i}", "T1"),
                                                  SignupRec(f"ss{i}", T0 - DAY, f"sa{i}", f"vs{i}"))]),
    Case("promoter turned enterprise after the order", ["promoter_became_enterprise"], "reversed",
         extra=[Promoter(event_id="p2", ts=T0 + 5 * DAY, promoter_id="P1", tracking_code="T1",
                         account_type="enterprise")]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_replay_decides_each_rule(case: Case) -> None:
    book = RuleBook([RuleSet(**case.rules)])
    [c] = replay.run(events(case), book, window_ms=7 * DAY, binding_ms=30 * DAY, refund_window_ms=30 * DAY)
    assert (c.order_id, c.reasons, c.status) == ("o0", case.reasons, case.status)
    assert (c.flood_clicks, c.farm_signups, c.exclusion_owner, c.identity_match) == case.evidence


def test_compare_counts_what_a_candidate_book_changes() -> None:
    ev = events(Case("injection at 5 s", [], "", delay_ms=5_000))
    run = lambda book: replay.run(ev, book, 7 * DAY, 30 * DAY, 30 * DAY)  # noqa: E731
    same = replay.compare(run(RuleBook([])), run(RuleBook([])))
    assert (same.changed_orders, same.orders) == (0, 1)
    looser = replay.compare(run(RuleBook([])), run(RuleBook([RuleSet(injection_max_s=1)])))
    assert looser.changed_orders == 1
    assert looser.by_reason == [{"reason": "click_injection", "orders_base": 1, "orders_new": 0, "delta": -1}]
    [p] = looser.by_promoter
    assert (p["approved_base"], p["approved_new"], p["commission_base"], p["commission_new"]) == (
        0, 1, Decimal(0), Decimal(65))
