"""The join engine in-process: the three join logics over dict stores and fake Redis signals,
alone and chained (account join -> promoter stage)."""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import (
    AttributionRec,
    Batch,
    ClickRec,
    ClickRef,
    Conversion,
    DecisionRec,
    JoinRecord,
    OrderRec,
    SignupRec,
)
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic import pricing
from streams.logic.engine import CLOCK_KEY, FULL_STATE_BYTES, MAX_STATE_BYTES, JoinEngine, MemoryStore, Outputs
from streams.logic.join_logics import AccountLogic, PromoterLogic, VisitorLogic
from streams.logic.partitioning import partition_for
from streams.logic.pricing import REVISION_BITS
from streams.logic.rules.checks import PromoterRef, Signals
from streams.logic.rules.ruleset import RuleBook
from streams.topology import is_derived

WINDOW = 1_000
LATENESS = 100
HOUR = 3_600_000
DAY = 86_400_000
VISITOR_SOURCES = ("clicks/0", "signups/0")
ACCOUNT_SOURCES = ("orders/0", "visitor/0")
PROMOTER_SOURCES = ("account/0",)  # the account partitions' watermarks
CONV_RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
PROMOTERS = {"A": PromoterRef(promoter_id="p-alice"), "B": PromoterRef(promoter_id="p-bob")}
COUPONS = {"KA": PromoterRef(promoter_id="p-alice")}  # alice's coupon code
_offsets = itertools.count()


# -- records and step items --------------------------------------------------------------
def click(eid: str, ts: int, code: str = "A", visitor: str = "v") -> ClickRec:
    return ClickRec(eid, ts, visitor, code, src=f"clicks/0/{next(_offsets)}")


def signup(eid: str, ts: int, account: str = "acc", visitor: str = "v") -> SignupRec:
    return SignupRec(eid, ts, account, visitor, src=f"signups/0/{next(_offsets)}")


def order(oid: str, ts: int, status: str = "paid", account: str = "acc", amount: str = "100.00") -> OrderRec:
    # one event id per distinct event: a redelivery repeats an event whole, never its id alone
    return OrderRec(f"{oid}-{status}-{ts}", ts, oid, account, "db-pro", Decimal(amount), "USD", status,
                    src=f"orders/0/{next(_offsets)}")


def attribution(code: str | None, signup_ts: int = 0, final: bool = False, account: str = "acc") -> AttributionRec:
    ref = ClickRef(f"c-{code}", signup_ts - HOUR, code) if code else None
    return AttributionRec(account, f"s-{account}-{signup_ts}", signup_ts, "v", ref, final)


@dataclass(frozen=True)
class Clocks:
    """Closes the current batch with these source clocks (a heartbeat when alone)."""

    at: int
    only: tuple[str, ...] = ()  # default: every source of the join


@dataclass(frozen=True)
class Idle:
    """Closes the current batch naming these sources idle (as the router sends them)."""

    sources: tuple[str, ...]


@dataclass(frozen=True)
class Busy:
    """Closes the current batch naming these sources busy: records are left to read in them."""

    sources: tuple[str, ...]


@dataclass(frozen=True)
class Reassign:
    """The partitions move: a fresh engine over what the new owner recovers of the store
    (`idleness` False: restarted with IDLE_PARTITION_S=0)."""

    idleness: bool = True


@dataclass(frozen=True)
class Counts:
    """Redis's flood and farming counters change (account join)."""

    signals: Signals


Item = JoinRecord | Clocks | Idle | Busy | Reassign | Counts


class FakeSignals:
    """`SignalBackend` in memory: fixed counters."""

    def __init__(self) -> None:
        self.counts = Signals()
        self.snapshots: list[list[str]] = []

    async def snapshot(self, recs: list[AttributionRec]) -> list[Signals]:
        if recs:
            self.snapshots.append([r.account_id for r in recs])
        return [self.counts for _ in recs]


