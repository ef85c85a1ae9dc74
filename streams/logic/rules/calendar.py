"""Calendar months in the program's time zone (`RuleBook.zone`): the months of volume tiers,
monthly caps and levels, and the month arithmetic of the recurring-commission rules.

A month is `yyyymm`; times are epoch milliseconds. Months end at local midnight, so a
program in Asia/Shanghai closes January at 2026-01-31T16:00Z.
"""
from __future__ import annotations

import calendar
from datetime import datetime
from zoneinfo import ZoneInfo


def _local(ts: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=zone)


def month_of(ts: int, zone: ZoneInfo) -> int:
    """yyyymm of event time `ts` in `zone`."""
    d = _local(ts, zone)
    return d.year * 100 + d.month


def month_start(month: int, zone: ZoneInfo) -> int:
    """The first millisecond of `month` (local midnight of its first day)."""
    return int(datetime(month // 100, month % 100, 1, tzinfo=zone).timestamp() * 1000)


def next_month(month: int) -> int:
    year, m = divmod(month, 100)
    return (year + 1) * 100 + 1 if m == 12 else month + 1


def month_end(month: int, zone: ZoneInfo) -> int:
    """The first millisecond after `month`."""
    return month_start(next_month(month), zone)


def add_months(ts: int, months: int, zone: ZoneInfo) -> int:
    """`ts` moved `months` calendar months on in `zone`, the day clamped to the month's
    length (Jan 31 + 1 month = Feb 28 or 29), the wall-clock time kept."""
    d = _local(ts, zone)
    year, month0 = divmod(d.month - 1 + months, 12)
    year += d.year
    day = min(d.day, calendar.monthrange(year, month0 + 1)[1])
    return int(d.replace(year=year, month=month0 + 1, day=day).timestamp() * 1000)


def window_of(first_ts: int, ts: int, months: int, zone: ZoneInfo) -> int:
    """Which window of `months` months, counted from `first_ts`, holds `ts` (0, 1, ...);
    always 0 when `months` is 0 (one window for ever) or `ts` is before `first_ts`."""
    if months <= 0 or ts < first_ts:
        return 0
    d0, d = _local(first_ts, zone), _local(ts, zone)
    k = ((d.year - d0.year) * 12 + d.month - d0.month) // months
    while k > 0 and add_months(first_ts, k * months, zone) > ts:
        k -= 1
    while add_months(first_ts, (k + 1) * months, zone) <= ts:
        k += 1
    return k
