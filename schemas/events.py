"""Input event models: the public contract of the six input topics (see docs/events.md).

Decoding is done with msgspec: it validates types and required fields while parsing,
which is both stricter and much faster than `json.loads` plus hand-written checks.
`ts` is normalised to epoch milliseconds (UTC) by `schemas.validate`.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Timestamp = int | str  # epoch millis, or ISO-8601 with a timezone; normalised to int


def millis(value: Timestamp | None) -> int:
    """A timestamp field of an event `schemas.validate.decode` returned: always epoch ms then."""
    if not isinstance(value, int):
        raise TypeError(f"timestamp {value!r} is not normalised: decode the event with schemas.validate first")
    return value


class _Event(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    event_id: str
    ts: Timestamp


class Click(_Event, kw_only=True):
    tracking_code: str
    visitor_id: str
    ip: str | None = None
    user_agent: str | None = None
    url: str | None = None
    referrer: str | None = None
    campaign: str | None = None
    material_id: str | None = None
    method: str = "GET"


class Signup(_Event, kw_only=True):
    account_id: str
    visitor_id: str
    ip: str | None = None
    user_agent: str | None = None
    email_domain: str | None = None
    email_hash: str | None = None
    account_type: Literal["personal", "enterprise"] = "personal"
    realname_id_hash: str | None = None
    device_id: str | None = None
    coupon_code: str | None = None  # a promoter's coupon code entered at signup


OrderStatus = Literal["paid", "refunded", "cancelled", "chargeback"]


class Order(_Event, kw_only=True):
    order_id: str
    account_id: str
    cart_id: str | None = None
    product: str
    sku: str | None = None
    category: str | None = None
    amount: Decimal  # paid by the customer, after any discount; exact, never a float
    currency: str
    discount: Decimal = Decimal(0)
    status: OrderStatus
    renewal: bool = False
    coupon_code: str | None = None  # a promoter's coupon code redeemed with the order


class Promoter(_Event, kw_only=True):
    promoter_id: str
    tracking_code: str
    level: int = 1
    account_type: Literal["personal", "enterprise"] = "personal"
    account_id: str | None = None
    is_employee: bool = False
    is_partner_staff: bool = False
    verified: bool = False
    joined_at: Timestamp | None = None
    # the promoter's own identity, for self-referral checks (hashed like the signup's)
    realname_id_hash: str | None = None
    email_hash: str | None = None
    device_id: str | None = None
    ip: str | None = None
    #: coupon codes the promoter owns from this version on (KOLs read them aloud)
    coupon_codes: list[str] = []
    #: the promoter who recruited this one (two-level referrals), as of this version
    parent_promoter_id: str | None = None


class Exclusion(_Event, kw_only=True):
    account_id: str | None = None
    email_domain: str | None = None
    owner: Literal["direct_sales", "channel_partner"]
    since: Timestamp | None = None


ReviewDecision = Literal["approve", "reject", "hold"]


class Review(_Event, kw_only=True):
    """A partner manager's decision on one order's conversion, or (`promoter_id` instead of
    `order_id`) on all that promoter's open conversions (docs/payouts.md)."""

    order_id: str | None = None
    promoter_id: str | None = None
    decision: ReviewDecision
    reason: str = ""
    actor: str


class FxRate(_Event, kw_only=True):
    """How many units of the program currency one unit of `currency` is worth, from
    `effective_from` (default: `ts`) until the currency's next rate (docs/events.md)."""

    currency: str
    rate: Decimal
    effective_from: Timestamp | None = None


Event = Click | Signup | Order | Promoter | Exclusion | Review | FxRate

#: input topic name (before the prefix) -> model
MODELS: dict[str, type[Event]] = {
    "clicks": Click,
    "signups": Signup,
    "orders": Order,
    "promoters": Promoter,
    "exclusions": Exclusion,
    "reviews": Review,
    "fx_rates": FxRate,
}
