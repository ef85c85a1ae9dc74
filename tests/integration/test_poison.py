"""Poison pills on the real stack: no single message may stop the pipeline (issue 11).

One worker on one partition per topic, so a message that wedged anything would hold up
everything after it. Each family of pills is followed by a clean click, signup and order;
at the end the worker must never have restarted, every pill must be in `dead_letters` with
its reason (or stored, when valid) and every clean order must be a conversion.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field

import pytest

from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
MIN, H, DAY = 60_000, 3_600_000, 86_400_000


@dataclass
class Pill:
    name: str
    messages: list[tuple[str, bytes | None, bytes]]
    reason: str | None = None  # a substring of every pill message's dead-letter reason; None: valid
    stored: dict[str, int] = field(default_factory=dict)  # valid pills: table -> rows they add


def clean(i: int, t0: int) -> list[tuple[str, bytes | None, bytes]]:
    """A click, signup and paid order that must become conversion `clean-o{i}`."""
    ts = t0 + i * MIN
    return [
        ("clicks", None, event(event_id=f"clean-c{i}", ts=ts, tracking_code="T-CLEAN", visitor_id=f"clean-v{i}")),
        ("signups", None, event(event_id=f"clean-s{i}", ts=ts + 20_000, account_id=f"clean-a{i}",
                                visitor_id=f"clean-v{i}")),
        ("orders", None, event(event_id=f"clean-o{i}-paid", ts=ts + 40_000, order_id=f"clean-o{i}",
                               account_id=f"clean-a{i}", product="db", amount="10.00", currency="USD", status="paid")),
    ]


def pills(t0: int) -> list[Pill]:
    rnd = random.Random(11)
    nested = b'{"a":' * 1000 + b"1" + b"}" * 1000
    month = [f"199{y}-{m:02d}-15T12:00:00Z" for y in range(10) for m in range(1, 13)]
    order = {"product": "db", "currency": "USD", "status": "paid"}
    return [
        Pill("deep nesting", [("clicks", None, nested), ("promoters", None, nested), ("exclusions", None, nested),
                              ("clicks", None, b'{"event_id":"n","x":' + b"[" * 3000 + b"]" * 3000 + b"}")],
             "nested too deeply"),
        Pill("a click flood from one visitor, 1 KB URLs",
             [("clicks", b"flood-v", event(event_id=f"flood-{i}", ts=t0 - H + i, tracking_code="T-CLEAN",
                                           visitor_id="flood-v", url="https://x.example/?" + "q" * 1000))
              for i in range(4000)], stored={"clicks": 4000}),
        Pill("900 KB of random bytes", [("clicks", None, rnd.randbytes(900_000))], "message too large"),
        Pill("900 KB of \\x01 with a 90 KB key", [("clicks", b"k" * 90_000, b"\x01" * 900_000)], "message too large"),
        Pill("a 60,000-letter event_id (the quadratic scrub)",
             [("clicks", None, event(event_id="a" * 60_000, ts=t0, tracking_code="T", visitor_id="v"))],
             "event_id must be 1 to 128"),
        Pill("120 clicks, one per month of the 1990s",
             [("clicks", None, event(event_id=f"old-{m}", ts=m, tracking_code="T-OLD", visitor_id="old-v"))
              for m in month], stored={"clicks": 120}),
        Pill("out-of-range reference times",
             [("promoters", None, event(event_id="p-huge", ts=t0, promoter_id="P-H", tracking_code="T-H",
                                        joined_at=99000000000000000000000)),
              ("exclusions", None, event(event_id="x-huge", ts=t0, account_id="a-h", owner="direct_sales",
                                         since=2**63))], "in the future"),
        Pill("numbers at their limits",
             [("orders", None, event(event_id="lim-1", ts=2**63 - 1, order_id="lim", account_id="lim", amount="1",
                                     **order)),
              ("orders", None, event(event_id="lim-2", ts=t0, order_id="lim", account_id="lim",
                                     amount="100000000000000", **order)),
              ("promoters", None, event(event_id="lim-3", ts=t0, promoter_id="P-L", tracking_code="T-L",
                                        level=2**63)),
              ("clicks", None, event(event_id="lim-4", ts=-(2**63), tracking_code="T", visitor_id="v"))],
             "must"),
        Pill("the largest valid amount", [("orders", None, event(
            event_id="max-1", ts=t0, order_id="max", account_id="max-a", amount="99999999999999.9999", **order))],
            stored={"orders": 1}),
        Pill("e-mail addresses in clear",
             [("signups", None, event(event_id="pii-1", ts=t0, account_id="a", visitor_id="v",
                                      email_domain="dave@example.com")),
              ("exclusions", None, event(event_id="pii-2", ts=t0, email_domain="ceo@bigcorp.com",
                                         owner="direct_sales"))], "domain"),
        # after every clean event, so never late: they must reach the visitor join
        Pill("20,000 signups of one visitor (its join state fills up)",
             [("signups", None, event(event_id=f"farm-{i}", ts=t0 + 30 * MIN + i, account_id=f"farm-a{i}",
                                      visitor_id="farm-v", device_id="d" * 128, email_hash="ab" * 64))
              for i in range(20_000)], stored={"signups": 20_000}),
    ]


def test_no_single_message_stops_the_pipeline(stack, topic_prefix, tmp_path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=1)
    t0 = (int(time.time() * 1000) - 2 * DAY) // H * H
    cases = pills(t0)
    try:
        worker = p.start_worker()
        p.produce([("promoters", b"T-CLEAN", event(event_id="p-clean", ts=t0 - DAY, promoter_id="P-CLEAN",
                                                  tracking_code="T-CLEAN", level=2))])
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 1, 60, "promoter loaded")
        for i, pill in enumerate(cases):
            p.produce(pill.messages + clean(i, t0))
        p.wait(lambda: (p.get("/counts") or {}).get("conversions_current") == len(cases), 300,
               f"{len(cases)} clean conversions behind the pills")
        assert worker.poll() is None, "the worker stopped"
        health = p.get("/health")
        assert health and not health["sink"]["failing"], health
        settled = {"n": -1, "since": 0.0}

        def letters_settled() -> bool:  # the refused farm signups come after the last conversion
            n = (p.get("/counts") or {}).get("dead_letters", 0)
            if n != settled["n"]:
                settled.update(n=n, since=time.monotonic())
            return n > 15 and time.monotonic() - settled["since"] > 5
        p.wait(letters_settled, 120, "dead letters written")
    finally:
        p.stop_workers()
    log = "".join((tmp_path / f).read_text() for f in os.listdir(tmp_path) if f.startswith("worker-"))
    assert "Traceback" not in log and "crashed" not in log, log[-3000:]

    conversions = {r["order_id"]: r for r in p.query("SELECT order_id, status FROM conversions_current")}
    assert set(conversions) == {f"clean-o{i}" for i in range(len(cases))}
    letters = p.query("SELECT topic, `offset`, reason, value_bytes, truncated, length(value) AS n FROM dead_letters FINAL")
    assert all(r["n"] <= 4096 * 4 for r in letters)  # a dead letter keeps the head of its message
    for pill in cases:
        if pill.reason is None:
            continue
        mine = [r for r in letters if any(pill.reason in r["reason"] for _ in [0])]
        assert len(mine) >= len(pill.messages), (pill.name, [r["reason"][:80] for r in letters])
    too_large = [r for r in letters if "too large" in r["reason"]]
    assert {r["value_bytes"] for r in too_large} == {900_000} and all(r["truncated"] for r in too_large)
    state_full = [r for r in letters if "join state of" in r["reason"]]
    assert state_full, "20,000 signups of one visitor must fill its join state"

    counts = {r["t"]: int(r["n"]) for r in p.query(
        "SELECT 'clicks' AS t, uniqExact(event_id) AS n FROM clicks UNION ALL "
        "SELECT 'signups', uniqExact(event_id) FROM signups UNION ALL "
        "SELECT 'orders', uniqExact(event_id) FROM orders")}
    stored = {t: sum(pill.stored.get(t, 0) for pill in cases) + len(cases) for t in ("clicks", "signups", "orders")}
    assert counts == stored, (counts, stored)
    old = p.query("SELECT count() AS n, uniqExact(toYYYYMM(ts)) AS months FROM clicks FINAL WHERE event_id LIKE 'old-%'")
    assert old == [{"n": 120, "months": 120}]
    clear = p.query("SELECT count() AS n FROM signups WHERE email_domain LIKE '%@%' OR email_hash LIKE '%@%'")
    assert clear == [{"n": 0}]
    assert json.dumps(letters).count("dave@example.com") == 0
