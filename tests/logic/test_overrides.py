"""Two-level referrals (streams/logic/overrides.py): the override line a recruiter earns on
his recruit's order, alone (`earns`, `line`) and as the promoter stage sends it
(streams/logic/pricing.py: each conversion followed by its line, on every re-send).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.records import Conversion, DecisionRec
from streams.logic import overrides
from streams.logic.overrides import OVERRIDE_SUFFIX, earns, line
from streams.logic.pricing import REVISION_BITS, price_all
from streams.logic.rules.ruleset import RuleBook, RuleSet
from tests.logic.fixtures import JAN_CLOSES, NOW, Step, decision, jan, ms, refunded, run

D = Decimal
R1, R2 = 1 << REVISION_BITS, 2 << REVISION_BITS
UTC, SHANGHAI = ZoneInfo("UTC"), ZoneInfo("Asia/Shanghai")
RATE = D("0.1")


def dec(oid: str, ts: int, amount: str = "100", *, parent: str = "P0", joined: int = 0,
        **fields: object) -> DecisionRec:
    """A decision of the account join (tests/logic/fixtures.py), for a recruit of `parent`."""
    return decision(oid, ts, amount, parent_promoter_id=parent, promoter_joined_at=joined, **fields)


def priced(d: DecisionRec, commission: str, bonus: str = "0", **fields: Any) -> Conversion:
    """The recruit's conversion of `d` as the stage priced it."""
    conv = Conversion(**{f: getattr(d, f) for f in Conversion.__struct_fields__})
    base: dict[str, Any] = dict(level=2, rate=D("0.2"), tier=1, commission=D(commission), bonus=D(bonus),
                                points=int((D(commission) + D(bonus)) * 100), cap="order", cap_applied=True,
                                first_order=True, revision=R1 + 3, decided_at=NOW)
    return msgspec.structs.replace(conv, **{**base, **fields})


# -- earns and line, alone ----------------------------------------------------------------
JOINED = ms("2026-01-30T20:00:00Z")  # Jan 31 04:00 in Shanghai: + 1 month is Feb 28 04:00 there
UTC_LIMIT = ms("2026-02-28T20:00:00Z")  # Jan 30 20:00 + 1 month in UTC
SHANGHAI_LIMIT = ms("2026-02-27T20:00:00Z")  # = 2026-02-28T04:00 +08:00


@dataclass
class LineCase:
    name: str
    decision: DecisionRec
    conversion: Conversion | None = None  # None: priced(decision, "15")
    rules: dict = field(default_factory=lambda: {"override_rate": RATE})
    zone: ZoneInfo = UTC
    expected: tuple[str, str, list[str]] | None = ("1.5", "approved", [])  # commission, status, reasons


ORDER = dec("o1", jan(5))
LINE_CASES = [
    LineCase("10% of the recruit's commission", ORDER),
    LineCase("no parent: no line", dec("o1", jan(5), parent=""), expected=None),
    LineCase("rate 0: no line", ORDER, rules={}, expected=None),
    LineCase("self-recruitment: no line", dec("o1", jan(5), parent="P1"), expected=None),
    LineCase("the whole commission at rate 1", ORDER, rules={"override_rate": D(1)}, expected=("15", "approved", [])),
    LineCase("a reversed recruit: 0 with the same status and reasons",
             refunded(ORDER, jan(9)), priced(refunded(ORDER, jan(9)), "0"), expected=("0", "reversed", ["refunded"])),
    LineCase("a held recruit: held too, what it will earn",
             dec("o1", jan(5), status="held", reasons=["high_value_review"]),
             expected=("1.5", "held", ["high_value_review"])),
    LineCase("rounding half-even at 4 places: down to even", ORDER, priced(ORDER, "1.2345"),
             expected=("0.1234", "approved", [])),
    LineCase("rounding half-even at 4 places: up to even", ORDER, priced(ORDER, "1.2355"),
             expected=("0.1236", "approved", [])),
    LineCase("rounding below a ten-thousandth", ORDER, priced(ORDER, "0.0004"), expected=("0", "approved", [])),
    LineCase("no months limit: always", dec("o1", ms("2036-01-01T00:00:00Z"), joined=JOINED)),
    LineCase("join time unknown: no limit", dec("o1", ms("2036-01-01T00:00:00Z")), rules={
        "override_rate": RATE, "override_months": 1}),
    LineCase("UTC: the last millisecond within the months limit", dec("o1", UTC_LIMIT - 1, joined=JOINED),
             rules={"override_rate": RATE, "override_months": 1}),
    LineCase("UTC: the limit itself is past it", dec("o1", UTC_LIMIT, joined=JOINED),
             rules={"override_rate": RATE, "override_months": 1}, expected=None),
    LineCase("Shanghai: the last millisecond within", dec("o1", SHANGHAI_LIMIT - 1, joined=JOINED),
             rules={"override_rate": RATE, "override_months": 1}, zone=SHANGHAI),
    LineCase("Shanghai: the limit is Feb 28 local, earlier than in UTC", dec("o1", SHANGHAI_LIMIT, joined=JOINED),
             rules={"override_rate": RATE, "override_months": 1}, zone=SHANGHAI, expected=None),
    LineCase("Shanghai: an order still within the UTC limit is past it", dec("o1", UTC_LIMIT - 1, joined=JOINED),
             rules={"override_rate": RATE, "override_months": 1}, zone=SHANGHAI, expected=None),
]


