"""ClickHouse side of the spike alerts: the counts the detector is fed, and the `alerts` rows.

The counts are distinct clicks (`clicks`, by `event_id`) and distinct attributed signups
(`attributions_current`, by `signup_event_id`) per tracking code and event-time bucket,
and the current owner of each code (`promoters_current`); distinct ids keep them exact
under Kafka redelivery and retried inserts. The detector itself is in
`streams.logic.spike`; this module knows only the tables.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from sinks.stats import ALERTS

_BUCKET = "intDiv(toUnixTimestamp64Milli({col}), {{size:UInt64}}) * {{size:UInt64}}"
_SINCE = "{col} >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')"
CLICKS_SQL = (f"SELECT tracking_code, {_BUCKET.format(col='ts')} AS bucket, uniqExact(event_id) AS n,"
              " min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts)) FROM clicks"
              f" WHERE {_SINCE.format(col='ts')} AND tracking_code != '' GROUP BY tracking_code, bucket")
SIGNUPS_SQL = (f"SELECT tracking_code, {_BUCKET.format(col='signup_ts')} AS bucket,"
               " uniqExact(signup_event_id) AS n, min(toUnixTimestamp64Milli(signup_ts)),"
               " max(toUnixTimestamp64Milli(signup_ts)) FROM attributions_current"
               f" WHERE {_SINCE.format(col='signup_ts')} AND tracking_code != '' GROUP BY tracking_code, bucket")
OWNERS_SQL = "SELECT tracking_code, promoter_id FROM promoters_current WHERE tracking_code IN {codes:Array(String)}"
NEWEST_SQL = "SELECT toUnixTimestamp64Milli(max(ts)) FROM clicks"
LIMITS = {"max_execution_time": 30}  # bounds how long a poll holds the sink's client


class BucketCount(NamedTuple):
    """Distinct events of one tracking code in one bucket, as read from ClickHouse."""

    code: str
    bucket: int
    n: int
    first_ts: int
    last_ts: int


def read_counts(client: Any, since: int | None, size: int,
                backfill_ms: int) -> tuple[list[BucketCount], dict[str, str]]:
    """Counts per tracking code and `size`-ms bucket from `since` (None: from the newest
    click - `backfill_ms`), and the current owner of each code seen."""
    if since is None:
        newest = int(client.query(NEWEST_SQL, settings=LIMITS).result_rows[0][0] or 0)
        if newest <= 0:
            return [], {}
        since = newest - backfill_ms - newest % size
    params = {"since": since, "size": size}
    rows = [BucketCount(str(c), int(b), int(n), int(f), int(la))
            for sql in (CLICKS_SQL, SIGNUPS_SQL)
            for c, b, n, f, la in client.query(sql, parameters=params, settings=LIMITS).result_rows]
    codes = sorted({r.code for r in rows})
    if not codes:
        return rows, {}
    owners = client.query(OWNERS_SQL, parameters={"codes": codes}, settings=LIMITS).result_rows
    return rows, {str(c): str(p) for c, p in owners}


class AlertFields(Protocol):
    """What the `alerts` table stores of an alert (`streams.logic.spike.Alert` has it)."""

    @property
    def kind(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def bucket_start(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def baseline(self) -> float: ...
    @property
    def score(self) -> float: ...
    @property
    def first_event_ts(self) -> int: ...
    @property
    def detected_ts(self) -> int: ...


def alert_row(a: AlertFields) -> tuple[str, str, int, int, float, float, int, int]:
    """The `alerts` row of an alert, in `ALERTS.insert_columns` order: id is the key, count
    the observed events, detected_ts the detection time."""
    return (a.kind, a.id, a.bucket_start, a.count, a.baseline, a.score, a.first_event_ts, a.detected_ts)


def write_alerts(client: Any, alerts: Iterable[AlertFields]) -> None:
    """Insert `alerts`; the table keeps one row per (kind, key, bucket), the latest detection."""
    rows = [alert_row(a) for a in alerts]
    if rows:
        client.insert(ALERTS.name, rows, column_names=ALERTS.insert_columns, column_type_names=ALERTS.insert_types)
