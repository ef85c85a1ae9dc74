"""SIGKILL a worker mid-stream, restart it: the result equals an uninterrupted run's.

Restarts are immediate (the killed member is still in the consumer group); set
REFSTREAM_TEST_RESTART_DELAY_S to wait before each restart instead.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from streams.dev.traffic import TrafficSpec, generate
from tests.support.pipeline import Pipeline, expected_counts, raw_messages, settled_end_ms

pytestmark = pytest.mark.integration
RESTART_DELAY_S = float(os.environ.get("REFSTREAM_TEST_RESTART_DELAY_S", 0))
COMPARED = ("order_id", "status", "reasons", "promoter_id", "tracking_code", "account_id", "amount", "level", "tier", "cap",
            "click_event_id", "signup_event_id", "order_status", "rate", "commission", "bonus", "points",
            "attribution_final")


def conversions(p: Pipeline) -> dict[str, tuple]:
    rows = p.query(f"SELECT {', '.join(COMPARED)} FROM conversions_current")
    return {r["order_id"]: tuple(str(r[c]) for c in COMPARED) for r in rows}


def start(p: Pipeline, traffic, promoters: int) -> None:
    p.start_worker()
    p.produce([m for m in traffic.messages if m[0] in ("promoters", "exclusions")])
    p.wait(lambda: (p.get("/health") or {}).get("promoters") == promoters, 60, "promoters")


def crash_and_recover(p: Pipeline, traffic, raw: list, promoters: int, expected: dict[str, int]) -> None:
    """Feed the traffic through a worker that is SIGKILLed twice, then let it finish."""
    def some_rows_written() -> bool:
        return (p.get("/health") or {}).get("sink", {}).get("rows_written", {}).get("clicks", 0) > 0

    start(p, traffic, promoters)
    half = len(raw) // 2
    p.produce(raw[:half])
    p.wait(some_rows_written, 120, "first rows")   # kill as soon as some of the first half is written
    p.stop_workers(sig=signal.SIGKILL)
    p.produce(raw[half:])                          # traffic keeps coming while the worker is down
    time.sleep(RESTART_DELAY_S)
    p.start_worker()
    p.wait(some_rows_written, 120, "rows after restart")
    p.stop_workers(sig=signal.SIGKILL)             # and once more, right after restarting
    time.sleep(RESTART_DELAY_S)
    p.start_worker()
    p.wait_counts(expected)


def test_crash_and_restart_gives_the_same_conversions(stack, topic_prefix, tmp_path) -> None:
    traffic = generate(TrafficSpec(seed=11, visitors=3000, days=10, end_ms=settled_end_ms(), malformed=3))
    raw = raw_messages(traffic)
    promoters = len(traffic.truth.promoters)
    expected = expected_counts(traffic)

    calm = Pipeline.create(stack, topic_prefix + "calm-", tmp_path / "calm", comparable=True)
    start(calm, traffic, promoters)
    calm.produce(raw)
    try:
        calm.wait_counts(expected)
    finally:
        calm.stop_workers()
    reference = conversions(calm)

    crashy = Pipeline.create(stack, topic_prefix + "crash-", tmp_path / "crash", comparable=True)
    try:
        crash_and_recover(crashy, traffic, raw, promoters, expected)
    finally:
        crashy.stop_workers()
    result = conversions(crashy)

    truth = {oid for acc in traffic.truth.accounts.values() for oid in acc.orders}
    assert set(reference) == truth, "the uninterrupted run must match the generator's ground truth"
    assert result == reference
