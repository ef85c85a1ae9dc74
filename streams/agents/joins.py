"""The joins' Faust glue: join-topic messages in, `JoinEngine` steps, outputs to topics.

A step is the messages of one partition that arrived together (up to `JOIN_BATCH`):
decode them (one not written by a refstream worker is dead-lettered), run the engine
(streams/logic/engine.py, with the join's logic from streams/logic/join_logics.py), send what
it returned, then hand the step's state writes to the changelog as record batches
(`BatchedTable`, streams/delivery/changelog.py).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas.records import Batch, DeadLetter, JoinRecord, batch_decoder, json_encoder
from streams.adapters.signals import SignalStore
from streams.agents.outputs import DeadLetters, Every, feed_join
from streams.config import Settings
from streams.delivery.changelog import BatchedTable
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.engine import SWEEP_EVERY_S, JoinEngine, JoinLogic, Outputs
from streams.logic.join_logics import AccountLogic, PromoterLogic, VisitorLogic
from streams.logic.pricing import RateLookup, no_rates
from streams.logic.privacy import dead_letter
from streams.logic.rules.ruleset import load_rules
from streams.metrics import Metrics
from streams.topology import account_source, is_derived, visitor_source


class JoinAgent:
    """One join: `process` runs a step for the events of one partition."""

    def __init__(self, settings: Settings, logic: JoinLogic[Any, Any], table: BatchedTable, topics: Any,
                 metrics: Metrics, sources: tuple[str, ...], lateness_ms: int | None = None) -> None:
        self.settings = settings
        self.name = logic.name
        self.table = table
        self.topics = topics
        self.metrics = metrics
        self._salt = settings.pii_salt.encode()
        self.dead_letters = DeadLetters(topics.dead_letters, metrics, self._salt)
        lateness = settings.lateness_ms if lateness_ms is None else lateness_ms
        self.engine = JoinEngine(logic, table, sources=sources, lateness_ms=lateness,
                                 partitions=settings.partitions, derived=tuple(filter(is_derived, sources)),
                                 idleness=settings.idle_partition_s > 0, salt=self._salt)
        self._heard = Every(SWEEP_EVERY_S)

    def forget_assignment(self) -> None:
        """Partitions moved: the engine rebuilds its deadline heaps from the recovered table."""
        self.engine.forget_assignment()

    async def process(self, events: list[Any]) -> None:
        """Process batch messages of one partition of this join's topic, in order, as one step."""
        p = events[0].message.partition
        batches: list[Batch] = []
        undecodable: list[DeadLetter] = []
        for event in events:
            try:
                batches.append(batch_decoder.decode(event.value))
            except Exception as exc:  # not written by refstream: someone else wrote to the join topic
                undecodable.append(self._undecodable(event.message, exc))
        out = await self.engine.process(p, batches)
        self._observe(p, out)
        await self._send(out, undecodable)
        await self.send_downstream(p, out)
        await self.table.flush()

    async def send_downstream(self, p: int, out: Outputs) -> None:
        """What this join feeds the next one (the visitor join the account join, the account
        join the promoter stage); the last join feeds none."""

    async def _feed(self, topic: Any, clock: str, out: Outputs, batches: Mapping[int, Sequence[JoinRecord]]) -> None:
        """Records to the next join's `topic`, with this partition's watermark as its `clock`;
        every partition of the next join hears that clock at least every SWEEP_EVERY_S. When
        all of this partition's sources are idle, so is `clock` for the next join (else orders
        flowing alone would wait for clicks that do not come)."""
        clocks = {clock: out.watermark} if out.watermark is not None else {}
        heartbeat = bool(clocks) and self._heard.due(clock)
        idle = [clock] if out.all_idle else None
        await feed_join(topic, self.settings.partitions, batches, clocks, heartbeat, idle)

    def _undecodable(self, message: Any, exc: Exception) -> DeadLetter:
        reason = f"not a join batch ({type(exc).__name__}: {exc}); only refstream workers write {message.topic}"
        return dead_letter(reason, message, self._salt)

    def _observe(self, p: int, out: Outputs) -> None:
        m = self.metrics
        for late in out.late:
            m.late_events.labels(self.name, late.kind).inc()
        for _ in out.dead_letters:
            m.state_refused.labels(self.name).inc()
        if out.hits:
            m.join_results.labels(self.name, "hit").inc(out.hits)
        if out.misses:
            m.join_results.labels(self.name, "miss").inc(out.misses)
        for c in out.conversions:
            m.conversions.labels(c.status).inc()
            for r in c.reasons:
                m.fraud_reasons.labels(r).inc()
        if out.watermark is not None:
            m.watermark.labels(self.name, str(p)).set(out.watermark)
        # every step, with or without a watermark: the alert on a join partition without one
        # (deploy/prometheus/rules) sees the partition by this series
        m.join_idle_sources.labels(self.name, str(p)).set(out.idle_sources)
        m.join_sources.labels(self.name, str(p)).set(len(self.engine.sources))
        if out.keys is not None:
            m.state_keys.labels(self.name).set(out.keys)

    async def _send(self, out: Outputs, undecodable: list[DeadLetter]) -> None:
        t = self.topics
        for late in out.late:
            await t.late_events.send(key=late.key.encode(), value=json_encoder.encode(late))
        for c in out.conversions:
            await t.conversions.send(key=c.order_id.encode(), value=json_encoder.encode(c))
        for letter in undecodable + out.dead_letters:
            await self.dead_letters.send(letter)


