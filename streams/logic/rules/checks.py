"""Fraud and exclusion checks: evidence about one conversion -> reason codes -> status.

Pure functions over plain data. The evidence is gathered by the account join: the
attributed click and signup (from state), the order, the promoter and exclusions as of
the order's time (reference data), and the cross-partition counters (`Signals`, Redis).
"""
from __future__ import annotations

from dataclasses import dataclass

import msgspec

from schemas.records import AttributionRec, OrderRec
from streams.logic.rules.ruleset import HOLD, REASON_KINDS, REJECT, REVERSE, RuleSet

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


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


class Signals(msgspec.Struct, frozen=True, kw_only=True):
    """Counters shared across partitions (see streams/adapters/signals.py), as of decision time."""

    flood_ip: int = 0  # clicks from the attributed click's IP on its code in its UTC hour
    flood_visitor: int = 0  # the same for its visitor
    farm_ip: int = 0  # accounts signed up from the signup's IP in its UTC day
    farm_device: int = 0  # the same for its device
    spam_signups: int = 0  # attributed signups of the tracking code
    spam_long: int = 0  # ... of which came long after their click


@dataclass(frozen=True, slots=True)
class Evidence:
    promoter: PromoterRef | None
    signup: AttributionRec  # with its click (never None here) and the signup's identity
    order: OrderRec
    order_status: str  # latest status of the order: paid | refunded | cancelled | chargeback
    exclusion_owner: str | None  # direct_sales | channel_partner, as of the order's time
    signals: Signals


def is_bot(user_agent: str | None, method: str, rules: RuleSet) -> bool:
    """A crawler or script by its user agent, or a HEAD request (no human does those)."""
    if method.upper() == "HEAD":
        return True
    ua = (user_agent or "").lower()  # no user agent at all proves nothing: trackers often omit it
    return any(marker in ua for marker in rules.bot_user_agents)


def _self_referral(p: PromoterRef, ev: Evidence) -> bool:
    ident = ev.signup.ident
    if p.account_id and p.account_id == ev.order.account_id:
        return True
    if ident is None:
        return False
    pairs = ((p.realname_id_hash, ident.realname_id_hash), (p.email_hash, ident.email_hash),
             (p.device_id, ident.device_id), (p.ip_hash, ident.ip_hash))
    return any(a and a == b for a, b in pairs)


def reasons(ev: Evidence, rules: RuleSet) -> list[str]:
    """Every reason code that applies, in the stable order of `REASON_KINDS`."""
    found: set[str] = set()
    p, click, order, sig = ev.promoter, ev.signup.click, ev.order, ev.signals
    assert click is not None
    if p is None:
        found.add("unknown_promoter")
    else:
        enterprise_then = p.enterprise_since is not None and p.enterprise_since <= order.ts
        if p.is_employee or p.is_partner_staff or p.account_type == "enterprise" or enterprise_then:
            found.add("promoter_ineligible")
        elif p.enterprise_since is not None and p.enterprise_since > order.ts:
            found.add("promoter_became_enterprise")
        if _self_referral(p, ev):
            found.add("self_referral")
    if ev.exclusion_owner == "channel_partner":
        found.add("customer_owned_by_channel")
    elif ev.exclusion_owner == "direct_sales":
        found.add("customer_owned_by_direct_sales")
    if order.product in rules.ineligible_products or (order.category or "") in rules.ineligible_categories:
        found.add("product_ineligible")
    if ev.signup.signup_ts - click.ts < rules.injection_max_s * 1000:
        found.add("click_injection")
    if click.bot:
        found.add("bot_traffic")
    if max(sig.flood_ip, sig.flood_visitor) > rules.flood_clicks_per_hour:
        found.add("click_flooding")
    if max(sig.farm_ip, sig.farm_device) > rules.farm_signups_per_day:
        found.add("signup_farming")
    if sig.spam_signups >= rules.spam_min_signups and sig.spam_long >= rules.spam_long_share * sig.spam_signups:
        found.add("click_spamming")
    if order.amount >= rules.high_value_amount:
        found.add("high_value_review")
    if ev.order_status != "paid":
        found.add(ev.order_status)
    return [r for r in REASON_KINDS if r in found]


def status_of(reason_codes: list[str]) -> str:
    """rejected > reversed > held > approved (docs/rules.md)."""
    kinds = {REASON_KINDS[r] for r in reason_codes}
    if REJECT in kinds:
        return "rejected"
    if REVERSE in kinds:
        return "reversed"
    if HOLD in kinds:
        return "held"
    return "approved"
