"""The stats API: request parameters, parameterized ClickHouse queries, JSON-ready results.

Everything but `StatsApi` is pure: `parse_*` turn query-string values into checked values
(raising `BadRequest` with a message meant for the caller), the `*_query` builders return
SQL text plus bound parameters (values only ever travel as `{name:Type}` parameters;
column names and fragments come from fixed tables in this module, never from a request),
and the `shape_*` functions turn result rows into JSON-ready dicts. `StatsApi` ties them
together and runs the queries through a `Runner` (in the worker: the sink's ClickHouse
client, under its lock, in a thread; see `streams.web.routes`).

Semantics (see docs/api.md): every figure counts events whose own event time is in
[from, to): clicks by click time, signups by signup time, orders by order time. Money is
exact (`Decimal`) and serialised as a string with 4 decimals. `from` is rounded down and
`to` up to whole minutes (to whole buckets for the time series).

Override lines (two-level referrals, `override_of` set: a recruiter's share of his recruit's
order, streams/logic/overrides.py) are money, not orders: every count, GMV and reason figure
is of `ORDER_ROWS` only, while commission includes them (what the program owes).
"""
from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from schemas.validate import MAX_ID_LEN, valid_id
from sinks.clickhouse import rows_as_dicts

T = TypeVar("T")
Args = Mapping[str, Sequence[str]]  # query-string name -> every value given for it
Runner = Callable[[Callable[[Any], T]], Awaitable[T]]  # runs fn(client), returns its result

BUCKETS: dict[str, int] = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
MAX_BUCKETS = 1500
DEFAULT_SPAN_MS = DAY_MS
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_TIME_LEN = 64  # ISO-8601 times are at most 42 characters (microseconds in the time and the offset)
SHOWN_LEN = 40  # of a bad value quoted back in an error message
TOP_LIMIT = (10, 100)  # default, maximum
ALERTS_LIMIT = (50, 500)

COUNTED = "approved"  # the status whose conversions count as orders, GMV and commission
ISSUES = ("rejected", "held", "reversed")  # statuses reported by /api/rejections
PAID = "paid"  # raw order status counted by all_orders
TOP_DIMENSIONS: dict[str, str] = {"promoter": "promoter_id", "campaign": "campaign", "product": "product"}
TOP_METRICS = ("gmv", "conversions", "commission")
#: conversion rows that are orders: not a recruiter's override line (which repeats its
#: recruit's order, amount and reasons under another promoter)
ORDER_ROWS = "override_of = ''"
#: bounds how long a query may hold the sink's client (and so delay its writes)
QUERY_SETTINGS: dict[str, Any] = {"max_execution_time": 10}

# Numbers are ASCII digits only: str.isdigit() and int() also take '²', '④', '٣' or '1_0'.
_DIGITS = re.compile(r"[0-9]{1,16}")
_LIMIT = re.compile(r"[0-9]{1,6}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadRequest(ValueError):
    """A request parameter is missing, repeated, unknown or invalid (HTTP 400)."""


@dataclass(frozen=True)
class Query:
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """The filters every endpoint takes: a half-open time range and an optional promoter."""

    start_ms: int
    end_ms: int
    promoter: str | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"t_from": self.start_ms, "t_to": self.end_ms}
        if self.promoter is not None:
            p["promoter"] = self.promoter
        return p

    def describe(self) -> dict[str, Any]:
        return {"from": self.start_ms, "to": self.end_ms, "promoter": self.promoter}


@dataclass(frozen=True)
class Capabilities:
    """Optional parts of the schema: `conversions_current.commission` and the `alerts` table."""

    commission: bool
    alerts: bool


# --- parameters ------------------------------------------------------------------------


def shown(raw: str) -> str:
    """`raw` for an error message: cut, and escaped unless printable (control characters,
    surrogates: json.dumps would keep the former and escape the latter anyway)."""
    cut = raw[:SHOWN_LEN] + ("..." if len(raw) > SHOWN_LEN else "")
    return cut if cut.isprintable() else repr(cut)[1:-1]


