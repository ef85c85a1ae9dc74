"""The worker's ClickHouse step: decode what the pipeline produced and write it in batches.

Faust acks a buffer only after `write` returns, and commits offsets only after acks, so
offsets are committed after ClickHouse acknowledged. Tables are idempotent, so a batch
redelivered after a crash adds no rows to the views.

The step owns the retries (the writer tries once and tells outages from data errors):
while ClickHouse is unavailable it waits and retries the whole batch (with backoff,
logged and counted) instead of dropping anything. Rows ClickHouse refuses (a retry would
fail the same way, and wedge the sink) are dead-lettered: written to the `dead_letters`
table with ClickHouse's error and the Kafka message they came from, counted in
`refstream_sink_rejected_rows{table}`; the rest of the batch is written and acked.

On shutdown (SIGTERM) Faust stops fetching and waits until the buffers already taken are
written and acked, then commits. If ClickHouse fails while the worker stops, the step
gives up instead of retrying until it is killed: the buffer is reported unwritten, the
commit guard (streams.delivery) keeps its offsets (and every later one) uncommitted, the
next run writes them, and the worker exits with EXIT_UNDRAINED.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import msgspec

from schemas.records import AttributionRec, DeadLetter, LateEvent, batch_decoder, conversion_decoder
from schemas.validate import Invalid
from sinks.alerts import AlertFields, write_alerts
from sinks.clickhouse import ClickHouseWriter, Refused, connect, describe, redact
from sinks.migrations import install_views, migrate
from sinks.rows import Row, dead_letter_row, table_of, table_row
from sinks.tables import TABLES
from streams.adapters.reference_feed import reference_reader
from streams.agents.outputs import DeadLetters
from streams.config import Settings
from streams.logic.privacy import dead_letter, letter
from streams.logic.rules.ruleset import load_rules
from streams.logic.rules.views import rule_views
from streams.metrics import Metrics
from streams.retry import Backoff, Stopped, retrying
from streams.topology import ACCOUNT_JOIN, CONVERSIONS, DEAD_LETTERS, LATE_EVENTS, SINK_INPUTS, VISITOR_JOIN, Topology

log = logging.getLogger(__name__)
_late = msgspec.json.Decoder(LateEvent)
_dead = msgspec.json.Decoder(DeadLetter)
#: waits between tries while ClickHouse is unavailable (opening it, writing a batch)
BACKOFF = Backoff(initial=0.5, factor=2.0, maximum=30.0)
EXIT_UNDRAINED = 75  # EX_TEMPFAIL: stopped during a ClickHouse outage, without draining
REFUSED = "clickhouse refused the row for table"  # dead-letter reasons start so (docs, alert)
T = TypeVar("T")


class Source(NamedTuple):
    """The Kafka message a record came from: where its dead letter points if ClickHouse
    refuses its row."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


Sourced = tuple[Any, Source]  # a record (or a versioned attribution) and its message


def _join_batch(value: bytes, offset: int) -> list[Any]:
    """A join topic's batch; attributions versioned by position (offset, index in the batch),
    so the newest wins in `attributions_current`."""
    return [(offset * 100_000 + i, rec) if isinstance(rec, AttributionRec) else rec
            for i, rec in enumerate(batch_decoder.decode(value).records)]


#: how the sink decodes a message of each topic it stores (`streams.topology.SINK_INPUTS`)
DECODERS: dict[str, Callable[[bytes, int], list[Any]]] = {
    VISITOR_JOIN: _join_batch,
    ACCOUNT_JOIN: _join_batch,
    CONVERSIONS: lambda value, _: [conversion_decoder.decode(value)],
    LATE_EVENTS: lambda value, _: [_late.decode(value)],
    DEAD_LETTERS: lambda value, _: [_dead.decode(value)],
}
assert set(DECODERS) == set(SINK_INPUTS), "a decoder for every topic the sink stores"


def source_of(msg: Any) -> Source:
    key = msg.key.encode() if isinstance(msg.key, str) else msg.key
    return Source(msg.topic, msg.partition, msg.offset, key if isinstance(key, bytes) else None)


