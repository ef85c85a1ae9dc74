"""The event-time clock of one join partition, kept apart from any window shape.

A join partition is fed by many source partitions (every partition of the raw clicks and
signups topics; every raw orders partition and every visitor-join partition), which are
consumed at different speeds, especially while catching up on a backlog. The watermark
therefore follows the *slowest source*: it is the minimum over sources of the highest
event time seen from it, minus the allowed lateness. Until every source has been heard
from once, there is no watermark: nothing is late and nothing expires.
"""
from __future__ import annotations

import msgspec


class EventClock(msgspec.Struct, array_like=True):
    kinds: tuple[str, ...]  # the sources that must all advance
    lateness_ms: int
    max_ts: dict[str, int] = {}

    def observe(self, kind: str, ts: int) -> None:
        """Advance the clock of `kind` to `ts` (never backwards)."""
        if ts > self.max_ts.get(kind, -(2**62)):
            self.max_ts[kind] = ts

    @property
    def watermark(self) -> int | None:
        """Event time before which a new record is late, or None while a kind is unseen."""
        if any(kind not in self.max_ts for kind in self.kinds):
            return None
        return min(self.max_ts[kind] for kind in self.kinds) - self.lateness_ms

    def is_late(self, ts: int) -> bool:
        wm = self.watermark
        return wm is not None and ts < wm
