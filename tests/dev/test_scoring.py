"""Scoring a pipeline run against the traffic's truth: pure, table-driven tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

import pytest

from streams.dev.scoring import Report, Score, check_overrides, format_report, is_override_line, orders_only, score
from streams.dev.traffic import REVERSAL_CODES, Expected, Traffic, TrafficSpec, generate, status_of


def exp(oid: str, *reasons: str, patterns: tuple[str, ...] = ()) -> Expected:
    return Expected(oid, f"acc-{oid}", "T-CODE", "P1", Decimal("10"), status_of(reasons), frozenset(reasons),
                    frozenset(patterns))


def row(oid: str, status: str, *reasons: str) -> dict:
    return {"order_id": oid, "status": status, "reasons": list(reasons), "promoter_id": "P1"}


@dataclass(frozen=True)
class Case:
    name: str
    expected: list[Expected]
    rows: list[dict]
    counts: dict[str, tuple[int, int, int]]  # code -> (tp, fp, fn); every other code absent
    mismatches: dict[str, tuple[str, str]] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()


CASES = [
    Case("perfect",
         [exp("o1"), exp("o2", "bot_traffic"), exp("o3", "click_spamming", "refunded")],
         [row("o1", "approved"), row("o2", "rejected", "bot_traffic"),
          row("o3", "reversed", "click_spamming", "refunded")],
         {"bot_traffic": (1, 0, 0), "refunded": (1, 0, 0), "click_spamming": (1, 0, 0)}),
    Case("missed-reason",
         [exp("o1", "click_injection")], [row("o1", "approved")],
         {"click_injection": (0, 0, 1)}, mismatches={"o1": ("rejected", "approved")}),
    Case("false-alarm-on-honest-order",
         [exp("o1"), exp("o2")], [row("o1", "rejected", "click_flooding"), row("o2", "approved")],
         {"click_flooding": (0, 1, 0)}, mismatches={"o1": ("approved", "rejected")}),
    Case("one-of-two-reasons",
         [exp("o1", "self_referral", "signup_farming")], [row("o1", "rejected", "signup_farming")],
         {"self_referral": (0, 0, 1), "signup_farming": (1, 0, 0)}),
    Case("missing-row-counts-as-missed",
         [exp("o1", "chargeback"), exp("o2")], [row("o2", "approved")],
         {"chargeback": (0, 0, 1)}, missing=("o1",)),
    Case("unexpected-row-counts-as-false-alarm",
         [exp("o1")], [row("o1", "approved"), row("o9", "held", "high_value_review")],
         {"high_value_review": (0, 1, 0)}, unexpected=("o9",)),
    Case("unknown-code-from-the-pipeline",
         [exp("o1", "bot_traffic")], [row("o1", "rejected", "bot_traffic", "new_check")],
         {"bot_traffic": (1, 0, 0), "new_check": (0, 1, 0)}),
    Case("nothing-expected-nothing-flagged", [exp("o1")], [row("o1", "approved")], {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_score(case: Case) -> None:
    report = score({e.order_id: e for e in case.expected}, case.rows)
    assert {s.code: (s.tp, s.fp, s.fn) for s in report.scores} == case.counts
    assert report.status_mismatches == case.mismatches
    assert report.missing == case.missing and report.unexpected == case.unexpected
    assert report.compared == len({e.order_id for e in case.expected} & {r["order_id"] for r in case.rows})
    for s in report.scores:
        assert s.expected == s.tp + s.fn and s.flagged == s.tp + s.fp


@dataclass(frozen=True)
class RatioCase:
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None


RATIOS = [
    RatioCase(3, 1, 0, 0.75, 1.0),
    RatioCase(1, 0, 3, 1.0, 0.25),
    RatioCase(0, 2, 0, 0.0, None),
    RatioCase(0, 0, 2, None, 0.0),
    RatioCase(0, 0, 0, None, None),
]


@pytest.mark.parametrize("case", RATIOS, ids=[f"{c.tp}-{c.fp}-{c.fn}" for c in RATIOS])
def test_precision_and_recall(case: RatioCase) -> None:
    s = Score("x", (), case.tp, case.fp, case.fn)
    assert (s.precision, s.recall) == (case.precision, case.recall)


def test_score_of_and_patterns_column() -> None:
    report = score({"o1": exp("o1", "refunded")}, [row("o1", "reversed", "refunded")])
    assert report.score_of("refunded").patterns == ("refund_abuse", "refund")
    assert report.score_of("bot_traffic") == Score("bot_traffic", ("bot_traffic",), 0, 0, 0)
    assert report.status_agreement == 1.0


def test_format_report_is_an_aligned_table() -> None:
    case = next(c for c in CASES if c.name == "one-of-two-reasons")
    report = score({e.order_id: e for e in case.expected},
                   case.rows + [row("o9", "held", "high_value_review")])
    text = format_report(report)
    lines = text.splitlines()
    header, body = lines[0], lines[1:len(report.scores) + 2]  # scores, then the "all reasons" line
    assert header.split()[:2] == ["reason", "patterns"] and header.endswith("recall")
    for line in body:  # numbers right-aligned under their headers
        assert len(line) == len(header)
        assert line[header.index("precision") + len("precision") - 1] != " "
    assert [line.split()[0] for line in body[:-1]] == ["self_referral", "signup_farming", "high_value_review"]
    assert body[-1].startswith("all reasons")
    assert body[0].split()[-2:] == ["-", "0.000"]  # self_referral: nothing flagged, so no precision
    assert "statuses: 1/1 agree (100.0%); 0 expected orders missing, 1 unexpected" in text


def test_format_report_lists_status_mismatches() -> None:
    expected = {f"o{i}": exp(f"o{i}", "click_spamming") for i in range(5)}
    rows = [row(f"o{i}", "approved") for i in range(5)]
    text = format_report(score(expected, rows), examples=2)
    assert "statuses: 0/5 agree (0.0%)" in text
    assert "expected held, got approved: 5 (e.g. o0, o1)" in text


def test_format_report_of_nothing() -> None:
    assert "(no reason expected nor flagged)" in format_report(score({}, []))


# --- on generated traffic: a perfect pipeline, and one that checks nothing yet ---------------


@cache
def traffic() -> Traffic:
    return generate(TrafficSpec(seed=5, visitors=1500, days=7))


def perfect(t: Traffic) -> list[dict]:
    return [row(e.order_id, e.status, *sorted(e.reasons)) for e in t.truth.expected.values()]


def no_checks(t: Traffic) -> list[dict]:
    """Attribution and refunds only, as before the fraud checks existed."""
    out = []
    for e in t.truth.expected.values():
        back = sorted(e.reasons & set(REVERSAL_CODES))
        out.append(row(e.order_id, "reversed" if back else "approved", *back))
    return out


@dataclass(frozen=True)
class RunCase:
    name: str
    rows: str  # which pipeline
    recall_of_fraud: float
    all_agree: bool


RUNS = [RunCase("perfect", "perfect", 1.0, True), RunCase("no-checks", "no_checks", 0.0, False)]


@pytest.mark.parametrize("case", RUNS, ids=[c.name for c in RUNS])
def test_score_generated_traffic(case: RunCase) -> None:
    t = traffic()
    report: Report = score(t.truth, {"perfect": perfect, "no_checks": no_checks}[case.rows](t))
    fraud = [s for s in report.scores if s.code not in REVERSAL_CODES]
    assert len(fraud) >= 12
    assert all(s.recall == case.recall_of_fraud for s in fraud)
    assert all(s.recall == 1.0 and s.precision == 1.0 for s in report.scores if s.code in REVERSAL_CODES)
    assert (not report.status_mismatches) is case.all_agree
    assert report.compared == len(t.truth.expected) and not report.missing and not report.unexpected


# --- override lines (two-level referrals): not conversions, checked on their own ------------------

RATE = Decimal("0.05")


def with_lines(t: Traffic) -> list[dict]:
    """A perfect run under override_rate RATE: every order row (commission 10) plus the override
    line of each order of a recruited promoter."""
    out = []
    for e in t.truth.expected.values():
        out.append({**row(e.order_id, e.status, *sorted(e.reasons)), "promoter_id": e.promoter_id,
                    "commission": Decimal("10.0000"), "override_of": ""})
        parent = t.truth.recruiter(e.promoter_id)
        if parent:
            out.append({**row(e.order_id + "#override", e.status, *sorted(e.reasons)), "promoter_id": parent,
                        "commission": Decimal("0.5000"), "override_of": e.promoter_id})
    return out


def _first_line(rows: list[dict]) -> dict:
    return next(r for r in rows if r["override_of"])


def _break(change: str, rows: list[dict]) -> list[dict]:
    """`rows` with one thing wrong (or, for the *-ok changes, one thing different but right)."""
    line = _first_line(rows)
    if change == "missing":
        return [r for r in rows if r is not line]
    if change == "wrong-recruiter":
        line["promoter_id"] = "P999999"
    elif change == "wrong-status":
        line["status"] = "approved" if line["status"] != "approved" else "held"
    elif change == "wrong-commission":
        line["commission"] = Decimal("0.5001")
    elif change in ("stray-line", "withdrawn-line-ok"):
        ok = change == "withdrawn-line-ok"
        rows.append({**row("ord-elsewhere#override", "reversed" if ok else "approved",
                           *(["override_withdrawn"] if ok else [])),
                     "commission": Decimal(0), "override_of": "P100002"})
    return rows


@dataclass(frozen=True)
class OverrideCase:
    change: str
    rate: Decimal
    problem: str | None  # a fragment of the one problem reported; None: none


OVERRIDE_CASES = [
    OverrideCase("none", RATE, None),
    OverrideCase("missing", RATE, "missing (recruiter"),
    OverrideCase("wrong-recruiter", RATE, "credited to P999999"),
    OverrideCase("wrong-status", RATE, "status"),
    OverrideCase("wrong-commission", RATE, "commission 0.5001, expected 0.5000"),
    OverrideCase("stray-line", RATE, "ord-elsewhere#override: unexpected line"),
    OverrideCase("withdrawn-line-ok", RATE, None),
]


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=[c.change for c in OVERRIDE_CASES])
def test_check_overrides(case: OverrideCase) -> None:
    t = traffic()
    rows = _break(case.change, with_lines(t))
    problems = check_overrides(t.truth, rows, case.rate)
    if case.problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and case.problem in problems[0], problems


def test_without_override_rate_every_line_is_unexpected() -> None:
    t = traffic()
    rows = with_lines(t)
    n = sum(1 for r in rows if r["override_of"])
    assert n > 0, "the traffic has recruits with conversions"
    assert len(check_overrides(t.truth, rows, Decimal(0))) == n
    assert check_overrides(t.truth, orders_only(rows), Decimal(0)) == []


def test_override_lines_are_not_scored_as_conversions() -> None:
    t = traffic()
    rows = with_lines(t)
    assert any(is_override_line(r) for r in rows)
    assert score(t.truth, rows) == score(t.truth, orders_only(rows)) == score(t.truth, perfect(t))


def test_demo_rule_book_prices_in_usd_with_overrides() -> None:
    import tomllib

    from streams.dev.demo import DEMO_OVERRIDE_RATE, DEMO_RULES
    from streams.logic.rules.ruleset import parse_rules

    assert DEMO_RULES.startswith('currency = "USD"\n')  # top level, before [[rule_set]]
    book = parse_rules(tomllib.loads(DEMO_RULES))
    assert book.currency == "USD" and book.at(0).override_rate == DEMO_OVERRIDE_RATE > 0
    assert book.at(0).override_months == 0  # check_overrides expects a line on every order
