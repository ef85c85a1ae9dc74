"""The join engine: a `JoinLogic` driven over one partition's batches, without Faust.

A join step takes the decoded batch messages of one partition of a join topic, in arrival
order, and
1. judges each record's lateness in arrival order against the partition's `EventClock`
   (streams/logic/clock.py), then takes in the record's time and, after each batch's
   records, the batch's source clocks and the sources it says are idle;
2. groups the records by key and applies each key's records in order: one state read and
   one write per key and step, every key's state bounded in size (`MAX_STATE_BYTES`);
3. lets the logic work on the step's states as a whole (`on_batch`: Redis, decisions);
4. every `sweep_every_s` per partition, advances the keys whose deadline the watermark
   passed (finalise, expire), found through a heap of deadlines per partition.
It returns what the step produced as `Outputs`; sending them and flushing the store's
changelog is the caller's business (streams/agents/joins.py). State values are msgpack;
the clock of partition p is stored in the same store under `CLOCK_KEY % p`, so it is
recovered with the state.
"""
from __future__ import annotations

import heapq
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec

from schemas.records import (
    AttributionRec,
    Batch,
    Conversion,
    DeadLetter,
    DecisionRec,
    JoinRecord,
    LateEvent,
    json_encoder,
)
from streams.logic.clock import EventClock
from streams.logic.partitioning import partition_for
from streams.logic.privacy import letter, scrub

log = logging.getLogger(__name__)
#: the store key of partition p's event clock; user keys never start with a NUL byte
CLOCK_KEY = b"\x00clock/%d"
SWEEP_EVERY_S = 0.5
#: most bytes of one key's encoded state: its changelog record must stay a valid Kafka
#: message (1 MB by default) whatever one key receives; raw events that would grow a state
#: past this are refused (dead-lettered) until the state shrinks by expiry
MAX_STATE_BYTES = 768 * 1024
FULL_STATE_BYTES = MAX_STATE_BYTES - 128 * 1024  # a full state takes updates, no new raw events

S = TypeVar("S")  # one key's state: a msgspec struct; `state_type()` is the empty state
A = TypeVar("A")  # what `apply` returns for one record


def wall_ms() -> int:
    return int(time.time() * 1000)


class StateStore(Protocol):
    """Where the engine keeps encoded states: the Faust `BatchedTable`
    (streams/delivery/changelog.py) in a worker, `MemoryStore` in tests.

    `get` and `keys` see every write at once; `set` and `delete` name the partition whose
    changelog the write belongs to."""

    def get(self, key: bytes) -> bytes | None: ...
    def keys(self) -> Iterable[bytes]: ...
    def set(self, partition: int, key: bytes, value: bytes) -> None: ...
    def delete(self, partition: int, key: bytes) -> None: ...


class MemoryStore:
    """A `StateStore` in a dict. `MemoryStore(old.data)` is what a new owner of the
    partitions recovers; `writes` lists every (partition, key, value or None) in order."""

    def __init__(self, data: Mapping[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})
        self.writes: list[tuple[int, bytes, bytes | None]] = []
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.data.get(key)

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.data))

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.writes.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            self.writes.append((partition, key, None))


@dataclass
class Outputs:
    """What a step (or a sweep) produced, per destination, each list in production order."""

    #: attributions for the account join, by its partition (visitor join only)
    attributions: dict[int, list[AttributionRec]] = field(default_factory=dict)
    #: decisions for the promoter stage, by its partition, withdrawals before the decisions
    #: that move an order (account join only)
    decisions: dict[int, list[DecisionRec]] = field(default_factory=dict)
    conversions: list[Conversion] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    #: raw events refused because their key's state is full (they stay in their raw table)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: attributions made final by the watermark, with a click / organic (a metric)
    hits: int = 0
    misses: int = 0
    #: the partition's watermark after the step (None until every source was heard from)
    watermark: int | None = None
    #: how many of the partition's sources are idle, left out of its watermark, after the step
    idle_sources: int = 0
    #: every source is idle: the next join leaves this partition out of its watermark too
    all_idle: bool = False
    #: keys waiting for a deadline, over all partitions, after a sweep (None: no sweep)
    keys: int | None = None


