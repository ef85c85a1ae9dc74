"""One retry policy for the worker's clients: exponential backoff, and waits that end early
when the worker stops.

The caller decides the rest: what is worth retrying (`retriable`: an outage, not a
refused row), what a failure means to it (`on_retry`: log, count, remember since when it
fails) and when to give up (`stopping`: the worker shuts down). This module only says how
long to wait, and waits. Used by the ClickHouse sink (opening the client, writing
batches) and by the Redis signal store.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
OnRetry = Callable[[Exception, float], None]  # (the failure, seconds until the next try)


def never() -> bool:
    """`stopping` of a caller that never gives up (a Redis outage pauses the pipeline)."""
    return False


def every(exc: Exception) -> bool:
    """`retriable` of a caller that retries whatever fails."""
    return True


@dataclass(frozen=True)
class Backoff:
    """Waits of `initial` seconds, multiplied by `factor` after each failure, at most `maximum`."""

    initial: float
    factor: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError(f"a backoff needs 0 < initial <= maximum and factor >= 1, not {self}")

    def delays(self) -> Iterator[float]:
        """The wait before each retry: initial, initial x factor, ..., then maximum forever."""
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


class Stopped(Exception):
    """The worker began to stop while the call still failed: the caller gives up, and must
    not count the work as done (its cause is the last failure)."""


async def pause(seconds: float, stopping: Callable[[], bool] = never, tick: float = 0.2) -> bool:
    """Sleep `seconds`, looking at `stopping` every `tick` (a shutdown must not wait out a
    30 s backoff); False if it became true."""
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, tick))
    return False


async def retrying(call: Callable[[], Awaitable[T]], backoff: Backoff, *,
                   retriable: Callable[[Exception], bool] = every, on_retry: OnRetry | None = None,
                   stopping: Callable[[], bool] = never) -> T:
    """`await call()` until it returns, waiting the backoff's next delay after each failure.

    A failure `retriable` refuses is raised as it is. Before each wait `on_retry(exc, delay)`
    runs. `call` is tried at least once even while stopping (a worker draining its buffers
    still writes them); after that, a failure while `stopping()`, or a stop during the wait,
    raises `Stopped` from the last failure.
    """
    for delay in backoff.delays():
        try:
            return await call()
        except Exception as exc:
            if not retriable(exc):
                raise
            if stopping():
                raise Stopped() from exc
            if on_retry is not None:
                on_retry(exc, delay)
            if not await pause(delay, stopping):
                raise Stopped() from exc
    raise AssertionError("unreachable: Backoff.delays never ends")
