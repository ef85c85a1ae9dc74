"""The data of sample traffic: what to generate (`TrafficSpec`), what came out (`Traffic`) and
what a correct pipeline must make of it (`Truth`). Pure data, no logic beyond small views."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from schemas.units import DAY_MS, HOUR_MS

#: a fixed default "now" (2026-01-01T00:00:00Z) so that a bare TrafficSpec is reproducible
DEFAULT_END_MS = 1_767_225_600_000
REFERENCE_TOPICS = ("promoters", "exclusions", "fx_rates")
TRAFFIC_TOPICS = ("clicks", "signups", "orders")
TOPICS = REFERENCE_TOPICS + TRAFFIC_TOPICS
#: later events win; at equal event time the more final status wins (as in the pipeline)
STATUS_RANK = {"paid": 0, "cancelled": 1, "refunded": 2, "chargeback": 3}
REVERSAL_CODES = ("refunded", "cancelled", "chargeback")

#: labelled pattern -> the reason codes (docs/rules.md) an order of that pattern must carry.
#: The two refund patterns carry exactly one of theirs: the order's final status.
PATTERNS: dict[str, tuple[str, ...]] = {
    "click_flooding": ("click_flooding",),
    "click_injection": ("click_injection",),
    "click_spamming": ("click_spamming",),
    "bot_traffic": ("bot_traffic",),
    "self_referral": ("self_referral",),
    "signup_farming": ("signup_farming",),
    "refund_abuse": ("refunded", "chargeback"),
    "refund": ("refunded", "cancelled"),  # ordinary customers changing their minds
    "ineligible_promoter": ("promoter_ineligible",),
    "promoter_turns_enterprise": ("promoter_became_enterprise",),
    "channel_owned": ("customer_owned_by_channel",),
    "direct_sales_owned": ("customer_owned_by_direct_sales",),
    "ineligible_product": ("product_ineligible",),
    "big_order": ("high_value_review",),
}
#: fraud patterns `TrafficSpec.fraud` turns on -> default number of actors (see streams/dev/traffic/fraud.py)
FRAUD_COUNTS: dict[str, int] = {
    "click_flooding": 2,  # flooded IPs, 3 converting visitors each
    "click_injection": 4,  # accounts
    "click_spamming": 1,  # promoters, 30 attributed signups each
    "bot_traffic": 3,  # converting accounts (plus 4 browsing bots each)
    "self_referral": 5,  # accounts, one identity field shared each
    "signup_farming": 2,  # farms of 5-7 accounts (by IP, by device, alternately)
    "refund_abuse": 2,  # accounts, 3 reversed orders each
    "ineligible_promoter": 3,  # promoters: employee, partner staff, enterprise (in rotation)
    "promoter_turns_enterprise": 1,  # promoters
    "channel_owned": 1,  # email domains owned by a channel partner, 2 accounts each
    "ineligible_product": 3,  # accounts buying a marketplace product
    "big_order": 2,  # accounts with one order >= 50 000
}


@dataclass(frozen=True, kw_only=True)
class TrafficSpec:
    """What to generate. Fractions are of traffic events unless said otherwise."""

    seed: int = 0
    end_ms: int = DEFAULT_END_MS  # simulated "now": no event time is above it
    promoters: int = 20  # honest, eligible promoters sharing the ordinary traffic
    visitors: int = 5000
    days: float = 14.0  # traffic span before end_ms
    signup_rate: float = 0.08  # of visitors who clicked
    organic_rate: float = 0.02  # signups without any click, per visitor
    existing_customers: float = 0.01  # accounts that only order (no signup in the data), per visitor
    coupon_rate: float = 0.004  # signups with a KOL's coupon code (at signup or first order), per visitor
    currency: str = "USD"  # the program currency: most customers pay in it, `fx_rates` convert into it
    #: about one customer in eight pays in EUR, and a daily EUR rate is published (`fx_rates`)
    eur: bool = True
    exclusions: int = 3  # with fraud: attributed accounts already owned by a channel partner / direct sales
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
    fraud: bool = True  # add the labelled patterns (FRAUD_COUNTS, exclusions); off: honest traffic only
    fraud_counts: Mapping[str, int] | None = None  # per-pattern overrides of FRAUD_COUNTS (0: off)

    @property
    def start_ms(self) -> int:
        return self.end_ms - int(self.days * DAY_MS)

    @property
    def max_delay(self) -> int:
        d = int(0.9 * self.allowed_lateness_ms) if self.max_delay_ms is None else self.max_delay_ms
        return max(0, min(d, self.allowed_lateness_ms - 1))

    def fraud_count(self, pattern: str) -> int:
        """How many actors of a fraud pattern to generate (0 when fraud is off)."""
        if not self.fraud:
            return 0
        return (self.fraud_counts or {}).get(pattern, FRAUD_COUNTS[pattern])


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
    reversed: dict[str, str]  # those of `orders` later refunded/cancelled/charged back -> final status
    #: those of `orders` a coupon code attributes (the code wins over a click) -> the code
    coupons: dict[str, str] = field(default_factory=dict)

    @property
    def attributed(self) -> bool:
        """A click or a coupon code attributes the account (or some of its orders)."""
        return self.tracking_code is not None or bool(self.coupons)


@dataclass(frozen=True, slots=True)
class Expected:
    """What `conversions_current` must say about one attributed order (default rules)."""

    order_id: str
    account_id: str
    tracking_code: str
    promoter_id: str  # "" when no promoter owns the code at the order's time
    amount: Decimal
    status: str  # approved | held | rejected | reversed
    reasons: frozenset[str]  # every reason code that applies
    patterns: frozenset[str]  # labels of the generator (keys of PATTERNS); empty: honest
    currency: str = "USD"  # the order's own currency (of `amount`)
    fx_rate: Decimal = Decimal(1)  # program-currency units per unit of `currency` at the order's time

    @property
    def program_amount(self) -> Decimal:
        """`amount` in the program currency, rounded as docs/events.md says (half-even, 4 places)."""
        return (self.amount * self.fx_rate).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Truth:
    accounts: dict[str, AccountTruth]  # every account with a valid signup (organic ones too)
    promoters: dict[str, dict[str, Any]]  # tracking_code -> its latest promoter version's fields
    excluded_accounts: dict[str, str]  # account_id -> owner, for exclusions by account_id
    #: order_id -> expected status and reasons, for every attributed order
    expected: dict[str, Expected] = field(default_factory=dict)
    #: account_id or tracking_code of a generated actor -> its pattern labels
    actors: dict[str, frozenset[str]] = field(default_factory=dict)
    #: currency -> its rates as published on `fx_rates`: (effective_from, rate), sorted
    fx_rates: dict[str, list[tuple[int, Decimal]]] = field(default_factory=dict)

    def recruiter(self, promoter_id: str) -> str:
        """Who recruited `promoter_id` (his latest version's `parent_promoter_id`; the generator
        never changes it), '' for nobody: the promoter of his override lines."""
        for p in self.promoters.values():
            if p["promoter_id"] == promoter_id:
                return str(p.get("parent_promoter_id") or "")
        return ""

    @property
    def conversions(self) -> dict[str, tuple[str, str, Decimal, str]]:
        """order_id -> (account_id, tracking_code, amount, final order status) for attributed orders."""
        out = {}
        for a in self.accounts.values():
            for oid, amount in a.orders.items():
                code = "" if oid in a.coupons else a.tracking_code or ""  # a coupon conversion has no click
                out[oid] = (a.account_id, code, amount, a.reversed.get(oid, "paid"))
        return out

    def summary(self) -> dict[str, Any]:
        conv = self.conversions
        attributed = [a for a in self.accounts.values() if a.attributed]
        return {
            "signups": len(self.accounts),
            "attributed_signups": len(attributed),
            "organic_signups": len(self.accounts) - len(attributed),
            "attributed_orders": len(conv),
            # in the program currency (EUR orders at their fx rate), as the pipeline sums it
            "attributed_gmv": str(sum((e.program_amount for e in self.expected.values()), Decimal(0))
                                  if self.expected else sum((c[2] for c in conv.values()), Decimal(0))),
            "coupon_orders": sum(len(a.coupons) for a in self.accounts.values()),
            "foreign_currency_orders": sum(1 for e in self.expected.values() if e.currency in self.fx_rates),
            "recruited_promoters": sum(1 for p in self.promoters.values() if p.get("parent_promoter_id")),
            "reversed_orders": sum(1 for c in conv.values() if c[3] != "paid"),
            "excluded_accounts": len(self.excluded_accounts),
            "statuses": dict(sorted(Counter(e.status for e in self.expected.values()).items())),
            "patterns": dict(sorted(Counter(p for e in self.expected.values() for p in e.patterns).items())),
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