# -- running a join --------------------------------------------------------------------
@dataclass
class Run:
    """A join's engine and everything it produced so far."""

    join: str
    max_state: int | None = None  # smaller bounds than the real ones fill states fast
    full_state: int | None = None
    store: MemoryStore = field(default_factory=MemoryStore)
    signals: FakeSignals = field(default_factory=FakeSignals)
    outputs: list[Outputs] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = self.new_engine()

    def new_engine(self, idleness: bool = True) -> JoinEngine[Any, Any]:
        logic: VisitorLogic | AccountLogic | PromoterLogic
        sources: tuple[str, ...]
        lateness = LATENESS
        if self.join == "visitor":
            rules = attr.AttributionRules(WINDOW, "last_click", max_clicks=64)
            logic, sources = VisitorLogic(rules, RuleBook([]), LATENESS, partitions=1), VISITOR_SOURCES
        elif self.join == "account":
            ctx = conv.Context(CONV_RULES, RuleBook([]), lambda code, ts: PROMOTERS.get(code),
                               coupon=lambda code, ts: COUPONS.get(code))
            logic, sources = AccountLogic(ctx, self.signals, partitions=1, now_ms=lambda: 0), ACCOUNT_SOURCES
        else:  # decisions are derived records: never late
            logic, sources, lateness = PromoterLogic(RuleBook([]), now_ms=lambda: 0), PROMOTER_SOURCES, 0
        return JoinEngine(logic, self.store, sources=sources, lateness_ms=lateness, partitions=1,
                          derived=tuple(filter(is_derived, sources)), idleness=idleness,
                          sweep_every_s=0, now_ms=lambda: 0,
                          max_state_bytes=self.max_state or MAX_STATE_BYTES,
                          full_state_bytes=self.full_state or FULL_STATE_BYTES)

    def step(self, items: Sequence[Item]) -> None:
        batches: list[Batch] = []
        records: list[JoinRecord] = []
        for item in items:
            if isinstance(item, Reassign):
                self.store = MemoryStore(self.store.data)
                self.engine = self.new_engine(item.idleness)
            elif isinstance(item, Counts):
                self.signals.counts = item.signals
            elif isinstance(item, Clocks):
                batches.append(Batch(records, {s: item.at for s in item.only or self.engine.sources}))
                records = []
            elif isinstance(item, Idle):
                batches.append(Batch(records, {}, list(item.sources)))
                records = []
            elif isinstance(item, Busy):
                batches.append(Batch(records, {}, [], list(item.sources)))
                records = []
            else:
                records.append(item)
        if records or batches:
            batches.append(Batch(records))
            self.outputs.append(asyncio.run(self.engine.process(0, batches)))

    def views(self) -> dict[str, Any]:
        """What the cases' expectations can name."""
        sent = [a for out in self.outputs for part in out.attributions.values() for a in part]
        conversions = {c.order_id: (c.revision, c.status) for out in self.outputs for c in out.conversions}
        routed = [d for out in self.outputs for part in out.decisions.values() for d in part]
        return {
            "sent": [(a.account_id, a.click.tracking_code if a.click else None, a.final) for a in sent],
            "final": {a.account_id: a.click.tracking_code if a.click else None for a in sent if a.final},
            "late": [e.event_id for out in self.outputs for e in out.late],
            "refused": [json.loads(d.value)[1] for out in self.outputs for d in out.dead_letters],
            "conversions": conversions,
            "decisions": {d.order_id: (d.revision, d.status) for d in routed if not d.removed},
            "routed": [(d.promoter_id, d.order_id, d.removed) for d in routed],
            "keys": sorted(k.decode() for k in self.store.data if not k.startswith(b"\x00")),
            "watermark": self.outputs[-1].watermark if self.outputs else None,
            "idle": self.outputs[-1].idle_sources if self.outputs else 0,
            "all_idle": self.outputs[-1].all_idle if self.outputs else False,
        }


def run(join: str, steps: Sequence[Sequence[Item]], max_state: int | None = None,
        full_state: int | None = None) -> Run:
    r = Run(join, max_state, full_state)
    for items in steps:
        r.step(items)
    return r


def state_size(n_signups: int) -> int:
    """Encoded size of a visitor state holding `n_signups` signups (for the size bounds)."""
    state = attr.VisitorState()
    rules = attr.AttributionRules(WINDOW)
    for i in range(n_signups):
        attr.add_signup(state, f"acc{i:02}", "v", f"s{i:02}", 1_000 + i, rules, attr.signup_ident(signup("x", 0)))
    return len(msgspec.msgpack.encode(state))


#: a visitor state is full at 8 signups and may not grow past 10
SMALL = {"full_state": state_size(8), "max_state": state_size(10)}


def signups(lo: int, hi: int) -> list[SignupRec]:
    return [signup(f"s{i:02}", 1_000 + i, account=f"acc{i:02}") for i in range(lo, hi)]


# -- cases -----------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    join: str
    steps: list[list[Item]]
    expect: dict[str, object]  # view -> value (views not named are not checked)
    bounds: dict[str, int] = field(default_factory=dict)  # max_state, full_state


