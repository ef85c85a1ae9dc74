"""Read queries over the deduplicated views. Values only ever travel as bound parameters
(`{name:Type}` placeholders, `parameters=`), never formatted into the SQL text.

Timestamps come back as epoch-millisecond ints, like in the records.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sinks.clickhouse import rows_as_dicts

#: DateTime64 columns are read as their raw ticks (epoch ms for DateTime64(3))
_INT_TIMES = {"DateTime64": "int"}

PROMOTER_SUMMARY_SQL = """
WITH
    c AS (SELECT tracking_code, uniqExact(event_id) AS n FROM clicks GROUP BY tracking_code),
    s AS (
        SELECT tracking_code, count() AS n FROM attributions_current
        WHERE tracking_code != '' GROUP BY tracking_code
    ),
    -- per promoter, whatever attributed the order (his codes, his coupons); override lines
    -- (override_of set) are his money, not his orders
    o AS (
        SELECT promoter_id, countIf(override_of = '') AS n, sumIf(program_amount, override_of = '') AS gmv,
               sum(commission + bonus) AS commission
        FROM conversions_current WHERE status = {status:String}
        GROUP BY promoter_id
    ),
    x AS (
        SELECT promoter_id, countIf(status = 'held') AS held,
               countIf(status = 'rejected') AS rejected, countIf(status = 'reversed') AS reversed
        FROM conversions_current WHERE override_of = '' GROUP BY promoter_id
    )
SELECT
    p.promoter_id AS promoter_id,
    p.tracking_code AS tracking_code,
    c.n AS clicks,
    s.n AS signups,
    o.n AS orders,
    o.gmv AS gmv,
    o.commission AS commission,
    x.held AS held,
    x.rejected AS rejected,
    x.reversed AS reversed
FROM promoters_current AS p
LEFT JOIN c ON c.tracking_code = p.tracking_code
LEFT JOIN s ON s.tracking_code = p.tracking_code
LEFT JOIN o ON o.promoter_id = p.promoter_id
LEFT JOIN x ON x.promoter_id = p.promoter_id
ORDER BY gmv DESC, promoter_id, tracking_code
SETTINGS join_use_nulls = 0
"""


def promoter_summary(client: Any, *, status: str = "approved") -> list[dict]:
    """One row per tracking code of `promoters_current`: promoter_id, tracking_code,
    clicks (distinct click events on the code), signups (accounts attributed to the code),
    orders and gmv (count and sum of program_amount of the promoter's conversions with
    `status`, through any of his codes or coupons; override lines excluded), commission
    (commission + bonus of those and of his override lines), and how many of his conversions
    are held, rejected and reversed. A promoter with several codes shows these on each."""
    result = client.query(PROMOTER_SUMMARY_SQL, parameters={"status": status})
    rows = rows_as_dicts(result)
    for row in rows:
        for key in COUNT_COLUMNS:
            row[key] = int(row[key])
        for key in MONEY_COLUMNS:
            row[key] = Decimal(row[key])
    return rows


def conversions_for(client: Any, order_ids: list[str] | None = None) -> list[dict]:
    """Rows of `conversions_current` (latest revision per order), all or those of `order_ids`,
    ordered by order_id. Each dict converts back with `msgspec.convert(row, Conversion)`."""
    if order_ids is None:
        sql, params = "SELECT * FROM conversions_current ORDER BY order_id", {}
    else:
        sql = "SELECT * FROM conversions_current WHERE order_id IN {ids:Array(String)} ORDER BY order_id"
        params = {"ids": list(order_ids)}
    return rows_as_dicts(client.query(sql, parameters=params, query_formats=_INT_TIMES))


CONVERSIONS_BETWEEN_SQL = """SELECT * FROM conversions_current
WHERE toUnixTimestamp64Milli(order_ts) >= {lo:Int64} AND toUnixTimestamp64Milli(order_ts) < {hi:Int64}
ORDER BY order_id"""


def conversions_between(client: Any, from_ms: int | None = None, to_ms: int | None = None) -> list[dict]:
    """Rows of `conversions_current` with an order at or after `from_ms` and before `to_ms`
    (epoch ms, None: unbounded), ordered by order_id: what `refstream replay --against-stored`
    compares the replay with."""
    params = {"lo": -(2**63) if from_ms is None else from_ms, "hi": 2**63 - 1 if to_ms is None else to_ms}
    return rows_as_dicts(client.query(CONVERSIONS_BETWEEN_SQL, parameters=params, query_formats=_INT_TIMES))


#: name -> what is counted; FINAL shows rows as deduplicated by their natural key.
#: conversions_open: conversions whose attribution may still change (its window is open)
COUNTS_SQL = """
SELECT
    (SELECT count() FROM clicks FINAL) AS clicks,
    (SELECT count() FROM signups FINAL) AS signups,
    (SELECT count() FROM orders FINAL) AS orders,
    (SELECT count() FROM conversions_current WHERE override_of = '') AS conversions_current,
    (SELECT count() FROM conversions_current WHERE override_of != '') AS override_lines,
    (SELECT count() FROM conversions_current WHERE NOT attribution_final) AS conversions_open,
    (SELECT count() FROM attributions_current) AS attributions_current,
    (SELECT count() FROM dead_letters FINAL) AS dead_letters,
    (SELECT count() FROM late_events FINAL) AS late_events,
    (SELECT uniqExact(event_id) FROM reviews) AS reviews
