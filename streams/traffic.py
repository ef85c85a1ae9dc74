"""Deterministic sample traffic for refstream, with the ground truth it implies (pure: no I/O).

`generate(TrafficSpec(seed=...))` builds promoters, visitors who click tracking links,
signups, orders, refunds and cancellations, then lays them out in a *delivery order*
(`Traffic.messages`) that is realistic for Kafka: event-time order with jitter, some
events displaced within the allowed lateness, a few delivered beyond it, a few duplicated,
optionally a few malformed. It never reads the wall clock nor the global `random`:
`spec.end_ms` is the simulated "now" and everything follows from `spec.seed`.

Lateness contract (checked by tests/test_generate.py), with L = `spec.allowed_lateness_ms`
and D = `spec.max_delay` (< L; 90 % of L by default):
- reference data (promoters, exclusions) comes first; its event times are before all traffic;
- every message flagged on_time / delayed / duplicate is delivered when no traffic event
  delivered before it has an event time above `its ts + D`: it is not late for any
  watermark computed from earlier deliveries (per partition, per kind or global);
- every message flagged late is delivered after some traffic event whose event time is
  above `its ts + L` (usually 4-12 L). Whether the pipeline reports it as late depends on
  its watermark (per partition, following the slowest input kind), so in practice most but
  not all of them are. They are therefore chosen among events that cannot change the
  attribution: clicks of visitors who never sign up, and orders of accounts that are not
  attributed (organic signups, existing customers): at most `spec.late` of the traffic.

Truth (`Traffic.truth`) follows the pipeline's rules on event times of valid, de-duplicated
events: a signup is attributed to the last (and, for `first_click_code`, the first) click
of the same visitor with `signup_ts - window <= click_ts <= signup_ts`, ties broken by
event_id; its attributed orders are the paid orders of the account with
`signup_ts <= order_ts <= signup_ts + binding`, and an order whose latest status event is
refunded / cancelled is listed in `reversed`. Late events are left out by definition, and
including them gives the same truth (they are chosen so; tests check both). The truth is
about attribution only: fraud checks, exclusions and ineligible promoters (reported in
`Truth.promoters` / `Truth.excluded_accounts`) are left to the consumer of the truth.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
#: a fixed default "now" (2026-01-01T00:00:00Z) so that a bare TrafficSpec is reproducible
DEFAULT_END_MS = 1_767_225_600_000
REFERENCE_TOPICS = ("promoters", "exclusions")
TRAFFIC_TOPICS = ("clicks", "signups", "orders")
TOPICS = REFERENCE_TOPICS + TRAFFIC_TOPICS
#: later events win; at equal event time the more final status wins (as in the pipeline)
_STATUS_RANK = {"paid": 0, "cancelled": 1, "refunded": 2, "chargeback": 3}
_CENT = Decimal("0.01")


@dataclass(frozen=True, kw_only=True)
class TrafficSpec:
    """What to generate. Fractions are of traffic events unless said otherwise."""

    seed: int = 0
    end_ms: int = DEFAULT_END_MS  # simulated "now": no event time is above it
    promoters: int = 20
    visitors: int = 5000
    days: float = 14.0  # traffic span before end_ms
    signup_rate: float = 0.08  # of visitors who clicked
    organic_rate: float = 0.02  # signups without any click, per visitor
    existing_customers: float = 0.01  # accounts that only order (no signup in the data), per visitor
    exclusions: int = 3  # attributed accounts already owned by direct sales / a channel partner
    out_of_order: float = 0.10  # displaced by up to max_delay
    late: float = 0.003  # delivered beyond the allowed lateness (from eligible events only)
    duplicates: float = 0.01  # delivered twice, same bytes
    malformed: int = 0  # number of malformed messages
    iso_ts: float = 0.03  # events whose ts is an ISO-8601 string instead of epoch millis
    allowed_lateness_ms: int = HOUR_MS
    max_delay_ms: int | None = None  # out-of-order displacement bound; None: 90% of lateness
    window_ms: int = 30 * DAY_MS  # attribution window (for the truth)
    binding_ms: int = 180 * DAY_MS  # binding period (for the truth)
    time_scale: float = 1.0  # > 1 compresses delays between a visitor's events (live demos)
    live: bool = False  # drop events before start_ms instead of keeping a visitor's old clicks

    @property
    def start_ms(self) -> int:
        return self.end_ms - int(self.days * DAY_MS)

    @property
    def max_delay(self) -> int:
        d = int(0.9 * self.allowed_lateness_ms) if self.max_delay_ms is None else self.max_delay_ms
        return max(0, min(d, self.allowed_lateness_ms - 1))


@dataclass(frozen=True, slots=True)
class AccountTruth:
    """Expected attribution of one signed-up account and its attributed orders."""

    account_id: str
    visitor_id: str
    signup_event_id: str
    signup_ts: int
    tracking_code: str | None  # last click within the window before the signup; None: organic
    click_event_id: str | None
    campaign: str | None
    first_click_code: str | None  # what the first_click model would choose
    orders: dict[str, Decimal]  # attributed paid orders: order_id -> amount paid
    reversed: dict[str, str]  # those of `orders` later refunded/cancelled -> final status


@dataclass(frozen=True)
class Truth:
    accounts: dict[str, AccountTruth]  # every account with a valid signup (organic ones too)
    promoters: dict[str, dict[str, Any]]  # tracking_code -> the promoter event's fields
    excluded_accounts: dict[str, str]  # account_id -> owner (direct_sales / channel_partner)

    @property
    def conversions(self) -> dict[str, tuple[str, str, Decimal, str]]:
        """order_id -> (account_id, tracking_code, amount, final status) for attributed orders."""
        out = {}
        for a in self.accounts.values():
            for oid, amount in a.orders.items():
                out[oid] = (a.account_id, a.tracking_code or "", amount, a.reversed.get(oid, "paid"))
        return out

    def summary(self) -> dict[str, Any]:
        conv = self.conversions
        attributed = [a for a in self.accounts.values() if a.tracking_code]
        return {
            "signups": len(self.accounts),
            "attributed_signups": len(attributed),
            "organic_signups": len(self.accounts) - len(attributed),
            "attributed_orders": len(conv),
            "attributed_gmv": str(sum((c[2] for c in conv.values()), Decimal(0))),
            "reversed_orders": sum(1 for c in conv.values() if c[3] != "paid"),
            "excluded_accounts": len(self.excluded_accounts),
        }


@dataclass(frozen=True)
class Counts:
    messages: dict[str, int]  # everything produced, per topic
    events: dict[str, int]  # valid unique events (late ones included), per topic
    late: dict[str, int]
    duplicates: dict[str, int]  # extra copies
    malformed: dict[str, int]
    out_of_order: int  # events displaced by more than the small network jitter


@dataclass
class Traffic:
    """Messages in delivery order plus, per message, what tests and live pacing need."""

    spec: TrafficSpec
    messages: list[tuple[str, bytes | None, bytes]]  # (topic without prefix, key, JSON value)
    deliver_at: list[int]  # non-decreasing simulated delivery time (ms); live mode paces on it
    ts: list[int | None]  # event time (ms) of each message; None for malformed ones
    event_ids: list[str | None]
    flags: list[str]  # reference | on_time | delayed | duplicate | late | malformed
    truth: Truth
    counts: Counts


# --- realistic vocabulary ----------------------------------------------------------------

_SITE = "https://www.example-cloud.com"
_PAGES = ["/", "/pricing", "/products/cloud-server", "/products/object-storage",
          "/products/managed-database", "/promotions/new-user", "/docs/getting-started"]
_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Mobile Safari/537.36",
]
_BOT_UAS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "python-requests/2.31.0", "curl/8.5.0"]
_UA_WEIGHTS = [30, 14, 18, 14, 6, 8, 10]
_IP_FIRST = [23, 31, 36, 45, 49, 62, 73, 81, 94, 101, 112, 139, 171, 183, 203, 213]
_CHANNELS = {
    "blog": lambda h, r: f"https://{h}.blog.example.net/posts/{r.randrange(1000, 9999)}",
    "forum": lambda h, r: f"https://forum.example.org/t/{h}-cloud-deal/{r.randrange(10000, 99999)}",
    "social": lambda h, r: f"https://t.co/{h[:5]}{r.randrange(100000, 999999)}",
    "video": lambda h, r: f"https://www.youtube.com/watch?v={h[:6]}{r.randrange(10000, 99999)}",
    "community": lambda h, r: None,  # group chats send no referrer
}
_MAIL = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "qq.com", "icloud.com"]
_COMPANY_MAIL = ["acme-corp.io", "globex.com", "initech.dev", "umbrella.co", "hooli.xyz"]
# (product, sku, category, monthly list price or one-off price, subscription?, weight)
_CATALOGUE = [
    ("cloud-server-basic", "CS-B1", "compute", "69.00", True, 30),
    ("cloud-server-pro", "CS-P4", "compute", "299.00", True, 12),
    ("object-storage-1tb", "OS-1T", "storage", "19.90", True, 18),
    ("managed-db-mysql", "DB-M2", "database", "129.00", True, 10),
    ("cdn-traffic-pack-1tb", "CDN-1T", "network", "49.00", False, 10),
    ("domain-registration", "DOM-1Y", "domain", "12.00", False, 12),
    ("ssl-certificate-dv", "SSL-DV", "security", "89.00", False, 5),
    ("waf-standard", "WAF-S", "security", "599.00", True, 2),
    ("email-workspace-5", "MAIL-5", "collaboration", "36.00", True, 6),
    ("enterprise-support", "SUP-E", "support", "2999.00", False, 1),
]
_PRODUCT_WEIGHTS = [p[5] for p in _CATALOGUE]
_ISO_ZONES = [timezone.utc, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5)),
              timezone(timedelta(hours=5, minutes=30))]
# relative activity per UTC hour (a broad day/night cycle over the main markets)
_HOURLY = [0.5, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 0.95,
           0.9, 0.9, 0.95, 1.0, 1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5]


@dataclass(slots=True)
class _Promoter:
    body: dict[str, Any]
    code: str
    campaigns: list[str]
    materials: list[str]
    referrers: list[str | None]


@dataclass(slots=True)
class _Ev:
    ts: int
    topic: str
    key: str | None
    body: dict[str, Any]
    iso: Any = None  # a tzinfo when ts is sent as an ISO-8601 string


class _Gen:
    """Builds the events; one instance per `generate` call."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.r = random.Random(spec.seed)
        self.start = spec.start_ms
        self.end = spec.end_ms
        # bulk mode keeps a signing-up visitor's older clicks, up to this far back
        self.floor = self.start if spec.live else self.start - 60 * DAY_MS
        self.events: list[_Ev] = []
        self.promoters: list[_Promoter] = []
        self.cum: list[float] = []
        self.signup_visitors: set[str] = set()

    # small helpers ------------------------------------------------------------------

    def eid(self) -> str:
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def hex(self, n: int) -> str:
        return f"{self.r.getrandbits(4 * n):0{n}x}"

    def delay(self, ms: float) -> int:
        """A real-world delay, compressed by time_scale (but never below min(ms, 10 s))."""
        s = self.spec.time_scale
        return int(ms if s == 1 else max(min(ms, 10_000), ms / s))

    def logu(self, lo: float, hi: float) -> float:
        return math.exp(self.r.uniform(math.log(lo), math.log(hi)))

    def when(self, lo: int, hi: int) -> int:
        """A time in [lo, hi] following the day/night cycle (real time only)."""
        r = self.r
        t = r.randint(lo, hi)
        if self.spec.time_scale == 1:
            for _ in range(4):
                if r.random() < _HOURLY[(t // HOUR_MS) % 24]:
                    break
                t = r.randint(lo, hi)
        return t

    def emit(self, ts: int, topic: str, key: str | None, body: dict[str, Any]) -> bool:
        """Record an event unless it falls after "now" (or, for traffic, before the floor)."""
        if ts > self.end or (ts < self.floor and topic in TRAFFIC_TOPICS):
            return False
        body = {"event_id": self.eid(), **body}  # event_id first: easier to read in a console
        if self.r.random() < self.spec.iso_ts:
            self.events.append(_Ev(ts, topic, key, body, self.r.choice(_ISO_ZONES)))
        else:
            self.events.append(_Ev(ts, topic, key, body))
        return True

    def pick_promoter(self) -> _Promoter:
        return self.promoters[bisect.bisect_left(self.cum, self.r.random() * self.cum[-1])]

    def ip(self) -> str:
        r = self.r
        return f"{r.choice(_IP_FIRST)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    # the population -------------------------------------------------------------------

    def make_promoters(self) -> None:
        r, n = self.r, self.spec.promoters
        codes: set[str] = set()
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        for i in range(n):
            code = "T-" + "".join(r.choice(alphabet) for _ in range(6))
            while code in codes:
                code = "T-" + "".join(r.choice(alphabet) for _ in range(6))
            codes.add(code)
            joined = self.start - r.randint(90 * DAY_MS, 720 * DAY_MS)
            # the top of the (Zipf-skewed) ranking are the seasoned, high-level promoters
            level = r.choices([1, 2, 3, 4, 5], [40, 25, 18, 10, 7])[0]
            if i < 3:
                level = max(level, 4)
            body = {
                "ts": joined, "promoter_id": f"P{100001 + i}", "tracking_code": code,
                "level": level, "account_type": "personal", "account_id": f"acc-p{100001 + i}",
                "is_employee": False, "is_partner_staff": False, "verified": r.random() < 0.8,
                "joined_at": joined,
            }
            # a few ineligible promoters, ranked mid-table so they get some traffic
            if n >= 8 and i == 5:
                body["is_employee"] = True
            if n >= 8 and i == 7:
                body["is_partner_staff"] = True
            if n >= 10 and i == 9:
                body["account_type"] = "enterprise"
            channel = r.choice(list(_CHANNELS))
            handle = self.hex(8)
            refs = [_CHANNELS[channel](handle, r) for _ in range(r.randint(1, 3))]
            self.promoters.append(_Promoter(
                body, code,
                campaigns=[f"cmp-{channel}-{self.hex(4)}" for _ in range(r.randint(1, 4))],
                materials=[f"mat-{r.randrange(10000, 99999)}" for _ in range(r.randint(1, 3))],
                referrers=refs,
            ))
            self.emit(joined, "promoters", code, body)
        # Zipf-like share of traffic: weight of rank i is 1 / (i + 1) ** 1.1
        total = 0.0
        for i in range(n):
            total += 1.0 / (i + 1) ** 1.1
            self.cum.append(total)

    def click(self, ts: int, visitor: dict[str, Any], p: _Promoter) -> None:
        r = self.r
        campaign = r.choice(p.campaigns)
        material = r.choice(p.materials)
        body = {
            "ts": ts, "tracking_code": p.code, "visitor_id": visitor["visitor_id"],
            "ip": visitor["ip"], "user_agent": visitor["ua"],
            "url": f"{_SITE}{r.choice(_PAGES)}?ref={p.code}&cmp={campaign}&mat={material}",
            "referrer": r.choice(p.referrers) if r.random() < 0.85 else None,
            "campaign": campaign, "material_id": material,
            "method": "HEAD" if r.random() < 0.003 else "GET",
        }
        self.emit(ts, "clicks", visitor["visitor_id"], body)

    def visitor(self) -> dict[str, Any]:
        r = self.r
        ua = r.choice(_BOT_UAS) if r.random() < 0.01 else r.choices(_UAS, _UA_WEIGHTS)[0]
        return {"visitor_id": f"v-{self.hex(16)}", "ip": self.ip(), "ua": ua,
                "device": f"dev-{self.hex(12)}"}

    def n_clicks(self) -> int:
        return self.r.choices([1, 2, 3, 4, 5], [55, 22, 12, 7, 4])[0]

    def gap(self) -> int:
        """Time between two visits of one visitor: minutes to days."""
        return self.delay(self.r.expovariate(1 / (1.5 * DAY_MS)) + 30_000)

    def browsing_visitor(self) -> None:
        """Clicks, never signs up: the bulk of the traffic."""
        v = self.visitor()
        p = self.pick_promoter()
        t = self.when(self.start, self.end)
        for _ in range(self.n_clicks()):
            if t > self.end:
                break
            self.click(t, v, p if self.r.random() < 0.85 else self.pick_promoter())
            t += self.gap()

    def referred_visitor(self) -> None:
        """Clicks, then signs up seconds to weeks later (a few after the window: organic)."""
        r = self.r
        v = self.visitor()
        primary = self.pick_promoter()
        signup = self.when(self.start, self.end)
        kind = r.random()
        n = self.n_clicks()
        if kind < 0.15:
            d = r.uniform(3_000, 120_000)
        elif kind < 0.55:
            d = self.logu(2 * MINUTE_MS, 6 * HOUR_MS)
        elif kind < 0.95:
            d = self.logu(6 * HOUR_MS, 20 * DAY_MS)
        else:  # the only click is older than the attribution window
            d, n = r.uniform(31 * DAY_MS, 45 * DAY_MS), 1
        if self.spec.live:  # forward in time: nothing before "now", the funnel still fills up
            self.live_referred_visitor(v, primary, n, self.delay(d))
            return
        t = signup - self.delay(d)
        self.click(t, v, primary)  # the attributed one (unless stale)
        for _ in range(n - 1):  # earlier visits, sometimes through another promoter's link
            t -= self.gap()
            self.click(t, v, primary if r.random() < 0.8 else self.pick_promoter())
        if r.random() < 0.1:  # comes back through a link after signing up: must not re-attribute
            self.click(signup + self.gap(), v, self.pick_promoter())
        self.signup(signup, v)

    def live_referred_visitor(self, v: dict[str, Any], primary: _Promoter, n: int, d: int) -> None:
        """Clicks from a time in the span on, then the signup `d` after the last click."""
        t = self.when(self.start, self.end)
        for i in range(n):
            if i:
                t += self.gap()
            self.click(t, v, primary if i == n - 1 or self.r.random() < 0.8 else self.pick_promoter())
        if t + d <= self.end:
            self.signup(t + d, v)

    def organic_signup(self) -> None:
        self.signup(self.when(self.start, self.end), self.visitor())

    def signup(self, ts: int, v: dict[str, Any]) -> None:
        r = self.r
        account = f"acc-{self.hex(12)}"
        enterprise = r.random() < 0.15
        domain = r.choice(_COMPANY_MAIL) if enterprise or r.random() < 0.1 else r.choice(_MAIL)
        body = {
            "ts": ts, "account_id": account, "visitor_id": v["visitor_id"],
            "ip": v["ip"] if r.random() < 0.9 else self.ip(), "user_agent": v["ua"],
            "email_domain": domain,
            "email_hash": hashlib.sha256(f"{account}@{domain}".encode()).hexdigest(),
            "account_type": "enterprise" if enterprise else "personal",
            "realname_id_hash": self.hex(32) if r.random() < 0.7 else None,
            "device_id": v["device"],
        }
        if self.emit(ts, "signups", v["visitor_id"], body):
            self.signup_visitors.add(v["visitor_id"])
            self.orders(account, ts + self.delay(self.logu(10 * MINUTE_MS, 20 * DAY_MS)))

    def existing_customer(self) -> None:
        """An account that signed up long ago without a referral and buys now."""
        account = f"acc-{self.hex(12)}"
        # their subscriptions began before the data: some orders are renewals
        self.orders(account, self.when(self.start, self.end), self.r.randint(1, 4), renewals=0.4)

    def orders(self, account: str, t: int, k: int | None = None, renewals: float = 0.0) -> None:
        """0..n checkouts from time t on; some carts hold several orders; renewals follow."""
        r = self.r
        if k is None:
            k = r.choices([0, 1, 2, 3, 4, 5], [40, 33, 13, 7, 4, 3])[0]
        for _ in range(k):
            if t > self.end:
                return
            products = r.sample(range(len(_CATALOGUE)), r.choice([2, 2, 3])) if r.random() < 0.15 \
                else r.choices(range(len(_CATALOGUE)), _PRODUCT_WEIGHTS)
            cart = f"cart-{self.hex(12)}"
            for j, pi in enumerate(products):
                ts = t + j * r.randrange(1, 400)  # one checkout, a few ms apart
                months = r.choice([1, 1, 1, 3, 12]) if _CATALOGUE[pi][4] else 1
                old_plan = _CATALOGUE[pi][4] and len(products) == 1 and r.random() < renewals
                self.order(account, ts, cart, pi, months, renewal=old_plan)
                if _CATALOGUE[pi][4] and months == 1 and r.random() < 0.4:
                    ts2 = ts
                    for _ in range(12):  # monthly renewals while they fall before "now"
                        ts2 += self.delay(30 * DAY_MS) + r.randrange(0, HOUR_MS)
                        if ts2 > self.end:
                            break
                        self.order(account, ts2, f"cart-{self.hex(12)}", pi, 1, renewal=True)
            t += self.delay(r.expovariate(1 / (7 * DAY_MS)) + HOUR_MS)

    def order(self, account: str, ts: int, cart: str, pi: int, months: int, renewal: bool) -> None:
        r = self.r
        product, sku, category, price, _, _ = _CATALOGUE[pi]
        listed = Decimal(price) * months
        if months == 12:
            listed = (listed * Decimal("0.85")).quantize(_CENT)  # yearly plan discount
        discount = (listed * Decimal("0.10")).quantize(_CENT) if r.random() < 0.5 else Decimal("0.00")
        amount = listed - discount
        body = {
            "ts": ts, "order_id": f"ord-{self.hex(12)}", "account_id": account, "cart_id": cart,
            "product": product, "sku": f"{sku}-{months}M", "category": category,
            # mostly exact decimal strings; some producers send JSON numbers
            "amount": str(amount) if r.random() < 0.8 else float(amount),
            "currency": "USD", "discount": str(discount), "status": "paid", "renewal": renewal,
        }
        if not self.emit(ts, "orders", account, body):
            return
        x = r.random()
        if x < 0.04:
            later, status = ts + self.delay(self.logu(HOUR_MS, 20 * DAY_MS)), "refunded"
        elif x < 0.055:
            later, status = ts + self.delay(self.logu(5 * MINUTE_MS, 2 * DAY_MS)), "cancelled"
        else:
            return
        self.emit(later, "orders", account, {**body, "ts": later, "status": status})

    def exclusions(self, truth_accounts: dict[str, AccountTruth]) -> dict[str, str]:
        """A few attributed accounts turn out to be owned by sales already (earns nothing)."""
        r = self.r
        candidates = sorted(a.account_id for a in truth_accounts.values() if a.orders)
        out = {}
        for account in r.sample(candidates, min(self.spec.exclusions, len(candidates))):
            since = self.start - r.randint(61 * DAY_MS, 365 * DAY_MS)  # before any traffic
            owner = r.choice(["direct_sales", "channel_partner"])
            out[account] = owner
            self.emit(since, "exclusions", account,
                      {"ts": since, "account_id": account, "owner": owner, "since": since})
        return out


def compute_truth(events: list[_Ev], spec: TrafficSpec) -> dict[str, AccountTruth]:
    """Attribution and attributed orders from (valid, unique) events, as the pipeline does."""
    clicks: dict[str, list[tuple[int, str, str, str]]] = {}
    signups: dict[str, tuple[int, str, str]] = {}  # account -> earliest (ts, event_id, visitor)
    orders: dict[str, dict[str, list[tuple[int, int, str, str, Decimal]]]] = {}
    for e in events:
        b = e.body
        if e.topic == "clicks":
            clicks.setdefault(b["visitor_id"], []).append((e.ts, b["event_id"], b["tracking_code"], b["campaign"]))
        elif e.topic == "signups":
            cur = signups.get(b["account_id"])
            if cur is None or (e.ts, b["event_id"]) < cur[:2]:
                signups[b["account_id"]] = (e.ts, b["event_id"], b["visitor_id"])
        elif e.topic == "orders":
            orders.setdefault(b["account_id"], {}).setdefault(b["order_id"], []).append(
                (e.ts, _STATUS_RANK[b["status"]], b["event_id"], b["status"], Decimal(str(b["amount"]))))
    out = {}
    for account, (sts, seid, vid) in signups.items():
        eligible = sorted(c for c in clicks.get(vid, ()) if sts - spec.window_ms <= c[0] <= sts)
        last = eligible[-1] if eligible else None
        attributed: dict[str, Decimal] = {}
        reversed_: dict[str, str] = {}
        if last is not None:
            for oid, evs in orders.get(account, {}).items():
                paid = [e for e in evs if e[3] == "paid"]
                if not paid or not sts <= paid[0][0] <= sts + spec.binding_ms:
                    continue
                attributed[oid] = paid[0][4]
                final = max(evs)[3]
                if final != "paid":
                    reversed_[oid] = final
        out[account] = AccountTruth(
            account, vid, seid, sts,
            last[2] if last else None, last[1] if last else None, last[3] if last else None,
            eligible[0][2] if eligible else None, attributed, reversed_,
        )
    return out


def _encode(e: _Ev) -> bytes:
    if e.iso is None:
        return msgspec.json.encode(e.body)
    iso = datetime.fromtimestamp(e.ts / 1000, e.iso).isoformat(timespec="milliseconds")
    return msgspec.json.encode({**e.body, "ts": iso.replace("+00:00", "Z")})


def _malformed(g: _Gen, i: int) -> tuple[str, str | None, bytes]:
    """One bad message of a few kinds, in rotation: each must be dead-lettered."""
    r, kind = g.r, i % 6
    ts = r.randint(g.start, g.end)
    eid, vid, code = g.eid(), f"v-{g.hex(16)}", g.pick_promoter().code if g.promoters else "T-XXXXXX"
    if kind == 0:  # not JSON at all (a truncated object)
        return "clicks", vid, f'{{"event_id": "{eid}", "ts": {ts}, "tracking_code": "{code}", "visi'.encode()
    if kind == 1:  # required field missing
        return "signups", vid, msgspec.json.encode({"event_id": eid, "ts": ts, "visitor_id": vid})
    if kind == 2:  # mistyped amount
        acc = f"acc-{g.hex(12)}"
        return "orders", acc, msgspec.json.encode({
            "event_id": eid, "ts": ts, "order_id": f"ord-{g.hex(12)}", "account_id": acc,
            "product": "cloud-server-basic", "amount": "sixty-nine dollars", "currency": "USD",
            "status": "paid"})
    if kind == 3:  # epoch seconds instead of milliseconds
        return "clicks", vid, msgspec.json.encode(
            {"event_id": eid, "ts": ts // 1000, "tracking_code": code, "visitor_id": vid})
    if kind == 4:  # far in the future (10 days after "now", so also at real produce time)
        return "clicks", vid, msgspec.json.encode(
            {"event_id": eid, "ts": g.end + 10 * DAY_MS, "tracking_code": code, "visitor_id": vid})
    naive = datetime.fromtimestamp(ts / 1000, timezone.utc).replace(tzinfo=None).isoformat()
    return "signups", vid, msgspec.json.encode(  # ISO-8601 without a timezone
        {"event_id": eid, "ts": naive, "account_id": f"acc-{g.hex(12)}", "visitor_id": vid})


def generate(spec: TrafficSpec) -> Traffic:
    """Build the traffic, its delivery order and its ground truth. Deterministic per seed."""
    _check(spec)
    g = _Gen(spec)
    r = g.r
    g.make_promoters()
    for _ in range(spec.visitors):
        if r.random() < spec.signup_rate:
            g.referred_visitor()
        else:
            g.browsing_visitor()
    for _ in range(round(spec.visitors * spec.organic_rate)):
        g.organic_signup()
    for _ in range(round(spec.visitors * spec.existing_customers)):
        g.existing_customer()
    accounts = compute_truth(g.events, spec)
    excluded = g.exclusions(accounts)

    refs = sorted((e for e in g.events if e.topic in REFERENCE_TOPICS), key=lambda e: (e.ts, e.body["event_id"]))
    traffic = sorted((e for e in g.events if e.topic in TRAFFIC_TOPICS), key=lambda e: (e.ts, e.body["event_id"]))
    # late only where it cannot change the truth: clicks of visitors who never sign up,
    # orders of accounts that are not attributed
    attributed = {a.account_id for a in accounts.values() if a.tracking_code}
    candidates = [
        i for i, e in enumerate(traffic)
        if (e.topic == "clicks" and e.body["visitor_id"] not in g.signup_visitors)
        or (e.topic == "orders" and e.body["account_id"] not in attributed)
    ]
    late = set(r.sample(candidates, min(len(candidates), round(spec.late * len(traffic)))))

    # on-time deliveries: key = ts + delay, with delay <= max_delay (< allowed lateness)
    dmax = spec.max_delay
    jitter = min(2_000, dmax)
    ontime: list[tuple[int, int, _Ev, str, bytes]] = []  # (deliver_at, seq, event, flag, value)
    n_ooo = 0
    late_evs = []
    for i, e in enumerate(traffic):
        if i in late:
            late_evs.append(e)
            continue
        value = _encode(e)
        if r.random() < spec.out_of_order:
            key, flag = e.ts + r.randint(0, dmax), "delayed"
            n_ooo += 1
        else:
            key, flag = e.ts + r.randint(0, jitter), "on_time"
        ontime.append((key, len(ontime), e, flag, value))
    n_dup = min(len(ontime), round(spec.duplicates * len(traffic)))
    for j in sorted(r.sample(range(len(ontime)), n_dup)):
        key, _, e, _, value = ontime[j]
        ontime.append((r.randint(key, e.ts + dmax), len(ontime), e, "duplicate", value))  # same bytes
    ontime.sort(key=lambda x: (x[0], x[1]))

    # late deliveries: right after the first event whose ts exceeds ts + lag, lag 4-12x the
    # lateness (the pipeline's watermark follows the slowest kind per partition: sparse
    # signups hold it back by hours, so a lag just above the lateness would rarely be late)
    prefix_max: list[int] = []
    m = -(2**62)
    for x in ontime:
        m = max(m, x[2].ts)
        prefix_max.append(m)
    inserts: dict[int, list[tuple[_Ev, str]]] = {}
    for e in late_evs:
        lag = r.randint(4 * spec.allowed_lateness_ms, 12 * spec.allowed_lateness_ms)
        i = bisect.bisect_right(prefix_max, e.ts + lag)
        if i == len(prefix_max):
            i = bisect.bisect_right(prefix_max, e.ts + spec.allowed_lateness_ms)
        if i == len(prefix_max):  # too close to the end to be late: deliver it on time
            inserts.setdefault(bisect.bisect_right(prefix_max, e.ts) - 1, []).append((e, "on_time"))
        else:
            inserts.setdefault(i, []).append((e, "late"))
    malformed = [(r.randint(-1, len(ontime) - 1), _malformed(g, k)) for k in range(spec.malformed)]
    bad_at: dict[int, list[tuple[str, str | None, bytes]]] = {}
    for pos, msg in sorted(malformed, key=lambda x: x[0]):
        bad_at.setdefault(pos, []).append(msg)

    out = Traffic(spec, [], [], [], [], [], Truth(accounts, {}, excluded), Counts({}, {}, {}, {}, {}, n_ooo))
    for e in refs:
        _add(out, e.topic, e.key, _encode(e), e.ts, e.ts, e.body["event_id"], "reference")
    for p in g.promoters:
        out.truth.promoters[p.code] = dict(p.body)

    def extras(i: int, at: int) -> None:
        for e, flag in inserts.get(i, ()):
            _add(out, e.topic, e.key, _encode(e), max(at, e.ts), e.ts, e.body["event_id"], flag)
        for topic, key, value in bad_at.get(i, ()):
            _add(out, topic, key, value, at, None, None, "malformed")

    extras(-1, ontime[0][0] if ontime else spec.start_ms)
    for i, (key, _, e, flag, value) in enumerate(ontime):
        _add(out, e.topic, e.key, value, key, e.ts, e.body["event_id"], flag)
        extras(i, key)
    _count(out)
    return out


def _check(spec: TrafficSpec) -> None:
    if spec.promoters < 1 or spec.visitors < 0 or spec.days <= 0 or spec.malformed < 0:
        raise ValueError("need promoters >= 1, visitors >= 0, days > 0 and malformed >= 0")
    for name in ("signup_rate", "organic_rate", "existing_customers", "out_of_order", "late",
                 "duplicates", "iso_ts"):
        if not 0 <= getattr(spec, name) <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
    if spec.allowed_lateness_ms < 1 or spec.time_scale < 1:
        raise ValueError("allowed_lateness_ms must be >= 1 and time_scale >= 1")


def _add(t: Traffic, topic: str, key: str | None, value: bytes, at: int, ts: int | None,
         eid: str | None, flag: str) -> None:
    t.messages.append((topic, key.encode() if key is not None else None, value))
    t.deliver_at.append(max(at, t.deliver_at[-1]) if t.deliver_at else at)
    t.ts.append(ts)
    t.event_ids.append(eid)
    t.flags.append(flag)


def _count(t: Traffic) -> None:
    c = t.counts
    for d in (c.messages, c.events, c.late, c.duplicates, c.malformed):
        d.update(dict.fromkeys(TOPICS, 0))
    for (topic, _, _), flag in zip(t.messages, t.flags):
        c.messages[topic] += 1
        if flag == "malformed":
            c.malformed[topic] += 1
        elif flag == "duplicate":
            c.duplicates[topic] += 1
        else:
            c.events[topic] += 1
            if flag == "late":
                c.late[topic] += 1
