"""FxDirectory: the rate of a currency in force at an event time (streams/logic/fx.py)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import FxRate
from streams.logic.fx import FxDirectory

T0 = 1_780_000_000_000
DAY = 86_400_000


def fx(eid: str, currency: str, rate: str, ts: int, effective_from: int | None = None) -> FxRate:
    return FxRate(event_id=eid, ts=ts, currency=currency, rate=Decimal(rate), effective_from=effective_from)


@dataclass
class Case:
    name: str
    rates: list[FxRate]
    currency: str
    at: int
    expect: str | None


EUR_1 = fx("e1", "EUR", "1.08", T0)
EUR_2 = fx("e2", "EUR", "1.10", T0 + DAY)
CASES = [
    Case("no rates at all", [], "EUR", T0, None),
    Case("unknown currency", [EUR_1], "JPY", T0 + DAY, None),
    Case("before the first rate: none is invented", [EUR_1, EUR_2], "EUR", T0 - 1, None),
    Case("from the rate's ts on", [EUR_1], "EUR", T0, "1.08"),
    Case("as of a time: the version in force", [EUR_1, EUR_2], "EUR", T0 + DAY - 1, "1.08"),
    Case("the next version from its ts", [EUR_1, EUR_2], "EUR", T0 + DAY, "1.10"),
    Case("arrival order does not matter", [EUR_2, EUR_1], "EUR", T0 + 1, "1.08"),
    Case("effective_from, not ts, sets when it applies",
         [EUR_1, fx("e3", "EUR", "1.20", T0 + 5 * DAY, effective_from=T0 + 2 * DAY)], "EUR", T0 + 3 * DAY, "1.20"),
    Case("a back-dated rate published later",
         [EUR_1, fx("e3", "EUR", "1.20", T0 + 5 * DAY, effective_from=T0 + 2 * DAY)], "EUR", T0 + 2 * DAY - 1,
         "1.08"),
    Case("a future effective_from is not in force yet",
         [EUR_1, fx("e3", "EUR", "1.20", T0, effective_from=T0 + DAY)], "EUR", T0 + DAY - 1, "1.08"),
    Case("the same start: the higher event_id wins, on every worker",
         [fx("b", "EUR", "1.2", T0), fx("a", "EUR", "1.1", T0)], "EUR", T0, "1.2"),
    Case("a redelivered message adds nothing",
         [EUR_1, EUR_2, fx("e1", "EUR", "9.99", T0 + 2 * DAY)], "EUR", T0 + 3 * DAY, "1.10"),
    Case("currencies are apart", [EUR_1, fx("j1", "JPY", "0.0069", T0 + DAY)], "EUR", T0 + 2 * DAY, "1.08"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rate_as_of(case: Case) -> None:
    d = FxDirectory()
    for r in case.rates:
        d.add(r)
    assert d.rate(case.currency, case.at) == (None if case.expect is None else Decimal(case.expect))


def test_len_counts_currencies() -> None:
    d = FxDirectory()
    for r in (EUR_1, EUR_2, EUR_1, fx("j1", "JPY", "0.0069", T0)):
        d.add(r)
    assert len(d) == 2


versions = st.lists(st.tuples(st.sampled_from(["EUR", "JPY"]), st.integers(1, 999), st.integers(0, 10),
                              st.none() | st.integers(0, 10)), max_size=12)


def _start(r: FxRate) -> int:
    return int(r.effective_from if r.effective_from is not None else r.ts)


@given(versions, st.randoms(use_true_random=False))
def test_redelivery_and_arrival_order_do_not_change_a_rate(items: list, rnd) -> None:
    """Every worker reads the topic in its own order, some messages twice: all answer alike, and
    each answer is the latest version (by start, then event_id) not after the time."""
    rates = [fx(f"e{i:02}", cur, f"{n}.5", T0 + ts * DAY, None if since is None else T0 + since * DAY)
             for i, (cur, n, ts, since) in enumerate(items)]
    redelivered = rates + rates
    rnd.shuffle(redelivered)
    a, b = FxDirectory(), FxDirectory()
    for r in rates:
        a.add(r)
    for r in redelivered:
        b.add(r)
    for cur in ("EUR", "JPY"):
        for day in range(-1, 12):
            at = T0 + day * DAY
            best = max((r for r in rates if r.currency == cur and _start(r) <= at),
                       key=lambda r: (_start(r), r.event_id), default=None)
            assert a.rate(cur, at) == b.rate(cur, at) == (best.rate if best else None)
