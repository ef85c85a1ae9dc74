"""Payouts end to end on the real stack (issue 13: "a refund after `confirm` shows in the next
batch"): a real worker joins clicks, signups and orders into conversions in chdb, a payout run
pays the matured one, finance confirms it; then a refund arrives through the `orders` topic,
the worker reverses the conversion, and the next run claws the paid money back against the
promoter's newer earnings. docs/payouts.md.

chdb admits one process per data directory: the worker is stopped before a payout job or a
read opens ClickHouse (in this process, closed again before the worker restarts).
"""
from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sinks import payouts as store
from sinks.clickhouse import connect, rows_as_dicts
from streams.config import Settings
from streams.jobs import payouts as job
from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration

MIN, H, DAY = 60_000, 3_600_000, 86_400_000
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
PROMOTER, CODE = "p-pay", "T-PAY"
# customer -> (order id, amount); default rules: level 1 = 15 %, +50 on a customer's first paid order
A, B, C = "o-a", "o-b", "o-c"
AMOUNTS = {A: 1000, B: 3000, C: 400}
EARNING = {A: Decimal("200"), B: Decimal("500"), C: Decimal("110")}  # commission + bonus


def day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def customer(i: int, order_id: str, click_ts: int) -> list[tuple[str, dict[str, Any]]]:
    """A click on the promoter's code, a signup 20 minutes later, a paid order an hour after that."""
    return [
        ("clicks", dict(event_id=f"c-{i}", ts=click_ts, tracking_code=CODE, visitor_id=f"v-{i}",
                        ip=f"203.0.113.{i}", user_agent=CHROME)),
        ("signups", dict(event_id=f"s-{i}", ts=click_ts + 20 * MIN, account_id=f"acc-{i}", visitor_id=f"v-{i}",
                         ip=f"198.18.0.{i}")),
        ("orders", dict(event_id=f"e-{order_id}", ts=click_ts + 80 * MIN, order_id=order_id, account_id=f"acc-{i}",
                        product="db-pro", amount=AMOUNTS[order_id], currency="USD", status="paid")),
    ]


def encode(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, None, event(**fields)) for topic, fields in items]


def read(settings: Settings, fn: Callable[[Any], Any]) -> Any:
    """`fn(client)` on the pipeline's ClickHouse, opened in this process and closed again (workers stopped)."""
    client = connect(settings.clickhouse)
    try:
        return fn(client)
    finally:
        client.close()


def sql(query: str) -> Callable[[Any], list[dict[str, Any]]]:
    return lambda client: rows_as_dicts(client.query(query))


def conversions(settings: Settings) -> dict[str, dict[str, Any]]:
    rows = read(settings, sql(
        "SELECT order_id, revision, status, reasons, order_status, promoter_id, commission, bonus,"
        " toUnixTimestamp64Milli(order_ts) AS order_ms, toUnixTimestamp64Milli(payable_at) AS payable_ms"
        " FROM conversions_current"))
    return {r["order_id"]: r for r in rows}


def lines(settings: Settings, batch_id: str) -> list[tuple[str, str, str, Decimal]]:
    return sorted((r["promoter_id"], r["order_id"], r["kind"], r["amount"])
                  for r in read(settings, lambda c: store.batch_lines(c, batch_id)))


def batches(settings: Settings) -> dict[str, tuple[str, int, int]]:
    """batch id -> (status, lines, promoters), from the batch rows (latest version)."""
    return {b["batch_id"]: (b["status"], int(b["lines"]), int(b["promoters"])) for b in read(settings, store.batches)}


def payouts(settings: Settings, batch_id: str) -> list[tuple[str, str, Decimal]]:
    return [(p["promoter_id"], p["currency"], p["amount"])
            for p in read(settings, lambda c: store.batch_payouts(c, batch_id))]


def balance(settings: Settings) -> dict[str, Any]:
    rows = read(settings, sql("SELECT * FROM promoter_balances WHERE promoter_id = 'p-pay'"))
    assert len(rows) == 1, f"promoter_balances must have one row for {PROMOTER} (USD): {rows}"
    row = rows[0]
    return {k: row[k] for k in ("currency", "earned", "pending", "held", "paid", "in_payment", "clawed_back",
                                "balance")}


