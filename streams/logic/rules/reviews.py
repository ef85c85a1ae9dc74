"""Review decisions and the holding period (docs/rules.md, "Reviews and the holding period").

A partner manager approves, rejects or holds one order's conversion (`order_id`) or all of a
promoter's *open* conversions (`promoter_id`, order_id empty). What a decision does depends
only on the decision and the status the rules gave the conversion (`auto_status`): the table
`PRECEDENCE`. Of the decisions that apply, the latest by (ts, event_id) wins. Whether a
promoter-wide decision applies depends on the conversion's state at the decision (ordered
before it and not payable yet: held, or approved with `payable_at` after it), so decisions are
folded in order: `fold` in Python, `fold_sql` for ClickHouse. A decision stored more than once
(redelivered, or retried later by the web API) counts once, as its earliest copy: `unique`, and
the view `reviews_first` (`FIRST_COPIES_SQL`) in ClickHouse. `conversions_current` applies
them (`streams.logic.rules.views`); tests/logic/rules/test_reviews.py runs both on the same cases.

Override lines (`streams.logic.overrides`, order id `<order>#override`) follow their recruit's
order: a decision naming order X applies to X and to X#override (`reviewed_order`, and
`order_decisions_sql` which lists X's decisions under both ids). A promoter-wide decision
applies to that promoter's own rows only: the parent's override lines are the parent's.

Money: a conversion a decision made rejected earns nothing (commission, bonus and points 0);
a held one keeps its figures (what it will earn when released). `payable_at` is when an
approved conversion is or was payable: order_ts + holding period of its rule version, or the
approving decision's ts if later; 0 when it is not approved.
"""
from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import NamedTuple

import msgspec

from schemas.events import Review, millis
from schemas.records import Conversion
from streams.logic.overrides import OVERRIDE_SUFFIX
from streams.logic.rules.checks import APPROVED, HELD, REJECTED, REVERSED
from streams.logic.rules.ruleset import RuleBook

APPROVE, REJECT, HOLD = "approve", "reject", "hold"
MANUAL_APPROVED, MANUAL_REJECTED, MANUAL_HOLD = "manual_approved", "manual_rejected", "manual_hold"
#: the reason codes of decisions -> the decision that lists them (not in `ruleset.REASON_KINDS`:
#: they record a decision, `checks.status_of` never derives a status from them)
REASONS: dict[str, str] = {MANUAL_APPROVED: APPROVE, MANUAL_REJECTED: REJECT, MANUAL_HOLD: HOLD}


class Effect(NamedTuple):
    status: str  # the conversion's status after the decision
    reason: str  # the reason code listed, '' when the decision changes nothing


#: (decision, status before reviews) -> effect. A manual reject beats an automatic approve or
#: hold; an approve releases a hold but never overrides a reversal (refund, chargeback,
#: cancellation, enterprise) or an automatic rejection; a hold holds an approved conversion.
PRECEDENCE: dict[tuple[str, str], Effect] = {
    (APPROVE, APPROVED): Effect(APPROVED, MANUAL_APPROVED),
    (APPROVE, HELD): Effect(APPROVED, MANUAL_APPROVED),
    (APPROVE, REJECTED): Effect(REJECTED, ""),
    (APPROVE, REVERSED): Effect(REVERSED, ""),
    (REJECT, APPROVED): Effect(REJECTED, MANUAL_REJECTED),
    (REJECT, HELD): Effect(REJECTED, MANUAL_REJECTED),
    (REJECT, REJECTED): Effect(REJECTED, MANUAL_REJECTED),
    (REJECT, REVERSED): Effect(REVERSED, ""),  # the reversal is a fact; it earns nothing either way
    (HOLD, APPROVED): Effect(HELD, MANUAL_HOLD),
    (HOLD, HELD): Effect(HELD, MANUAL_HOLD),
    (HOLD, REJECTED): Effect(REJECTED, ""),
    (HOLD, REVERSED): Effect(REVERSED, ""),
}


def effect(decision: str, auto_status: str) -> Effect:
    """What `decision` does to a conversion the rules gave `auto_status` (unknown: nothing)."""
    return PRECEDENCE.get((decision, auto_status), Effect(auto_status, ""))


def holding_ms(book: RuleBook, rule_version: str, order_ts: int) -> int:
    """The holding period of the conversion's rule version; for a version the book does not
    know (unpriced, or since removed), that of the version in force at the order."""
    for r in book.rule_sets:
        if r.version == rule_version:
            return r.holding_ms
    return book.at(order_ts).holding_ms


