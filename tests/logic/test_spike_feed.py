"""Feeding the spike detector from stored counts (pure): increments, promoters, restarts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pytest

from streams.logic.spike import Obs, SpikeRules
from streams.logic.spike_feed import Watcher

RULES = SpikeRules()
B = RULES.bucket_ms
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a bucket boundary
TC, PR = "tracking_code", "promoter"


class Row(NamedTuple):
    """A `BucketCount`, as `sinks.alerts.read_counts` returns them."""

    code: str
    bucket: int
    n: int
    first_ts: int
    last_ts: int


def row(code: str, i: int, n: int, first: int = 1000, last: int = B - 1000) -> Row:
    """`n` events of `code` in bucket `i`, the first and last at these offsets into it."""
    return Row(code, T0 + i * B, n, T0 + i * B + first, T0 + i * B + last)


def steady(codes: list[str], buckets: int, n: int = 4) -> list[list[Row]]:
    """One poll per bucket; each poll sees the bucket complete."""
    return [[row(c, i, n) for c in codes] for i in range(buckets)]


@dataclass
class Case:
    name: str
    polls: list[list[Row]]  # what ClickHouse returns at each poll (totals since the open bucket)
    owners: dict[str, str] = field(default_factory=dict)
    fed: list[list[Obs]] | None = None  # expected observations per poll (None: not checked)
    alerts: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, id, bucket index)
    restart_after: int | None = None  # snapshot and restore after this poll
    open_after: set[tuple[str, str, int]] | None = None  # `fed` keys left at the end (bucket index)
    lateness: int = B


CASES = [
    Case("a new bucket: its first event at its time, the rest at the newest event's",
         [[row("A", 0, 3, 10, 50), row("B", 0, 1, 20, 20)]],
         fed=[[Obs(TC, "A", T0 + 10, 1), Obs(TC, "B", T0 + 20, 1), Obs(TC, "A", T0 + 50, 2)]]),
    Case("the same totals again feed nothing (redelivered events are counted once)",
         [[row("A", 0, 3)], [row("A", 0, 3)]],
         fed=[[Obs(TC, "A", T0 + 1000, 1), Obs(TC, "A", T0 + B - 1000, 2)], []]),
    Case("growth feeds the increment at the bucket's newest event",
         [[row("A", 0, 3, 10, 50)], [row("A", 0, 5, 10, 90)]],
         fed=[[Obs(TC, "A", T0 + 10, 1), Obs(TC, "A", T0 + 50, 2)], [Obs(TC, "A", T0 + 90, 2)]]),
    Case("a drop is ignored and later growth counts from the highest total",
         [[row("A", 0, 5)], [row("A", 0, 4)], [row("A", 0, 6)]],
         fed=[[Obs(TC, "A", T0 + 1000, 1), Obs(TC, "A", T0 + B - 1000, 4)], [],
              [Obs(TC, "A", T0 + B - 1000, 1)]]),
    Case("clicks and signups of a code add up; a promoter sums its codes; unknown codes stay codes",
         [[row("A", 0, 3, 500, 800), row("A", 0, 1, 200, 200), row("B", 0, 2, 900, 950), row("X", 0, 1, 100, 100)]],
         owners={"A": "p1", "B": "p1"},
         fed=[[Obs(TC, "X", T0 + 100, 1), Obs(PR, "p1", T0 + 200, 1), Obs(TC, "A", T0 + 200, 1),
               Obs(TC, "A", T0 + 800, 3), Obs(TC, "B", T0 + 900, 1), Obs(PR, "p1", T0 + 950, 5),
               Obs(TC, "B", T0 + 950, 1)]]),
    Case("a backlog in one poll is fed bucket by bucket, in event-time order",
         [[row("A", 2, 1), row("A", 0, 1), row("A", 1, 1)]],
         fed=[[Obs(TC, "A", T0 + 1000, 1), Obs(TC, "A", T0 + B + 1000, 1), Obs(TC, "A", T0 + 2 * B + 1000, 1)]]),
    Case("a restored watcher does not feed its open buckets again",
         [[row("A", 0, 3)], [row("A", 0, 3)], [row("A", 0, 4)]], restart_after=0,
         fed=[[Obs(TC, "A", T0 + 1000, 1), Obs(TC, "A", T0 + B - 1000, 2)], [],
              [Obs(TC, "A", T0 + B - 1000, 1)]]),
    Case("buckets behind the watermark are forgotten",
         steady(["A"], 4), open_after={(TC, "A", 2), (TC, "A", 3)}),
    Case("a burst alerts once for the code and once for its promoter",
         steady(["A", "B", "C"], 36) + [[row("A", 36, 60), row("B", 36, 4), row("C", 36, 4)]]
         + steady(["A", "B", "C"], 40)[37:],
         owners={"A": "p1", "B": "p1", "C": "p2"},
         alerts=[(PR, "p1", 36), (TC, "A", 36)]),
    Case("the same traffic in one poll (a fresh start on a backlog) gives the same alerts",
         [[r for poll in steady(["A", "B", "C"], 36) for r in poll]
          + [row("A", 36, 60), row("B", 36, 4), row("C", 36, 4)]],
         owners={"A": "p1", "B": "p1", "C": "p2"},
         alerts=[(PR, "p1", 36), (TC, "A", 36)]),
    Case("a burst inside the warm-up hour does not alert",
         steady(["A"], 6) + [[row("A", 6, 60)]]),
    Case("a restart in the middle of a burst still alerts once",
         steady(["A"], 36) + [[row("A", 36, 12)], [row("A", 36, 60)], [row("A", 36, 80)]],
         restart_after=36, alerts=[(TC, "A", 36)]),
]


def spied(w: Watcher, log: list[list[Obs]]) -> Watcher:
    """`w`, recording every batch its detector processes into the last list of `log`."""
    process = w.detector.process
    w.detector.process = lambda batch, wm=None: (log[-1].extend(batch), process(batch, wm))[1]  # type: ignore
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_watcher(case: Case) -> None:
    fed: list[list[Obs]] = []
    w = spied(Watcher(RULES, case.lateness), fed)
    alerts = []
    for i, rows in enumerate(case.polls):
        fed.append([])
        alerts += w.step(rows, case.owners).alerts
        if i == case.restart_after:
            w = spied(Watcher.restore(RULES, case.lateness, w.snapshot()), fed)
    if case.fed is not None:
        assert fed == case.fed
    assert [(a.kind, a.id, (a.bucket_start - T0) // B) for a in alerts] == case.alerts
    if case.open_after is not None:
        assert {(k, i, (b - T0) // B) for k, i, b in w.fed} == case.open_after