@pytest.mark.parametrize("case", LINE_CASES, ids=lambda c: c.name)
def test_line(case: LineCase) -> None:
    d, rules = case.decision, RuleSet(version="v1", **case.rules)
    c = case.conversion or priced(d, "15", bonus="50")
    got = line(c, d, rules, case.zone)
    assert earns(d, rules, case.zone) == (case.expected is not None)
    if case.expected is None:
        assert got is None
        return
    assert got is not None
    commission, status, reasons = case.expected
    assert (got.commission, got.status, got.reasons) == (D(commission), status, reasons)
    # the parent's row: bonus, points and the recruit's price breakdown are not his
    assert (got.order_id, got.promoter_id, got.override_of) == ("o1" + OVERRIDE_SUFFIX, "P0", "P1")
    assert (got.rate, got.level, got.tier, got.bonus, got.points, got.cap, got.cap_applied, got.first_order) == (
        rules.override_rate, 0, 0, D(0), 0, "", False, False)
    # the rest is the recruit's order, at the recruit's revision
    same = ("revision", "decided_at", "account_id", "amount", "currency", "order_ts", "tracking_code", "product",
            "rule_version", "program_currency", "program_amount", "fx_rate")
    assert [getattr(got, f) for f in same] == [getattr(c, f) for f in same]


@given(commission=st.decimals(min_value=0, max_value=10**9, places=4),
       rate=st.decimals(min_value=0, max_value=1, places=4).filter(lambda r: r > 0))
def test_the_line_is_the_rate_of_the_commission_rounded_half_even(commission: Decimal, rate: Decimal) -> None:
    d = dec("o1", jan(5))
    got = line(priced(d, str(commission)), d, RuleSet(version="v1", override_rate=rate), UTC)
    assert got is not None
    assert got.commission == (commission * rate).quantize(D("0.0001"), ROUND_HALF_EVEN)
    assert D(0) <= got.commission <= commission
    assert abs(got.commission - commission * rate) <= D("0.00005")


# -- through the promoter stage -----------------------------------------------------------


def row(c: Conversion) -> tuple[str, str, str, str, Decimal, int]:
    return (c.order_id, c.promoter_id, c.override_of, c.status, c.commission, c.revision)


BOOK = RuleBook([RuleSet(version="v1", override_rate=RATE)])


@dataclass
class StageCase:
    name: str
    steps: Sequence[Step]
    last: list[tuple]  # `row` of every conversion the last step sent, in order
    book: RuleBook = BOOK


