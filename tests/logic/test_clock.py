"""The event clock of a join partition: the slowest source, idle sources left out, the floor."""
from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.logic.clock import EventClock

KINDS = ("a", "b", "c")
LATENESS = 10


@dataclass(frozen=True)
class Rec:
    """A record of `kind` at `ts` (observe): real progress."""

    kind: str
    ts: int


@dataclass(frozen=True)
class Clk:
    """A batch's clock of `kind` (heard): progress only if it raises the time."""

    kind: str
    ts: int


@dataclass(frozen=True)
class Idle:
    """A batch names these sources idle."""

    kinds: tuple[str, ...]


@dataclass(frozen=True)
class Busy:
    """A batch names these sources busy: records are left to read in them."""

    kinds: tuple[str, ...]


@dataclass(frozen=True)
class Reconfigured:
    """The clock is stored, and read back under other settings (a restart after partitions
    were added, another lateness)."""

    kinds: tuple[str, ...]
    lateness: int = LATENESS


Op = Rec | Clk | Idle | Busy | Reconfigured


def apply(clock: EventClock, op: Op) -> None:
    if isinstance(op, Rec):
        clock.observe(op.kind, op.ts)
    elif isinstance(op, Clk):
        clock.heard(op.kind, op.ts)
    elif isinstance(op, Idle):
        clock.mark_idle(list(op.kinds))
    elif isinstance(op, Busy):
        clock.wake(list(op.kinds))
    else:
        clock.settle()
        clock.kinds, clock.lateness_ms = op.kinds, op.lateness


def clock_after(ops: list[Op], kinds: tuple[str, ...] = KINDS, derived: tuple[str, ...] = ()) -> EventClock:
    clock = EventClock(kinds, LATENESS, derived=derived)
    for op in ops:
        apply(clock, op)
    return clock


SEEN = [Rec("a", 100), Rec("b", 50), Rec("c", 100)]  # b is the slowest


@dataclass
class Case:
    name: str
    ops: list[Op]
    watermark: int | None
    idle: list[str]
    derived: tuple[str, ...] = ()  # sources that are upstream joins' partitions


