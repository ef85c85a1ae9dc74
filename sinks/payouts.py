"""Payout runs in ClickHouse: what a run reads (entitlements, what is booked, the batches, event
time "now") and what it writes (lines, payouts, batch rows). Plain values in and out: the
planner's types live in `streams.logic.payouts.plan`, which sinks may not import.

A batch's lines and payouts are written first under the run's attempt, its batch row last
(`sinks.tables`, "Payout runs"); readers of `*_current` see only the attempt the batch row names.
Times are epoch-millisecond ints, money `Decimal`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.payouts import BOOKED
from sinks.clickhouse import rows_as_dicts
from sinks.tables import PAYOUT_BATCHES, PAYOUT_LINES, PAYOUTS, Table

_INT_TIMES = {"DateTime64": "int"}
#: batches whose lines count as booked: a failed batch released its lines

ENTITLEMENT_COLUMNS = ("order_id", "revision", "promoter_id", "currency", "status", "commission", "bonus",
                       "points", "order_ts", "payable_at", "rule_version")
#: what each entitlement column is read from: commission and bonus are in the program currency,
#: so a promoter is paid in it (not in his customers' order currencies)
_ENTITLEMENT_SOURCE = {"currency": "toString(program_currency) AS currency"}
LINE_COLUMNS = PAYOUT_LINES.insert_columns[2:]  # after batch_id, attempt: the planner's `Line` fields
PAYOUT_COLUMNS = PAYOUTS.insert_columns[2:]  # the planner's `Payout` fields
BATCH_COLUMNS = PAYOUT_BATCHES.insert_columns

# Only rows that can give a line: approved and matured by the cut-off, or booked before (a
# reversal or rejection after booking is a clawback). The planner decides the rest exactly.
ENTITLEMENTS_SQL = f"""
SELECT * FROM (
    SELECT {', '.join(_ENTITLEMENT_SOURCE.get(c, c) for c in ENTITLEMENT_COLUMNS)}
    FROM conversions_current
    WHERE (promoter_id != '' AND status = 'approved'
           AND payable_at <= fromUnixTimestamp64Milli({{cutoff:Int64}}, 'UTC'))
        OR order_id IN (
            SELECT order_id FROM payout_lines_current
            WHERE batch_status IN {{booked:Array(String)}} AND order_id != ''
        )
    UNION ALL  -- sales champions' bonuses (docs/rules.md), payable once decided
    SELECT line_id AS order_id, toUInt32(1) AS revision, promoter_id, toString(currency) AS currency,
        'approved' AS status, toDecimal128(0, 4) AS commission, bonus, toInt64(0) AS points,
        decided_at AS order_ts, decided_at AS payable_at, '' AS rule_version
    FROM champion_bonuses WHERE decided_at <= fromUnixTimestamp64Milli({{cutoff:Int64}}, 'UTC')
    UNION ALL  -- a champion line booked before whose month was re-ranked without him: taken back
    SELECT order_id, toUInt32(2) AS revision, any(promoter_id) AS promoter_id, toString(any(currency)) AS currency,
        'reversed' AS status, toDecimal128(0, 4) AS commission, toDecimal128(0, 4) AS bonus, toInt64(0) AS points,
        toDateTime64(0, 3, 'UTC') AS order_ts, toDateTime64(0, 3, 'UTC') AS payable_at, '' AS rule_version
    FROM payout_lines_current
    WHERE batch_status IN {{booked:Array(String)}} AND startsWith(order_id, 'champion:')
        AND order_id NOT IN (SELECT line_id FROM champion_bonuses)
    GROUP BY order_id
)
ORDER BY promoter_id, order_id
"""

BOOKED_LINES_SQL = f"""
SELECT batch_id, batch_status, {', '.join(LINE_COLUMNS)} FROM payout_lines_current
WHERE batch_status IN {{booked:Array(String)}}
ORDER BY promoter_id, currency, order_id, batch_id
"""

BOOKED_PAYOUTS_SQL = f"""
SELECT batch_id, batch_status, {', '.join(PAYOUT_COLUMNS)} FROM payouts_current
WHERE batch_status IN {{booked:Array(String)}}
ORDER BY promoter_id, currency, created_at, batch_id
"""

BATCHES_SQL = f"""
SELECT {', '.join(BATCH_COLUMNS)} FROM payout_batches_current
WHERE {{batch:String}} = '' OR batch_id = {{batch:String}}
ORDER BY created_at, batch_id
"""

TOTALS_SQL = """
SELECT batch_id, currency, count() AS promoters, sum(amount) AS amount, sum(points_cashed) AS points_cashed
FROM payouts_current
WHERE {batch:String} = '' OR batch_id = {batch:String}
GROUP BY batch_id, currency
ORDER BY batch_id, currency
"""


def _dicts(client: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    return rows_as_dicts(client.query(sql, parameters=params, query_formats=_INT_TIMES))


def event_now(client: Any) -> int | None:
    """Event time "now": the newest order stored (epoch ms), None while there is none."""
    ms = int(client.query("SELECT toUnixTimestamp64Milli(max(ts)) FROM orders").result_rows[0][0])
    return ms or None


def entitlements(client: Any, cutoff_ms: int) -> list[dict[str, Any]]:
    """Conversions of promoters (`conversions_current`, after reviews) that can move money at
    `cutoff_ms`: approved with `payable_at` <= cut-off, or already booked. Dicts with the
    fields of the planner's `Entitlement`."""
    return _dicts(client, ENTITLEMENTS_SQL, cutoff=cutoff_ms, booked=list(BOOKED))