O1 = dec("o1", jan(5))
BIG = dec("o0", jan(4), "10000")  # 1500 commission: tier 1 for what follows it in January
STAGE_CASES = [
    StageCase("the recruit's conversion, then the parent's line", [O1],
              [("o1", "P1", "", "approved", D(15), R1), ("o1#override", "P0", "P1", "approved", D("1.5"), R1)]),
    StageCase("no parent: the conversion alone", [dec("o1", jan(5), parent="")],
              [("o1", "P1", "", "approved", D(15), R1)]),
    StageCase("no override rate: the conversion alone", [O1], [("o1", "P1", "", "approved", D(15), R1)],
              RuleBook([RuleSet(version="v1")])),
    StageCase("a refund re-sends both, reversed", [O1, refunded(O1, jan(9))],
              [("o1", "P1", "", "reversed", D(0), R2), ("o1#override", "P0", "P1", "reversed", D(0), R2)]),
    StageCase("a re-priced neighbour re-sends its line too", [O1, BIG],
              [("o0", "P1", "", "approved", D(1500), R1), ("o0#override", "P0", "P1", "approved", D(150), R1),
               ("o1", "P1", "", "approved", D(16), R1 + 1), ("o1#override", "P0", "P1", "approved", D("1.6"), R1 + 1)]),
    StageCase("a closed month's late refund re-sends both, reversed",
              [O1, JAN_CLOSES + 1, refunded(O1, ms("2026-02-20T00:00:00Z"))],
              [("o1", "P1", "", "reversed", D(0), R2), ("o1#override", "P0", "P1", "reversed", D(0), R2)]),
    StageCase("a closed month's late first decision: both", [dec("o2", jan(6)), JAN_CLOSES + 1, O1],
              [("o1", "P1", "", "approved", D(15), R1), ("o1#override", "P0", "P1", "approved", D("1.5"), R1)]),
    StageCase("a redelivered decision re-sends both, unchanged", [O1, O1],
              [("o1", "P1", "", "approved", D(15), R1), ("o1#override", "P0", "P1", "approved", D("1.5"), R1)]),
    StageCase("a rejected recruit: both rejected, 0", [dec("o1", jan(5), status="rejected", reasons=["bot_traffic"])],
              [("o1", "P1", "", "rejected", D(0), R1), ("o1#override", "P0", "P1", "rejected", D(0), R1)]),
]


@pytest.mark.parametrize("case", STAGE_CASES, ids=lambda c: c.name)
def test_stage_sends_the_line_after_its_conversion(case: StageCase) -> None:
    sent = run(case.steps, case.book)
    assert [row(c) for c in sent[-1]] == case.last
    for step in sent:  # every line comes right after its recruit's conversion, at its revision
        for i, c in enumerate(step):
            if c.override_of:
                recruit = step[i - 1]
                assert i > 0 and (c.order_id, c.revision) == (recruit.order_id + OVERRIDE_SUFFIX, recruit.revision)


def test_the_line_takes_no_part_in_the_recruits_pricing() -> None:
    """The recruit's tiers, caps and levels are the same with or without override lines: a
    line is derived from the conversion after pricing, never priced itself."""
    steps = [BIG, O1, dec("o2", jan(7), acct="a2"), refunded(O1, jan(9))]
    with_lines = {c.order_id: c for c in price_all(steps, BOOK, NOW)}
    without = {c.order_id: c for c in price_all(steps, RuleBook([RuleSet(version="v1")]), NOW)}
    assert {o for o in with_lines if o.endswith(OVERRIDE_SUFFIX)} == {"o0#override", "o1#override", "o2#override"}
    assert {o: c for o, c in with_lines.items() if not o.endswith(OVERRIDE_SUFFIX)} == without
    assert with_lines["o2#override"].commission == (without["o2"].commission * RATE).quantize(D("0.0001"))


def test_a_re_attributed_order_withdraws_its_old_line() -> None:
    """o1 moves from P1 (recruited by P0) to P2 (recruited by nobody): P0's line must stop
    earning, else `conversions_current` keeps it (nothing sends o1#override again)."""
    removal = msgspec.structs.replace(O1, revision=2, promoter_id="P1", removed=True)
    sent = run([O1, removal, msgspec.structs.replace(O1, revision=2, promoter_id="P2", parent_promoter_id="")], BOOK)
    lines = [c for step in sent for c in step if c.order_id == "o1" + OVERRIDE_SUFFIX]
    latest = max(lines, key=lambda c: c.revision)
    assert latest.commission == 0 and latest.status not in ("approved", "held")


def test_override_suffix_is_the_one_the_reviews_follow() -> None:
    from streams.logic.rules.reviews import reviewed_order
    assert reviewed_order("o1" + overrides.OVERRIDE_SUFFIX) == "o1" and reviewed_order("o1") == "o1"