def is_promoter_wide(r: Review) -> bool:
    return not r.order_id and bool(r.promoter_id)


def reviewed_order(order_id: str) -> str:
    """The order id that the review decisions of the conversion `order_id` name: an override
    line (X#override) follows its recruit's order X, so it has no decisions of its own (a
    decision naming X#override applies to nothing). `order_decisions_sql` is its SQL twin."""
    return order_id.removesuffix(OVERRIDE_SUFFIX)


def reviewed_promoter(c: Conversion) -> str:
    """The promoter whose promoter-wide decisions apply to `c`: an override line follows its
    recruit (`override_of`), like his order's decisions; `REVIEWED_PROMOTER_SQL` is its twin."""
    return c.override_of or c.promoter_id


REVIEWED_PROMOTER_SQL = "if({t}.override_of != '', {t}.override_of, {t}.promoter_id)"


def concerns(r: Review, c: Conversion) -> bool:
    """`r` may apply to `c`: it names c's order (`reviewed_order`), or c's promoter (his
    recruit's, for an override line) and was taken after c's order (whether c was still
    open then is the fold's question)."""
    if r.order_id:
        return r.order_id == reviewed_order(c.order_id)
    return bool(r.promoter_id) and r.promoter_id == reviewed_promoter(c) and c.order_ts <= millis(r.ts)


def is_open(status: str, payable_at: int, ts: int) -> bool:
    """Not payable yet at `ts`: held, or approved and still inside the holding period."""
    return status == HELD or (status == APPROVED and payable_at > ts)


def payable_after(status: str, decision: str, decision_ts: int, matures_at: int) -> int:
    """payable_at after a decision: approved conversions mature at order_ts + holding, or at
    the approving decision if later; others are not payable (0)."""
    if status != APPROVED:
        return 0
    return max(matures_at, decision_ts) if decision == APPROVE else matures_at


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One decision applied to one conversion: the audit's row."""

    review: Review
    status_before: str
    status_after: str
    payable_before: int
    payable_after: int


class Reviewed(msgspec.Struct, frozen=True, kw_only=True):
    """A conversion as `conversions_current` shows it after reviews."""

    conversion: Conversion  # status, reasons, commission, bonus, points and revision after reviews
    auto_status: str
    payable_at: int
    steps: list[Step]  # the decisions that apply, oldest first

    @property
    def winner(self) -> Review | None:
        return self.steps[-1].review if self.steps else None


def earns_nothing(status: str, auto_status: str) -> bool:
    """A decision made it rejected: its commission, bonus and points go."""
    return status == REJECTED and auto_status != REJECTED


def _copy_order(r: Review) -> tuple[int, str, str, str, str, str]:
    """The order of the copies of one event_id: the earliest first (copies with the same ts
    are the same decision; the other fields only make the choice deterministic)."""
    return millis(r.ts), r.order_id or "", r.promoter_id or "", r.decision, r.reason, r.actor


def unique(reviews: Iterable[Review]) -> list[Review]:
    """One decision per event_id: its earliest copy (by ts). A redelivered or retried decision
    is the same decision, taken when it was first produced: a retry produced later (a later
    server ts, maybe another reason) neither moves it past a later decision nor edits its
    reason in the audit. `FIRST_COPIES_SQL` is the same in ClickHouse."""
    first: dict[str, Review] = {}
    for r in reviews:
        seen = first.get(r.event_id)
        if seen is None or _copy_order(r) < _copy_order(seen):
            first[r.event_id] = r
    return list(first.values())


def fold(c: Conversion, reviews: Iterable[Review], hold_ms: int) -> tuple[str, int, list[Step]]:
    """(status, payable_at, steps) after applying, oldest first, the decisions that apply to `c`
    (its status being the rules' outcome)."""
    matures_at = c.order_ts + hold_ms
    status, payable = c.status, matures_at if c.status == APPROVED else 0
    steps: list[Step] = []
    for r in sorted((r for r in unique(reviews) if concerns(r, c)), key=lambda r: (millis(r.ts), r.event_id)):
        if is_promoter_wide(r) and not is_open(status, payable, millis(r.ts)):
            continue
        after = effect(r.decision, c.status).status
        new_payable = payable_after(after, r.decision, millis(r.ts), matures_at)
        steps.append(Step(review=r, status_before=status, status_after=after, payable_before=payable,
                          payable_after=new_payable))
        status, payable = after, new_payable
    return status, payable, steps


