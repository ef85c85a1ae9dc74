"""Payout batches in ClickHouse (sinks/payouts.py) on a real chdb engine: what a run writes is
what the next run reads as booked, and only the attempt a batch row names is ever read."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from schemas.records import Conversion, OrderRec
from schemas.units import DAY_MS
from sinks import payouts as store
from sinks.migrations import install_views
from sinks.rows import rows_for
from sinks.tables import TABLES
from streams.logic.payouts.plan import Line, Payout
from streams.logic.rules.ruleset import RuleBook, RuleSet
from streams.logic.rules.views import rule_views
from tests.sinks import T0

FEB = 1_769_904_000_000  # 2026-02-01T00:00:00Z


def line(order_id: str, amount: str, promoter: str = "P1", kind: str = "commission", **kw: Any) -> Line:
    base: dict[str, Any] = dict(promoter_id=promoter, currency="USD", order_id=order_id, revision=1, kind=kind,
                                part=1, parts=1, amount=Decimal(amount), points=0, payable_at=T0 + 30 * DAY_MS,
                                order_ts=T0)
    base.update(kw)
    return Line(**base)


def payout(promoter: str = "P1", amount: str = "150.00", **kw: Any) -> Payout:
    base: dict[str, Any] = dict(promoter_id=promoter, currency="USD", lines_total=Decimal(amount),
                                carried_in=Decimal(0), amount=Decimal(amount), carried_out=Decimal(0),
                                points_cashed=0, lines=1)
    base.update(kw)
    return Payout(**base)


def batch_row(batch_id: str, attempt: str, status: str = "pending", version: int = 1, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(batch_id=batch_id, attempt=attempt, through=T0, cutoff=T0 + DAY_MS, status=status,
                                version=version, created_at=T0 + 5, updated_at=T0 + 5 + version, actor="finance",
                                note="", promoters=1, lines=1)
    base.update(kw)
    return base


def write(client: Any, batch_id: str, attempt: str, lines: list[Line], payouts: list[Payout]) -> None:
    store.write_lines(client, batch_id, attempt, [msgspec.structs.asdict(ln) for ln in lines])
    store.write_payouts(client, batch_id, attempt, [msgspec.structs.asdict(p) for p in payouts])


def insert(client: Any, records: list[Any]) -> None:
    for table, rows in rows_for(records).items():
        client.insert(table, rows, column_names=TABLES[table].insert_columns)


def as_lines(rows: list[dict[str, Any]]) -> list[Line]:
    return [msgspec.convert(r, Line) for r in rows]


def test_lines_and_payouts_round_trip(db: Any) -> None:
    lines = [line("o1", "100.1234"), line("o2", "-20.5000", kind="clawback", revision=3),
             line("", "7", kind="points", points=700), line("o3", "33.3333", part=1, parts=3)]
    payouts = [payout(amount="120.00", lines_total=Decimal("120.0067"), carried_out=Decimal("0.0067"),
                      points_cashed=700, lines=4)]
    write(db, "PO-20260131-01", "a1", lines, payouts)
    store.write_batch(db, batch_row("PO-20260131-01", "a1", lines=4))

    assert sorted(as_lines(store.booked_lines(db)), key=lambda ln: ln.order_id) == sorted(lines, key=lambda ln: ln.order_id)
    assert [msgspec.convert(p, Payout) for p in store.booked_payouts(db)] == payouts
    assert {r["batch_id"] for r in store.batch_lines(db, "PO-20260131-01")} == {"PO-20260131-01"}
    assert store.batch(db, "PO-20260131-01") == batch_row("PO-20260131-01", "a1", lines=4)
    [total] = store.batch_totals(db)
    assert (total["currency"], total["promoters"], total["amount"], total["points_cashed"]) == ("USD", 1, Decimal("120"), 700)


def test_only_the_attempt_a_batch_row_names_is_read(db: Any) -> None:
    # a run killed after its lines (attempt a1, no batch row), then the re-run (a2) committed
    write(db, "PO-20260131-01", "a1", [line("o1", "100"), line("o2", "50")], [payout(amount="150")])
    assert store.booked_lines(db) == [] and store.booked_payouts(db) == [] and store.batches(db) == []
    assert store.last_batch_number(db, "PO-20260131-") == 0
    assert store.line_attempts(db, "PO-20260131-01") == ["a1"]
    write(db, "PO-20260131-01", "a2", [line("o1", "100")], [payout(amount="100")])
    store.write_batch(db, batch_row("PO-20260131-01", "a2"))
    assert as_lines(store.booked_lines(db)) == [line("o1", "100")]
    assert [(r["batch_id"], r["batch_status"]) for r in store.booked_lines(db)] == [("PO-20260131-01", "pending")]
    assert store.line_attempts(db, "PO-20260131-01") == ["a1", "a2"]  # the orphan too
    assert [p["amount"] for p in store.booked_payouts(db)] == [Decimal("100")]
    assert [r["order_id"] for r in store.batch_lines(db, "PO-20260131-01")] == ["o1"]
    assert [r["amount"] for r in store.batch_payouts(db, "PO-20260131-01")] == [Decimal("100")]


# (batch rows (status, version) in insertion order, the batch's status, its lines booked?)
STATUS_CASES = [
    ([("pending", 1)], "pending", True),
    ([("pending", 1), ("paid", 2)], "paid", True),
    ([("pending", 1), ("failed", 2)], "failed", False),
    ([("failed", 2), ("pending", 1)], "failed", False),  # the version decides, not the insertion order
]


@pytest.mark.parametrize("rows,status,booked", STATUS_CASES, ids=["-".join(s for s, _ in c[0]) for c in STATUS_CASES])
def test_the_latest_batch_row_decides_what_is_booked(db: Any, rows: list[tuple[str, int]], status: str,
                                                     booked: bool) -> None:
    write(db, "PO-20260131-01", "a1", [line("o1", "100")], [payout(amount="100")])
    for s, v in rows:
        store.write_batch(db, batch_row("PO-20260131-01", "a1", status=s, version=v))
    assert store.batch(db, "PO-20260131-01")["status"] == status
    assert len(store.booked_lines(db)) == int(booked)
    assert len(store.booked_payouts(db)) == int(booked)
    assert [b["batch_id"] for b in store.batches(db)] == ["PO-20260131-01"]


def test_the_last_batch_number_of_a_day_is_the_highest_suffix(db: Any) -> None:
    # -01 and -03 (-02 was never committed, or its row is gone): the next is -04, not count + 1 = -03
    for batch_id, version in [("PO-20260131-01", 1), ("PO-20260131-01", 2), ("PO-20260131-03", 1),
                              ("PO-20260130-01", 1), ("PO-20260131-x", 1)]:
        store.write_batch(db, batch_row(batch_id, "a", version=version))
    assert store.last_batch_number(db, "PO-20260131-") == 3
    assert store.last_batch_number(db, "PO-20260130-") == 1
    assert store.last_batch_number(db, "PO-20260201-") == 0
    assert store.batch(db, "PO-20260229-01") is None and store.batch(db, "") is None


def test_batch_attempts_are_every_batch_row(db: Any) -> None:
    # two runs committed one id (attempts a1, a2): the view shows the latest, the rows both
    store.write_batch(db, batch_row("PO-20260131-01", "a1", version=1))
    store.write_batch(db, batch_row("PO-20260131-01", "a2", version=2))
    store.write_batch(db, batch_row("PO-20260131-02", "b", version=1))
    rows = store.batch_attempts(db, "PO-20260131-01")
    assert [(r["attempt"], r["version"]) for r in rows] == [("a1", 1), ("a2", 2)]
    assert rows[0] == batch_row("PO-20260131-01", "a1", version=1)
    assert len(store.batch_attempts(db)) == 3
    assert store.batch(db, "PO-20260131-01")["attempt"] == "a2"


def test_event_now_is_the_newest_order(db: Any) -> None:
    assert store.event_now(db) is None
    insert(db, [OrderRec(event_id=f"e{i}", ts=ts, order_id=f"o{i}", account_id="a1", product="pro",
                         amount=Decimal("10"), currency="USD", status="paid")
                for i, ts in enumerate([T0 + 5, T0 + 9_000, T0 + 7])])
    assert store.event_now(db) == T0 + 9_000


def conversion(order_id: str, status: str = "approved", promoter: str = "P1", order_ts: int = T0,
               **kw: Any) -> Conversion:
    base: dict[str, Any] = dict(
        order_id=order_id, revision=1, status=status, reasons=[], promoter_id=promoter,
        tracking_code="T1" if promoter else "", campaign="", account_id="a-" + order_id, visitor_id="v",
        click_event_id="c", click_ts=order_ts - 1000, signup_event_id="s", signup_ts=order_ts - 500,
        order_event_id="oe-" + order_id, order_ts=order_ts, cart_id="", product="pro", category="saas",
        amount=Decimal("1000"), discount=Decimal(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=order_ts, commission=Decimal("150"),
        bonus=Decimal("50"), points=200, rule_version="default")
    base.update(kw)
    return Conversion(**base)


def test_entitlements_are_the_rows_that_can_move_money(db: Any) -> None:
    install_views(db, rule_views(RuleBook([])))  # payable_at = order_ts + 30 days by default
    cutoff = T0 + 40 * DAY_MS
    convs = [
        conversion("matured"),  # payable at T0 + 30 d
        conversion("young", order_ts=T0 + 20 * DAY_MS),  # payable at T0 + 50 d
        conversion("held", status="held"),
        conversion("reversed-booked", status="reversed", commission=Decimal(0), bonus=Decimal(0)),
        conversion("reversed-unbooked", status="reversed", commission=Decimal(0), bonus=Decimal(0)),
        conversion("organic", promoter=""),
    ]
    insert(db, convs)
    write(db, "PO-20260131-01", "a1", [line("reversed-booked", "200")], [payout(amount="200")])
    store.write_batch(db, batch_row("PO-20260131-01", "a1"))

    rows = {r["order_id"]: r for r in store.entitlements(db, cutoff)}
    assert sorted(rows) == ["matured", "reversed-booked"]
    m = rows["matured"]
    assert (m["payable_at"], m["commission"], m["bonus"], m["points"], m["status"], m["revision"]) == (
        T0 + 30 * DAY_MS, Decimal("150"), Decimal("50"), 200, "approved", 1)
    assert set(m) == set(store.ENTITLEMENT_COLUMNS)


def test_a_sales_champions_bonus_is_an_entitlement_once_decided(db: Any) -> None:
    """The month's top promoter by approved sales earns `champion_bonuses[0]` once the month
    closed (its end + month_close_days), as a line of its own (docs/rules.md)."""
    book = RuleBook([RuleSet(champion_bonuses=(Decimal(300),))])
    install_views(db, rule_views(book))
    insert(db, [conversion("big", program_currency="USD", program_amount=Decimal(5000), fx_rate=Decimal(1)),
                conversion("small", promoter="P2", program_currency="USD", program_amount=Decimal(10),
                           fx_rate=Decimal(1))])
    decided = FEB + 7 * DAY_MS  # January (T0's month) closes 7 days after its end

    def event_now(ts: int) -> None:  # the views' event time "now": the newest stored order
        insert(db, [OrderRec(event_id=f"now{ts}", ts=ts, order_id=f"now{ts}", account_id="x", product="pro",
                             amount=Decimal("1"), currency="USD", status="paid")])
    event_now(decided - 1)
    assert not [r for r in store.entitlements(db, decided - 1) if r["order_id"].startswith("champion:")]
    event_now(decided)
    rows = [r for r in store.entitlements(db, decided) if r["order_id"].startswith("champion:")]
    assert [(r["order_id"], r["promoter_id"], r["bonus"], r["payable_at"]) for r in rows] == [
        ("champion:202601:USD:P1", "P1", Decimal(300), decided)]


def test_a_champion_line_reranked_away_is_taken_back(db: Any) -> None:
    """A bonus booked for P1 whose month no longer ranks him (a refund after the close):
    its entitlement is reversed with nothing owed, so the next run claws it back."""
    install_views(db, rule_views(RuleBook([RuleSet(champion_bonuses=(Decimal(300),))])))
    write(db, "PO-20260210-01", "a1", [line("champion:202601:USD:P1", "300")], [payout(amount="300")])
    store.write_batch(db, batch_row("PO-20260210-01", "a1"))
    rows = [r for r in store.entitlements(db, FEB + 30 * DAY_MS) if r["order_id"].startswith("champion:")]
    assert [(r["order_id"], r["promoter_id"], r["status"], r["bonus"]) for r in rows] == [
        ("champion:202601:USD:P1", "P1", "reversed", Decimal(0))]
