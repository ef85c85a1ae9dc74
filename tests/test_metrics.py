"""Consumer lag as scraped: end of partition minus the next offset to read."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from streams.metrics import Metrics, observe_lag


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class Consumer:
    """The two things observe_lag reads of a Faust consumer."""

    def __init__(self, read: dict, highwaters: dict) -> None:
        self._read_offset = read
        self._hw = highwaters

    def assignment(self) -> set:
        return set(self._hw)

    def highwater(self, tp: TP) -> int | None:
        return self._hw[tp]


@dataclass
class Case:
    name: str
    read: int | None
    highwater: int | None
    lag: float | None  # None: not reported


CASES = [
    Case("caught up", 99, 100, 0),
    Case("behind", 49, 100, 50),
    Case("nothing read yet", None, 100, 100),
    Case("end unknown", 10, None, None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_observe_lag(case: Case) -> None:
    m = Metrics()
    tp = TP("clicks", 3)
    observe_lag(m, Consumer({tp: case.read}, {tp: case.highwater}))
    assert m.registry.get_sample_value("refstream_consumer_lag", {"topic": "clicks", "partition": "3"}) == case.lag


def test_a_consumer_not_started_is_skipped() -> None:
    class NotStarted:
        def assignment(self) -> set:
            raise RuntimeError("not started")
    observe_lag(Metrics(), NotStarted())  # no exception, nothing set
