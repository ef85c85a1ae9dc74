"""The rules ClickHouse applies over a whole code or promoter, run both ways on the same cases:
in Python (what replay and the account join decide) and as the SQL the sink agent installs
(`rule_views`, on a real chdb), which must agree."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import msgspec
import pytest

from schemas.events import Promoter
from schemas.records import AttributionRec, ClickRef, Conversion, OrderRec
from sinks.clickhouse import ClickHouseWriter
from sinks.tables import quote
from streams.logic import conversions as conv
from streams.logic import pricing
from streams.logic.reference import PromoterDirectory
from streams.logic.rules import spamming
from streams.logic.rules.ruleset import RuleBook, RuleSet
from streams.logic.rules.views import rule_views
from tests.sinks import write_records

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
H = 3_600_000
DAY = 24 * H


def install(db: Any, rules: RuleSet) -> None:
    """What the sink agent does when it opens ClickHouse."""
    for name, sql in rule_views(rules).items():
        db.command(f"CREATE OR REPLACE VIEW {quote(name)} AS {sql}")


def current(db: Any, order_id: str) -> tuple:
    [row] = db.query("SELECT status, reasons, commission, bonus, points FROM conversions_current "
                     "WHERE order_id = {o:String}", parameters={"o": order_id}).result_rows
    return tuple(row)


# --- click spamming ---------------------------------------------------------------------------


def decided(status: str = "approved", reasons: list[str] | None = None, code: str = "T1") -> Conversion:
    """A conversion as the join emitted it (the join never decides click spamming)."""
    return Conversion(order_id="o1", revision=1, status=status, reasons=reasons or [], promoter_id="P1",
                      tracking_code=code, campaign="", account_id="buyer", visitor_id="v", click_event_id="c",
                      click_ts=T0, signup_event_id="s", signup_ts=T0 + H, order_event_id="e1", order_ts=T0 + DAY,
                      cart_id="", product="pro", category="", amount=Decimal(100), discount=Decimal(0),
                      currency="USD", order_status="paid", renewal=False, attribution_model="last_click",
                      attribution_final=True, decided_at=0, commission=Decimal(15), bonus=Decimal(50),
                      points=6500)


@dataclass
class SpamCase:
    name: str
    delays_h: Sequence[float]  # click -> signup of each attributed signup of code T1
    flagged: bool  # code T1 is spamming
    conversion: Conversion = field(default_factory=decided)
    expected: tuple[str, list[str]] = ("approved", [])  # status, reasons in conversions_current
    rules: dict = field(default_factory=dict)


SPAM_CASES = [
    SpamCase("20 signups, half long after the click", [1] * 10 + [25] * 10, True,
             expected=("held", ["click_spamming"])),
    SpamCase("19 signups, all long: too few to judge", [48] * 19, False),
    SpamCase("20 signups, 9 long: under the share", [1] * 11 + [25] * 9, False),
    SpamCase("exactly the delay is not long", [1] * 10 + [24] * 10, False),
    SpamCase("the share is a setting", [1] * 10 + [25] * 10, False, rules={"spam_long_share": 0.6}),
    SpamCase("the minimum is a setting", [25] * 5, True, rules={"spam_min_signups": 5},
             expected=("held", ["click_spamming"])),
    SpamCase("the delay is a setting", [1] * 10 + [3] * 10, True, rules={"spam_long_delay_h": 2},
             expected=("held", ["click_spamming"])),
    SpamCase("held for another reason: both reasons listed", [25] * 20, True,
             conversion=decided("held", ["high_value_review"]),
             expected=("held", ["high_value_review", "click_spamming"])),
    SpamCase("rejected stays rejected, the reason is listed", [25] * 20, True,
             conversion=decided("rejected", ["bot_traffic"]),
             expected=("rejected", ["bot_traffic", "click_spamming"])),
    SpamCase("reversed stays reversed", [25] * 20, True, conversion=decided("reversed", ["refunded"]),
             expected=("reversed", ["refunded", "click_spamming"])),
    SpamCase("another code's signups do not count", [25] * 20, True, conversion=decided(code="T2"),
             expected=("approved", [])),
]


@pytest.mark.parametrize("case", SPAM_CASES, ids=lambda c: c.name)
def test_click_spamming_python_and_sql_agree(db, case: SpamCase) -> None:
    rules = msgspec.structs.replace(RuleSet(), **case.rules)
    signups = [AttributionRec(f"a{i}", f"s{i}", T0 + round(d * H), f"v{i}", ClickRef(f"c{i}", T0, "T1"), True)
               for i, d in enumerate(case.delays_h)]
    # Python, as replay applies it: per code, its signups and the long ones
    total, long = Counter[str](), Counter[str]()
    for a in signups:
        assert a.click is not None
        total[a.click.tracking_code] += 1
        long[a.click.tracking_code] += spamming.is_long(a.click.ts, a.signup_ts, rules)
    in_python = {code for code in total if spamming.is_spamming(total[code], long[code], rules)}
    c = case.conversion
    py = spamming.hold(c) if c.tracking_code in in_python else c
    # SQL, as conversions_current applies it
    write_records(ClickHouseWriter(db), [c, *((1, a) for a in signups)])
    install(db, rules)
    in_sql = {r[0] for r in db.query("SELECT tracking_code FROM spam_codes").result_rows}
    status, reasons, *_ = current(db, "o1")

    assert in_python == in_sql == ({"T1"} if case.flagged else set())
    assert (py.status, py.reasons) == (status, reasons) == case.expected


# --- the retroactive enterprise reversal -------------------------------------------------------

ORDER_TS = T0 + 2 * DAY
AccountType = Literal["personal", "enterprise"]
RULES = conv.ConversionRules(binding_ms=180 * DAY, refund_window_ms=90 * DAY)


@dataclass
class EnterpriseCase:
    name: str
    versions: list[tuple[int, AccountType]]  # (ts, account_type) of promoter P1 on code T1
    known_at: int  # the join last decided the order knowing the versions up to here
    expected: tuple[str, list[str], Decimal]  # status, sorted reasons, commission in conversions_current
    amount: str = "100"
    refunded: bool = False


ENTERPRISE_CASES = [
    EnterpriseCase("personal throughout", [(T0 - DAY, "personal")], ORDER_TS, ("approved", [], Decimal(15))),
    EnterpriseCase("turns enterprise after the order, unknown to the join: reversed",
                   [(T0 - DAY, "personal"), (ORDER_TS + DAY, "enterprise")], ORDER_TS,
                   ("reversed", ["promoter_became_enterprise"], Decimal(0))),
    EnterpriseCase("turns enterprise after the order, known to the join: reversed once",
                   [(T0 - DAY, "personal"), (ORDER_TS + DAY, "enterprise")], ORDER_TS + 2 * DAY,
                   ("reversed", ["promoter_became_enterprise"], Decimal(0))),
    EnterpriseCase("enterprise before the order: ineligible, not reversed",
                   [(T0 - DAY, "personal"), (ORDER_TS - H, "enterprise")], ORDER_TS,
                   ("rejected", ["promoter_ineligible"], Decimal(0))),
    EnterpriseCase("held for review, then turns enterprise: reversed",
                   [(T0 - DAY, "personal"), (ORDER_TS + 1, "enterprise")], ORDER_TS,
                   ("reversed", ["high_value_review", "promoter_became_enterprise"], Decimal(0)), amount="60000"),
    EnterpriseCase("refunded, then turns enterprise: both reasons",
                   [(T0 - DAY, "personal"), (ORDER_TS + DAY, "enterprise")], ORDER_TS,
                   ("reversed", ["promoter_became_enterprise", "refunded"], Decimal(0)), refunded=True),
]


def decide(case: EnterpriseCase, known_at: int) -> Conversion:
    """The account join's decision of order o1 with the promoter versions known at `known_at`,
    as the promoter stage prices it."""
    directory = PromoterDirectory(salt=None)
    for ts, account_type in case.versions:
        if ts <= known_at:
            directory.add(Promoter(event_id=f"p-{ts}", ts=ts, promoter_id="P1", tracking_code="T1",
                                   account_type=account_type))
    book = RuleBook([])
    ctx = conv.Context(RULES, book, directory.as_of)
    state = conv.AccountState()
    conv.add_attribution(state, AttributionRec("buyer", "s1", T0 + H, "v", ClickRef("c1", T0, "T1"), True))
    conv.add_order(state, OrderRec("o1-paid", ORDER_TS, "o1", "buyer", "pro", Decimal(case.amount), "USD", "paid"))
    if case.refunded:
        conv.add_order(state, OrderRec("o1-ref", ORDER_TS + H, "o1", "buyer", "pro", Decimal(case.amount), "USD",
                                       "refunded"))
    [priced] = pricing.price_all([conv.decide(state.orders["o1"], state, ctx, True, 0)], book)
    return priced


@pytest.mark.parametrize("case", ENTERPRISE_CASES, ids=lambda c: c.name)
def test_enterprise_reversal_python_and_sql_agree(db, case: EnterpriseCase) -> None:
    """The view shows what the join decides once it knows every version: also for an order
    it will never decide again. (The view leaves rejected conversions as they are: they
    earned nothing to reverse.)"""
    now = decide(case, known_at=max(ts for ts, _ in case.versions))
    py = (now.status, sorted(now.reasons), now.commission + now.bonus, now.points)
    write_records(ClickHouseWriter(db),
        [decide(case, case.known_at),
         *(Promoter(event_id=f"p-{ts}", ts=ts, promoter_id="P1", tracking_code="T1", account_type=account_type)
           for ts, account_type in case.versions)])
    install(db, RuleSet())
    status, reasons, commission, bonus, points = current(db, "o1")
    assert py == (status, sorted(reasons), commission + bonus, points)
    assert (status, sorted(reasons), commission) == case.expected


@pytest.mark.parametrize("case", ENTERPRISE_CASES, ids=lambda c: c.name)
def test_an_override_line_follows_its_recruit_through_the_enterprise_reversal(db, case: EnterpriseCase) -> None:
    """The recruit P1's order o1 and his recruiter P0's line o1#override: whatever the view
    does to o1 (a retroactive enterprise reversal), it does to the line."""
    from streams.logic.overrides import OVERRIDE_SUFFIX

    known = decide(case, case.known_at)
    line = msgspec.structs.replace(known, order_id="o1" + OVERRIDE_SUFFIX, promoter_id="P0", override_of="P1",
                                   commission=known.commission / 10, bonus=Decimal(0), points=0)
    write_records(ClickHouseWriter(db),
        [known, line, *(Promoter(event_id=f"p-{ts}", ts=ts, promoter_id="P1", tracking_code="T1",
                                 account_type=account_type) for ts, account_type in case.versions)])
    install(db, RuleSet())
    status, reasons, *_ = current(db, "o1")
    line_status, line_reasons, line_commission, *_ = current(db, "o1" + OVERRIDE_SUFFIX)
    assert (line_status, sorted(line_reasons)) == (status, sorted(reasons))
    if status == "reversed":
        assert line_commission == 0
