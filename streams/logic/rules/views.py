"""The rules ClickHouse applies, as the views the sink agent installs at start-up.

`conversions_current` is built in three named parts:

1. the rules' outcome (`_RULES_SQL`): two rules are statistics over a whole tracking code or
   promoter rather than over one account, so they are applied to the join's latest decision
   per order: click spamming (`spamming`, view `spam_codes`) and the retroactive reversal of
   a promoter who turned enterprise (`enterprise`), composed with the status precedence of
   `checks.status_of` (reject > reverse > hold) and `commission.payable` (a reversed
   conversion pays nothing);
2. the review decisions (view `reviews_first`: each decision's earliest copy), folded per
   conversion with the holding period of its rule version (view `conversions_reviewed`: the
   rules' outcome and the fold's state);
3. what the fold means (`conversions_current`): status, reasons, money and revision after
   reviews, then `payable_at`, `review`, `review_actor`, `review_reason`, `review_ts`,
   `reviews` and `auto_status` (the status before reviews).

Over it: `review_audit` (one row per decision and conversion it applies to),
`champion_bonuses` (a closed month's sales champions, `champion`: bonus lines, earned in the
month they were decided), `promoter_balances` and `promoter_statement` (per promoter and currency: the program currency
conversions are priced in, `program_currency`; and per month, with
event time "now" = the newest stored order minus the allowed lateness, as payout runs take it).

`sinks.tables` creates the contract views as placeholders with the same columns (sinks import
nothing from `streams`); `streams.agents.sink` replaces them with `rule_views(rule book)` every
time it opens ClickHouse, in the order given.
"""
from __future__ import annotations

from schemas.payouts import BOOKED, CLAWBACK, COMMISSION
from schemas.payouts import PAID as PAID_BATCH
from schemas.payouts import PENDING as PENDING_BATCH
from schemas.payouts import POINTS as POINTS_LINE
from streams.logic.rules import champion, enterprise, reviews, spamming
from streams.logic.rules.checks import APPROVED, HELD, REJECTED, REVERSED
from streams.logic.rules.ruleset import RuleBook, RuleSet

# --- 1. the rules' outcome -----------------------------------------------------------------

_TURNED = f"{enterprise.turned_sql('e.enterprise_since', 'c.order_ts')} AND c.status != '{REJECTED}'"
_SPAM = "sc.spam_code != ''"

_RULES_SQL = f"""SELECT c.* REPLACE (
        multiIf({_TURNED}, '{REVERSED}', {_SPAM} AND c.status = '{APPROVED}', '{HELD}', c.status) AS status,
        arrayConcat(c.reasons,
            if({_SPAM} AND NOT has(c.reasons, '{spamming.REASON}'), ['{spamming.REASON}'], []),
            if({_TURNED} AND NOT has(c.reasons, '{enterprise.REASON}'),
               ['{enterprise.REASON}'], [])) AS reasons,
        if({_TURNED}, toDecimal64(0, 4), c.commission) AS commission,
        if({_TURNED}, toDecimal64(0, 4), c.bonus) AS bonus,
        if({_TURNED}, 0, c.points) AS points)
    FROM conversions AS c FINAL
    LEFT JOIN ({enterprise.enterprise_since_sql()}) AS e  -- an override line follows its recruit
    ON {reviews.REVIEWED_PROMOTER_SQL.format(t="c")} = e.enterprise_promoter
    LEFT JOIN (SELECT tracking_code AS spam_code FROM spam_codes) AS sc ON c.tracking_code = sc.spam_code"""


# --- 2. the review decisions, folded -------------------------------------------------------


