"""The endpoints of the review queue and payouts: `GET /api/reviews`, `POST /api/reviews`,
`GET /api/payouts/summary` (docs/api.md). Queries run through the `Runner` like `StatsApi`'s;
decisions go out through `publish(key, value)` (in the worker: the `reviews` topic)."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from streams.web import balances, reviews
from streams.web.api import Args, Query, Runner, fetch, wall_clock_ms

Publish = Callable[[bytes, bytes], Awaitable[Any]]
PUBLISH_TIMEOUT_S = 15.0


class PublishFailed(RuntimeError):
    """The decision could not be handed to the broker (HTTP 503): retry with the same request_id."""


class ReviewApi:
    def __init__(self, run: Runner, publish: Publish | None = None, lateness_ms: int = 0,
                 max_future_ms: int = 3_600_000, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.run = run
        self.publish = publish
        self.lateness_ms = lateness_ms
        self.max_future_ms = max_future_ms
        self.clock = clock
        self._available: bool | None = None

    def endpoints(self) -> dict[str, Callable[[Args], Awaitable[dict[str, Any]]]]:
        return {"reviews": self.queue, "payouts/summary": self.summary}

    async def available(self) -> bool:
        """Whether conversions_current applies reviews (checked until it does, then cached:
        the view is re-created when the sink opens ClickHouse)."""
        if not self._available:
            row = (await self.run(lambda c: fetch(c, reviews.review_columns_query())))[0]
            self._available = int(row["n"]) == 3
        return self._available

    async def _all(self, queries: dict[str, Query]) -> dict[str, list[dict[str, Any]]]:
        return await self.run(lambda c: {name: fetch(c, q) for name, q in queries.items()})

    async def queue(self, args: Args) -> dict[str, Any]:
        f = reviews.parse_queue(args)
        if not await self.available():
            return {**f.describe(), "available": False, "total": 0, "reasons": [], "rows": []}
        return reviews.shape_queue(f, await self._all(reviews.queue_queries(f)))

    async def summary(self, args: Args) -> dict[str, Any]:
        promoter = balances.parse_summary(args)
        if not await self.available():
            return {"as_of": None, "promoter": promoter, "available": False, "currencies": [],
                    "batches": {"pending": 0, "paid": 0, "failed": 0}}

        def both(client: Any) -> tuple[int, dict[str, list[dict[str, Any]]]]:
            newest = fetch(client, balances.newest_order_query())[0]
            as_of = balances.event_now(int(newest["orders"]), int(newest["newest"]), self.lateness_ms)
            return as_of, {n: fetch(client, q) for n, q in balances.summary_queries(as_of, promoter).items()}

        as_of, results = await self.run(both)
        return balances.shape_summary(as_of, promoter, results)

    async def decide(self, body: bytes) -> dict[str, Any]:
        """Check a decision and publish it; the published event. BadRequest before publishing
        anything; PublishFailed when the broker did not take it."""
        decision = reviews.parse_decision(body)
        key, value, event = reviews.review_message(decision, self.clock(), self.max_future_ms)
        if self.publish is None:
            raise PublishFailed("this worker cannot publish reviews (no reviews topic)")
        try:
            sent = await asyncio.wait_for(self.publish(key, value), PUBLISH_TIMEOUT_S)
            if inspect.isawaitable(sent):  # Faust's send returns the delivery future: wait for the ack
                await asyncio.wait_for(sent, PUBLISH_TIMEOUT_S)
        except Exception as exc:
            raise PublishFailed(f"publishing the review failed ({type(exc).__name__})") from exc
        return {"topic": "reviews", "event": event}
