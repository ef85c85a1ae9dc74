"""Records -> ClickHouse rows (pure functions).

Each row is a tuple in the order of `sinks.tables.TABLES[table].insert_columns`.
Conventions: optional strings that are None become '' (no Nullable columns: cheaper to
store and to query); timestamps stay epoch-millisecond ints, which clickhouse-connect
writes unchanged as the ticks of a `DateTime64(3)` (measured: serialising ints is ~15x
faster than datetimes, and building the datetimes would cost as much again);
a missing timestamp (organic attribution, unknown `joined_at`) becomes 0 (1970-01-01);
money stays `Decimal` (exact `Decimal(18, 4)`).

`AttributionRec` has no version of its own: the caller passes `(version, record)` with a
version that grows with the record's position in its input (e.g. Kafka offset * 100_000
+ index in the batch), so a redelivered record rewrites the same row and a newer
decision replaces an older one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from schemas.events import Exclusion, FxRate, Promoter, Review
from schemas.records import (
    AttributionRec,
    ClickRec,
    Conversion,
    DeadLetter,
    LateEvent,
    OrderRec,
    SignupRec,
)

Row = tuple
Rows = dict[str, list[Row]]
Record = (ClickRec | SignupRec | OrderRec | Conversion | LateEvent | DeadLetter | Promoter | Exclusion | FxRate
          | Review)
Versioned = tuple[int, AttributionRec]


def click_row(r: ClickRec) -> Row:
    return (
        r.event_id, r.ts, r.visitor_id, r.tracking_code, r.campaign or "", r.material_id or "",
        r.ip_hash or "", r.user_agent or "", r.url or "", r.referrer or "", r.method or "",
    )


def signup_row(r: SignupRec) -> Row:
    return (
        r.event_id, r.ts, r.account_id, r.visitor_id, r.ip_hash or "", r.user_agent or "",
        r.email_domain or "", r.email_hash or "", r.account_type or "", r.realname_id_hash or "",
        r.device_id or "", r.coupon_code or "",
    )


def order_row(r: OrderRec) -> Row:
    return (
        r.event_id, r.ts, r.order_id, r.account_id, r.cart_id or "", r.product, r.sku or "",
        r.category or "", r.amount, r.discount, r.currency, r.status, r.renewal, r.coupon_code or "",
    )


def attribution_row(r: AttributionRec, version: int) -> Row:
    c = r.click
    if c is None:
        click: tuple = ("", "", "", 0)
    else:
        click = (c.tracking_code, c.campaign or "", c.event_id, c.ts)
    return (r.account_id, r.signup_event_id, r.signup_ts, r.visitor_id, *click, r.final, version)


def conversion_row(r: Conversion) -> Row:
    # a conversion without a program currency (unpriced, or from before multi-currency) is
    # in its order's currency: the same as the columns' defaults for older rows
    same = not r.program_currency
    return (
        r.order_id, r.revision, r.status, list(r.reasons), r.promoter_id, r.tracking_code,
        r.campaign, r.account_id, r.visitor_id, r.click_event_id, r.click_ts, r.signup_event_id,
        r.signup_ts, r.order_event_id, r.order_ts, r.cart_id, r.product, r.category, r.amount,
        r.discount, r.currency, r.order_status, r.renewal, r.attribution_model,
        r.attribution_final, r.decided_at, r.level, r.rate, r.tier, r.commission, r.bonus,
        r.points, r.cap_applied, r.first_order, r.rule_version, r.flood_clicks, r.farm_signups,
        r.exclusion_owner, r.identity_match, r.cap,
        r.currency if same else r.program_currency, r.amount if same else r.program_amount,
        Decimal(1) if same else r.fx_rate, r.attributed_by or "click", r.coupon_code, r.override_of,
    )


def late_event_row(r: LateEvent) -> Row:
    return (r.kind, r.event_id, r.ts, r.watermark, r.lateness_ms, r.join, r.source, r.key)


def dead_letter_row(r: DeadLetter) -> Row:
    return (r.reason, r.topic, r.partition, r.offset, r.key or "", r.value, r.at, r.value_bytes,
            r.value_sha256, r.truncated)


def promoter_row(r: Promoter) -> Row:
    if not isinstance(r.ts, int) or not isinstance(r.joined_at, (int, type(None))):
        raise TypeError(
            f"promoter {r.event_id!r}: ts/joined_at must be epoch-millis ints (run schemas.validate first)"
        )
    return (
        r.promoter_id, r.tracking_code, r.level, r.account_type, r.account_id or "", r.is_employee,
        r.is_partner_staff, r.verified, r.joined_at or 0, r.ts, r.event_id, r.realname_id_hash or "",
        r.email_hash or "", r.device_id or "", r.ip or "",  # ip: hashed by the sink before this
        list(r.coupon_codes), r.parent_promoter_id or "",
    )


def exclusion_row(r: Exclusion) -> Row:
    since = r.since if isinstance(r.since, int) else r.ts
    return (r.account_id or "", (r.email_domain or "").lower(), r.owner, since, r.ts, r.event_id)


def fx_rate_row(r: FxRate) -> Row:
    if not isinstance(r.ts, int) or not isinstance(r.effective_from, (int, type(None))):
        raise TypeError(
            f"fx rate {r.event_id!r}: ts/effective_from must be epoch-millis ints (run schemas.validate first)"
        )
    since = r.ts if r.effective_from is None else r.effective_from
    return (r.currency, r.rate, since, r.ts, r.event_id)


def review_row(r: Review) -> Row:
    if not isinstance(r.ts, int):
        raise TypeError(f"review {r.event_id!r}: ts must be epoch-millis int (run schemas.validate first)")
    return (r.event_id, r.ts, r.order_id or "", r.promoter_id or "", r.decision, r.reason, r.actor)


#: record type -> (table, row builder); AttributionRec is handled apart (it needs a version)
ROW_BUILDERS: dict[type, tuple[str, Callable[[Any], Row]]] = {
    ClickRec: ("clicks", click_row),
    SignupRec: ("signups", signup_row),
    OrderRec: ("orders", order_row),
    Conversion: ("conversions", conversion_row),
    LateEvent: ("late_events", late_event_row),
    DeadLetter: ("dead_letters", dead_letter_row),
    Promoter: ("promoters", promoter_row),
    Exclusion: ("exclusions", exclusion_row),
    FxRate: ("fx_rates", fx_rate_row),
    Review: ("reviews", review_row),
}


def table_row(item: Record | Versioned) -> tuple[str, Row]:
    """The table and row of one record (the sink keeps, per row, the record it came from)."""
    entry = ROW_BUILDERS.get(type(item))
    if entry is not None:
        return entry[0], entry[1](item)
    if type(item) is tuple and len(item) == 2 and isinstance(item[1], AttributionRec):
        return "attributions", attribution_row(item[1], item[0])
    return _fallback(item)


def table_of(item: Any) -> str:
    """The table a record belongs to ('' if none), without building its row."""
    for cls, (table, _) in ROW_BUILDERS.items():
        if isinstance(item, cls):
            return table
    return "attributions" if isinstance(item, (tuple, AttributionRec)) else ""


def rows_for(records: Iterable[Record | Versioned]) -> Rows:
    """Group records into rows per table. Attributions come as `(version, AttributionRec)`."""
    out: Rows = {}
    for item in records:
        table, row = table_row(item)
        rows = out.get(table)
        if rows is None:
            out[table] = [row]
        else:
            rows.append(row)
    return out


def _fallback(item: Any) -> tuple[str, Row]:
    if isinstance(item, AttributionRec):
        raise TypeError("an AttributionRec needs a version: pass (version, record)")
    for cls, (table, build) in ROW_BUILDERS.items():  # subclasses
        if isinstance(item, cls):
            return table, build(item)
    raise TypeError(f"no ClickHouse table for {type(item).__name__}")
