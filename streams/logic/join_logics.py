"""The pipeline's three join steps as `JoinLogic` (streams/logic/engine.py).

`VisitorLogic`: clicks + signups by visitor_id -> attributions (streams/logic/attribution.py).
`AccountLogic`: orders + attributions by account_id -> checked decisions
(streams/logic/conversions.py), with the cross-partition fraud counters behind
`SignalBackend` (Redis in a worker: streams/adapters/signals.py).
`PromoterLogic`: decisions by promoter_id -> priced conversions (streams/logic/pricing.py),
priced in event-time order per promoter, so prices do not depend on arrival order.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from schemas.records import AttributionRec, ClickRec, Conversion, DecisionRec, JoinRecord, OrderRec, SignupRec
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic import pricing
from streams.logic.engine import FULL_STATE_BYTES, JoinLogic, Outputs, wall_ms
from streams.logic.partitioning import partition_for
from streams.logic.rules.checks import Signals
from streams.logic.rules.ruleset import RuleBook

log = logging.getLogger(__name__)


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
                               attr.signup_ident(rec), rec.coupon_code)

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
    """The fraud counters shared by every partition and worker (`SignalStore`)."""

    async def snapshot(self, recs: list[AttributionRec]) -> list[Signals]:
        """Flood and farming counters for the attributed click and the signup of each record."""
        ...


#: what `AccountLogic.apply` returns: the order ids a record touches, and whether the
#: account's signals need a (new) snapshot
Touched = tuple[set[str], bool]


class AccountLogic(JoinLogic[conv.AccountState, Touched]):
    """orders + attributions by account_id -> checked decisions, to the promoter stage by
    its partition (`partitions` of them).

    Per step: apply the records to state, read the fraud counters the decisions need (one
    round trip), decide. A decision goes to its promoter's partition, after a withdrawal
    from the promoter its order was last sent to if that one differs; a decision without a
    promoter (unknown_promoter) has nothing to price and goes out as a conversion at once.
    When the watermark closes the counters' windows, they are read for good and the account
    re-decided (`on_due`). Click spamming is a promoter-wide statistic: `conversions_current`
    applies it (sinks/tables.py).
    """

    name = "account"
    state_type = conv.AccountState

    def __init__(self, ctx: conv.Context, signals: SignalBackend, partitions: int,
                 now_ms: Callable[[], int] = wall_ms, rates: pricing.RateLookup = pricing.no_rates) -> None:
        self.ctx = ctx
        self.signals = signals
        self.partitions = partitions
        self.now_ms = now_ms
        self.rates = rates  # for the program-currency amount of decisions without a promoter

    def key_of(self, rec: JoinRecord) -> bytes:
        if not isinstance(rec, (OrderRec, AttributionRec)):
            raise TypeError(f"the account join takes orders and attributions, not {type(rec).__name__}")
        return rec.account_id.encode()

    def knows(self, state: conv.AccountState, rec: JoinRecord) -> bool:
        return isinstance(rec, OrderRec) and conv.knows(state, rec)

    def apply(self, state: conv.AccountState, key: bytes, rec: JoinRecord) -> Touched:
        rules = self.ctx.rules
        if isinstance(rec, OrderRec):
            touched = conv.add_order(state, rec)
            # an order's coupon code may attribute an account that had no counters yet
            return touched, bool(rec.coupon_code) and state.signals is None and conv.attributed(state, rules)
        assert isinstance(rec, AttributionRec)  # key_of let nothing else in
        frozen = state.signals is not None and state.signup is not None and state.signup.final
        touched = conv.add_attribution(state, rec)
        # counters as of the final attribution, then frozen
        return touched, not frozen and conv.attributed(state, rules)

    async def on_batch(self, states: dict[bytes, conv.AccountState], applied: dict[bytes, list[Touched]],
                       out: Outputs) -> None:
        touched = {key: set().union(*(ids for ids, _ in results)) for key, results in applied.items()}
        fresh = [key for key, results in applied.items() if any(snap for _, snap in results)]
        await self._snapshot(states, fresh)
        self._decide_and_emit(states, touched, out)
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
        self._decide_and_emit(closing, {k: set() for k in closing}, out)

    def advance(self, state: conv.AccountState, key: bytes, watermark: int, out: Outputs) -> bool:
        return conv.advance(state, watermark, self.ctx.rules)

    async def _snapshot(self, states: dict[bytes, conv.AccountState], keys: list[bytes]) -> None:
        recs = [s for k in keys if (s := states[k].signup) is not None]
        assert len(recs) == len(keys)  # only accounts with a signup are snapshot
        for key, snap in zip(keys, await self.signals.snapshot(recs)):
            states[key].signals = snap

    def _decide_and_emit(self, states: dict[bytes, conv.AccountState], touched: dict[bytes, set[str]],
                         out: Outputs) -> None:
        now = self.now_ms()
        for key, state in states.items():
            decided = conv.decide_all(state, touched[key], self.ctx, now)
            for d in conv.reroute(state, decided):  # withdrawals first: the order leaves its old promoter
                self._send(d, out)
            for d in decided:
                if d.promoter_id:
                    self._send(d, out)
                else:  # nobody to price it for
                    out.conversions.append(pricing.unpriced(d, now, self.ctx.book, self.rates))

    def _send(self, d: DecisionRec, out: Outputs) -> None:
        out.decisions.setdefault(partition_for(d.promoter_id.encode(), self.partitions), []).append(d)


#: what `PromoterLogic.apply` returns: the open order to re-price, or a closed month's conversion
Priced = tuple[str | None, list[Conversion]]


class PromoterLogic(JoinLogic[pricing.PromoterBook, Priced]):
    """decisions by promoter_id -> priced conversions (streams/logic/pricing.py).

    Decisions are derived records: never late, never refused (`source_of` is None), so the
    watermark comes only from the account partitions' clocks. Per step, each promoter's
    open months are re-priced once, whatever number of decisions it got; a decision for a
    closed month is priced alone in `apply`. Closing a month (`advance`) fixes prices
    that were already sent, so it emits nothing.
    """

    name = "promoter"
    state_type = pricing.PromoterBook

    def __init__(self, book: RuleBook, now_ms: Callable[[], int] = wall_ms,
                 rates: pricing.RateLookup = pricing.no_rates) -> None:
        self.book = book
        self.now_ms = now_ms
        self.rates = rates  # exchange rates as of a time (streams/logic/fx.py), for `book.currency`

    def key_of(self, rec: JoinRecord) -> bytes:
        if not isinstance(rec, DecisionRec):
            raise TypeError(f"the promoter stage takes decisions, not {type(rec).__name__}")
        return rec.promoter_id.encode()

    def knows(self, state: pricing.PromoterBook, rec: JoinRecord) -> bool:
        # the engine takes derived records anyway; this only says what the state holds
        return isinstance(rec, DecisionRec) and (rec.order_id in state.open or rec.order_id in state.final)

    def apply(self, state: pricing.PromoterBook, key: bytes, rec: JoinRecord) -> Priced:
        assert isinstance(rec, DecisionRec)  # key_of let nothing else in
        return pricing.add(state, rec, self.book, self.now_ms(), self.rates)

    async def on_batch(self, states: dict[bytes, pricing.PromoterBook], applied: dict[bytes, list[Priced]],
                       out: Outputs) -> None:
        now = self.now_ms()
        for key, results in applied.items():
            touched = {oid for oid, _ in results if oid is not None}
            out.conversions += [c for _, convs in results for c in convs]
            if touched:
                out.conversions += pricing.reprice(states[key], touched, self.book, now, self.rates)
            self._bound(key, states[key])

    def empty(self, state: pricing.PromoterBook) -> bool:
        return not (state.open or state.final or state.customers or state.closed)

    def _bound(self, key: bytes, state: pricing.PromoterBook) -> None:
        """Decisions are derived records the engine always takes: keep the book a valid
        changelog record (`pricing.shrink`), and say so when that costs exactness."""
        shrunk = pricing.shrink(state, self.book, FULL_STATE_BYTES, self.rates)
        if shrunk:
            log.warning("promoter book over its size bound: prices fixed early or forgotten",
                        extra={"promoter": key.decode(errors="replace")[:128], "orders": shrunk,
                               "bound_bytes": FULL_STATE_BYTES})

    def deadline(self, state: pricing.PromoterBook) -> int | None:
        return pricing.due(state, self.book)

    def advance(self, state: pricing.PromoterBook, key: bytes, watermark: int, out: Outputs) -> bool:
        """Close the months the watermark passed; first price what waited for an exchange
        rate that has come since (such a book is due at every sweep: `pricing.due`)."""
        out.conversions += pricing.refresh(state, self.book, self.now_ms(), self.rates)
        return pricing.advance(state, watermark, self.book, self.rates)