def check_names(args: Args, allowed: Sequence[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(shown(n) for n in unknown[:5])}; "
                         f"this endpoint takes {', '.join(allowed)}")


def single(args: Args, name: str) -> str | None:
    """The one value of `name`, or None when absent or empty."""
    values = list(args.get(name, ()))
    if len(values) > 1:
        raise BadRequest(f"parameter {name!r} is given {len(values)} times; give it once")
    return values[0] if values and values[0] != "" else None


def parse_time(raw: str, name: str) -> int:
    """Epoch milliseconds from `1767225600000` or ISO 8601 (`2026-01-01T00:00:00Z`;
    without an offset, UTC)."""
    text = raw.strip()
    if _DIGITS.fullmatch(text):
        ms = int(text)
    else:
        try:
            if len(text) > MAX_TIME_LEN or not text.isascii():  # fromisoformat takes only ASCII too
                raise ValueError(text)
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            ms = (when - _EPOCH) // timedelta(milliseconds=1)
        except (ValueError, OverflowError):
            raise BadRequest(f"{name}='{shown(raw)}' is neither epoch milliseconds nor an ISO-8601 time "
                             f"such as 2026-01-01T12:00:00Z") from None
    if not 0 <= ms <= MAX_TIME_MS:
        raise BadRequest(f"{name}='{shown(raw)}' is outside 1970-01-01 .. 2100-01-01")
    return ms


def parse_range(args: Args, now_ms: int) -> tuple[int, int]:
    """(from, to) in epoch ms, unaligned. Defaults: to = now, from = to - 24 h."""
    raw_to, raw_from = single(args, "to"), single(args, "from")
    end = parse_time(raw_to, "to") if raw_to is not None else now_ms
    start = parse_time(raw_from, "from") if raw_from is not None else max(0, end - DEFAULT_SPAN_MS)
    if start >= end:
        raise BadRequest(f"'from' ({start}) must be before 'to' ({end})")
    return start, end


def parse_promoter(args: Args) -> str | None:
    """A promoter id exactly as the input validation accepts one, so every stored id can be asked for."""
    raw = single(args, "promoter")
    if raw is None:
        return None
    if not valid_id(raw):
        raise BadRequest(f"promoter must be 1 to {MAX_ID_LEN} printable characters")
    return raw


def parse_choice(args: Args, name: str, choices: Sequence[str], default: str) -> str:
    raw = single(args, name)
    if raw is None:
        return default
    if raw not in choices:
        raise BadRequest(f"{name}='{shown(raw)}' is not one of {', '.join(choices)}")
    return raw


