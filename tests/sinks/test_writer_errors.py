"""The writer tells data errors from outages (real chdb, no mocks for ClickHouse).

Poison rows mixed with good ones: the good rows land, the bad ones come back refused
with the error clickhouse-connect or ClickHouse gave; rows spanning many months load.
What chdb / clickhouse-connect raise for each poison is noted in the cases.
"""
from __future__ import annotations

import decimal
import errno
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError, ProgrammingError

from schemas.events import Exclusion, Promoter
from schemas.records import AttributionRec, ClickRec, ClickRef, OrderRec
from sinks.clickhouse import (
    MAX_ERROR_CHARS,
    PARTITIONS_PER_INSERT,
    ClickHouseUnavailable,
    ClickHouseWriter,
    classify,
    describe,
    partition_chunks,
)
from sinks.rows import rows_for
from sinks.tables import TABLES
from tests.sinks import HUGE, NINETIES, T0


def chdb_error(engine: Any, sql: str) -> Exception:
    try:
        engine[1].query(sql)
    except Exception as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


# --- classification: a pure function, table-driven ------------------------------------------


def wrapped(cause: Exception) -> DataError:
    exc = DataError("Unable to create native array for column `ts`: error")
    exc.__cause__ = cause
    return exc


CLASSIFIED: list[tuple[str, BaseException, str]] = [
    # refused by clickhouse-connect while serialising (measured with chdb)
    ("None in a non-Nullable column", DataError("Invalid None value in non-Nullable column, column name: `campaign`"), "data"),
    ("int out of range (struct.error wrapped)", wrapped(struct.error("argument out of range")), "data"),
    ("bare struct.error", struct.error("argument out of range"), "data"),
    ("NaN in a Decimal", ValueError("cannot convert NaN to integer"), "data"),
    ("Infinity in a Decimal", OverflowError("cannot convert Infinity to integer"), "data"),
    ("int in a String column", AttributeError("'int' object has no attribute 'encode'"), "data"),
    ("wrong type", TypeError("an integer is required"), "data"),
    ("surrogate in a String", UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "data"),
    ("decimal signal", decimal.InvalidOperation(), "data"),
    # refused by the server: the rows are wrong
    ("too many partitions", DatabaseError(
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).", code=252), "data"),
    ("too many partitions, code only in the text", DatabaseError(
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100)."), "data"),
    ("too many partitions after an HTTP retry", OperationalError(
        "Received ClickHouse exception, code: 252, server response: Too many partitions for single INSERT block",
        code=252), "data"),
    ("type mismatch", DatabaseError("Code: 53. DB::Exception: Type mismatch", code=53), "data"),
    ("cannot parse", DatabaseError("Code: 6. DB::Exception: Cannot parse string 'x' as UInt8", code=6), "data"),
    ("cannot parse datetime", DatabaseError("Code: 41. DB::Exception: Cannot read DateTime", code=41), "data"),
    ("value out of range", DatabaseError("Code: 321. DB::Exception: Value is out of range", code=321), "data"),
    ("decimal overflow", DatabaseError("Code: 407. DB::Exception: Decimal convert overflow", code=407), "data"),
    ("null in ordinary column", DatabaseError("Code: 349. DB::Exception: Cannot insert NULL", code=349), "data"),
    ("unknown enum element", DatabaseError("Code: 691. DB::Exception: Unknown element 'x'", code=691), "data"),
    # outages: wait and retry
    ("too many parts: merges lag", DatabaseError(
        "Code: 252. DB::Exception: Too many parts (300 with average size of 1.00 MiB) in table 'default.clicks'. "
        "Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)", code=252), "outage"),
    ("memory limit", DatabaseError("Code: 241. DB::Exception: Memory limit (total) exceeded", code=241), "outage"),
    ("too many simultaneous queries", DatabaseError("Code: 202. DB::Exception: Too many simultaneous queries",
                                                    code=202), "outage"),
    ("timeout", DatabaseError("Code: 159. DB::Exception: Timeout exceeded", code=159), "outage"),
    ("socket timeout", DatabaseError("Code: 209. DB::Exception: Timeout exceeded while reading", code=209), "outage"),
    ("read-only table", DatabaseError("Code: 242. DB::Exception: Table is in readonly mode", code=242), "outage"),
    ("disk full", DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space",
                                code=243), "outage"),
    ("unknown table (migrations not applied)", DatabaseError("Code: 60. DB::Exception: Unknown table", code=60), "outage"),
    ("authentication", DatabaseError("Code: 516. DB::Exception: Authentication failed", code=516), "outage"),
    ("server error without a code", DatabaseError("HTTP driver received HTTP status 503"), "outage"),
    ("connection refused (clickhouse-connect)", OperationalError(
        "Error HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Connection refused)"), "outage"),
    ("connection refused", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "outage"),
    ("connection reset", ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "outage"),
    ("socket timeout (Python)", TimeoutError("timed out"), "outage"),
    ("timeout (Python)", TimeoutError(), "outage"),
    ("disk full (Python)", OSError(errno.ENOSPC, "No space left on device"), "outage"),
    ("column count mismatch: a bug, not a row", ProgrammingError("Insert data column count does not match"), "outage"),
    ("anything unknown", RuntimeError("something else"), "outage"),
    ("KeyError", KeyError("x"), "outage"),
]


@pytest.mark.parametrize("exc,kind", [c[1:] for c in CLASSIFIED], ids=[c[0] for c in CLASSIFIED])
def test_classify(exc, kind):
    assert classify(exc) == kind


@pytest.mark.parametrize("sql,code,kind", [
    ("SELECT toDecimal64(1e30, 4)", 407, "data"),
    ("SELECT CAST('x' AS UInt8)", 6, "data"),
    ("SELECT toDateTime64('nope', 3)", 41, "data"),
    ("SELECT * FROM no_such_table", 60, "outage"),
])
def test_classify_real_chdb_errors(engine, sql, code, kind):
    exc = chdb_error(engine, sql)
    assert isinstance(exc, DatabaseError) and exc.code == code
    assert classify(exc) == kind


def test_describe_keeps_the_first_line_the_cause_and_a_bound():
    assert describe(wrapped(struct.error("argument out of range"))) == (
        "Unable to create native array for column `ts`: error (struct.error: argument out of range)")
    assert describe(ValueError("cannot convert NaN to integer")) == "ValueError: cannot convert NaN to integer"
    assert describe(KeyError()) == "KeyError"
    long = describe(DatabaseError("Code: 252. " + "x" * 2000 + "\nsecond line"))
    assert len(long) == MAX_ERROR_CHARS and long.endswith("…") and "second" not in long


# --- partitions per insert ---------------------------------------------------------------


def click_rows(timestamps: list[int]) -> list[tuple]:
    return rows_for([ClickRec(f"c{i}", ts, "v1", "T1") for i, ts in enumerate(timestamps)])["clicks"]


def test_partition_chunks_split_by_month_and_keep_each_month_whole():
    rows = click_rows(NINETIES + NINETIES[::-1])  # every month twice, far apart in the batch
    chunks = partition_chunks(TABLES["clicks"], rows, limit=50)
    assert sorted(i for c in chunks for i in c) == list(range(240))
    months = [{datetime.fromtimestamp(rows[i][1] / 1000, UTC).strftime("%Y%m") for i in c} for c in chunks]
    assert [len(m) for m in months] == [50, 50, 20]
    assert not set.intersection(*months)  # a month is in one chunk only
    assert all(c == sorted(c) for c in chunks)  # rows keep their order within a chunk


@pytest.mark.parametrize("table,timestamps,chunks", [
    ("clicks", NINETIES[:PARTITIONS_PER_INSERT], 1),  # within the limit: one insert, as sent
    ("clicks", [T0 + i for i in range(500)], 1),  # many rows, one month
    ("clicks", NINETIES + [HUGE, -HUGE], 3),  # out-of-range times count apart, never crash
    ("attributions", None, 1),  # not partitioned
])
def test_partition_chunks_cases(table, timestamps, chunks):
    if timestamps is None:
        rows = rows_for([(i, AttributionRec(f"a{i}", "s", ts, "v", None)) for i, ts in enumerate(NINETIES)])[table]
    else:
        rows = click_rows(timestamps)
    assert len(partition_chunks(TABLES[table], rows)) == chunks


# --- poison rows mixed with good ones, on chdb ----------------------------------------------


def promoter(pid: str, **kw: Any) -> Promoter:
    return Promoter(event_id=f"p-{pid}", ts=T0, promoter_id=pid, tracking_code=f"T-{pid}", **kw)


def order(eid: str, amount: Any) -> OrderRec:
    return OrderRec(eid, T0, f"o-{eid}", "a1", "pro", amount, "USD", "paid")


def click_tuple(eid: Any, ts: Any = T0, campaign: Any = "") -> tuple:
    return (eid, ts, "v1", "T1", campaign, "", "", "", "", "", "GET")


@dataclass
class Poison:
    name: str
    table: str
    rows: list[tuple]
    bad: list[int]  # indices of the rows that must come back refused
    error: str = ""  # in every refusal's error


POISONS = [
    Poison("DateTime64 out of range (ts 9.9e22, -2^63-1): DataError wrapping struct.error", "clicks",
           click_rows([T0, HUGE, T0 + 1, -(2**63) - 1, T0 + 2]), [1, 3],
           "Unable to create native array for column `ts`: error (struct.error: argument out of range)"),
    Poison("promoter joined_at 9.9e22 (defect 6)", "promoters",
           rows_for([promoter("P1"), promoter("P2", joined_at=HUGE), promoter("P3")])["promoters"], [1],
           "column `joined_at`"),
    Poison("exclusion since 2^63 (defect 6)", "exclusions",
           rows_for([Exclusion(event_id=f"x{i}", ts=T0, owner="direct", account_id=f"a{i}", since=s)
                     for i, s in enumerate([T0, 2**63, T0])])["exclusions"], [1], "column `since`"),
    Poison("UInt64 out of range (2^64, -1)", "attributions",
           rows_for([(v, AttributionRec(f"a{i}", "s", T0, "v", ClickRef("c", T0, "T1")))
                     for i, v in enumerate([1, 2**64, 2, -1])])["attributions"], [1, 3], "column `version`"),
    Poison("huge int in a Decimal(18, 4)", "orders",
           rows_for([order("e1", Decimal(10)), order("e2", Decimal("1e30")), order("e3", Decimal(99_999_999_999_999))
                     ])["orders"], [1], "column `amount`"),
    Poison("NaN / Infinity in a Decimal: ValueError / OverflowError", "orders",
           rows_for([order("e1", Decimal("NaN")), order("e2", Decimal(1)), order("e3", Decimal("-Infinity"))])["orders"],
           [0, 2], "cannot convert"),
    Poison("None in a non-nullable column", "clicks",
           [click_tuple("c1"), click_tuple("c2", campaign=None), click_tuple("c3")], [1],
           "Invalid None value in non-Nullable column, column name: `campaign`"),
    Poison("wrong types: an int in a String (AttributeError), a str in a DateTime64 (ValueError)", "clicks",
           [click_tuple(7), click_tuple("c2"), click_tuple("c3", ts="yesterday")], [0, 2]),
    Poison("a string UTF-8 cannot encode", "clicks", [click_tuple("c\ud800"), click_tuple("c2")], [0],
           "UnicodeEncodeError"),
    Poison("120 months in one batch (defect 5): all land", "clicks", click_rows(NINETIES), []),
    Poison("120 months and two bad rows", "clicks", click_rows(NINETIES + [HUGE]) + [click_tuple("c", campaign=None)],
           [120, 121]),
]


@pytest.mark.parametrize("case", POISONS, ids=lambda c: c.name)
def test_poison_rows_are_refused_and_the_rest_lands(db, case: Poison):
    failures: list = []
    writer = ClickHouseWriter(db, on_failure=lambda t, e: failures.append(e))
    refused = writer.write({case.table: case.rows})
    assert [r.index for r in refused] == case.bad
    assert all(r.table == case.table and r.row == case.rows[r.index] for r in refused)
    assert all(case.error in r.error for r in refused), [r.error for r in refused]
    assert db.query(f"SELECT count() FROM {case.table}").result_rows[0][0] == len(case.rows) - len(case.bad)
    assert failures == []  # a refused row is no outage


def test_server_side_refusal_is_bisected(db):
    """Without the writer's own split, ClickHouse refuses 120 months (code 252); halving
    the batch is enough: every row lands, none is refused."""
    inserts: list[int] = []
    writer = ClickHouseWriter(db, max_partitions=1000, on_batch=lambda t, n, s: inserts.append(n))
    assert writer.write({"clicks": click_rows(NINETIES)}) == []
    assert inserts == [60, 60]
    assert db.query("SELECT uniqExact(toYYYYMM(ts)), count() FROM clicks").result_rows == [(120, 120)]


def test_many_poison_rows_are_isolated_with_bounded_tries(db):
    timestamps = [HUGE if i % 2 else T0 + i for i in range(200)]
    tries: list[int] = []
    writer = ClickHouseWriter(db, on_batch=lambda t, n, s: tries.append(n))
    refused = writer.write({"clicks": click_rows(timestamps)})
    assert [r.index for r in refused] == list(range(1, 200, 2))
    assert sum(tries) == 100 and len(tries) == 100  # every good row alone, the worst case
    assert db.query("SELECT count() FROM clicks").result_rows[0][0] == 100


def test_an_outage_stops_the_write_and_raises(db):
    """A table that is gone fails every row: not the rows' fault, so nothing is refused."""
    db.command("DETACH TABLE orders")
    failures: list = []
    writer = ClickHouseWriter(db, on_failure=lambda t, e: failures.append(t))
    batch = {"clicks": click_rows([T0]), "orders": rows_for([order("e1", Decimal(1)), order("e2", Decimal("1e30"))])["orders"]}
    with pytest.raises(ClickHouseUnavailable, match="UNKNOWN_TABLE"):
        writer.write(batch)
    assert failures == ["orders"]
    db.command("ATTACH TABLE orders")
    [refused] = writer.write(batch)  # the retry: clicks again (idempotent), the bad order refused
    assert (refused.table, refused.index) == ("orders", 1)
    assert db.query("SELECT count() FROM orders").result_rows[0][0] == 1
