"""Fraud counters, shared by every partition and worker (Redis).

Click flooding and signup farming are counted per IP / visitor / device (the windows and
their keys are defined in `streams.logic.rules.windows`; replay counts the same windows in
memory): none of those is keyed like a join's stream, so they live in Redis rather than in
a Faust table. (Click spamming, a statistic over all of a code's signups, is applied by
ClickHouse: `streams.logic.rules.spamming`. A promoter's monthly volume and points are the
promoter stage's state: streams/logic/pricing.py.) Every write is idempotent under
redelivery: sets of event / account ids instead of counters.

Keys are namespaced by app id and topic prefix; windows follow *event time* (UTC hour or
day buckets) and expire a few days after they close: the account join snapshots the
counters when an attribution arrives (`AccountState.signals`), so later orders do not
need them.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.records import AttributionRec, ClickRec, SignupRec
from streams.logic.rules import windows
from streams.logic.rules.checks import Signals
from streams.retry import Backoff, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")
WINDOW_TTL_S = 3 * 86_400  # event-time buckets outlive the allowed lateness by days

# The counter scripts take a batch as one JSON argument: a command of thousands of arguments
# (or a pipeline of thousands of commands) costs the client far more than Redis, since the
# client encodes every argument in Python. The keys travel inside the JSON, not in KEYS:
# like the batches themselves, this needs one Redis, not a cluster (docs/operations.md).
# ARGV: ttl, JSON [[set, [member, ...]], ...]
_ADD_MEMBERS = """
local sets = cjson.decode(ARGV[2])
for _, set in ipairs(sets) do
  local key, members = set[1], set[2]
  for j = 1, #members, 1000 do
    redis.call('SADD', key, unpack(members, j, math.min(j + 999, #members)))
  end
  redis.call('EXPIRE', key, ARGV[1])
end
return #sets
"""
# ARGV: JSON [set, ...] ("" for none: 0); returns the size of each
_CARDS = """
local out = {}
for i, key in ipairs(cjson.decode(ARGV[1])) do
  out[i] = key == '' and 0 or redis.call('SCARD', key)
end
return out
"""


def _queue(pipe: Any, script: Any, keys: list[str], args: list) -> None:
    """Queue a Lua script in a pipeline (the pipeline loads it on execute if Redis lacks it)."""
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


_json = msgspec.json.Encoder().encode  # the scripts' batch argument


@dataclass(frozen=True)
class Keys:
    """Redis key names: a window of `streams.logic.rules.windows` in a namespace."""

    ns: str

    def window(self, key: str) -> str:
        return f"{self.ns}:{key}"


class SignalStore:
    """Async Redis access with retries: a Redis outage pauses the pipeline, loses nothing."""

    def __init__(self, redis_url: str, namespace: str, on_failure: Callable[[str], None] | None = None,
                 max_backoff_s: float = 10.0) -> None:
        self.redis = aioredis.from_url(redis_url)
        self.keys = Keys(namespace)
        self.on_failure = on_failure or (lambda op: None)
        self.max_backoff_s = max_backoff_s
        self._add_members = self.redis.register_script(_ADD_MEMBERS)
        self._cards = self.redis.register_script(_CARDS)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _retry(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        def failed(e: Exception, delay: float) -> None:
            self.on_failure(op)
            log.warning("redis unavailable, retrying", extra={"op": op, "error": str(e), "retry_in_s": delay})

        return await retrying(call, Backoff(0.1, 2.0, self.max_backoff_s), on_retry=failed,
                              retriable=lambda e: isinstance(e, (RedisError, OSError)))

    async def _pipeline(self, op: str, fill: Callable[[Any], None]) -> list:
        async def run() -> list:
            pipe = self.redis.pipeline(transaction=False)
            fill(pipe)
            return await pipe.execute()
        return await self._retry(op, run)

    async def record_events(self, records: Sequence[ClickRec | SignupRec]) -> None:
        """Count clicks per IP / visitor, code and hour, and signups per IP / device and day."""
        members: dict[str, list[str]] = defaultdict(list)
        for r in records:
            for key, member in windows.adds(r):
                members[self.keys.window(key)].append(member)

        def fill(pipe: Any) -> None:
            _queue(pipe, self._add_members, [], [WINDOW_TTL_S, _json(list(members.items()))])
        if members:
            await self._pipeline("record_events", fill)

    async def snapshot(self, recs: list[AttributionRec]) -> list[Signals]:
        """Flood and farming counters for the attributed click and the signup of each record."""
        if not recs:
            return []
        sets = [self.keys.window(key) if key else "" for r in recs for key in windows.reads(r)]
        [res] = await self._pipeline("snapshot", lambda pipe: _queue(pipe, self._cards, [], [_json(sets)]))
        return [windows.signals_of(res[4 * i:4 * i + 4]) for i in range(len(recs))]


def drop_namespace(redis_url: str, namespace: str) -> int:
    """Delete every key of one namespace (an app on one set of topics that is gone: a
    benchmark or test run, a retired app id); return how many went."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted
