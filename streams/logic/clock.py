"""The event-time clock of one join partition, kept apart from any window shape.

A join partition is fed by many source partitions (every partition of the raw clicks and
signups topics; every raw orders partition and every visitor-join partition), which are
consumed at different speeds, especially while catching up on a backlog. The watermark
therefore follows the *slowest source*: it is the minimum over sources of the highest
event time seen from it, minus the allowed lateness. Until every source has been heard
from once, there is no watermark: nothing is late and nothing expires.

A raw source partition the router found idle (no record for `IDLE_PARTITION_S`, nothing
left to read) is left out of the minimum, so one silent partition does not stop event
time (Flink's `withIdleness`); so is an upstream join partition whose own sources are all
idle. A source rejoins only on real progress: an on-time record from it, a clock that
raises its time (for a raw source: to an on-time value; a late straggler wakes nothing),
or its router saying it has records left to read (a backlog after a restart). A router's
old clocks of a partition it no longer reads never wake it. When every source is idle the
watermark moves to the newest event time seen minus the lateness and holds there: event
time never follows the wall clock. The watermark never goes backwards (`floor`): a source
that wakes up behind it waits at the floor, and its records behind it are late.
"""
from __future__ import annotations

import msgspec

_NEVER = -(2**62)


class EventClock(msgspec.Struct, array_like=True):
    # stored msgpack array-like in the state store: append fields only, with defaults
    kinds: tuple[str, ...]  # the sources that must all advance (unless idle)
    lateness_ms: int
    max_ts: dict[str, int] = {}
    idle: list[str] = []  # sources left out of the watermark, sorted (a stable encoding)
    floor: int | None = None  # the highest watermark so far: it never goes back below
    #: sources whose clock is an upstream join's watermark (set from the settings, like kinds):
    #: any rise wakes them, as it means that join moves again
    derived: tuple[str, ...] = ()

    def observe(self, kind: str, ts: int) -> None:
        """A record of raw source `kind` at `ts`. An on-time record is real progress: an idle
        `kind` rejoins the watermark. A late one (judged before, `is_late`) wakes nothing, so
        a straggler now and then cannot hold event time at the floor."""
        if self.idle and kind in self.idle and not self.is_late(ts):
            self._wake(kind)
        if ts > self.max_ts.get(kind, _NEVER):
            self.max_ts[kind] = ts

    def heard(self, kind: str, ts: int) -> None:
        """A batch's clock of `kind`: it wakes an idle `kind` only when it raises its time (a
        router keeps old clocks of partitions it no longer reads), and a raw source only to
        an on-time value (the clock goes to every partition, the straggler's record to one)."""
        if ts > self.max_ts.get(kind, _NEVER):
            if self.idle and kind in self.idle and (kind in self.derived or not self.is_late(ts)):
                self._wake(kind)
            self.max_ts[kind] = ts

    def wake(self, kinds: list[str]) -> None:
        """`kinds` have records left to read (their router says so): they take part again."""
        for kind in kinds:
            if self.idle and kind in self.idle:
                self._wake(kind)

    def mark_idle(self, kinds: list[str]) -> None:
        """Leave `kinds` out of the watermark until they progress (only this clock's sources:
        the watermark can only move up)."""
        new = [k for k in kinds if k in self.kinds and k not in self.idle]
        if new:
            self.idle = sorted(self.idle + new)

    def settle(self) -> None:
        """Keep the current watermark as the floor (before the clock is stored): a change of
        sources or lateness in the settings never moves it back either."""
        self.floor = self.watermark

    @property
    def all_idle(self) -> bool:
        """Every source is idle: the join feeding on this clock is idle for the next one."""
        return bool(self.kinds) and self.idle_sources == len(self.kinds)

    @property
    def idle_sources(self) -> int:
        """How many of this clock's sources are left out of the watermark."""
        return sum(1 for k in self.idle if k in self.kinds) if self.idle else 0

    @property
    def watermark(self) -> int | None:
        """Event time before which a new record is late, or None while a source that is not
        idle is unseen (and no watermark was reached before)."""
        now = self._current()
        if now is None or (self.floor is not None and self.floor > now):
            return self.floor
        return now

    def is_late(self, ts: int) -> bool:
        wm = self.watermark
        return wm is not None and ts < wm

    def _current(self) -> int | None:
        max_ts = self.max_ts
        if not self.idle:  # the common case, per record
            if any(kind not in max_ts for kind in self.kinds):
                return None
            return min(max_ts[kind] for kind in self.kinds) - self.lateness_ms
        idle = set(self.idle)
        active = [kind for kind in self.kinds if kind not in idle]
        if active:
            if any(kind not in max_ts for kind in active):
                return None
            return min(max_ts[kind] for kind in active) - self.lateness_ms
        seen = [max_ts[kind] for kind in self.kinds if kind in max_ts]  # every source idle
        return max(seen) - self.lateness_ms if seen else None

    def _wake(self, kind: str) -> None:
        self.floor = self.watermark  # what it had reached holds while the woken source catches up
        self.idle = [k for k in self.idle if k != kind]
