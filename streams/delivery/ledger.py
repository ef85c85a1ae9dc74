"""What a consumer commit may pass: only messages every agent that reads them finished.

Faust commits the offsets of *acked* messages, and it acks messages that no agent
processed: a stream skips (and acks) what it pulls while flow control is suspended or
after a rebalance (`faust/streams.py`, `skipped_value`), and `take_events` acks its
buffer in a `finally` even when the agent was cancelled half-way through it. Its commit
check also lets one never-acked offset at the head through. Each of these committed
offsets whose records were never processed, so a restart or rebalance lost them.

The ledger keeps the worker's own account instead, independent of Faust's acks (its
Cython stream iterator acks without calling any method a subclass could override): a
message is *pending* from the moment the consumer hands it to the agents' queues until
every agent of the worker that reads its topic has called `finish` on it. `limit` (the
lowest pending offset of a partition) bounds what may be committed. A pending message
that Faust acked, or dropped (a queue cleared on stop or rebalance), was given up on
(`abandoned`): it must be read again. The ledger holds messages weakly: Faust waits at
shutdown until the messages it delivered are acked or garbage.
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CommitLedger:
    """Per-worker record of delivered and finished messages (pure: no Faust, no I/O).

    `readers` maps a topic name to the number of this worker's agents that read it;
    topics not in it (changelogs, the assignor topic) are not guarded. Partitions are
    any hashable value (Faust's `TP`); messages need `.tp`, `.topic`, `.offset` and
    `.acked` (set by Faust when it is done with a message, processed or not) and
    `.generation_id` (the consumer generation it was fetched in).
    """

    readers: dict[str, int] = field(default_factory=dict)
    # partition -> offset -> (the delivered message, weakly; its generation)
    _pending: dict[Hashable, dict[int, tuple[weakref.ref, int | None]]] = field(
        default_factory=lambda: defaultdict(dict))
    # finish counts per delivered message object: two copies of one offset (a redelivery
    # after a seek) are counted apart
    _finished: weakref.WeakKeyDictionary[Any, int] = field(default_factory=weakref.WeakKeyDictionary)
    finished_total: int = 0  # messages every reader finished, since start: shows the agents progress

    def delivered(self, message: Any) -> None:
        """The consumer hands `message` to the agents' queues."""
        if message.topic in self.readers:
            self._pending[message.tp][message.offset] = (weakref.ref(message), message.generation_id)

    def finish(self, message: Any) -> None:
        """One agent is done with `message` (its outputs are sent)."""
        readers = self.readers.get(message.topic)
        if readers is None:
            return
        n = self._finished.get(message, 0) + 1
        if n < readers:
            self._finished[message] = n
            return
        self._finished.pop(message, None)
        self.finished_total += 1
        pending = self._pending.get(message.tp)
        if pending is not None:
            pending.pop(message.offset, None)  # processed, whichever copy was delivered last

    def finish_events(self, events: Iterable[Any]) -> None:
        """`finish` the message of every Faust event in `events`."""
        for event in events:
            self.finish(event.message)

    def limit(self, tp: Hashable, committed: int | None = None) -> int | None:
        """The highest offset a commit of `tp` may name (the lowest pending offset), or None
        if nothing is pending. Pending offsets below `committed` are stale and dropped."""
        pending = self._pending.get(tp)
        if not pending:
            return None
        low = min(pending)
        if committed is not None and low < committed:
            for offset in [o for o in pending if o < committed]:
                del pending[offset]
            return self.limit(tp)
        return low

    def abandoned(self, tp: Hashable) -> tuple[int, int | None] | None:
        """(offset, generation) of the lowest pending message of `tp` if Faust gave up on
        it (acked it unfinished: skipped, or left by a cancelled agent; or dropped it from a
        queue), else None."""
        pending = self._pending.get(tp)
        if not pending:
            return None
        offset = min(pending)
        ref, generation = pending[offset]
        message = ref()
        return (offset, generation) if message is None or message.acked else None

    def pending(self, tp: Hashable) -> int:
        return len(self._pending.get(tp, ()))

    def keep_only(self, tps: Iterable[Hashable]) -> None:
        """A new assignment: partitions not in `tps` moved to other workers, which read
        them from the committed offset. Entries of those kept stay: they fall below the
        committed offset or are replaced by the copies the recovery's seek delivers."""
        kept = set(tps)
        for tp in [tp for tp in self._pending if tp not in kept]:
            del self._pending[tp]


def commit_run(acked: list[int], committed: int | None, limit: int | None) -> int:
    """How many offsets at the head of the sorted `acked` list a commit takes: their
    consecutive run, cut before the ledger's `limit`; none when the run does not start at
    the committed offset. Like Faust, one missing offset at the head is tolerated (a
    transaction marker or a compacted record leaves such a hole); a pending message
    there is caught by `limit` instead."""
    if not acked or (committed is not None and acked[0] - committed > 1):
        return 0
    n = 1
    while n < len(acked) and acked[n] == acked[n - 1] + 1:
        n += 1
    if limit is not None:
        while n and acked[n - 1] >= limit:
            n -= 1
    return n
