"""Enterprise promoters (docs/rules.md): a promoter who is an enterprise account at an
order's time is ineligible (`promoter_ineligible`, reject); one who was personal then and
becomes an enterprise account later forfeits all those earlier earnings
(`promoter_became_enterprise`, reverse).

Both homes of the retroactive reversal are live and read this module: the account join
decides it per order (`checks.reasons`, from the reference directory's `enterprise_since`),
and `conversions_current` applies it in ClickHouse to every conversion of the promoter, also
to orders the join will never decide again (`enterprise_since_sql`, `turned_sql`, composed in
`streams.logic.rules.views`). tests/logic/rules/test_program_rules.py runs both on the same cases.
"""
from __future__ import annotations

ENTERPRISE = "enterprise"
REASON = "promoter_became_enterprise"


def enterprise_at(account_type: str, enterprise_since: int | None, ts: int) -> bool:
    """The promoter is an enterprise account at event time `ts`."""
    return account_type == ENTERPRISE or (enterprise_since is not None and enterprise_since <= ts)


def turned_enterprise(enterprise_since: int | None, order_ts: int) -> bool:
    """Personal at the order's time, an enterprise account later: the order's earnings go."""
    return enterprise_since is not None and enterprise_since > order_ts


def enterprise_since_sql() -> str:
    """Per promoter, when he first was an enterprise account: (enterprise_promoter,
    enterprise_since) over the stored promoter versions."""
    return (f"SELECT promoter_id AS enterprise_promoter, min(ts) AS enterprise_since FROM promoters FINAL "
            f"WHERE account_type = '{ENTERPRISE}' GROUP BY promoter_id")


def turned_sql(enterprise_since: str, order_ts: str) -> str:
    """`turned_enterprise` over two SQL expressions (a promoter without an enterprise version
    joins with enterprise_since 0, which is never after an order)."""
    return f"{enterprise_since} > {order_ts}"
