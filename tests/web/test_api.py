"""Stats API against a real chdb engine: exact figures on a small hand-made dataset, bad
parameters, auth, and the HTTP routes on a real Faust app's web server (no broker needed).

chdb hosts one engine (one data directory) per process: this module opens one directory,
gives each dataset its own database, and closes every client at the end (like
tests/sinks/test_sinks.py), so other modules can open chdb elsewhere.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import faust
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Promoter
from schemas.records import AttributionRec, ClickRec, ClickRef, Conversion, OrderRec, SignupRec
from schemas.validate import valid_id
from sinks.clickhouse import ClickHouseWriter
from sinks.migrations import MIGRATIONS
from sinks.stats import ALERTS, STATS_STATEMENTS
from streams.agents.sink import SinkStep
from streams.config import Settings
from streams.metrics import Metrics
from streams.web import api as stats
from streams.web.routes import authorized, register
from tests.sinks import write_records

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000
WINDOW = {"from": [str(T0)], "to": [str(T0 + 6 * H)]}


# --- the dataset ---------------------------------------------------------------------------


def promoter(pid: str, code: str) -> Promoter:
    return Promoter(event_id=f"p-{code}", ts=T0 - 10 * D, promoter_id=pid, tracking_code=code)


def click(eid: str, code: str, ts: int) -> ClickRec:
    return ClickRec(event_id=eid, ts=ts, visitor_id=f"v-{eid}", tracking_code=code, campaign="spring")


def attribution(account: str, code: str | None, ts: int, version: int) -> tuple[int, AttributionRec]:
    ref = None if code is None else ClickRef(event_id=f"c-{account}", ts=ts - M, tracking_code=code)
    return version, AttributionRec(account_id=account, signup_event_id=f"s-{account}", signup_ts=ts,
                                   visitor_id=f"v-{account}", click=ref, final=True)


def signup(account: str, ts: int) -> SignupRec:
    return SignupRec(event_id=f"s-{account}", ts=ts, account_id=account, visitor_id=f"v-{account}")


def conversion(order: str, account: str, promoter_id: str, code: str, ts: int, amount: str,
               status: str = "approved", reasons: tuple[str, ...] = (), revision: int = 1,
               commission: str = "0", campaign: str = "spring", product: str = "pro") -> Conversion:
    return Conversion(
        order_id=order, revision=revision, status=status, reasons=list(reasons), promoter_id=promoter_id,
        tracking_code=code, campaign=campaign, account_id=account, visitor_id=f"v-{account}",
        click_event_id="c", click_ts=ts - H, signup_event_id=f"s-{account}", signup_ts=ts - H,
        order_event_id=f"e-{order}", order_ts=ts, cart_id="", product=product, category="saas",
        amount=Decimal(amount), discount=Decimal(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=ts + S, commission=Decimal(commission),
    )


def paid(order: str, account: str, ts: int, amount: str, status: str = "paid") -> OrderRec:
    return OrderRec(event_id=f"e-{order}-{status}", ts=ts, order_id=order, account_id=account, product="pro",
                    amount=Decimal(amount), currency="USD", status=status)


def dataset() -> list[Any]:
    """P1 owns T1 and T2, P2 owns T3, nobody owns TX. Window: [T0, T0 + 6h)."""
    return [
        promoter("P1", "T1"), promoter("P1", "T2"), promoter("P2", "T3"),
        # clicks: 7 in the window (c1 delivered twice), c0 the day before
        click("c0", "T1", T0 - D), click("c1", "T1", T0 + 5 * S), click("c1", "T1", T0 + 5 * S),
        click("c2", "T1", T0 + 10 * S), click("c3", "T2", T0 + 70 * S), click("c6", "T2", T0 + 50 * M),
        click("c7", "T2", T0 + 55 * M), click("c4", "T3", T0 + 2 * H), click("c5", "TX", T0 + 3 * H),
        # signups: a2 re-attributed T3 -> T1; a4 organic
        attribution("a1", "T1", T0 + 20 * M, 10), attribution("a2", "T3", T0 + 30 * M, 11),
        attribution("a2", "T1", T0 + 30 * M, 21), attribution("a3", "T3", T0 + 2 * H + 10 * M, 12),
        attribution("a4", None, T0 + 40 * M, 13), attribution("a5", "TX", T0 + 3 * H + 5 * M, 14),
        attribution("a6", "T2", T0 + H, 15),
        signup("a1", T0 + 20 * M), signup("a1", T0 + 20 * M), signup("a2", T0 + 30 * M),
        signup("a3", T0 + 2 * H + 10 * M), signup("a4", T0 + 40 * M), signup("a5", T0 + 3 * H + 5 * M),
        signup("a6", T0 + H),
        # conversions: a3 already bought two days before, so o3 is a repeat order
        conversion("o0", "a3", "P2", "T3", T0 - 2 * D, "5", commission="0.5"),
        conversion("o1", "a1", "P1", "T1", T0 + H, "100.00", commission="10"),
        conversion("o8", "a6", "P1", "T2", T0 + H + 15 * M, "10", commission="1", campaign="summer", product="team"),
        conversion("o4", "a2", "P1", "T1", T0 + H + 30 * M, "20", commission="2"),
        conversion("o4", "a2", "P1", "T1", T0 + H + 30 * M, "20", "reversed", ("refunded",), revision=2),
        conversion("o3", "a3", "P2", "T3", T0 + 2 * H + 30 * M, "30", commission="3", product="team"),
        conversion("o5", "a5", "", "TX", T0 + 3 * H + 10 * M, "15", "rejected", ("unknown_promoter",)),
        conversion("o2", "a1", "P1", "T1", T0 + 4 * H, "50.50", commission="5.05"),
        conversion("o6", "a2", "P1", "T1", T0 + 5 * H, "40", "held", ("self_referral", "velocity")),
        conversion("o9", "a5", "", "TX", T0 + 5 * H + 30 * M, "1", "rejected"),
        # raw order events (shop-wide counts); o1 delivered twice, o4 refunded later
        paid("o0", "a3", T0 - 2 * D, "5"), paid("o1", "a1", T0 + H, "100"), paid("o1", "a1", T0 + H, "100"),
        paid("o8", "a6", T0 + H + 15 * M, "10"), paid("o4", "a2", T0 + H + 30 * M, "20"),
        paid("o4", "a2", T0 + 2 * H, "20", "refunded"), paid("o3", "a3", T0 + 2 * H + 30 * M, "30"),
        paid("o5", "a5", T0 + 3 * H + 10 * M, "15"), paid("o2", "a1", T0 + 4 * H, "50.50"),
        paid("o6", "a2", T0 + 5 * H, "40"),
    ]


ALERT_ROWS = [  # kind, key, bucket_start, observed, baseline, score, first_event_ts, detected_at
    ("promoter", "P1", T0 + H, 40, 5.0, 7.5, T0 + H + S, T0 + H + 5 * M),
    ("promoter", "P1", T0 + H, 50, 5.0, 9.5, T0 + H + S, T0 + H + 6 * M),  # re-detected: replaces
    ("tracking_code", "T3", T0 + 2 * H, 30, 3.0, 6.0, T0 + 2 * H + S, T0 + 2 * H + 2 * M),
    ("promoter", "P2", T0 - D, 99, 1.0, 20.0, T0 - D, T0 - D + M),  # outside the window
]


def load(client: Any) -> None:
    writer = ClickHouseWriter(client)
    for record in dataset():  # one insert per record: the views see every duplicate
        write_records(writer, [record])
    client.insert("alerts", ALERT_ROWS, column_names=list(ALERTS.insert_columns),
                  column_type_names=list(ALERTS.insert_types))


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(database: Any) -> Any:
    client = database("web_full")
    load(client)
    return client


@pytest.fixture(scope="module")
def before_pricing(database: Any) -> Any:
    """The schema as it was before conversions had a commission column."""
    client = database("web_before")
    load(client)
    client.command("ALTER TABLE conversions DROP COLUMN commission")
    client.command("CREATE OR REPLACE VIEW conversions_current AS SELECT * FROM conversions FINAL")
    client.command("CREATE OR REPLACE VIEW promoter_statement AS SELECT 1")  # it read commission
    client.command("DROP TABLE alerts")
    return client


def override_line(c: Conversion, parent: str, commission: str) -> Conversion:
    """The parent's override line of `c` (streams/logic/overrides.py): the recruit's order,
    status and reasons, credited to the parent."""
    return msgspec.structs.replace(c, order_id=c.order_id + "#override", promoter_id=parent,
                                   override_of=c.promoter_id, commission=Decimal(commission))


#: P2 recruited P1: lines of P1's o1, o8 and o2 (approved), o4 (refunded later) and o6 (held), at 10%
OVERRIDE_LINES = [override_line(c, "P2", str(c.commission / 10))
                  for c in dataset() if isinstance(c, Conversion) and c.promoter_id == "P1"]


@pytest.fixture(scope="module")
def with_lines(database: Any) -> Any:
    """`full` plus P2's override lines of P1's orders."""
    client = database("web_lines")
    load(client)
    write_records(ClickHouseWriter(client), OVERRIDE_LINES)
    return client


@pytest.fixture(scope="module")
def empty(database: Any) -> Any:
    return database("web_empty")


def sink_with(writer: Any = None, open_writer: Any = None) -> SinkStep:
    """The worker's real SinkStep, on a given writer (or a given way to open one)."""
    sink = SinkStep(Settings(), Metrics())
    sink.writer = writer
    if open_writer is not None:
        sink._open = open_writer  # type: ignore[method-assign]
    return sink


