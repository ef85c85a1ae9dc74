"""The spike watcher's saved state in Redis: one msgpack value per app and set of topics.

A worker that becomes leader loads it, so the detector goes on where the last leader
saved instead of starting fresh (which would repeat or miss alerts). The value is opaque
here: `streams.logic.spike_feed.Watcher.snapshot` makes it.
"""
from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis


class SpikeStateStore:
    """Load and save the watcher's state under `<namespace>:spikes`. No retries: the caller
    polls again on its next tick (see `streams.agents.alerts`)."""

    def __init__(self, redis_url: str, namespace: str, timeout_s: float = 5.0) -> None:
        self.redis = aioredis.from_url(redis_url, socket_timeout=timeout_s)
        self.key = f"{namespace}:spikes"

    async def load(self) -> bytes | None:
        """The last saved state, None if nothing was saved yet."""
        # bytes: the client is made without decode_responses
        return cast("bytes | None", await self.redis.get(self.key))

    async def save(self, state: bytes) -> None:
        await self.redis.set(self.key, state)

    async def close(self) -> None:
        await self.redis.aclose()
