"""Rule sets: every threshold and commission table, versioned with an effective date.

A `RuleBook` is the history of rule sets; the one in force at an order's event time checks
and prices it, and its `version` is recorded on the conversion. Rule books load from TOML
(`REFSTREAM_RULES_FILE`, see docs/rules.md); without a file the SPEC defaults apply.
"""
from __future__ import annotations

import bisect
import tomllib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from schemas.units import DAY_MS, HOUR_MS

#: reason code -> what it does to the status (precedence: reject > reverse > hold)
REJECT, REVERSE, HOLD = "reject", "reverse", "hold"
REASON_KINDS: dict[str, str] = {
    "unknown_promoter": REJECT,
    "promoter_ineligible": REJECT,
    "customer_owned_by_channel": REJECT,
    "customer_owned_by_direct_sales": REJECT,
    "self_referral": REJECT,
    "product_ineligible": REJECT,
    "click_injection": REJECT,
    "bot_traffic": REJECT,
    "click_flooding": REJECT,
    "signup_farming": REJECT,
    "promoter_became_enterprise": REVERSE,
    "refunded": REVERSE,
    "chargeback": REVERSE,
    "cancelled": REVERSE,
    "click_spamming": HOLD,
    "high_value_review": HOLD,
    "fx_rate_missing": HOLD,
    "override_withdrawn": REVERSE,
}


class Tier(msgspec.Struct, frozen=True):
    volume: Decimal  # attributed monthly sales at or above which the bonus rate applies
    bonus_rate: Decimal


class RuleSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One version of the program rules. Defaults are SPEC §4-5's."""

    version: str = "default"
    effective_from: int = 0  # epoch ms; ISO-8601 in TOML
    # fraud and exclusion checks
    injection_max_s: float = 10
    flood_clicks_per_hour: int = 20
    farm_signups_per_day: int = 3
    spam_min_signups: int = 20
    spam_long_share: float = 0.5
    spam_long_delay_h: float = 24
    high_value_amount: Decimal = Decimal(50_000)
    ineligible_products: tuple[str, ...] = ()
    ineligible_categories: tuple[str, ...] = ("marketplace",)
    bot_user_agents: tuple[str, ...] = (
        "bot", "crawl", "spider", "slurp", "headless", "python-requests", "curl", "wget",
        "httpclient", "scrapy", "phantomjs",
    )
    # commission
    level_rates: tuple[Decimal, ...] = tuple(Decimal(r) for r in ("0.15", "0.20", "0.25", "0.28", "0.31"))
    cap_per_order: Decimal = Decimal(100_000)
    tiers: tuple[Tier, ...] = (Tier(Decimal(10_000), Decimal("0.01")), Tier(Decimal(50_000), Decimal("0.02")))
    new_customer_bonus: Decimal = Decimal(50)
    points_per_unit: int = 100
    #: points earned in earlier months needed for levels 2, 3, ...
    level_points: tuple[int, ...] = (100_000, 500_000, 2_000_000, 10_000_000)
    #: level rates of renewal orders (`renewal = true`); empty: `level_rates`
    renewal_level_rates: tuple[Decimal, ...] = ()
    #: commission only on orders within this many months of the customer's first paid order (0: always)
    recurring_months: int = 0
    #: commission on at most this many paid orders per customer (0: no limit)
    max_orders_per_customer: int = 0
    #: customers who had paid before their attributed click earn their promoter commission too
    existing_customers_earn: bool = True
    #: most commission per referred customer (0: no cap), over his lifetime or per window of
    #: `cap_per_customer_months` months from his first paid order
    cap_per_customer: Decimal = Decimal(0)
    cap_per_customer_months: int = 0
    #: most commission per promoter and calendar month (0: no cap)
    cap_per_promoter_month: Decimal = Decimal(0)
    #: days after a calendar month ends during which its rejections and reversals still lower
    #: its volume, caps and points (and re-price its later orders); at least 2
    month_close_days: int = 7
    #: how an account is attributed when it has both a click and a coupon code: "coupon" | "click"
    attribution_precedence: str = "coupon"
    #: two-level referrals: a recruiting promoter earns this share of his recruit's commission
    #: (0: none), on orders within `override_months` months of the recruit joining (0: always)
    override_rate: Decimal = Decimal(0)
    override_months: int = 0
    #: sales champions: the bonus of the month's 1st, 2nd, ... promoter by approved sales
    #: (program currency); the version in force at the month's last millisecond
    champion_bonuses: tuple[Decimal, ...] = ()
    # after the decision (docs/payouts.md). Per order, the version in force at its event time:
    #: days of event time after the order before an approved conversion is payable
    holding_days: int = 30
    #: commission + bonus above this (0: never) is paid in `instalment_months` monthly parts
    instalment_above: Decimal = Decimal(0)
    instalment_months: int = 3
    # Per payout run, the version in force at the run's cut-off:
    #: a promoter's payout below this (per currency) carries over to the next run
    minimum_payout: Decimal = Decimal(100)
    #: per currency, overriding `minimum_payout` (100 JPY and 100 KWD are not the same sum)
    minimum_payouts: dict[str, Decimal] = {}
    #: payouts also cash the promoter's matured points at `points_per_unit` per currency unit
    points_cashable: bool = False

    @property
    def spam_long_delay_ms(self) -> int:
        return int(self.spam_long_delay_h * HOUR_MS)

    def __post_init__(self) -> None:
        for currency, minimum in self.minimum_payouts.items():
            if not (len(currency) == 3 and currency.isascii() and currency.isupper() and currency.isalpha()):
                raise ValueError(f"minimum_payouts: {currency!r} is not an ISO-4217 code like USD")
            if minimum < 0:
                raise ValueError(f"minimum_payouts: the minimum for {currency} must not be negative")
        if min(self.cap_per_customer, self.cap_per_promoter_month) < 0 or min(
                self.recurring_months, self.max_orders_per_customer, self.cap_per_customer_months) < 0:
            raise ValueError("caps, recurring_months, max_orders_per_customer and cap_per_customer_months "
                             "must not be negative (0 means no limit)")
        if any(b < 0 for b in self.champion_bonuses):
            raise ValueError("champion_bonuses must not be negative")
        if self.attribution_precedence not in ("coupon", "click"):
            raise ValueError('attribution_precedence must be "coupon" or "click"')
        if not Decimal(0) <= self.override_rate <= Decimal(1) or self.override_months < 0:
            raise ValueError("override_rate must be between 0 and 1 and override_months not negative")
        if self.month_close_days < 2:
            raise ValueError("month_close_days must be at least 2: a month's last decisions reach the pricing "
                             "stage up to a day after it ends")
        if self.renewal_level_rates and len(self.renewal_level_rates) != len(self.level_rates):
            raise ValueError("renewal_level_rates needs one rate per level, like level_rates")
        if self.minimum_payout < 0 or self.instalment_above < 0 or self.instalment_months < 1 or self.holding_days < 0:
            raise ValueError("minimum_payout and instalment_above must not be negative, instalment_months must be "
                             "at least 1 and holding_days not negative")

    @property
    def holding_ms(self) -> int:
        return self.holding_days * DAY_MS