def api_for(client: Any) -> stats.StatsApi:
    return stats.StatsApi(sink_with(ClickHouseWriter(client)).read, clock=lambda: T0 + 6 * H)


def call(client: Any, endpoint: str, **params: str) -> dict[str, Any]:
    args = {**WINDOW, **{k.rstrip("_"): [v] for k, v in params.items()}}
    return asyncio.run(api_for(client).endpoints()[endpoint](args))


# --- exact figures -------------------------------------------------------------------------


@dataclass
class FunnelCase:
    name: str
    promoter: str | None
    stages: list[int]  # clicks, signups, first orders, repeat orders
    buyers: tuple[int, int]  # buyers, repeat buyers
    rates: dict[str, float | None]


FUNNEL_CASES = [
    FunnelCase("all", None, [7, 5, 2, 2], (3, 2),
               {"click_to_signup": 0.7143, "signup_to_first_order": 0.4, "repeat_purchase": 0.6667}),
    FunnelCase("P1", "P1", [5, 3, 2, 1], (2, 1),
               {"click_to_signup": 0.6, "signup_to_first_order": 0.6667, "repeat_purchase": 0.5}),
    FunnelCase("P2", "P2", [1, 1, 0, 1], (1, 1),
               {"click_to_signup": 1.0, "signup_to_first_order": 0.0, "repeat_purchase": 1.0}),
    FunnelCase("nobody", "P404", [0, 0, 0, 0], (0, 0),
               {"click_to_signup": None, "signup_to_first_order": None, "repeat_purchase": None}),
]


