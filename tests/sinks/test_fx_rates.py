"""Multi-currency in ClickHouse: the `fx_rates` reference table and its view, migration 7
(conversions in the program currency), and money grouped by `program_currency` in balances,
statements and the payout runs' input. On a real chdb, like tests/sinks/test_sinks.py."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from schemas.events import FxRate
from schemas.records import Conversion, OrderRec
from schemas.validate import Invalid
from sinks import payouts as store
from sinks import queries
from sinks.clickhouse import ClickHouseWriter
from sinks.migrations import MIGRATIONS, install_views, migrate
from sinks.rows import rows_for
from sinks.tables import TABLES, VIEWS
from streams.logic.privacy import Pseudonyms
from streams.logic.reference import ReferenceReader
from streams.logic.rules.ruleset import RuleBook
from streams.logic.rules.views import rule_views
from tests.logic.rules.test_reviews import DAY, T0, conv
from tests.sinks import write_records

FAR = 4_102_444_800_000  # 2100-01-01: an effective_from not reached yet


def fx(eid: str, currency: str, rate: str, ts: int = T0, effective_from: int | None = None) -> FxRate:
    return FxRate(event_id=eid, ts=ts, currency=currency, rate=Decimal(rate), effective_from=effective_from)


def in_usd(c: Conversion, currency: str, amount: str, rate: str) -> Conversion:
    """`c` as the promoter stage prices an order of `amount` `currency` in a USD program."""
    return msgspec.structs.replace(c, currency=currency, amount=Decimal(amount), program_currency="USD",
                                   program_amount=(Decimal(amount) * Decimal(rate)).quantize(Decimal("0.0001")),
                                   fx_rate=Decimal(rate))


# --- the fx_rates table and view -----------------------------------------------------------------


def test_fx_rates_are_stored_once_and_the_current_view_has_the_rate_in_force(db: Any) -> None:
    rates = [fx("e1", "EUR", "1.08"), fx("e2", "EUR", "1.10", T0 + DAY), fx("e1", "EUR", "1.08"),  # redelivered
             fx("e3", "EUR", "1.30", T0 + 2 * DAY, effective_from=FAR),  # announced, not in force yet
             fx("j1", "JPY", "0.006900000001", T0, effective_from=T0 - DAY)]
    writer = ClickHouseWriter(db)
    write_records(writer, rates)
    write_records(writer, rates[:2])  # a redelivered batch adds no rows
    stored = db.query("SELECT toString(currency), rate, toUnixTimestamp64Milli(effective_from), event_id"
                      " FROM fx_rates FINAL ORDER BY currency, effective_from").result_rows
    assert [tuple(r) for r in stored] == [
        ("EUR", Decimal("1.08"), T0, "e1"), ("EUR", Decimal("1.10"), T0 + DAY, "e2"),
        ("EUR", Decimal("1.30"), FAR, "e3"), ("JPY", Decimal("0.006900000001"), T0 - DAY, "j1")]
    current = db.query("SELECT toString(currency), rate FROM fx_rates_current ORDER BY currency").result_rows
    assert [tuple(r) for r in current] == [("EUR", Decimal("1.10")), ("JPY", Decimal("0.006900000001"))]


@dataclass
class ReadCase:
    name: str
    value: bytes | None
    expect: type | None


READS = [
    ReadCase("a rate", b'{"event_id":"e1","ts":1767225600000,"currency":"EUR","rate":"1.08"}', FxRate),
    ReadCase("a tombstone of the compacted topic", None, None),
    ReadCase("a bad rate is dead-lettered", b'{"event_id":"e1","ts":1767225600000,"currency":"EUR","rate":0}',
             Invalid),
]


@pytest.mark.parametrize("case", READS, ids=lambda c: c.name)
def test_the_reference_reader_reads_fx_rates(case: ReadCase) -> None:
    reader = ReferenceReader(Pseudonyms(b"salt", ()), 3_600_000, 65_536)
    got = reader.read("fx_rates", case.value, T0 + DAY)
    assert got is None if case.expect is None else isinstance(got, case.expect)


# --- conversions: the program currency columns (migration 7) -------------------------------------


def test_conversion_rows_carry_the_program_currency() -> None:
    columns = TABLES["conversions"].insert_columns
    assert columns[-6:] == ("program_currency", "program_amount", "fx_rate", "attributed_by", "coupon_code",
                            "override_of")
    priced = msgspec.structs.replace(in_usd(conv("o1"), "EUR", "100", "1.08"), attributed_by="coupon",
                                     coupon_code="KOL10")
    unpriced = conv("o2")  # no program currency (e.g. no promoter): in its order's currency
    rows = rows_for([priced, unpriced])["conversions"]
    assert [row[-6:] for row in rows] == [
        ("USD", Decimal("108.0000"), Decimal("1.08"), "coupon", "KOL10", ""),
        ("USD", Decimal(1000), Decimal(1), "click", "", ""),
    ]


def test_migration_7_prices_older_rows_in_their_order_currency(empty_db: Any) -> None:
    """A database of migrations 1-6 (conversions without the new columns, no fx_rates) gets
    them; an older row reads as priced in its order's currency at rate 1, attributed by click."""
    client = empty_db
    migrate(client, [m for m in MIGRATIONS if m.version <= 6])
    new = ("program_currency", "program_amount", "fx_rate", "attributed_by", "coupon_code", "override_of")
    for name in new:
        client.command(f"ALTER TABLE conversions DROP COLUMN {name}")  # as version 1 created it before
    client.command("DROP TABLE fx_rates")
    client.command("CREATE OR REPLACE VIEW conversions_current AS " + VIEWS["conversions_current"])
    old = [c for c in TABLES["conversions"].insert_columns if c not in new]
    eur = msgspec.structs.replace(conv("old"), currency="EUR")
    row = dict(zip(TABLES["conversions"].insert_columns, rows_for([eur])["conversions"][0]))
    client.insert("conversions", [tuple(row[c] for c in old)], column_names=old)
    assert migrate(client) == [7, 8]
    assert migrate(client) == []
    write_records(ClickHouseWriter(client), [in_usd(conv("new"), "JPY", "15000", "0.0069"), fx("e1", "EUR", "1.1")])
    got = [(r["order_id"], r["program_currency"], r["program_amount"], r["fx_rate"], r["attributed_by"])
           for r in queries.conversions_for(client)]
    assert got == [("new", "USD", Decimal("103.5"), Decimal("0.0069"), "click"),
                   ("old", "EUR", Decimal(1000), Decimal(1), "click")]


