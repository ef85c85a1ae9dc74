"""The stored events read back as records (what `refstream replay` runs on): the inverse of
`sinks.rows` for the raw tables and the reference data. Empty strings, which the tables
store for missing optional fields, come back as None.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from schemas.events import Exclusion, FxRate, Promoter
from schemas.records import ClickRec, OrderRec, SignupRec, StoredEvents
from sinks.clickhouse import rows_as_dicts

Row = dict[str, Any]  # a stored row by column name (the insert side's rows are tuples: `sinks.rows`)

#: DateTime64 columns are read as their raw ticks (epoch ms for DateTime64(3))
_INT_TIMES = {"DateTime64": "int"}


def _opt(value: str) -> str | None:
    return value or None


def click(r: Row) -> ClickRec:
    return ClickRec(r["event_id"], r["ts"], r["visitor_id"], r["tracking_code"], _opt(r["campaign"]),
                    _opt(r["material_id"]), _opt(r["ip_hash"]), _opt(r["user_agent"]), _opt(r["url"]),
                    _opt(r["referrer"]), r["method"] or "GET")


def signup(r: Row) -> SignupRec:
    return SignupRec(r["event_id"], r["ts"], r["account_id"], r["visitor_id"], _opt(r["ip_hash"]),
                     _opt(r["user_agent"]), _opt(r["email_domain"]), _opt(r["email_hash"]),
                     r["account_type"] or "personal", _opt(r["realname_id_hash"]), _opt(r["device_id"]),
                     coupon_code=_opt(r.get("coupon_code", "")))


def order(r: Row) -> OrderRec:
    return OrderRec(r["event_id"], r["ts"], r["order_id"], r["account_id"], r["product"], Decimal(r["amount"]),
                    r["currency"], r["status"], Decimal(r["discount"]), _opt(r["cart_id"]), _opt(r["sku"]),
                    _opt(r["category"]), bool(r["renewal"]), coupon_code=_opt(r.get("coupon_code", "")))


def promoter(r: Row) -> Promoter:
    return Promoter(event_id=r["event_id"], ts=r["ts"], promoter_id=r["promoter_id"],
                    tracking_code=r["tracking_code"], level=r["level"], account_type=r["account_type"],
                    account_id=_opt(r["account_id"]), is_employee=r["is_employee"],
                    is_partner_staff=r["is_partner_staff"], verified=r["verified"],
                    realname_id_hash=_opt(r["realname_id_hash"]), email_hash=_opt(r["email_hash"]),
                    device_id=_opt(r["device_id"]), ip=_opt(r["ip_hash"]),  # stored hashed
                    joined_at=r["joined_at"] or None, coupon_codes=list(r.get("coupon_codes", [])),
                    parent_promoter_id=_opt(r.get("parent_promoter_id", "")))


def fx_rate(r: Row) -> FxRate:
    return FxRate(event_id=r["event_id"], ts=r["ts"], currency=r["currency"], rate=Decimal(r["rate"]),
                  effective_from=r["effective_from"])


def exclusion(r: Row) -> Exclusion:
    return Exclusion(event_id=r["event_id"], ts=r["ts"], account_id=_opt(r["account_id"]),
                     email_domain=_opt(r["email_domain"]), owner=r["owner"], since=r["since"])


def load(client: Any, until_ms: int | None = None) -> StoredEvents:
    """Deduplicated raw events and reference data, up to event time `until_ms` (all if None)."""
    # ts is DateTime64(3): compare on its millisecond value
    where, params = (("WHERE toUnixTimestamp64Milli(ts) <= {until:Int64}", {"until": until_ms})
                     if until_ms is not None else ("", {}))

    def rows(table: str) -> list[Row]:
        return rows_as_dicts(client.query(f"SELECT * FROM {table} FINAL {where}", parameters=params,
                                          query_formats=_INT_TIMES))

    return StoredEvents([click(r) for r in rows("clicks")], [signup(r) for r in rows("signups")],
                        [order(r) for r in rows("orders")], [promoter(r) for r in rows("promoters")],
                        [exclusion(r) for r in rows("exclusions")], [fx_rate(r) for r in rows("fx_rates")])