@pytest.mark.parametrize("case", FUNNEL_CASES, ids=lambda c: c.name)
def test_funnel(full: Any, case: FunnelCase) -> None:
    got = call(full, "funnel", **({"promoter": case.promoter} if case.promoter else {}))
    assert [s["count"] for s in got["stages"]] == case.stages
    assert [s["stage"] for s in got["stages"]] == ["clicks", "signups", "first_orders", "repeat_orders"]
    assert (got["buyers"], got["repeat_buyers"]) == case.buyers
    assert got["rates"] == case.rates
    assert (got["from"], got["to"], got["promoter"]) == (T0, T0 + 6 * H, case.promoter)


def test_funnel_stage_rates_compare_with_the_previous_stage(full: Any) -> None:
    rates = [s["rate"] for s in call(full, "funnel")["stages"]]
    assert rates == [None, 0.7143, 0.4, 1.0]


def test_timeseries_by_hour(full: Any) -> None:
    got = call(full, "timeseries", bucket="hour")
    assert got["bucket_ms"] == H
    rows = [(p["t"] - T0) // H for p in got["points"]]
    assert rows == [0, 1, 2, 3, 4, 5]
    table = {k: [p[k] for p in got["points"]] for k in got["points"][0] if k != "t"}
    assert table == {
        "clicks": [5, 0, 1, 1, 0, 0],
        "signups": [2, 1, 1, 1, 0, 0],
        "orders": [0, 2, 1, 0, 1, 0],
        "rejections": [0, 1, 0, 1, 0, 2],
        "gmv": ["0.0000", "110.0000", "30.0000", "0.0000", "50.5000", "0.0000"],
        "commission": ["0.0000", "11.0000", "3.0000", "0.0000", "5.0500", "0.0000"],
        "all_signups": [3, 1, 1, 1, 0, 0],
        "all_orders": [0, 3, 1, 1, 1, 1],
    }
    assert got["totals"] == {"clicks": 7, "signups": 5, "orders": 4, "rejections": 4, "all_signups": 6,
                             "all_orders": 7, "gmv": "190.5000", "commission": "19.0500"}


def test_timeseries_for_a_promoter_has_no_shop_wide_figures(full: Any) -> None:
    got = call(full, "timeseries", bucket="hour", promoter="P1")
    assert [p["clicks"] for p in got["points"]] == [5, 0, 0, 0, 0, 0]
    assert [p["orders"] for p in got["points"]] == [0, 2, 0, 0, 1, 0]
    assert {p["all_orders"] for p in got["points"]} == {None}
    assert got["totals"]["gmv"] == "160.5000" and got["totals"]["commission"] == "16.0500"


@dataclass
class BucketCase:
    name: str
    params: dict[str, str]
    bucket_ms: int
    points: int
    first: int


BUCKET_CASES = [
    BucketCase("auto 6h is minutes", {}, M, 360, T0),
    BucketCase("auto 3 days is hours", {"from_": str(T0 - 3 * D)}, H, 78, T0 - 3 * D),
    BucketCase("auto 3 years is days", {"from_": str(T0 - 3 * 365 * D)}, D, 3 * 365 + 1, T0 - 3 * 365 * D),
    BucketCase("unaligned range widens to whole buckets", {"from_": str(T0 + 90 * M + 5), "to": str(T0 + 2 * H + 1),
                                                           "bucket": "hour"}, H, 2, T0 + H),
]


@pytest.mark.parametrize("case", BUCKET_CASES, ids=lambda c: c.name)
def test_timeseries_buckets(full: Any, case: BucketCase) -> None:
    got = call(full, "timeseries", **case.params)
    assert (got["bucket_ms"], len(got["points"]), got["points"][0]["t"]) == (case.bucket_ms, case.points, case.first)
    assert sum(p["clicks"] for p in got["points"]) == got["totals"]["clicks"]


def test_minute_buckets_count_the_duplicated_click_once(full: Any) -> None:
    got = call(full, "timeseries", bucket="minute", to=str(T0 + 2 * M))
    assert [(p["t"], p["clicks"]) for p in got["points"]] == [(T0, 2), (T0 + M, 1)]


@dataclass
class TopCase:
    name: str
    params: dict[str, str]
    rows: list[tuple[str, int, str, str]]  # key, conversions, gmv, commission


TOP_CASES = [
    TopCase("promoters by gmv", {}, [("P1", 3, "160.5000", "16.0500"), ("P2", 1, "30.0000", "3.0000")]),
    TopCase("campaigns by conversions", {"dimension": "campaign", "by": "conversions"},
            [("spring", 3, "180.5000", "18.0500"), ("summer", 1, "10.0000", "1.0000")]),
    TopCase("products, ties by key", {"dimension": "product", "by": "conversions"},
            [("pro", 2, "150.5000", "15.0500"), ("team", 2, "40.0000", "4.0000")]),
    TopCase("limit", {"dimension": "product", "limit": "1"}, [("pro", 2, "150.5000", "15.0500")]),
    TopCase("by commission", {"by": "commission"}, [("P1", 3, "160.5000", "16.0500"), ("P2", 1, "30.0000", "3.0000")]),
    TopCase("one promoter", {"promoter": "P2", "dimension": "campaign"}, [("spring", 1, "30.0000", "3.0000")]),
]


@pytest.mark.parametrize("case", TOP_CASES, ids=lambda c: c.name)
def test_top(full: Any, case: TopCase) -> None:
    got = call(full, "top", **case.params)
    assert [(r["key"], r["conversions"], r["gmv"], r["commission"]) for r in got["rows"]] == case.rows


def flat(value: Any, path: str = "") -> dict[str, Any]:
    """A JSON-ready answer as {dotted path: leaf value}."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{path}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{path}{i}.").items()}
    return {path.rstrip("."): value}


@dataclass
class LinesCase:
    endpoint: str
    params: dict[str, str]
    changed: dict[str, Any]  # what the override lines change in the answer: only commission


LINES_CASES = [
    LinesCase("funnel", {}, {}),
    LinesCase("funnel", {"promoter": "P2"}, {}),
    LinesCase("timeseries", {"bucket": "hour"}, {"points.1.commission": "12.1000", "points.4.commission": "5.5550",
                                                 "totals.commission": "20.6550"}),
    LinesCase("timeseries", {"bucket": "hour", "promoter": "P1"}, {}),
    LinesCase("timeseries", {"bucket": "hour", "promoter": "P2"},
              {"points.1.commission": "1.1000", "points.4.commission": "0.5050", "totals.commission": "4.6050"}),
    LinesCase("top", {}, {"rows.1.commission": "4.6050"}),
    LinesCase("top", {"dimension": "campaign", "by": "conversions"},
              {"rows.0.commission": "19.5550", "rows.1.commission": "1.1000"}),
    LinesCase("top", {"dimension": "product"}, {"rows.0.commission": "16.5550", "rows.1.commission": "4.1000"}),
    LinesCase("rejections", {}, {}),
    LinesCase("rejections", {"promoter": "P2"}, {}),
]


@pytest.mark.parametrize("case", LINES_CASES, ids=lambda c: f"{c.endpoint}-{'-'.join(c.params.values())}")
def test_override_lines_are_money_not_conversions(full: Any, with_lines: Any, case: LinesCase) -> None:
    """Counts, GMV and reasons are of orders: a recruiter's override line (the same order
    again) adds only its commission, to him and to the order's campaign and product."""
    before, after = flat(call(full, case.endpoint, **case.params)), flat(call(with_lines, case.endpoint, **case.params))
    assert set(before) == set(after)
    assert {k: v for k, v in after.items() if before[k] != v} == case.changed


