"""Click -> signup attribution, lateness and finalisation: the visitor join's engine
(streams/logic/engine.py with VisitorLogic) run in-process over a dict store."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.records import AttributionRec, Batch, ClickRec, ClickRef, JoinRecord, SignupRec
from streams.logic import attribution as attr
from streams.logic.engine import JoinEngine, MemoryStore
from streams.logic.join_logics import VisitorLogic
from streams.logic.rules.ruleset import RuleBook

WINDOW = 1_000
LATENESS = 100
SOURCES = ("clicks/0", "signups/0")


def click(eid: str, ts: int, code: str) -> ClickRec:
    return ClickRec(eid, ts, "v", code, src="clicks/0/0")


def signup(eid: str, ts: int, account: str = "acc") -> SignupRec:
    return SignupRec(eid, ts, account, "v", src="signups/0/0")


@dataclass
class Case:
    name: str
    events: list[JoinRecord]  # of one visitor, in arrival order
    expected: dict[str, str | None]  # account -> tracking code it is finally attributed to
    model: str = "last_click"
    late: list[str] = field(default_factory=list)  # event ids reported late


def run(case: Case) -> tuple[dict[str, str | None], list[str], list[AttributionRec]]:
    """The events as one step of the visitor join, then a heartbeat that finalises everything."""
    logic = VisitorLogic(attr.AttributionRules(WINDOW, case.model, max_clicks=8), RuleBook([]), LATENESS, 1)
    engine = JoinEngine(logic, MemoryStore(), sources=SOURCES, lateness_ms=LATENESS, partitions=1,
                        sweep_every_s=0)
    steps = [Batch(list(case.events)), Batch([], {source: 10**9 for source in SOURCES})]
    outs = [asyncio.run(engine.process(0, [batch])) for batch in steps]
    emitted = [a for out in outs for part in out.attributions.values() for a in part]
    late = [e.event_id for out in outs for e in out.late]
    final = {a.account_id: (a.click.tracking_code if a.click else None) for a in emitted if a.final}
    return final, late, emitted


CASES = [
    Case("in order", [click("c1", 0, "A"), signup("s", 100)], {"acc": "A"}),
    Case("last click wins", [click("c1", 0, "A"), click("c2", 50, "B"), signup("s", 100)], {"acc": "B"}),
    Case("first click", [click("c1", 0, "A"), click("c2", 50, "B"), signup("s", 100)], {"acc": "A"},
         model="first_click"),
    Case("signup before its click", [signup("s", 100), click("c1", 50, "A")], {"acc": "A"}),
    Case("window start is inclusive", [click("c1", 0, "A"), signup("s", WINDOW)], {"acc": "A"}),
    Case("outside the window", [click("c1", 0, "A"), signup("s", WINDOW + 1)], {"acc": None}),
    Case("click at signup time counts", [click("c1", 100, "A"), signup("s", 100)], {"acc": "A"}),
    Case("click after signup does not", [signup("s", 100), click("c1", 101, "A")], {"acc": None}),
    Case("equal times tie-break by event id", [click("c2", 50, "B"), click("c1", 50, "A"), signup("s", 100)],
         {"acc": "B"}),
    Case("duplicates absorbed", [click("c1", 0, "A"), click("c1", 0, "A"), signup("s", 100),
                                  signup("s", 100)], {"acc": "A"}),
    Case("organic signup", [signup("s", 100)], {"acc": None}),
    Case("two accounts of one visitor",
         [click("c1", 0, "A"), signup("s1", 100, "a1"), click("c2", 200, "B"), signup("s2", 300, "a2")],
         {"a1": "A", "a2": "B"}),
    Case("click beyond lateness goes to late events",
         [click("c1", 0, "A"), signup("s", 50), click("c2", 500, "B"), signup("s9", 600, "other"),
          click("late", 40, "C")],
         {"acc": "A", "other": "B"}, late=["late"]),
    Case("out of order within lateness re-attributes",
         [click("c1", 0, "A"), signup("s", 100), click("c2", 150, "X"), click("c3", 90, "B")],
         {"acc": "B"}),
    Case("redelivery of a known event is never late",
         [click("c1", 0, "A"), signup("s", 50), click("c2", 500, "B"), signup("s9", 600, "o"),
          click("c1", 0, "A")],
         {"acc": "A", "o": "B"}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_attribution(case: Case) -> None:
    final, late, _ = run(case)
    assert final == case.expected
    assert late == case.late


def test_reattribution_is_emitted_and_finalised_once() -> None:
    _, _, emitted = run(Case("", [signup("s", 100), click("c1", 50, "A")], {}))
    assert [(a.click.tracking_code if a.click else None, a.final) for a in emitted] == [
        (None, False), ("A", False), ("A", True)]


def test_flood_keeps_the_clicks_the_model_can_choose() -> None:
    rules = attr.AttributionRules(WINDOW, "last_click", max_clicks=3)
    state = attr.VisitorState()
    for i in range(10):
        attr.add_click(state, "v", ClickRef(f"c{i}", i, f"T{i}"), rules)
    assert [c.event_id for c in state.clicks] == ["c7", "c8", "c9"]


def test_advance_expires_by_event_time() -> None:
    rules = attr.AttributionRules(WINDOW, "last_click")
    state = attr.VisitorState()
    attr.add_click(state, "v", ClickRef("old", 0, "A"), rules)
    attr.add_click(state, "v", ClickRef("new", 5_000, "B"), rules)
    attr.add_signup(state, "acc", "v", "s", 5_001, rules)
    attr.advance(state, "v", 5_005, rules, grace_ms=10)
    assert [c.event_id for c in state.clicks] == ["new"]
    assert state.signups[0].final
    attr.advance(state, "v", 7_000, rules, grace_ms=10)
    assert state.empty


def test_due_is_the_first_watermark_that_changes_the_state() -> None:
    rules = attr.AttributionRules(WINDOW, "last_click")
    state = attr.VisitorState()
    attr.add_click(state, "v", ClickRef("c", 100, "A"), rules)
    attr.add_signup(state, "acc", "v", "s", 500, rules)
    assert attr.due(state, rules, grace_ms=10) == 500  # the open signup finalises first
    before = attr.VisitorState(list(state.clicks), [attr.OpenSignup(**{f: getattr(s, f) for f in s.__struct_fields__})
                                                     for s in state.signups])
    assert attr.advance(state, "v", 500, rules, grace_ms=10) == [] and state == before
    assert attr.advance(state, "v", 501, rules, grace_ms=10)[0].final
    assert attr.due(state, rules, grace_ms=10) == 510
    assert attr.due(attr.VisitorState(), rules, grace_ms=10) is None


# -- click or coupon code (attribution.order_source) ----------------------------------------------------
def test_a_signups_coupon_code_rides_along() -> None:
    state = attr.VisitorState()
    [a] = attr.add_signup(state, "acc", "v", "s1", 100, attr.AttributionRules(1_000), coupon="KOL10")
    assert (a.click, a.coupon) == (None, "KOL10")
    [again] = attr.advance(state, "v", 101, attr.AttributionRules(1_000), 0)
    assert again.coupon == "KOL10" and again.final


CLICK = ClickRef("c1", 50, "T")
SOURCE_CASES = [
    ("click only", CLICK, [], "coupon", attr.Source("click", "", 50)),
    ("nothing", None, [], "coupon", None),
    ("code only, either precedence", None, [attr.CouponUse(60, "K")], "click", attr.Source("coupon", "K", 60)),
    ("code over click", CLICK, [attr.CouponUse(60, "K")], "coupon", attr.Source("coupon", "K", 60)),
    ("click over code", CLICK, [attr.CouponUse(60, "K")], "click", attr.Source("click", "", 50)),
    ("the latest use", None, [attr.CouponUse(60, "K"), attr.CouponUse(70, "J")], "click",
     attr.Source("coupon", "J", 70)),
]


@pytest.mark.parametrize("name,click,uses,precedence,expected", SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_order_source(name: str, click: ClickRef | None, uses: list[attr.CouponUse], precedence: str,
                      expected: attr.Source | None) -> None:
    assert attr.order_source(click, uses, lambda ts: precedence) == expected


def even_coupon(ts: int) -> str:
    """A rule book whose precedence is "coupon" at even times and "click" at odd ones."""
    return "coupon" if ts % 2 == 0 else "click"


@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["K", "J"])), max_size=5), st.booleans())
def test_order_source_a_code_wins_only_where_its_precedence_lets_it(uses: list[tuple[int, str]],
                                                                  clicked: bool) -> None:
    """With a click, the latest use made under "coupon" wins; without one, the latest use."""
    ordered = [attr.CouponUse(ts, code) for ts, code in sorted(uses)]
    got = attr.order_source(CLICK if clicked else None, ordered, even_coupon)
    winners = [u for u in ordered if not clicked or even_coupon(u.ts) == "coupon"]
    if winners:
        assert got == attr.Source("coupon", winners[-1].code, winners[-1].ts)
    else:
        assert got == (attr.Source("click", "", 50) if clicked else None)
