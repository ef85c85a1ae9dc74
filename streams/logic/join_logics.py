"""The pipeline's two join steps as `JoinLogic` (streams/logic/engine.py).

`VisitorLogic`: clicks + signups by visitor_id -> attributions (streams/logic/attribution.py).
`AccountLogic`: orders + attributions by account_id -> checked, priced conversions
(streams/logic/conversions.py), with the cross-partition counters and the promoters'
ledger behind `SignalBackend` (Redis in a worker: streams/adapters/signals.py).
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from schemas.records import AttributionRec, ClickRec, Conversion, JoinRecord, OrderRec, SignupRec
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.engine import JoinLogic, Outputs, wall_ms
from streams.logic.partitioning import partition_for
from streams.logic.rules.checks import Signals
from streams.logic.rules.ruleset import RuleBook


class VisitorLogic(JoinLogic[attr.VisitorState, list[AttributionRec]]):
    """clicks + signups by visitor_id -> attributions, by account-join partition
    (`partitions` of them); a signup's attribution is final once the watermark passes it
    and is kept `lateness_ms` more so that its redeliveries are recognised."""

    name = "visitor"
    state_type = attr.VisitorState

    def __init__(self, rules: attr.AttributionRules, book: RuleBook, lateness_ms: int, partitions: int) -> None:
        self.rules = rules
        self.book = book
        self.lateness_ms = lateness_ms
        self.partitions = partitions

    def key_of(self, rec: JoinRecord) -> bytes:
        if not isinstance(rec, (ClickRec, SignupRec)):
            raise TypeError(f"the visitor join takes clicks and signups, not {type(rec).__name__}")
        return rec.visitor_id.encode()

    def knows(self, state: attr.VisitorState, rec: JoinRecord) -> bool:
        return isinstance(rec, (ClickRec, SignupRec)) and attr.knows(state, rec.event_id)

    def apply(self, state: attr.VisitorState, key: bytes, rec: JoinRecord) -> list[AttributionRec]:
        if isinstance(rec, ClickRec):
            return attr.add_click(state, rec.visitor_id, attr.click_ref(rec, self.book), self.rules)
        assert isinstance(rec, SignupRec)  # key_of let nothing else in
        return attr.add_signup(state, rec.account_id, rec.visitor_id, rec.event_id, rec.ts, self.rules,
                               attr.signup_ident(rec))

    async def on_batch(self, states: dict[bytes, attr.VisitorState],
                       applied: dict[bytes, list[list[AttributionRec]]], out: Outputs) -> None:
        for results in applied.values():
            for recs in results:
                self._send(recs, out)

    def empty(self, state: attr.VisitorState) -> bool:
        return state.empty

    def deadline(self, state: attr.VisitorState) -> int | None:
        return attr.due(state, self.rules, self.lateness_ms)

    def advance(self, state: attr.VisitorState, key: bytes, watermark: int, out: Outputs) -> bool:
        final = attr.advance(state, key.decode(), watermark, self.rules, self.lateness_ms)
        for a in final:
            if a.click:
                out.hits += 1
            else:
                out.misses += 1
        self._send(final, out)
        return state.empty

    def _send(self, recs: list[AttributionRec], out: Outputs) -> None:
        for a in recs:
            out.attributions.setdefault(partition_for(a.account_id.encode(), self.partitions), []).append(a)


class SignalBackend(Protocol):
    """The counters and ledger shared by every partition and worker (`SignalStore`)."""

    async def snapshot(self, recs: list[AttributionRec]) -> list[Signals]:
        """Flood and farming counters for the attributed click and the signup of each record."""
        ...

    async def ledger_before(self, asks: list[tuple[str, int]]) -> list[tuple[Decimal, int]]:
        """For (promoter_id, order_ts): counted sales earlier that month, points of earlier months."""
        ...

    async def record_ledger(self, convs: list[Conversion]) -> None:
        """Enter decided conversions in their promoters' ledgers (idempotent per order)."""
        ...