def parse_limit(args: Args, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    raw = single(args, "limit")
    if raw is None:
        return default
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit='{shown(raw)}' must be a whole number from 1 to {maximum}")
    return int(raw)


def align(start: int, end: int, step: int) -> tuple[int, int]:
    """`start` rounded down and `end` rounded up to multiples of `step`."""
    return start - start % step, -(-end // step) * step


def parse_window(args: Args, now_ms: int, step_ms: int = MINUTE_MS) -> Window:
    start, end = align(*parse_range(args, now_ms), step_ms)
    return Window(start, end, parse_promoter(args))


def choose_bucket(args: Args, start: int, end: int) -> int:
    """Bucket width in ms: the `bucket` parameter, or (`auto`) the smallest one giving at most
    MAX_BUCKETS buckets."""
    name = parse_choice(args, "bucket", ["auto", *BUCKETS], "auto")
    if name == "auto":
        for step in BUCKETS.values():
            if len(range(*align(start, end, step), step)) <= MAX_BUCKETS:
                return step
        raise BadRequest(f"the range is too long: at most {MAX_BUCKETS} days")
    step = BUCKETS[name]
    n = len(range(*align(start, end, step), step))
    if n > MAX_BUCKETS:
        raise BadRequest(f"bucket={name} gives {n} buckets (at most {MAX_BUCKETS}): "
                         f"shorten the range or use a larger bucket")
    return step


# --- query builders ------------------------------------------------------------------------

#: the tracking codes the promoter owns now (promoters_current: the latest owner of each code)
PROMOTER_CODES = "tracking_code IN (SELECT tracking_code FROM promoters_current WHERE promoter_id = {promoter:String})"
PROMOTER_OWN = "promoter_id = {promoter:String}"
MINUTE_MS_EXPR = "toUInt64(toUnixTimestamp(minute)) * 1000"


def between(column: str) -> str:
    """`column` in [t_from, t_to); `column` is a constant of this module."""
    return (f"{column} >= fromUnixTimestamp64Milli({{t_from:Int64}}, 'UTC') "
            f"AND {column} < fromUnixTimestamp64Milli({{t_to:Int64}}, 'UTC')")


def bucket(ms_expr: str) -> str:
    return f"intDiv({ms_expr}, {{step:UInt64}}) * {{step:UInt64}}"


def _and(w: Window, fragment: str) -> str:
    return f" AND {fragment}" if w.promoter is not None else ""


def capabilities_query() -> Query:
    return Query(
        "SELECT"
        " (SELECT count() FROM system.columns WHERE database = currentDatabase()"
        "  AND table = 'conversions_current' AND name = 'commission') AS commission,"
        " (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'alerts') AS alerts"
    )


def funnel_query(w: Window) -> Query:
    """Clicks -> attributed signups -> first orders -> repeat orders. An order is *first* when
    it is its account's earliest approved conversion (by order time, then order id) of all
    time, so an order in the range after an earlier one before it counts as a repeat."""
    codes = _and(w, PROMOTER_CODES)
    sql = f"""
SELECT
    (SELECT uniqExactMerge(clicks) FROM stats_clicks_1m WHERE {between('minute')}{codes}) AS clicks,
    (SELECT count() FROM attributions_current
     WHERE tracking_code != '' AND {between('signup_ts')}{codes}) AS signups,
    countIf(n = 1) AS first_orders,
    countIf(n > 1) AS repeat_orders,
    uniqExact(account_id) AS buyers,
    uniqExactIf(account_id, n > 1) AS repeat_buyers
FROM (
    SELECT account_id, promoter_id, order_ts,
        row_number() OVER (PARTITION BY account_id ORDER BY order_ts, order_id) AS n
    FROM conversions_current
    WHERE status = {{status:String}} AND {ORDER_ROWS}
)
WHERE {between('order_ts')}{_and(w, PROMOTER_OWN)}
"""
    return Query(sql, {**w.params(), "status": COUNTED})


def timeseries_queries(w: Window, step_ms: int, caps: Capabilities) -> dict[str, Query]:
    """One query per source; each returns rows keyed by `t` (bucket start, epoch ms)."""
    params = {**w.params(), "step": step_ms}
    codes = _and(w, PROMOTER_CODES)
    commission = ", sumIf(commission, status = {status:String}) AS commission" if caps.commission else ""
    queries = {
        "clicks": Query(
            f"SELECT {bucket(MINUTE_MS_EXPR)} AS t, uniqExactMerge(clicks) AS clicks FROM stats_clicks_1m"
            f" WHERE {between('minute')}{codes} GROUP BY t", params),
        "signups": Query(
            f"SELECT {bucket('toUnixTimestamp64Milli(signup_ts)')} AS t, count() AS signups"
            f" FROM attributions_current WHERE tracking_code != '' AND {between('signup_ts')}{codes}"
            f" GROUP BY t", params),
        "conversions": Query(
            f"SELECT {bucket('toUnixTimestamp64Milli(order_ts)')} AS t,"
            f" countIf(status = {{status:String}} AND {ORDER_ROWS}) AS orders,"
            f" sumIf(amount, status = {{status:String}} AND {ORDER_ROWS}) AS gmv"
            f"{commission}, countIf(status IN {{issues:Array(String)}} AND {ORDER_ROWS}) AS rejections"
            f" FROM conversions_current WHERE {between('order_ts')}{_and(w, PROMOTER_OWN)} GROUP BY t",
            {**params, "status": COUNTED, "issues": list(ISSUES)}),
    }
    if w.promoter is None:  # shop-wide figures have no promoter
        queries["all_signups"] = Query(
            f"SELECT {bucket(MINUTE_MS_EXPR)} AS t, uniqExactMerge(signups) AS all_signups"
            f" FROM stats_signups_1m WHERE {between('minute')} GROUP BY t", params)
        queries["all_orders"] = Query(
            f"SELECT {bucket(MINUTE_MS_EXPR)} AS t, uniqExactMerge(orders) AS all_orders"
            f" FROM stats_orders_1m WHERE {between('minute')} AND status = {{paid:String}} GROUP BY t",
            {**params, "paid": PAID})
    return queries


def top_query(w: Window, dimension: str, by: str, limit: int, caps: Capabilities) -> Query:
    """Approved conversions grouped by promoter, campaign or product, best first: orders and
    GMV without override lines, commission with them (a recruiter's share is his)."""
    column = TOP_DIMENSIONS[dimension]
    if by not in TOP_METRICS:
        raise BadRequest(f"by='{shown(by)}' is not one of {', '.join(TOP_METRICS)}")
    if by == "commission" and not caps.commission:
        raise BadRequest("by=commission needs conversions_current.commission, which this database "
                         "does not have yet")
    commission = ", sum(commission) AS commission" if caps.commission else ""
    sql = (f"SELECT {column} AS key, countIf({ORDER_ROWS}) AS conversions, sumIf(amount, {ORDER_ROWS}) AS gmv"
           f"{commission}"
           f" FROM conversions_current WHERE status = {{status:String}} AND {between('order_ts')}"
           f"{_and(w, PROMOTER_OWN)} GROUP BY key ORDER BY {by} DESC, key LIMIT {{limit:UInt32}}")
    return Query(sql, {**w.params(), "status": COUNTED, "limit": limit})


def rejections_queries(w: Window) -> dict[str, Query]:
    """Rejected, held and reversed conversions per reason (a conversion with several reasons
    counts under each; one without is `unspecified`), and all conversions for the rates.
    Override lines repeat their recruit's status and reasons: not counted again."""
    own = f" AND {ORDER_ROWS}{_and(w, PROMOTER_OWN)}"
    params = {**w.params(), "issues": list(ISSUES)}
    return {
        "reasons": Query(
            "SELECT reason, status, count() AS conversions, sum(amount) AS gmv FROM conversions_current"
            " ARRAY JOIN if(empty(reasons), ['unspecified'], reasons) AS reason"
            f" WHERE status IN {{issues:Array(String)}} AND {between('order_ts')}{own}"
            " GROUP BY reason, status ORDER BY conversions DESC, reason, status", params),
        "totals": Query(
            "SELECT count() AS conversions, countIf(status IN {issues:Array(String)}) AS flagged"
            f" FROM conversions_current WHERE {between('order_ts')}{own}", params),
    }


def alerts_query(w: Window, limit: int) -> Query:
    """Latest detection per (kind, key, bucket) with `bucket_start` in the range; with a
    promoter, alerts keyed by the promoter id or by one of its tracking codes."""
    own = _and(w, "(key = {promoter:String} OR key IN (SELECT tracking_code FROM promoters_current"
                  " WHERE promoter_id = {promoter:String}))")
    sql = ("SELECT kind, key, toUnixTimestamp64Milli(bucket_start) AS bucket_start, observed, baseline,"
           " score, toUnixTimestamp64Milli(first_event_ts) AS first_event_ts,"
           " toUnixTimestamp64Milli(detected_at) AS detected_at"
           f" FROM (SELECT * FROM alerts FINAL WHERE {between('bucket_start')}{own})"  # before the aliases
           " ORDER BY detected_at DESC, kind, key, bucket_start DESC LIMIT {limit:UInt32}")
    return Query(sql, {**w.params(), "limit": limit})


def fetch(client: Any, query: Query) -> list[dict[str, Any]]:
    """Rows of `query` as dicts (runs in the runner's thread)."""
    return rows_as_dicts(client.query(query.sql, parameters=dict(query.params), settings=QUERY_SETTINGS))


# --- shaping -----------------------------------------------------------------------------


def money(value: Any) -> str:
    """Exact decimal string with 4 decimals (Decimal(18, 4) amounts)."""
    return f"{Decimal(value):.4f}"


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def shape_funnel(row: Mapping[str, Any]) -> dict[str, Any]:
    counts = {k: int(row[k]) for k in ("clicks", "signups", "first_orders", "repeat_orders")}
    stages, previous = [], None
    for name, count in counts.items():
        stages.append({"stage": name, "count": count,
                       "rate": None if previous is None else rate(count, previous)})
        previous = count
    buyers, repeat_buyers = int(row["buyers"]), int(row["repeat_buyers"])
    return {
        "stages": stages,
        "buyers": buyers,
        "repeat_buyers": repeat_buyers,
        "rates": {
            "click_to_signup": rate(counts["signups"], counts["clicks"]),
            "signup_to_first_order": rate(counts["first_orders"], counts["signups"]),
            "repeat_purchase": rate(repeat_buyers, buyers),
        },
    }


def shape_timeseries(w: Window, step_ms: int, results: Mapping[str, list[dict[str, Any]]],
                     caps: Capabilities) -> dict[str, Any]:
    """Dense buckets from `w.start_ms` to `w.end_ms` (zeros where nothing happened)."""
    shop = w.promoter is None
    counters = ["clicks", "signups", "orders", "rejections"] + (["all_signups", "all_orders"] if shop else [])
    sums = ["gmv"] + (["commission"] if caps.commission else [])
    points: dict[int, dict[str, Any]] = {
        t: {"t": t, **dict.fromkeys(counters, 0), **{k: Decimal(0) for k in sums}}
        for t in range(w.start_ms, w.end_ms, step_ms)
    }
    for rows in results.values():
        for row in rows:
            point = points.get(int(row["t"]))
            if point is None:
                continue
            for key, value in row.items():
                if key in counters:
                    point[key] = int(value)
                elif key in sums:
                    point[key] = Decimal(value)
    series = list(points.values())
    totals: dict[str, Any] = {k: sum(p[k] for p in series) for k in counters}
    totals.update({k: money(sum((p[k] for p in series), Decimal(0))) for k in sums})
    for p in series:
        p.update({k: money(p[k]) for k in sums})
        if not caps.commission:
            p["commission"] = None
        if not shop:
            p.update(all_signups=None, all_orders=None)
    if not caps.commission:
        totals["commission"] = None
    return {"bucket_ms": step_ms, "points": series, "totals": totals}


def shape_top(rows: list[dict[str, Any]], caps: Capabilities) -> list[dict[str, Any]]:
    return [{"key": r["key"], "conversions": int(r["conversions"]), "gmv": money(r["gmv"]),
             "commission": money(r["commission"]) if caps.commission else None} for r in rows]


def shape_rejections(reasons: list[dict[str, Any]], totals: Mapping[str, Any]) -> dict[str, Any]:
    total = int(totals["conversions"])
    return {
        "conversions": total,
        "flagged": int(totals["flagged"]),
        "reasons": [{"reason": r["reason"], "status": r["status"], "conversions": int(r["conversions"]),
                     "gmv": money(r["gmv"]), "rate": rate(int(r["conversions"]), total)} for r in reasons],
    }


def shape_alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "observed": int(r["observed"]), "baseline": float(r["baseline"]), "score": float(r["score"]),
             "bucket_start": int(r["bucket_start"]), "first_event_ts": int(r["first_event_ts"]),
             "detected_at": int(r["detected_at"])} for r in rows]