class RuleBook:
    """Rule sets by effective date; `at(ts)` is the one in force at event time `ts`.
    `time_zone` (IANA name) is the program's: its calendar months (tiers, monthly caps,
    levels) end at midnight there."""

    def __init__(self, rule_sets: list[RuleSet], time_zone: str = "UTC", currency: str = "") -> None:
        if currency and not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
            raise ValueError(f"currency {currency!r} is not an ISO-4217 code like USD")
        #: the program currency: amounts are converted into it (fx_rates); '' = none, no conversion
        self.currency = currency
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone {time_zone!r} is not an IANA time zone like UTC or Asia/Shanghai") from None
        self.time_zone = time_zone
        if not rule_sets:
            rule_sets = [RuleSet()]
        self.rule_sets = sorted(rule_sets, key=lambda r: r.effective_from)
        versions = [r.version for r in self.rule_sets]
        if len(set(versions)) != len(versions):
            raise ValueError(f"rule set versions must be unique, got {versions}")
        self._starts = [r.effective_from for r in self.rule_sets]

    def at(self, ts: int) -> RuleSet:
        """The rule set in force at `ts`; before the first one, the first one."""
        i = bisect.bisect_right(self._starts, ts)
        return self.rule_sets[max(i, 1) - 1]


def _ms(value: object) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("effective_from needs a timezone, e.g. 2026-03-01T00:00:00Z")
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        return _ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
    if isinstance(value, int):
        return value
    raise ValueError(f"effective_from must be a time, not {value!r}")


def parse_rules(doc: Mapping[str, object]) -> RuleBook:
    """A rule book from a TOML document: `[[rule_set]]` tables, each a `RuleSet`."""
    items = doc.get("rule_set", [])
    if not isinstance(items, list):
        raise ValueError("rule_set must be an array of tables: [[rule_set]]")
    unknown = set(doc) - {"rule_set", "time_zone", "currency"}
    if unknown:
        raise ValueError(f"unknown top-level rule book fields {sorted(unknown)}: only time_zone, currency "
                         "and [[rule_set]]")
    currency = doc.get("currency", "")
    if not isinstance(currency, str):
        raise ValueError("currency must be a string like \"USD\"")
    time_zone = doc.get("time_zone", "UTC")
    if not isinstance(time_zone, str):
        raise ValueError("time_zone must be a string like \"Asia/Shanghai\"")
    sets = []
    for table in items:
        item: dict[str, object] = dict(table)
        if "effective_from" in item:
            item["effective_from"] = _ms(item["effective_from"])
        sets.append(msgspec.convert(item, RuleSet, strict=False))
    return RuleBook(sets, time_zone, currency)


def load_rules(path: str) -> RuleBook:
    """The rule book in `path` (TOML), or the defaults when `path` is empty."""
    if not path:
        return RuleBook([])
    try:
        with Path(path).open("rb") as f:
            return parse_rules(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as e:
        raise ValueError(f"cannot load rules from {path}: {e}") from None
