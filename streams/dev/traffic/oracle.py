"""The ground truth of sample traffic, computed from its (valid, unique) events.

`compute_truth` is the attribution: which click each signup is attributed to, which coupon
codes (at signup, with an order) attribute which orders, and which orders are conversions.
`expected_conversions` is the oracle of the checks: for every attributed order, the reason
codes and status docs/rules.md gives it, written from that page alone (not from
streams/logic/rules/) so that the two can be compared. Counts (click flooding,
signup farming, click spamming) are taken over the whole traffic, which is what the
pipeline's counters hold at decision time as long as the generator keeps fraud away from
the decision-time edge (see streams/dev/traffic/fraud.py).
"""
from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.units import DAY_MS, HOUR_MS
from streams.dev.traffic.honest import Ev
from streams.dev.traffic.model import STATUS_RANK, AccountTruth, Expected, TrafficSpec

#: docs/rules.md, in its order: what each reason code does to the status
REJECTING = ("unknown_promoter", "promoter_ineligible", "customer_owned_by_channel",
             "customer_owned_by_direct_sales", "self_referral", "product_ineligible", "click_injection",
             "bot_traffic", "click_flooding", "signup_farming")
REVERSING = ("promoter_became_enterprise", "refunded", "chargeback", "cancelled")
HOLDING = ("click_spamming", "high_value_review")
REASON_CODES = REJECTING + REVERSING + HOLDING


@dataclass(frozen=True)
class Rules:
    """The thresholds of docs/rules.md, defaults as documented there."""

    injection_max_s: float = 10
    flood_clicks_per_hour: int = 20
    farm_signups_per_day: int = 3
    spam_min_signups: int = 20
    spam_long_share: float = 0.5
    spam_long_delay_h: float = 24
    high_value_amount: Decimal = Decimal(50_000)
    ineligible_products: frozenset[str] = frozenset()
    ineligible_categories: frozenset[str] = frozenset({"marketplace"})
    #: user-agent markers of crawlers and scripts (lower case)
    bot_markers: tuple[str, ...] = ("bot", "crawl", "spider", "python-requests", "curl/", "wget")
    #: "coupon": a coupon code wins over a click; "click": it attributes only accounts without one
    attribution_precedence: str = "coupon"


def status_of(reasons: Iterable[str]) -> str:
    """rejected > reversed > held > approved."""
    found = set(reasons)
    if found & set(REJECTING):
        return "rejected"
    if found & set(REVERSING):
        return "reversed"
    if found & set(HOLDING):
        return "held"
    return "approved"


def compute_truth(events: list[Ev], spec: TrafficSpec, rules: Rules = Rules()) -> dict[str, AccountTruth]:
    """Attribution and attributed orders from (valid, unique) events, as the pipeline does.

    An order in the binding period is attributed by the latest coupon code used up to it (at
    signup or with a paid order of the account, itself included) when that code wins over
    the click (docs/rules.md, `attribution_precedence`), else by the click; else it is none."""
    clicks: dict[str, list[tuple[int, str, str, str]]] = {}
    signups: dict[str, tuple[int, str, str, str]] = {}  # account -> earliest (ts, event_id, visitor, coupon)
    orders: dict[str, dict[str, list[tuple[int, int, str, str, Decimal, str]]]] = {}
    for e in events:
        b = e.body
        if e.topic == "clicks":
            clicks.setdefault(b["visitor_id"], []).append((e.ts, b["event_id"], b["tracking_code"], b["campaign"]))
        elif e.topic == "signups":
            cur = signups.get(b["account_id"])
            if cur is None or (e.ts, b["event_id"]) < cur[:2]:
                signups[b["account_id"]] = (e.ts, b["event_id"], b["visitor_id"], b.get("coupon_code") or "")
        elif e.topic == "orders":
            orders.setdefault(b["account_id"], {}).setdefault(b["order_id"], []).append(
                (e.ts, STATUS_RANK[b["status"]], b["event_id"], b["status"], Decimal(str(b["amount"])),
                 b.get("coupon_code") or ""))
    out = {}
    for account, (sts, seid, vid, signup_code) in signups.items():
        eligible = sorted(c for c in clicks.get(vid, ()) if sts - spec.window_ms <= c[0] <= sts)
        last = eligible[-1] if eligible else None
        attributed: dict[str, Decimal] = {}
        reversed_: dict[str, str] = {}
        coupons: dict[str, str] = {}
        in_binding = []  # (paid ts, order_id, amount, coupon, final status)
        for oid, evs in orders.get(account, {}).items():
            paid = [e for e in evs if e[3] == "paid"]
            if paid and sts <= paid[0][0] <= sts + spec.binding_ms:
                in_binding.append((paid[0][0], oid, paid[0][4], paid[0][5], max(evs)[3]))
        code = signup_code  # the latest code used so far (every use wins: one rule set here)
        for _, oid, amount, order_code, final in sorted(in_binding):
            code = order_code or code
            wins = bool(code) and (last is None or rules.attribution_precedence == "coupon")
            if not wins and last is None:
                continue
            attributed[oid] = amount
            if wins:
                coupons[oid] = code
            if final != "paid":
                reversed_[oid] = final
        out[account] = AccountTruth(
            account, vid, seid, sts,
            last[2] if last else None, last[1] if last else None, last[3] if last else None,
            eligible[0][2] if eligible else None, attributed, reversed_, coupons,
        )
    return out


