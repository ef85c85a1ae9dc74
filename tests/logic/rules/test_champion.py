"""Sales champions, both ways on the same cases: `champions` in Python and the view SQL
(`champions_sql`) on a real chdb over `conversions_current`."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from schemas.records import Conversion
from sinks.clickhouse import ClickHouseWriter
from streams.logic.rules.champion import Champion, Sale, champions, champions_sql, month_closed
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.sinks import write_records

D = Decimal
DAY = 86_400_000
JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FEB = 1_769_904_000_000  # 2026-02-01T00:00:00Z
MAR = 1_772_323_200_000  # 2026-03-01T00:00:00Z
BONUSES = (D(1000), D(500))


def book(*sets: RuleSet, zone: str = "UTC") -> RuleBook:
    return RuleBook(list(sets) or [RuleSet(champion_bonuses=BONUSES)], zone)


@dataclass
class Case:
    name: str
    sales: list[tuple[str, int, str]]  # promoter, order ts, amount (USD, approved)
    now: int
    want: list[tuple[int, int, str, str, str]]  # month, rank, promoter, sales, bonus
    book: RuleBook = field(default_factory=book)
    other: list[tuple[str, int, str, str]] = field(default_factory=list)  # promoter, ts, amount, status


CASES = [
    Case("top two of a closed month", [("P1", JAN + DAY, "300"), ("P2", JAN + 2 * DAY, "500"),
                                       ("P3", JAN + 3 * DAY, "100"), ("P1", JAN + 4 * DAY, "250")],
         FEB + 7 * DAY, [(202601, 1, "P1", "550", "1000"), (202601, 2, "P2", "500", "500")]),
    Case("not before the month closed (7 days after its end)", [("P1", JAN + DAY, "300")], FEB + 7 * DAY - 1, []),
    Case("ties rank by promoter id", [("P2", JAN + DAY, "300"), ("P1", JAN + 2 * DAY, "300")], FEB + 7 * DAY,
         [(202601, 1, "P1", "300", "1000"), (202601, 2, "P2", "300", "500")]),
    Case("only approved sales count", [("P1", JAN + DAY, "100")], FEB + 7 * DAY,
         [(202601, 1, "P1", "100", "1000")], other=[("P2", JAN + DAY, "900", "held"),
                                                    ("P3", JAN + DAY, "900", "reversed")]),
    Case("each month apart", [("P1", JAN + DAY, "100"), ("P2", FEB + DAY, "200")], MAR + 7 * DAY,
         [(202601, 1, "P1", "100", "1000"), (202602, 1, "P2", "200", "1000")]),
    Case("Shanghai: Jan 31 20:00 UTC is February", [("P1", FEB - 4 * 3_600_000, "100")], MAR + 7 * DAY,
         [(202602, 1, "P1", "100", "1000")],
         book=book(RuleSet(champion_bonuses=BONUSES), zone="Asia/Shanghai")),
    Case("the version in force at the month's end", [("P1", JAN + DAY, "100"), ("P2", FEB + DAY, "100")],
         MAR + 7 * DAY, [(202601, 1, "P1", "100", "1000"), (202602, 1, "P2", "100", "7")],
         book=book(RuleSet(version="a", champion_bonuses=BONUSES),
                   RuleSet(version="b", effective_from=JAN + 31 * DAY, champion_bonuses=(D(7),)))),
    Case("no bonuses, no champions", [("P1", JAN + DAY, "100")], MAR, [], book=book(RuleSet())),
]


def conversion(i: int, promoter: str, ts: int, amount: str, status: str = "approved") -> Conversion:
    return Conversion(order_id=f"o{i}", revision=1, status=status, reasons=[], promoter_id=promoter,
                      tracking_code="T", campaign="", account_id=f"a{i}", visitor_id="v", click_event_id="c",
                      click_ts=ts, signup_event_id="s", signup_ts=ts, order_event_id=f"e{i}", order_ts=ts,
                      cart_id="", product="pro", category="", amount=D(amount), discount=D(0), currency="USD",
                      order_status="paid", renewal=False, attribution_model="last_click", attribution_final=True,
                      decided_at=0, program_currency="USD", program_amount=D(amount), fx_rate=D(1))


def as_tuples(found: list[Champion]) -> list[tuple[int, int, str, str, str]]:
    return [(c.month, c.rank, c.promoter_id, format(D(c.sales).normalize(), "f"), format(D(c.bonus).normalize(), "f"))
            for c in sorted(found, key=lambda c: (c.month, c.rank))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_champions_python_and_sql_agree(db: Any, case: Case) -> None:
    sales = [Sale(p, ts, "USD", D(a)) for p, ts, a in case.sales]
    assert as_tuples(champions(sales, case.book, case.now)) == case.want
    convs = [conversion(i, p, ts, a) for i, (p, ts, a) in enumerate(case.sales)]
    convs += [conversion(100 + i, p, ts, a, s) for i, (p, ts, a, s) in enumerate(case.other)]
    write_records(ClickHouseWriter(db), convs)
    rows = db.query(champions_sql(case.book, str(case.now))).named_results()
    got = [Champion(r["month"], r["currency"], r["rank"], r["promoter_id"], r["sales"], r["bonus"]) for r in rows]
    assert as_tuples(got) == case.want


def test_month_closed_boundary() -> None:
    b = book()
    assert not month_closed(202601, b, FEB + 7 * DAY - 1)
    assert month_closed(202601, b, FEB + 7 * DAY)


def test_override_lines_are_not_sales(db: Any) -> None:
    line = msgspec.structs.replace(conversion(1, "P9", JAN + DAY, "900"), override_of="P1")
    write_records(ClickHouseWriter(db), [conversion(0, "P1", JAN + DAY, "100"), line])
    rows = db.query(champions_sql(book(), str(MAR))).named_results()
    assert [(r["promoter_id"], r["rank"]) for r in rows] == [("P1", 1)]