class JoinLogic(ABC, Generic[S, A]):
    """What one join does with its records; a `JoinEngine` does the rest (lateness,
    grouping by key, storage, size bound, deadlines, sweeping).

    In the spirit of Bytewax's `StatefulBatchLogic`: the hooks see one key's state (or the
    states of one step) and change it in place; outputs go into the `Outputs` they are
    given. Every hook must be idempotent under redelivery: a crashed step is run again.
    """

    #: the join's name, in late events, dead letters, metrics and logs
    name: str
    #: the msgspec struct of one key's state; `state_type()` is the empty state
    state_type: type[S]

    @abstractmethod
    def key_of(self, rec: JoinRecord) -> bytes:
        """The state key of a record: the key its batch was partitioned by."""

    def source_of(self, rec: JoinRecord) -> str | None:
        """The raw source partition (`topic/partition`) whose clock `rec` advances and
        against which it may be late; None for a derived record (an attribution, a
        decision), which is never late."""
        return None if isinstance(rec, (AttributionRec, DecisionRec)) else rec.src.rsplit("/", 1)[0]

    @abstractmethod
    def knows(self, state: S, rec: JoinRecord) -> bool:
        """True if `state` already holds `rec` (a redelivery, an update of what it holds):
        such a record is applied even behind the watermark and even when the state is full."""

    @abstractmethod
    def apply(self, state: S, key: bytes, rec: JoinRecord) -> A:
        """Apply one on-time or known record to `state` in place; return what `on_batch`
        needs of it. Outputs go through this result: the engine drops the results of
        records it refuses after the fact (the state would outgrow its bound)."""

    async def on_batch(self, states: dict[bytes, S], applied: dict[bytes, list[A]], out: Outputs) -> None:
        """After a step's records are applied, before the states are stored: turn what
        `apply` returned into outputs, doing any I/O for all keys at once. `states` holds
        every key of the step in arrival order, `applied` the results of its records."""

    @abstractmethod
    def empty(self, state: S) -> bool:
        """True when `state` holds nothing: the key is deleted from the store."""

    @abstractmethod
    def deadline(self, state: S) -> int | None:
        """The first watermark value past which `advance` changes `state`; None: time
        alone never changes it. The engine sweeps the key once the watermark is beyond."""

    async def on_due(self, states: dict[bytes, S], watermark: int, out: Outputs) -> None:
        """Work on all states the watermark reached in a sweep, before each one advances
        (one round of I/O for all of them)."""

    @abstractmethod
    def advance(self, state: S, key: bytes, watermark: int, out: Outputs) -> bool:
        """Move a due state on to `watermark` in place (finalise, expire), adding what that
        emits to `out`; return True when the key can be deleted."""


Item = tuple[JoinRecord, bool]  # a record and whether it arrived behind the watermark


@dataclass
class _Reports:
    """Late events and refusals of one key, kept until the key's records are settled."""

    late: list[LateEvent] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)

    def extend(self, other: _Reports) -> None:
        self.late += other.late
        self.refused += other.refused