def record_json(record: Any) -> bytes:
    """The record as JSON with its field names (records are array-like on the wire)."""
    try:
        if isinstance(record, tuple) and len(record) == 2 and isinstance(record[1], msgspec.Struct):
            return msgspec.json.encode({"version": record[0], **msgspec.structs.asdict(record[1])})
        if isinstance(record, msgspec.Struct):
            return msgspec.json.encode(msgspec.structs.asdict(record))
        return msgspec.json.encode(record)
    except Exception:  # whatever it holds, keep something a person can read
        return msgspec.json.encode(repr(record))


def refused_letter(source: Source, refusals: list[tuple[str, str, Any]], at: int, salt: bytes) -> DeadLetter:
    """The dead letter of a message's refused rows, `(table, error, record)` each.

    One per message: `dead_letters` keeps one row per (topic, partition, offset), so two
    letters of one join batch would collapse. Its value is the record's JSON, or a JSON
    array of {table, error, record} when several rows of the message were refused; cut to
    to its head and scrubbed of personal data like every dead letter (`privacy.letter`).
    """
    table, error, record = refusals[0]
    reason = f"{REFUSED} {table}: {error}"
    if len(refusals) == 1:
        full = record_json(record)
    else:
        reason += f" (and {len(refusals) - 1} more refused rows of this message)"
        full = msgspec.json.encode([{"table": t, "error": e, "record": msgspec.Raw(record_json(r))}
                                    for t, e, r in refusals])
    return letter(reason, source.topic, source.partition, source.offset, source.key, full, salt, at)


class BuiltRows(NamedTuple):
    """The rows of a buffer per table, and for each row the index of its record."""

    rows: dict[str, list[Row]]
    origin: dict[str, list[int]]
    unbuilt: list[tuple[int, str, str]]  # (record index, table, error): no row could be built


def build_rows(items: list[Sourced]) -> BuiltRows:
    rows: dict[str, list[Row]] = {}
    origin: dict[str, list[int]] = {}
    unbuilt: list[tuple[int, str, str]] = []
    for n, (record, _) in enumerate(items):
        try:
            table, row = table_row(record)
        except Exception as exc:  # a record that fits no row is refused like a row ClickHouse refuses
            unbuilt.append((n, table_of(record), describe(exc)))
            continue
        rows.setdefault(table, []).append(row)
        origin.setdefault(table, []).append(n)
    return BuiltRows(rows, origin, unbuilt)