def expected_conversions(events: list[Ev], accounts: Mapping[str, AccountTruth],
                         labels: Mapping[str, frozenset[str]], rules: Rules = Rules()) -> dict[str, Expected]:
    """order_id -> expected status, reasons and pattern labels for every attributed order."""
    versions: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    exclusions: list[dict[str, Any]] = []
    by_id: dict[str, Ev] = {}
    paid: dict[str, Ev] = {}  # order_id -> its (first) paid event
    fx: dict[str, list[tuple[int, str, Decimal]]] = {}  # currency -> (effective_from, event_id, rate)
    flood: Counter[tuple[str, str, str, int]] = Counter()  # (ip|visitor, key, code, hour) -> clicks
    farm: dict[tuple[str, str, int], set[str]] = {}  # (ip|device, key, day) -> accounts
    for e in events:
        b = e.body
        if e.topic == "promoters":
            versions.setdefault(b["tracking_code"], []).append((e.ts, b["event_id"], b))
        elif e.topic == "exclusions":
            exclusions.append(b)
        elif e.topic == "fx_rates":
            start = b.get("effective_from") or e.ts
            fx.setdefault(b["currency"], []).append((start, b["event_id"], Decimal(b["rate"])))
        elif e.topic == "clicks":
            by_id[b["event_id"]] = e
            hour = e.ts // HOUR_MS
            flood["visitor", b["visitor_id"], b["tracking_code"], hour] += 1
            if b.get("ip"):
                flood["ip", b["ip"], b["tracking_code"], hour] += 1
        elif e.topic == "signups":
            by_id[b["event_id"]] = e
            for kind in ("ip", "device_id"):
                if b.get(kind):
                    farm.setdefault((kind, b[kind], e.ts // DAY_MS), set()).add(b["account_id"])
        elif e.topic == "orders" and b["status"] == "paid":
            paid.setdefault(b["order_id"], e)
    for v in versions.values():
        v.sort(key=lambda x: (x[0], x[1]))
    spam = _spam(accounts, by_id, rules)
    out: dict[str, Expected] = {}
    for a in accounts.values():
        if not a.orders:
            continue
        signup = by_id[a.signup_event_id]
        s = signup.body
        day = signup.ts // DAY_MS
        farmed = any(len(farm.get((k, s[k], day), ())) > rules.farm_signups_per_day
                     for k in ("ip", "device_id") if s.get(k))
        for oid, code in a.coupons.items():  # no click: none of the click checks
            order = paid[oid]
            owner = _coupon_owner(versions, code, order.ts)
            reasons = ({"signup_farming"} if farmed else set()) | _order_reasons(
                order, a, s, versions.get(owner, []) if owner else [], exclusions, rules)
            if oid in a.reversed:
                reasons.add(a.reversed[oid])
            version = _as_of(versions.get(owner, []), order.ts) if owner else None
            out[oid] = Expected(oid, a.account_id, "", version["promoter_id"] if version else "",
                                a.orders[oid], status_of(reasons), frozenset(reasons), labels.get(oid, frozenset()),
                                *_in_program_currency(order, fx))
        if a.tracking_code is None or a.click_event_id is None:
            continue
        click = by_id[a.click_event_id]
        found: set[str] = set()
        c = click.body
        if signup.ts - click.ts < rules.injection_max_s * 1000:
            found.add("click_injection")
        ua = (c.get("user_agent") or "").lower()
        if c.get("method", "GET").upper() == "HEAD" or any(m in ua for m in rules.bot_markers):
            found.add("bot_traffic")
        hour = click.ts // HOUR_MS
        if max(flood["visitor", c["visitor_id"], a.tracking_code, hour],
               flood["ip", c["ip"], a.tracking_code, hour] if c.get("ip") else 0) > rules.flood_clicks_per_hour:
            found.add("click_flooding")
        if farmed:
            found.add("signup_farming")
        if spam.get(a.tracking_code, False):
            found.add("click_spamming")
        for oid, amount in a.orders.items():
            if oid in a.coupons:
                continue
            order = paid[oid]
            reasons = found | _order_reasons(order, a, s, versions.get(a.tracking_code, []), exclusions, rules)
            if oid in a.reversed:
                reasons.add(a.reversed[oid])
            version = _as_of(versions.get(a.tracking_code, []), order.ts)
            out[oid] = Expected(oid, a.account_id, a.tracking_code, version["promoter_id"] if version else "",
                                amount, status_of(reasons), frozenset(reasons), labels.get(oid, frozenset()),
                                *_in_program_currency(order, fx))
    return out


def _in_program_currency(order: Ev, fx: Mapping[str, list[tuple[int, str, Decimal]]]) -> tuple[str, Decimal]:
    """The order's currency and the rate into the program currency in force at its time: the
    rate with the latest `effective_from` not after it (of equal ones, the higher event_id).
    A currency without rates is the program currency (rate 1); the generator publishes a rate
    before every order of another one (no `fx_rate_missing` in its traffic)."""
    currency = order.body["currency"]
    if currency not in fx:
        return currency, Decimal(1)
    before = [x for x in fx[currency] if x[0] <= order.ts]
    if not before:
        raise ValueError(f"no {currency} rate in force at order {order.body['order_id']}")
    return currency, max(before)[2]


def _as_of(versions: list[tuple[int, str, dict[str, Any]]], ts: int) -> dict[str, Any] | None:
    i = bisect.bisect_right([v[0] for v in versions], ts)
    return versions[i - 1][2] if i else None


def _coupon_owner(versions: Mapping[str, list[tuple[int, str, dict[str, Any]]]], code: str,
                  ts: int) -> str | None:
    """The tracking code of the promoter whose version in force at `ts` (the first one
    before any) lists coupon `code`; the most recent such version when several do."""
    owners = []
    for tracking_code, vs in versions.items():
        v = _as_of(vs, ts) or (vs[0][2] if vs else None)
        if v is not None and code in (v.get("coupon_codes") or ()):
            i = [x[2] for x in vs].index(v)
            owners.append((vs[i][0], vs[i][1], tracking_code))
    return max(owners)[2] if owners else None


def _order_reasons(order: Ev, a: AccountTruth, signup: dict[str, Any], versions: list[tuple[int, str, dict[str, Any]]],
                   exclusions: list[dict[str, Any]], rules: Rules) -> set[str]:
    """The checks that depend on the order's time or content."""
    found: set[str] = set()
    o = order.body
    p = _as_of(versions, order.ts)
    if p is None:
        found.add("unknown_promoter")
    else:
        if p.get("is_employee") or p.get("is_partner_staff") or p.get("account_type") == "enterprise":
            found.add("promoter_ineligible")
        elif any(v[0] > order.ts and v[2].get("account_type") == "enterprise"
                 and v[2]["promoter_id"] == p["promoter_id"] for v in versions):
            found.add("promoter_became_enterprise")
        if p.get("account_id") == a.account_id or any(
                p.get(k) and p.get(k) == signup.get(k) for k in ("realname_id_hash", "email_hash", "device_id", "ip")):
            found.add("self_referral")
    domain = (signup.get("email_domain") or "").lower()
    for x in exclusions:
        since: int = x["since"] if x.get("since") is not None else x["ts"]
        if since <= order.ts and (x.get("account_id") == a.account_id
                                  or (domain and (x.get("email_domain") or "").lower() == domain)):
            found.add("customer_owned_by_channel" if x["owner"] == "channel_partner"
                      else "customer_owned_by_direct_sales")
    if o["product"] in rules.ineligible_products or (o.get("category") or "") in rules.ineligible_categories:
        found.add("product_ineligible")
    if Decimal(str(o["amount"])) >= rules.high_value_amount:
        found.add("high_value_review")
    return found


def _spam(accounts: Mapping[str, AccountTruth], by_id: Mapping[str, Ev], rules: Rules) -> dict[str, bool]:
    """tracking_code -> whether its attributed signups look click-spammed."""
    total: Counter[str] = Counter()
    long: Counter[str] = Counter()
    for a in accounts.values():
        if a.tracking_code is None or a.click_event_id is None:
            continue
        total[a.tracking_code] += 1
        if a.signup_ts - by_id[a.click_event_id].ts > rules.spam_long_delay_h * HOUR_MS:
            long[a.tracking_code] += 1
    return {code: n >= rules.spam_min_signups and long[code] >= rules.spam_long_share * n
            for code, n in total.items()}