def test_a_recruiter_with_only_override_lines_shows_his_commission(with_lines: Any) -> None:
    got = call(with_lines, "top", by="commission", from_=str(T0 + H), to=str(T0 + 2 * H))
    assert [(r["key"], r["conversions"], r["gmv"], r["commission"]) for r in got["rows"]] == [
        ("P1", 2, "110.0000", "11.0000"), ("P2", 0, "0.0000", "1.1000")]


@dataclass
class RejectionCase:
    name: str
    promoter: str | None
    totals: tuple[int, int]  # conversions in the window, rejected + held + reversed
    reasons: list[tuple[str, str, int, str, float]] = field(default_factory=list)


REJECTION_CASES = [
    RejectionCase("all", None, (8, 4), [
        ("refunded", "reversed", 1, "20.0000", 0.125), ("self_referral", "held", 1, "40.0000", 0.125),
        ("unknown_promoter", "rejected", 1, "15.0000", 0.125), ("unspecified", "rejected", 1, "1.0000", 0.125),
        ("velocity", "held", 1, "40.0000", 0.125),
    ]),
    RejectionCase("P1", "P1", (5, 2), [
        ("refunded", "reversed", 1, "20.0000", 0.2), ("self_referral", "held", 1, "40.0000", 0.2),
        ("velocity", "held", 1, "40.0000", 0.2),
    ]),
    RejectionCase("P2", "P2", (1, 0), []),
]


