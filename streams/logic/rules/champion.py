"""Sales champions (docs/rules.md "Sales champions"): once a calendar month (the program's
time zone) has closed in event time, its promoters ranked by approved attributed sales
(in the program currency; override lines are not sales) earn `champion_bonuses[rank - 1]`.
Ties rank by promoter id. Ranked per program currency, with the bonuses of the rule set in
force at the month's last millisecond.

A ranking over all promoters, so ClickHouse computes it (`champions_sql`, the view
`champion_bonuses`, which the statement and payouts read as bonus lines); `champions` is
its Python twin, and tests/logic/rules/test_champion.py runs both on the same cases.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from streams.logic.rules import calendar
from streams.logic.rules.ruleset import RuleBook

#: the order id of a champion bonus line (the view's `line_id`): one per promoter, month and currency
LINE_ID = "champion:{month}:{currency}:{promoter}"


class Sale(msgspec.Struct, frozen=True):
    """One approved conversion as the ranking sees it."""

    promoter_id: str
    order_ts: int
    currency: str  # program currency
    amount: Decimal  # program amount


class Champion(msgspec.Struct, frozen=True):
    month: int  # yyyymm
    currency: str
    rank: int
    promoter_id: str
    sales: Decimal
    bonus: Decimal


def month_closed(month: int, book: RuleBook, event_now: int) -> bool:
    """The month is over in event time, its late decisions included (`month_close_days`)."""
    end = calendar.month_end(month, book.zone)
    return event_now >= end + book.at(end - 1).month_close_days * 86_400_000


def champions(sales: Iterable[Sale], book: RuleBook, event_now: int) -> list[Champion]:
    """Every closed month's champions."""
    totals: dict[tuple[int, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for s in sales:
        totals[calendar.month_of(s.order_ts, book.zone), s.currency][s.promoter_id] += s.amount
    out = []
    for (month, currency), by_promoter in sorted(totals.items()):
        if not month_closed(month, book, event_now):
            continue
        bonuses = book.at(calendar.month_end(month, book.zone) - 1).champion_bonuses
        ranked = sorted(by_promoter.items(), key=lambda t: (-t[1], t[0]))
        out += [Champion(month, currency, rank, pid, total, bonuses[rank - 1])
                for rank, (pid, total) in enumerate(ranked[:len(bonuses)], start=1)]
    return out


def champions_sql(book: RuleBook, event_now_sql: str) -> str:
    """The SELECT of the `champion_bonuses` view over `conversions_current`: `champions` in
    SQL. Numbers and the validated zone name only, never text from outside."""
    zone = book.time_zone.replace("'", "")
    month = f"toYYYYMM(toTimeZone(order_ts, '{zone}'))"
    versions = sorted(book.rule_sets, key=lambda r: r.effective_from)

    def array(values: tuple[Decimal, ...]) -> str:
        return "CAST([" + ", ".join(f"toDecimal128('{v}', 4)" for v in values) + "] AS Array(Decimal(38, 4)))"

    # the bonuses of the version in force at the month's last millisecond
    last_ms = f"(toUnixTimestamp64Milli(toDateTime64(toStartOfMonth(toDate(toTimeZone(order_ts, '{zone}')) + " \
              f"toIntervalMonth(1)), 3, '{zone}')) - 1)"
    pick = array(versions[0].champion_bonuses)
    for v in versions[1:]:
        pick = f"if({last_ms} >= {int(v.effective_from)}, {array(v.champion_bonuses)}, {pick})"
    closes = f"(toUnixTimestamp64Milli(toDateTime64(toStartOfMonth(toDate(toTimeZone(order_ts, '{zone}')) + " \
             f"toIntervalMonth(1)), 3, '{zone}')) + 86400000 * {_close_days_sql(book, last_ms)})"
    return f"""SELECT month, currency, rank, promoter_id, sales, bonuses[rank] AS bonus,
        fromUnixTimestamp64Milli(closes, 'UTC') AS decided_at,
        concat('champion:', toString(month), ':', currency, ':', promoter_id) AS line_id FROM (
        SELECT month, currency, promoter_id, sales, bonuses, closes,
               row_number() OVER (PARTITION BY month, currency ORDER BY sales DESC, promoter_id) AS rank
        FROM (SELECT {month} AS month, program_currency AS currency, promoter_id,
                     sum(program_amount) AS sales, any({pick}) AS bonuses, any({closes}) AS closes
              FROM conversions_current
              WHERE status = 'approved' AND override_of = '' AND promoter_id != ''
              GROUP BY month, currency, promoter_id)
        WHERE closes <= {event_now_sql})
    WHERE rank <= length(bonuses)"""


def _close_days_sql(book: RuleBook, last_ms: str) -> str:
    versions = sorted(book.rule_sets, key=lambda r: r.effective_from)
    pick = str(int(versions[0].month_close_days))
    for v in versions[1:]:
        pick = f"if({last_ms} >= {int(v.effective_from)}, {int(v.month_close_days)}, {pick})"
    return pick
