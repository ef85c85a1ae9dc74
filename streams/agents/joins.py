"""Glue between the join topics, the join tables and the pure join logic.

One message of a join topic is a batch of records for one partition; a step takes the
messages of one partition that arrived together (up to `JOIN_BATCH`). A step:
1. judges lateness in arrival order against the partition's event clock (one clock per
   source partition; see streams/logic/clock.py), taking in each message's source clocks
   after its records,
2. applies the records key by key (one state read and write per key and batch),
3. sends what the pure functions returned (attributions, conversions, late events),
4. now and then advances the keys that are due to the watermark (finalise, expire): a
   heap of deadlines per partition, so a sweep touches only what changes.
State values are msgpack bytes in Faust tables whose changelogs get one record batch per
partition and step (streams/delivery/changelog.py); the clock of partition p lives in the
same table under a reserved key, so it is recovered with the state.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections import defaultdict
from typing import Any, Callable

import msgspec

from schemas.records import (
    ClickRec, Conversion, DeadLetter, LateEvent, OrderRec, SignupRec,
    batch_decoder, encode_batches, json_encoder,
)
from streams.delivery.changelog import BatchedTable
from streams.config import Settings
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.clock import EventClock
from streams.metrics import Metrics
from streams.logic.partitioning import partition_for
from streams.logic.privacy import dead_letter, scrub
from streams.logic.rules.ruleset import load_rules
from streams.adapters.signals import SignalStore

log = logging.getLogger(__name__)
CLOCK_KEY = b"\x00clock/%d"
SWEEP_EVERY_S = 0.5
#: most bytes of one key's encoded state: its changelog record must stay a valid Kafka
#: message (1 MB by default) whatever one key receives; raw events that would grow a state
#: past this are refused (dead-lettered) until the state shrinks by expiry
MAX_STATE_BYTES = 768 * 1024
FULL_STATE_BYTES = MAX_STATE_BYTES - 128 * 1024  # a full state takes updates, no new raw events
#: apply one record to a key's state: (state, key, record) -> what the caller collects
ApplyOne = Callable[[Any, bytes, Any], Any]


class JoinStep:
    name: str
    state_type: type

    def __init__(self, settings: Settings, table: BatchedTable, topics: Any, metrics: Metrics,
                 sources: tuple[str, ...]) -> None:
        self.settings = settings
        self.sources = sources  # every upstream partition the watermark waits for
        self.table = table
        self.topics = topics
        self.metrics = metrics
        self._encoder = msgspec.msgpack.Encoder()
        self._state_decoder = msgspec.msgpack.Decoder(self.state_type)
        self._clock_decoder = msgspec.msgpack.Decoder(EventClock)
        self._salt = settings.pii_salt.encode()
        self._due: dict[int, list[tuple[int, bytes]]] = {}  # partition -> heap of (deadline, key)
        self._deadline: dict[bytes, int] = {}  # key -> its live entry in the heap
        self._last_sweep: dict[int, float] = defaultdict(float)
        self._out: list[tuple[str, Any]] = []

    # -- per subclass --------------------------------------------------------------
    def source_of(self, rec: Any) -> str | None:
        """The raw source partition of a record; None for derived records (never late)."""
        return rec.src.rsplit("/", 1)[0] if hasattr(rec, "src") else None

    def key_of(self, rec: Any) -> bytes: ...
    def apply(self, state: Any, key: bytes, rec: Any) -> None: ...
    def knows(self, state: Any, rec: Any) -> bool: ...
    def advance(self, state: Any, key: bytes, watermark: int) -> bool: ...
    def deadline(self, state: Any) -> int | None: ...

    # -- plumbing ------------------------------------------------------------------
    def forget_assignment(self) -> None:
        """Partitions moved: deadline heaps are rebuilt from the recovered table on next use."""
        self._due.clear()
        self._deadline.clear()

    def _load(self, key: bytes) -> Any:
        raw = self.table.get(key)
        return self._state_decoder.decode(raw) if raw else self.state_type()

    def _store(self, p: int, key: bytes, state: Any, empty: bool) -> None:
        if empty:
            self.table.delete(p, key)
            self._deadline.pop(key, None)
        else:
            self.table.set(p, key, self._encoder.encode(state))
            self._schedule(self._heap(p), key, self.deadline(state))

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
            n = self.settings.partitions
            keys = 0
            for key in self.table.keys():
                if not key.startswith(b"\x00") and partition_for(key, n) == p:
                    keys += 1
                    self._schedule(heap, key, self.deadline(self._load(key)))
            clock = self._clock(p)
            log.info("join partition ready", extra={"join": self.name, "partition": p, "keys": keys,
                                                    "watermark": clock.watermark, "sources": clock.max_ts})
        return heap

    def _clock(self, p: int) -> EventClock:
        raw = self.table.get(CLOCK_KEY % p)
        clock = self._clock_decoder.decode(raw) if raw else EventClock((), 0)
        clock.kinds, clock.lateness_ms = self.sources, self.settings.lateness_ms  # settings may change
        return clock

    async def process(self, events: list[Any]) -> None:
        """Process batch messages of one partition of this join's topic, in order, as one step."""
        p = events[0].message.partition
        clock = self._clock(p)
        by_key: dict[bytes, list[tuple[Any, bool]]] = defaultdict(list)
        for event in events:
            try:
                batch = batch_decoder.decode(event.value)
            except Exception as exc:  # not written by a router: someone else wrote to the join topic
                self._undecodable(event.message, exc)
                continue
            for rec in batch.records:
                source = self.source_of(rec)
                late = False
                if source is not None:
                    late = clock.is_late(rec.ts)
                    clock.observe(source, rec.ts)
                by_key[self.key_of(rec)].append((rec, late))
            for source, ts in batch.clocks.items():
                clock.observe(source, ts)
        await self.apply_batch(p, by_key, clock)
        self.table.set(p, CLOCK_KEY % p, self._encoder.encode(clock))
        wm = clock.watermark
        if wm is not None:
            self.metrics.watermark.labels(self.name, str(p)).set(wm)
            now = time.monotonic()
            if now - self._last_sweep[p] >= SWEEP_EVERY_S:
                self._last_sweep[p] = now
                await self._sweep(p, wm)
        await self._flush(p, wm)
        await self.table.flush()

    async def apply_batch(self, p: int, by_key: dict[bytes, list[tuple[Any, bool]]], clock: EventClock) -> None:
        """Apply a batch key by key: one state read and write per key."""
        for key, items in by_key.items():
            state, _ = self.apply_bounded(key, items, clock, p, self.apply)
            self._store(p, key, state, state_is_empty(state))

    def apply_bounded(self, key: bytes, items: list[tuple[Any, bool]], clock: EventClock, p: int,
                      apply: ApplyOne) -> tuple[Any, list[Any]]:
        """Apply one key's records in order (late ones reported instead); return the state and
        what `apply` returned for each record applied.

        No state may encode to more than MAX_STATE_BYTES. A state already past FULL_STATE_BYTES
        takes no new raw events (refused, dead-lettered) but still updates of what it holds
        (a refund of a known order, a redelivery). A step that would cross MAX_STATE_BYTES is
        redone one record at a time, refusing those that would overflow; that costs an encode
        per record, but only once per key: afterwards the key is full."""
        raw = self.table.get(key)
        full = raw is not None and len(raw) >= FULL_STATE_BYTES
        mark = len(self._out)
        state = self._load(key)
        results = self._apply_items(state, key, items, clock, p, apply, len(raw) if full and raw else None)
        size = len(self._encoder.encode(state))
        if size <= MAX_STATE_BYTES:
            return state, results
        del self._out[mark:]  # outputs of the records about to be refused must not go out
        state, results = self._load(key), []
        before = raw or self._encoder.encode(state)
        for item in items:
            if full:
                results.extend(self._apply_items(state, key, [item], clock, p, apply, len(before)))
                continue
            mark = len(self._out)
            applied = self._apply_items(state, key, [item], clock, p, apply, None)
            after = self._encoder.encode(state)
            # derived records (attributions) replace what they update and are always taken
            if len(after) > MAX_STATE_BYTES and self.source_of(item[0]) is not None:
                del self._out[mark:]
                state = self._state_decoder.decode(before)
                self._refuse(item[0], key, len(after))
                full = True
            else:
                results.extend(applied)
                before = after
                full = len(after) >= FULL_STATE_BYTES
        return state, results

    def _apply_items(self, state: Any, key: bytes, items: list[tuple[Any, bool]], clock: EventClock,
                     p: int, apply: ApplyOne, full_size: int | None) -> list[Any]:
        """Apply `items`; with `full_size` (the state is full) new raw events are refused."""
        results = []
        for rec, late in items:
            known = self.knows(state, rec)
            if late and not known:
                self._late(rec, clock, p)
            elif full_size is not None and not known and self.source_of(rec) is not None:
                self._refuse(rec, key, full_size)
            else:
                results.append(apply(state, key, rec))
        return results

    def _undecodable(self, message: Any, exc: Exception) -> None:
        self.metrics.dead_letters.labels(message.topic).inc()
        reason = f"not a join batch ({type(exc).__name__}: {exc}); only refstream routers write {message.topic}"
        self._out.append(("dead", dead_letter(reason, message, self._salt)))

    def _refuse(self, rec: Any, key: bytes, size: int) -> None:
        """Dead-letter a raw event the key's state has no room for (it stays in its raw table)."""
        topic, partition, offset = rec.src.rsplit("/", 2)
        self.metrics.dead_letters.labels(topic).inc()
        self.metrics.state_refused.labels(self.name).inc()
        value = json_encoder.encode(rec)
        shown_key = key.decode(errors="replace")[:128]
        self._out.append(("dead", DeadLetter(
            reason=(f"{self.name} join state of {shown_key!r} is full ({size:,} bytes, at most "
                    f"{MAX_STATE_BYTES:,}): not joined; the event stays in its raw table"),
            topic=topic, partition=int(partition), offset=int(offset), key=scrub(shown_key, self._salt),
            value=scrub(value.decode(errors="replace"), self._salt), at=int(time.time() * 1000),
            value_bytes=len(value), value_sha256=hashlib.sha256(value).hexdigest(),
        )))

    async def _sweep(self, p: int, watermark: int) -> None:
        heap = self._heap(p)
        due: dict[bytes, Any] = {}
        while heap and heap[0][0] < watermark:
            deadline, key = heapq.heappop(heap)
            if self._deadline.get(key) != deadline:
                continue  # stale: the key was rescheduled or deleted since
            del self._deadline[key]
            due[key] = self._load(key)
        await self.on_due(due, watermark)
        for key, state in due.items():
            delete = self.advance(state, key, watermark)
            self._store(p, key, state, delete)
        self.metrics.state_keys.labels(self.name).set(len(self._deadline))

    async def on_due(self, states: dict[bytes, Any], watermark: int) -> None:
        """Hook: work on states the watermark reached, before they advance."""

    def _late(self, rec: Any, clock: EventClock, p: int) -> None:
        kind = type(rec).__name__.removesuffix("Rec").lower()
        self.metrics.late_events.labels(self.name, kind).inc()
        wm = clock.watermark or 0
        self._out.append(("late", LateEvent(
            kind=kind, event_id=rec.event_id, ts=rec.ts, watermark=wm, lateness_ms=wm - rec.ts,
            join=self.name, source=rec.src, key=self.key_of(rec).decode(),
        )))

    async def _flush(self, p: int, watermark: int | None) -> None:
        out, self._out = self._out, []
        attributions: dict[int, list] = defaultdict(list)
        n = self.settings.partitions
        for kind, item in out:
            if kind == "late":
                await self.topics.late_events.send(key=item.key.encode(), value=json_encoder.encode(item))
            elif kind == "conversion":
                await self.topics.conversions.send(key=item.order_id.encode(), value=json_encoder.encode(item))
            elif kind == "dead":
                await self.topics.dead_letters.send(key=(item.key or "").encode() or None,
                                                    value=json_encoder.encode(item))
            else:  # attribution, to the account join
                attributions[partition_for(item.account_id.encode(), n)].append(item)
        await self.send_downstream(p, watermark, attributions)

    async def send_downstream(self, p: int, watermark: int | None, batches: dict[int, list]) -> None:
        """Only the visitor join feeds another join."""


