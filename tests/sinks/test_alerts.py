"""The spike alerts' ClickHouse side on a real chdb: the counts the detector is fed (distinct
clicks and attributed signups per code and bucket, the codes' owners) and the `alerts` rows."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from schemas.events import Promoter
from schemas.records import AttributionRec, ClickRec, ClickRef
from schemas.units import HOUR_MS, MINUTE_MS
from sinks.alerts import BucketCount, alert_row, read_counts, write_alerts
from sinks.clickhouse import ClickHouseWriter, connect, rows_as_dicts
from sinks.migrations import migrate
from streams.logic.spike import Alert
from tests.sinks import write_records

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
B = 5 * MINUTE_MS


@pytest.fixture(scope="module")
def db(engine: tuple[str, Any]) -> Iterator[Any]:
    dsn, admin = engine
    admin.command("DROP DATABASE IF EXISTS spikes")
    admin.command("CREATE DATABASE spikes")
    client = connect(dsn, database="spikes")
    migrate(client)
    write_records(ClickHouseWriter(client), [
        Promoter(event_id="p1", ts=T0 - 1, promoter_id="P1", tracking_code="A"),
        ClickRec("c1", T0 + 10, "v1", "A"), ClickRec("c1", T0 + 10, "v1", "A"),  # a redelivered click
        ClickRec("c2", T0 + 20, "v2", "A"), ClickRec("c3", T0 + B + 5, "v3", "B"),
        ClickRec("c0", T0 - 7 * HOUR_MS, "v0", "A"),  # older than the backfill
        ClickRec("c4", T0 + 30, "v4", ""),  # no code: not counted
        (1, AttributionRec("a1", "s1", T0 + 40, "v1", ClickRef("c1", T0 + 10, "A"))),
        (2, AttributionRec("a1", "s1", T0 + 40, "v1", ClickRef("c1", T0 + 10, "A"), final=True)),  # same signup
    ])
    yield client
    client.close()


def test_counts_are_distinct_per_code_and_bucket_with_the_owners(db: Any) -> None:
    rows, owners = read_counts(db, T0, B, backfill_ms=6 * HOUR_MS)
    assert sorted(rows) == [
        BucketCount("A", T0, 1, T0 + 40, T0 + 40),  # the signup
        BucketCount("A", T0, 2, T0 + 10, T0 + 20),  # two distinct clicks of three messages
        BucketCount("B", T0 + B, 1, T0 + B + 5, T0 + B + 5),
    ]
    assert owners == {"A": "P1"}


def test_a_fresh_start_reads_the_backfill_before_the_newest_click(db: Any) -> None:
    rows, _ = read_counts(db, None, B, backfill_ms=6 * HOUR_MS)
    assert {r.bucket for r in rows} == {T0, T0 + B}  # from 6 h before the newest click: not c0
    assert read_counts(db, T0 + HOUR_MS, B, backfill_ms=0) == ([], {})


def test_alerts_are_stored_one_row_per_kind_key_and_bucket(db: Any) -> None:
    first = Alert("promoter", "P1", T0, 40, 2.5, 7.0, T0 + 10, T0 + 60, early=True)
    again = Alert("promoter", "P1", T0, 50, 2.5, 9.0, T0 + 10, T0 + 90, early=False)  # a later detection
    assert alert_row(first) == ("promoter", "P1", T0, 40, 2.5, 7.0, T0 + 10, T0 + 60)
    write_alerts(db, [first])
    write_alerts(db, [again])
    write_alerts(db, [])
    rows = rows_as_dicts(db.query("SELECT kind, key, observed, score FROM alerts FINAL"))
    assert rows == [{"kind": "promoter", "key": "P1", "observed": 50, "score": 9.0}]
