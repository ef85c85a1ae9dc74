"""The Redis side of the checks (real Redis from the session stack): counters are sets, so
redelivery never inflates them; the ledger answers 'sales earlier this month' and
'points of earlier months' per promoter, also across a month boundary."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import redis

from schemas.records import AttributionRec, ClickRec, ClickRef, Conversion
from streams.adapters.signals import WINDOW_TTL_S, SignalStore, drop_namespace
from streams.logic.rules import windows
from tests.logic.rules.test_windows import CASES as WINDOW_CASES
from tests.support.pipeline import NAMESPACES

pytestmark = pytest.mark.integration
JAN_31 = 1_769_817_600_000  # 2026-01-31T00:00:00Z
FEB_1 = JAN_31 + 86_400_000
H = 3_600_000


def conversion(oid: str, ts: int, amount: str, points: int, status: str = "approved",
               promoter: str = "P1") -> Conversion:
    return Conversion(order_id=oid, revision=1, status=status, reasons=[], promoter_id=promoter,
                      tracking_code="T1", campaign="", account_id="a", visitor_id="v", click_event_id="c",
                      click_ts=0, signup_event_id="s", signup_ts=0, order_event_id="e" + oid, order_ts=ts,
                      cart_id="", product="pro", category="", amount=Decimal(amount), discount=Decimal(0),
                      currency="USD", order_status="paid", renewal=False, attribution_model="last_click",
                      attribution_final=True, decided_at=0, points=points)


@dataclass
class Case:
    name: str
    ledger: list[Conversion]
    ask: tuple[str, int]
    expected: tuple[Decimal, int]  # volume earlier this month, points of earlier months
    redeliver: bool = field(default=True)


CASES = [
    Case("empty ledger", [], ("P1", JAN_31), (Decimal(0), 0)),
    Case("earlier orders of the month count, later and equal times do not",
         [conversion("o1", JAN_31 - H, "100.5", 10), conversion("o2", JAN_31, "7", 1),
          conversion("o3", JAN_31 + H, "9", 1)], ("P1", JAN_31), (Decimal("100.5"), 0)),
    Case("rejected and reversed orders add no volume",
         [conversion("o1", JAN_31 - H, "100", 10, status="rejected"),
          conversion("o2", JAN_31 - H, "50", 5, status="held")], ("P1", JAN_31), (Decimal(50), 0)),
    Case("a new month starts from zero volume; last month's points count",
         [conversion("o1", JAN_31 - H, "100", 10), conversion("o2", JAN_31 + H, "20", 4)],
         ("P1", FEB_1 + H), (Decimal(0), 14)),
    Case("other promoters are apart", [conversion("o1", JAN_31 - H, "100", 10, promoter="P2")],
         ("P1", FEB_1), (Decimal(0), 0)),
    Case("a re-priced order replaces its entry", [conversion("o1", JAN_31 - H, "100", 10),
                                                   conversion("o1", JAN_31 - H, "100", 3)],
         ("P1", FEB_1), (Decimal(0), 3)),
]


def store(stack) -> SignalStore:
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    NAMESPACES.add((stack.redis_url, namespace))  # dropped at session end
    return SignalStore(stack.redis_url, namespace)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ledger(stack, case: Case) -> None:
    async def run() -> tuple[Decimal, int]:
        s = store(stack)
        try:
            for c in case.ledger:
                await s.record_ledger([c])
            if case.redeliver:
                await s.record_ledger(case.ledger)  # a redelivered batch changes nothing
            [answer] = await s.ledger_before([case.ask])
            return answer
        finally:
            await s.close()
    assert asyncio.run(run()) == case.expected


@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: c.name)
def test_counters_count_the_windows_like_memory(stack, case) -> None:
    """The cases of tests/logic/rules/test_windows.py (run there on `MemoryWindows`) on Redis."""
    async def run() -> list:
        s = store(stack)
        try:
            await s.record_events(case.events)
            await s.record_events(case.events)  # redelivered
            return await s.snapshot([case.read])
        finally:
            await s.close()
    assert asyncio.run(run()) == [case.expected]


def test_counters_take_large_batches_and_expire(stack) -> None:
    """One batch with thousands of members for one key (more than one Lua `unpack` takes)."""
    async def run() -> tuple[list, int]:
        s = store(stack)
        try:
            clicks = [ClickRec(f"c{i}", JAN_31 + i, "v0", "T1", ip_hash="ip1") for i in range(2_500)]
            await s.record_events(clicks)
            rec = AttributionRec("a0", "s0", JAN_31, "v0", ClickRef("c0", JAN_31, "T1", ip_hash="ip1"), True)
            ttl = await s.redis.ttl(s.keys.window(windows.flood_ip("T1", "ip1", JAN_31)))
            return await s.snapshot([rec]), ttl
        finally:
            await s.close()
    [snap], ttl = asyncio.run(run())
    assert (snap.flood_ip, snap.flood_visitor) == (2_500, 2_500)
    assert 0 < ttl <= WINDOW_TTL_S


def test_drop_namespace_removes_only_its_keys(stack) -> None:
    kept, dropped = store(stack), store(stack)

    async def fill() -> None:
        for s in (kept, dropped):
            await s.record_events([ClickRec(f"c{i}", JAN_31, f"v{i}", "T1", ip_hash="ip1") for i in range(1_200)])
            await s.record_ledger([conversion("o1", JAN_31, "10", 1)])
            await s.close()
    asyncio.run(fill())
    client = redis.Redis.from_url(stack.redis_url)
    try:
        def count(s: SignalStore) -> int:
            return sum(1 for _ in client.scan_iter(match=f"{s.keys.ns}:*", count=1000))
        before = count(dropped)
        assert before > 1_000 and count(kept) == before
        assert drop_namespace(stack.redis_url, dropped.keys.ns) == before
        assert (count(dropped), count(kept)) == (0, before)
    finally:
        client.close()
