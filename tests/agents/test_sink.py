"""The sink step owns the retries: outages are waited out, refused rows dead-lettered.

Real chdb (the step opens and migrates it itself, in the engine's `default` database);
the Faust events are plain objects with the message fields the step reads.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas.events import MODELS, Promoter
from schemas.records import Batch, ClickRec, Conversion, DeadLetter, LateEvent, SignupRec, batch_encoder, json_encoder
from sinks.clickhouse import rows_as_dicts
from sinks.tables import TABLES, quote
from streams.agents.outputs import DeadLetters
from streams.agents.sink import REFUSED, SinkStep, record_json
from streams.config import Settings
from streams.logic.privacy import DEAD_LETTER_HEAD
from streams.metrics import Metrics
from tests.sinks import HUGE, NINETIES, T0

TS_ERROR = "Unable to create native array for column `ts`: error (struct.error: argument out of range)"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Event:
    message: Message


def event(topic: str, partition: int, offset: int, value: bytes, key: bytes | None = None) -> Event:
    return Event(Message(topic, partition, offset, key, value))


def join_batch(*records: Any) -> bytes:
    return batch_encoder.encode(Batch(list(records), {}))


def conversion(order_id: str, **kw: Any) -> Conversion:
    base = dict(
        order_id=order_id, revision=1, status="approved", reasons=[], promoter_id="P1", tracking_code="T1",
        campaign="", account_id="a1", visitor_id="v1", click_event_id="c1", click_ts=T0, signup_event_id="s1",
        signup_ts=T0, order_event_id="e-" + order_id, order_ts=T0, cart_id="", product="pro", category="",
        amount=Decimal("10"), discount=Decimal(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=T0,
    )
    base.update(kw)
    return Conversion(**base)


class Clock:
    """`stopping` for the step: true once `seconds` passed since `start`."""

    def __init__(self) -> None:
        self.deadline = float("inf")

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self) -> bool:
        return time.monotonic() > self.deadline


@pytest.fixture
def make_step(engine):
    """SinkStep(settings, Metrics()) on the module's chdb (its own client, as in the worker);
    the tables are emptied first, the step's client closed after."""
    dsn, admin = engine
    for table in TABLES:
        admin.command(f"TRUNCATE TABLE IF EXISTS default.{quote(table)}")
    steps: list[SinkStep] = []

    def make(clock: Clock | None = None, **settings: Any) -> SinkStep:
        step = SinkStep(Settings(**{"clickhouse_dsn": dsn, **settings}), Metrics(), stopping=clock or Clock())
        steps.append(step)
        return step

    yield make
    for step in steps:
        if step.writer is not None:
            step.writer.client.close()


def rejected(step: SinkStep, table: str) -> float:
    return step.metrics.registry.get_sample_value("refstream_sink_rejected_rows_total", {"table": table})


def letters(client: Any) -> dict[tuple[str, int, int], dict[str, Any]]:
    result = client.query("SELECT * FROM dead_letters FINAL ORDER BY topic, `partition`, `offset`")
    return {(r["topic"], r["partition"], r["offset"]): r for r in rows_as_dicts(result)}


