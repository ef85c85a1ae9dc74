"""Replay on stored events (pure): each rule decided as the live pipeline and
`conversions_current` decide it, with complete counters; prices in event-time order whatever
order the events were stored in; the comparison of two books and with stored conversions."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from schemas.events import Exclusion, Promoter
from schemas.records import ClickRec, Conversion, OrderRec, SignupRec, StoredEvents
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
    lists: dict[type, list[Any]] = {ClickRec: ev.clicks, SignupRec: ev.signups, Promoter: ev.promoters,
                                    Exclusion: ev.exclusions}
    for x in case.extra:
        lists[type(x)].append(x)
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


def test_compare_sees_every_priced_field() -> None:
    """A candidate book that only moves a tier (same status and money) still changes the order."""
    ev = events(Case("honest", [], ""))
    base = replay.run(ev, RuleBook([]), 7 * DAY, 30 * DAY, 30 * DAY)
    moved = [msgspec.structs.replace(c, tier=c.tier + 1) for c in base]
    assert replay.compare(base, moved).changed_orders == 1


# --- pricing in event-time order, whatever order the events are stored in -----------------------

TIER_RATE = Decimal("0.16")  # level 1 (0.15) + the first tier's bonus rate, at 10,000 of monthly volume


@dataclass
class TierCase:
    """Customers a1.. each click T1, sign up and order 6,000 on `days[i]` (days after T0)."""

    name: str
    days: list[int]
    #: customer index -> day of the order's refund
    refunds: dict[int, int]
    #: per order: status, tier, commission
    expected: list[tuple[str, int, Decimal]]


def tier_events(case: TierCase) -> StoredEvents:
    ev = StoredEvents([], [], [], [Promoter(event_id="p1", ts=T0 - DAY, promoter_id="P1", tracking_code="T1")], [])
    for i, day in enumerate(case.days, 1):
        t = T0 + day * DAY
        ev.clicks.append(ClickRec(f"c{i}", t, f"v{i}", "T1", ip_hash=f"ip{i}", user_agent=CHROME))
        ev.signups.append(SignupRec(f"s{i}", t + 20 * MIN, f"a{i}", f"v{i}", ip_hash=f"ips{i}"))
        ev.orders.append(OrderRec(f"e{i}", t + H, f"o{i}", f"a{i}", "pro", Decimal(6000), "USD", "paid"))
    for i, day in case.refunds.items():
        ev.orders.append(OrderRec(f"r{i}", T0 + day * DAY, f"o{i}", f"a{i}", "pro", Decimal(6000), "USD", "refunded"))
    return ev


def shuffled(ev: StoredEvents, orders: tuple[OrderRec, ...], seed: int) -> StoredEvents:
    rng = random.Random(seed)
    return StoredEvents(rng.sample(ev.clicks, len(ev.clicks)), rng.sample(ev.signups, len(ev.signups)),
                        list(orders), ev.promoters, ev.exclusions)


BASE, TIERED = Decimal(900), Decimal(960)
TIER_CASES = [
    TierCase("the third order of the month crosses 10,000", [1, 2, 3], {},
             [("approved", 0, BASE), ("approved", 0, BASE), ("approved", 1, TIERED)]),
    TierCase("a refund before the month closes takes its volume away", [1, 2, 3], {1: 20},
             [("reversed", 0, Decimal(0)), ("approved", 0, BASE), ("approved", 0, BASE)]),
    TierCase("a refund after the month closed keeps its volume", [1, 2, 3], {1: 31 + 20},
             [("reversed", 0, Decimal(0)), ("approved", 0, BASE), ("approved", 1, TIERED)]),
    # January's 190,000 points (950 each, 100 a unit) raise February to level 2 (20 %)
    TierCase("a new month starts again from tier 0, a level up", [1, 2, 31], {},
             [("approved", 0, BASE), ("approved", 0, BASE), ("approved", 0, Decimal(1200))]),
    TierCase("an order stored first but made last is priced last", [3, 1, 2], {},
             [("approved", 1, TIERED), ("approved", 0, BASE), ("approved", 0, BASE)]),
]


@pytest.mark.parametrize("case", TIER_CASES, ids=lambda c: c.name)
def test_replay_prices_in_event_time_whatever_the_stored_order(case: TierCase) -> None:
    ev = tier_events(case)
    got = [replay.run(shuffled(ev, orders, seed), RuleBook([]), 7 * DAY, 60 * DAY, 60 * DAY)
           for seed, orders in enumerate(itertools.permutations(ev.orders))]
    assert [(c.status, c.tier, c.commission) for c in got[0]] == case.expected
    assert all(g == got[0] for g in got[1:])  # every field, whatever order the events came in


# --- replay against the stored conversions_current ----------------------------------------------


def converted(oid: str, **fields: Any) -> Conversion:
    """A replayed conversion of promoter P1: level 1, 15 % of 100, first order."""
    base: dict[str, Any] = dict(
        order_id=oid, revision=1 << 16, status="approved", reasons=[], promoter_id="P1", tracking_code="T1",
        campaign="", account_id="a-" + oid, visitor_id="v", click_event_id="c", click_ts=T0, signup_event_id="s",
        signup_ts=T0, order_event_id="e", order_ts=T0 + DAY, cart_id="", product="pro", category="",
        amount=Decimal(100), discount=Decimal(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=0, level=1, rate=Decimal("0.15"), tier=0,
        commission=Decimal(15), bonus=Decimal(50), points=6500, first_order=True, rule_version="default")
    return Conversion(**(base | fields))


def row(c: Conversion, **columns: Any) -> dict[str, Any]:
    """`c` as a `conversions_current` row: other revision and decision time, no review."""
    stored = {f: getattr(c, f) for f in Conversion.__struct_fields__}
    return stored | {"revision": 7, "decided_at": T0 + 5 * DAY, "auto_status": c.status, "review": "",
                     "commission": Decimal(str(c.commission)) + Decimal("0.0000")} | columns


@dataclass
class StoredCase:
    name: str
    stored: list[dict[str, Any]]
    replayed: list[Conversion]
    #: the first differing orders' (order_id, promoter_id, fields)
    first: list[tuple[str, str, tuple]]
    #: per differing promoter: (promoter_id, orders, differing, commission_delta)
    promoters: list[tuple[str, int, int, Decimal]] = field(default_factory=list)


C1, C2 = converted("o1"), converted("o2")
STORED_CASES = [
    StoredCase("equal", [row(C1), row(C2)], [C1, C2], []),
    StoredCase("differing commission", [row(C1, commission=Decimal("16.5")), row(C2)], [C1, C2],
               [("o1", "P1", (("commission", Decimal("16.5"), Decimal(15)),))], [("P1", 2, 1, Decimal("-1.5"))]),
    StoredCase("differing tier and rate", [row(C1, tier=1, rate=Decimal("0.16"))], [C1],
               [("o1", "P1", (("rate", Decimal("0.16"), Decimal("0.15")), ("tier", 1, 0)))],
               [("P1", 1, 1, Decimal(0))]),
    StoredCase("missing in the stored rows", [row(C1)], [C1, C2], [("o2", "P1", (("conversion", "absent", "present"),))],
               [("P1", 2, 1, Decimal(65))]),
    StoredCase("missing in the replay", [row(C1), row(C2)], [C1], [("o2", "P1", (("conversion", "present", "absent"),))],
               [("P1", 2, 1, Decimal(-65))]),
    StoredCase("re-attributed: both promoters differ", [row(C1, promoter_id="P2")], [C1],
               [("o1", "P1", (("promoter_id", "P2", "P1"),))], [("P1", 1, 1, Decimal(65)), ("P2", 1, 1, Decimal(-65))]),
    StoredCase("a review's rejection is not a difference",
               [row(C1, status="rejected", reasons=["manual_rejected"], review="reject", commission=Decimal(0),
                    bonus=Decimal(0), points=0)], [C1], []),
    StoredCase("reasons in another order are the same",
               [row(converted("o1", status="reversed", reasons=["promoter_became_enterprise", "click_spamming"]))],
               [converted("o1", status="reversed", reasons=["click_spamming", "promoter_became_enterprise"])], []),
    StoredCase("a cap only the replay shows",
               [row(C1, cap="customer")], [converted("o1", cap="order")], [("o1", "P1", (("cap", "customer", "order"),))],
               [("P1", 1, 1, Decimal(0))]),
    StoredCase("a column the stored table lacks is not compared",
               [{k: v for k, v in row(C1).items() if k != "cap"}], [converted("o1", cap="order")], []),
]


@pytest.mark.parametrize("case", STORED_CASES, ids=lambda c: c.name)
def test_against_stored_reports_each_differing_field(case: StoredCase) -> None:
    diff = replay.against_stored(case.stored, case.replayed, show=5)
    assert [(d.order_id, d.promoter_id, d.fields) for d in diff.first] == case.first
    assert diff.differing == len(case.first)
    assert diff.orders == len({r["order_id"] for r in case.stored} | {c.order_id for c in case.replayed})
    assert [(p["promoter_id"], p["orders"], p["differing"], p["commission_delta"]) for p in diff.by_promoter] == (
        case.promoters)
    fields = [f for d in diff.first for f, _, _ in d.fields]
    assert diff.by_field == [{"field": f, "orders": fields.count(f)} for f in sorted(set(fields),
                                                                                      key=lambda f: (-fields.count(f), f))]


def test_replay_of_stored_conversions_is_equal() -> None:
    """What the live pipeline stored once its months closed is what replay finds."""
    ev = tier_events(TIER_CASES[0])
    replayed = replay.run(ev, RuleBook([]), 7 * DAY, 60 * DAY, 60 * DAY)
    stored = [row(c) for c in replayed]
    assert replay.against_stored(stored, replayed).differing == 0
    stored[2]["tier"] = 0  # a stage that priced in arrival order
    assert [d.fields for d in replay.against_stored(stored, replayed).first] == [(("tier", 0, 1),)]


# --- coupon codes offline: the same attribution as the account join ------------------------------------------
KOL = Promoter(event_id="p9", ts=T0 - DAY, promoter_id="P9", tracking_code="T9", coupon_codes=["KOL9"])
COUPON_CASES = [
    # name, case, book settings, expected (promoter, attributed_by, coupon_code, reasons)
    ("the signup's code wins over a bot click", Case("", [], "", signup={"coupon_code": "KOL9"}, extra=[KOL],
                                                     click={"user_agent": "Googlebot/2.1"}),
     {}, ("P9", "coupon", "KOL9", [])),
    ("click precedence: the bot click wins", Case("", [], "", signup={"coupon_code": "KOL9"}, extra=[KOL],
                                                  click={"user_agent": "Googlebot/2.1"}),
     {"attribution_precedence": "click"}, ("P1", "click", "", ["bot_traffic"])),
    ("a code nobody owns", Case("", [], "", signup={"coupon_code": "NOPE"}), {}, ("", "coupon", "NOPE",
                                                                                 ["unknown_promoter"])),
    ("farming applies to a coupon attribution",
     Case("", [], "", signup={"coupon_code": "KOL9", "device_id": "d1"},
          extra=[KOL, *[SignupRec(f"fs{i}", T0 + i * MIN, f"fa{i}", f"vfa{i}", device_id="d1") for i in range(1, 4)]]),
     {}, ("P9", "coupon", "KOL9", ["signup_farming"])),
]


@pytest.mark.parametrize("name,case,rules,expected", COUPON_CASES, ids=[c[0] for c in COUPON_CASES])
def test_replay_attributes_by_coupon(name: str, case: Case, rules: dict, expected: tuple) -> None:
    [c] = replay.run(events(case), RuleBook([RuleSet(**rules)]), 7 * DAY, 30 * DAY, 30 * DAY)
    assert (c.promoter_id, c.attributed_by, c.coupon_code, c.reasons) == expected


def test_replay_an_orders_code_attributes_an_organic_account() -> None:
    ev = events(Case("", [], "", extra=[KOL]))
    ev.clicks.clear()  # organic
    ev.orders[0] = msgspec.structs.replace(ev.orders[0], coupon_code="KOL9")
    [c] = replay.run(ev, RuleBook([]), 7 * DAY, 30 * DAY, 30 * DAY)
    assert (c.promoter_id, c.attributed_by, c.tracking_code, c.status) == ("P9", "coupon", "", "approved")


def test_champion_changes_between_two_rule_books() -> None:
    """The backtest shows the sales champions a candidate rule book changes."""
    from streams.logic.rules.champion import Champion
    from streams.logic.rules.ruleset import RuleBook, RuleSet

    jan, feb = 1_767_225_600_000, 1_769_904_000_000
    convs = [msgspec.convert({"order_id": f"o{i}", "revision": 1, "status": status, "reasons": [],
                              "promoter_id": p, "tracking_code": "T", "campaign": "", "account_id": "a",
                              "visitor_id": "v", "click_event_id": "c", "click_ts": jan, "signup_event_id": "s",
                              "signup_ts": jan, "order_event_id": "e", "order_ts": jan + 86_400_000,
                              "cart_id": "", "product": "p", "category": "", "amount": amount, "discount": "0",
                              "currency": "USD", "order_status": "paid", "renewal": False,
                              "attribution_model": "last_click", "attribution_final": True, "decided_at": 0,
                              "program_currency": "USD", "program_amount": amount, "override_of": of},
                             Conversion, strict=False)
             for i, (p, amount, status, of) in enumerate([("P1", "300", "approved", ""), ("P2", "200", "approved", ""),
                                                           ("P3", "900", "held", ""), ("P4", "999", "approved", "P1")])]
    now = feb + 7 * 86_400_000
    D = Decimal
    base = replay.champions_of(convs, RuleBook([RuleSet(champion_bonuses=(D(100),))]), now)
    new = replay.champions_of(convs, RuleBook([RuleSet(champion_bonuses=(D(100), D(50)))]), now)
    assert base == [Champion(202601, "USD", 1, "P1", D(300), D(100))]  # held and override lines are no sales
    assert replay.champion_changes(base, new) == [
        {"month": 202601, "currency": "USD", "rank": 2, "promoter_base": "", "bonus_base": D(0),
         "promoter_new": "P2", "bonus_new": D(50)}]
    assert replay.champion_changes(base, base) == []