#: what `AccountLogic.apply` returns: the order ids a record touches, and whether the
#: account's signals need a (new) snapshot
Touched = tuple[set[str], bool]


class AccountLogic(JoinLogic[conv.AccountState, Touched]):
    """orders + attributions by account_id -> checked, priced conversions.

    Per step: apply the records to state, read the counters the decisions need (one round
    trip each for the fraud counters and the promoters' ledgers), decide, then enter the
    decided conversions in the ledgers before they are sent. When the watermark closes the
    counters' windows, they are read for good and the account re-decided (`on_due`). Click
    spamming is a promoter-wide statistic: `conversions_current` applies it (sinks/tables.py).
    """

    name = "account"
    state_type = conv.AccountState

    def __init__(self, ctx: conv.Context, signals: SignalBackend, now_ms: Callable[[], int] = wall_ms) -> None:
        self.ctx = ctx
        self.signals = signals
        self.now_ms = now_ms

    def key_of(self, rec: JoinRecord) -> bytes:
        if not isinstance(rec, (OrderRec, AttributionRec)):
            raise TypeError(f"the account join takes orders and attributions, not {type(rec).__name__}")
        return rec.account_id.encode()

    def knows(self, state: conv.AccountState, rec: JoinRecord) -> bool:
        return isinstance(rec, OrderRec) and conv.knows(state, rec)

    def apply(self, state: conv.AccountState, key: bytes, rec: JoinRecord) -> Touched:
        if isinstance(rec, OrderRec):
            return conv.add_order(state, rec), False
        assert isinstance(rec, AttributionRec)  # key_of let nothing else in
        frozen = state.signals is not None and state.signup is not None and state.signup.final
        touched = conv.add_attribution(state, rec)
        # counters as of the final attribution, then frozen
        return touched, not frozen and state.signup is not None and state.signup.click is not None

    async def on_batch(self, states: dict[bytes, conv.AccountState], applied: dict[bytes, list[Touched]],
                       out: Outputs) -> None:
        touched = {key: set().union(*(ids for ids, _ in results)) for key, results in applied.items()}
        fresh = [key for key, results in applied.items() if any(snap for _, snap in results)]
        await self._snapshot(states, fresh)
        await self._decide_and_emit(states, touched, out)
        for state in states.values():
            conv.prune(state, self.ctx.rules)

    def empty(self, state: conv.AccountState) -> bool:
        return state.signup is None and not state.orders

    def deadline(self, state: conv.AccountState) -> int | None:
        return conv.due(state, self.ctx.rules)

    async def on_due(self, states: dict[bytes, conv.AccountState], watermark: int, out: Outputs) -> None:
        """The counters' windows closed: read them for good and re-decide (new revisions
        only where a reason or the evidence counts change)."""
        closing = {k: st for k, st in states.items() if conv.needs_final_signals(st, watermark)}
        if not closing:
            return
        await self._snapshot(closing, list(closing))
        for st in closing.values():
            st.signals_final = True
        await self._decide_and_emit(closing, {k: set() for k in closing}, out)

    def advance(self, state: conv.AccountState, key: bytes, watermark: int, out: Outputs) -> bool:
        return conv.advance(state, watermark, self.ctx.rules)

    async def _snapshot(self, states: dict[bytes, conv.AccountState], keys: list[bytes]) -> None:
        recs = [s for k in keys if (s := states[k].signup) is not None]
        assert len(recs) == len(keys)  # only attributed accounts are snapshot
        for key, snap in zip(keys, await self.signals.snapshot(recs)):
            states[key].signals = snap

    async def _decide_and_emit(self, states: dict[bytes, conv.AccountState], touched: dict[bytes, set[str]],
                               out: Outputs) -> None:
        """Decide, enter the decisions in the promoters' ledgers, then queue them for sending."""
        decisions = await self._decide(states, touched)
        await self.signals.record_ledger(decisions)
        out.conversions += decisions

    async def _decide(self, states: dict[bytes, conv.AccountState],
                      touched: dict[bytes, set[str]]) -> list[Conversion]:
        now = self.now_ms()
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