"""


def counts(client: Any) -> dict[str, int]:
    """Distinct rows per table / view."""
    [row] = rows_as_dicts(client.query(COUNTS_SQL))
    return {name: int(v) for name, v in row.items()}


COUNT_COLUMNS = ("clicks", "signups", "orders", "held", "rejected", "reversed")
MONEY_COLUMNS = ("gmv", "commission")
SUMMARY_COLUMNS = ("promoter_id", "tracking_code", "clicks", "signups", "orders", "gmv", "commission",
                   "held", "rejected", "reversed")


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """`promoter_summary` rows as a fixed-width text table with a totals line."""
    if not rows:
        return "(no promoters)"
    rows = [{**r, **{k: int(r[k]) for k in COUNT_COLUMNS}, **{k: Decimal(r[k]) for k in MONEY_COLUMNS}}
            for r in rows]
    totals: dict[str, Any] = {"promoter_id": "TOTAL", "tracking_code": "",
                              **{k: sum(r[k] for r in rows) for k in COUNT_COLUMNS},
                              **{k: sum((r[k] for r in rows), Decimal(0)) for k in MONEY_COLUMNS}}
    return format_table(SUMMARY_COLUMNS, rows, frozenset(COUNT_COLUMNS + MONEY_COLUMNS), footer=totals)


# The month's orders per status (the statement before payouts; `statement_v2` is the money view).
STATEMENT_SQL = """
SELECT status, toString(program_currency) AS currency, count() AS orders, sum(program_amount) AS amount,
       sum(commission) AS commission, sum(bonus) AS bonus, sum(points) AS points,
       arraySort(groupArray(order_id)) AS order_ids
FROM conversions_current
WHERE promoter_id = {promoter:String} AND toStartOfMonth(order_ts) = toDate({month:String})
GROUP BY status, currency
ORDER BY status, currency
"""

STATEMENT_ORDERS_SQL = """
SELECT order_id, order_ts, status, arrayStringConcat(reasons, ',') AS reasons, amount, currency,
       program_amount, toString(program_currency) AS program_currency, fx_rate, rate, tier,
       cap_applied, commission, bonus, points, rule_version, account_id, tracking_code