@pytest.mark.parametrize("case", REJECTION_CASES, ids=lambda c: c.name)
def test_rejections(full: Any, case: RejectionCase) -> None:
    got = call(full, "rejections", **({"promoter": case.promoter} if case.promoter else {}))
    assert (got["conversions"], got["flagged"]) == case.totals
    assert [(r["reason"], r["status"], r["conversions"], r["gmv"], r["rate"]) for r in got["reasons"]] == case.reasons
    assert got["statuses"] == ["rejected", "held", "reversed"]


@dataclass
class AlertCase:
    name: str
    params: dict[str, str]
    keys: list[tuple[str, str, int, float]]  # kind, key, observed, score


ALERT_CASES = [
    AlertCase("window, latest detection wins", {}, [("tracking_code", "T3", 30, 6.0), ("promoter", "P1", 50, 9.5)]),
    AlertCase("promoter by its tracking code", {"promoter": "P2"}, [("tracking_code", "T3", 30, 6.0)]),
    AlertCase("promoter by id", {"promoter": "P1"}, [("promoter", "P1", 50, 9.5)]),
    AlertCase("limit", {"limit": "1"}, [("tracking_code", "T3", 30, 6.0)]),
    AlertCase("older range", {"from_": str(T0 - 2 * D), "to": str(T0)}, [("promoter", "P2", 99, 20.0)]),
]


@pytest.mark.parametrize("case", ALERT_CASES, ids=lambda c: c.name)
def test_alerts(full: Any, case: AlertCase) -> None:
    got = call(full, "alerts", **case.params)
    assert got["available"] is True
    assert [(a["kind"], a["key"], a["observed"], a["score"]) for a in got["alerts"]] == case.keys


def test_alert_rows_carry_epoch_millis(full: Any) -> None:
    alert = call(full, "alerts", promoter="P1")["alerts"][0]
    assert alert == {"kind": "promoter", "key": "P1", "bucket_start": T0 + H, "observed": 50, "baseline": 5.0,
                     "score": 9.5, "first_event_ts": T0 + H + S, "detected_at": T0 + H + 6 * M}


def test_before_pricing_and_alerts_the_api_still_answers(before_pricing: Any) -> None:
    ts = call(before_pricing, "timeseries", bucket="hour")
    assert ts["totals"]["gmv"] == "190.5000" and ts["totals"]["commission"] is None
    assert {p["commission"] for p in ts["points"]} == {None}
    top = call(before_pricing, "top")
    assert [(r["key"], r["gmv"], r["commission"]) for r in top["rows"]] == [("P1", "160.5000", None),
                                                                          ("P2", "30.0000", None)]
    with pytest.raises(stats.BadRequest, match="commission"):
        call(before_pricing, "top", by="commission")
    assert call(before_pricing, "alerts") == {"from": T0, "to": T0 + 6 * H, "promoter": None,
                                              "available": False, "alerts": []}
    assert [s["count"] for s in call(before_pricing, "funnel")["stages"]] == [7, 5, 2, 2]


def test_empty_database(empty: Any) -> None:
    assert [s["count"] for s in call(empty, "funnel")["stages"]] == [0, 0, 0, 0]
    ts = call(empty, "timeseries")
    assert len(ts["points"]) == 360 and ts["totals"]["gmv"] == "0.0000"
    assert call(empty, "top")["rows"] == [] and call(empty, "rejections")["reasons"] == []
    assert call(empty, "alerts")["alerts"] == []


