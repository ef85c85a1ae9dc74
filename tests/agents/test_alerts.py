"""The spike watch in the worker (`AlertWatch.poll`) on fakes of its sink, topic and Redis
store: leader only, state loaded once, outputs before the save, a failed poll redone."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from sinks.alerts import CLICKS_SQL, NEWEST_SQL, OWNERS_SQL, SIGNUPS_SQL
from streams.agents.alerts import AlertWatch
from streams.logic.spike import Alert, SpikeRules
from streams.logic.spike_feed import Watcher
from streams.metrics import Metrics

RULES = SpikeRules()
B = RULES.bucket_ms
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a bucket boundary
LATENESS = B


class Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


@dataclass
class Client:
    """ClickHouse as `sinks.alerts.read_counts` sees it: 3 h of 4 clicks per bucket on code A
    (promoter P1), then `clicks` in the last bucket."""

    clicks: int = 100

    def query(self, sql: str, parameters: Any = None, settings: Any = None) -> Result:
        n = [4] * 36 + [self.clicks]
        rows = {NEWEST_SQL: [(T0 + len(n) * B - 1,)], SIGNUPS_SQL: [], OWNERS_SQL: [("A", "P1")],
                CLICKS_SQL: [("A", T0 + i * B, c, T0 + i * B + 1, T0 + (i + 1) * B - 1) for i, c in enumerate(n)]}
        return Result(rows[sql])


@dataclass
class Sink:
    client: Client = field(default_factory=Client)
    fail_write: bool = False
    written: list[Alert] = field(default_factory=list)

    async def read(self, fn: Any) -> Any:
        return fn(self.client)

    async def write_alerts(self, alerts: list[Alert]) -> None:
        if self.fail_write:
            raise ConnectionError("clickhouse down")
        self.written += alerts


@dataclass
class Topic:
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class Store:
    saved: bytes | None = None
    fail_load: bool = False
    fail_save: bool = False
    loads: int = 0

    async def load(self) -> bytes | None:
        self.loads += 1
        if self.fail_load:
            raise ConnectionError("redis down")
        return self.saved

    async def save(self, state: bytes) -> None:
        if self.fail_save:
            raise ConnectionError("redis down")
        self.saved = state


@dataclass
class Case:
    name: str
    leader: bool = True
    sink: Sink = field(default_factory=Sink)
    store: Store = field(default_factory=Store)
    alerts: set[tuple[str, str]] = field(default_factory=set)  # (kind, id) returned and published
    saved: bool = False  # the state was saved
    kept: bool = False  # the watcher stays in memory for the next poll
    redis_failures: dict[str, float] = field(default_factory=dict)


BURST = {("tracking_code", "A"), ("promoter", "P1")}
CASES = [
    Case("a follower does nothing and forgets its memory", leader=False),
    Case("a burst is written, sent and then the state saved", alerts=BURST, saved=True, kept=True),
    Case("no state loaded, no poll: a fresh detector would repeat alerts", store=Store(fail_load=True),
         redis_failures={"spikes_load": 1}),
    Case("a failed output drops the memory: the poll is redone from the last save",
         sink=Sink(fail_write=True)),
    Case("a failed save keeps the memory (the alerts are out): saved next time",
         store=Store(fail_save=True), alerts=BURST, kept=True, redis_failures={"spikes_save": 1}),
    Case("steady traffic: no alert, the state saved", sink=Sink(Client(clicks=4)), saved=True, kept=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_poll(case: Case) -> None:
    metrics, topic = Metrics(), Topic()
    watch = AlertWatch(RULES, LATENESS, case.sink, metrics, topic, case.store)  # type: ignore[arg-type]
    alerts = asyncio.run(watch.poll(case.leader))
    assert {(a.kind, a.id) for a in alerts} == case.alerts
    assert {(a.kind, a.id) for a in case.sink.written} == case.alerts
    assert {(key.decode(), msgspec.json.decode(value)["id"]) for key, value in topic.sent} == {
        (f"{k}:{i}", i) for k, i in case.alerts}
    assert (case.store.saved is not None) == case.saved
    assert (watch.watcher is not None) == case.kept
    for op in ("spikes_load", "spikes_save"):
        assert metrics.redis_failures.labels(op)._value.get() == case.redis_failures.get(op, 0)
    assert sum(metrics.spikes.labels(k)._value.get() for k in ("promoter", "tracking_code")) == len(case.alerts)


def test_a_new_leader_goes_on_from_the_saved_state() -> None:
    """The saved state restores a watcher that feeds nothing twice: the same counts alert once."""
    store = Store()
    first = AlertWatch(RULES, LATENESS, Sink(), Metrics(), Topic(), store)  # type: ignore[arg-type]
    assert asyncio.run(first.poll(True))
    assert store.saved is not None and Watcher.restore(RULES, LATENESS, store.saved).fed
    second = AlertWatch(RULES, LATENESS, Sink(), Metrics(), Topic(), store)  # type: ignore[arg-type]
    assert asyncio.run(second.poll(True)) == [] and store.loads == 2
    assert asyncio.run(second.poll(True)) == [] and store.loads == 2  # loaded once per leadership
