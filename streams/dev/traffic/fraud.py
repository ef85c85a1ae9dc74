"""Labelled fraud patterns mixed into sample traffic (`TrafficSpec.fraud`).

Each pattern makes `spec.fraud_count(pattern)` actors and labels them (account, order or
tracking code) so that every attributed order of the pattern must carry exactly the reason
codes of `PATTERNS[pattern]` under the default rules of docs/rules.md. Patterns do not
overlap, and every one stays well away from its threshold (30-60 clicks an hour for > 20,
5-7 signups a day for > 3, signups 0.5-6 s after the click for < 10 s, 80 % long delays
for >= 50 %, orders >= 54 000 for >= 50 000).

Count-based signals are kept clear of "as of decision time" effects: the pipeline reads
flood and farming counters when an attribution becomes final and spam counts when an order
is decided, so the events a count needs come well before (`margin`), farms sign up in a
burst shorter than the allowed lateness, and those events are never delivered late or
displaced (`Gen.protected`). Click spamming and the promoter turning enterprise need days
of history or a promoter version dated inside the traffic: they are left out of live traffic.
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.dev.traffic.honest import Gen, Item, Promoter
from streams.dev.traffic.vocab import BIG_DEAL, BOT_UAS, CATALOGUE, CHANNEL_DOMAINS, MARKETPLACE, PRODUCT_WEIGHTS


def add_fraud(g: Gen) -> None:
    """Add every enabled pattern's actors to `g` (after the honest traffic)."""
    for pattern, make in MAKERS.items():
        for i in range(g.spec.fraud_count(pattern)):
            make(g, i)


# --- helpers -----------------------------------------------------------------------------


def margin(g: Gen) -> int:
    """Between the last event a count needs and the first decision reading it: twice the
    allowed lateness plus an hour, so the pipeline has seen every counted event by then."""
    return g.safe_delay(2 * g.spec.allowed_lateness_ms + HOUR_MS)


def at(g: Gen, lo: float, hi: float) -> int:
    """A time between the fractions lo and hi of the traffic span."""
    span = g.end - g.start
    return g.r.randint(g.start + int(lo * span), g.start + int(hi * span))


def then(g: Gen, lo: int) -> int:
    """A time from `lo` on, at a random point of the first 80 % of what is left before "now"
    (so that a pattern's orders fall inside the traffic whatever its span)."""
    return lo + int(g.r.random() * 0.8 * max(0, g.end - lo))


def bought(g: Gen, click_ts: int) -> int:
    """When an account referred by a click at `click_ts` first buys: after its signup
    (at most 6 hours after the click), before "now"."""
    return then(g, click_ts + g.safe_delay(7 * HOUR_MS))


def short_delay(g: Gen) -> int:
    """An honest-looking click -> signup delay: 10 minutes to 6 hours."""
    return g.safe_delay(g.logu(10 * MINUTE_MS, 6 * HOUR_MS))


def referral(g: Gen, p: Promoter, click_ts: int, delay: int, *, visitor: dict[str, Any] | None = None,
             click: dict[str, Any] | None = None, **signup: Any) -> str | None:
    """One click on `p`, then the visitor signs up `delay` later; the account id or None."""
    v = visitor or g.visitor()
    g.click(click_ts, v, p, **(click or {}))
    return g.new_signup(click_ts + delay, v, **signup)


def buy(g: Gen, account: str | None, t: int, n: int, *, until: int | None = None) -> None:
    """`n` single-order checkouts of ordinary products from `t` on (none after `until`),
    never reversed: the account's label alone decides what its orders must carry."""
    if account is None:
        return
    for _ in range(n):
        if until is not None and t > until:
            break
        item: Item = g.r.choices(CATALOGUE, PRODUCT_WEIGHTS)[0]
        g.order(account, t, f"cart-{g.hex(12)}", item, 1, False, reversal=None)
        t += g.delay(g.r.expovariate(1 / (2 * DAY_MS)) + HOUR_MS)


def labelled(g: Gen, account: str | None, pattern: str) -> str | None:
    """Label a (possibly dropped) account with `pattern`; return it."""
    if account is not None:
        g.label(g.account_labels, account, pattern)
    return account


