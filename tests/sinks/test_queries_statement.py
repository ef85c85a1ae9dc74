"""Balances and statements v2 (views `promoter_balances`, `promoter_statement` from
`rule_views`, read through `sinks.queries.balances` / `statement_v2`) over hand-built
conversions and payout batches on a real chdb: paid (confirmed batches) and in payment
(pending ones) apart, points lines apart from the balance, event time "now" as payout runs
take it."""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from schemas.records import OrderRec
from sinks import payouts as store
from sinks import queries
from sinks.migrations import install_views
from sinks.rows import rows_for
from sinks.tables import TABLES
from streams.logic.rules.ruleset import RuleBook
from streams.logic.rules.views import rule_views
from tests.logic.rules.test_reviews import DAY, T0, conv

NOW = T0 + 75 * DAY  # 2026-03-17: the newest order, event time "now"
EARN = Decimal("200.25")  # commission + bonus of every payable `conv`
POINTS = 20025

CONVERSIONS = [
    conv("jan-a"),  # payable 2026-01-31: earned in January
    conv("jan-b", order_ts=T0 + 10 * DAY),  # payable 2026-02-10: earned in February
    conv("feb-young", order_ts=T0 + 50 * DAY),  # payable 2026-03-22, after now: pending
    conv("feb-held", "held", ("high_value_review",), order_ts=T0 + 40 * DAY),  # held, ordered in February
    conv("refunded", "reversed", ("refunded",), order_ts=T0 + DAY),  # paid in batch 1, clawed back in batch 2
    conv("bot", "rejected", ("bot_traffic",)),
    conv("reviewed-out", order_ts=T0 + 2 * DAY),  # a manager rejects it below: earns nothing
    conv("eur"),  # another currency (set below)
    conv("p2", promoter="P2"),
]
CONVERSIONS[7].currency = "EUR"


def line(order_id: str, amount: str, kind: str = "commission", currency: str = "USD", points: int = 0) -> dict:
    return dict(promoter_id="P1", currency=currency, order_id=order_id, revision=1, kind=kind, part=1, parts=1,
                amount=Decimal(amount), points=points, payable_at=T0 + 30 * DAY, order_ts=T0)


BATCHES: list[tuple[str, int, str, list[dict]]] = [  # batch, created at, status, lines
    ("B1", T0 + 35 * DAY, "paid", [line("jan-a", "200.25"), line("refunded", "200.25"),
                                   line("", "100", kind="points", points=10_000)]),
    ("B2", T0 + 64 * DAY, "paid", [line("refunded", "-200.25", kind="clawback")]),
    ("B3", T0 + 65 * DAY, "pending", [line("jan-b", "200.25")]),  # in payment: sent, not confirmed yet
    ("B4", T0 + 66 * DAY, "failed", [line("eur", "200.25", currency="EUR")]),  # released: never counted
]


@pytest.fixture
def ledger(db: Any) -> Any:
    for table, rows in rows_for([*CONVERSIONS, OrderRec("e-now", NOW, "x", "a", "pro", Decimal(1), "USD", "paid")]
                                ).items():
        db.insert(table, rows, column_names=TABLES[table].insert_columns)
    db.insert("reviews", [("r1", T0 + 3 * DAY, "reviewed-out", "", "reject", "fraud", "pm")],
              column_names=TABLES["reviews"].insert_columns)
    for batch_id, created, status, lines in BATCHES:
        store.write_lines(db, batch_id, "a1", lines)
        store.write_batch(db, dict(batch_id=batch_id, attempt="a1", through=created, cutoff=created, status=status,
                                   version=1, created_at=created, updated_at=created, actor="finance", note="",
                                   promoters=1, lines=len(lines)))
    install_views(db, rule_views(RuleBook([])))
    return db


D = Decimal


def balance_figures(rows: list[dict]) -> list[tuple]:
    return [(r["promoter_id"], r["currency"], r["earned"], r["pending"], r["held"], r["clawed_back"], r["paid"],
             r["in_payment"], r["balance"], r["points_earned"], r["points_cashed"], r["points_paid"]) for r in rows]


def test_balances(ledger: Any) -> None:
    got = balance_figures(queries.balances(ledger))
    # USD: jan-a and jan-b earned; paid: jan-a and refunded (B1), refunded clawed back (B2);
    # jan-b in payment (B3, pending): nothing left to send. The points line is apart.
    assert got == [
        ("P1", "EUR", EARN, D(0), D(0), D(0), D(0), D(0), EARN, POINTS, 0, D(0)),
        ("P1", "USD", 2 * EARN, EARN, EARN, EARN, EARN, EARN, D(0), 2 * POINTS, 10_000, D(100)),
        ("P2", "USD", EARN, D(0), D(0), D(0), D(0), D(0), EARN, POINTS, 0, D(0)),
    ]
    for r in queries.balances(ledger):
        assert r["balance"] == r["earned"] - r["paid"] - r["in_payment"]
    assert [r["currency"] for r in queries.balances(ledger, "P1")] == ["EUR", "USD"]
    assert queries.balances(ledger, "nobody") == []


#: allowed lateness -> P1's USD (earned, pending, balance): event time "now" is the newest
#: order (NOW = T0 + 75 days) minus the lateness, as payout runs take it; jan-b is payable at
#: T0 + 40 days
LATENESS = [(0, 2 * EARN, EARN, D(0)), (35 * DAY, 2 * EARN, EARN, D(0)),
            (35 * DAY + 1, EARN, 2 * EARN, -EARN)]


