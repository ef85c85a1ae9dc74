"""Which promoter owns a tracking code, as of an event time."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from schemas.events import Promoter
from streams.reference import PromoterDirectory


@dataclass
class Case:
    name: str
    code: str
    ts: int
    expected: str | None


def directory() -> PromoterDirectory:
    d = PromoterDirectory()
    for eid, ts, pid in [("e2", 200, "bob"), ("e1", 100, "alice"), ("e1", 100, "alice")]:
        d.add(Promoter(event_id=eid, ts=ts, promoter_id=pid, tracking_code="T"))
    return d


CASES = [
    Case("unknown code", "Z", 150, None),
    Case("first version", "T", 150, "alice"),
    Case("a later version takes over at its time", "T", 200, "bob"),
    Case("before the first known version (compacted history)", "T", 50, "alice"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_as_of(case: Case) -> None:
    ref = directory().as_of(case.code, case.ts)
    assert (ref.promoter_id if ref else None) == case.expected


def test_duplicates_are_absorbed() -> None:
    assert len(directory()._versions["T"]) == 2