CASES = [
    Case("the slowest source", SEEN, 40, []),
    Case("an unseen source: no watermark", SEEN[:2], None, []),
    Case("an unseen source that is idle is left out", [*SEEN[:2], Idle(("c",))], 40, ["c"]),
    Case("an idle source is left out of the minimum", [*SEEN, Idle(("b",))], 90, ["b"]),
    Case("every source idle: the newest event time seen", [*SEEN[:2], Idle(KINDS)], 90, ["a", "b", "c"]),
    Case("every source idle, none seen: no watermark", [Idle(KINDS)], None, ["a", "b", "c"]),
    Case("every source idle, then it holds: no event time is invented",
         [*SEEN, Idle(KINDS), Clk("a", 100), Clk("c", 20)], 90, ["a", "b", "c"]),
    Case("an on-time record wakes its source: the watermark waits at the floor",
         [*SEEN, Idle(("b",)), Rec("b", 95)], 90, []),
    Case("a woken source is in the minimum again once it passes the floor",
         [*SEEN, Idle(("b",)), Rec("b", 95), Rec("a", 300), Rec("c", 300), Rec("b", 120)], 110, []),
    Case("a clock that does not raise an idle source's time does not wake it",
         [*SEEN, Idle(("b",)), Clk("b", 50), Rec("a", 300), Rec("c", 300)], 290, ["b"]),
    Case("a clock that raises it to an on-time value wakes it",
         [*SEEN, Idle(("b",)), Clk("b", 95), Rec("a", 300), Rec("c", 300)], 90, []),
    Case("a clock that raises it to a late value does not (a straggler's clock reaches every partition)",
         [*SEEN, Idle(("b",)), Clk("b", 60), Rec("a", 300), Rec("c", 300)], 290, ["b"]),
    Case("a late record (a straggler) wakes nothing: event time moves on",
         [*SEEN, Idle(("b",)), Rec("b", 60), Rec("a", 300), Rec("c", 300)], 290, ["b"]),
    Case("an upstream join's clock wakes it on any rise (that join moves again)",
         [*SEEN, Idle(("b",)), Clk("b", 60), Rec("a", 300), Rec("c", 300)], 90, [], derived=("b",)),
    Case("a busy source (records left to read) is taken back at once",
         [*SEEN, Idle(("b",)), Busy(("b",)), Rec("a", 300), Rec("c", 300)], 90, []),
    Case("busy names only wake: a source that is not idle stays as it is",
         [*SEEN, Busy(("b", "x"))], 40, []),
    Case("a source that is not the clock's is never marked", [*SEEN, Idle(("x",))], 40, []),
    Case("marked twice, kept once", [*SEEN, Idle(("b",)), Idle(("b", "c"))], 90, ["b", "c"]),
    Case("one woken source of all idle: the floor holds until it passes",
         [*SEEN[:2], Idle(KINDS), Rec("b", 95)], 90, ["a", "c"]),
    Case("... and then it alone moves the watermark", [*SEEN[:2], Idle(KINDS), Rec("b", 95), Rec("b", 500)],
         490, ["a", "c"]),
    Case("a new source in the settings: the floor holds until it is heard",
         [*SEEN, Reconfigured(("a", "b", "c", "d"))], 40, []),
    Case("a larger lateness in the settings does not move the watermark back",
         [*SEEN, Reconfigured(KINDS, lateness=30)], 40, []),
    Case("... and the watermark moves on once the sources pass it", [*SEEN, Reconfigured(KINDS, lateness=30),
                                                                     Rec("b", 200)], 70, []),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_watermark(case: Case) -> None:
    clock = clock_after(case.ops, derived=case.derived)
    assert (clock.watermark, clock.idle) == (case.watermark, case.idle)
    assert clock.idle_sources == len([k for k in case.idle if k in clock.kinds])
    assert clock.all_idle == (set(case.idle) >= set(clock.kinds))


def test_lateness_is_judged_before_a_record_wakes_its_source() -> None:
    clock = clock_after([*SEEN, Idle(("b",))])
    assert clock.watermark == 90
    assert clock.is_late(70)  # b's record behind the watermark: late, though b was at 50
    clock.observe("b", 70)
    assert clock.is_late(80) and not clock.is_late(90)  # the floor, not b's 70 - 10


def test_an_old_stored_clock_decodes() -> None:
    """Clocks are stored msgpack array-like: one stored before `idle` and `floor` still reads."""
    old = msgspec.msgpack.encode([["a", "b"], LATENESS, {"a": 100, "b": 50}])
    clock = msgspec.msgpack.decode(old, type=EventClock)
    assert (clock.watermark, clock.idle, clock.floor) == (40, [], None)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(clock_after(CASES[4].ops)), type=EventClock).watermark == 90


# -- properties ------------------------------------------------------------------------
ops = st.lists(st.one_of(
    st.builds(Rec, st.sampled_from(KINDS), st.integers(0, 1_000)),
    st.builds(Clk, st.sampled_from(KINDS), st.integers(0, 1_000)),
    st.builds(Idle, st.lists(st.sampled_from(KINDS), max_size=3).map(tuple)),
    st.builds(Busy, st.lists(st.sampled_from(KINDS), max_size=3).map(tuple)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_the_watermark_never_goes_back(ops: list[Op]) -> None:
    clock = EventClock(KINDS, LATENESS)
    seen: int | None = None
    for op in ops:
        apply(clock, op)
        wm = clock.watermark
        assert seen is None or (wm is not None and wm >= seen), f"{seen} -> {wm} after {op}"
        seen = wm


@settings(max_examples=300, deadline=None)
@given(before=ops, woken=st.sampled_from(KINDS), old=st.lists(st.integers(1, 1_000), min_size=1, max_size=5),
       between=ops)
def test_a_woken_sources_records_behind_the_watermark_are_late(before: list[Op], woken: str, old: list[int],
                                                               between: list[Op]) -> None:
    """Whatever happened before and while it was idle, records of a source that wakes up
    behind the watermark are late, every one of them, even after it woke."""
    clock = clock_after([*before, Idle((woken,)), *between])
    wm = clock.watermark
    for back in old:
        if wm is not None:
            assert clock.is_late(wm - back)
        clock.observe(woken, wm - back if wm is not None else back)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.builds(Rec, st.sampled_from(KINDS), st.integers(0, 1_000)), max_size=30))
def test_without_idle_sources_it_is_the_slowest_source(records: list[Rec]) -> None:
    clock = clock_after(list(records))
    highest = {k: max((r.ts for r in records if r.kind == k), default=None) for k in KINDS}
    values = list(highest.values())
    expected = None if None in values else min(v for v in values if v is not None) - LATENESS
    assert clock.watermark == expected