def test_stats_migration_backfills_and_is_exact_when_run_again(database: Any) -> None:
    """Rows written before the aggregates existed are backfilled; a re-run adds nothing."""
    client = database("web_backfill")
    stats_migration = next(m for m in MIGRATIONS if m.statements == STATS_STATEMENTS)
    for table in ("stats_clicks_1m", "stats_signups_1m", "stats_orders_1m"):
        client.command(f"DROP VIEW {table}_mv")
        client.command(f"TRUNCATE TABLE {table}")
    load(client)  # nothing reaches the aggregates now
    assert call(client, "funnel")["stages"][0]["count"] == 0
    for _ in range(2):
        for statement in stats_migration.statements:
            client.command(statement)
    assert [s["count"] for s in call(client, "funnel")["stages"]] == [7, 5, 2, 2]
    assert call(client, "timeseries", bucket="hour")["totals"]["all_orders"] == 7


# --- parameters ----------------------------------------------------------------------------


@dataclass
class TimeCase:
    raw: str
    ms: int


TIME_CASES = [
    TimeCase("1767225600000", T0), TimeCase("2026-01-01T00:00:00Z", T0), TimeCase("2026-01-01T01:00:00+01:00", T0),
    TimeCase("2026-01-01", T0), TimeCase("2026-01-01 00:00:00.250", T0 + 250), TimeCase(" 0 ", 0),
]


@pytest.mark.parametrize("case", TIME_CASES, ids=lambda c: c.raw)
def test_parse_time(case: TimeCase) -> None:
    assert stats.parse_time(case.raw, "from") == case.ms


@dataclass
class BadCase:
    endpoint: str
    params: dict[str, list[str]]
    message: str


BAD_CASES = [
    BadCase("funnel", {"from": ["yesterday"]}, "neither epoch milliseconds nor an ISO-8601"),
    BadCase("funnel", {"to": ["99999999999999999"]}, "neither epoch"),
    BadCase("funnel", {"to": ["4102444800001"]}, "outside 1970-01-01 .. 2100-01-01"),
    BadCase("funnel", {"from": [str(T0)], "to": [str(T0)]}, "must be before"),
    BadCase("funnel", {"from": [str(T0 + H)], "to": [str(T0)]}, "must be before"),
    BadCase("funnel", {"form": [str(T0)]}, "unknown parameter(s) form"),
    BadCase("funnel", {"from": [str(T0), str(T0 + 1)]}, "given 2 times"),
    BadCase("funnel", {"promoter": ["x" * 129]}, "1 to 128 printable"),
    BadCase("rejections", {"promoter": ["P1\n"]}, "printable"),
    BadCase("timeseries", {"bucket": ["week"]}, "bucket='week' is not one of auto, minute, hour, day"),
    BadCase("timeseries", {"from": [str(T0 - 7 * D)], "to": [str(T0)], "bucket": ["minute"]}, "gives 10080 buckets"),
    BadCase("timeseries", {"from": ["0"], "to": ["4102444800000"]}, "too long"),
    BadCase("top", {"dimension": ["country"]}, "dimension='country' is not one of promoter, campaign, product"),
    BadCase("top", {"by": ["clicks"]}, "by='clicks' is not one of gmv, conversions, commission"),
    BadCase("top", {"limit": ["0"]}, "from 1 to 100"),
    BadCase("top", {"limit": ["101"]}, "from 1 to 100"),
    BadCase("alerts", {"limit": ["-1"]}, "from 1 to 500"),
    BadCase("alerts", {"bucket": ["hour"]}, "unknown parameter(s) bucket"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: f"{c.endpoint}-{c.message[:24]}")
def test_bad_parameters_are_rejected_before_any_query(case: BadCase) -> None:
    async def no_queries(fn: Any) -> Any:
        raise AssertionError("a query ran")

    api = stats.StatsApi(no_queries, clock=lambda: T0)
    api._caps = stats.Capabilities(commission=True, alerts=True)  # what the schema check would say
    with pytest.raises(stats.BadRequest) as info:
        asyncio.run(api.endpoints()[case.endpoint](case.params))
    assert case.message in str(info.value)


class Parsed(Exception):
    """Raised by the runner: the parameters passed, a query would run now."""


def parse_step(endpoint: str, params: dict[str, list[str]]) -> stats.BadRequest | None:
    """What an endpoint's parameter parsing gives: None when a query would run, else the
    BadRequest. Any other exception propagates (and would be a 503)."""
    async def runner(fn: Any) -> Any:
        raise Parsed

    api = stats.StatsApi(runner, clock=lambda: T0)
    api._caps = stats.Capabilities(commission=True, alerts=True)
    try:
        asyncio.run(api.endpoints()[endpoint](params))
    except Parsed:
        return None
    except stats.BadRequest as exc:
        assert len(str(exc)) < 400, "an error message quotes a bounded part of the value"
        return exc
    raise AssertionError("no query ran and no BadRequest")


#: endpoint -> its parameters (every endpoint takes from, to and promoter)
PARAMETERS = {"funnel": [], "rejections": [], "timeseries": ["bucket"], "top": ["dimension", "by", "limit"],
              "alerts": ["limit"]}
PARAMETERS = {e: ["from", "to", "promoter", *ps] for e, ps in PARAMETERS.items()}

NOT_ASCII_DIGITS = ["²", "④", "٣", "５", "১০", "1_0", "+5", "-0", "5.0", "1e2", "0x10", "٠"]
HOSTILE = ["\x00", "5\x00", "\udce9", "\ud800", "\u202e5", "\t", "\n", "9" * 5000, "1" * 17, "é" * 10000]


@dataclass
class MalformedCase:
    endpoint: str
    name: str
    value: str


MALFORMED_CASES = [
    *(MalformedCase(e, "limit", v) for e in ("top", "alerts")
      for v in NOT_ASCII_DIGITS + HOSTILE + [" 5", "0", "1000000"]),
    *(MalformedCase("funnel", n, v) for n in ("from", "to") for v in NOT_ASCII_DIGITS + HOSTILE
      + ["２０２６-01-01", "2026-01-0١", "0001-01-01", "9999-12-31T23:59:59-23:59", "-1", "4102444800001"]),
    *(MalformedCase("rejections", "promoter", v) for v in ["\x00", "P\x001", "\udce9", "P\u202e1", "\t", "x" * 129]),
    *(MalformedCase("timeseries", "bucket", v) for v in ["Hour", "hour\x00", "\udce9", "h" * 100_000]),
    *(MalformedCase("top", n, v) for n in ("dimension", "by") for v in ["\x00", "\udce9", "GMV", "x" * 100_000]),
    MalformedCase("funnel", "\udce9", "1"), MalformedCase("funnel", "x" * 100_000, "1"),
    MalformedCase("funnel", "\x00", "\x00"),
]


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=lambda c: f"{c.endpoint}-{c.name[:12]!a}={c.value[:12]!a}")
def test_a_malformed_value_is_a_bad_request(case: MalformedCase) -> None:
    """Issue 11, defect 11: `limit=²` was a 503 (str.isdigit() is true, int() fails)."""
    assert parse_step(case.endpoint, {case.name: [case.value]}) is not None