# --- handlers ----------------------------------------------------------------------------

WINDOW_ARGS = ("from", "to", "promoter")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class StatsApi:
    """The endpoints: each takes the query-string `Args` and returns a JSON-ready dict, or
    raises `BadRequest`. Queries run through `run` (one call per request)."""

    def __init__(self, run: Runner, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.run = run
        self.clock = clock
        self._caps: Capabilities | None = None

    def endpoints(self) -> dict[str, Callable[[Args], Awaitable[dict[str, Any]]]]:
        return {"funnel": self.funnel, "timeseries": self.timeseries, "top": self.top,
                "rejections": self.rejections, "alerts": self.alerts}

    async def capabilities(self) -> Capabilities:
        """Checked once (system.columns / system.tables), then cached: migrations only run at
        the worker's start, so the schema does not change under a running worker."""
        if self._caps is None:
            row = (await self.run(lambda c: fetch(c, capabilities_query())))[0]
            self._caps = Capabilities(commission=bool(row["commission"]), alerts=bool(row["alerts"]))
        return self._caps

    async def _all(self, queries: Mapping[str, Query]) -> dict[str, list[dict[str, Any]]]:
        return await self.run(lambda c: {name: fetch(c, q) for name, q in queries.items()})

    async def funnel(self, args: Args) -> dict[str, Any]:
        check_names(args, WINDOW_ARGS)
        w = parse_window(args, self.clock())
        rows = await self._all({"funnel": funnel_query(w)})
        return {**w.describe(), **shape_funnel(rows["funnel"][0])}

    async def timeseries(self, args: Args) -> dict[str, Any]:
        check_names(args, (*WINDOW_ARGS, "bucket"))
        start, end = parse_range(args, self.clock())
        step = choose_bucket(args, start, end)
        w = Window(*align(start, end, step), parse_promoter(args))
        caps = await self.capabilities()
        results = await self._all(timeseries_queries(w, step, caps))
        return {**w.describe(), **shape_timeseries(w, step, results, caps)}

    async def top(self, args: Args) -> dict[str, Any]:
        check_names(args, (*WINDOW_ARGS, "dimension", "by", "limit"))
        w = parse_window(args, self.clock())
        dimension = parse_choice(args, "dimension", list(TOP_DIMENSIONS), "promoter")
        by = parse_choice(args, "by", TOP_METRICS, "gmv")
        limit = parse_limit(args, TOP_LIMIT)
        caps = await self.capabilities()
        rows = await self._all({"top": top_query(w, dimension, by, limit, caps)})
        return {**w.describe(), "dimension": dimension, "by": by, "rows": shape_top(rows["top"], caps)}

    async def rejections(self, args: Args) -> dict[str, Any]:
        check_names(args, WINDOW_ARGS)
        w = parse_window(args, self.clock())
        rows = await self._all(rejections_queries(w))
        return {**w.describe(), "statuses": list(ISSUES), **shape_rejections(rows["reasons"], rows["totals"][0])}

    async def alerts(self, args: Args) -> dict[str, Any]:
        check_names(args, (*WINDOW_ARGS, "limit"))
        w = parse_window(args, self.clock())
        limit = parse_limit(args, ALERTS_LIMIT)
        caps = await self.capabilities()
        if not caps.alerts:
            return {**w.describe(), "available": False, "alerts": []}
        rows = await self._all({"alerts": alerts_query(w, limit)})
        return {**w.describe(), "available": True, "alerts": shape_alerts(rows["alerts"])}