def test_refused_rows_are_dead_lettered_and_the_rest_is_written(make_step, engine, caplog):
    admin = engine[1]
    step = make_step()
    bad = ClickRec("c-bad", 2**64 - 1, "v1", "T1")  # msgpack (join batches) carries at most uint64
    long_bad = ClickRec("c-long", 2**63, "v1", "T1", url="https://x.example/" + "a" * 10_000)
    dead = DeadLetter(reason="bad json", topic="clicks", partition=0, offset=2**63, key=None, value="{", at=T0)
    events = [
        event("visitor-join", 0, 7, join_batch(
            ClickRec("c1", T0, "v1", "T1"), bad, SignupRec("s1", T0, "a1", "v1"),
            *[ClickRec(f"m{i}", ts, "v2", "T2") for i, ts in enumerate(NINETIES)])),  # 120 months: all land
        event("visitor-join", 1, 3, join_batch(long_bad, ClickRec("c2", T0, "v1", "T1"), bad)),
        event("conversions", 2, 11, json_encoder.encode(conversion("o-bad", amount=Decimal("1e30"))), key=b"o-bad"),
        event("conversions", 2, 12, json_encoder.encode(conversion("o-ok")), key=b"o-ok"),
        event("dead-letters", 0, 5, json_encoder.encode(dead), key=b"k"),
        event("late-events", 0, 1, json_encoder.encode(LateEvent(
            kind="click", event_id="c9", ts=T0, watermark=T0 + 9, lateness_ms=9, join="visitor", source="clicks/0/9",
            key="v1"))),
    ]
    with caplog.at_level(logging.WARNING, logger="streams.agents.sink"):
        assert asyncio.run(step.write(events)) is True
    counts = dict(admin.query(
        "SELECT 'clicks', uniqExact(event_id) FROM clicks UNION ALL SELECT 'signups', count() FROM signups "
        "UNION ALL SELECT 'conversions', count() FROM conversions_current "
        "UNION ALL SELECT 'late_events', count() FROM late_events").result_rows)
    assert counts == {"clicks": 122, "signups": 1, "conversions": 1, "late_events": 1}
    got = letters(admin)
    assert set(got) == {("visitor-join", 0, 7), ("visitor-join", 1, 3), ("conversions", 2, 11), ("dead-letters", 0, 5)}

    one = got["visitor-join", 0, 7]
    assert one["reason"] == f"{REFUSED} clicks: {TS_ERROR}" and one["key"] == ""
    assert msgspec.json.decode(one["value"]) == {**msgspec.structs.asdict(bad)}
    assert one["value_sha256"] == hashlib.sha256(record_json(bad)).hexdigest() and not one["truncated"]

    two = got["visitor-join", 1, 3]  # two refused rows of one message: one letter, nothing collapses
    assert two["reason"] == f"{REFUSED} clicks: {TS_ERROR} (and 1 more refused rows of this message)"
    assert two["truncated"] and len(two["value"]) <= DEAD_LETTER_HEAD and two["value_bytes"] > 10_000
    assert two["value"].startswith('[{"table":"clicks","error":"Unable to create native array')

    assert got["conversions", 2, 11]["reason"].startswith(f"{REFUSED} conversions: ")
    assert "column `amount`" in got["conversions", 2, 11]["reason"] and got["conversions", 2, 11]["key"] == "o-bad"
    assert "column `offset`" in got["dead-letters", 0, 5]["reason"]  # a dead letter ClickHouse refused
    assert {t: rejected(step, t) for t in ("clicks", "conversions", "dead_letters", "orders")} == {
        "clicks": 3, "conversions": 1, "dead_letters": 1, "orders": 0}
    assert step.stats()["rows_refused"] == {"clicks": 3, "conversions": 1, "dead_letters": 1}
    assert step.stats()["failing"] is False
    assert step.handled == {"visitor-join/0": 8, "visitor-join/1": 4, "conversions/2": 13, "dead-letters/0": 6,
                            "late-events/0": 2}  # all acked
    assert [r.getMessage() for r in caplog.records] == ["clickhouse refused rows, dead-lettered"]  # once per batch
    assert step.metrics.registry.get_sample_value("refstream_sink_failures_total", {"table": "clicks"}) is None

    assert asyncio.run(step.write(events)) is True  # redelivered: the same letters, no more rows
    assert len(letters(admin)) == 4


def test_a_refused_dead_letter_is_logged_with_its_digest_and_dropped(make_step, engine, caplog):
    """The letter itself cannot be stored (offset beyond Int64: not a real Kafka offset, but
    any refusal): logged with its digest and counted, never retried."""
    step = make_step()
    events = [event("conversions", 0, 2**63, json_encoder.encode(conversion("o-bad", amount=Decimal("1e30"))))]
    with caplog.at_level(logging.WARNING, logger="streams.agents.sink"):
        assert asyncio.run(step.write(events)) is True
    assert letters(engine[1]) == {}
    assert rejected(step, "conversions") == 1 and rejected(step, "dead_letters") == 1
    [dropped] = [r for r in caplog.records if r.getMessage().startswith("clickhouse refused dead letters too")]
    [entry] = dropped.dropped
    assert entry["offset"] == 2**63 and len(entry["value_sha256"]) == 64 and "column `offset`" in entry["error"]


