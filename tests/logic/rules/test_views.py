"""The views `rule_views` installs replace the migrations' placeholders (`sinks.tables.VIEWS`),
which must have the same columns, so a database the sink never opened answers the same queries."""
from __future__ import annotations

from typing import Any

import pytest

from sinks.migrations import install_views
from sinks.tables import VIEWS
from streams.logic.rules.ruleset import RuleBook, RuleSet
from streams.logic.rules.views import rule_views

#: the contract views `rule_views` replaces (the others are internal parts)
CONTRACT = [name for name in rule_views(RuleBook([])) if name in VIEWS]


def columns(db: Any, view: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in db.query(f"DESCRIBE {view}").result_rows]


def test_the_contract_views_are_placeholders_in_the_migrations() -> None:
    assert CONTRACT == ["spam_codes", "conversions_current", "review_audit", "champion_bonuses",
                        "promoter_balances", "promoter_statement"]


@pytest.mark.parametrize("rules", [RuleBook([]), RuleSet(), RuleBook([RuleSet(version="a"),
                                                                      RuleSet(version="b", effective_from=1)])],
                         ids=["default book", "one rule set", "two versions"])
def test_placeholders_have_the_columns_of_the_real_views(db: Any, rules: RuleBook | RuleSet) -> None:
    placeholders = {v: columns(db, v) for v in CONTRACT}
    install_views(db, rule_views(rules))
    install_views(db, rule_views(rules))  # again, as at every start-up
    assert {v: columns(db, v) for v in CONTRACT} == placeholders


def test_conversions_current_keeps_the_table_columns_first(db: Any) -> None:
    table = [r[0] for r in db.query("DESCRIBE conversions").result_rows]
    install_views(db, rule_views(RuleBook([])))
    assert [c for c, _ in columns(db, "conversions_current")] == table + [
        "payable_at", "review", "review_actor", "review_reason", "review_ts", "reviews", "auto_status"]