def run(settings: Settings, through: date, csv_path: Path) -> tuple[job.RunResult, str]:
    out = io.StringIO()
    result = job.run(settings, through, wait_s=30, csv_path=csv_path, actor="test", out=out)
    return result, out.getvalue()


def reversed_rows(p: Pipeline) -> list[str]:
    """Orders the worker's review API lists as reversed (reads conversions_current)."""
    body = p.get("/api/reviews?status=reversed") or {}
    return [r["order_id"] for r in body.get("rows", [])]


def test_a_refund_after_confirm_is_clawed_back_in_the_next_batch(stack: Any, topic_prefix: str,
                                                                  tmp_path: Path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=1, allowed_lateness_s=3600)
    settings = Settings.from_env(p.env)
    now = int(time.time() * 1000)
    t0 = (now - 60 * DAY) // DAY * DAY + H  # 01:00 UTC, 60 days ago
    traffic = (customer(1, A, t0)  # paid at t0 + 80 min: payable 30 days later
               + customer(2, B, t0 + 10 * DAY)  # payable at t0 + 40 days
               + customer(3, C, now - DAY))  # yesterday: moves event time to about now, still maturing
    traffic.sort(key=lambda item: item[1]["ts"])  # each topic in event-time order: nothing is late
    first_through = day_of(t0 + 31 * DAY)  # A matured, B not
    today = day_of(now)
    first_batch, second_batch = f"PO-{first_through:%Y%m%d}-01", f"PO-{today:%Y%m%d}-01"

    # --- phase 1: three conversions, a run that pays only A, confirmed ---------------------
    p.start_worker()
    try:
        p.produce(encode([("promoters", dict(event_id="p-1", ts=t0 - 200 * H, promoter_id=PROMOTER,
                                             tracking_code=CODE))]))
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 1, 60, "the promoter loaded")
        p.produce(encode(traffic))
        counts = p.wait_counts({"conversions_current": 3, "orders": 3}, timeout=120)
    finally:
        p.stop_workers()
    assert (counts["late_events"], counts["dead_letters"]) == (0, 0), f"nothing may be late or refused: {counts}"

    conv = conversions(settings)
    assert {o: (r["status"], r["promoter_id"], r["commission"] + r["bonus"]) for o, r in conv.items()} == {
        o: ("approved", PROMOTER, EARNING[o]) for o in (A, B, C)}, f"the join's decisions: {conv}"
    assert {o: r["payable_ms"] - r["order_ms"] for o, r in conv.items()} == {o: 30 * DAY for o in (A, B, C)}, (
        f"payable_at must be the order's time + 30 holding days: {conv}")
    a_revision = conv[A]["revision"]
    assert read(settings, sql("SELECT count() AS n FROM payout_batches"))[0]["n"] == 0, "no batch before a run"

    first, printed = run(settings, first_through, tmp_path / "first.csv")
    assert first.batch_id == first_batch, printed
    assert first.cutoff_ms == int(datetime(first_through.year, first_through.month, first_through.day,
                                           tzinfo=UTC).timestamp() * 1000) + DAY - 1, (
        "the first run's cut-off is the end of its --through day (event time is weeks later)")
    assert lines(settings, first_batch) == [(PROMOTER, A, "commission", Decimal("200"))], (
        "the first batch pays A (150 + 50 new-customer bonus) and nothing of B (still in its holding period)")
    assert payouts(settings, first_batch) == [(PROMOTER, "USD", Decimal("200.00"))]
    assert "promoters paid 1, lines 1" in printed, printed
    with (tmp_path / "first.csv").open() as f:
        assert [(r["batch_id"], r["promoter_id"], r["amount"]) for r in csv.DictReader(f)] == [
            (first_batch, PROMOTER, "200.00")]
    # event time "now" is yesterday: B matured (earned) for the view, C is still maturing
    assert balance(settings) == {"currency": "USD", "earned": EARNING[A] + EARNING[B], "pending": EARNING[C],
                                 "held": 0, "paid": 0, "in_payment": EARNING[A], "clawed_back": 0,
                                 "balance": EARNING[B]}  # the batch is pending: in payment, not paid

    confirm_out = io.StringIO()
    job.confirm(settings, first_batch, actor="finance", out=confirm_out)
    assert f"batch {first_batch} is paid" in confirm_out.getvalue()
    assert batches(settings) == {first_batch: ("paid", 1, 1)}

    # --- phase 2: A is refunded (after payment); the worker reverses it -------------------
    refund_ts = now - H
    refund = ("orders", dict(event_id="e-o-a-refund", ts=refund_ts, order_id=A, account_id="acc-1",
                             product="db-pro", amount=AMOUNTS[A], currency="USD", status="refunded"))
    p.start_worker()
    try:
        p.produce(encode([refund]))
        p.wait(lambda: reversed_rows(p) == [A], 120, "the refund reversing A in conversions_current")
        counts = p.wait_counts({"conversions_current": 3, "orders": 4}, timeout=60)
    finally:
        p.stop_workers()
    assert (counts["late_events"], counts["dead_letters"]) == (0, 0), (
        f"the refund of a known order is applied, never late: {counts}")

    conv = conversions(settings)
    a = conv[A]
    assert (a["status"], a["order_status"], a["commission"], a["bonus"]) == ("reversed", "refunded", 0, 0), a
    assert "refunded" in a["reasons"] and a["revision"] > a_revision, a
    assert {o: conv[o]["status"] for o in (B, C)} == {B: "approved", C: "approved"}

    second, printed = run(settings, today, tmp_path / "second.csv")
    assert second.batch_id == second_batch, printed
    assert second.cutoff_ms == refund_ts - H, "cut-off: event time now (the refund, the newest order) - lateness"
    assert lines(settings, second_batch) == [
        (PROMOTER, A, "clawback", Decimal("-200")),  # paid in the first batch, refunded since
        (PROMOTER, B, "commission", Decimal("500")),  # matured since the first run
    ], "the next batch claws A back and pays B; C is still in its holding period"
    assert payouts(settings, second_batch) == [(PROMOTER, "USD", Decimal("300.00"))], "500 - 200 clawed back"
    assert "promoters paid 1, lines 2" in printed and "clawed_back" in printed, printed
    with (tmp_path / "second.csv").open() as f:
        assert [(r["batch_id"], r["promoter_id"], r["amount"]) for r in csv.DictReader(f)] == [
            (second_batch, PROMOTER, "300.00")]

    # the paid batch is history: unchanged and still paid
    assert lines(settings, first_batch) == [(PROMOTER, A, "commission", Decimal("200"))]
    assert payouts(settings, first_batch) == [(PROMOTER, "USD", Decimal("200.00"))]
    assert batches(settings) == {first_batch: ("paid", 1, 1), second_batch: ("pending", 2, 1)}

    # A nets to 0 (paid 200, clawed back 200 in the pending batch with B's 500): nothing owed
    # beyond what is in payment; C is still pending
    assert balance(settings) == {"currency": "USD", "earned": EARNING[B], "pending": EARNING[C], "held": 0,
                                 "paid": EARNING[A], "in_payment": EARNING[B] - EARNING[A],
                                 "clawed_back": EARNING[A], "balance": 0}

    # the same run again finds nothing new and writes nothing
    table_rows = "SELECT (SELECT count() FROM payout_lines) AS l, (SELECT count() FROM payouts) AS p," \
                 " (SELECT count() FROM payout_batches) AS b"
    before = read(settings, sql(table_rows))
    again, printed = run(settings, today, tmp_path / "again.csv")
    assert again.batch_id is None and "nothing to pay" in printed, printed
    assert read(settings, sql(table_rows)) == before, "a re-run must not write a single row"
    assert not (tmp_path / "again.csv").exists(), "a run with nothing to pay writes no CSV"
    assert batches(settings) == {first_batch: ("paid", 1, 1), second_batch: ("pending", 2, 1)}