def by_partition(events: list[Any]) -> list[list[Any]]:
    """`events` split into one list per partition, each in arrival order."""
    steps: dict[int, list[Any]] = defaultdict(list)
    for event in events:
        steps[event.message.partition].append(event)
    return list(steps.values())


def state_is_empty(state: Any) -> bool:
    if isinstance(state, attr.VisitorState):
        return state.empty
    return state.signup is None and not state.orders


class VisitorJoin(JoinStep):
    """clicks + signups by visitor_id -> attributions."""

    name = "visitor"
    state_type = attr.VisitorState

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        s = self.settings
        self.rules = attr.AttributionRules(s.window_ms, s.attribution_model, s.max_clicks_per_visitor)
        self.book = load_rules(s.rules_file)
        self._heard: dict[int, float] = defaultdict(float)

    async def send_downstream(self, p: int, watermark: int | None, batches: dict[int, list]) -> None:
        """Attributions to the account join, with this partition's watermark as its clock;
        every account partition hears that clock at least every SWEEP_EVERY_S."""
        clocks = {f"visitor/{p}": watermark} if watermark is not None else {}
        heartbeat = bool(clocks) and time.monotonic() - self._heard[p] >= SWEEP_EVERY_S
        if heartbeat:
            self._heard[p] = time.monotonic()
        for q in range(self.settings.partitions):
            if q in batches or heartbeat:
                for value in encode_batches(batches.get(q, []), clocks):
                    await self.topics.account_join.send(value=value, partition=q)

    def key_of(self, rec: Any) -> bytes:
        return rec.visitor_id.encode()

    def knows(self, state: attr.VisitorState, rec: Any) -> bool:
        return attr.knows(state, rec.event_id)

    def apply(self, state: attr.VisitorState, key: bytes, rec: ClickRec | SignupRec) -> None:
        if isinstance(rec, ClickRec):
            out = attr.add_click(state, rec.visitor_id, attr.click_ref(rec, self.book), self.rules)
        else:
            out = attr.add_signup(state, rec.account_id, rec.visitor_id, rec.event_id, rec.ts, self.rules,
                                  attr.signup_ident(rec))
        self._out.extend(("attribution", a) for a in out)

    def advance(self, state: attr.VisitorState, key: bytes, watermark: int) -> bool:
        final = attr.advance(state, key.decode(), watermark, self.rules, self.settings.lateness_ms)
        for a in final:
            self.metrics.join_results.labels(self.name, "hit" if a.click else "miss").inc()
        self._out.extend(("attribution", a) for a in final)
        return state.empty

    def deadline(self, state: attr.VisitorState) -> int | None:
        return attr.due(state, self.rules, self.settings.lateness_ms)


