"""The join engine in-process: both join logics over a dict store and fake Redis signals."""
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

from schemas.records import AttributionRec, Batch, ClickRec, ClickRef, Conversion, JoinRecord, OrderRec, SignupRec
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.engine import CLOCK_KEY, FULL_STATE_BYTES, MAX_STATE_BYTES, JoinEngine, MemoryStore, Outputs
from streams.logic.join_logics import AccountLogic, VisitorLogic
from streams.logic.rules.checks import PromoterRef, Signals
from streams.logic.rules.ruleset import RuleBook

WINDOW = 1_000
LATENESS = 100
HOUR = 3_600_000
DAY = 86_400_000
VISITOR_SOURCES = ("clicks/0", "signups/0")
ACCOUNT_SOURCES = ("orders/0", "visitor/0")
CONV_RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)
PROMOTERS = {"A": PromoterRef(promoter_id="p-alice"), "B": PromoterRef(promoter_id="p-bob")}
_offsets = itertools.count()


# -- records and step items --------------------------------------------------------------
def click(eid: str, ts: int, code: str = "A", visitor: str = "v") -> ClickRec:
    return ClickRec(eid, ts, visitor, code, src=f"clicks/0/{next(_offsets)}")


def signup(eid: str, ts: int, account: str = "acc", visitor: str = "v") -> SignupRec:
    return SignupRec(eid, ts, account, visitor, src=f"signups/0/{next(_offsets)}")