class SinkStep:
    def __init__(self, settings: Settings, metrics: Metrics, stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stopping = stopping  # true once the worker shuts down: stop retrying
        self.writer: ClickHouseWriter | None = None
        self.rows_written: Counter[str] = Counter()
        self.rows_refused: Counter[str] = Counter()  # dead-lettered because ClickHouse refused them
        self.failing_since: float | None = None
        self.undrained = False  # stopped with batches ClickHouse did not take (left uncommitted)
        self.handled: dict[str, int] = {}  # "topic/partition" -> next offset; written (or empty) and acked
        self._opening = asyncio.Lock()  # concurrent first readers open one client
        self.topology = Topology(settings)
        self.reference = reference_reader(settings)
        for table in TABLES:  # exported at 0, so increase() in the alert sees the first refusal
            metrics.sink_rejected_rows.labels(table)

    def _on_batch(self, table: str, rows: int, seconds: float) -> None:
        self.metrics.sink_rows.labels(table).inc(rows)
        self.metrics.sink_seconds.labels(table).observe(seconds)
        self.metrics.sink_batch_rows.labels(table).observe(rows)
        self.rows_written[table] += rows

    def _on_failure(self, table: str, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.metrics.sink_failures.labels(table).inc()

    def _open(self) -> ClickHouseWriter:
        client = connect(self.settings.clickhouse)
        applied = migrate(client)
        # the rules ClickHouse applies (spamming, enterprise reversal, reviews, holding periods)
        # replace the placeholder views of the migrations, from the rule book
        install_views(client, rule_views(load_rules(self.settings.rules_file),
                                         lateness_ms=self.settings.lateness_ms))
        log.info("clickhouse ready", extra={"dsn": redact(self.settings.clickhouse), "migrated": applied})
        return ClickHouseWriter(client, on_batch=self._on_batch, on_failure=self._on_failure)

    def records(self, events: Iterable[Any]) -> list[Sourced]:
        """Decode sink input events into records (attributions versioned by position), each
        with the message it came from."""
        out: list[Sourced] = []
        for ev in events:
            msg = ev.message
            kind = self.topology.name_of(msg.topic)
            src = source_of(msg)
            decoder = DECODERS.get(kind)
            if decoder is None:
                continue
            try:
                out += [(rec, src) for rec in decoder(msg.value, msg.offset)]
            except Exception as exc:  # not written by refstream: someone else wrote to the topic
                self.metrics.dead_letters.labels(msg.topic).inc()
                reason = f"undecodable {kind} message ({type(exc).__name__}: {exc}); only refstream writes {msg.topic}"
                out.append((dead_letter(reason, msg, self.settings.pii_salt.encode()), src))
        return out

    async def write(self, events: list[Any]) -> bool:
        """Write one buffer of sink input events; False if the worker stopped before
        ClickHouse took them (then they must not count as done)."""
        return self._finish(events, await self._write(self.records(events)))

    async def connect(self) -> None:
        """Open ClickHouse and apply the migrations, retrying with backoff (the sink's readiness)."""
        def failed(exc: Exception, delay: float) -> None:
            log.warning("clickhouse unavailable, retrying", extra={"error": repr(exc), "retry_in_s": delay})

        if self.stopping():
            return
        try:
            await retrying(self._writer, BACKOFF, on_retry=failed, stopping=self.stopping)
        except Stopped:
            pass  # the worker stops before ClickHouse came up: nothing to open any more

    def on_shutdown(self) -> None:
        """After Faust's final commit: say what this worker handled (the offsets it committed)."""
        log.info("sink stopped", extra={"handled": self.handled, "rows_written": dict(self.rows_written)})

    def _finish(self, events: list[Any], written: bool) -> bool:
        if written:
            for ev in events:
                m = ev.message
                key = f"{m.topic}/{m.partition}"
                self.handled[key] = max(self.handled.get(key, 0), m.offset + 1)
        elif not self.undrained:
            self.undrained = True
            log.warning("stopping while clickhouse fails: these messages stay uncommitted and the next run "
                        "writes them", extra={"messages": len(events), "exit_code": EXIT_UNDRAINED})
        return written

    async def write_reference(self, events: list[Any], dead_letters: DeadLetters) -> bool:
        """Validate the inputs stored as they come (dead-lettering bad messages) and store
        promoters, exclusions, exchange rates and review decisions, their personal data hashed."""
        now = int(time.time() * 1000)
        records: list[Sourced] = []
        for ev in events:
            msg = ev.message
            self.metrics.events_in.labels(msg.topic).inc()
            event = self.reference.read(self.topology.name_of(msg.topic), msg.value, now)
            if isinstance(event, Invalid):
                await dead_letters.invalid(event.reason, msg)
            elif event is not None:
                records.append((event, source_of(msg)))
        return self._finish(events, await self._write(records))

    async def _write(self, items: list[Sourced]) -> bool:
        """Write `items`, retrying until ClickHouse takes them (rows it refuses dead-lettered);
        False if the worker stops first."""
        if not items:
            return True
        built = build_rows(items)

        async def attempt() -> None:
            try:
                writer = await self._writer()
                refused = await asyncio.to_thread(writer.write, built.rows)
                letters = self._letters(items, built, refused)
                lost: list[Refused] = []
                if letters:
                    rows = {"dead_letters": [dead_letter_row(d) for d in letters]}
                    lost = await asyncio.to_thread(writer.write, rows)
                if self.failing_since is not None:
                    after_s = round(time.monotonic() - self.failing_since, 1)
                    log.info("clickhouse writes recovered", extra={"after_s": after_s})
                    self.failing_since = None
                self._report(built, refused, letters, lost)
            except Exception:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                raise

        def failed(exc: Exception, delay: float) -> None:
            log.warning("clickhouse write failed, retrying", extra={"error": repr(exc), "retry_in_s": delay})

        try:  # an outage: keep the batch, never ack it, retry until ClickHouse is back
            await retrying(attempt, BACKOFF, on_retry=failed, stopping=self.stopping)
        except Stopped:
            return False
        return True

    def _letters(self, items: list[Sourced], built: BuiltRows, refused: list[Refused]) -> list[DeadLetter]:
        """One dead letter per message with refused rows (see `refused_letter`)."""
        failed = [(built.origin[r.table][r.index], r.table, r.error) for r in refused] + built.unbuilt
        by_source: dict[Source, list[tuple[str, str, Any]]] = {}
        for n, table, error in sorted(failed, key=lambda f: f[0]):
            record, source = items[n]
            by_source.setdefault(source, []).append((table, error, record))
        at = int(time.time() * 1000)
        salt = self.settings.pii_salt.encode()
        return [refused_letter(source, refusals, at, salt) for source, refusals in by_source.items()]

    def _report(self, built: BuiltRows, refused: list[Refused], letters: list[DeadLetter], lost: list[Refused]) -> None:
        """Count and log (once per batch) the rows ClickHouse refused, and any dead letter it
        refused too: that one is only logged, with its digest, never retried."""
        tables = Counter(r.table for r in refused) + Counter(t for _, t, _ in built.unbuilt)
        if tables:
            for table, n in tables.items():
                self.metrics.sink_rejected_rows.labels(table or "unknown").inc(n)
            self.rows_refused.update(tables)
            first = refused[0].error if refused else built.unbuilt[0][2]
            log.warning("clickhouse refused rows, dead-lettered", extra={
                "rows": sum(tables.values()), "tables": dict(tables), "dead_letters": len(letters),
                "error": first})
        if lost:
            self.metrics.sink_rejected_rows.labels("dead_letters").inc(len(lost))
            self.rows_refused["dead_letters"] += len(lost)
            dropped = [(letters[r.index], r.error) for r in lost[:20]]
            log.error("clickhouse refused dead letters too: dropped, only this log keeps them", extra={
                "count": len(lost), "dropped": [
                    {"topic": d.topic, "partition": d.partition, "offset": d.offset, "value_bytes": d.value_bytes,
                     "value_sha256": d.value_sha256, "error": error} for d, error in dropped]})

    async def _writer(self) -> ClickHouseWriter:
        """The ClickHouse writer, opened (and the schema migrated) on first use."""
        if self.writer is None:
            async with self._opening:  # concurrent first users open one client
                if self.writer is None:
                    self.writer = await asyncio.to_thread(self._open)
        return self.writer

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run the query `fn(client)` on the sink's ClickHouse client: chdb allows one process
        per directory, so every reader in the worker (stats API, `/counts`, spike alerts)
        shares this client (see `_on_client`)."""
        return await self._on_client(fn)

    async def write_alerts(self, alerts: Sequence[AlertFields]) -> None:
        """Insert spike alerts into the `alerts` table. They come from the spike watch, not
        from Kafka, so they bypass the batches, their retries and their dead letters: a
        failure raises and the watch redoes its poll."""
        await self._on_client(lambda client: write_alerts(client, alerts))

    async def _on_client(self, fn: Callable[[Any], T]) -> T:
        """`fn(client)` on the sink's client (opened and migrated on first use), in a thread,
        holding the writer's lock, as the batches' writes do."""
        writer = await self._writer()

        def call() -> T:
            with writer.lock:
                return fn(writer.client)

        return await asyncio.to_thread(call)

    async def counts(self) -> dict[str, int]:
        """Distinct rows per table, read back from ClickHouse (a chdb directory allows one process)."""
        from sinks import queries

        return await self.read(queries.counts)

    def stats(self) -> dict[str, Any]:
        return {"rows_written": dict(self.rows_written), "rows_refused": dict(self.rows_refused),
                "failing": self.failing_since is not None}
