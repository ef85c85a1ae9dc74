"""ClickHouse connection and the batched, idempotent writer that tells data errors from outages.

The same code runs against chdb (ClickHouse in-process, `chdb:///abs/dir`) and a
ClickHouse server (`http(s)://user:pass@host:port/db`). Idempotency comes from the
tables (ReplacingMergeTree on natural ids, `*_current` views with FINAL, see
`sinks.tables`), not from the writer: re-inserting a batch after a failure or a Kafka
redelivery never adds rows visible to the views and queries.

The writer tries each insert once and owns no retry loop (the caller, `streams.agents.sink`,
does, as Quix Streams' runtime does for its sinks). A failure is either an outage
(connection, timeout, overload, anything unknown), raised as `ClickHouseUnavailable` for
the caller to wait out, or a data error (rows ClickHouse or the client refuses), which a
retry cannot fix: the writer isolates the refused rows by bisection, writes the rest and
returns the refused ones with the error (see `classify`).
"""
from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DataError, Error, OperationalError, ProgrammingError

from schemas.units import DAY_MS
from sinks.tables import TABLES, Table

log = logging.getLogger(__name__)

DSN_FORMS = "chdb:///absolute/path/to/dir or http(s)://user:password@host:port/database"


class DsnError(ValueError):
    """The ClickHouse DSN has a form `connect` does not accept."""


class ChdbOpenError(ProgrammingError):
    """chdb could not open its data directory (in use by another process or directory)."""


def redact(dsn: str) -> str:
    """The DSN with its password replaced by ***, for messages and logs."""
    try:
        parts = urlsplit(dsn)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return dsn


def connect(dsn: str, **kwargs: Any) -> Any:
    """A clickhouse-connect client for `chdb:///abs/dir` (the directory is created) or a
    ClickHouse server URL `http(s)://user:pass@host:port/db`. Extra keyword arguments go
    to `clickhouse_connect.get_client`.

    chdb hosts one engine per process: every client of one process must use the same
    directory (clients on the same directory share the engine), and one directory must
    not be opened by two processes.
    """
    if not isinstance(dsn, str) or "://" not in dsn:
        shown = redact(dsn) if isinstance(dsn, str) else dsn
        raise DsnError(f"unsupported ClickHouse DSN {shown!r}: use {DSN_FORMS}")
    scheme = dsn.split("://", 1)[0].lower()
    if scheme == "chdb":
        path = urlsplit(dsn).path
        if not dsn.startswith("chdb:///") or not os.path.isabs(path) or path == "/":
            raise DsnError(
                f"unsupported chdb DSN {dsn!r}: give an absolute directory, chdb:///absolute/path/to/dir"
            )
        os.makedirs(path, exist_ok=True)
        try:
            return clickhouse_connect.get_client(dsn=dsn, **kwargs)
        except ProgrammingError as exc:
            if "chdb engine" not in str(exc):
                raise
            raise ChdbOpenError(
                f"cannot open chdb at {path}: chdb allows one data directory per process (close the "
                f"clients of another directory first) and one process per directory (is another "
                f"refstream process using it?). chdb said: {exc}"
            ) from exc
    if scheme in ("http", "https"):
        try:
            host = urlsplit(dsn).hostname
        except ValueError as exc:
            raise DsnError(f"malformed ClickHouse URL {redact(dsn)!r}: {exc}") from None
        if not host:
            raise DsnError(f"ClickHouse URL {redact(dsn)!r} has no host: use {DSN_FORMS}")
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    raise DsnError(f"unsupported ClickHouse DSN scheme {scheme!r} in {redact(dsn)!r}: use {DSN_FORMS}")


def rows_as_dicts(result: Any) -> list[dict[str, Any]]:
    """The rows of a clickhouse-connect query result as {column: value} dicts."""
    names = result.column_names
    return [dict(zip(names, row)) for row in result.result_rows]


OnBatch = Callable[[str, int, float], None]  # table, rows, seconds
OnFailure = Callable[[str, BaseException], None]  # table, exception (called on every outage)
Kind = Literal["data", "outage"]

#: at most this many partitions (months) per insert block: ClickHouse refuses a block that
#: spans more than `max_partitions_per_insert_block` (100 by default) with code 252
PARTITIONS_PER_INSERT = 50
#: longest error text kept (dead-letter reasons, logs)
MAX_ERROR_CHARS = 500

