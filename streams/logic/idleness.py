"""Which raw source partitions are idle (pure; the router asks, streams/agents/router.py).

Only the router knows which raw partitions it reads and whether anything is left in them,
so it decides. A partition assigned to it is idle when
- no record was routed from it for `idle_after_s` of processing time (since its last
  record, or since it was assigned), and
- it is caught up: its end offset is known (a fetch response told it) and the next offset
  to read is at or past it. A partition with a backlog is never idle, however long its
  records take to come: a slow consumer must not make them late; the router names it
  busy, and a join that knew it idle takes it back at once.
The joins then leave it out of their watermarks until it has records again
(streams/logic/clock.py). `idle_after_s` 0: never idle.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Position(NamedTuple):
    """Where the router is in one assigned partition."""

    next: int | None  # the next offset to read; None until the consumer knows (after a seek)
    end: int | None  # the partition's end (high watermark); None until a fetch response told it

    @property
    def caught_up(self) -> bool:
        return self.end is not None and self.next is not None and self.next >= self.end

    @property
    def behind(self) -> bool:
        """Records are known to be left to read."""
        return self.end is not None and self.next is not None and self.next < self.end


def busy(positions: Mapping[str, Position]) -> list[str]:
    """The sources of `positions` with records left to read, sorted: a join that knew them
    idle takes them back into its watermark before their records come (after a restart, the
    records a quiet partition got meanwhile must not be judged against the others' time)."""
    return sorted(source for source, position in positions.items() if position.behind)


@dataclass
class IdleSources:
    """Tracks when each assigned source partition ("topic/partition") last gave a record."""

    idle_after_s: float
    _since: dict[str, float] = field(default_factory=dict)  # source -> last record or assignment

    def heard(self, sources: Iterable[str], now: float) -> None:
        """Records were routed from `sources` at `now` (monotonic seconds)."""
        for source in sources:
            self._since[source] = now

    def idle(self, positions: Mapping[str, Position], now: float) -> list[str]:
        """The sources of `positions` (the assigned partitions) idle at `now`, sorted.
        A source new in `positions` counts from `now`; one no longer in it is forgotten, so
        a partition assigned again waits its full time before it is idle."""
        if self.idle_after_s <= 0:
            return []
        since = self._since
        for gone in [s for s in since if s not in positions]:
            del since[gone]
        out = []
        for source, position in positions.items():
            if now - since.setdefault(source, now) >= self.idle_after_s and position.caught_up:
                out.append(source)
        return sorted(out)