def test_reference_rows_clickhouse_refuses_are_dead_lettered(make_step, engine, monkeypatch):
    """Defect 6 in the reference writer: even a promoter that validation let through
    (here: a validator that checks nothing) cannot wedge it."""
    monkeypatch.setattr("streams.logic.reference.decode", lambda kind, raw, now, future, *limit: msgspec.json.decode(raw, type=MODELS[kind]))
    step = make_step()
    sent: list = []
    topics = SimpleNamespace(dead_letters=SimpleNamespace(send=lambda **kw: sent.append(kw)))
    dead_letters = DeadLetters(topics.dead_letters, step.metrics, b"salt")
    promoters = [Promoter(event_id="p1", ts=T0, promoter_id="P1", tracking_code="T1"),
                 Promoter(event_id="p2", ts=T0, promoter_id="P2", tracking_code="T2", joined_at=HUGE)]
    events = [event("promoters", 0, 40 + i, json_encoder.encode(p), key=p.tracking_code.encode())
              for i, p in enumerate(promoters)]
    assert asyncio.run(step.write_reference(events, dead_letters)) is True
    admin = engine[1]
    assert admin.query("SELECT promoter_id FROM promoters").result_rows == [("P1",)]
    [letter] = letters(admin).values()
    assert (letter["topic"], letter["partition"], letter["offset"], letter["key"]) == ("promoters", 0, 41, "T2")
    assert letter["reason"].startswith(f"{REFUSED} promoters: ") and "column `joined_at`" in letter["reason"]
    assert msgspec.json.decode(letter["value"])["joined_at"] == HUGE
    assert rejected(step, "promoters") == 1 and step.handled == {"promoters/0": 42} and sent == []


def test_an_outage_is_retried_not_dead_lettered(make_step, engine, caplog):
    admin = engine[1]
    clock = Clock()
    step = make_step(clock)
    asyncio.run(step.connect())
    admin.command("DETACH TABLE default.clicks")
    events = [event("visitor-join", 0, 1, join_batch(ClickRec("c1", T0, "v1", "T1"), ClickRec("c-bad", 2**63, "v", "T")))]
    try:
        clock.start(1.2)
        with caplog.at_level(logging.INFO, logger="streams.agents.sink"):
            assert asyncio.run(step.write(events)) is False  # stopped during the outage: not acked
    finally:
        admin.command("ATTACH TABLE default.clicks")
    assert step.undrained and step.handled == {} and step.stats()["failing"] is True
    assert step.metrics.registry.get_sample_value("refstream_sink_failures_total", {"table": "clicks"}) >= 2
    assert rejected(step, "clicks") == 0 and letters(admin) == {}
    assert len([r for r in caplog.records if r.getMessage() == "clickhouse write failed, retrying"]) >= 2

    clock.deadline = float("inf")  # ClickHouse is back: the same buffer goes through
    with caplog.at_level(logging.INFO, logger="streams.agents.sink"):
        assert asyncio.run(step.write(events)) is True
    assert "clickhouse writes recovered" in [r.getMessage() for r in caplog.records]
    assert step.stats()["failing"] is False and rejected(step, "clicks") == 1
    assert admin.query("SELECT event_id FROM clicks").result_rows == [("c1",)]
    assert list(letters(admin)) == [("visitor-join", 0, 1)]


def test_an_unreachable_server_is_retried(make_step):
    clock = Clock()
    step = make_step(clock, clickhouse_dsn="http://default:s3cret@127.0.0.1:1/refstream")
    clock.start(1.0)
    started = time.monotonic()
    assert asyncio.run(step.write([event("conversions", 0, 1, json_encoder.encode(conversion("o1")))])) is False
    assert time.monotonic() - started < 5
    assert step.writer is None and step.undrained and step.stats()["failing"] is True
    assert rejected(step, "conversions") == 0