class AccountJoin(JoinStep):
    """orders + attributions by account_id -> checked, priced conversions.

    Per batch: apply the records to state (pure), read the cross-partition counters the
    decisions need from Redis (one round trip each for the fraud counters and the
    promoters' ledgers), decide (pure), then enter the decided conversions in the ledgers
    before sending them. When the watermark closes the counters' windows, the counters
    are read for good and the account re-decided (`on_due`). Click spamming is a
    promoter-wide statistic: `conversions_current` applies it (sinks/tables.py).
    """

    name = "account"
    state_type = conv.AccountState

    def __init__(self, settings: Settings, table: BatchedTable, topics: Any, metrics: Metrics,
                 sources: tuple[str, ...], promoters: Any, exclusions: Any, signals: SignalStore) -> None:
        super().__init__(settings, table, topics, metrics, sources)
        rules = conv.ConversionRules(settings.binding_ms, settings.refund_window_ms, settings.attribution_model)
        self.ctx = conv.Context(rules, load_rules(settings.rules_file), promoters, exclusions)
        self.signals = signals

    def key_of(self, rec: Any) -> bytes:
        return rec.account_id.encode()

    def knows(self, state: conv.AccountState, rec: Any) -> bool:
        return isinstance(rec, OrderRec) and conv.knows(state, rec)

    async def apply_batch(self, p: int, by_key: dict[bytes, list[tuple[Any, bool]]], clock: EventClock) -> None:
        states: dict[bytes, conv.AccountState] = {}
        touched: dict[bytes, set[str]] = {}
        fresh: list[bytes] = []  # keys whose attribution arrived: snapshot their signals
        for key, items in by_key.items():
            states[key], results = self.apply_bounded(key, items, clock, p, self._add)
            touched[key] = set().union(*(ids for ids, _ in results))
            if any(is_fresh for _, is_fresh in results):
                fresh.append(key)  # counters as of the final attribution, then frozen
        await self._snapshot(states, list(dict.fromkeys(fresh)))
        await self._decide_and_emit(states, touched)
        for key, state in states.items():
            conv.prune(state, self.ctx.rules)
            self._store(p, key, state, state_is_empty(state))

    @staticmethod
    def _add(state: conv.AccountState, key: bytes, rec: Any) -> tuple[set[str], bool]:
        """Apply an order or attribution: (order ids touched, whether the signals need a snapshot)."""
        if isinstance(rec, OrderRec):
            return conv.add_order(state, rec), False
        frozen = state.signals is not None and state.signup is not None and state.signup.final
        touched = conv.add_attribution(state, rec)
        return touched, not frozen and state.signup is not None and state.signup.click is not None

    async def _snapshot(self, states: dict[bytes, conv.AccountState], keys: list[bytes]) -> None:
        recs = [states[k].signup for k in keys]
        snaps = await self.signals.snapshot(recs)  # type: ignore[arg-type]
        for key, snap in zip(keys, snaps):
            states[key].signals = snap

    async def _decide(self, states: dict[bytes, conv.AccountState], touched: dict[bytes, set[str]]) -> list[Conversion]:
        now = int(time.time() * 1000)
        asks: list[tuple[str, int]] = []
        index: dict[tuple[bytes, str], int] = {}
        for key, state in states.items():
            if state.signup is None or state.signup.click is None:
                continue
            code = state.signup.click.tracking_code
            for oid in conv.candidates(state, self.ctx.rules):
                ts = state.orders[oid].order.ts
                promoter = self.ctx.promoter(code, ts)
                index[key, oid] = len(asks)
                asks.append((promoter.promoter_id if promoter else "", ts))
        answers = await self.signals.ledger_before(asks)
        out: list[Conversion] = []
        for key, state in states.items():
            def live(oid: str, key: bytes = key) -> conv.Live:
                volume, points = answers[index[key, oid]]
                return conv.Live(volume_before=volume, points_before=points)
            out.extend(conv.decide_all(state, touched[key], self.ctx, live, now))
        return out

    async def on_due(self, states: dict[bytes, conv.AccountState], watermark: int) -> None:
        """Windows of the counters closed: read them for good and re-decide (new revisions
        only where a reason appears or goes)."""
        closing = {k: st for k, st in states.items() if conv.needs_final_signals(st, watermark)}
        if not closing:
            return
        await self._snapshot(closing, list(closing))
        for st in closing.values():
            st.signals_final = True
        await self._decide_and_emit(closing, {k: set() for k in closing})

    async def _decide_and_emit(self, states: dict[bytes, conv.AccountState], touched: dict[bytes, set[str]]) -> None:
        """Decide, enter the decisions in the promoters' ledgers, then queue them for sending."""
        decisions = await self._decide(states, touched)
        await self.signals.record_ledger(decisions)
        self._emit(decisions)

    def _emit(self, decisions: list[Conversion]) -> None:
        for c in decisions:
            self.metrics.conversions.labels(c.status).inc()
            for r in c.reasons:
                self.metrics.fraud_reasons.labels(r).inc()
        self._out.extend(("conversion", c) for c in decisions)

    def advance(self, state: conv.AccountState, key: bytes, watermark: int) -> bool:
        return conv.advance(state, watermark, self.ctx.rules)

    def deadline(self, state: conv.AccountState) -> int | None:
        return conv.due(state, self.ctx.rules)
