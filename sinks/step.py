"""The worker's ClickHouse step: decode what the pipeline produced and write it in batches.

Faust acks a buffer only after `write` returns, and commits offsets only after acks, so
offsets are committed after ClickHouse acknowledged. Tables are idempotent, so a batch
redelivered after a crash adds no rows to the views. While ClickHouse is unavailable the
step waits and retries (with backoff, logged and counted) instead of dropping anything.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Iterable

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


class SinkStep:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.writer: ClickHouseWriter | None = None
        self.rows_written: Counter[str] = Counter()
        self.failing_since: float | None = None
        n = len(settings.topic_prefix)
        self._kind = lambda topic: topic[n:]

    def _on_batch(self, table: str, rows: int, seconds: float) -> None:
        self.metrics.sink_rows.labels(table).inc(rows)
        self.metrics.sink_seconds.labels(table).observe(seconds)
        self.rows_written[table] += rows

    def _on_failure(self, table: str, exc: BaseException) -> None:
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

    async def write(self, events: Iterable[Any]) -> None:
        await self._write(self.records(events))

    async def write_reference(self, events: Iterable[Any], router: Any) -> None:
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
        await self._write(records)

    async def _write(self, records: list) -> None:
        if not records:
            return
        rows = rows_for(records)
        backoff = 0.5
        while True:
            try:
                if self.writer is None:
                    self.writer = await asyncio.to_thread(self._open)
                await asyncio.to_thread(self.writer.write, rows)
                if self.failing_since is not None:
                    log.info("clickhouse writes recovered", extra={"after_s": round(time.monotonic() - self.failing_since, 1)})
                    self.failing_since = None
                return
            except Exception as exc:  # keep the batch, never ack it: retry until ClickHouse is back
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning("clickhouse write failed, retrying", extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def counts(self) -> dict[str, int]:
        """Distinct rows per table, read back from ClickHouse (a chdb directory allows one process)."""
        from sinks import queries

        if self.writer is None:
            self.writer = await asyncio.to_thread(self._open)
        writer = self.writer

        def read() -> dict[str, int]:
            with writer.lock:
                return queries.counts(writer.client)

        return await asyncio.to_thread(read)

    def stats(self) -> dict[str, Any]:
        return {"rows_written": dict(self.rows_written), "failing": self.failing_since is not None}