def apply(c: Conversion, reviews: Iterable[Review], hold_ms: int) -> Reviewed:
    """`c` (as the rules decided it) after the review decisions in `reviews` that apply to it."""
    status, payable, steps = fold(c, reviews, hold_ms)
    reasons = list(c.reasons)
    if steps:
        code = effect(steps[-1].review.decision, c.status).reason
        if code and code not in reasons:
            reasons.append(code)
    zero = earns_nothing(status, c.status)
    shown = msgspec.structs.replace(
        c, status=status, reasons=reasons, revision=c.revision + len(steps),
        commission=Decimal(0) if zero else c.commission, bonus=Decimal(0) if zero else c.bonus,
        points=0 if zero else c.points)
    return Reviewed(conversion=shown, auto_status=c.status, payable_at=payable, steps=steps)


def earned(status: str, auto_status: str, c: Conversion) -> Decimal:
    """commission + bonus of `c` (as the rules decided it) when it has `status` after reviews."""
    return Decimal(0) if earns_nothing(status, auto_status) else c.commission + c.bonus


# --- the same in ClickHouse ------------------------------------------------------------------

#: one decision as the fold reads it: ts in epoch ms; wide = promoter-wide
DECISION_TYPE = "Tuple(ts Int64, event_id String, wide UInt8, decision String, actor String, reason String)"
STEP_TYPE = ("Tuple(ts Int64, event_id String, wide UInt8, decision String, actor String, reason String, "
             "status_before String, status_after String, payable_before Int64, payable_after Int64)")
#: the fold's state: the conversion's status and payable_at (epoch ms) so far, the steps applied
FOLD_TYPE = f"Tuple(status String, payable_at Int64, steps Array({STEP_TYPE}))"


#: the view the fold and the audit read decisions from: one row per event_id, its earliest copy
#: (`unique`). It reads every stored copy, never `FINAL` (which would keep the last one).
FIRST_COPIES = "reviews_first"
_COPY = "min((ts, order_id, promoter_id, toString(decision), reason, actor))"
FIRST_COPIES_SQL = f"""SELECT event_id, tupleElement(copy, 1) AS ts, tupleElement(copy, 2) AS order_id,
        tupleElement(copy, 3) AS promoter_id, toLowCardinality(tupleElement(copy, 4)) AS decision,
        tupleElement(copy, 5) AS reason, tupleElement(copy, 6) AS actor
    FROM (SELECT event_id, {_COPY} AS copy FROM reviews GROUP BY event_id)"""


def _decisions_sql(key: str, alias: str, wide: int, where: str) -> str:
    """Decisions grouped by `key` (an expression of a `reviews_first` row, named `alias`)."""
    as_tuple = (f"CAST((toUnixTimestamp64Milli(ts), event_id, {wide}, toString(decision), actor, reason), "
                f"'{DECISION_TYPE}')")
    return (f"SELECT {key} AS {alias}, groupArray({as_tuple}) AS decisions FROM {FIRST_COPIES} WHERE {where} "
            f"GROUP BY {alias}")


def reviewed_orders_sql(order_id: str) -> str:
    """The conversion order ids whose `reviewed_order` is the SQL expression `order_id`: the
    order and its override line. When `order_id` names an override line itself, only
    `order_id` + the suffix, an id no conversion has: such a decision applies to nothing."""
    suffixed = f"concat({order_id}, '{OVERRIDE_SUFFIX}')"
    return f"if(endsWith({order_id}, '{OVERRIDE_SUFFIX}'), [{suffixed}], [{order_id}, {suffixed}])"


def order_decisions_sql() -> str:
    """Per conversion order id: the order-level decisions that name it (review_order,
    decisions); X's decisions are listed under X and X#override (`reviewed_orders_sql`)."""
    return _decisions_sql(f"arrayJoin({reviewed_orders_sql('order_id')})", "review_order", 0, "order_id != ''")


def promoter_decisions_sql() -> str:
    """Per promoter: his promoter-wide decisions (review_promoter, decisions)."""
    return _decisions_sql("promoter_id", "review_promoter", 1, "order_id = '' AND promoter_id != ''")


def effect_sql(decision: str, auto_status: str) -> tuple[str, str]:
    """(status, reason code) of `effect` over two SQL expressions, rendered from `PRECEDENCE`."""
    def arms(pick: int, default: str) -> str:
        whens = ", ".join(f"{decision} = '{d}' AND {auto_status} = '{s}', '{e[pick]}'"
                          for (d, s), e in PRECEDENCE.items())
        return f"multiIf({whens}, {default})"
    return arms(0, auto_status), arms(1, "''")