def literal(text: str) -> str:
    """A ClickHouse string literal (rule versions come from the operator's rule file)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def holding_ms_sql(book: RuleBook, rule_version: str, order_ms: str) -> str:
    """`reviews.holding_ms` over SQL expressions: the holding period (ms) of the conversion's
    rule version, else of the version in force at the order."""
    sets = book.rule_sets
    at_order = ", ".join(f"{order_ms} >= {int(r.effective_from)}, {int(r.holding_ms)}" for r in reversed(sets[1:]))
    in_force = f"multiIf({at_order}, {int(sets[0].holding_ms)})" if at_order else str(int(sets[0].holding_ms))
    versions = ", ".join(literal(r.version) for r in sets)
    periods = ", ".join(f"toInt64({int(r.holding_ms)})" for r in sets)
    return f"transform(toString({rule_version}), [{versions}], [{periods}], toInt64({in_force}))"


def reviewed_sql(book: RuleBook) -> str:
    """The SELECT of `conversions_reviewed`: the rules' outcome per order, `auto_status` (its
    status) and `reviewed`, the fold's state (`reviews.FOLD_TYPE`) over the decisions that
    concern the order (its own, and its promoter's promoter-wide ones)."""
    order_ms = "toUnixTimestamp64Milli(a.order_ts)"
    matures = f"{order_ms} + {holding_ms_sql(book, 'a.rule_version', order_ms)}"
    folded = reviews.fold_sql("arrayConcat(od.decisions, pd.decisions)", "a.status", order_ms, matures)
    return f"""SELECT a.*, a.status AS auto_status, {folded} AS reviewed
    FROM ({_RULES_SQL}) AS a
    LEFT JOIN ({reviews.order_decisions_sql()}) AS od ON a.order_id = od.review_order
    LEFT JOIN ({reviews.promoter_decisions_sql()}) AS pd
    ON {reviews.REVIEWED_PROMOTER_SQL.format(t="a")} = pd.review_promoter"""


# --- 3. conversions_current: what the fold means --------------------------------------------

_LAST = "reviewed.steps[-1]"  # the winning decision (a tuple of defaults when none applies)
_CODE = reviews.effect_sql(f"tupleElement({_LAST}, 'decision')", "auto_status")[1]
_NOTHING = f"reviewed.status = '{REJECTED}' AND auto_status != '{REJECTED}'"  # a decision rejected it


def _ms_time(ms: str) -> str:
    return f"fromUnixTimestamp64Milli({ms}, 'UTC')"


CONVERSIONS_CURRENT_SQL = f"""SELECT * EXCEPT (auto_status, reviewed) REPLACE (
        toLowCardinality(reviewed.status) AS status,
        if({_CODE} = '' OR has(reasons, {_CODE}), reasons, arrayPushBack(reasons, {_CODE})) AS reasons,
        if({_NOTHING}, toDecimal64(0, 4), commission) AS commission,
        if({_NOTHING}, toDecimal64(0, 4), bonus) AS bonus,
        if({_NOTHING}, 0, points) AS points,
        toUInt32(revision + length(reviewed.steps)) AS revision),
    {_ms_time('reviewed.payable_at')} AS payable_at,
    tupleElement({_LAST}, 'decision') AS review,
    tupleElement({_LAST}, 'actor') AS review_actor,
    tupleElement({_LAST}, 'reason') AS review_reason,
    {_ms_time(f"tupleElement({_LAST}, 'ts')")} AS review_ts,
    length(reviewed.steps) AS reviews,
    toLowCardinality(auto_status) AS auto_status
    FROM conversions_reviewed"""


# --- the audit -------------------------------------------------------------------------------

_APPLIED_SQL = f"""SELECT s.event_id AS event_id, {_ms_time('s.ts')} AS ts, s.actor AS actor, s.reason AS reason,
        toLowCardinality(s.decision) AS decision,
        if(s.wide = 1, '{reviews.PROMOTER_SCOPE}', '{reviews.ORDER_SCOPE}') AS scope, order_id,
        promoter_id, s.status_before AS status_before, s.status_after AS status_after,
        {reviews.earned_sql('s.status_before', 'auto_status', 'commission + bonus')} AS commission_before,
        {reviews.earned_sql('s.status_after', 'auto_status', 'commission + bonus')} AS commission_after,
        {_ms_time('s.payable_before')} AS payable_before, {_ms_time('s.payable_after')} AS payable_after,
        '' AS note
    FROM conversions_reviewed ARRAY JOIN reviewed.steps AS s"""

_UNAPPLIED_SQL = f"""SELECT event_id, ts, actor, reason, decision,
        if(order_id != '', '{reviews.ORDER_SCOPE}', '{reviews.PROMOTER_SCOPE}') AS scope, order_id, promoter_id,
        '' AS status_before, '' AS status_after, toDecimal64(0, 4) AS commission_before,
        toDecimal64(0, 4) AS commission_after, {_ms_time('0')} AS payable_before, {_ms_time('0')} AS payable_after,
        multiIf(order_id != '', '{reviews.NO_CONVERSION}', promoter_id != '', '{reviews.NO_OPEN_CONVERSION}',
                '{reviews.NO_TARGET}') AS note
    FROM {reviews.FIRST_COPIES}
    WHERE event_id NOT IN (SELECT s.event_id FROM conversions_reviewed ARRAY JOIN reviewed.steps AS s)"""

#: one row per (decision, conversion it applies to), before = the outcome of the decisions
#: before it, after = with it (commission = commission + bonus); decisions that apply to no
#: conversion (yet) once, with a note
REVIEW_AUDIT_SQL = f"{_APPLIED_SQL}\nUNION ALL\n{_UNAPPLIED_SQL}"


# --- balances and statements ------------------------------------------------------------------

EARNED, PENDING, HELD_MONEY = "earned", "pending", "held"
#: payout line kinds that pay conversions (points lines are reported apart)
PAYING_LINES = (COMMISSION, CLAWBACK)

_IN = "({})".format
_PAYING = _IN(", ".join(f"'{k}'" for k in PAYING_LINES))


def event_now_sql(lateness_ms: int) -> str:
    """Event time "now" in epoch ms, as payout runs take it (`streams.jobs.payouts.cutoff_of`):
    the newest stored order minus the allowed lateness."""
    return f"((SELECT toUnixTimestamp64Milli(max(ts)) FROM orders) - {int(lateness_ms)})"


def movements_sql(lateness_ms: int) -> str:
    """What moves a promoter's money, one row each: a conversion earned (approved, matured by
    event time "now"), pending (approved, maturing) or held, by payable month (earned) or order
    month; a line of a booked batch (`batch`: its status), by the batch's creation month.
    `currency` is the money's: a conversion's program currency (its commission's), a line's own."""
    matured = f"toUnixTimestamp64Milli(payable_at) <= {event_now_sql(lateness_ms)}"
    return f"""SELECT promoter_id, toString(program_currency) AS currency, order_id,
        multiIf(status = '{APPROVED}' AND {matured}, '{EARNED}',
                status = '{APPROVED}', '{PENDING}', status = '{HELD}', '{HELD_MONEY}', '') AS kind,
        '' AS batch, commission + bonus AS money, points,
        if(status = '{APPROVED}', toStartOfMonth(payable_at), toStartOfMonth(order_ts)) AS month
    FROM conversions_current WHERE promoter_id != '' AND status IN ('{APPROVED}', '{HELD}')
    UNION ALL
    SELECT promoter_id, toString(currency) AS currency, line_id AS order_id, '{EARNED}' AS kind, '' AS batch,
        bonus AS money, toInt64(0) AS points, toStartOfMonth(decided_at) AS month
    FROM champion_bonuses
    UNION ALL
    SELECT l.promoter_id AS promoter_id, toString(l.currency) AS currency, l.order_id AS order_id,
        toString(l.kind) AS kind, toString(l.batch_status) AS batch, l.amount AS money, l.points AS points,
        toStartOfMonth(b.created_at) AS month
    FROM payout_lines_current AS l INNER JOIN payout_batches_current AS b ON l.batch_id = b.batch_id
    WHERE l.batch_status IN {_IN(", ".join(f"'{s}'" for s in BOOKED))}"""


# the money of commission and clawback lines: of paid (confirmed) batches, of pending ones;
# clawed back: the negative ones of either; points lines apart (money and points)
_PAID = f"sumIf(money, kind IN {_PAYING} AND batch = '{PAID_BATCH}')"
_IN_PAYMENT = f"sumIf(money, kind IN {_PAYING} AND batch = '{PENDING_BATCH}')"
_CLAWED_BACK = f"-sumIf(money, kind IN {_PAYING} AND money < 0)"
_POINTS = (f"sumIf(points, kind = '{EARNED}') AS points_earned, "
           f"sumIf(points, kind = '{POINTS_LINE}') AS points_cashed, "
           f"sumIf(money, kind = '{POINTS_LINE}') AS points_paid")


def promoter_balances_sql(lateness_ms: int) -> str:
    """Per promoter and currency: earned, pending, held, clawed_back, paid, in_payment, balance
    (= earned - paid - in_payment: owed and neither sent nor being sent; commission lines
    only), points_earned, points_cashed and points_paid (the money of points lines)."""
    return f"""SELECT promoter_id, currency,
        sumIf(money, kind = '{EARNED}') AS earned, sumIf(money, kind = '{PENDING}') AS pending,
        sumIf(money, kind = '{HELD_MONEY}') AS held, {_CLAWED_BACK} AS clawed_back,
        {_PAID} AS paid, {_IN_PAYMENT} AS in_payment, earned - paid - in_payment AS balance, {_POINTS}
    FROM ({movements_sql(lateness_ms)})
    GROUP BY promoter_id, currency"""


def _months_sql(lateness_ms: int) -> str:
    return f"""SELECT promoter_id, currency, month,
        sumIf(money, kind = '{EARNED}') AS earned, sumIf(money, kind = '{HELD_MONEY}') AS held,
        {_CLAWED_BACK} AS clawed_back, {_PAID} AS paid, {_IN_PAYMENT} AS in_payment, {_POINTS},
        arraySort(groupArrayIf(order_id, kind = '{EARNED}')) AS earned_orders,
        arraySort(groupArrayIf(order_id, kind = '{HELD_MONEY}')) AS held_orders,
        arraySort(groupArrayIf(order_id, kind IN {_PAYING} AND money < 0)) AS clawed_back_orders
    FROM ({movements_sql(lateness_ms)})
    WHERE kind != '{PENDING}' AND kind != ''
    GROUP BY promoter_id, currency, month"""


def promoter_statement_sql(lateness_ms: int) -> str:
    """Per promoter, currency and month with a movement: closing = every earlier month's earned -
    paid - in_payment and this one's; opening = closing - earned + paid + in_payment."""
    return f"""SELECT promoter_id, currency, month,
        closing - earned + paid + in_payment AS opening, earned, held, clawed_back, paid, in_payment,
        sum(earned - paid - in_payment) OVER (PARTITION BY promoter_id, currency ORDER BY month
                                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS closing,
        points_earned, points_cashed, points_paid, earned_orders, held_orders, clawed_back_orders
    FROM ({_months_sql(lateness_ms)})"""


def rule_views(rules: RuleBook | RuleSet, *, lateness_ms: int = 0) -> dict[str, str]:
    """view name -> SELECT, in creation order, for the rule book (a single rule set is a book of
    one). Click-spamming thresholds are the newest rule set's (a view has no event time to pick
    a version by); holding periods are each conversion's rule version's. `lateness_ms`: the
    allowed lateness, for the balances' event time "now" (as payout runs take it)."""
    book = rules if isinstance(rules, RuleBook) else RuleBook([rules])
    return {
        reviews.FIRST_COPIES: reviews.FIRST_COPIES_SQL,
        "spam_codes": spamming.spam_codes_sql(book.rule_sets[-1]),
        "conversions_reviewed": reviewed_sql(book),
        "conversions_current": CONVERSIONS_CURRENT_SQL,
        "review_audit": REVIEW_AUDIT_SQL,
        "champion_bonuses": champion.champions_sql(book, event_now_sql(lateness_ms)),
        "promoter_balances": promoter_balances_sql(lateness_ms),
        "promoter_statement": promoter_statement_sql(lateness_ms),
    }
