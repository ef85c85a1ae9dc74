"""Which promoter owns a tracking code, as of an event time; reading the inputs stored as they come."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from schemas.events import Exclusion, Promoter, Review
from schemas.validate import Invalid
from streams.logic.privacy import Pseudonyms, hash_pii
from streams.logic.reference import ExclusionDirectory, PromoterDirectory, ReferenceReader


@dataclass
class Case:
    name: str
    code: str
    ts: int
    expected: str | None
    enterprise_since: int | None = None  # a later enterprise version of the same promoter
    account_type: str = "personal"


def directory() -> PromoterDirectory:
    d = PromoterDirectory()
    for eid, ts, pid in [("e2", 200, "bob"), ("e1", 100, "alice"), ("e1", 100, "alice")]:
        d.add(Promoter(event_id=eid, ts=ts, promoter_id=pid, tracking_code="T"))
    # E: carol turns enterprise at 300 (and is re-verified at 400); F: the code passes to dan,
    # an enterprise account, at 200; G: erin is enterprise at 200, then personal again at 300
    for eid, ts, pid, code, kind in [
        ("e4", 400, "carol", "E", "enterprise"), ("e3", 300, "carol", "E", "enterprise"),
        ("e5", 100, "carol", "E", "personal"),
        ("f1", 100, "frank", "F", "personal"), ("f2", 200, "dan", "F", "enterprise"),
        ("g1", 100, "erin", "G", "personal"), ("g2", 200, "erin", "G", "enterprise"),
        ("g3", 300, "erin", "G", "personal"),
    ]:
        d.add(Promoter(event_id=eid, ts=ts, promoter_id=pid, tracking_code=code, account_type=kind))
    return d


CASES = [
    Case("unknown code", "Z", 150, None),
    Case("first version", "T", 150, "alice"),
    Case("a later version takes over at its time", "T", 200, "bob"),
    Case("before the first known version (compacted history)", "T", 50, "alice"),
    Case("personal, enterprise later: the earliest later enterprise version", "E", 299, "carol", 300),
    Case("at the enterprise version: enterprise, the next one reported", "E", 300, "carol", 400, "enterprise"),
    Case("after the enterprise versions", "E", 500, "carol", None, "enterprise"),
    Case("a later enterprise owner of the code is another promoter", "F", 150, "frank", None),
    Case("the code's later enterprise owner as of its time", "F", 200, "dan", None, "enterprise"),
    Case("enterprise in between counts even if personal again later", "G", 150, "erin", 200),
    Case("personal again: no later enterprise version", "G", 300, "erin", None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_as_of(case: Case) -> None:
    ref = directory().as_of(case.code, case.ts)
    got = (ref.promoter_id, ref.enterprise_since, ref.account_type) if ref else None
    assert got == ((case.expected, case.enterprise_since, case.account_type) if case.expected else None)


def test_duplicates_are_absorbed() -> None:
    assert len(directory()._versions["T"]) == 2


@dataclass
class ExclusionCase:
    name: str
    account_id: str
    email_domain: str | None
    ts: int
    expected: str | None


def exclusions() -> ExclusionDirectory:
    d = ExclusionDirectory()
    for eid, ts, since, account, domain, owner in [
        ("x1", 10, 100, "acc-1", None, "channel_partner"),
        ("x2", 10, 50, None, "BigCorp.Example", "direct_sales"),
        ("x3", 10, 200, "acc-2", None, "direct_sales"),  # acc-2: channel since 150 wins over this
        ("x4", 10, 150, "acc-2", None, "channel_partner"),
        ("x5", 500, None, "acc-3", None, "direct_sales"),  # no since: from its event time
        ("x6", 10, 300, "acc-4", None, "channel_partner"),  # acc-4 at bigcorp: the domain since 50 wins
        ("x1", 10, 100, "acc-1", None, "channel_partner"),  # redelivery
    ]:
        d.add(Exclusion(event_id=eid, ts=ts, since=since, account_id=account, email_domain=domain, owner=owner))
    return d


EXCLUSIONS = [
    ExclusionCase("account excluded since the order's time", "acc-1", None, 100, "channel_partner"),
    ExclusionCase("account exclusion in the order's future", "acc-1", None, 99, None),
    ExclusionCase("another account", "acc-9", "other.example", 1000, None),
    ExclusionCase("email domain, case-insensitive", "acc-9", "bigcorp.EXAMPLE", 60, "direct_sales"),
    ExclusionCase("email domain exclusion in the order's future", "acc-9", "bigcorp.example", 49, None),
    ExclusionCase("earliest owner wins", "acc-2", None, 250, "channel_partner"),
    ExclusionCase("only the owner in force at the order's time", "acc-2", None, 199, "channel_partner"),
    ExclusionCase("before both exclusions", "acc-2", None, 149, None),
    ExclusionCase("without since: from the event time", "acc-3", None, 500, "direct_sales"),
    ExclusionCase("without since, before the event time", "acc-3", None, 499, None),
    ExclusionCase("domain exclusion earlier than the account's", "acc-4", "bigcorp.example", 400, "direct_sales"),
    ExclusionCase("account exclusion alone when the domain is unknown", "acc-4", None, 400, "channel_partner"),
]


@pytest.mark.parametrize("case", EXCLUSIONS, ids=lambda c: c.name)
def test_exclusion_owner(case: ExclusionCase) -> None:
    assert exclusions().owner(case.account_id, case.email_domain, case.ts) == case.expected


def test_exclusion_redelivery_is_absorbed() -> None:
    assert len(exclusions()._by_key["a:acc-1"]) == 1


# --- the reader of the inputs stored as they come ---------------------------------------------

NOW = 1_790_000_000_000
SALT = b"salt"


def reader() -> ReferenceReader:
    return ReferenceReader(Pseudonyms(SALT), max_future_ms=3_600_000, max_message_bytes=65_536)


def body(**fields: Any) -> bytes:
    return msgspec.json.encode({"event_id": "e1", "ts": NOW - 1, **fields})


REVIEW = dict(order_id="o1", decision="reject", actor="pm-7")


@dataclass
class ReadCase:
    name: str
    topic: str
    value: bytes | None
    expected: Any  # the event read, None, or a part of the Invalid reason


READS = [
    ReadCase("promoter, its IP hashed", "promoters", body(promoter_id="P1", tracking_code="T", ip="10.0.0.1"),
             Promoter(event_id="e1", ts=NOW - 1, promoter_id="P1", tracking_code="T",
                      ip=hash_pii("10.0.0.1", SALT))),
    ReadCase("exclusion", "exclusions", body(account_id="a1", owner="direct_sales"),
             Exclusion(event_id="e1", ts=NOW - 1, account_id="a1", owner="direct_sales")),
    ReadCase("review as sent", "reviews", body(**REVIEW, reason="duplicate account"),
             Review(event_id="e1", ts=NOW - 1, **REVIEW, reason="duplicate account")),
    ReadCase("review of a promoter", "reviews", body(promoter_id="P1", decision="hold", actor="pm-7"),
             Review(event_id="e1", ts=NOW - 1, promoter_id="P1", decision="hold", actor="pm-7")),
    ReadCase("a review's e-mail and IP addresses are hashed", "reviews",
             body(**REVIEW, reason="buyer bob@example.com from 10.0.0.9 is the promoter"),
             Review(event_id="e1", ts=NOW - 1, **REVIEW,
                    reason=f"buyer <pii:{hash_pii('bob@example.com', SALT)}> from "
                           f"<pii:{hash_pii('10.0.0.9', SALT)}> is the promoter")),
    ReadCase("a review's phone number is hashed too; its date and order number stay", "reviews",
             body(**REVIEW, reason="customer called from +49 170 1234567 on 2026-03-12 about order 4711"),
             Review(event_id="e1", ts=NOW - 1, **REVIEW,
                    reason=f"customer called from <pii:{hash_pii('+491701234567', SALT)}> on 2026-03-12 "
                           "about order 4711")),
    ReadCase("a bad review, with the validation's reason", "reviews", body(decision="approve", actor="pm-7"),
             "exactly one of order_id"),
    ReadCase("a review's decision outside the three", "reviews", body(**{**REVIEW, "decision": "pay"}),
             "decision"),
    ReadCase("a compaction tombstone of promoters is no error", "promoters", None, None),
    ReadCase("a compaction tombstone of exclusions is no error", "exclusions", None, None),
    ReadCase("a null review is a bad message (reviews are not compacted)", "reviews", None, "empty message"),
    ReadCase("a raw input topic is not read here", "clicks", body(tracking_code="T", visitor_id="v"),
             "not a stored input topic"),
]


@pytest.mark.parametrize("case", READS, ids=lambda c: c.name)
def test_reader(case: ReadCase) -> None:
    got = reader().read(case.topic, case.value, NOW)
    if isinstance(case.expected, str):
        assert isinstance(got, Invalid) and case.expected in got.reason, got
    else:
        assert got == case.expected


# -- coupon codes: the promoter owning a code as of a time (PromoterDirectory.by_coupon) -------------------
def coupon_directory() -> PromoterDirectory:
    d = PromoterDirectory()
    for eid, ts, pid, code, coupons, kind in [
        ("k1", 100, "kim", "K", ["KIM10"], "personal"),  # KIM10 from her first version on
        ("k2", 300, "kim", "K", ["KIM20"], "personal"),  # ... dropped at 300 for KIM20
        ("l1", 100, "lee", "L", [], "personal"), ("l2", 200, "lee", "L", ["LEE"], "personal"),  # owned from 200
        ("m1", 100, "max", "M", ["SHARED"], "personal"), ("n1", 250, "ned", "N", ["SHARED"], "personal"),
        ("o1", 100, "oz", "O", ["OZ"], "personal"), ("o2", 400, "oz", "O", ["OZ"], "enterprise"),
    ]:
        d.add(Promoter(event_id=eid, ts=ts, promoter_id=pid, tracking_code=code, coupon_codes=coupons,
                       account_type=kind))
    return d


COUPON_CASES = [
    ("unknown code", "NOPE", 150, None),
    ("owned from the first version", "KIM10", 150, "kim"),
    ("before the first known version: the first counts", "KIM10", 50, "kim"),
    ("dropped from the owner's list: nobody's", "KIM10", 300, None),
    ("a code of a later version", "KIM20", 300, "kim"),
    ("a code of a later version, before it", "KIM20", 200, None),
    ("owned only from a later version: nobody's before", "LEE", 150, None),
    ("owned only from a later version: his then", "LEE", 200, "lee"),
    ("two promoters list it: the older one before the newer", "SHARED", 200, "max"),
    ("two promoters list it: the most recent version wins", "SHARED", 250, "ned"),
    ("two promoters list it, before both: the nearest first version", "SHARED", 50, "max"),
]


@pytest.mark.parametrize("name,code,ts,expected", COUPON_CASES, ids=[c[0] for c in COUPON_CASES])
def test_by_coupon(name: str, code: str, ts: int, expected: str | None) -> None:
    ref = coupon_directory().by_coupon(code, ts)
    assert (ref.promoter_id if ref else None) == expected


def test_by_coupon_is_as_of_of_the_owner() -> None:
    """The same promoter record as `as_of` gives: a later enterprise version is reported."""
    d = coupon_directory()
    assert d.by_coupon("OZ", 150) == d.as_of("O", 150)
    assert d.by_coupon("OZ", 150).enterprise_since == 400  # type: ignore[union-attr]
