"""Click spamming (docs/rules.md): a tracking code with at least `spam_min_signups`
attributed signups of which at least `spam_long_share` came more than `spam_long_delay_h`
hours after their click (a flat, spread-out click -> signup distribution). Its conversions
are held (`click_spamming`).

A statistic over all of a code's signups, so the live pipeline applies it in ClickHouse:
`spam_codes_sql` renders this rule as the `spam_codes` view, which the sink agent installs
at start-up from the newest rule set (`streams.logic.rules.views`). Replay applies the same
rule in Python (`is_long`, `is_spamming`, `hold`); tests/logic/rules/test_program_rules.py
runs both on the same cases.
"""
from __future__ import annotations

import msgspec

from schemas.records import Conversion
from streams.logic.rules.checks import APPROVED, HELD
from streams.logic.rules.ruleset import RuleSet

REASON = "click_spamming"


def is_long(click_ts: int, signup_ts: int, rules: RuleSet) -> bool:
    """The signup came long after its click."""
    return signup_ts - click_ts > rules.spam_long_delay_ms


def is_spamming(signups: int, long: int, rules: RuleSet) -> bool:
    """A code with `signups` attributed signups, `long` of them long after their click."""
    return signups >= rules.spam_min_signups and long >= rules.spam_long_share * signups


def hold(c: Conversion) -> Conversion:
    """A conversion of a spamming code, as `conversions_current` shows it: held if it was
    approved, the reason listed after the join's."""
    if REASON in c.reasons:
        return c
    return msgspec.structs.replace(c, status=HELD if c.status == APPROVED else c.status,
                                   reasons=[*c.reasons, REASON])


def spam_codes_sql(rules: RuleSet) -> str:
    """The SELECT of the `spam_codes` view: the codes `is_spamming` flags, over the
    attributed signups in `attributions_current`, with `is_long`'s delay. Numbers only
    (typed here), never text from outside."""
    delay = "toUnixTimestamp64Milli(signup_ts) - toUnixTimestamp64Milli(click_ts)"
    return f"""SELECT tracking_code, count() AS signups, countIf({delay} > {int(rules.spam_long_delay_ms)}) AS long
    FROM attributions_current WHERE tracking_code != ''
    GROUP BY tracking_code
    HAVING signups >= {int(rules.spam_min_signups)} AND long >= {float(rules.spam_long_share)} * signups"""
