"""The router's idleness decision (streams/logic/idleness.py): no record for the idle time
and nothing left to read."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streams.logic.idleness import IdleSources, Position

IDLE_S = 60.0
CAUGHT_UP = Position(next=10, end=10)
BACKLOG = Position(next=4, end=10)
EMPTY = Position(next=0, end=0)  # a partition that never received a message
END_UNKNOWN = Position(next=0, end=None)  # no fetch response for it yet


@dataclass(frozen=True)
class Heard:
    """Records were routed from `sources` at time `at`."""

    at: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Ask:
    """At time `at` the router reads these partitions, there."""

    at: float
    positions: dict[str, Position]


@dataclass
class Case:
    name: str
    steps: list[Heard | Ask]
    idle: list[str]  # the answer to the last Ask
    idle_s: float = IDLE_S
    earlier: list[list[str]] = field(default_factory=list)  # the answers to the Asks before, if given


CASES = [
    Case("an empty partition is idle once the idle time passed since it was assigned",
         [Ask(0, {"clicks/1": EMPTY}), Ask(60, {"clicks/1": EMPTY})], ["clicks/1"], earlier=[[]]),
    Case("not before", [Ask(0, {"clicks/1": EMPTY}), Ask(59.9, {"clicks/1": EMPTY})], []),
    Case("counted from its last record", [Ask(0, {"clicks/1": CAUGHT_UP}), Heard(30, ("clicks/1",)),
                                           Ask(80, {"clicks/1": CAUGHT_UP}), Ask(90, {"clicks/1": CAUGHT_UP})],
         ["clicks/1"], earlier=[[], []]),
    Case("a partition with a backlog is never idle", [Ask(0, {"clicks/1": BACKLOG}), Ask(600, {"clicks/1": BACKLOG})],
         []),
    Case("nor one whose end is not known yet", [Ask(0, {"clicks/1": END_UNKNOWN}), Ask(600, {"clicks/1": END_UNKNOWN})],
         []),
    Case("read past a stale end: caught up", [Ask(0, {"clicks/1": Position(12, 10)}),
                                              Ask(60, {"clicks/1": Position(12, 10)})], ["clicks/1"]),
    Case("only the quiet partitions", [Ask(0, {"clicks/0": CAUGHT_UP, "orders/2": EMPTY, "clicks/1": EMPTY}),
                                       Heard(50, ("clicks/0",)),
                                       Ask(70, {"clicks/0": CAUGHT_UP, "orders/2": EMPTY, "clicks/1": EMPTY})],
         ["clicks/1", "orders/2"]),
    Case("a partition assigned again waits its full time", [Ask(0, {"clicks/1": EMPTY}), Ask(10, {}),
                                                             Ask(50, {"clicks/1": EMPTY}),
                                                             Ask(100, {"clicks/1": EMPTY})], [], earlier=[[], [], []]),
    Case("... and then is idle", [Ask(0, {"clicks/1": EMPTY}), Ask(10, {}), Ask(50, {"clicks/1": EMPTY}),
                                  Ask(110, {"clicks/1": EMPTY})], ["clicks/1"]),
    Case("a record wakes it at once", [Ask(0, {"clicks/1": EMPTY}), Ask(60, {"clicks/1": EMPTY}),
                                       Heard(61, ("clicks/1",)), Ask(61, {"clicks/1": CAUGHT_UP})], [],
         earlier=[[], ["clicks/1"]]),
    Case("idle time 0: never idle", [Ask(0, {"clicks/1": EMPTY}), Ask(10**6, {"clicks/1": EMPTY})], [], idle_s=0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_idle_sources(case: Case) -> None:
    tracker = IdleSources(case.idle_s)
    answers = []
    for step in case.steps:
        if isinstance(step, Heard):
            tracker.heard(step.sources, step.at)
        else:
            answers.append(tracker.idle(step.positions, step.at))
    assert answers[-1] == case.idle
    if case.earlier:
        assert answers[:-1] == case.earlier


@pytest.mark.parametrize("position, caught_up", [
    (CAUGHT_UP, True), (EMPTY, True), (BACKLOG, False), (END_UNKNOWN, False), (Position(11, 10), True),
])
def test_caught_up(position: Position, caught_up: bool) -> None:
    assert position.caught_up is caught_up