@pytest.mark.parametrize("promoter", ["P1", "x" * 128, "Pé", "P 1", "プロモーター", "😀", "P'1--"])
def test_every_id_the_input_accepts_is_a_valid_promoter_filter(promoter: str) -> None:
    assert valid_id(promoter) and parse_step("funnel", {"promoter": [promoter]}) is None


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PARAMETERS)), st.data())
def test_any_text_for_any_parameter_is_parsed_or_a_bad_request(endpoint: str, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(PARAMETERS[endpoint]))
    value = data.draw(st.text() | st.sampled_from(NOT_ASCII_DIGITS + HOSTILE) | st.from_regex(r"[0-9]{1,20}"))
    parse_step(endpoint, {name: [value]})


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PARAMETERS)),
       st.dictionaries(st.text(max_size=12), st.lists(st.text(), max_size=3), max_size=6))
def test_any_query_string_is_parsed_or_a_bad_request(endpoint: str, params: dict[str, list[str]]) -> None:
    parse_step(endpoint, params)


@given(st.text())
def test_the_promoter_filter_accepts_exactly_the_valid_ids(promoter: str) -> None:
    accepted = parse_step("funnel", {"promoter": [promoter]}) is None
    assert accepted is (promoter == "" or valid_id(promoter))  # empty: no filter


def test_values_travel_as_parameters_only(full: Any) -> None:
    """A hostile promoter value is data: it matches nothing and changes no SQL."""
    hostile = "P1' OR 1=1 --"
    q = stats.funnel_query(stats.Window(T0, T0 + H, hostile))
    assert hostile not in q.sql and q.params["promoter"] == hostile
    assert [s["count"] for s in call(full, "funnel", promoter=hostile)["stages"]] == [0, 0, 0, 0]


# --- auth and HTTP -----------------------------------------------------------------------------


@dataclass
class AuthCase:
    name: str
    expected: str
    header: str | None
    query_token: str | None
    ok: bool


