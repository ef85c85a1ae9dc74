"""The one retry policy (`streams.retry`): the waits of a backoff, and `retrying` deciding
between returning, raising, waiting and giving up."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import islice

import pytest

from streams.retry import Backoff, Stopped, pause, retrying


@pytest.mark.parametrize("backoff, delays", [
    (Backoff(0.5), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),  # the sink's ClickHouse retries
    (Backoff(0.1, 2.0, 10.0), [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]),  # the Redis signal store
    (Backoff(1.0, 3.0, 5.0), [1.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
    (Backoff(2.0, 1.0, 2.0), [2.0] * 8),  # a constant wait
])
def test_delays(backoff: Backoff, delays: list[float]) -> None:
    assert list(islice(backoff.delays(), len(delays))) == pytest.approx(delays)


@pytest.mark.parametrize("initial, factor, maximum", [(0, 2, 1), (-1, 2, 1), (1, 0.5, 2), (2, 2, 1)])
def test_a_backoff_that_cannot_work_is_refused(initial: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, factor, maximum)


TINY = Backoff(0.001, 2.0, 0.004)


@dataclass
class Case:
    name: str
    failures: list[Exception]  # what the call raises on its first tries, then it returns "ok"
    result: str | type[Exception]  # what `retrying` returns, or raises
    retried: list[float]  # the delays `on_retry` saw
    stop_after: int | None = None  # `stopping()` turns true after this many calls
    retriable: tuple[type[Exception], ...] = (OSError,)
    calls: int = field(init=False, default=0)


CASES = [
    Case("success at once", [], "ok", []),
    Case("retriable failures, then success", [OSError("a"), OSError("b"), OSError("c")], "ok",
         [0.001, 0.002, 0.004]),
    Case("the backoff stops growing at its maximum", [OSError()] * 4, "ok", [0.001, 0.002, 0.004, 0.004]),
    Case("a failure the caller does not retry is raised as it is", [OSError(), ValueError("bad row")],
         ValueError, [0.001]),
    Case("stopping: tried once, then given up without waiting", [OSError()], Stopped, [], stop_after=0),
    Case("stopping during the retries gives up", [OSError()] * 5, Stopped, [0.001, 0.002], stop_after=3),
    Case("stopping after a success changes nothing", [], "ok", [], stop_after=0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_retrying(case: Case) -> None:
    seen: list[float] = []

    async def call() -> str:
        case.calls += 1
        if case.failures:
            raise case.failures.pop(0)
        return "ok"

    def stopping() -> bool:
        return case.stop_after is not None and case.calls >= case.stop_after

    run = retrying(call, TINY, retriable=lambda e: isinstance(e, case.retriable),
                   on_retry=lambda exc, delay: seen.append(delay), stopping=stopping)
    if isinstance(case.result, str):
        assert asyncio.run(run) == case.result
    else:
        with pytest.raises(case.result):
            asyncio.run(run)
    assert seen == case.retried


def test_stopped_carries_the_last_failure() -> None:
    async def call() -> None:
        raise OSError("clickhouse down")

    with pytest.raises(Stopped) as info:
        asyncio.run(retrying(call, TINY, stopping=lambda: True))
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("stop_at_s, slept", [(None, True), (0.0, False), (0.05, False)])
def test_pause_wakes_early_when_the_worker_stops(stop_at_s: float | None, slept: bool) -> None:
    async def run() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        stopping = (lambda: False) if stop_at_s is None else (lambda: loop.time() - start >= stop_at_s)
        done = await pause(0.3, stopping, tick=0.01)
        return done, loop.time() - start

    done, took = asyncio.run(run())
    assert done is slept
    assert took >= 0.29 if slept else took < 0.2
