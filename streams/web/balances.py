"""Payout totals per currency (`GET /api/payouts/summary`): pure query builders and shaping.
A conversion's money counts in its program currency (`program_currency`: its commission's).

Figures (docs/payouts.md; money = commission + bonus):

- `payable`: what the next payout run would book before its minimum: per order, its target
  (approved and matured by `as_of`: its money; rejected or reversed: 0; otherwise what is
  already booked) minus what pending and paid batches booked for it, positive movements;
  `clawback`: the negative ones (reversed or rejected after being booked);
- `pending`: approved, not matured yet (`payable_at` > `as_of`); `held`: held;
- `in_pending_batches` / `paid`: lines of pending / paid batches (`payout_lines_current`);
  `to_pay` / `paid_out`: the rounded payouts of those batches (`payouts_current`).

`as_of` is the pipeline's event time "now", as payout runs use it: the newest stored order
minus the allowed lateness, so a replay of old traffic does not mature conversions early.
Instalments are not split here: a matured conversion counts whole under `payable`.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from schemas.payouts import BOOKED
from streams.web.api import Args, Query, check_names, money, parse_promoter

SUMMARY_ARGS = ("promoter",)
MONEY_FIELDS = ("payable", "clawback", "pending", "held", "in_pending_batches", "paid", "to_pay", "paid_out")
COUNT_FIELDS = ("payable_orders", "clawback_orders", "pending_conversions", "held_conversions",
                "pending_lines", "paid_lines")


def parse_summary(args: Args) -> str | None:
    check_names(args, SUMMARY_ARGS)
    return parse_promoter(args)


def newest_order_query() -> Query:
    return Query("SELECT count() AS orders, toUnixTimestamp64Milli(max(ts)) AS newest FROM orders")


def event_now(orders: int, newest_ms: int, lateness_ms: int) -> int:
    """Event time "now" in epoch ms: the newest order minus the allowed lateness (0 before any order)."""
    return max(0, newest_ms - lateness_ms) if orders else 0


def _own(promoter: str | None, column: str = "promoter_id") -> str:
    return f" AND {column} = {{promoter:String}}" if promoter is not None else ""


def summary_queries(as_of: int, promoter: str | None) -> dict[str, Query]:
    params: dict[str, Any] = {"as_of": as_of, "booked": list(BOOKED)}
    if promoter is not None:
        params["promoter"] = promoter
    d128 = "toDecimal128({x}, 4)"
    earning = d128.format(x="c.commission + c.bonus")
    conversions = f"""
SELECT currency,
    sumIf(movement, movement > 0) AS payable, countIf(movement > 0) AS payable_orders,
    sumIf(movement, movement < 0) AS clawback, countIf(movement < 0) AS clawback_orders,
    sumIf(earning, status = 'approved' AND payable_ms > {{as_of:Int64}}) AS pending,
    countIf(status = 'approved' AND payable_ms > {{as_of:Int64}}) AS pending_conversions,
    sumIf(earning, status = 'held') AS held, countIf(status = 'held') AS held_conversions
FROM (
    SELECT toString(c.program_currency) AS currency, c.status AS status, {earning} AS earning,
        toUnixTimestamp64Milli(c.payable_at) AS payable_ms,
        {d128.format(x='b.booked')} AS booked_amount,
        multiIf(c.status = 'approved' AND payable_ms <= {{as_of:Int64}}, earning,
                c.status IN ('rejected', 'reversed'), {d128.format(x='0')}, booked_amount) - booked_amount AS movement
    FROM conversions_current AS c
    LEFT JOIN (SELECT order_id, sum(amount) AS booked FROM payout_lines_current
               WHERE batch_status IN {{booked:Array(String)}} AND order_id != '' GROUP BY order_id) AS b
    ON c.order_id = b.order_id
    WHERE c.promoter_id != ''{_own(promoter, 'c.promoter_id')}
)
GROUP BY currency"""
    return {
        "conversions": Query(conversions, params),
        "lines": Query(
            "SELECT currency, sumIf(amount, batch_status = 'pending') AS in_pending_batches,"
            " countIf(batch_status = 'pending') AS pending_lines,"
            " sumIf(amount, batch_status = 'paid') AS paid, countIf(batch_status = 'paid') AS paid_lines"
            f" FROM payout_lines_current WHERE 1{_own(promoter)} GROUP BY currency", params),
        "payouts": Query(
            "SELECT currency, sumIf(amount, batch_status = 'pending') AS to_pay,"
            " sumIf(amount, batch_status = 'paid') AS paid_out"
            f" FROM payouts_current WHERE 1{_own(promoter)} GROUP BY currency", params),
        "batches": Query(
            "SELECT countIf(status = 'pending') AS pending, countIf(status = 'paid') AS paid,"
            " countIf(status = 'failed') AS failed FROM payout_batches_current"),
    }


def shape_summary(as_of: int, promoter: str | None,
                  results: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One entry per currency that has any figure, zeros for the rest, sorted by currency."""
    per: dict[str, dict[str, Any]] = {}
    for name in ("conversions", "lines", "payouts"):
        for row in results[name]:
            entry = per.setdefault(row["currency"], {**{k: Decimal(0) for k in MONEY_FIELDS},
                                                     **dict.fromkeys(COUNT_FIELDS, 0)})
            for key, value in row.items():
                if key in MONEY_FIELDS:
                    entry[key] = Decimal(value)
                elif key in COUNT_FIELDS:
                    entry[key] = int(value)
    currencies = [{"currency": c, **{k: money(v) if k in MONEY_FIELDS else v for k, v in per[c].items()}}
                  for c in sorted(per)]
    batches = results["batches"][0] if results["batches"] else {}
    return {"as_of": as_of, "promoter": promoter, "available": True, "currencies": currencies,
            "batches": {k: int(batches.get(k, 0)) for k in ("pending", "paid", "failed")}}
