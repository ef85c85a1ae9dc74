"""Consumer lag as scraped: end of partition minus the next offset to read, for the topics
the worker's agents read only (issue 11, defect 7)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from streams.logic.idleness import Position
from streams.metrics import Metrics, consumer_positions, observe_lag, partition_lag


class TP(NamedTuple):  # as Faust's TP: hashable, .topic and .partition
    topic: str
    partition: int


WANTED = frozenset({"clicks", "visitor-join"})
CHANGELOG = "refstream-visitors-changelog"


@dataclass
class Case:
    name: str
    topic: str
    read: int | None  # last offset read (Faust's _read_offset)
    committed: int | None  # next offset to read (Kafka's committed offset)
    highwater: int | None
    lag: int | None  # None: not reported


CASES = [
    Case("caught up", "clicks", 99, 99, 100, 0),
    Case("behind", "clicks", 49, 40, 100, 50),
    Case("join topic behind", "visitor-join", 9, None, 12, 2),
    Case("restart: nothing read yet, committed is the next to read", "clicks", None, 60, 100, 40),
    Case("restart: nothing read, all committed", "clicks", None, 100, 100, 0),
    Case("restart: committed at the start of the partition", "clicks", None, 0, 5, 5),
    Case("read ahead of the last commit", "clicks", 79, 50, 100, 20),
    Case("read offset past a stale end", "clicks", 120, 100, 100, 0),
    Case("neither read nor committed (a new group): all of it waits", "clicks", None, None, 100, 100),
    Case("end unknown", "clicks", 10, 5, None, None),
    Case("changelog topic: never reported", CHANGELOG, None, None, 8, None),
    Case("changelog topic frozen after a restart", CHANGELOG, None, 0, 260_462, None),
    Case("topic no agent reads", "conversions", 0, 0, 50, None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_partition_lag(case: Case) -> None:
    tp = TP(case.topic, 3)
    lags = partition_lag([tp], {tp: case.read}, {tp: case.committed}, {tp: case.highwater}, WANTED)
    assert lags == ({} if case.lag is None else {(case.topic, 3): case.lag})


@dataclass
class Consumer:
    """What observe_lag reads of a Faust consumer (offsets in defaultdicts, as Faust's)."""

    assigned: set
    highwaters: dict
    read: dict = field(default_factory=dict)
    committed: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._read_offset = defaultdict(lambda: None, self.read)
        self._committed_offset = defaultdict(lambda: None, self.committed)

    def assignment(self) -> set:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]


def samples(m: Metrics) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for family in m.registry.collect() if family.name == "refstream_consumer_lag"
            for s in family.samples}


def test_observe_lag_reports_wanted_topics_and_drops_partitions_no_longer_assigned() -> None:
    m = Metrics()
    a, b, log = TP("clicks", 0), TP("clicks", 1), TP(CHANGELOG, 0)
    consumer = Consumer({a, b, log}, {a: 10, b: 20, log: 8}, read={a: 4}, committed={b: 15})
    observe_lag(m, consumer, WANTED)
    assert samples(m) == {("clicks", "0"): 5, ("clicks", "1"): 5}
    assert dict(consumer._read_offset) == {a: 4} and dict(consumer._committed_offset) == {b: 15}

    consumer.assigned = {b}  # partition 0 moved to another worker
    observe_lag(m, consumer, WANTED)
    assert samples(m) == {("clicks", "1"): 5}


def test_a_consumer_not_started_reports_nothing() -> None:
    class NotStarted:
        def assignment(self) -> set:
            raise RuntimeError("not started")
    m = Metrics()
    m.consumer_lag.labels("clicks", "0").set(7)
    observe_lag(m, NotStarted(), WANTED)  # no exception, stale values cleared
    assert samples(m) == {}


class FaustConsumer:
    """What consumer_positions reads of a Faust consumer: its aiokafka consumer's fetch
    positions (aiokafka's subscription state) and high watermarks."""

    def __init__(self, positions: dict, highwaters: dict, reassigning: bool = False) -> None:
        states = {tp: SimpleNamespace(position=at, has_valid_position=at is not None) for tp, at in positions.items()}
        assignment = SimpleNamespace(state_value=states.get)
        subscription = SimpleNamespace(reassignment_in_progress=reassigning,
                                       subscription=SimpleNamespace(assignment=assignment))
        client = SimpleNamespace(_subscription=subscription)
        self._thread = SimpleNamespace(_ensure_consumer=lambda: client)
        self._highwaters = highwaters

    def assignment(self) -> set:
        return set(self._highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self._highwaters[tp]


def test_consumer_positions_of_the_wanted_topics_for_the_idleness_decision() -> None:
    """The router's view of its raw partitions: aiokafka's fetch position (past transaction
    markers too), None until it is known; the end as aiokafka last heard it; never a changelog."""
    a, b, empty, unknown, seeking, log = (TP("clicks", 0), TP("clicks", 1), TP("clicks", 2), TP("clicks", 3),
                                          TP("clicks", 4), TP(CHANGELOG, 0))
    consumer = FaustConsumer({a: 10, b: 15, empty: 0, unknown: 0, seeking: None, log: 3},
                             {a: 10, b: 20, empty: 0, unknown: None, seeking: 7, log: 8})
    assert consumer_positions(consumer, WANTED) == {
        "clicks/0": Position(10, 10), "clicks/1": Position(15, 20), "clicks/2": Position(0, 0),
        "clicks/3": Position(0, None), "clicks/4": Position(None, 7)}


def test_consumer_positions_of_a_consumer_that_cannot_tell() -> None:
    class NotStarted:
        def assignment(self) -> set:
            raise RuntimeError("not started")
    assert consumer_positions(NotStarted(), WANTED) is None
    rebalancing = FaustConsumer({TP("clicks", 0): 10}, {TP("clicks", 0): 10}, reassigning=True)
    assert consumer_positions(rebalancing, WANTED) is None


@pytest.mark.parametrize("role", ["all", "stream", "sink"])
def test_the_metrics_page_asks_lag_of_the_topics_the_agents_read(role: str, tmp_path: Path) -> None:
    """`/metrics` passes `app.ledger.readers`: the role's topics (`streams.topology`), never a changelog."""
    from streams.agents.app import create_app
    from streams.config import Settings
    from streams.topology import ROLES

    app = create_app(Settings(role=role, data_dir=str(tmp_path)), {"clicks": 2, "signups": 2, "orders": 2})
    assert set(app.ledger.readers) == set(ROLES[role].reads)
    assert not any(t.endswith("-changelog") for t in app.ledger.readers)
