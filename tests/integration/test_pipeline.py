"""End to end on the real local stack: Tansu, a real worker process, ClickHouse (chdb)."""
from __future__ import annotations

import time

import pytest

from tests.support.pipeline import Pipeline, event

pytestmark = pytest.mark.integration
H = 3_600_000


def scenario(t0: int) -> list[tuple[str, bytes | None, bytes]]:
    """Hand-made traffic covering the join's cases; see the expected rows below."""
    def click(eid, ts, code, visitor):
        return ("clicks", visitor.encode(), event(event_id=eid, ts=ts, tracking_code=code, visitor_id=visitor,
                                                   ip="203.0.113.7", campaign="spring"))

    def signup(eid, ts, account, visitor):
        return ("signups", None, event(event_id=eid, ts=ts, account_id=account, visitor_id=visitor))

    def order(eid, ts, oid, account, amount, status="paid", cart=None):
        return ("orders", account.encode(), event(event_id=eid, ts=ts, order_id=oid, account_id=account,
                                                  product="db-pro", amount=amount, currency="USD",
                                                  status=status, cart_id=cart))
    return [
        click("c1", t0, "T-A", "v1"),
        signup("s1", t0 + H, "a1", "v1"),
        order("o1-paid", t0 + 2 * H, "o1", "a1", 100.50, cart="k1"),           # cart with two orders
        order("o2-paid", t0 + 2 * H, "o2", "a1", 20, cart="k1"),
        order("o1-paid", t0 + 2 * H, "o1", "a1", 100.50, cart="k1"),           # duplicate delivery
        signup("s2", t0 + 2 * H, "a2", "v2"),                                  # signup before its click
        click("c2", t0 + 90 * 60_000, "T-B", "v2"),
        order("o2-refund", t0 + 3 * H, "o2", "a1", 20, status="refunded"),     # clawback
        order("o3-paid", t0 + 3 * H, "o3", "a2", 50),
        signup("s3", t0 + H, "a3", "v3"),                                      # organic
        order("o4-paid", t0 + 2 * H, "o4", "a3", 70),
        click("c4", t0, "T-ZZZ", "v4"),                                        # nobody owns T-ZZZ
        signup("s4", t0 + H, "a4", "v4"),
        order("o5-paid", t0 + 2 * H, "o5", "a4", 10),
        click("c5a", t0, "T-A", "v5"),                                         # last click wins
        click("c5b", t0 + 10 * 60_000, "T-B", "v5"),
        signup("s5", t0 + H, "a5", "v5"),
        order("o6-paid", t0 + 4 * H, "o6", "a5", 30),
        ("orders", None, b"{not json"),                                        # dead letters
        ("clicks", None, event(event_id="bad", ts=t0, tracking_code="T-A", ip="198.51.100.9")),
        click("c9", t0 + 20 * H - 60_000, "T-A", "v9"),                        # moves the watermark
        signup("s9", t0 + 20 * H, "a9", "v9"),
        order("o9-paid", t0 + 20 * H, "o9", "a9", 1),
    ]


def late_click(t0: int) -> tuple[str, bytes | None, bytes]:
    """Would make v1's last click T-B, but arrives after the watermark passed t0 + 14h."""
    return ("clicks", b"v1", event(event_id="c-late", ts=t0 + 30 * 60_000, tracking_code="T-B", visitor_id="v1"))


EXPECTED = {  # order_id -> promoter, tracking code, account, amount, status, reasons
    "o1": ("alice", "T-A", "a1", 100.5, "approved", []),
    "o2": ("alice", "T-A", "a1", 20.0, "reversed", ["refunded"]),
    "o3": ("bob", "T-B", "a2", 50.0, "approved", []),
    "o5": ("", "T-ZZZ", "a4", 10.0, "rejected", ["unknown_promoter"]),
    "o6": ("bob", "T-B", "a5", 30.0, "approved", []),
    "o9": ("alice", "T-A", "a9", 1.0, "approved", []),
}


def test_conversions_current_has_exactly_the_expected_rows(stack, topic_prefix, tmp_path) -> None:
    # one partition and 6h lateness: the scenario's events are up to 4h out of order
    p = Pipeline.create(stack, topic_prefix, tmp_path, partitions=1, allowed_lateness_s=6 * 3600)
    t0 = int(time.time() * 1000) - 5 * 24 * H
    p.start_worker()
    try:
        p.produce([
            ("promoters", b"T-A", event(event_id="p1", ts=t0 - 100 * H, promoter_id="alice", tracking_code="T-A")),
            ("promoters", b"T-B", event(event_id="p2", ts=t0 - 100 * H, promoter_id="bob", tracking_code="T-B",
                                        level=3)),
        ])
        p.wait(lambda: (p.get("/health") or {}).get("promoters") == 2, 60, "promoters")
        p.produce(scenario(t0))
        p.wait_counts({"clicks": 6, "signups": 6, "orders": 8, "conversions_current": 6, "dead_letters": 2})
        p.produce([late_click(t0)])
        p.wait_counts({"clicks": 7, "signups": 6, "orders": 8, "conversions_current": 6, "dead_letters": 2,
                       "late_events": 1})
    finally:
        p.stop_workers()

    rows = p.query("SELECT * FROM conversions_current ORDER BY order_id")
    got = {r["order_id"]: (r["promoter_id"], r["tracking_code"], r["account_id"], float(r["amount"]),
                           r["status"], r["reasons"]) for r in rows}
    assert got == EXPECTED
    o3 = next(r for r in rows if r["order_id"] == "o3")
    assert (o3["click_event_id"], o3["signup_event_id"], o3["cart_id"]) == ("c2", "s2", "")
    late = p.query("SELECT kind, event_id, join, source FROM late_events")
    assert [(r["kind"], r["event_id"], r["join"]) for r in late] == [("click", "c-late", "visitor")]
    assert late[0]["source"].startswith(topic_prefix + "clicks/")
    dead = p.query("SELECT topic, reason, offset, value FROM dead_letters ORDER BY topic")
    assert [(r["topic"], r["offset"]) for r in dead] == [(topic_prefix + "clicks", 5), (topic_prefix + "orders", 8)]
    assert "not valid JSON" in dead[1]["reason"] and "visitor_id" in dead[0]["reason"]
    assert '"event_id": "bad"' in dead[0]["value"] and "198.51.100.9" not in dead[0]["value"]
    clicks = p.query("SELECT ip_hash FROM clicks WHERE event_id = 'c1'")
    assert clicks[0]["ip_hash"] and "203.0.113.7" not in clicks[0]["ip_hash"]  # PII hashed
