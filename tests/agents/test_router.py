"""The router agent names its idle raw partitions in every batch it sends, per join."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from schemas.records import Batch, ClickRec, batch_decoder, encode_batches
from streams.agents.outputs import DeadLetters, Every
from streams.agents.router import Router
from streams.config import Settings
from streams.logic.idleness import Position
from streams.metrics import Metrics

NOW_MS = 1_790_000_000_000
EMPTY, CAUGHT_UP, BACKLOG = Position(0, 0), Position(5, 5), Position(2, 5)


@dataclass
class Topic:
    """Collects what is sent to it, decoded."""

    sent: list[tuple[int | None, Batch]] = field(default_factory=list)

    async def send(self, key: bytes | None = None, value: bytes = b"", partition: int | None = None) -> None:
        self.sent.append((partition, batch_decoder.decode(value)))


@dataclass
class Msg:
    topic: str
    partition: int
    value: bytes
    offset: int = 0
    key: bytes | None = None


def click(partition: int) -> Msg:
    body = {"event_id": f"c{partition}", "ts": NOW_MS - 1000, "tracking_code": "T", "visitor_id": "v"}
    return Msg("p-clicks", partition, json.dumps(body).encode())


@dataclass(frozen=True)
class Beat:
    """At `at` seconds, the heartbeat timer fires."""

    at: float


@dataclass(frozen=True)
class Route:
    """At `at` seconds, a fetch of these messages is routed."""

    at: float
    messages: tuple[Msg, ...]


@dataclass
class Case:
    name: str
    positions: dict[str, Position] | None  # what the consumer says (the same all along); None: it cannot tell
    steps: list[Beat | Route]
    visitor_idle: list[str]  # named in every batch of the last step to visitor-join
    account_idle: list[str]


READS = {"p-clicks/0": CAUGHT_UP, "p-clicks/1": EMPTY, "p-signups/0": CAUGHT_UP, "p-orders/0": EMPTY}
CASES = [
    Case("nothing is idle before the idle time", READS, [Beat(0), Beat(59)], [], []),
    Case("quiet, caught-up partitions are named to the join they feed", READS,
         [Beat(0), Route(30, (click(0),)), Beat(60)], ["p-clicks/1", "p-signups/0"], ["p-orders/0"]),
    Case("a partition that just gave a record is not named with it", READS,
         [Beat(0), Route(30, (click(0),)), Route(61, (click(1),))], ["p-signups/0"], ["p-orders/0"]),
    Case("a backlog is never idle", {**READS, "p-clicks/1": BACKLOG}, [Beat(0), Route(550, (click(0),)), Beat(600)],
         ["p-signups/0"], ["p-orders/0"]),
    Case("the consumer cannot tell: none named", None, [Beat(0), Beat(600)], [], []),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_batches_name_the_idle_partitions(case: Case) -> None:
    now = [0.0]
    topics = SimpleNamespace(visitor_join=Topic(), account_join=Topic(), dead_letters=Topic())
    metrics = Metrics()
    settings = Settings(partitions=2, topic_prefix="p-", idle_partition_s=60)
    router = Router(settings, topics, metrics, DeadLetters(topics.dead_letters, metrics, b""),
                    positions=lambda: case.positions, monotonic=lambda: now[0])
    router.heartbeats = Every(0)  # every send is a heartbeat: every join partition hears it
    for step in case.steps:
        now[0] = step.at
        sent = len(topics.visitor_join.sent), len(topics.account_join.sent)
        asyncio.run(router.route(list(step.messages)) if isinstance(step, Route) else router.heartbeat())
    visitor, account = topics.visitor_join.sent[sent[0]:], topics.account_join.sent[sent[1]:]
    assert {p for p, _ in visitor} == {p for p, _ in account} == {0, 1}
    assert all(b.idle == case.visitor_idle for _, b in visitor)
    assert all(b.idle == case.account_idle for _, b in account)
    exported = {s.labels["topic"]: s.value for family in metrics.registry.collect() for s in family.samples
                if s.name == "refstream_idle_input_partitions"}
    idle = case.visitor_idle + case.account_idle
    assert exported == ({} if case.positions is None else
                        {t: float(sum(s.startswith(t + "/") for s in idle)) for t in ("p-clicks", "p-signups", "p-orders")})


def test_a_split_batch_names_the_idle_sources_on_its_last_part_with_the_clocks() -> None:
    """A join must not mark a source idle before it took that source's records of the batch."""
    records = [ClickRec(f"c{i}", i, "v", "T", url="x" * 1000) for i in range(40)]
    parts = [batch_decoder.decode(m) for m in encode_batches(list(records), {"p-clicks/0": 39}, 8 * 1024,
                                                             idle=["p-clicks/1"])]
    assert len(parts) > 1
    assert [(b.clocks, b.idle) for b in parts] == [({}, [])] * (len(parts) - 1) + [({"p-clicks/0": 39}, ["p-clicks/1"])]
    assert [r for b in parts for r in b.records] == records