class JoinEngine(Generic[S, A]):
    """Drives `logic` over the partitions of one join with its state in `store`.

    `sources` are the upstream partitions the watermark waits for, `derived` those of them
    that are an upstream join's partitions (their clock is its watermark), `idleness` False
    when idle sources are never left out (IDLE_PARTITION_S=0), `partitions` the join
    topic's partition count (to find a partition's keys in the store), `salt` the key of
    the personal-data hashes in dead letters. `monotonic` and `now_ms` are the clocks of
    sweeping and of dead letters' `at` (injectable for tests)."""

    def __init__(self, logic: JoinLogic[S, A], store: StateStore, *, sources: tuple[str, ...],
                 lateness_ms: int, partitions: int, derived: tuple[str, ...] = (), idleness: bool = True,
                 salt: bytes = b"", sweep_every_s: float = SWEEP_EVERY_S,
                 max_state_bytes: int = MAX_STATE_BYTES, full_state_bytes: int = FULL_STATE_BYTES,
                 monotonic: Callable[[], float] = time.monotonic, now_ms: Callable[[], int] = wall_ms) -> None:
        if full_state_bytes > max_state_bytes:
            raise ValueError("full_state_bytes must not exceed max_state_bytes")
        self.logic = logic
        self.store = store
        self.sources = sources
        self.derived = derived
        self.idleness = idleness
        self.lateness_ms = lateness_ms
        self.partitions = partitions
        self.salt = salt
        self.sweep_every_s = sweep_every_s
        self.max_state_bytes = max_state_bytes
        self.full_state_bytes = full_state_bytes
        self._monotonic = monotonic
        self._now_ms = now_ms
        self._encode = msgspec.msgpack.Encoder().encode
        self._state_decoder = msgspec.msgpack.Decoder(logic.state_type)
        self._clock_decoder = msgspec.msgpack.Decoder(EventClock)
        self._due: dict[int, list[tuple[int, bytes]]] = {}  # partition -> heap of (deadline, key)
        self._deadline: dict[bytes, int] = {}  # key -> its live entry in the heap
        self._last_sweep: dict[int, float] = {}

    def forget_assignment(self) -> None:
        """Partitions moved: deadline heaps are rebuilt from the recovered store on next use."""
        self._due.clear()
        self._deadline.clear()

    def clock(self, partition: int) -> EventClock:
        """The stored event clock of `partition`, with this engine's sources and lateness."""
        raw = self.store.get(CLOCK_KEY % partition)
        clock = self._clock_decoder.decode(raw) if raw else EventClock((), 0)
        clock.kinds, clock.lateness_ms = self.sources, self.lateness_ms  # settings may change
        clock.derived = self.derived
        if not self.idleness:
            clock.idle = []  # IDLE_PARTITION_S=0: marks stored before do not outlive the setting
        return clock

    async def process(self, partition: int, batches: Sequence[Batch]) -> Outputs:
        """One step: the batches of `partition` that arrived together, in arrival order."""
        p = partition
        out = Outputs()
        clock = self.clock(p)
        by_key: dict[bytes, list[Item]] = defaultdict(list)
        for batch in batches:
            for rec in batch.records:
                source = self.logic.source_of(rec)
                late = False
                if source is not None:
                    ts = self._ts(rec)
                    late = clock.is_late(ts)
                    clock.observe(source, ts)
                by_key[self.logic.key_of(rec)].append((rec, late))
            for source, heard in batch.clocks.items():  # after the records they cover
                clock.heard(source, heard)
            clock.wake(batch.busy)
            clock.mark_idle(batch.idle)  # after its records: those woke their sources first
        states: dict[bytes, S] = {}
        applied: dict[bytes, list[A]] = {}
        for key, items in by_key.items():
            states[key], applied[key] = self._apply_bounded(key, items, clock, out)
        await self.logic.on_batch(states, applied, out)
        for key, state in states.items():
            self._store(p, key, state, self.logic.empty(state))
        clock.settle()
        self.store.set(p, CLOCK_KEY % p, self._encode(clock))
        out.watermark = wm = clock.watermark
        out.idle_sources, out.all_idle = clock.idle_sources, clock.all_idle
        if wm is not None:
            now = self._monotonic()
            if now - self._last_sweep.get(p, float("-inf")) >= self.sweep_every_s:
                self._last_sweep[p] = now
                await self.sweep(p, wm, out)
        return out

    async def sweep(self, partition: int, watermark: int, out: Outputs | None = None) -> Outputs:
        """Advance the keys of `partition` whose deadline `watermark` passed."""
        out = Outputs() if out is None else out
        heap = self._heap(partition)
        due: dict[bytes, S] = {}
        while heap and heap[0][0] < watermark:
            deadline, key = heapq.heappop(heap)
            if self._deadline.get(key) != deadline:
                continue  # stale: the key was rescheduled or deleted since
            del self._deadline[key]
            due[key] = self._load(self.store.get(key))
        await self.logic.on_due(due, watermark, out)
        for key, state in due.items():
            delete = self.logic.advance(state, key, watermark, out)
            self._store(partition, key, state, delete)
        out.keys = len(self._deadline)
        return out

    # -- one key's records, within the size bound -----------------------------------
    def _apply_bounded(self, key: bytes, items: list[Item], clock: EventClock,
                       out: Outputs) -> tuple[S, list[A]]:
        """Apply one key's records in order (late ones reported instead); return the state
        and what `apply` returned for each record applied.

        No state may encode to more than `max_state_bytes`. A state already past
        `full_state_bytes` takes no new raw events (refused, dead-lettered) but still
        updates of what it holds (a refund of a known order, a redelivery) while they fit.
        A step that would cross the bound is redone one record at a time, refusing the raw
        events that would overflow it; that costs an encode per record taken, so only for
        keys at their bound."""
        raw = self.store.get(key)
        full = raw is not None and len(raw) >= self.full_state_bytes
        state = self._load(raw)
        reports = _Reports()
        results = self._apply_items(state, key, items, clock, len(raw) if full and raw else None, reports)
        if len(self._encode(state)) <= self.max_state_bytes:
            self._report(reports, out)
            return state, results
        state, results, reports = self._load(raw), [], _Reports()  # redo, one record at a time
        before = raw or self._encode(state)
        for item in items:
            trial = _Reports()  # a full state refuses new raw events here without an encode
            one = self._apply_items(state, key, [item], clock, len(before) if full else None, trial)
            if trial.refused or not one:
                reports.extend(trial)
                continue
            after = self._encode(state)  # what it takes (updates too) must still fit
            # derived records (attributions, decisions) replace what they update and are always taken
            if len(after) > self.max_state_bytes and self.logic.source_of(item[0]) is not None:
                state = self._state_decoder.decode(before)
                reports.refused.append(self._refusal(item[0], key, len(after)))
                full = True
            else:
                results += one
                reports.extend(trial)
                before = after
                full = full or len(after) >= self.full_state_bytes
        self._report(reports, out)
        return state, results

    def _apply_items(self, state: S, key: bytes, items: list[Item], clock: EventClock,
                     full_size: int | None, reports: _Reports) -> list[A]:
        """Apply `items`; with `full_size` (the state is full) new raw events are refused."""
        results = []
        for rec, late in items:
            known = self.logic.knows(state, rec)
            if late and not known:
                reports.late.append(self._late(rec, key, clock))
            elif full_size is not None and not known and self.logic.source_of(rec) is not None:
                reports.refused.append(self._refusal(rec, key, full_size))
            else:
                results.append(self.logic.apply(state, key, rec))
        return results

    @staticmethod
    def _report(reports: _Reports, out: Outputs) -> None:
        out.late += reports.late
        out.dead_letters += reports.refused

    def _late(self, rec: JoinRecord, key: bytes, clock: EventClock) -> LateEvent:
        assert not isinstance(rec, (AttributionRec, DecisionRec))  # derived records are never late
        kind = type(rec).__name__.removesuffix("Rec").lower()
        wm = clock.watermark or 0
        return LateEvent(kind=kind, event_id=rec.event_id, ts=rec.ts, watermark=wm, lateness_ms=wm - rec.ts,
                         join=self.logic.name, source=rec.src, key=key.decode())

    def _refusal(self, rec: JoinRecord, key: bytes, size: int) -> DeadLetter:
        """A dead letter for a raw event the key's state has no room for."""
        assert not isinstance(rec, (AttributionRec, DecisionRec))  # derived records are never refused
        topic, partition, offset = rec.src.rsplit("/", 2)
        shown_key = scrub(key.decode(errors="replace")[:128], self.salt)
        reason = (f"{self.logic.name} join state of {shown_key!r} is full ({size:,} bytes, at most "
                  f"{self.max_state_bytes:,}): not joined; the event stays in its raw table")
        return letter(reason, topic, int(partition), int(offset), key, json_encoder.encode(rec), self.salt,
                      self._now_ms())

    @staticmethod
    def _ts(rec: JoinRecord) -> int:
        if isinstance(rec, AttributionRec):
            return rec.signup_ts
        return rec.order_ts if isinstance(rec, DecisionRec) else rec.ts

    # -- storage and deadlines ------------------------------------------------------
    def _load(self, raw: bytes | None) -> S:
        return self._state_decoder.decode(raw) if raw else self.logic.state_type()

    def _store(self, p: int, key: bytes, state: S, delete: bool) -> None:
        if delete:
            self.store.delete(p, key)
            self._deadline.pop(key, None)
        else:
            self.store.set(p, key, self._encode(state))
            self._schedule(self._heap(p), key, self.logic.deadline(state))

    def _schedule(self, heap: list[tuple[int, bytes]], key: bytes, deadline: int | None) -> None:
        """Keep one live heap entry per key, at its earliest deadline; later ones go stale."""
        current = self._deadline.get(key)
        if deadline is None:
            self._deadline.pop(key, None)
        elif current is None or deadline < current:
            self._deadline[key] = deadline
            heapq.heappush(heap, (deadline, key))

    def _heap(self, p: int) -> list[tuple[int, bytes]]:
        heap = self._due.get(p)
        if heap is None:  # after (re)assignment: index the recovered keys of partition p once
            heap = self._due[p] = []
            keys = 0
            for key in self.store.keys():
                if not key.startswith(b"\x00") and partition_for(key, self.partitions) == p:
                    keys += 1
                    self._schedule(heap, key, self.logic.deadline(self._load(self.store.get(key))))
            clock = self.clock(p)
            log.info("join partition ready", extra={"join": self.logic.name, "partition": p, "keys": keys,
                                                    "watermark": clock.watermark, "sources": clock.max_ts,
                                                    "idle": clock.idle})
        return heap