class VisitorJoin(JoinAgent):
    """clicks + signups by visitor_id -> attributions, to the account join."""

    def __init__(self, settings: Settings, table: BatchedTable, topics: Any, metrics: Metrics,
                 sources: tuple[str, ...]) -> None:
        s = settings
        rules = attr.AttributionRules(s.window_ms, s.attribution_model, s.max_clicks_per_visitor)
        logic = VisitorLogic(rules, load_rules(s.rules_file), s.lateness_ms, s.partitions)
        super().__init__(settings, logic, table, topics, metrics, sources)

    async def send_downstream(self, p: int, out: Outputs) -> None:
        await self._feed(self.topics.account_join, visitor_source(p), out, out.attributions)


class AccountJoin(JoinAgent):
    """orders + attributions by account_id -> checked decisions, by promoter_id to the promoter
    stage (those without a promoter straight to `conversions`, unpriced)
    (`promoters`, `exclusions`: the reference directories' lookups; `signals`: Redis)."""

    def __init__(self, settings: Settings, table: BatchedTable, topics: Any, metrics: Metrics,
                 sources: tuple[str, ...], promoters: conv.PromoterLookup, exclusions: conv.ExclusionLookup,
                 signals: SignalStore, coupons: conv.PromoterLookup,
                 parent_of: Callable[[str, int], str | None], rates: RateLookup) -> None:
        s = settings
        rules = conv.ConversionRules(s.binding_ms, s.refund_window_ms, s.attribution_model)
        ctx = conv.Context(rules, load_rules(s.rules_file), promoters, exclusions, coupons, parent_of)
        logic = AccountLogic(ctx, signals, s.partitions, rates=rates)
        super().__init__(settings, logic, table, topics, metrics, sources)

    async def send_downstream(self, p: int, out: Outputs) -> None:
        await self._feed(self.topics.promoter_join, account_source(p), out, out.decisions)


class PromoterJoin(JoinAgent):
    """decisions by promoter_id -> priced conversions (streams/logic/pricing.py). Its sources
    are the account join's partitions; lateness 0: decisions are derived, never late."""

    def __init__(self, settings: Settings, table: BatchedTable, topics: Any, metrics: Metrics,
                 sources: tuple[str, ...], rates: RateLookup = no_rates) -> None:
        logic = PromoterLogic(load_rules(settings.rules_file), rates=rates)  # rates: the worker's FxDirectory
        super().__init__(settings, logic, table, topics, metrics, sources, lateness_ms=0)


def by_partition(events: list[Any]) -> list[list[Any]]:
    """`events` split into one list per partition, each in arrival order."""
    steps: dict[int, list[Any]] = defaultdict(list)
    for event in events:
        steps[event.message.partition].append(event)
    return list(steps.values())