#: ClickHouse error codes that mean the rows are wrong: the same rows fail again, whatever
#: the server's state. Code 252 (TOO_MANY_PARTS) is here only for "too many partitions for
#: single INSERT block"; the same code with "too many parts" means merges lag: an outage.
DATA_ERROR_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT", 26: "CANNOT_PARSE_QUOTED_STRING", 27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME", 53: "TYPE_MISMATCH", 69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER", 117: "INCORRECT_DATA",
    130: "CANNOT_READ_ARRAY_FROM_TEXT", 131: "TOO_LARGE_STRING_SIZE", 190: "SIZES_OF_ARRAYS_DONT_MATCH",
    252: "TOO_MANY_PARTS", 321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 407: "DECIMAL_OVERFLOW", 469: "VIOLATED_CONSTRAINT",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}
_TOO_MANY_PARTITIONS = "partitions for single insert block"
_CODE = re.compile(r"\bCode:\s*(\d+)")
#: what clickhouse-connect raises while serialising a value that does not fit its column
#: (measured: struct.error wrapped in DataError for out-of-range ints and decimals,
#: ValueError for NaN, OverflowError for Infinity, AttributeError for an int in a String)
_SERIALISATION = (TypeError, ValueError, ArithmeticError, struct.error, AttributeError)
_TRANSPORT = (OperationalError, OSError, TimeoutError)


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's numeric error code of a clickhouse-connect exception, if it has one
    (other exceptions' `code`, e.g. an HTTP status, is no ClickHouse code)."""
    if not isinstance(exc, Error):
        return None
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    found = _CODE.search(str(exc))
    return int(found.group(1)) if found else None


def classify(exc: BaseException) -> Kind:
    """"data" if the rows themselves are refused (a retry fails the same way), else "outage".

    Pure; unknown failures are outages: retrying a data error only stalls the sink (and
    the alert says so), dead-lettering rows during an outage would lose them.
    """
    code = error_code(exc)
    if code in DATA_ERROR_CODES:
        if code != 252:
            return "data"
        return "data" if _TOO_MANY_PARTITIONS in str(exc).lower() else "outage"
    if isinstance(exc, DataError):  # refused by clickhouse-connect before sending
        return "data"
    if isinstance(exc, (Error, *_TRANSPORT)):  # server errors with other codes, network
        return "outage"
    if isinstance(exc, _SERIALISATION):
        return "data"
    return "outage"


def describe(exc: BaseException) -> str:
    """The error's first line, with its cause (clickhouse-connect wraps struct.error in a
    DataError that says only "error"), bounded to MAX_ERROR_CHARS."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if not isinstance(exc, Error) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__
    said = (str(cause).strip().splitlines() or [""])[0] if cause is not None else ""
    if said and said not in text:  # chdb wraps its own error with the same text
        kind = type(cause)
        name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        text += f" ({name}: {said})"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class ClickHouseUnavailable(Exception):
    """An insert failed in a way a retry may fix (outage, overload, unknown): retry the
    whole batch later (tables are idempotent) and do not commit its offsets meanwhile."""

    def __init__(self, table: str, cause: BaseException) -> None:
        super().__init__(f"insert into {table} failed: {describe(cause)}")
        self.table = table
        self.cause = cause


@dataclass(frozen=True)
class Refused:
    """A row ClickHouse (or the client, while serialising it) refused."""

    table: str
    index: int  # position of the row in the table's list given to `write`
    row: tuple
    error: str  # `describe` of the refusal


_PARTITION_MONTH = re.compile(r"^toYYYYMM\((\w+)\)$")
_EPOCH = date(1970, 1, 1)


def partition_chunks(table: Table, rows: list[tuple], limit: int = PARTITIONS_PER_INSERT) -> list[list[int]]:
    """Row indices grouped so that no group spans more than `limit` partitions of
    `table` (months of its `ts` column): a year or more of backfill then loads.

    The rows of one month stay in one group, in their order (a ReplacingMergeTree keeps
    the last of equal rows within a block); a batch within `limit` months is one group.
    """
    everything = [list(range(len(rows)))]
    found = _PARTITION_MONTH.match(table.partition_by or "")
    if found is None or len(rows) <= limit:
        return everything
    column = table.insert_columns.index(found.group(1))
    months: dict[object, list[int]] = {}
    day_month: dict[int, object] = {}  # one date computation per day, not per row
    for i, row in enumerate(rows):
        ts = row[column]
        if isinstance(ts, int):
            day = ts // DAY_MS
            month = day_month.get(day)
            if month is None:
                try:
                    d = _EPOCH + timedelta(days=day)
                    month = d.year * 100 + d.month
                except OverflowError:  # out of range: the insert refuses it; count it apart
                    month = ("day", day)
                day_month[day] = month
        else:
            month = None
        months.setdefault(month, []).append(i)
    if len(months) <= limit:
        return everything
    groups = list(months.values())
    return [sorted(i for g in groups[k:k + limit] for i in g) for k in range(0, len(groups), limit)]


class _QuietSerialisationErrors(logging.Filter):
    """clickhouse-connect logs a traceback for every value it cannot serialise, then raises;
    the writer reports the refusal itself, and bisection would repeat the traceback per try."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Error serializing")


