"""Score a pipeline run against the sample traffic's truth: precision and recall of every
reason code, and agreement on statuses (pure: no I/O).

`rows` are `conversions_current` rows (or `Conversion` messages as dicts): each has at least
`order_id`, `status` and `reasons`. An order counts for a reason code as

- true positive: expected (`Truth.expected`) and flagged (in the row's reasons);
- false positive: flagged, not expected (also every reason of a row the truth does not expect);
- false negative: expected, not flagged (also every expected reason of an order with no row).

Each code is shown with the labelled patterns (`streams.dev.traffic.PATTERNS`) that produce it.

Override lines (two-level referrals: `override_of` set, order id `<order>#override`) are a
recruiter's share of his recruit's order, not conversions: `score` leaves them out, and
`check_overrides` compares them with the truth on their own.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sinks.queries import format_table
from streams.dev.traffic import PATTERNS, REASON_CODES, Expected, Truth
from streams.logic.overrides import OVERRIDE_SUFFIX, WITHDRAWN  # an override line's id, a withdrawn one's reason


@dataclass(frozen=True)
class Score:
    """Detection of one reason code over all orders."""

    code: str
    patterns: tuple[str, ...]  # labelled patterns that must produce this code
    tp: int
    fp: int
    fn: int

    @property
    def expected(self) -> int:
        return self.tp + self.fn

    @property
    def flagged(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        """Share of flagged orders that were expected; None when nothing was flagged."""
        return self.tp / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        """Share of expected orders that were flagged; None when nothing was expected."""
        return self.tp / self.expected if self.expected else None


@dataclass(frozen=True)
class Report:
    scores: tuple[Score, ...]  # per reason code expected or flagged at least once, in REASON_CODES order
    compared: int  # orders both expected and present in the rows
    status_mismatches: dict[str, tuple[str, str]]  # order_id -> (expected status, got status)
    missing: tuple[str, ...]  # expected orders without a row
    unexpected: tuple[str, ...]  # rows of orders the truth does not expect

    @property
    def status_agree(self) -> int:
        return self.compared - len(self.status_mismatches)

    @property
    def status_agreement(self) -> float | None:
        return self.status_agree / self.compared if self.compared else None

    def score_of(self, code: str) -> Score:
        """The score of `code` (all zero when it was neither expected nor flagged)."""
        found = [s for s in self.scores if s.code == code]
        return found[0] if found else Score(code, _producers().get(code, ()), 0, 0, 0)


def score(truth: Truth | Mapping[str, Expected], rows: Iterable[Mapping[str, Any]]) -> Report:
    """Compare `rows` with the expected conversions of `truth`."""
    expected = truth.expected if isinstance(truth, Truth) else truth
    got = {r["order_id"]: r for r in orders_only(rows)}
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for oid in expected.keys() | got.keys():
        want = expected[oid].reasons if oid in expected else frozenset()
        have = frozenset(got[oid]["reasons"]) if oid in got else frozenset()
        tp.update(want & have)
        fp.update(have - want)
        fn.update(want - have)
    producers = _producers()
    seen = set(tp) | set(fp) | set(fn)
    codes = [c for c in REASON_CODES if c in seen] + sorted(seen - set(REASON_CODES))
    both = sorted(expected.keys() & got.keys())
    return Report(
        scores=tuple(Score(c, producers.get(c, ()), tp[c], fp[c], fn[c]) for c in codes),
        compared=len(both),
        status_mismatches={oid: (expected[oid].status, got[oid]["status"]) for oid in both
                           if expected[oid].status != got[oid]["status"]},
        missing=tuple(sorted(expected.keys() - got.keys())),
        unexpected=tuple(sorted(got.keys() - expected.keys())),
    )


def is_override_line(row: Mapping[str, Any]) -> bool:
    """A recruiter's override line (`override_of` names the recruit), not a conversion."""
    return bool(row.get("override_of"))


