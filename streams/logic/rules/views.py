"""The rules ClickHouse applies, as the views the sink agent installs at start-up.

Two rules are statistics over a whole tracking code or promoter rather than over one
account, so `conversions_current` applies them to the join's latest decision per order:
click spamming (`spamming`, view `spam_codes`) and the retroactive reversal of a promoter
who turned enterprise (`enterprise`). The rule predicates come from those modules; this one
only composes them with the status precedence of `checks.status_of` (reject > reverse >
hold) and `commission.payable` (a reversed conversion pays nothing).

`sinks.tables` creates both views as placeholders without these rules (sinks import nothing
from `streams`); `streams.agents.sink` replaces them with `rule_views(newest rule set)`
every time it opens ClickHouse, in the order given.
"""
from __future__ import annotations

from streams.logic.rules import enterprise, spamming
from streams.logic.rules.checks import APPROVED, HELD, REJECTED, REVERSED
from streams.logic.rules.ruleset import RuleSet

_TURNED = f"{enterprise.turned_sql('e.enterprise_since', 'c.order_ts')} AND c.status != '{REJECTED}'"
_SPAM = "sc.spam_code != ''"

CONVERSIONS_CURRENT_SQL = f"""SELECT c.* REPLACE (
        multiIf({_TURNED}, '{REVERSED}', {_SPAM} AND c.status = '{APPROVED}', '{HELD}', c.status) AS status,
        arrayConcat(c.reasons,
            if({_SPAM} AND NOT has(c.reasons, '{spamming.REASON}'), ['{spamming.REASON}'], []),
            if({_TURNED} AND NOT has(c.reasons, '{enterprise.REASON}'),
               ['{enterprise.REASON}'], [])) AS reasons,
        if({_TURNED}, toDecimal64(0, 4), c.commission) AS commission,
        if({_TURNED}, toDecimal64(0, 4), c.bonus) AS bonus,
        if({_TURNED}, 0, c.points) AS points)
    FROM conversions AS c FINAL
    LEFT JOIN ({enterprise.enterprise_since_sql()}) AS e
    ON c.promoter_id = e.enterprise_promoter
    LEFT JOIN (SELECT tracking_code AS spam_code FROM spam_codes) AS sc ON c.tracking_code = sc.spam_code"""


def rule_views(rules: RuleSet) -> dict[str, str]:
    """view name -> SELECT, in creation order, with the thresholds of `rules` (the newest
    rule set: a view has no event time to pick a version by)."""
    return {"spam_codes": spamming.spam_codes_sql(rules), "conversions_current": CONVERSIONS_CURRENT_SQL}
