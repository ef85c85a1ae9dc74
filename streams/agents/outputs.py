"""Sending what the agents produce: join batches with their clock heartbeats, and dead letters.

Written once for every agent: the router and the visitor join both feed a join topic, and
the router, the joins and the reference writer all dead-letter.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from schemas.records import DeadLetter, JoinRecord, encode_batches, json_encoder
from streams.logic.messages import Message
from streams.logic.privacy import dead_letter
from streams.metrics import Metrics


class Every:
    """`due(key)` is true at most once every `seconds` per key (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[Hashable, float] = defaultdict(lambda: float("-inf"))

    def due(self, key: Hashable = None) -> bool:
        now = time.monotonic()
        if now - self._last[key] < self.seconds:
            return False
        self._last[key] = now
        return True


async def feed_join(topic: Any, partitions: int, batches: Mapping[int, Sequence[JoinRecord]],
                    clocks: dict[str, int], heartbeat: bool, idle: list[str] | None = None,
                    busy: list[str] | None = None) -> None:
    """Records to each partition of join `topic` that has some, and on a `heartbeat` the clocks
    to every partition: a join moves its event time only when a message reaches it. Every
    batch names the `idle` sources and the `busy` ones (records left to read). Batches are
    split under the message limit, the clocks and sources on the last part (`encode_batches`)."""
    for p in range(partitions):
        if p in batches or heartbeat:
            for value in encode_batches(list(batches.get(p, ())), clocks, idle=idle, busy=busy):
                await topic.send(value=value, partition=p)


class DeadLetters:
    """The `dead-letters` topic: counted per source topic, keyed by the (scrubbed) original key."""

    def __init__(self, topic: Any, metrics: Metrics, salt: bytes) -> None:
        self.topic = topic
        self.metrics = metrics
        self.salt = salt

    async def invalid(self, reason: str, message: Message) -> None:
        """Dead-letter an input message that cannot be processed."""
        await self.send(dead_letter(reason, message, self.salt))

    async def send(self, letter: DeadLetter) -> None:
        self.metrics.dead_letters.labels(letter.topic).inc()
        key = letter.key.encode() if letter.key else None
        await self.topic.send(key=key, value=json_encoder.encode(letter))
