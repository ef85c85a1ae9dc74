"""Review decisions through the real stack: the `reviews` topic is validated (bad decisions
dead-lettered), stored in ClickHouse with personal data hashed, and applied in
`conversions_current` whatever order decisions and orders arrive in."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

from streams.config import Settings
from streams.logic.privacy import hash_pii
from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
H = 3_600_000
MIN = 60_000
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def customer(i: int, t0: int, amount: int) -> list[tuple[str, dict]]:
    """A click on T-REV, a signup 20 minutes later and a paid order an hour after that."""
    ts = t0 + i * MIN
    return [
        ("clicks", dict(event_id=f"c-{i}", ts=ts, tracking_code="T-REV", visitor_id=f"v-{i}",
                        ip=f"203.0.113.{i}", user_agent=CHROME)),
        ("signups", dict(event_id=f"s-{i}", ts=ts + 20 * MIN, account_id=f"acc-{i}", visitor_id=f"v-{i}",
                         ip=f"198.18.0.{i}")),
        ("orders", dict(event_id=f"o-{i}", ts=ts + 80 * MIN, order_id=f"o-{i}", account_id=f"acc-{i}",
                        product="db-pro", amount=amount, currency="USD", status="paid")),
    ]


def review(eid: str, ts: int, decision: str, reason: str = "", **subject: str) -> tuple[str, dict]:
    return ("reviews", dict(event_id=eid, ts=ts, decision=decision, reason=reason, actor="pm-0042", **subject))


def encode(items: list[tuple[str, dict]]) -> list[tuple[str, bytes | None, bytes]]:
    """Reviews keyed by their order (as docs/events.md recommends), the rest unkeyed."""
    def key(topic: str, fields: dict) -> bytes | None:
        return fields["order_id"].encode() if topic == "reviews" and "order_id" in fields else None

    return [(topic, key(topic, fields), event(**fields)) for topic, fields in items]


def test_reviews_are_stored_and_applied(stack, topic_prefix, tmp_path) -> None:
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=2, allowed_lateness_s=2 * 3600)
    t0 = (int(time.time() * 1000) - 10 * 24 * H) // (24 * H) * (24 * H) + H
    decided = t0 + 3 * H  # after every order
    salt = Settings.from_env(p.env).pii_salt.encode()
    held, approved, early = customer(0, t0, 60_000), customer(1, t0, 100), customer(2, t0, 100)
    reviews = [
        review("r-held", decided, "approve", "customer called: genuine purchase", order_id="o-0"),
        review("r-approved", decided + 1, "reject", "buyer ann@example.com paid from 10.9.8.7",
               order_id="o-1"),
        review("r-bad", decided + 2, "reject", "both subjects", order_id="o-1", promoter_id="p-rev"),
        review("r-early", decided + 3, "hold", "waiting for the bank", order_id="o-2"),  # before o-2 arrives
    ]
    p.start_worker()
    try:
        p.produce(encode([("promoters", dict(event_id="p1", ts=t0 - 200 * H, promoter_id="p-rev",
                                             tracking_code="T-REV"))]))
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 1, 60, "promoters")
        p.produce(encode(held + approved + early[:2]))
        p.wait_counts({"conversions_current": 2}, timeout=240)
        p.produce(encode(reviews))
        p.wait_done({"conversions_current": 2, "dead_letters": 1})  # every review read and written
        p.produce(encode(early[2:]))  # the order the early decision is about comes last
        p.wait_done({"conversions_current": 3, "dead_letters": 1})
    finally:
        p.stop_workers()

    # the good decisions are kept as sent, the reason's personal data hashed
    stored = {r["event_id"]: r for r in p.query(
        "SELECT event_id, toUnixTimestamp64Milli(ts) AS ts, order_id, promoter_id, toString(decision) AS decision,"
        " reason, actor FROM reviews FINAL")}
    assert sorted(stored) == ["r-approved", "r-early", "r-held"]
    assert {e: (r["order_id"], r["promoter_id"], r["decision"], r["actor"], int(r["ts"])) for e, r in stored.items()} == {
        "r-held": ("o-0", "", "approve", "pm-0042", decided),
        "r-approved": ("o-1", "", "reject", "pm-0042", decided + 1),
        "r-early": ("o-2", "", "hold", "pm-0042", decided + 3),
    }
    assert stored["r-approved"]["reason"] == (f"buyer <pii:{hash_pii('ann@example.com', salt)}> paid from "
                                              f"<pii:{hash_pii('10.9.8.7', salt)}>")
    assert "ann@example.com" not in str(p.query("SELECT * FROM reviews"))

    # the bad one is dead-lettered with its reason
    [letter] = p.query("SELECT reason, topic, value FROM dead_letters FINAL")
    assert letter["topic"] == p.topic("reviews") and "exactly one of order_id" in letter["reason"]
    assert '"r-bad"' in letter["value"]

    # conversions_current applies them (its review columns: streams/logic/rules/views.py)
    rows = {r["order_id"]: r for r in p.query(
        "SELECT order_id, status, reasons, commission, auto_status, review, review_actor, reviews"
        " FROM conversions_current")}
    got = {o: (r["status"], r["auto_status"], r["review"], r["review_actor"], int(r["reviews"]))
           for o, r in rows.items()}
    assert got == {
        "o-0": ("approved", "held", "approve", "pm-0042", 1),  # a big order's hold released
        "o-1": ("rejected", "approved", "reject", "pm-0042", 1),
        "o-2": ("held", "approved", "hold", "pm-0042", 1),  # decided before the order arrived
    }
    assert "manual_approved" in rows["o-0"]["reasons"] and "manual_rejected" in rows["o-1"]["reasons"]
    assert "manual_hold" in rows["o-2"]["reasons"]
    assert Decimal(rows["o-1"]["commission"]) == 0 and Decimal(rows["o-0"]["commission"]) > 0