for _name in ("clickhouse_connect.driver.transform", "clickhouse_connect.driver.rustcodec"):
    logging.getLogger(_name).addFilter(_QuietSerialisationErrors())


class ClickHouseWriter:
    """Inserts `{table: [row tuples]}` batches; returns the rows ClickHouse refused.

    One try per insert. Rows of partitioned tables are split so that an insert spans at
    most `max_partitions` months. A data error (`classify`) is isolated by bisection: the
    good rows of the batch are written and the refused ones returned with their error.
    An outage raises `ClickHouseUnavailable` at once; tables and chunks already written
    stay written, and re-sending the whole batch is harmless (idempotent tables).
    One `write` at a time: `self.lock` guards the client.
    """

    def __init__(
        self,
        client: Any,
        *,
        max_partitions: int = PARTITIONS_PER_INSERT,
        on_batch: OnBatch | None = None,
        on_failure: OnFailure | None = None,
    ) -> None:
        if max_partitions < 1:
            raise ValueError("max_partitions must be at least 1")
        self.client = client
        self.max_partitions = max_partitions
        self.on_batch = on_batch
        self.on_failure = on_failure
        #: serialises use of `client`; readers sharing the client (e.g. counts) hold it too
        self.lock = threading.Lock()

    def write(self, batch: dict[str, list[tuple]]) -> list[Refused]:
        """Insert every table's rows; the refused rows (empty when all were written).
        Raises `ClickHouseUnavailable` on an outage, KeyError for an unknown table."""
        refused: list[Refused] = []
        with self.lock:
            for table, rows in batch.items():
                if not rows:
                    continue
                spec = TABLES.get(table)
                if spec is None:
                    raise KeyError(f"unknown ClickHouse table {table!r}; known: {', '.join(TABLES)}")
                for chunk in partition_chunks(spec, rows, self.max_partitions):
                    self._isolate(spec, rows, chunk, refused)
        return refused

    def _isolate(self, spec: Table, rows: list[tuple], indices: list[int], refused: list[Refused]) -> None:
        """Insert `rows[i] for i in indices`; on a data error halve and retry each half,
        down to single rows, which are refused. Worst case ~2n tries for n refused rows,
        log2(n) per refused row when they are rare."""
        pending = [indices]  # a stack, first half on top: good rows keep their order
        while pending:
            part = pending.pop()
            exc = self._try(spec, [rows[i] for i in part])
            if exc is None:
                continue
            if classify(exc) == "outage":
                if self.on_failure is not None:
                    self.on_failure(spec.name, exc)
                raise ClickHouseUnavailable(spec.name, exc) from exc
            if len(part) == 1:
                refused.append(Refused(spec.name, part[0], rows[part[0]], describe(exc)))
                continue
            half = len(part) // 2
            pending += [part[half:], part[:half]]

    def _try(self, spec: Table, rows: list[tuple]) -> Exception | None:
        started = time.perf_counter()
        try:
            # Types from the spec: no DESCRIBE round trip per insert.
            self.client.insert(spec.name, rows, column_names=spec.insert_columns, column_type_names=spec.insert_types)
        except Exception as exc:  # classified by the caller
            return exc
        if self.on_batch is not None:
            self.on_batch(spec.name, len(rows), time.perf_counter() - started)
        return None