def booked_lines(client: Any) -> list[dict[str, Any]]:
    """Lines of pending and paid batches (their batch row's attempt only): batch_id,
    batch_status and the fields of the planner's `Line`."""
    return _dicts(client, BOOKED_LINES_SQL, booked=list(BOOKED))


def booked_payouts(client: Any) -> list[dict[str, Any]]:
    """Payouts of pending and paid batches: batch_id and the fields of the planner's `Payout`."""
    return _dicts(client, BOOKED_PAYOUTS_SQL, booked=list(BOOKED))


def batches(client: Any, batch_id: str = "") -> list[dict[str, Any]]:
    """Batch rows (latest version), oldest first; only `batch_id`'s when given."""
    return _dicts(client, BATCHES_SQL, batch=batch_id)


def batch(client: Any, batch_id: str) -> dict[str, Any] | None:
    found = batches(client, batch_id) if batch_id else []
    return found[0] if found else None


def batch_totals(client: Any, batch_id: str = "") -> list[dict[str, Any]]:
    """Per batch and currency: promoters paid, amount, points cashed."""
    return _dicts(client, TOTALS_SQL, batch=batch_id)


def batch_lines(client: Any, batch_id: str) -> list[dict[str, Any]]:
    """The lines of one batch (its batch row's attempt)."""
    sql = (f"SELECT batch_id, {', '.join(LINE_COLUMNS)} FROM payout_lines_current WHERE batch_id = {{b:String}} "
           "ORDER BY promoter_id, currency, kind, order_id")
    return _dicts(client, sql, b=batch_id)


def batch_payouts(client: Any, batch_id: str) -> list[dict[str, Any]]:
    """The payouts of one batch (its batch row's attempt), one per promoter and currency."""
    sql = (f"SELECT batch_id, batch_status, {', '.join(PAYOUT_COLUMNS)} FROM payouts_current "
           "WHERE batch_id = {b:String} ORDER BY promoter_id, currency")
    return _dicts(client, sql, b=batch_id)


def last_batch_number(client: Any, prefix: str) -> int:
    """The highest n of the batch ids `<prefix><n>` (e.g. `PO-20261130-07` for `PO-20261130-`)
    that have a batch row; 0 when there is none."""
    sql = "SELECT DISTINCT batch_id FROM payout_batches WHERE startsWith(batch_id, {prefix:String})"
    rows = client.query(sql, parameters={"prefix": prefix}).result_rows
    return max((int(tail) for (batch_id,) in rows if (tail := batch_id[len(prefix):]).isdigit()), default=0)


def batch_attempts(client: Any, batch_id: str = "") -> list[dict[str, Any]]:
    """The batch rows as written (every column; not only the latest version of each batch, as
    long as ClickHouse has not merged them away), oldest version first; only `batch_id`'s when
    given. Two attempts under one batch id mean two runs committed the same id (runs that
    overlapped)."""
    sql = (f"SELECT {', '.join(BATCH_COLUMNS)} FROM payout_batches "
           "WHERE {batch:String} = '' OR batch_id = {batch:String} ORDER BY batch_id, version, attempt")
    return _dicts(client, sql, batch=batch_id)


def line_attempts(client: Any, batch_id: str) -> list[str]:
    """The attempts with lines under `batch_id`, committed or not (a run killed before its batch
    row, or one about to commit)."""
    sql = "SELECT DISTINCT attempt FROM payout_lines WHERE batch_id = {b:String} ORDER BY attempt"
    return [a for (a,) in client.query(sql, parameters={"b": batch_id}).result_rows]


def _insert(client: Any, table: Table, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        client.insert(table.name, rows, column_names=table.insert_columns, column_type_names=table.insert_types)


def write_lines(client: Any, batch_id: str, attempt: str, lines: Iterable[Mapping[str, Any]]) -> None:
    """Insert lines (mappings with the planner's `Line` fields) under `attempt`."""
    _insert(client, PAYOUT_LINES, [(batch_id, attempt, *(ln[c] for c in LINE_COLUMNS)) for ln in lines])


def write_payouts(client: Any, batch_id: str, attempt: str, payouts: Iterable[Mapping[str, Any]]) -> None:
    """Insert payouts (mappings with the planner's `Payout` fields) under `attempt`."""
    _insert(client, PAYOUTS, [(batch_id, attempt, *(p[c] for c in PAYOUT_COLUMNS)) for p in payouts])


def write_batch(client: Any, row: Mapping[str, Any]) -> None:
    """Insert a batch row (every column of `payout_batches`). The row with the highest
    `version` is the batch's state; the first one commits the attempt it names."""
    _insert(client, PAYOUT_BATCHES, [tuple(row[c] for c in BATCH_COLUMNS)])