def orders_only(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """`rows` without the override lines: one row per order, as the truth counts them."""
    return [r for r in rows if not is_override_line(r)]


def check_overrides(truth: Truth, rows: Iterable[Mapping[str, Any]], rate: Decimal) -> list[str]:
    """What is wrong with the override lines of `rows` (empty: nothing), for a rule book whose
    `override_rate` is `rate` on every order (`override_months` 0), docs/rules.md "Two-level
    referrals": every expected conversion of a recruited promoter has one line, credited to his
    recruiter, with the order's status and `rate` x the order row's commission; any other line
    must have been withdrawn (reversed, `override_withdrawn`, no commission)."""
    rows = list(rows)
    orders = {r["order_id"]: r for r in orders_only(rows)}
    lines = {r["order_id"]: r for r in rows if is_override_line(r)}
    problems = []
    want: dict[str, tuple[str, str]] = {}  # line order id -> (recruiter, recruit)
    if rate > 0:
        for oid, e in truth.expected.items():
            parent = truth.recruiter(e.promoter_id) if e.promoter_id else ""
            if parent and parent != e.promoter_id:
                want[oid + OVERRIDE_SUFFIX] = (parent, e.promoter_id)
    for lid, (parent, child) in sorted(want.items()):
        line, order = lines.get(lid), orders.get(lid.removesuffix(OVERRIDE_SUFFIX))
        if line is None:
            problems.append(f"{lid}: missing (recruiter {parent} of {child})")
            continue
        if (line["promoter_id"], line["override_of"]) != (parent, child):
            problems.append(f"{lid}: credited to {line['promoter_id']} for {line['override_of']}, "
                            f"expected {parent} for {child}")
        expected_status = truth.expected[lid.removesuffix(OVERRIDE_SUFFIX)].status
        if line["status"] != expected_status:
            problems.append(f"{lid}: status {line['status']}, expected {expected_status}")
        if order is not None:
            share = (Decimal(str(order["commission"])) * rate).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)
            if Decimal(str(line["commission"])) != share:
                problems.append(f"{lid}: commission {line['commission']}, expected {share}")
    for lid, line in sorted(lines.items()):
        if lid not in want and not (line["status"] == "reversed" and WITHDRAWN in line["reasons"]
                                    and Decimal(str(line["commission"])) == 0):
            problems.append(f"{lid}: unexpected line for {line['promoter_id']} ({line['status']})")
    return problems


def format_report(report: Report, examples: int = 3) -> str:
    """A small aligned text table of the report, then the status agreement."""
    head = ("reason", "patterns", "expected", "flagged", "TP", "FP", "FN", "precision", "recall")

    def cells(s: Score, patterns: str) -> dict[str, str]:
        return dict(zip(head, (s.code, patterns, str(s.expected), str(s.flagged), str(s.tp), str(s.fp),
                               str(s.fn), _ratio(s.precision), _ratio(s.recall))))

    table = [cells(s, ", ".join(s.patterns) or "-") for s in report.scores]
    if report.scores:
        tp, fp, fn = (sum(getattr(s, k) for s in report.scores) for k in ("tp", "fp", "fn"))
        table.append(cells(Score("all reasons", (), tp, fp, fn), ""))
    lines = format_table(head, table, numeric=head[2:], rule=False).splitlines()
    if not report.scores:
        lines.append("(no reason expected nor flagged)")
    agreement = report.status_agreement
    lines.append(f"statuses: {report.status_agree}/{report.compared} agree"
                 + (f" ({agreement:.1%})" if agreement is not None else "")
                 + f"; {len(report.missing)} expected orders missing, {len(report.unexpected)} unexpected")
    by_kind: dict[tuple[str, str], list[str]] = {}
    for oid, pair in sorted(report.status_mismatches.items()):
        by_kind.setdefault(pair, []).append(oid)
    for (want, got), oids in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  expected {want}, got {got}: {len(oids)} (e.g. {', '.join(oids[:examples])})")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _producers() -> dict[str, tuple[str, ...]]:
    """reason code -> the patterns that produce it."""
    out: dict[str, list[str]] = {}
    for pattern, codes in PATTERNS.items():
        for code in codes:
            out.setdefault(code, []).append(pattern)
    return {code: tuple(ps) for code, ps in out.items()}
