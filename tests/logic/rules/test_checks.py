"""Fraud and exclusion checks: one case per reason code of docs/rules.md decided per order,
and the status. (Click spamming, decided over a whole code: test_program_rules.py.)"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import AttributionRec, ClickRef, OrderRec, SignupIdent
from streams.logic.rules.checks import (
    IDENTITIES,
    Evidence,
    PromoterRef,
    Signals,
    identity_match,
    is_bot,
    reasons,
    status_of,
)
from streams.logic.rules.ruleset import RuleSet

CLICK_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
PROMOTER = dict(promoter_id="p1", account_id="acc-promoter", realname_id_hash="rn-p", email_hash="em-p",
                device_id="dev-p", ip_hash="ip-p")
IDENT = dict(ip_hash="ip-buyer", device_id="dev-buyer", email_hash="em-buyer", email_domain="buyer.example",
             realname_id_hash="rn-buyer")


@dataclass
class Case:
    name: str
    expected: list[str]
    status: str
    promoter: dict | None = field(default_factory=dict)  # overrides of PROMOTER; None: nobody owns the code
    ident: dict = field(default_factory=dict)  # overrides of the signup's IDENT
    delay_s: float = 3600  # click -> signup
    ua: str | None = CHROME
    method: str = "GET"
    bot: bool = False  # ClickRef.bot set upstream regardless of the user agent
    product: str = "db-pro"
    category: str | None = "database"
    amount: str = "100.00"
    order_status: str = "paid"
    exclusion: str | None = None
    signals: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    coupon: str = ""  # a coupon code attributed the order (the click, if any, did not)


def evidence(case: Case, rules: RuleSet) -> Evidence:
    click = ClickRef("c1", CLICK_TS, "T", ip_hash="ip-visitor",
                     bot=case.bot or is_bot(case.ua, case.method, rules))
    signup_ts = CLICK_TS + round(case.delay_s * 1000)
    signup = AttributionRec("acc-buyer", "s1", signup_ts, "v1", click, True, SignupIdent(**(IDENT | case.ident)))
    order_ts = signup_ts + DAY
    order = OrderRec(f"o1-{case.order_status}", order_ts, "o1", "acc-buyer", case.product, Decimal(case.amount),
                     "USD", case.order_status, category=case.category)
    promoter = None if case.promoter is None else PromoterRef(**(PROMOTER | case.promoter))
    return Evidence(promoter, signup, order, case.order_status, case.exclusion, Signals(**case.signals), case.coupon)


ORDER_TS = CLICK_TS + 3_600_000 + DAY  # the order time with the default click -> signup delay

CASES = [
    Case("clean conversion", [], "approved"),
    # a coupon attribution: the click checks do not apply, the others do
    Case("coupon: an injected, bot, flooding click is not checked", [], "approved", coupon="KOL10", delay_s=1,
         bot=True, signals={"flood_ip": 99}),
    Case("coupon: signup farming applies", ["signup_farming"], "rejected", coupon="KOL10",
         signals={"farm_ip": 4}),
    Case("coupon: nobody owns the code", ["unknown_promoter"], "rejected", coupon="KOL10", promoter=None),
    Case("coupon: self-referral", ["self_referral"], "rejected", coupon="KOL10", ident={"device_id": "dev-p"}),
    Case("coupon: high value held", ["high_value_review"], "held", coupon="KOL10", amount="60000"),
    # who the promoter is
    Case("no promoter owns the code", ["unknown_promoter"], "rejected", promoter=None),
    Case("employee", ["promoter_ineligible"], "rejected", promoter={"is_employee": True}),
    Case("partner staff", ["promoter_ineligible"], "rejected", promoter={"is_partner_staff": True}),
    Case("enterprise account", ["promoter_ineligible"], "rejected", promoter={"account_type": "enterprise"}),
    Case("personal then enterprise later: reversed", ["promoter_became_enterprise"], "reversed",
         promoter={"enterprise_since": ORDER_TS + 1}),
    Case("enterprise already and a later enterprise version: only ineligible", ["promoter_ineligible"],
         "rejected", promoter={"account_type": "enterprise", "enterprise_since": ORDER_TS + DAY}),
    Case("enterprise_since before the order: ineligible", ["promoter_ineligible"], "rejected",
         promoter={"enterprise_since": ORDER_TS - 1}),
    Case("enterprise_since at the order's time: ineligible", ["promoter_ineligible"], "rejected",
         promoter={"enterprise_since": ORDER_TS}),
    # exclusions
    Case("customer of a channel partner", ["customer_owned_by_channel"], "rejected", exclusion="channel_partner"),
    Case("customer of direct sales", ["customer_owned_by_direct_sales"], "rejected", exclusion="direct_sales"),
    # self-referral
    Case("promoter buys on his own account", ["self_referral"], "rejected", promoter={"account_id": "acc-buyer"}),
    Case("same real-name id", ["self_referral"], "rejected", ident={"realname_id_hash": "rn-p"}),
    Case("same email", ["self_referral"], "rejected", ident={"email_hash": "em-p"}),
    Case("same device", ["self_referral"], "rejected", ident={"device_id": "dev-p"}),
    Case("same IP", ["self_referral"], "rejected", ident={"ip_hash": "ip-p"}),
    Case("missing identity on both sides is no match", [], "approved",
         promoter={"realname_id_hash": None, "email_hash": None, "device_id": None, "ip_hash": None,
                   "account_id": None},
         ident={"realname_id_hash": None, "email_hash": None, "device_id": None, "ip_hash": None}),
    # products
    Case("ineligible product", ["product_ineligible"], "rejected", rules={"ineligible_products": ("db-pro",)}),
    Case("ineligible category (default marketplace)", ["product_ineligible"], "rejected", category="marketplace"),
    Case("no category is eligible", [], "approved", category=None),
    # click -> signup timing
    Case("signup 9.9 s after the click: injection", ["click_injection"], "rejected", delay_s=9.9),
    Case("signup 10 s after the click: fine", [], "approved", delay_s=10),
    Case("injection threshold is a setting", [], "approved", delay_s=9.9, rules={"injection_max_s": 5}),
    # bots
    Case("click flagged as bot", ["bot_traffic"], "rejected", bot=True),
    Case("HEAD request", ["bot_traffic"], "rejected", method="HEAD"),
    Case("lower-case head request", ["bot_traffic"], "rejected", method="head"),
    Case("Googlebot", ["bot_traffic"], "rejected",
         ua="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
    Case("curl", ["bot_traffic"], "rejected", ua="curl/8.5.0"),
    Case("headless Chrome", ["bot_traffic"], "rejected", ua=CHROME.replace("Chrome/", "HeadlessChrome/")),
    Case("no user agent proves nothing", [], "approved", ua=None),
    # counters
    Case("21 clicks from one IP in the hour: flooding", ["click_flooding"], "rejected", signals={"flood_ip": 21}),
    Case("20 clicks from one IP in the hour: fine", [], "approved", signals={"flood_ip": 20, "flood_visitor": 20}),
    Case("21 clicks from one visitor in the hour: flooding", ["click_flooding"], "rejected",
         signals={"flood_visitor": 21}),
    Case("4 signups from one IP in the day: farming", ["signup_farming"], "rejected", signals={"farm_ip": 4}),
    Case("3 signups from one IP and device in the day: fine", [], "approved", signals={"farm_ip": 3, "farm_device": 3}),
    Case("4 signups from one device in the day: farming", ["signup_farming"], "rejected",
         signals={"farm_device": 4}),
    # amount
    Case("50 000 is held for review", ["high_value_review"], "held", amount="50000"),
    Case("just under 50 000", [], "approved", amount="49999.9999"),
    # order status
    Case("refunded", ["refunded"], "reversed", order_status="refunded"),
    Case("chargeback", ["chargeback"], "reversed", order_status="chargeback"),
    Case("cancelled", ["cancelled"], "reversed", order_status="cancelled"),
    # several at once: every code is kept, precedence rejected > reversed > held
    Case("reject + reverse + hold: rejected, all codes",
         ["unknown_promoter", "bot_traffic", "refunded", "high_value_review"], "rejected",
         promoter=None, method="HEAD", order_status="refunded", amount="60000"),
    Case("self-referral by several identities and exclusion",
         ["customer_owned_by_channel", "self_referral", "click_injection", "signup_farming"], "rejected",
         ident={"email_hash": "em-p", "device_id": "dev-p"}, exclusion="channel_partner", delay_s=1,
         signals={"farm_device": 9}),
    Case("reverse + hold: reversed", ["promoter_became_enterprise", "chargeback", "high_value_review"], "reversed",
         promoter={"enterprise_since": ORDER_TS + DAY}, order_status="chargeback", amount="50000"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reasons_and_status(case: Case) -> None:
    rules = msgspec.structs.replace(RuleSet(), **case.rules)
    ev = evidence(case, rules)
    got = reasons(ev, rules)
    assert (got, status_of(got)) == (case.expected, case.status)


# --- self-referral: which of the promoter's identities the customer shares ---------------------


@dataclass
class IdentityCase:
    name: str
    match: str  # identity_match: '' for none
    promoter: dict | None = field(default_factory=dict)  # overrides of PROMOTER; None: nobody owns the code
    ident: dict | None = field(default_factory=dict)  # overrides of IDENT; None: the signup carries no identity


IDENTITY_CASES = [
    IdentityCase("a stranger", ""),
    IdentityCase("the promoter's own account", "account", promoter={"account_id": "acc-buyer"}),
    IdentityCase("same real-name id", "realname", ident={"realname_id_hash": "rn-p"}),
    IdentityCase("same email", "email", ident={"email_hash": "em-p"}),
    IdentityCase("same device", "device", ident={"device_id": "dev-p"}),
    IdentityCase("same IP", "ip", ident={"ip_hash": "ip-p"}),
    # several at once: the first in the order account, realname, email, device, ip
    IdentityCase("account and IP: account", "account", promoter={"account_id": "acc-buyer"}, ident={"ip_hash": "ip-p"}),
    IdentityCase("real-name id and email: realname", "realname", ident={"realname_id_hash": "rn-p", "email_hash": "em-p"}),
    IdentityCase("email and device: email", "email", ident={"email_hash": "em-p", "device_id": "dev-p"}),
    IdentityCase("device and IP: device", "device", ident={"device_id": "dev-p", "ip_hash": "ip-p"}),
    IdentityCase("every identity: account", "account", promoter={"account_id": "acc-buyer"},
                 ident={"realname_id_hash": "rn-p", "email_hash": "em-p", "device_id": "dev-p", "ip_hash": "ip-p"}),
    # what is no match
    IdentityCase("no promoter owns the code", "", promoter=None, ident={"device_id": "dev-p"}),
    IdentityCase("a value of another kind is no match", "",
                 promoter={"device_id": "shared", "ip_hash": None}, ident={"ip_hash": "shared"}),
    IdentityCase("the same email domain is no match", "", ident={"email_domain": "promoter.example"},
                 promoter={"email_hash": "em-other"}),
    IdentityCase("missing on the promoter's side", "", promoter={"device_id": None}, ident={"device_id": None}),
    IdentityCase("empty on both sides", "", promoter={"device_id": ""}, ident={"device_id": ""}),
    IdentityCase("signup without identity, stranger", "", ident=None),
    IdentityCase("signup without identity, own account", "account", promoter={"account_id": "acc-buyer"}, ident=None),
]


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda c: c.name)
def test_identity_match_is_the_self_referral_evidence(case: IdentityCase) -> None:
    rules = RuleSet()
    ev = evidence(Case(case.name, [], "", promoter=case.promoter, ident=case.ident or {}), rules)
    if case.ident is None:
        ev = dataclasses.replace(ev, signup=msgspec.structs.replace(ev.signup, ident=None))
    got = identity_match(ev.promoter, ev)
    assert got == case.match
    assert ("self_referral" in reasons(ev, rules)) == (got != "")


def test_every_identity_has_a_case() -> None:
    assert {c.match for c in IDENTITY_CASES} == {"", *IDENTITIES}


IDS = st.sampled_from([None, "", "x", "y"])


@settings(max_examples=300, deadline=None)
@given(mine=st.tuples(IDS, IDS, IDS, IDS, IDS), theirs=st.tuples(IDS, IDS, IDS, IDS, IDS))
def test_identity_match_names_the_first_identity_both_sides_have(mine: tuple, theirs: tuple) -> None:
    """The match names an identity the promoter and the customer share, no earlier one is
    shared, and self_referral is flagged exactly when there is a match."""
    promoter = PromoterRef(promoter_id="p1", account_id=mine[0], realname_id_hash=mine[1], email_hash=mine[2],
                           device_id=mine[3], ip_hash=mine[4])
    ident = SignupIdent(realname_id_hash=theirs[1], email_hash=theirs[2], device_id=theirs[3], ip_hash=theirs[4])
    ev = evidence(Case("any", [], ""), RuleSet())
    ev = dataclasses.replace(ev, promoter=promoter, signup=msgspec.structs.replace(ev.signup, ident=ident),
                             order=msgspec.structs.replace(ev.order, account_id=theirs[0] or "acc-buyer"))
    shared = [bool(a) and a == b for a, b in zip(mine, (ev.order.account_id, *theirs[1:]), strict=True)]
    got = identity_match(promoter, ev)
    assert got == (IDENTITIES[shared.index(True)] if any(shared) else "")
    assert ("self_referral" in reasons(ev, RuleSet())) == any(shared)
