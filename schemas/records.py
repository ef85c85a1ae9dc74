"""Internal join records and the pipeline's outputs.

Internal topics (`visitor-join`, `account-join`) carry *batches* of records encoded with
msgpack: one Kafka message per batch per partition, so Faust's per-message cost is paid
once per few hundred events instead of once per event. Personal data is already hashed
here (IPs) or reduced (emails to a domain / hash) by the router.
"""
from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

import msgspec

from schemas.events import Exclusion, FxRate, Promoter


class ClickRec(msgspec.Struct, tag="c", array_like=True):
    event_id: str
    ts: int
    visitor_id: str
    tracking_code: str
    campaign: str | None = None
    material_id: str | None = None
    ip_hash: str | None = None
    user_agent: str | None = None
    url: str | None = None
    referrer: str | None = None
    method: str = "GET"
    src: str = ""  # source topic/partition/offset, for late-event reports


class SignupRec(msgspec.Struct, tag="s", array_like=True):
    event_id: str
    ts: int
    account_id: str
    visitor_id: str
    ip_hash: str | None = None
    user_agent: str | None = None
    email_domain: str | None = None
    email_hash: str | None = None
    account_type: str = "personal"
    realname_id_hash: str | None = None
    device_id: str | None = None
    src: str = ""
    coupon_code: str | None = None


class OrderRec(msgspec.Struct, tag="o", array_like=True):
    event_id: str
    ts: int
    order_id: str
    account_id: str
    product: str
    amount: Decimal
    currency: str
    status: str
    discount: Decimal = Decimal(0)
    cart_id: str | None = None
    sku: str | None = None
    category: str | None = None
    renewal: bool = False
    src: str = ""
    coupon_code: str | None = None


class ClickRef(msgspec.Struct, array_like=True, frozen=True):
    """The part of a click that attribution and the fraud checks need and keep in state."""

    event_id: str
    ts: int
    tracking_code: str
    campaign: str | None = None
    ip_hash: str | None = None  # click flooding is counted per IP and code
    bot: bool = False  # crawler user agent or HEAD request


class SignupIdent(msgspec.Struct, array_like=True, frozen=True):
    """Who signed up, as far as the self-referral and signup-farming checks need (hashed)."""

    ip_hash: str | None = None
    device_id: str | None = None
    email_hash: str | None = None
    email_domain: str | None = None
    realname_id_hash: str | None = None


class AttributionRec(msgspec.Struct, tag="a", array_like=True):
    """A signup and the click it is attributed to (None: organic), from the visitor join.

    Re-sent when a later (but not late) click changes the choice, and once more with
    `final=True` when the event-time watermark has passed the signup.
    """

    account_id: str
    signup_event_id: str
    signup_ts: int
    visitor_id: str
    click: ClickRef | None
    final: bool = False
    ident: SignupIdent | None = None
    coupon: str | None = None  # the coupon code entered at signup (trailing: older states decode)




class Conversion(msgspec.Struct, kw_only=True):
    """One attributed order, in its latest known state (the `conversions` topic).

    `revision` grows whenever the content changes (re-attribution, refund, ...), so the
    ClickHouse view keeps the highest revision per `order_id`.
    """

    order_id: str
    revision: int
    status: str  # approved | held | rejected | reversed
    reasons: list[str]
    promoter_id: str
    tracking_code: str
    campaign: str
    account_id: str
    visitor_id: str
    click_event_id: str
    click_ts: int
    signup_event_id: str
    signup_ts: int
    order_event_id: str
    order_ts: int
    cart_id: str
    product: str
    category: str
    amount: Decimal
    discount: Decimal
    currency: str
    order_status: str
    renewal: bool
    attribution_model: str
    attribution_final: bool
    decided_at: int
    # pricing (docs/rules.md); 0 / '' when not priced
    level: int = 0
    rate: Decimal = Decimal(0)
    tier: int = 0
    commission: Decimal = Decimal(0)
    bonus: Decimal = Decimal(0)
    points: int = 0
    cap_applied: bool = False
    first_order: bool = False
    rule_version: str = ""
    # the evidence behind the reasons (the review queue shows it)
    flood_clicks: int = 0  # clicks of the click's IP or visitor on its code in its UTC hour (the larger)
    farm_signups: int = 0  # accounts signed up from the signup's IP or device in its UTC day (the larger)
    exclusion_owner: str = ""  # direct_sales | channel_partner owning the customer at the order
    identity_match: str = ""  # the promoter's identity the customer shares, '' for none
    #: which limit cut the commission: '' | order | customer | promoter_month (caps) |
    #: existing_customer | recurring_months | customer_orders (renewal rules); docs/rules.md
    cap: str = ""
    # multi-currency (docs/rules.md "Currencies"): commission, bonus, caps, tiers and payouts
    # are in `program_currency`; `amount` and `currency` stay the order's own
    program_currency: str = ""  # '' when the rule book sets no program currency (no conversion)
    program_amount: Decimal = Decimal(0)  # amount x fx_rate, rounded half-even to 4 places
    fx_rate: Decimal = Decimal(0)  # program-currency units per order-currency unit used (1 for the same)
    # coupon codes: how the account was attributed, and the code when by coupon
    attributed_by: str = "click"  # click | coupon
    coupon_code: str = ""
    #: two-level referrals: on a parent's override line, the child promoter whose order it is
    override_of: str = ""


