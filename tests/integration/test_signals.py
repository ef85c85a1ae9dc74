"""The Redis side of the checks (real Redis from the session stack): counters are sets, so
redelivery never inflates them, and they count the windows like the in-memory ones."""
from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from schemas.records import AttributionRec, ClickRec, ClickRef
from streams.adapters.signals import WINDOW_TTL_S, SignalStore, drop_namespace
from streams.logic.rules import windows
from tests.logic.rules.test_windows import CASES as WINDOW_CASES
from tests.support.pipeline import NAMESPACES

pytestmark = pytest.mark.integration
JAN_31 = 1_769_817_600_000  # 2026-01-31T00:00:00Z


def store(stack) -> SignalStore:
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    NAMESPACES.add((stack.redis_url, namespace))  # dropped at session end
    return SignalStore(stack.redis_url, namespace)


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