# --- the patterns --------------------------------------------------------------------------


def click_flooding(g: Gen, i: int) -> None:
    """One IP hammers a code with 30-60 clicks in one UTC hour under a dozen-odd cookies;
    three of those cookies' owners sign up hours later (from their own IP) and buy."""
    r, p = g.r, g.pick_promoter()
    lo = max(at(g, 0.05, 0.5) // HOUR_MS * HOUR_MS, g.start)
    hi = min(lo // HOUR_MS * HOUR_MS + HOUR_MS - 1, lo + (g.end - g.start) // 4)
    ip = g.ip()
    visitors = [g.visitor(ip=ip) for _ in range(r.randint(12, 20))]
    clicked: dict[str, dict[str, Any]] = {}
    for _ in range(r.randint(30, 60)):
        v = r.choice(visitors)
        eid = g.click(r.randint(lo, hi), v, p)
        if eid:
            g.protected.add(eid)
            clicked[v["visitor_id"]] = v
    for vid in r.sample(sorted(clicked), min(3, len(clicked))):
        real = {**clicked[vid], "ip": g.ip()}  # the person behind the cookie, at home
        s = hi + margin(g) + g.delay(r.uniform(0, 6 * HOUR_MS))
        account = labelled(g, g.new_signup(s, real), "click_flooding")
        buy(g, account, then(g, s + g.safe_delay(30 * MINUTE_MS)), r.randint(1, 2))


def click_injection(g: Gen, i: int) -> None:
    """A signup 0.5-6 s after its click (uncompressed, even live)."""
    r, p = g.r, g.pick_promoter()
    t = at(g, 0.05, 0.85)
    account = labelled(g, referral(g, p, t, r.randint(500, 6_000)), "click_injection")
    buy(g, account, bought(g, t), r.randint(1, 2))


def click_spamming(g: Gen, i: int) -> None:
    """A promoter whose 30 attributed signups came, 24 of them, 1.5-20 days after the click
    (plus spread-out clicks that never convert); his orders all follow his last signup."""
    if g.spec.live:
        return
    r = g.r
    p = g.new_promoter(pool=False)
    g.label(g.code_labels, p.code, "click_spamming")
    accounts, last = [], g.start
    for j in range(30):
        s = at(g, 0.02, 0.5)
        d = int(g.logu(36 * HOUR_MS, 20 * DAY_MS)) if j < 24 else short_delay(g)
        account = referral(g, p, s - d, d)
        if account:
            accounts.append(account)
            last = max(last, s)
    for _ in range(60):  # clicks sprayed over the span
        g.click(at(g, 0.0, 1.0), g.visitor(), p)
    for account in accounts:
        if r.random() < 0.5:
            buy(g, account, then(g, last + margin(g)), 1)


def bot_traffic(g: Gen, i: int) -> None:
    """A converting account whose attributed click was a crawler / script user agent or a
    HEAD request, plus a few browsing bots that never sign up."""
    r, p = g.r, g.pick_promoter()
    click = {"method": "HEAD"} if i % 3 == 2 else {"user_agent": BOT_UAS[(i + i // 3) % len(BOT_UAS)]}
    t = at(g, 0.05, 0.85)
    account = labelled(g, referral(g, p, t, short_delay(g), click=click), "bot_traffic")
    buy(g, account, bought(g, t), r.randint(1, 2))
    for _ in range(4):
        bot = g.visitor(ua=r.choice(BOT_UAS))
        t = at(g, 0.0, 1.0)
        for _ in range(r.randint(1, 5)):
            g.click(t, bot, g.pick_promoter())
            t += g.delay(r.uniform(1_000, 10 * MINUTE_MS))


_SELF = ("account", "device", "email", "realname", "ip")


def self_referral(g: Gen, i: int) -> None:
    """A promoter refers himself: his own account, or a signup with his device, email,
    real-name id or IP (one field each, in rotation over promoters of the pool)."""
    r = g.r
    p = g.pool[(3 + i // len(_SELF)) % len(g.pool)]
    b, kind = p.body, _SELF[i % len(_SELF)]
    if kind == "account" and b["account_id"] in g.account_labels:
        return  # his account signed up already
    v = g.visitor(ip=b["ip"]) if kind == "ip" else g.visitor()
    signup: dict[str, Any] = {
        "account": {"account": b["account_id"]}, "device": {"device_id": b["device_id"]},
        "email": {"email_hash": b["email_hash"]}, "realname": {"realname_id_hash": b["realname_id_hash"]},
        "ip": {"ip": b["ip"]},
    }[kind]
    t = at(g, 0.05, 0.85)
    account = labelled(g, referral(g, p, t, short_delay(g), visitor=v, **signup), "self_referral")
    buy(g, account, bought(g, t), r.randint(1, 2))


def signup_farming(g: Gen, i: int) -> None:
    """5-7 accounts signed up in one short burst from one IP (even i) or one device (odd i),
    each after its own click; their orders come after the day's counts are complete."""
    r, p = g.r, g.pick_promoter()
    burst = min(15 * MINUTE_MS, g.spec.allowed_lateness_ms // 4, (g.end - g.start) // 4)
    day = at(g, 0.05, 0.55) // DAY_MS * DAY_MS
    lo, hi = max(day, g.start), min(day + DAY_MS - 1, g.end) - burst
    b0 = r.randint(lo, max(lo, hi))
    shared_ip, shared_dev, ua = g.ip(), f"dev-{g.hex(12)}", g.browser_ua()
    farmed = []
    for s in sorted(r.randint(b0, b0 + burst) for _ in range(r.randint(5, 7))):
        v = g.visitor(ip=shared_ip, ua=ua) if i % 2 == 0 else g.visitor(device=shared_dev)
        d = g.safe_delay(g.logu(10 * MINUTE_MS, 3 * HOUR_MS))
        eid = g.click(s - d, v, p)
        sig: dict[str, Any] = {"ip": shared_ip} if i % 2 == 0 else {}
        account = g.new_signup(s, v, **sig)
        if account is None:
            continue
        g.protected.add(g.events[-1].body["event_id"])  # the signup: on time for the daily counter
        if eid:
            g.protected.add(eid)
        farmed.append(labelled(g, account, "signup_farming"))
    for account in farmed:
        buy(g, account, then(g, b0 + burst + margin(g)), 1)


def refund_abuse(g: Gen, i: int) -> None:
    """An account that buys three times and takes every payment back (refund or chargeback)."""
    r, p = g.r, g.pick_promoter()
    t = at(g, 0.05, 0.8)
    account = referral(g, p, t, short_delay(g))
    if account is None:
        return
    # an actor label only: an order is labelled when its reversal falls within the traffic
    g.label(g.actors, account, "refund_abuse")
    t = bought(g, t)
    for _ in range(3):
        item: Item = r.choices(CATALOGUE, PRODUCT_WEIGHTS)[0]
        status = "chargeback" if r.random() < 0.5 else "refunded"
        back = t + max(1, min(g.safe_delay(g.logu(HOUR_MS, 5 * DAY_MS)), (g.end - t) // 2))
        g.order(account, t, f"cart-{g.hex(12)}", item, 1, False, reversal=(status, back, "refund_abuse"))
        t += g.delay(r.uniform(HOUR_MS, 2 * DAY_MS))


_INELIGIBLE = ({"is_employee": True}, {"is_partner_staff": True}, {"account_type": "enterprise"})


def ineligible_promoter(g: Gen, i: int) -> None:
    """An employee, partner-staff or enterprise promoter with five ordinary referrals."""
    p = g.new_promoter(pool=False, **_INELIGIBLE[i % len(_INELIGIBLE)])
    g.label(g.code_labels, p.code, "ineligible_promoter")
    for _ in range(5):
        t = at(g, 0.02, 0.85)
        account = referral(g, p, t, short_delay(g))
        buy(g, account, bought(g, t), g.r.randint(1, 2))


def promoter_turns_enterprise(g: Gen, i: int) -> None:
    """A personal promoter whose later version (dated inside the traffic) is an enterprise
    account: every order before it is reversed; he gets none after it."""
    if g.spec.live:
        return
    p = g.new_promoter(pool=False)
    g.label(g.code_labels, p.code, "promoter_turns_enterprise")
    switch = at(g, 0.7, 0.8)
    g.emit(switch, "promoters", p.code, {**p.body, "ts": switch, "account_type": "enterprise"})
    for _ in range(6):
        t = at(g, 0.02, 0.45)
        account = referral(g, p, t, short_delay(g))
        lo, cutoff = t + g.safe_delay(7 * HOUR_MS), switch - margin(g)
        buy(g, account, lo + int(g.r.random() * 0.5 * max(0, cutoff - lo)), g.r.randint(1, 2), until=cutoff)


def channel_owned(g: Gen, i: int) -> None:
    """An email domain owned by a channel partner (since before the traffic); two of its
    people sign up through an ordinary promoter and buy."""
    r = g.r
    domain = CHANNEL_DOMAINS[i % len(CHANNEL_DOMAINS)]
    domain = domain if i < len(CHANNEL_DOMAINS) else f"{i}.{domain}"
    since = g.start - r.randint(30 * DAY_MS, 365 * DAY_MS)
    g.emit(since, "exclusions", domain, {"ts": since, "email_domain": domain, "owner": "channel_partner",
                                          "since": since})
    for _ in range(2):
        t = at(g, 0.05, 0.85)
        account = labelled(g, referral(g, g.pick_promoter(), t, short_delay(g), domain=domain), "channel_owned")
        buy(g, account, bought(g, t), r.randint(1, 2))


def ineligible_product(g: Gen, i: int) -> None:
    """A marketplace product, sometimes in one cart with an ordinary (eligible) order."""
    r = g.r
    t = at(g, 0.05, 0.85)
    account = referral(g, g.pick_promoter(), t, short_delay(g))
    if account is None:
        return
    t = bought(g, t)
    cart = f"cart-{g.hex(12)}"
    oid = g.order(account, t, cart, MARKETPLACE[i % len(MARKETPLACE)], 1, False, reversal=None)
    if oid:
        g.label(g.order_labels, oid, "ineligible_product")
    if r.random() < 0.5:
        g.order(account, t + r.randrange(1, 400), cart, r.choices(CATALOGUE, PRODUCT_WEIGHTS)[0], 1, False,
                reversal=None)


def big_order(g: Gen, i: int) -> None:
    """One prepaid deal of 60 000-95 000 (54 000 at least after a discount)."""
    r = g.r
    t = at(g, 0.05, 0.85)
    account = referral(g, g.pick_promoter(), t, short_delay(g))
    if account is None:
        return
    t = bought(g, t)
    oid = g.order(account, t, f"cart-{g.hex(12)}", BIG_DEAL, 1, False, reversal=None,
                  price=Decimal(r.randrange(60_000, 95_000)))
    if oid:
        g.label(g.order_labels, oid, "big_order")


def exclusion_after_orders(g: Gen, paid_ts: dict[str, list[int]], candidates: list[str]) -> str | None:
    """A precision probe, not a pattern: an honest account owned by a channel partner only
    *since after* its last order, so none of its conversions may be rejected."""
    r = g.r
    fits = [a for a in candidates if paid_ts.get(a) and max(paid_ts[a]) < g.end - 2 * DAY_MS]
    if g.spec.live or not fits:
        return None
    account = r.choice(fits)
    since = max(paid_ts[account]) + r.randint(HOUR_MS, DAY_MS)
    g.emit(since, "exclusions", account, {"ts": since, "account_id": account, "owner": "channel_partner",
                                           "since": since})
    return account


MAKERS: dict[str, Callable[[Gen, int], None]] = {
    "click_flooding": click_flooding,
    "click_injection": click_injection,
    "click_spamming": click_spamming,
    "bot_traffic": bot_traffic,
    "self_referral": self_referral,
    "signup_farming": signup_farming,
    "refund_abuse": refund_abuse,
    "ineligible_promoter": ineligible_promoter,
    "promoter_turns_enterprise": promoter_turns_enterprise,
    "channel_owned": channel_owned,
    "ineligible_product": ineligible_product,
    "big_order": big_order,
}
