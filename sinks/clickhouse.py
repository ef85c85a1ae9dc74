"""ClickHouse connection and the batched, retried, idempotent writer.

The same code runs against chdb (ClickHouse in-process, `chdb:///abs/dir`) and a
ClickHouse server (`http(s)://user:pass@host:port/db`). Idempotency comes from the
tables (ReplacingMergeTree on natural ids, `*_current` views with FINAL, see
`sinks.tables`), not from the writer: re-inserting a batch after a failure or a Kafka
redelivery never adds rows visible to the views and queries.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DataError, ProgrammingError

from sinks.rows import Record, Versioned, rows_for
from sinks.tables import TABLES

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


OnBatch = Callable[[str, int, float], None]  # table, rows, seconds
OnFailure = Callable[[str, BaseException], None]  # table, exception (called on every failed try)

#: errors a retry cannot fix: rows that do not fit the columns, raised by clickhouse-connect
#: while serialising (e.g. DataError "Invalid None value in non-Nullable column")
NOT_RETRIED: tuple[type[BaseException], ...] = (DataError, TypeError, ValueError, KeyError, AttributeError)


class ClickHouseWriter:
    """Inserts `{table: [row tuples]}` batches; retries each table with exponential backoff.

    `attempts` tries per table (the first plus `attempts - 1` retries), sleeping
    `backoff_s * 2**n` (at most `max_backoff_s`) between tries; after the last try the
    exception is raised, and the caller must not commit its Kafka offsets. Tables already
    written stay written: re-sending the whole batch is harmless (idempotent tables).
    One `write` at a time: `self.lock` guards the client.
    """

    def __init__(
        self,
        client: Any,
        *,
        attempts: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        on_batch: OnBatch | None = None,
        on_failure: OnFailure | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.client = client
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_batch = on_batch
        self.on_failure = on_failure
        self._sleep = sleep
        #: serialises use of `client`; readers sharing the client (e.g. counts) hold it too
        self.lock = threading.Lock()

    def write(self, batch: dict[str, list[tuple]]) -> None:
        with self.lock:
            for table, rows in batch.items():
                if rows:
                    self._insert(table, rows)

    def write_records(self, records: Iterable[Record | Versioned]) -> None:
        """`write(rows_for(records))`."""
        self.write(rows_for(records))

    def _insert(self, table: str, rows: list[tuple]) -> None:
        spec = TABLES.get(table)
        if spec is None:
            raise KeyError(f"unknown ClickHouse table {table!r}; known: {', '.join(TABLES)}")
        for attempt in range(1, self.attempts + 1):
            started = time.perf_counter()
            try:
                # Types from the spec: no DESCRIBE round trip per insert.
                self.client.insert(
                    table, rows, column_names=spec.insert_columns, column_type_names=spec.insert_types
                )
            except Exception as exc:
                if self.on_failure is not None:
                    self.on_failure(table, exc)
                if isinstance(exc, NOT_RETRIED) or attempt == self.attempts:
                    raise
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                log.warning(
                    "insert of %d rows into %s failed (try %d/%d), retrying in %.2fs: %s",
                    len(rows), table, attempt, self.attempts, delay, exc,
                )
                self._sleep(delay)
            else:
                if self.on_batch is not None:
                    self.on_batch(table, len(rows), time.perf_counter() - started)
                return