@pytest.mark.parametrize(("lateness_ms", "earned", "pending", "balance"), LATENESS,
                         ids=["no lateness", "now exactly at jan-b's payable_at", "a millisecond before"])
def test_balances_use_event_time_now_minus_the_lateness(ledger: Any, lateness_ms: int, earned: Decimal,
                                                        pending: Decimal, balance: Decimal) -> None:
    install_views(ledger, rule_views(RuleBook([]), lateness_ms=lateness_ms))
    [usd] = [r for r in queries.balances(ledger, "P1") if r["currency"] == "USD"]
    assert (usd["earned"], usd["pending"], usd["balance"]) == (earned, pending, balance)
    feb = [r for r in queries.statement_v2(ledger, "P1", "2026-02") if r["currency"] == "USD"]
    assert [r["earned_orders"] for r in feb] == [["jan-b"] if earned == 2 * EARN else []]


def row(currency: str, month: date, opening: Decimal, earned: Decimal, held: Decimal, clawed: Decimal,
        paid: tuple[Decimal, Decimal], closing: Decimal, points: tuple[int, int, Decimal],
        orders: tuple[list[str], list[str], list[str]]) -> tuple:
    """paid: (paid, in payment); points: (earned, cashed, the money of points lines)."""
    return (currency, month, opening, earned, held, clawed, *paid, closing, *points, *orders)


NONE = (D(0), D(0))
STATEMENT_CASES = [
    ("2026-01", [row("EUR", date(2026, 1, 1), D(0), EARN, D(0), D(0), NONE, EARN, (POINTS, 0, D(0)),
                     (["eur"], [], [])),
                 row("USD", date(2026, 1, 1), D(0), EARN, D(0), D(0), NONE, EARN, (POINTS, 0, D(0)),
                     (["jan-a"], [], []))]),
    # February: jan-b matured, feb-held held, batch 1 paid jan-a, refunded and points
    ("2026-02", [row("EUR", date(2026, 2, 1), EARN, D(0), D(0), D(0), NONE, EARN, (0, 0, D(0)), ([], [], [])),
                 row("USD", date(2026, 2, 1), EARN, EARN, EARN, D(0), (2 * EARN, D(0)), D(0),
                     (POINTS, 10_000, D(100)), (["jan-b"], ["feb-held"], []))]),
    # March: batch 2 clawed refunded back (paid), batch 3 pays jan-b (in payment); feb-young is
    # still maturing
    ("2026-03", [row("EUR", date(2026, 3, 1), EARN, D(0), D(0), D(0), NONE, EARN, (0, 0, D(0)), ([], [], [])),
                 row("USD", date(2026, 3, 1), D(0), D(0), D(0), EARN, (-EARN, EARN), D(0), (0, 0, D(0)),
                     ([], [], ["refunded"]))]),
    ("2026-07", [row("EUR", date(2026, 7, 1), EARN, D(0), D(0), D(0), NONE, EARN, (0, 0, D(0)), ([], [], [])),
                 row("USD", date(2026, 7, 1), D(0), D(0), D(0), D(0), NONE, D(0), (0, 0, D(0)), ([], [], []))]),
    ("2025-12", []),
]


@pytest.mark.parametrize(("month", "expected"), STATEMENT_CASES, ids=[c[0] for c in STATEMENT_CASES])
def test_statement_v2(ledger: Any, month: str, expected: list[tuple]) -> None:
    rows = queries.statement_v2(ledger, "P1", month)
    got = [(r["currency"], r["month"], r["opening"], r["earned"], r["held"], r["clawed_back"], r["paid"],
            r["in_payment"], r["closing"], r["points_earned"], r["points_cashed"], r["points_paid"],
            r["earned_orders"], r["held_orders"], r["clawed_back_orders"]) for r in rows]
    assert got == expected
    for r in rows:
        assert r["closing"] == r["opening"] + r["earned"] - r["paid"] - r["in_payment"]


def test_the_statement_reconciles_with_the_balance(ledger: Any) -> None:
    """The latest month's closing is the balance; the months' paid, in payment and points paid
    add up to the balance's (a month's batches move from in payment to paid when confirmed)."""
    months = [queries.statement_v2(ledger, "P1", m) for m in ("2026-01", "2026-02", "2026-03")]
    for b in queries.balances(ledger, "P1"):
        rows = [r for month in months for r in month if r["currency"] == b["currency"]]
        assert rows[-1]["closing"] == b["balance"]
        for figure in ("earned", "paid", "in_payment", "points_paid", "clawed_back"):
            assert sum((r[figure] for r in rows), D(0)) == b[figure], figure


def test_the_old_statement_still_reads_per_status(ledger: Any) -> None:
    lines, orders = queries.statement(ledger, "P1", "2026-02")
    assert [(r["status"], r["orders"], r["order_ids"]) for r in lines] == [
        ("approved", 1, ["feb-young"]), ("held", 1, ["feb-held"])]
    assert [o["order_id"] for o in orders] == ["feb-held", "feb-young"]


def test_review_audit_reads_one_order(ledger: Any) -> None:
    [r] = queries.review_audit(ledger, order_id="reviewed-out")
    assert (r["event_id"], r["ts"], r["status_before"], r["status_after"], r["commission_after"]) == (
        "r1", T0 + 3 * DAY, "approved", "rejected", D(0))
    assert queries.review_audit(ledger, promoter="P2") == []