class DecisionRec(Conversion, tag="d", array_like=True, kw_only=True):
    """A conversion as the account join decided it (checks, status, reasons, evidence), not
    priced yet, with what pricing needs of the customer: the `promoter-join` topic, by
    `promoter_id`, to the promoter stage (streams/logic/pricing). `revision` is the
    decision's revision; the stage adds the price and the conversion's revision."""

    base_level: int = 1  # the promoter's level in the reference data at the order's time
    customer_order: int = 1  # the order's rank among the customer's paid orders (1: first)
    customer_first_ts: int = 0  # event time of the customer's first paid order
    existing_customer: bool = False  # the customer had paid before the attributed click
    status_ts: int = 0  # event time of the order's latest status event (when it was reversed)
    expires: int = 0  # event time after which the account join sends no more decisions of it
    removed: bool = False  # the order left this promoter (re-attributed): forget it here
    parent_promoter_id: str = ""  # who recruited the promoter, when he earns an override of this order
    promoter_joined_at: int = 0  # when the promoter joined the program (the override's months limit)


JoinRecord = ClickRec | SignupRec | OrderRec | AttributionRec | DecisionRec


class Batch(msgspec.Struct, array_like=True):
    """Records for one partition of a join topic, plus the event-time progress of the
    sources that feed it (source -> highest event time seen), so that every join's
    watermark can follow the slowest of all its upstream partitions, and the sources the
    sender found idle as of this batch (left out of the watermark until they progress:
    streams/logic/clock.py) or busy (records left to read: they take part again). A batch
    may carry clocks only (a heartbeat)."""

    records: list[JoinRecord]
    clocks: dict[str, int] = {}
    idle: list[str] = []  # appended, with defaults: older messages still decode
    busy: list[str] = []


class LateEvent(msgspec.Struct, kw_only=True):
    """An event that arrived after the watermark had passed it (the `late-events` topic)."""

    kind: str
    event_id: str
    ts: int
    watermark: int
    lateness_ms: int
    join: str
    source: str
    key: str


class DeadLetter(msgspec.Struct, kw_only=True):
    """An input message that could not be processed (the `dead-letters` topic)."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the original bytes decoded as UTF-8 (invalid bytes replaced), personal data
    # hashed, cut to its head when long (`truncated`); size and digest are of the original
    at: int
    value_bytes: int = 0
    value_sha256: str = ""
    truncated: bool = False


class StoredEvents(NamedTuple):
    """Deduplicated stored events, as records: what `refstream replay` runs on
    (`sinks.stored.load` reads them from ClickHouse)."""

    clicks: list[ClickRec]
    signups: list[SignupRec]
    orders: list[OrderRec]
    promoters: list[Promoter]
    exclusions: list[Exclusion]
    fx_rates: list[FxRate] = []


batch_encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(Batch)

#: most bytes of one join-topic message: well under the 1,000,000 bytes a Kafka producer and
#: broker accept by default, whatever one fetch of input held for one partition
MAX_BATCH_BYTES = 512 * 1024


def encode_batches(records: list[JoinRecord], clocks: dict[str, int], limit: int = MAX_BATCH_BYTES,
                   idle: list[str] | None = None, busy: list[str] | None = None) -> list[bytes]:
    """`Batch(records, clocks, idle, busy)` as one or more encoded messages of at most `limit`
    bytes each (halved until they fit), records in order and the clocks and sources on the
    last, so a join never hears a clock before the records it covers. One record is never
    split: input records are bounded by the input size limit, far below `limit`."""
    data = batch_encoder.encode(Batch(records, clocks, idle or [], busy or []))
    if len(data) <= limit or len(records) <= 1:
        return [data]
    mid = len(records) // 2
    return encode_batches(records[:mid], {}, limit) + encode_batches(records[mid:], clocks, limit, idle, busy)
json_encoder = msgspec.json.Encoder()
conversion_decoder = msgspec.json.Decoder(Conversion)