FROM conversions_current
WHERE promoter_id = {promoter:String} AND toStartOfMonth(order_ts) = toDate({month:String})
ORDER BY order_ts, order_id
"""


def statement(client: Any, promoter: str, month: str) -> tuple[list[dict], list[dict]]:
    """A promoter's statement for `month` (YYYY-MM): one line per status and program currency
    (counts, amounts and commission, bonus in that currency, points, its order ids), and every
    order behind those lines (with its own amount and currency, and the rate used)."""
    params = {"promoter": promoter, "month": f"{month}-01"}
    lines = client.query(STATEMENT_SQL, parameters=params)
    orders = client.query(STATEMENT_ORDERS_SQL, parameters=params, query_formats=_INT_TIMES)
    return rows_as_dicts(lines), rows_as_dicts(orders)


STATEMENT_V2_SQL = """
SELECT * FROM promoter_statement
WHERE promoter_id = {promoter:String} AND month <= toDate({month:String})
ORDER BY currency, month
"""

#: the figures of a month without movements (the balance carries: opening = closing)
_QUIET_MONTH = {"earned": Decimal(0), "held": Decimal(0), "clawed_back": Decimal(0), "paid": Decimal(0),
                "in_payment": Decimal(0), "points_earned": 0, "points_cashed": 0, "points_paid": Decimal(0),
                "earned_orders": [], "held_orders": [], "clawed_back_orders": []}


def statement_v2(client: Any, promoter: str, month: str) -> list[dict]:
    """A promoter's statement for `month` (YYYY-MM), one row per currency he ever had money in
    up to that month (view `promoter_statement`): promoter_id, currency, month (a date),
    opening, earned (matured that month), held (orders of the month held now), clawed_back,
    paid and in_payment (net commission and clawback lines of that month's paid, resp. pending
    batches), closing (= opening + earned - paid - in_payment), points_earned, points_cashed,
    points_paid (money of the month's points lines, outside the balance) and the order ids
    behind earned, held and clawed back. A month without movements shows the balance carried
    from the month before."""
    rows = rows_as_dicts(client.query(STATEMENT_V2_SQL, parameters={"promoter": promoter, "month": f"{month}-01"}))
    last: dict[str, dict] = {}
    for row in rows:  # by currency, months ascending: the last one is this month or the latest before
        last[row["currency"]] = row
    first_day = date.fromisoformat(f"{month}-01")
    return [row if row["month"] == first_day else
            {**row, **_QUIET_MONTH, "month": first_day, "opening": row["closing"]}
            for row in last.values()]


BALANCES_SQL = """
SELECT * FROM promoter_balances
WHERE {promoter:String} = '' OR promoter_id = {promoter:String}
ORDER BY promoter_id, currency
"""


def balances(client: Any, promoter: str | None = None) -> list[dict]:
    """View `promoter_balances`, all promoters or one: per promoter and currency, earned
    (approved, matured by event time now), pending (approved, maturing), held, clawed_back,
    paid (net commission and clawback lines of paid batches), in_payment (the same of pending
    batches), balance (= earned - paid - in_payment), points_earned, points_cashed and
    points_paid (money of points lines in pending and paid batches, outside the balance)."""
    return rows_as_dicts(client.query(BALANCES_SQL, parameters={"promoter": promoter or ""}))


REVIEW_AUDIT_SQL = """
SELECT * FROM review_audit
WHERE ({order:String} = '' OR order_id = {order:String}) AND ({promoter:String} = '' OR promoter_id = {promoter:String})
ORDER BY ts, event_id, order_id
"""


def review_audit(client: Any, *, order_id: str = "", promoter: str = "") -> list[dict]:
    """View `review_audit` (every decision and the conversions it applies to, before and
    after), oldest first, all or one order's or one promoter's. Times as epoch ms."""
    params = {"order": order_id, "promoter": promoter}
    return rows_as_dicts(client.query(REVIEW_AUDIT_SQL, parameters=params, query_formats=_INT_TIMES))


def format_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
                 numeric: Collection[str] = frozenset(), *, footer: Mapping[str, Any] | None = None,
                 rule: bool = True) -> str:
    """Rows as a fixed-width text table: the header, a dashed rule (unless `rule` is False),
    the rows, then `footer` (e.g. totals) under a second rule. `numeric` columns are
    right-aligned; ints get thousands separators, Decimals 2 decimals (4 when they have more)."""
    body = [[_cell(r[k]) for k in columns] for r in rows]
    foot = [_cell(footer[k]) for k in columns] if footer is not None else None
    widths = [max([len(k), *(len(line[i]) for line in body + ([foot] if foot else []))])
              for i, k in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if k in numeric else c.ljust(w)
                         for k, c, w in zip(columns, cells, widths)).rstrip()

    dashes = ["  ".join("-" * w for w in widths)] if rule else []
    lines = [line(columns), *dashes, *map(line, body)]
    if foot is not None:
        lines += [*dashes, line(foot)]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"{value:,.2f}" if value == value.quantize(Decimal("0.01")) else f"{value:,.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
