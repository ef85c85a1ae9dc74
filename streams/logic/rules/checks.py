"""Fraud and exclusion checks: evidence about one conversion -> reason codes -> status.

Pure functions over plain data. The evidence is gathered by the account join: the
attributed click and signup (from state), the order, the promoter and exclusions as of
the order's time (reference data), and the cross-partition counters (`Signals`, Redis).
An order attributed by a coupon code (`Evidence.coupon_code`) has no attributed click: the
click checks (injection, bots, flooding; spamming in SQL, by tracking code) do not apply.
Click spamming is not decided here: it is a statistic over a whole tracking code, applied
by ClickHouse and by replay (`spamming`).
"""
from __future__ import annotations

from dataclasses import dataclass

import msgspec

from schemas.records import AttributionRec, ClickRef, OrderRec, SignupIdent
from streams.logic.rules import enterprise
from streams.logic.rules.ruleset import HOLD, REASON_KINDS, REJECT, REVERSE, RuleSet

APPROVED, HELD, REJECTED, REVERSED = "approved", "held", "rejected", "reversed"
#: the statuses that earn their commission (and count towards the promoter's volume)
PAYABLE_STATUSES = (APPROVED, HELD)


class PromoterRef(msgspec.Struct, frozen=True, kw_only=True):
    """A promoter as of some event time, with what the checks need."""

    promoter_id: str
    level: int = 1
    account_type: str = "personal"
    is_employee: bool = False
    is_partner_staff: bool = False
    account_id: str | None = None
    realname_id_hash: str | None = None
    email_hash: str | None = None
    device_id: str | None = None
    ip_hash: str | None = None
    #: event time of a later version that is an enterprise account, if any
    enterprise_since: int | None = None
    parent_promoter_id: str | None = None  # who recruited him (two-level referrals)
    joined_at: int | None = None


class Signals(msgspec.Struct, frozen=True, kw_only=True):
    """Flood and farming windows shared across partitions (streams.logic.rules.windows), as
    of decision time. Click spamming is no signal of one decision: see `spamming`."""

    flood_ip: int = 0  # clicks from the attributed click's IP on its code in its UTC hour
    flood_visitor: int = 0  # the same for its visitor
    farm_ip: int = 0  # accounts signed up from the signup's IP in its UTC day
    farm_device: int = 0  # the same for its device

    @property
    def flood_clicks(self) -> int:
        """What `click_flooding` compares with its threshold (and the review queue shows)."""
        return max(self.flood_ip, self.flood_visitor)

    @property
    def farm_signups(self) -> int:
        """What `signup_farming` compares with its threshold (and the review queue shows)."""
        return max(self.farm_ip, self.farm_device)


@dataclass(frozen=True, slots=True)
class Evidence:
    promoter: PromoterRef | None
    signup: AttributionRec  # with its click (None only when a coupon code attributed) and identity
    order: OrderRec
    order_status: str  # latest status of the order: paid | refunded | cancelled | chargeback
    exclusion_owner: str | None  # direct_sales | channel_partner, as of the order's time
    signals: Signals
    #: the coupon code that attributed the order ('' : its click did); the promoter is its owner
    coupon_code: str = ""

    @property
    def click(self) -> ClickRef | None:
        """The click the order is attributed to; None when a coupon code attributed it."""
        return None if self.coupon_code else self.signup.click


def is_bot(user_agent: str | None, method: str, rules: RuleSet) -> bool:
    """A crawler or script by its user agent, or a HEAD request (no human does those)."""
    if method.upper() == "HEAD":
        return True
    ua = (user_agent or "").lower()  # no user agent at all proves nothing: trackers often omit it
    return any(marker in ua for marker in rules.bot_user_agents)


#: the promoter's identities a customer may share (self-referral), in the order `identity_match` tries them
IDENTITIES = ("account", "realname", "email", "device", "ip")


def identity_match(p: PromoterRef | None, ev: Evidence) -> str:
    """Which of the promoter's identities the customer shares, the first in `IDENTITIES` order,
    or '' for none (or no promoter). The one self-referral rule: the reason code and the
    evidence the review queue shows both come from here, so they never disagree. A missing
    identity on either side matches nothing."""
    if p is None:
        return ""
    ident = ev.signup.ident or SignupIdent()
    pairs = (("account", p.account_id, ev.order.account_id), ("realname", p.realname_id_hash, ident.realname_id_hash),
             ("email", p.email_hash, ident.email_hash), ("device", p.device_id, ident.device_id),
             ("ip", p.ip_hash, ident.ip_hash))
    return next((name for name, mine, theirs in pairs if mine and mine == theirs), "")


def reasons(ev: Evidence, rules: RuleSet) -> list[str]:
    """Every reason code that applies, in the stable order of `REASON_KINDS`."""
    found: set[str] = set()
    p, click, order, sig = ev.promoter, ev.click, ev.order, ev.signals
    assert click is not None or ev.coupon_code, "an order is attributed by a click or a coupon code"
    if p is None:
        found.add("unknown_promoter")
    else:
        if p.is_employee or p.is_partner_staff or enterprise.enterprise_at(p.account_type, p.enterprise_since,
                                                                            order.ts):
            found.add("promoter_ineligible")
        elif enterprise.turned_enterprise(p.enterprise_since, order.ts):
            found.add(enterprise.REASON)
        if identity_match(p, ev):
            found.add("self_referral")
    if ev.exclusion_owner == "channel_partner":
        found.add("customer_owned_by_channel")
    elif ev.exclusion_owner == "direct_sales":
        found.add("customer_owned_by_direct_sales")
    if order.product in rules.ineligible_products or (order.category or "") in rules.ineligible_categories:
        found.add("product_ineligible")
    if click is not None:  # the click checks; a coupon attribution has no click to check
        if ev.signup.signup_ts - click.ts < rules.injection_max_s * 1000:
            found.add("click_injection")
        if click.bot:
            found.add("bot_traffic")
        if sig.flood_clicks > rules.flood_clicks_per_hour:
            found.add("click_flooding")
    if sig.farm_signups > rules.farm_signups_per_day:
        found.add("signup_farming")
    if order.amount >= rules.high_value_amount:
        found.add("high_value_review")
    if ev.order_status != "paid":
        found.add(ev.order_status)
    return [r for r in REASON_KINDS if r in found]


def status_of(reason_codes: list[str]) -> str:
    """rejected > reversed > held > approved (docs/rules.md)."""
    kinds = {REASON_KINDS[r] for r in reason_codes}
    if REJECT in kinds:
        return REJECTED
    if REVERSE in kinds:
        return REVERSED
    if HOLD in kinds:
        return HELD
    return APPROVED