def order(oid: str, ts: int, status: str = "paid", account: str = "acc") -> OrderRec:
    # one event id per distinct event: a redelivery repeats an event whole, never its id alone
    return OrderRec(f"{oid}-{status}-{ts}", ts, oid, account, "db-pro", Decimal("100.00"), "USD", status,
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
class Reassign:
    """The partitions move: a fresh engine over what the new owner recovers of the store."""


@dataclass(frozen=True)
class Counts:
    """Redis's flood and farming counters change (account join)."""

    signals: Signals


Item = JoinRecord | Clocks | Reassign | Counts


class FakeSignals:
    """`SignalBackend` in memory: fixed counters, ledger entries by order id."""

    def __init__(self) -> None:
        self.counts = Signals()
        self.ledger: dict[str, Conversion] = {}
        self.snapshots: list[list[str]] = []

    async def snapshot(self, recs: list[AttributionRec]) -> list[Signals]:
        if recs:
            self.snapshots.append([r.account_id for r in recs])
        return [self.counts for _ in recs]

    async def ledger_before(self, asks: list[tuple[str, int]]) -> list[tuple[Decimal, int]]:
        return [(Decimal(0), 0) for _ in asks]

    async def record_ledger(self, convs: list[Conversion]) -> None:
        self.ledger.update((c.order_id, c) for c in convs)


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

    def new_engine(self) -> JoinEngine[Any, Any]:
        logic: VisitorLogic | AccountLogic
        if self.join == "visitor":
            rules = attr.AttributionRules(WINDOW, "last_click", max_clicks=64)
            logic, sources = VisitorLogic(rules, RuleBook([]), LATENESS, partitions=1), VISITOR_SOURCES
        else:
            ctx = conv.Context(CONV_RULES, RuleBook([]), lambda code, ts: PROMOTERS.get(code))
            logic, sources = AccountLogic(ctx, self.signals, now_ms=lambda: 0), ACCOUNT_SOURCES
        return JoinEngine(logic, self.store, sources=sources, lateness_ms=LATENESS, partitions=1,
                          sweep_every_s=0, now_ms=lambda: 0,
                          max_state_bytes=self.max_state or MAX_STATE_BYTES,
                          full_state_bytes=self.full_state or FULL_STATE_BYTES)

    def step(self, items: Sequence[Item]) -> None:
        batches: list[Batch] = []
        records: list[JoinRecord] = []
        for item in items:
            if isinstance(item, Reassign):
                self.store = MemoryStore(self.store.data)
                self.engine = self.new_engine()
            elif isinstance(item, Counts):
                self.signals.counts = item.signals
            elif isinstance(item, Clocks):
                batches.append(Batch(records, {s: item.at for s in item.only or self.engine.sources}))
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
        return {
            "sent": [(a.account_id, a.click.tracking_code if a.click else None, a.final) for a in sent],
            "final": {a.account_id: a.click.tracking_code if a.click else None for a in sent if a.final},
            "late": [e.event_id for out in self.outputs for e in out.late],
            "refused": [json.loads(d.value)[1] for out in self.outputs for d in out.dead_letters],
            "conversions": conversions,
            "ledger": sorted(self.signals.ledger),
            "keys": sorted(k.decode() for k in self.store.data if not k.startswith(b"\x00")),
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
    # account join
    Case("paid order of an attributed account", "account",
         [[attribution("A"), order("o1", DAY)]],
         {"conversions": {"o1": (1, "approved")}, "ledger": ["o1"]}),
    Case("order before its attribution", "account",
         [[order("o1", DAY)], [attribution("A")]],
         {"conversions": {"o1": (1, "approved")}}),
    Case("a refund reverses, redelivered it changes nothing", "account",
         [[attribution("A"), order("o1", DAY)], [order("o1", 2 * DAY, "refunded")], [order("o1", 2 * DAY, "refunded")]],
         {"conversions": {"o1": (2, "reversed")}}),
    Case("a refund behind the watermark updates a known order", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Clocks(5 * DAY)], [order("o1", 2 * DAY, "refunded")]],
         {"conversions": {"o1": (2, "reversed")}, "late": []}),
    Case("an order of an unknown account behind the watermark is late", "account",
         [[Clocks(5 * DAY)], [order("o1", 2 * DAY)]],
         {"late": [f"o1-paid-{2 * DAY}"], "keys": []}),
    Case("attributions are never late", "account",
         [[Clocks(5 * DAY)], [attribution("A", signup_ts=DAY), order("o1", 6 * DAY)]],
         {"late": [], "conversions": {"o1": (1, "approved")}}),
    Case("orders waiting for a signup go when the watermark passes them", "account",
         [[order("o1", DAY)], [Clocks(2 * DAY)]],
         {"conversions": {}, "keys": []}),
    Case("the counters are read for good when their windows close", "account",
         [[attribution("A", signup_ts=HOUR, final=True), order("o1", 2 * HOUR)],
          [Counts(Signals(flood_ip=50))], [Clocks(DAY + HOUR)], [Clocks(2 * DAY)]],
         {"conversions": {"o1": (2, "rejected")}, "keys": ["acc"]}),
    Case("an attributed account expires after binding and refund window", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Clocks(300 * DAY)]],
         {"conversions": {"o1": (1, "approved")}, "keys": []}),
    Case("re-assignment: a fresh engine expires the recovered accounts", "account",
         [[attribution("A", final=True), order("o1", DAY)], [Reassign(), Clocks(300 * DAY)]],
         {"keys": []}),
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
    assert r.views()["refused"] == [] and r.views()["conversions"]["o1"][1] == "reversed"


def test_a_full_account_refuses_new_orders_but_takes_refunds_of_known_ones() -> None:
    orders = [order(f"o{i}", 1_000 + i) for i in range(40)]
    sizes = [len(v) for v in run("account", [[attribution("A", final=True)], orders[:10]]).store.data.values()]
    bound = {"full_state": max(sizes), "max_state": max(sizes) + 2_000}  # full at 10 orders
    refund = order("o3", 5_000, "refunded")
    refund.event_id = "o3-refund"
    r = run("account", [[attribution("A", final=True)], orders[:10], orders[10:20], [refund]], **bound)
    assert r.views()["refused"] == [f"o{i}-paid-{1_000 + i}" for i in range(10, 20)]
    assert r.views()["conversions"]["o3"][1] == "reversed"
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
    assert twice.views()["conversions"] == once.views()["conversions"]
    assert twice.store.data == once.store.data