def fold_sql(decisions: str, auto_status: str, order_ms: str, matures_ms: str) -> str:
    """`fold` over SQL expressions: `decisions` (Array(DECISION_TYPE), those that concern the
    conversion, any order), its status before reviews, order_ts and order_ts + holding in epoch
    ms. A FOLD_TYPE value."""
    after, _ = effect_sql("d.decision", auto_status)
    is_open = f"acc.status = '{HELD}' OR (acc.status = '{APPROVED}' AND acc.payable_at > d.ts)"
    wide_applies = f"d.ts >= {order_ms} AND ({is_open})"
    payable = (f"if({after} != '{APPROVED}', 0, "
               f"if(d.decision = '{APPROVE}', greatest({matures_ms}, d.ts), {matures_ms}))")
    step = (f"(d.ts, d.event_id, d.wide, d.decision, d.actor, d.reason, acc.status, {after}, acc.payable_at, "
            f"{payable})")
    applied = f"CAST(({after}, {payable}, arrayPushBack(acc.steps, {step})), '{FOLD_TYPE}')"
    start = f"CAST(({auto_status}, if({auto_status} = '{APPROVED}', {matures_ms}, 0), []), '{FOLD_TYPE}')"
    return (f"arrayFold((acc, d) -> if(d.wide = 0 OR ({wide_applies}), {applied}, acc), "
            f"arraySort({decisions}), {start})")


def earned_sql(status: str, auto_status: str, money: str) -> str:
    """`earned` over SQL expressions (`money`: the rules' commission + bonus)."""
    return f"if({status} = '{REJECTED}' AND {auto_status} != '{REJECTED}', toDecimal64(0, 4), {money})"


# --- the audit ---------------------------------------------------------------------------------

ORDER_SCOPE, PROMOTER_SCOPE = "order", "promoter"
NO_CONVERSION = "no conversion of this order yet"
NO_OPEN_CONVERSION = "no open conversion of this promoter"
NO_TARGET = "names no order and no promoter"


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of the `review_audit` view: one decision and one conversion it applies to
    (commission = commission + bonus), or a decision that applies to none yet (a note)."""

    event_id: str
    ts: int
    actor: str
    reason: str
    decision: str
    scope: str  # ORDER_SCOPE | PROMOTER_SCOPE
    order_id: str
    promoter_id: str
    status_before: str  # '' when it applies to no conversion
    status_after: str
    commission_before: Decimal
    commission_after: Decimal
    payable_before: int
    payable_after: int
    note: str


def _scope(r: Review) -> str:
    return ORDER_SCOPE if r.order_id else PROMOTER_SCOPE


def audit(conversions: Iterable[tuple[Conversion, int]], reviews: list[Review]) -> list[AuditRow]:
    """`review_audit` for `conversions` (each as the rules decided it, with its holding period in
    ms) and every decision in `reviews`, sorted by (ts, event_id, order_id)."""
    rows: list[AuditRow] = []
    applied: set[str] = set()
    reviews = unique(reviews)
    for c, hold_ms in conversions:
        for s in fold(c, reviews, hold_ms)[2]:
            r = s.review
            applied.add(r.event_id)
            rows.append(AuditRow(
                event_id=r.event_id, ts=millis(r.ts), actor=r.actor, reason=r.reason, decision=r.decision,
                scope=_scope(r), order_id=c.order_id, promoter_id=c.promoter_id, status_before=s.status_before,
                status_after=s.status_after, commission_before=earned(s.status_before, c.status, c),
                commission_after=earned(s.status_after, c.status, c), payable_before=s.payable_before,
                payable_after=s.payable_after, note=""))
    for r in reviews:
        if r.event_id not in applied:
            note = NO_CONVERSION if r.order_id else NO_OPEN_CONVERSION if r.promoter_id else NO_TARGET
            rows.append(AuditRow(
                event_id=r.event_id, ts=millis(r.ts), actor=r.actor, reason=r.reason, decision=r.decision,
                scope=_scope(r), order_id=r.order_id or "", promoter_id=r.promoter_id or "", status_before="",
                status_after="", commission_before=Decimal(0), commission_after=Decimal(0), payable_before=0,
                payable_after=0, note=note))
    return sorted(rows, key=lambda a: (a.ts, a.event_id, a.order_id))