CASES = [
    # visitor join
    Case("provisional at once, final when the watermark passes", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(1_000)]],
         {"sent": [("acc", "A", False), ("acc", "A", True)], "late": []}),
    Case("signup before its click is re-attributed", "visitor",
         [[signup("s", 100)], [click("c1", 50)], [Clocks(1_000)]],
         {"sent": [("acc", None, False), ("acc", "A", False), ("acc", "A", True)]}),
    Case("a click behind the watermark is late", "visitor",
         [[click("c1", 0), signup("s", 50)], [Clocks(1_000)], [click("late", 40, "B")]],
         {"late": ["late"], "final": {"acc": "A"}}),
    Case("lateness is judged per record in arrival order, before the batch's clocks", "visitor",
         [[click("c1", 0), signup("s", 50), Clocks(1_000), click("late", 40, "B")]],
         {"late": ["late"], "final": {"acc": "A"}}),
    Case("a record ahead of the clock in the same batch is on time", "visitor",
         [[click("c1", 500), signup("s", 600), click("c2", 550, "B")]],
         {"late": [], "sent": [("acc", "A", False), ("acc", "B", False)]}),
    Case("a redelivered step re-sends, changes nothing", "visitor",
         [[click("c1", 0), signup("s", 100)], [click("c1", 0), signup("s", 100)]],
         {"sent": [("acc", "A", False)] * 3, "late": [], "keys": ["v"]}),
    Case("a redelivery behind the watermark is known, not late", "visitor",
         [[click("c1", 0), signup("s", 50)], [Clocks(200)], [click("c1", 0), signup("s", 50)]],
         {"late": [], "sent": [("acc", "A", False), ("acc", "A", True), ("acc", "A", True)]}),
    Case("the watermark follows the slowest source", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",))]],
         {"sent": [("acc", "A", False)], "keys": ["v"]}),
    Case("no watermark until every source was heard", "visitor",
         [[click("c1", 0)], [Clocks(10_000, only=("clicks/0",))], [click("c2", 5)]],
         {"late": [], "keys": ["v"]}),
    Case("clocks only: a heartbeat finalises", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(500)], [Clocks(600)]],
         {"sent": [("acc", "A", False), ("acc", "A", True)]}),
    Case("expired state is deleted", "visitor",
         [[click("c1", 0), signup("s", 100), click("c9", 5, visitor="w")], [Clocks(10_000)]],
         {"final": {"acc": "A"}, "keys": []}),
    Case("a final signup is kept one lateness for its redeliveries", "visitor",
         [[click("c1", 0), signup("s", 1_000)], [Clocks(1_150)], [signup("s", 1_000)], [Clocks(1_250)]],
         {"sent": [("acc", "A", False), ("acc", "A", True), ("acc", "A", True)], "late": [], "keys": []}),
    Case("re-assignment: a fresh engine sweeps the recovered keys", "visitor",
         [[click("c1", 0), signup("s", 100)], [Reassign(), Clocks(1_000)]],
         {"sent": [("acc", "A", False), ("acc", "A", True)]}),
    Case("a full state refuses new raw events, takes known ones", "visitor",
         [[*signups(0, 10)], [signup("s99", 1_099, account="acc99"), signup("s00", 1_000, account="acc00")]],
         {"refused": ["s99"], "late": [],
          "sent": [(f"acc{i:02}", None, False) for i in range(10)] + [("acc00", None, False)]},
         SMALL),
    Case("a step that would overflow is redone one record at a time", "visitor",
         [[*signups(0, 12)]],
         {"refused": ["s08", "s09", "s10", "s11"], "sent": [(f"acc{i:02}", None, False) for i in range(8)]},
         SMALL),
    Case("a late record in a full state is late, not refused", "visitor",
         [[*signups(0, 10)], [Clocks(1_105)], [signup("old", 900, account="x")]],
         {"late": ["old"], "refused": []}, SMALL),
    Case("expiry makes room again", "visitor",
         [[*signups(0, 10)], [Clocks(10_000)], [signup("s50", 20_000, account="acc50")]],
         {"refused": [], "keys": ["v"]}, SMALL),
    # idle sources (the router names them): left out of the watermark until they progress
    Case("an idle source is left out: signups become final, state expires", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",))], [Idle(("signups/0",))]],
         {"final": {"acc": "A"}, "keys": [], "watermark": 9_900, "idle": 1}),
    Case("a source never heard from, once idle, no longer holds the watermark", "visitor",
         [[click("c1", 0)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))]],
         {"keys": [], "watermark": 9_900}),
    Case("a woken source's records behind the watermark are late, exactly those", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [signup("old", 5_000, "a1", "w1"), signup("new", 9_950, "a2", "w2"), signup("older", 9_000, "a3", "w3")]],
         {"late": ["old", "older"], "idle": 0, "watermark": 9_900,
          "sent": [("acc", "A", False), ("acc", "A", True), ("a2", None, False)]}),
    Case("a woken source holds the watermark at its floor until it catches up", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [signup("s2", 9_950, "a2", "w2")], [Clocks(20_000, only=("clicks/0",))]],
         {"watermark": 9_900, "idle": 0}),
    Case("an idle source's old clock does not wake it", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [Clocks(100, only=("signups/0",))], [Clocks(20_000, only=("clicks/0",))], [signup("x", 15_000)]],
         {"late": ["x"], "watermark": 19_900, "idle": 1}),  # x: late, a straggler: it wakes nothing
    Case("every source idle: the newest event time seen, then it holds", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",))],
          [Idle(("clicks/0", "signups/0"))], [Clocks(10_000, only=("clicks/0",))]],
         {"final": {"acc": "A"}, "watermark": 9_900, "idle": 2}),
    Case("the idle sources are stored with the clock", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [Reassign(), Clocks(10_000, only=("clicks/0",))]],
         {"watermark": 9_900, "idle": 1}),
    Case("a busy source is taken back at once: its backlog is on time", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [Busy(("signups/0",))], [Clocks(20_000, only=("clicks/0",))], [signup("back", 9_950, "a2", "w2")]],
         {"late": [], "watermark": 9_900, "idle": 0}),
    Case("every source idle: the partition is idle for the next join", "visitor",
         [[click("c1", 0), signup("s", 100)], [Idle(("clicks/0", "signups/0"))]],
         {"watermark": 0, "idle": 2, "all_idle": True}),
    Case("IDLE_PARTITION_S=0 after a restart: stored idle marks are dropped", "visitor",
         [[click("c1", 0), signup("s", 100)], [Clocks(10_000, only=("clicks/0",)), Idle(("signups/0",))],
          [Reassign(idleness=False), Clocks(20_000, only=("clicks/0",))]],
         {"watermark": 9_900, "idle": 0, "all_idle": False}),
    Case("an idle visitor partition wakes on any rise of its clock (it moves again)", "account",
         [[Clocks(3 * DAY)], [Idle(("visitor/0",))], [Clocks(10 * DAY, only=("orders/0",))],
          [Clocks(4 * DAY, only=("visitor/0",))], [Clocks(20 * DAY, only=("orders/0",))]],
         {"watermark": 10 * DAY - LATENESS, "idle": 0}),
    Case("an idle orders partition: the account join follows its visitor partitions", "account",
         [[order("o1", DAY)], [Clocks(3 * DAY, only=("visitor/0",)), Idle(("orders/0",))]],
         {"decisions": {}, "keys": [], "watermark": 3 * DAY - LATENESS}),
    # account join
    Case("paid order of an attributed account", "account",
         [[attribution("A"), order("o1", DAY)]],
         {"decisions": {"o1": (1, "approved")}, "routed": [("p-alice", "o1", False)]}),
    Case("order before its attribution", "account",
         [[order("o1", DAY)], [attribution("A")]],
         {"decisions": {"o1": (1, "approved")}}),
    Case("a refund reverses, redelivered it changes nothing", "account",
         [[attribution("A"), order("o1", DAY)], [order("o1", 2 * DAY, "refunded")], [order("o1", 2 * DAY, "refunded")]],
         {"decisions": {"o1": (2, "reversed")}}),
    Case("a refund behind the watermark updates a known order", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Clocks(5 * DAY)], [order("o1", 2 * DAY, "refunded")]],
         {"decisions": {"o1": (2, "reversed")}, "late": []}),
    Case("an order of an unknown account behind the watermark is late", "account",
         [[Clocks(5 * DAY)], [order("o1", 2 * DAY)]],
         {"late": [f"o1-paid-{2 * DAY}"], "keys": []}),
    Case("attributions are never late", "account",
         [[Clocks(5 * DAY)], [attribution("A", signup_ts=DAY), order("o1", 6 * DAY)]],
         {"late": [], "decisions": {"o1": (1, "approved")}}),
    Case("orders waiting for a signup go when the watermark passes them", "account",
         [[order("o1", DAY)], [Clocks(2 * DAY)]],
         {"decisions": {}, "keys": []}),
    Case("the counters are read for good when their windows close", "account",
         [[attribution("A", signup_ts=HOUR, final=True), order("o1", 2 * HOUR)],
          [Counts(Signals(flood_ip=50))], [Clocks(DAY + HOUR)], [Clocks(2 * DAY)]],
         {"decisions": {"o1": (2, "rejected")}, "keys": ["acc"]}),
    Case("an attributed account expires after binding and refund window", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Clocks(300 * DAY)]],
         {"decisions": {"o1": (1, "approved")}, "keys": []}),
    Case("re-assignment: a fresh engine expires the recovered accounts", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Reassign(), Clocks(300 * DAY)]],
         {"keys": []}),
    Case("a re-attributed order is withdrawn from its old promoter first", "account",
         [[attribution("A"), order("o1", DAY)], [attribution("B")]],
         {"routed": [("p-alice", "o1", False), ("p-alice", "o1", True), ("p-bob", "o1", False)],
          "decisions": {"o1": (2, "approved")}, "conversions": {}}),
    Case("no promoter: nothing to price, a conversion at once", "account",
         [[attribution("Z"), order("o1", DAY)]],
         {"routed": [], "conversions": {"o1": (1 << REVISION_BITS, "rejected")}}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_join_engine(case: Case) -> None:
    views = run(case.join, case.steps, **case.bounds).views()
    assert {name: views[name] for name in case.expect} == case.expect


def test_one_state_read_and_write_per_key_and_step() -> None:
    r = run("visitor", [[click("c", 0, visitor="v0")]])
    reads, writes = r.store.reads, len(r.store.writes)
    r.step([click(f"c{i}", i, visitor=f"v{i % 3}") for i in range(30)])
    assert sorted(key for _, key, _ in r.store.writes[writes:]) == [CLOCK_KEY % 0, b"v0", b"v1", b"v2"]
    assert r.store.reads - reads == 4


def test_the_clock_is_stored_with_the_state() -> None:
    r = run("visitor", [[click("c1", 500), signup("s", 700)], [Reassign()]])
    assert r.engine.clock(0).watermark == 500 - LATENESS


def test_signals_are_snapshot_once_per_step_then_frozen() -> None:
    r = run("account", [[attribution("A", account="a1"), attribution("B", account="a2")],
                        [attribution("A", final=True, account="a1")], [attribution("A", final=True, account="a1")]])
    assert r.signals.snapshots == [["a1", "a2"], ["a1"]]


def test_states_never_outgrow_the_bound() -> None:
    r = run("visitor", [signups(0, 30)[i:i + 7] for i in range(0, 30, 7)], **SMALL)
    assert max(len(v) for v in r.store.data.values()) <= SMALL["max_state"]
    assert r.views()["refused"] == [f"s{i:02}" for i in range(8, 30)]


def test_an_order_with_thousands_of_events_stays_small() -> None:
    """Every new event of a known order is an update the bound does not refuse: the order
    keeps only the events that decide it, so no order can outgrow a Kafka message."""
    storm = [order("o1", 1_000, "paid")] + [order("o1", 2_000 + i, "refunded") for i in range(1_000)]
    for i, rec in enumerate(storm):
        rec.event_id = f"o1-{i}"
    r = run("account", [[attribution("A", signup_ts=0, final=True)], storm[:500], storm[500:]])
    assert max(len(v) for v in r.store.data.values()) < 2_000
    assert r.views()["refused"] == [] and r.views()["decisions"]["o1"][1] == "reversed"


def test_a_full_account_refuses_new_orders_but_takes_refunds_of_known_ones() -> None:
    orders = [order(f"o{i}", 1_000 + i) for i in range(40)]
    sizes = [len(v) for v in run("account", [[attribution("A", final=True)], orders[:10]]).store.data.values()]
    bound = {"full_state": max(sizes), "max_state": max(sizes) + 2_000}  # full at 10 orders
    refund = order("o3", 5_000, "refunded")
    refund.event_id = "o3-refund"
    r = run("account", [[attribution("A", final=True)], orders[:10], orders[10:20], [refund]], **bound)
    assert r.views()["refused"] == [f"o{i}-paid-{1_000 + i}" for i in range(10, 20)]
    assert r.views()["decisions"]["o3"][1] == "reversed"
    assert max(len(v) for v in r.store.data.values()) <= bound["max_state"]


# -- properties ------------------------------------------------------------------------
@st.composite
def visitor_traffic(draw: st.DrawFn) -> list[JoinRecord]:
    """Clicks and signups of a few visitors, unique ids, times roughly in order."""
    n = draw(st.integers(1, 30))
    out: list[JoinRecord] = []
    for i in range(n):
        ts = draw(st.integers(0, 3_000))
        visitor = draw(st.sampled_from(["v1", "v2", "v3"]))
        if draw(st.booleans()):
            out.append(click(f"c{i}", ts, draw(st.sampled_from("ABC")), visitor))
        else:
            out.append(signup(f"s{i}", ts, account=f"a{i}", visitor=visitor))
    return out


def cut(records: list[JoinRecord], cuts: list[int]) -> list[list[Item]]:
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    return [list(records[a:b]) for a, b in itertools.pairwise(bounds)]


def outcome(r: Run) -> tuple[set[str], dict[str, object]]:
    views = r.views()
    return set(views["late"]), views["final"]


@settings(max_examples=150, deadline=None)
@given(records=visitor_traffic(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_how_records_are_cut_into_steps_changes_nothing(records: list[JoinRecord], cuts: list[int]) -> None:
    whole = run("visitor", [list(records), [Clocks(10**6)]])
    parts = run("visitor", [*cut(records, cuts), [Clocks(10**6)]])
    assert outcome(parts) == outcome(whole)
    assert parts.views()["keys"] == whole.views()["keys"] == []


@settings(max_examples=150, deadline=None)
@given(records=visitor_traffic(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_redelivered_steps_change_no_state_and_no_final_attribution(records: list[JoinRecord],
                                                                   cuts: list[int]) -> None:
    steps = cut(records, cuts)
    once = run("visitor", steps)
    twice = run("visitor", [s for step in steps for s in (step, step)])
    assert twice.store.data == once.store.data
    once.step([Clocks(10**6)])
    twice.step([Clocks(10**6)])
    (late_once, final_once), (late_twice, final_twice) = outcome(once), outcome(twice)
    assert final_twice == final_once
    assert late_once <= late_twice  # a replayed record the first delivery expired is late now


@settings(max_examples=100, deadline=None)
@given(times=st.lists(st.integers(0, 2_000), min_size=1, max_size=25), size=st.integers(1, 9),
       heartbeat=st.integers(0, 3_000))
def test_every_signup_is_attributed_late_or_refused_exactly_once(times: list[int], size: int,
                                                                 heartbeat: int) -> None:
    records = [signup(f"s{i}", ts, account=f"a{i}") for i, ts in enumerate(times)]
    steps: list[list[Item]] = [list(records[i:i + size]) for i in range(0, len(records), size)]
    steps.insert(len(steps) // 2, [Clocks(heartbeat)])
    r = run("visitor", steps, **SMALL)
    views = r.views()
    attributed = {a for a, _, _ in views["sent"]}
    late, refused = set(views["late"]), set(views["refused"])
    assert len(views["late"]) == len(late) and len(views["refused"]) == len(refused)
    assert {f"a{eid[1:]}" for eid in late | refused}.isdisjoint(attributed)
    assert late.isdisjoint(refused)
    assert len(attributed) + len(late) + len(refused) == len(records)
    assert max(len(v) for v in r.store.data.values()) <= SMALL["max_state"]


@st.composite
def account_traffic(draw: st.DrawFn) -> list[JoinRecord]:
    """Attributions and order events of a few accounts."""
    out: list[JoinRecord] = []
    for _ in range(draw(st.integers(1, 20))):
        account = draw(st.sampled_from(["a1", "a2"]))
        if draw(st.integers(0, 3)) == 0:  # a signup's code is fixed by its time here
            day = draw(st.integers(0, 3))
            out.append(attribution(["A", "B", None, "A"][day], day * DAY, draw(st.booleans()), account))
        else:
            out.append(order(f"{account}-o{draw(st.integers(0, 4))}", draw(st.integers(0, 10)) * DAY,
                             draw(st.sampled_from(["paid", "paid", "refunded", "cancelled"])), account))
    return out


@settings(max_examples=150, deadline=None)
@given(records=account_traffic(), cuts=st.lists(st.integers(0, 30), max_size=4))
def test_redelivery_sends_the_same_last_revision_of_every_conversion(records: list[JoinRecord],
                                                                      cuts: list[int]) -> None:
    steps = cut(records, cuts)
    once = run("account", steps)
    twice = run("account", [s for step in steps for s in (step, step)])
    assert twice.views()["decisions"] == once.views()["decisions"]
    assert twice.store.data == once.store.data


# -- the account join feeding the promoter stage -----------------------------------------
@dataclass
class Pipeline:
    """The account join and the promoter stage in-process (one partition each): every
    account step's decisions go to the stage with the account partition's watermark as the
    clock of `account/0`, as streams/agents/joins.py sends them."""

    account: Run = field(default_factory=lambda: Run("account"))
    promoter: Run = field(default_factory=lambda: Run("promoter"))

    def step(self, items: Sequence[Item]) -> None:
        before = len(self.account.outputs)
        self.account.step(items)
        for out in self.account.outputs[before:]:
            clock: list[Item] = [Clocks(out.watermark)] if out.watermark is not None else []
            decisions: list[Item] = list(out.decisions.get(0, []))
            if decisions or clock:
                self.promoter.step(decisions + clock)

    def final(self) -> dict[str, Conversion]:
        """What `conversions_current` shows: per order its highest revision, revision and
        decision time left out (they count steps, not content)."""
        sent = [c for run in (self.account, self.promoter) for out in run.outputs for c in out.conversions]
        last: dict[str, Conversion] = {}
        for c in sorted(sent, key=lambda c: c.revision):
            last[c.order_id] = c
        return {oid: msgspec.structs.replace(c, revision=0, decided_at=0) for oid, c in last.items()}


def pipeline(steps: Sequence[Sequence[Item]], close: bool = True) -> Pipeline:
    p = Pipeline()
    for items in steps:
        p.step(items)
    if close:
        p.step([Clocks(400 * DAY)])  # every month closed, every account expired
    return p


def accounts(*codes: str | None) -> list[Item]:
    """A final attribution at day 0 for accounts a1, a2, ... on these codes."""
    return [attribution(code, 0, True, f"a{i}") for i, code in enumerate(codes, 1)]


@dataclass
class OrderCase:
    name: str
    first: list[list[Item]]  # account-join steps, in one arrival order
    second: list[list[Item]]  # the same records in another
    #: order_id -> (promoter_id, status, tier, commission) of the final conversion
    expected: dict[str, tuple[str, str, int, Decimal]]


O1, O2, O3 = (order("o1", DAY, account="a1", amount="8000"), order("o2", 2 * DAY, account="a2", amount="5000"),
              order("o3", 3 * DAY, account="a3"))
REFUND = order("o1", 4 * DAY, "refunded", account="a1")
O2K = msgspec.structs.replace(O2, coupon_code="KA")  # a2 has no click: alice's code attributes it
ORDER_CASES = [
    OrderCase("tiers from the month's earlier orders, whatever arrives first",
              [accounts("A", "A", "A"), [O1], [O2], [O3]], [accounts("A", "A", "A"), [O3], [O2], [O1]],
              {"o1": ("p-alice", "approved", 0, Decimal(1200)), "o2": ("p-alice", "approved", 0, Decimal(750)),
               "o3": ("p-alice", "approved", 1, Decimal(16))}),
    OrderCase("in one step or in many",
              [accounts("A", "A", "A"), [O1, O2, O3]], [accounts("A", "A", "A"), [O2], [O3], [O1]],
              {"o1": ("p-alice", "approved", 0, Decimal(1200)), "o2": ("p-alice", "approved", 0, Decimal(750)),
               "o3": ("p-alice", "approved", 1, Decimal(16))}),
    OrderCase("a refund within the month takes its volume back from the later orders",
              [accounts("A", "A", "A"), [O1, O2], [O3], [REFUND]], [accounts("A", "A", "A"), [REFUND, O3], [O2, O1]],
              {"o1": ("p-alice", "reversed", 0, Decimal(0)), "o2": ("p-alice", "approved", 0, Decimal(750)),
               "o3": ("p-alice", "approved", 0, Decimal(15))}),
    OrderCase("an order moved to another promoter leaves the old one's volume",
              [[*accounts("A", "A"), attribution("B", 0, False, "a3")], [O1, O2, O3],
               [attribution("B", 0, False, "a1")], [attribution("B", 0, True, "a1"), attribution("A", 0, True, "a3")]],
              [[*accounts("B", "A", "A")], [O3, O2], [O1]],
              {"o1": ("p-bob", "approved", 0, Decimal(1200)), "o2": ("p-alice", "approved", 0, Decimal(750)),
               "o3": ("p-alice", "approved", 0, Decimal(15))}),
    OrderCase("a coupon order is a conversion priced with its promoter's other orders",
              [accounts("A", None, "A"), [O1], [O2K], [O3]], [accounts("A", None, "A"), [O3], [O2K], [O1]],
              {"o1": ("p-alice", "approved", 0, Decimal(1200)), "o2": ("p-alice", "approved", 0, Decimal(750)),
               "o3": ("p-alice", "approved", 1, Decimal(16))}),
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda c: c.name)
def test_prices_do_not_depend_on_arrival_order(case: OrderCase) -> None:
    first, second = pipeline(case.first).final(), pipeline(case.second).final()
    assert first == second
    assert {oid: (c.promoter_id, c.status, c.tier, c.commission) for oid, c in first.items()} == case.expected


def books(p: Pipeline) -> dict[str, tuple[list[str], list[str], list[int]]]:
    """Each promoter's open orders, final orders and closed months in the stage's store."""
    decoded = {k.decode(): msgspec.msgpack.decode(v, type=pricing.PromoterBook)
               for k, v in p.promoter.store.data.items() if not k.startswith(b"\x00")}
    return {k: (sorted(b.open), sorted(b.final), sorted(b.closed)) for k, b in decoded.items()}


def test_the_stage_forgets_moved_orders_then_keeps_only_closed_months() -> None:
    p = pipeline(ORDER_CASES[3].first, close=False)
    assert books(p) == {"p-alice": (["o2", "o3"], [], []), "p-bob": (["o1"], [], [])}
    p.step([Clocks(400 * DAY)])
    assert books(p) == {"p-alice": ([], [], [197001]), "p-bob": ([], [], [197001])}
    assert p.account.views()["keys"] == []


@pytest.mark.parametrize("rec, key", [
    (pricing.unpriced(DecisionRec(order_id="o1", revision=1, status="approved", reasons=[], promoter_id="p-alice",
                                  tracking_code="A", campaign="", account_id="a1", visitor_id="v", click_event_id="c",
                                  click_ts=0, signup_event_id="s", signup_ts=0, order_event_id="e", order_ts=DAY,
                                  cart_id="", product="p", category="", amount=Decimal(1), discount=Decimal(0),
                                  currency="USD", order_status="paid", renewal=False, attribution_model="last_click",
                                  attribution_final=True, decided_at=0), 0), TypeError),
    (order("o1", DAY), TypeError),
    (attribution("A"), TypeError),
])
def test_the_promoter_stage_takes_only_decisions(rec: Any, key: type[Exception]) -> None:
    with pytest.raises(key):
        PromoterLogic(RuleBook([])).key_of(rec)


def test_decisions_go_to_their_promoters_partition() -> None:
    ctx = conv.Context(CONV_RULES, RuleBook([]), lambda code, ts: PROMOTERS.get(code))
    # 6 promoter-join partitions (p-alice's 1, p-bob's 3), the account join's own count apart
    engine = JoinEngine(AccountLogic(ctx, FakeSignals(), partitions=6, now_ms=lambda: 0), MemoryStore(),
                        sources=ACCOUNT_SOURCES, lateness_ms=LATENESS, partitions=4)
    out = asyncio.run(engine.process(0, [Batch([attribution("A", account="a1"), order("o1", DAY, account="a1"),
                                                attribution("B", account="a2"), order("o2", DAY, account="a2")])]))
    assert (partition_for(b"p-alice", 6), partition_for(b"p-bob", 6)) == (1, 3)
    assert {p: [d.promoter_id for d in ds] for p, ds in out.decisions.items()} == {1: ["p-alice"], 3: ["p-bob"]}


@st.composite
def promoter_traffic(draw: st.DrawFn) -> list[JoinRecord]:
    """Final attributions and order events of a few accounts of two promoters: each order
    paid once (its own time and amount), maybe refunded later."""
    out: list[JoinRecord] = [attribution(draw(st.sampled_from(["A", "B"])), 0, True, f"a{i}") for i in range(3)]
    for i in range(draw(st.integers(1, 8))):
        account, ts = f"a{draw(st.integers(0, 2))}", draw(st.integers(1, 60)) * DAY
        out.append(order(f"o{i}", ts, account=account, amount=str(draw(st.sampled_from([100, 4_000, 9_000])))))
        if draw(st.integers(0, 3)) == 0:
            out.append(order(f"o{i}", ts + draw(st.integers(0, 40)) * DAY, "refunded", account=account))
    return out


@settings(max_examples=60, deadline=None)
@given(records=promoter_traffic(), rnd=st.randoms(use_true_random=False), cuts=st.lists(st.integers(0, 30), max_size=4))
def test_final_conversions_do_not_depend_on_arrival_order_or_redelivery(records: list[JoinRecord], rnd: Any,
                                                                        cuts: list[int]) -> None:
    shuffled = list(records)
    rnd.shuffle(shuffled)
    steps = cut(shuffled, cuts)
    in_order = pipeline([records]).final()
    assert pipeline(steps).final() == in_order
    assert pipeline([s for step in steps for s in (step, step)]).final() == in_order


def test_a_signups_coupon_code_reaches_the_account_join_and_attributes_its_orders() -> None:
    visitors = run("visitor", [[msgspec.structs.replace(signup("s1", 0), coupon_code="KA")]])
    [a] = [a for out in visitors.outputs for part in out.attributions.values() for a in part]
    assert (a.click, a.coupon) == (None, "KA")
    p = pipeline([[a], [order("o1", DAY)]])
    [c] = p.final().values()
    assert (c.promoter_id, c.attributed_by, c.coupon_code, c.tracking_code, c.status) == (
        "p-alice", "coupon", "KA", "", "approved")
    assert p.account.signals.snapshots  # its farming counters were read: the checks apply
