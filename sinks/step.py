"""The worker's ClickHouse step: decode what the pipeline produced and write it in batches.

Faust acks a buffer only after `write` returns, and commits offsets only after acks, so
offsets are committed after ClickHouse acknowledged. Tables are idempotent, so a batch
redelivered after a crash adds no rows to the views. While ClickHouse is unavailable the
step waits and retries (with backoff, logged and counted) instead of dropping anything.

On shutdown (SIGTERM) Faust stops fetching and waits until the buffers already taken are
written and acked, then commits. If ClickHouse fails while the worker stops, the step
gives up instead of retrying until it is killed: the buffer is reported unwritten, the
commit guard (streams.commits) keeps its offsets (and every later one) uncommitted, the
next run writes them, and the worker exits with EXIT_UNDRAINED.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Callable, Iterable, TypeVar

import msgspec

from schemas.events import Exclusion, Promoter
from schemas.records import AttributionRec, DeadLetter, LateEvent, batch_decoder, conversion_decoder
from schemas.validate import Invalid, decode
from sinks.clickhouse import ClickHouseWriter, connect, redact
from sinks.rows import rows_for
from sinks.schema import migrate
from sinks.tables import spam_codes_sql
from streams.rules.ruleset import load_rules
from streams.config import Settings
from streams.metrics import Metrics

log = logging.getLogger(__name__)
_late = msgspec.json.Decoder(LateEvent)
_dead = msgspec.json.Decoder(DeadLetter)
MAX_BACKOFF_S = 30.0
EXIT_UNDRAINED = 75  # EX_TEMPFAIL: stopped during a ClickHouse outage, without draining
T = TypeVar("T")


class SinkStep:
    def __init__(self, settings: Settings, metrics: Metrics, stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stopping = stopping  # true once the worker shuts down: stop retrying
        self.writer: ClickHouseWriter | None = None
        self.rows_written: Counter[str] = Counter()
        self.failing_since: float | None = None
        self.undrained = False  # stopped with batches ClickHouse did not take (left uncommitted)
        self.handled: dict[str, int] = {}  # "topic/partition" -> next offset; written (or empty) and acked
        self._opening = asyncio.Lock()  # concurrent first readers open one client
        n = len(settings.topic_prefix)
        self._kind = lambda topic: topic[n:]

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
        rules = load_rules(self.settings.rules_file).rule_sets[-1]  # the newest thresholds
        spam = spam_codes_sql(rules.spam_min_signups, rules.spam_long_share, rules.spam_long_delay_ms)
        client.command(f"CREATE OR REPLACE VIEW spam_codes AS {spam}")
        log.info("clickhouse ready", extra={"dsn": redact(self.settings.clickhouse), "migrated": applied})
        return ClickHouseWriter(client, on_batch=self._on_batch, on_failure=self._on_failure)

    def records(self, events: Iterable[Any]) -> list:
        """Decode sink input events into records (attributions versioned by position)."""
        out: list = []
        for ev in events:
            msg = ev.message
            kind = self._kind(msg.topic)
            if kind in ("visitor-join", "account-join"):
                for i, rec in enumerate(batch_decoder.decode(msg.value).records):
                    out.append((msg.offset * 100_000 + i, rec) if isinstance(rec, AttributionRec) else rec)
            elif kind == "conversions":
                out.append(conversion_decoder.decode(msg.value))
            elif kind == "late-events":
                out.append(_late.decode(msg.value))
            elif kind == "dead-letters":
                out.append(_dead.decode(msg.value))
        return out

    async def write(self, events: list[Any]) -> bool:
        """Write one buffer of sink input events; False if the worker stopped before
        ClickHouse took them (then they must not count as done)."""
        return self._finish(events, await self._write(self.records(events)))

    async def connect(self) -> None:
        """Open ClickHouse and apply the migrations, retrying with backoff (the sink's readiness)."""
        backoff = 0.5
        while self.writer is None and not self.stopping():
            try:
                await self._writer()
            except Exception as exc:
                log.warning("clickhouse unavailable, retrying", extra={"error": repr(exc), "retry_in_s": backoff})
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

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

    async def write_reference(self, events: list[Any], router: Any) -> bool:
        """Validate reference data (dead-lettering bad messages) and store promoters and exclusions."""
        now = int(time.time() * 1000)
        max_future = int(self.settings.max_future_s * 1000)
        records = []
        for ev in events:
            msg = ev.message
            self.metrics.events_in.labels(msg.topic).inc()
            if msg.value is None:
                continue  # a compaction tombstone on a reference topic is not an error
            event = decode(self._kind(msg.topic), msg.value, now, max_future)
            if isinstance(event, Invalid):
                await router.dead_letter(event.reason, msg)
            elif isinstance(event, Promoter):
                records.append(msgspec.structs.replace(event, ip=router.hash(event.ip)))  # never in clear
            elif isinstance(event, Exclusion):
                records.append(event)
        return self._finish(events, await self._write(records))

    async def _write(self, records: list) -> bool:
        """Write `records`, retrying until ClickHouse takes them; False if the worker stops first."""
        if not records:
            return True
        rows = rows_for(records)
        backoff = 0.5
        while True:
            try:
                writer = await self._writer()
                await asyncio.to_thread(writer.write, rows)
                if self.failing_since is not None:
                    log.info("clickhouse writes recovered", extra={"after_s": round(time.monotonic() - self.failing_since, 1)})
                    self.failing_since = None
                return True
            except Exception as exc:  # keep the batch, never ack it: retry until ClickHouse is back
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if self.stopping():
                    return False
                log.warning("clickhouse write failed, retrying", extra={"error": repr(exc), "retry_in_s": backoff})
                if not await self._pause(backoff):
                    return False
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _pause(self, seconds: float) -> bool:
        """Sleep, waking early when the worker stops; False if it does."""
        deadline = time.monotonic() + seconds
        while not self.stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.2))
        return False

    async def _writer(self) -> ClickHouseWriter:
        """The ClickHouse writer, opened (and the schema migrated) on first use."""
        if self.writer is None:
            async with self._opening:  # concurrent first users open one client
                if self.writer is None:
                    self.writer = await asyncio.to_thread(self._open)
        return self.writer

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)` on the sink's ClickHouse client (opened and migrated on first use),
        in a thread, holding the writer's lock: chdb allows one process per directory, so
        every reader in the worker (stats API, spike alerts) shares this client."""
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
        return {"rows_written": dict(self.rows_written), "failing": self.failing_since is not None}