AUTH_CASES = [
    AuthCase("no token configured", "", None, None, True),
    AuthCase("bearer matches", "s3cret", "Bearer s3cret", None, True),
    AuthCase("scheme is case-insensitive", "s3cret", "bearer s3cret", None, True),
    AuthCase("missing", "s3cret", None, None, False),
    AuthCase("wrong", "s3cret", "Bearer s3cre", None, False),
    AuthCase("other scheme", "s3cret", "Basic s3cret", None, False),
    AuthCase("empty bearer", "s3cret", "Bearer ", None, False),
    AuthCase("query token", "s3cret", None, "s3cret", True),
    AuthCase("wrong query token", "s3cret", None, "nope", False),
    AuthCase("non-ascii", "s3cret", "Bearer s3crét", None, False),
]


@pytest.mark.parametrize("case", AUTH_CASES, ids=lambda c: c.name)
def test_authorized(case: AuthCase) -> None:
    assert authorized(case.expected, case.header, case.query_token) is case.ok


@dataclass
class HttpCase:
    name: str
    token: str
    path: str
    headers: dict[str, str]
    status: int
    check: str = ""  # substring of the body


TOKEN = "t0ken-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FUNNEL_PATH = f"/api/funnel?from={T0}&to={T0 + 6 * H}"
HTTP_CASES = [
    HttpCase("open api", "", FUNNEL_PATH, {}, 200, '"count":7'),
    HttpCase("open dashboard", "", "/dashboard", {}, 200, "chart-funnel"),
    HttpCase("open index", "", "/api", {}, 200, "/api/timeseries"),
    HttpCase("api without token", TOKEN, FUNNEL_PATH, {}, 401, "bearer token"),
    HttpCase("api with token", TOKEN, FUNNEL_PATH, BEARER, 200, '"count":7'),
    HttpCase("api ignores a query token", TOKEN, FUNNEL_PATH + f"&token={TOKEN}", {}, 401),
    HttpCase("index without token", TOKEN, "/api", {}, 401),
    HttpCase("dashboard without token", TOKEN, "/dashboard", {}, 401),
    HttpCase("dashboard with query token", TOKEN, f"/dashboard?token={TOKEN}", {}, 200, "app.js"),
    HttpCase("dashboard with header", TOKEN, "/dashboard", BEARER, 200, "app.js"),
    HttpCase("dashboard with wrong token", TOKEN, "/dashboard?token=x", {}, 401),
    HttpCase("static code is public", TOKEN, "/dashboard/static/app.js", {}, 200, "__refstreamRendered"),
    HttpCase("vendored chart library", TOKEN, "/dashboard/static/chart.umd.min.js", {}, 200, "Chart.js v4"),
    HttpCase("bad parameter", TOKEN, "/api/top?by=clicks", BEARER, 400, "not one of gmv"),
    HttpCase("unknown file", "", "/dashboard/static/../../config.py", {}, 404),
]


def http(client: Any, token: str, requests: list[tuple[str, dict[str, str]]],
         sink: Any = None) -> list[tuple[int, dict[str, str], str]]:
    """Run requests against the routes `register` adds to a real Faust app's web server."""
    async def go() -> list[tuple[int, dict[str, str], str]]:
        app = faust.App(f"web-test-{len(token)}", broker="kafka://127.0.0.1:1", web_enabled=True)
        register(app, sink or sink_with(ClickHouseWriter(client)), Settings(api_token=token))
        out = []
        async with TestClient(TestServer(app.web.web_app)) as session:
            for path, headers in requests:
                response = await session.get(path, headers=headers)
                out.append((response.status, dict(response.headers), await response.text()))
        return out

    return asyncio.run(go())


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.name)
def test_http_routes(full: Any, case: HttpCase) -> None:
    [(status, headers, body)] = http(full, case.token, [(case.path, case.headers)])
    assert status == case.status, body
    assert case.check in body
    if case.path.startswith("/api"):
        assert headers["Content-Type"].startswith("application/json")
        assert ("error" in json.loads(body)) is (status != 200)
    if status == 401:
        assert headers["WWW-Authenticate"] == 'Bearer realm="refstream"'


def test_dashboard_page_headers(full: Any) -> None:
    [(status, headers, body)] = http(full, "", [("/dashboard", {})])
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["Referrer-Policy"] == "no-referrer"
    assert "cdn" not in body.lower() and "https://" not in body  # everything is served locally


def test_clickhouse_failure_is_503_and_the_sink_is_opened_once(full: Any) -> None:
    opened: list[int] = []

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("clickhouse is down")

    def open_writer() -> Any:
        opened.append(1)
        return SimpleNamespace(lock=threading.Lock(), client=SimpleNamespace(query=down))

    sink = sink_with(open_writer=open_writer)
    results = http(full, "", [(FUNNEL_PATH, {}), ("/api/top", {})], sink=sink)
    assert [r[0] for r in results] == [503, 503]
    assert "ConnectionError" in results[0][2] and opened == [1]
