"""Routing raw input: records per join partition, invalid messages with reasons, clocks."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from streams.logic.partitioning import partition_for
from streams.logic.privacy import Pseudonyms, hash_pii
from streams.logic.routing import Routing

NOW = 1_790_000_000_000
SALT = b"s"


@dataclass
class Msg:
    topic: str
    value: object
    partition: int = 0
    offset: int = 0
    key: bytes | None = None


def click(eid: str, visitor: str, ts: int = NOW - 1000, **kw: object) -> bytes:
    return json.dumps({"event_id": eid, "ts": ts, "tracking_code": "T", "visitor_id": visitor, **kw}).encode()


def order(eid: str, account: str, ts: int = NOW - 1000) -> bytes:
    return json.dumps({"event_id": eid, "ts": ts, "order_id": "o", "account_id": account, "product": "p",
                       "amount": "1", "currency": "USD", "status": "paid"}).encode()


CASES = [
    ("a click goes to its visitor's partition", [Msg("p-clicks", click("c1", "v1"))],
     {"visitors": {partition_for(b"v1", 4): ["c1"]}, "accounts": {}, "invalid": [], "counts": {"p-clicks": 1}}),
    ("an order to its account's partition", [Msg("p-orders", order("o1", "a9"), partition=2, offset=7)],
     {"visitors": {}, "accounts": {partition_for(b"a9", 4): ["o1"]}, "invalid": [], "counts": {"p-orders": 1}}),
    ("invalid input comes back with its reason", [Msg("p-clicks", b"{nope")],
     {"visitors": {}, "accounts": {}, "invalid": ["not valid JSON"], "counts": {"p-clicks": 1}}),
    ("a value of the wrong type is an internal error, not a crash", [Msg("p-clicks", 12345)],
     {"visitors": {}, "accounts": {}, "invalid": ["internal error while routing (TypeError)"],
      "counts": {"p-clicks": 1}}),
    ("order kept within a partition", [Msg("p-clicks", click(f"c{i}", "v1", NOW - 1000 + i)) for i in range(3)],
     {"visitors": {partition_for(b"v1", 4): ["c0", "c1", "c2"]}, "accounts": {}, "invalid": [],
      "counts": {"p-clicks": 3}}),
]


@pytest.mark.parametrize("name,messages,expected", CASES, ids=[c[0] for c in CASES])
def test_route(name: str, messages: list[Msg], expected: dict) -> None:
    routing = Routing(4, len("p-"), 3_600_000, 65_536, Pseudonyms(SALT))
    routed = routing.route(messages, NOW)
    assert {p: [r.event_id for r in recs] for p, recs in routed.visitors.items()} == expected["visitors"]
    assert {p: [r.event_id for r in recs] for p, recs in routed.accounts.items()} == expected["accounts"]
    assert len(routed.invalid) == len(expected["invalid"])
    for (_msg, reason), want in zip(routed.invalid, expected["invalid"]):
        assert want in reason
    assert dict(routed.counts) == expected["counts"]


def test_progress_is_the_highest_event_time_per_source_partition() -> None:
    routing = Routing(4, 0, 3_600_000, 65_536, Pseudonyms(SALT))
    routing.route([Msg("clicks", click("a", "v", NOW - 50), partition=1),
                   Msg("clicks", click("b", "v", NOW - 90), partition=1),
                   Msg("orders", order("o", "a", NOW - 70), partition=0)], NOW)
    assert routing.progress == {"visitor": {"clicks/1": NOW - 50}, "account": {"orders/0": NOW - 70}}


def test_records_carry_their_source_and_no_clear_ip() -> None:
    routed = Routing(1, 0, 3_600_000, 65_536, Pseudonyms(SALT)).route(
        [Msg("clicks", click("a", "v", ip="203.0.113.7"), partition=3, offset=42)], NOW)
    [rec] = routed.visitors[0]
    assert (rec.src, rec.ip_hash) == ("clicks/3/42", hash_pii("203.0.113.7", SALT))


def test_coupon_codes_reach_the_join_records() -> None:
    routing = Routing(4, len("p-"), 3_600_000, 65_536, Pseudonyms(SALT))
    signup = json.dumps({"event_id": "s1", "ts": NOW - 1000, "account_id": "a1", "visitor_id": "v1",
                         "coupon_code": "KOL10"}).encode()
    paid = json.loads(order("o1", "a1"))
    routed = routing.route([Msg("p-signups", signup), Msg("p-orders", json.dumps({**paid, "coupon_code": "K2"}).encode()),
                            Msg("p-orders", order("o2", "a1"))], NOW)
    [s] = [r for recs in routed.visitors.values() for r in recs]
    assert s.coupon_code == "KOL10"
    assert [r.coupon_code for recs in routed.accounts.values() for r in recs] == ["K2", None]


def test_only_partitions_that_gave_valid_records_are_heard() -> None:
    """A partition that sends only invalid messages moves no event time: it may go idle."""
    routing = Routing(4, len("p-"), 3_600_000, 65_536, Pseudonyms(SALT))
    routed = routing.route([Msg("p-clicks", click("a", "v"), partition=1), Msg("p-clicks", b"{nope", partition=2),
                            Msg("p-orders", order("o", "a"), partition=0)], NOW)
    assert routed.sources == {"p-clicks/1", "p-orders/0"}


@pytest.mark.parametrize("sources, expected", [
    ([], {"visitor": [], "account": []}),
    (["p-clicks/1", "p-orders/0", "p-signups/3", "p-orders/2"],
     {"visitor": ["p-clicks/1", "p-signups/3"], "account": ["p-orders/0", "p-orders/2"]}),
])
def test_sources_by_the_join_they_feed(sources: list[str], expected: dict[str, list[str]]) -> None:
    assert Routing(4, len("p-"), 3_600_000, 65_536, Pseudonyms(SALT)).by_join(sources) == expected