# --- money grouped by the program currency ---------------------------------------------------------

NOW = T0 + 75 * DAY
EARN = Decimal("200.25")  # commission + bonus of every payable `conv`, in the program currency


@pytest.fixture
def ledger(db: Any) -> Any:
    """P1's orders in three currencies, all priced in a USD program; one USD line paid."""
    conversions = [in_usd(conv("eur"), "EUR", "1000", "1.08"),
                   in_usd(conv("jpy", order_ts=T0 + DAY), "JPY", "150000", "0.0069"),
                   in_usd(conv("usd", order_ts=T0 + 2 * DAY), "USD", "1000", "1")]
    for table, rows in rows_for([*conversions, OrderRec("e-now", NOW, "x", "a", "pro", Decimal(1), "USD", "paid")]
                                ).items():
        db.insert(table, rows, column_names=TABLES[table].insert_columns)
    store.write_lines(db, "B1", "a1", [dict(promoter_id="P1", currency="USD", order_id="eur", revision=1,
                                            kind="commission", part=1, parts=1, amount=EARN, points=0,
                                            payable_at=T0 + 30 * DAY, order_ts=T0)])
    store.write_batch(db, dict(batch_id="B1", attempt="a1", through=T0 + 40 * DAY, cutoff=T0 + 40 * DAY,
                               status="paid", version=1, created_at=T0 + 40 * DAY, updated_at=T0 + 40 * DAY,
                               actor="finance", note="", promoters=1, lines=1))
    install_views(db, rule_views(RuleBook([], currency="USD")))
    return db


def test_balances_and_statements_are_in_the_program_currency(ledger: Any) -> None:
    [b] = queries.balances(ledger)
    assert (b["promoter_id"], b["currency"], b["earned"], b["paid"], b["balance"]) == (
        "P1", "USD", 3 * EARN, EARN, 2 * EARN)
    [s] = queries.statement_v2(ledger, "P1", "2026-02")  # all three matured in January / February
    assert (s["currency"], s["closing"]) == ("USD", 2 * EARN)
    lines, orders = queries.statement(ledger, "P1", "2026-01")
    assert [(ln["status"], ln["currency"], ln["orders"], ln["amount"]) for ln in lines] == [
        ("approved", "USD", 3, Decimal("1080") + Decimal("1035") + Decimal("1000"))]
    assert {o["order_id"]: (o["currency"], o["program_currency"], o["fx_rate"]) for o in orders} == {
        "eur": ("EUR", "USD", Decimal("1.08")), "jpy": ("JPY", "USD", Decimal("0.0069")),
        "usd": ("USD", "USD", Decimal(1))}


def test_payout_runs_pay_in_the_program_currency(ledger: Any) -> None:
    got = {e["order_id"]: e["currency"] for e in store.entitlements(ledger, NOW)}
    assert got == {"eur": "USD", "jpy": "USD", "usd": "USD"}
