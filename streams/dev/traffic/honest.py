"""The honest population of sample traffic: promoters, visitors, signups, orders, refunds.

Honest traffic trips no check of docs/rules.md: browser user agents and GET only, IPs and
devices unique per visitor, signups at least 10 minutes after their click and mostly within
a day of it, no marketplace products, no order near the high-value threshold, promoters
all eligible. Only ordinary refunds and cancellations happen to honest orders (labelled
`refund`). The fraud patterns (streams/dev/traffic/fraud.py) build on the same helpers.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.dev.traffic.model import TRAFFIC_TOPICS, AccountTruth, TrafficSpec
from streams.dev.traffic.vocab import (
    CATALOGUE,
    CHANNELS,
    COMPANY_MAIL,
    HOURLY,
    IP_FIRST,
    ISO_ZONES,
    MAIL,
    PAGES,
    PRODUCT_WEIGHTS,
    SITE,
    UA_WEIGHTS,
    UAS,
)

Item = tuple[str, str, str, str, bool, int]  # a catalogue entry: product, sku, category, price, subscription, weight
_CENT = Decimal("0.01")
#: honest signups come at least this long after their click (click injection is < 10 s) ...
HONEST_MIN_SIGNUP_DELAY_MS = 10 * MINUTE_MS
#: ... and, in compressed live traffic, never closer than this
COMPRESSED_MIN_DELAY_MS = 60_000


@dataclass(slots=True)
class Promoter:
    body: dict[str, Any]  # the promoter event's fields (without event_id)
    code: str
    campaigns: list[str]
    materials: list[str]
    referrers: list[str | None]


@dataclass(slots=True)
class Ev:
    ts: int
    topic: str
    key: str | None
    body: dict[str, Any]
    iso: Any = None  # a tzinfo when ts is sent as an ISO-8601 string


class Gen:
    """Builds the events; one instance per `generate` call."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.r = random.Random(spec.seed)
        self.start = spec.start_ms
        self.end = spec.end_ms
        # bulk mode keeps a signing-up visitor's older clicks, up to this far back
        self.floor = self.start if spec.live else self.start - 60 * DAY_MS
        self.events: list[Ev] = []
        self.promoters: list[Promoter] = []  # all of them, in creation order
        self.pool: list[Promoter] = []  # the honest ones, sharing the ordinary traffic (Zipf)
        self.kols: list[Promoter] = []  # pool promoters with a coupon code they read aloud
        self.cum: list[float] = []
        self.codes: set[str] = set()
        self.signup_visitors: set[str] = set()
        # the generator's intent, composed per order into Expected.patterns
        self.account_labels: dict[str, set[str]] = {}
        self.order_labels: dict[str, set[str]] = {}
        self.code_labels: dict[str, set[str]] = {}
        self.actors: dict[str, set[str]] = {}  # labels of actors only, not of their orders
        #: events whose count-based checks depend on timely delivery: never late nor displaced
        self.protected: set[str] = set()

    # small helpers ------------------------------------------------------------------

    def eid(self) -> str:
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def hex(self, n: int) -> str:
        return f"{self.r.getrandbits(4 * n):0{n}x}"

    def delay(self, ms: float) -> int:
        """A real-world delay, compressed by time_scale (but never below min(ms, 10 s))."""
        s = self.spec.time_scale
        return int(ms if s == 1 else max(min(ms, 10_000), ms / s))

    def safe_delay(self, ms: float) -> int:
        """`delay`, but never compressed below a minute: keeps compressed traffic off the
        click-injection threshold."""
        return max(self.delay(ms), int(min(ms, COMPRESSED_MIN_DELAY_MS)))

    def logu(self, lo: float, hi: float) -> float:
        return math.exp(self.r.uniform(math.log(lo), math.log(hi)))

    def when(self, lo: int, hi: int) -> int:
        """A time in [lo, hi] following the day/night cycle (real time only)."""
        r = self.r
        t = r.randint(lo, hi)
        if self.spec.time_scale == 1:
            for _ in range(4):
                if r.random() < HOURLY[(t // HOUR_MS) % 24]:
                    break
                t = r.randint(lo, hi)
        return t

    def emit(self, ts: int, topic: str, key: str | None, body: dict[str, Any]) -> str | None:
        """Record an event unless it falls after "now" (or, for traffic, before the floor);
        return its event_id, or None when dropped."""
        if ts > self.end or (ts < self.floor and topic in TRAFFIC_TOPICS):
            return None
        body = {"event_id": self.eid(), **body}  # event_id first: easier to read in a console
        if self.r.random() < self.spec.iso_ts:
            self.events.append(Ev(ts, topic, key, body, self.r.choice(ISO_ZONES)))
        else:
            self.events.append(Ev(ts, topic, key, body))
        return body["event_id"]

    def label(self, labels: dict[str, set[str]], key: str, pattern: str) -> None:
        labels.setdefault(key, set()).add(pattern)

    def pick_promoter(self) -> Promoter:
        return self.pool[bisect.bisect_left(self.cum, self.r.random() * self.cum[-1])]

    def ip(self) -> str:
        r = self.r
        return f"{r.choice(IP_FIRST)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def browser_ua(self) -> str:
        return self.r.choices(UAS, UA_WEIGHTS)[0]

    # the population -------------------------------------------------------------------

    def new_promoter(self, *, pool: bool, level: int | None = None, kol: bool = False, **over: Any) -> Promoter:
        """A promoter who joined long before the traffic, with his own identity (for the
        self-referral check); `over` sets fields of his first version; a `kol` owns a coupon code."""
        r = self.r
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        code = "T-" + "".join(r.choice(alphabet) for _ in range(6))
        while code in self.codes:
            code = "T-" + "".join(r.choice(alphabet) for _ in range(6))
        self.codes.add(code)
        n = len(self.promoters)
        joined = self.start - r.randint(90 * DAY_MS, 720 * DAY_MS)
        pid = f"P{100001 + n}"
        body = {
            "ts": joined, "promoter_id": pid, "tracking_code": code,
            "level": level or r.choices([1, 2, 3, 4, 5], [40, 25, 18, 10, 7])[0],
            "account_type": "personal", "account_id": f"acc-p{100001 + n}",
            "is_employee": False, "is_partner_staff": False, "verified": r.random() < 0.8,
            "joined_at": joined,
            "realname_id_hash": self.hex(32),
            "email_hash": hashlib.sha256(f"{pid.lower()}@{r.choice(MAIL)}".encode()).hexdigest(),
            "device_id": f"dev-{self.hex(12)}", "ip": self.ip(),
            **({"coupon_codes": ["KOL" + code[2:]]} if kol else {}),
            **over,
        }
        channel = r.choice(list(CHANNELS))
        handle = self.hex(8)
        p = Promoter(
            body, code,
            campaigns=[f"cmp-{channel}-{self.hex(4)}" for _ in range(r.randint(1, 4))],
            materials=[f"mat-{r.randrange(10000, 99999)}" for _ in range(r.randint(1, 3))],
            referrers=[CHANNELS[channel](handle, r) for _ in range(r.randint(1, 3))],
        )
        self.promoters.append(p)
        if pool:
            self.pool.append(p)
        self.emit(joined, "promoters", code, body)
        return p

    def make_promoters(self) -> None:
        for i in range(self.spec.promoters):
            # the top of the (Zipf-skewed) ranking are the seasoned, high-level promoters
            # a few KOLs also own a coupon code (derived from the tracking code: no extra random draw)
            # every fifth was recruited by one of the first promoters (two-level referrals: his
            # recruiter earns override lines); no extra random draw, no cycle (the parent is older)
            parent = {"parent_promoter_id": self.pool[i // 5].body["promoter_id"]} if i % 5 == 4 else {}
            p = self.new_promoter(pool=True, level=self.r.choice([4, 5]) if i < 3 else None, kol=i % 7 == 3,
                                  **parent)
            if p.body.get("coupon_codes"):
                self.kols.append(p)
        # Zipf-like share of traffic: weight of rank i is 1 / (i + 1) ** 1.1
        total = 0.0
        for i in range(len(self.pool)):
            total += 1.0 / (i + 1) ** 1.1
            self.cum.append(total)

    def click(self, ts: int, visitor: dict[str, Any], p: Promoter, **over: Any) -> str | None:
        r = self.r
        campaign = r.choice(p.campaigns)
        material = r.choice(p.materials)
        body = {
            "ts": ts, "tracking_code": p.code, "visitor_id": visitor["visitor_id"],
            "ip": visitor["ip"], "user_agent": visitor["ua"],
            "url": f"{SITE}{r.choice(PAGES)}?ref={p.code}&cmp={campaign}&mat={material}",
            "referrer": r.choice(p.referrers) if r.random() < 0.85 else None,
            "campaign": campaign, "material_id": material, "method": "GET", **over,
        }
        return self.emit(ts, "clicks", visitor["visitor_id"], body)

    def visitor(self, **over: Any) -> dict[str, Any]:
        v = {"visitor_id": f"v-{self.hex(16)}", "ip": self.ip(), "ua": self.browser_ua(),
             "device": f"dev-{self.hex(12)}"}
        return {**v, **over}

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
        """Clicks, then signs up 10 minutes to weeks later, mostly within a day (a few only
        after the attribution window: organic)."""
        r = self.r
        v = self.visitor()
        primary = self.pick_promoter()
        signup = self.when(self.start, self.end)
        kind = r.random()
        n = self.n_clicks()
        if kind < 0.55:
            d = self.logu(HONEST_MIN_SIGNUP_DELAY_MS, 6 * HOUR_MS)
        elif kind < 0.85:
            d = self.logu(6 * HOUR_MS, 20 * HOUR_MS)
        elif kind < 0.95:  # long deliberation: well past the click-spamming delay of 24 h
            d = self.logu(36 * HOUR_MS, 20 * DAY_MS)
        else:  # the only click is older than the attribution window
            d, n = r.uniform(31 * DAY_MS, 45 * DAY_MS), 1
        if self.spec.live:  # forward in time: nothing before "now", the funnel still fills up
            self.live_referred_visitor(v, primary, n, self.safe_delay(d))
            return
        t = signup - self.delay(d)
        self.click(t, v, primary)  # the attributed one (unless stale)
        for _ in range(n - 1):  # earlier visits, sometimes through another promoter's link
            t -= self.gap()
            self.click(t, v, primary if r.random() < 0.8 else self.pick_promoter())
        if r.random() < 0.1:  # comes back through a link after signing up: must not re-attribute
            self.click(signup + self.gap(), v, self.pick_promoter())
        self.signup(signup, v)

    def live_referred_visitor(self, v: dict[str, Any], primary: Promoter, n: int, d: int) -> None:
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
        """An honest signup and its orders."""
        account = self.new_signup(ts, v)
        if account:
            self.orders(account, ts + self.delay(self.logu(10 * MINUTE_MS, 20 * DAY_MS)))

    def new_signup(self, ts: int, v: dict[str, Any], account: str | None = None, domain: str | None = None,
                   **over: Any) -> str | None:
        """Emit a signup of visitor `v`; return the account id, or None when dropped."""
        r = self.r
        account = account or f"acc-{self.hex(12)}"
        enterprise = r.random() < 0.15
        if domain is None:
            domain = r.choice(COMPANY_MAIL) if enterprise or r.random() < 0.1 else r.choice(MAIL)
        body = {
            "ts": ts, "account_id": account, "visitor_id": v["visitor_id"],
            "ip": v["ip"] if r.random() < 0.9 else self.ip(), "user_agent": v["ua"],
            "email_domain": domain,
            "email_hash": hashlib.sha256(f"{account}@{domain}".encode()).hexdigest(),
            "account_type": "enterprise" if enterprise else "personal",
            "realname_id_hash": self.hex(32) if r.random() < 0.7 else None,
            "device_id": v["device"], **over,
        }
        if not self.emit(ts, "signups", v["visitor_id"], body):
            return None
        self.signup_visitors.add(v["visitor_id"])
        return account

    def coupon_customer(self) -> None:
        """A KOL's audience: signs up without a referral link, entering the KOL's coupon code at
        signup or redeeming it with the first checkout; a third clicked another promoter's link
        before (the code wins over the click: `attribution_precedence` "coupon")."""
        r = self.r
        if not self.kols:
            return
        v = self.visitor()
        code = r.choice(self.kols).body["coupon_codes"][0]
        ts = self.when(self.start, self.end)
        if r.random() < 0.33:
            self.click(ts - self.delay(self.logu(HONEST_MIN_SIGNUP_DELAY_MS, 6 * HOUR_MS)), v, self.pick_promoter())
        at_signup = r.random() < 0.5
        account = self.new_signup(ts, v, **({"coupon_code": code} if at_signup else {}))
        if account:
            self.orders(account, ts + self.delay(self.logu(10 * MINUTE_MS, 20 * DAY_MS)), r.randint(1, 3),
                        coupon=None if at_signup else code)

    def existing_customer(self) -> None:
        """An account that signed up long ago without a referral and buys now."""
        account = f"acc-{self.hex(12)}"
        # their subscriptions began before the data: some orders are renewals
        self.orders(account, self.when(self.start, self.end), self.r.randint(1, 4), renewals=0.4)

    def orders(self, account: str, t: int, k: int | None = None, renewals: float = 0.0,
               coupon: str | None = None) -> None:
        """0..n checkouts from time t on; some carts hold several orders; renewals follow. The
        first checkout redeems `coupon` if given."""
        r = self.r
        if k is None:
            k = r.choices([0, 1, 2, 3, 4, 5], [40, 33, 13, 7, 4, 3])[0]
        for _ in range(k):
            if t > self.end:
                return
            products = r.sample(range(len(CATALOGUE)), r.choice([2, 2, 3])) if r.random() < 0.15 \
                else r.choices(range(len(CATALOGUE)), PRODUCT_WEIGHTS)
            cart = f"cart-{self.hex(12)}"
            for j, pi in enumerate(products):
                item = CATALOGUE[pi]
                ts = t + j * r.randrange(1, 400)  # one checkout, a few ms apart
                months = r.choice([1, 1, 1, 3, 12]) if item[4] else 1
                old_plan = item[4] and len(products) == 1 and r.random() < renewals
                self.order(account, ts, cart, item, months, renewal=old_plan, coupon=coupon)
                if item[4] and months == 1 and r.random() < 0.4:
                    ts2 = ts
                    for _ in range(12):  # monthly renewals while they fall before "now"
                        ts2 += self.delay(30 * DAY_MS) + r.randrange(0, HOUR_MS)
                        if ts2 > self.end:
                            break
                        self.order(account, ts2, f"cart-{self.hex(12)}", item, 1, renewal=True)
            t += self.delay(r.expovariate(1 / (7 * DAY_MS)) + HOUR_MS)
            coupon = None

    def order(self, account: str, ts: int, cart: str, item: Item, months: int, renewal: bool, *,
              reversal: str | tuple[str, int, str] | None = "random", price: Decimal | None = None,
              coupon: str | None = None) -> str | None:
        """Emit a paid order and maybe its reversal; return the order id, or None when dropped.

        `reversal`: "random" (a few refunds and cancellations, labelled `refund`), None, or
        (status, ts, pattern) for a deliberate one.
        """
        r = self.r
        product, sku, category, list_price, _, _ = item
        listed = (price if price is not None else Decimal(list_price)) * months
        if months == 12:
            listed = (listed * Decimal("0.85")).quantize(_CENT)  # yearly plan discount
        discount = (listed * Decimal("0.10")).quantize(_CENT) if r.random() < 0.5 else Decimal("0.00")
        amount = listed - discount
        oid = f"ord-{self.hex(12)}"
        body = {
            "ts": ts, "order_id": oid, "account_id": account, "cart_id": cart,
            "product": product, "sku": f"{sku}-{months}M", "category": category,
            # mostly exact decimal strings; some producers send JSON numbers
            "amount": str(amount) if r.random() < 0.8 else float(amount),
            "currency": self.currency_of(account), "discount": str(discount), "status": "paid", "renewal": renewal,
            **({"coupon_code": coupon} if coupon else {}),
        }
        if not self.emit(ts, "orders", account, body):
            return None
        if reversal == "random":
            x = r.random()
            if x < 0.04:
                reversal = ("refunded", ts + self.delay(self.logu(HOUR_MS, 20 * DAY_MS)), "refund")
            elif x < 0.055:
                reversal = ("cancelled", ts + self.delay(self.logu(5 * MINUTE_MS, 2 * DAY_MS)), "refund")
            else:
                reversal = None
        if isinstance(reversal, tuple):
            status, later, pattern = reversal
            if self.emit(later, "orders", account, {**body, "ts": later, "status": status}):
                self.label(self.order_labels, oid, pattern)
        return oid

    def currency_of(self, account: str) -> str:
        """What a customer pays in: EUR for about one in eight (`spec.eur`), else the program
        currency. Derived from the account id, not drawn: the rest of the traffic stays the same."""
        eur = self.spec.eur and int(hashlib.sha256(account.encode()).hexdigest()[:8], 16) % 8 == 0
        return "EUR" if eur else self.spec.currency

    def fx_rates(self) -> None:
        """A daily EUR rate into the program currency (`fx_rates`), published the evening before
        the day it applies from, from the day before the first EUR order to the last day. From
        its own random stream, so that the traffic does not change with it. Live traffic gets
        only the rate in force at its start (a rate effective later would lie in the future when
        the reference data is produced)."""
        paid = [e.ts for e in self.events if e.topic == "orders" and e.body["currency"] == "EUR"]
        if not paid:
            return
        r = random.Random(f"fx-{self.spec.seed}")
        last = self.start if self.spec.live else self.end
        rate = Decimal("1.0850")
        day = (min(paid) // DAY_MS - 1) * DAY_MS
        while day <= last:
            date = datetime.fromtimestamp(day / 1000, UTC).date().isoformat()
            ts = day - 8 * HOUR_MS
            body = {"event_id": str(uuid.UUID(int=r.getrandbits(128), version=4)), "ts": ts, "currency": "EUR",
                    "rate": str(rate), "effective_from": day}
            # keyed by currency and start: compaction keeps every rate, not only the latest
            self.events.append(Ev(ts, "fx_rates", f"EUR/{date}", body))
            rate = (rate * Decimal(1 + r.gauss(0, 0.003))).quantize(Decimal("0.0001"))
            day += DAY_MS

    def account_exclusions(self, accounts: dict[str, AccountTruth]) -> dict[str, str]:
        """`spec.exclusions` honest attributed accounts turn out to be owned already (since
        before any traffic): labelled channel_owned / direct_sales_owned in turn."""
        r = self.r
        candidates = self.honest_accounts(accounts)
        out = {}
        for i, account in enumerate(r.sample(candidates, min(self.spec.exclusions, len(candidates)))):
            since = self.start - r.randint(61 * DAY_MS, 365 * DAY_MS)
            owner = "channel_partner" if i % 2 == 0 else "direct_sales"
            out[account] = owner
            self.label(self.account_labels, account, "channel_owned" if i % 2 == 0 else "direct_sales_owned")
            self.emit(since, "exclusions", account,
                      {"ts": since, "account_id": account, "owner": owner, "since": since})
        return out

    def honest_accounts(self, accounts: dict[str, AccountTruth]) -> list[str]:
        """Attributed accounts with orders and no label at all (theirs, their orders' or their
        promoter's), sorted."""
        return sorted(a.account_id for a in accounts.values()
                      if a.orders and a.account_id not in self.account_labels
                      and not self.code_labels.get(a.tracking_code or "")
                      and not any(oid in self.order_labels for oid in a.orders))
