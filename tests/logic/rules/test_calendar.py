"""Calendar months in the program's time zone: month of a time, month bounds, month
arithmetic (day clamped, wall clock kept) and the windows of the per-customer cap."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from streams.logic.rules.calendar import add_months, month_end, month_of, month_start, next_month, window_of


def ms(iso: str) -> int:
    """Epoch ms of an ISO time with its offset ('Z' for UTC)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Case:
    name: str
    call: str  # month_of | month_start | month_end | next_month | add_months | window_of
    args: tuple  # times as ISO strings, converted with `ms`
    expected: object  # an ISO string is a time, compared in ms
    zone: str = "UTC"


CASES = [
    # month_of: the month of the program's wall clock
    Case("UTC mid-month", "month_of", ("2026-01-15T12:00:00Z",), 202601),
    Case("UTC last ms of January", "month_of", ("2026-01-31T23:59:59.999Z",), 202601),
    Case("UTC first ms of February", "month_of", ("2026-02-01T00:00:00Z",), 202602),
    Case("Shanghai: UTC January evening is local February", "month_of", ("2026-01-31T16:00:00Z",), 202602,
         zone="Asia/Shanghai"),
    Case("Shanghai: one ms earlier is still January", "month_of", ("2026-01-31T15:59:59.999Z",), 202601,
         zone="Asia/Shanghai"),
    Case("New York: UTC February 1st early is local January", "month_of", ("2026-02-01T04:59:59.999Z",), 202601,
         zone="America/New_York"),
    Case("New York: local midnight", "month_of", ("2026-02-01T05:00:00Z",), 202602, zone="America/New_York"),
    Case("year end", "month_of", ("2026-12-31T23:59:59Z",), 202612),
    # month bounds: local midnight
    Case("start UTC", "month_start", (202603,), "2026-03-01T00:00:00Z"),
    Case("start Shanghai", "month_start", (202602,), "2026-01-31T16:00:00Z", zone="Asia/Shanghai"),
    Case("end Shanghai: January closes at 16:00Z", "month_end", (202601,), "2026-01-31T16:00:00Z",
         zone="Asia/Shanghai"),
    Case("end of December is next January", "month_end", (202612,), "2027-01-01T00:00:00Z"),
    Case("New York March starts in winter time", "month_start", (202603,), "2026-03-01T05:00:00Z",
         zone="America/New_York"),
    Case("New York April starts in summer time", "month_start", (202604,), "2026-04-01T04:00:00Z",
         zone="America/New_York"),
    Case("next month", "next_month", (202601,), 202602),
    Case("next month after December", "next_month", (202612,), 202701),
    # add_months: calendar months, day clamped, wall clock kept
    Case("one month", "add_months", ("2026-01-15T10:00:00Z", 1), "2026-02-15T10:00:00Z"),
    Case("twelve months", "add_months", ("2026-01-15T10:00:00Z", 12), "2027-01-15T10:00:00Z"),
    Case("zero months", "add_months", ("2026-01-15T10:00:00Z", 0), "2026-01-15T10:00:00Z"),
    Case("Jan 31 + 1 = Feb 28", "add_months", ("2026-01-31T12:00:00Z", 1), "2026-02-28T12:00:00Z"),
    Case("Jan 31 + 1 = Feb 29 in a leap year", "add_months", ("2028-01-31T12:00:00Z", 1), "2028-02-29T12:00:00Z"),
    Case("Jan 31 + 2 = Mar 31 (no drift through February)", "add_months", ("2026-01-31T12:00:00Z", 2),
         "2026-03-31T12:00:00Z"),
    Case("across the year", "add_months", ("2026-11-30T08:00:00Z", 3), "2027-02-28T08:00:00Z"),
    Case("backwards", "add_months", ("2026-03-31T08:00:00Z", -1), "2026-02-28T08:00:00Z"),
    Case("local day clamped: Shanghai Jan 31 + 1", "add_months", ("2026-01-30T17:00:00Z", 1),
         "2026-02-27T17:00:00Z", zone="Asia/Shanghai"),  # local Jan 31 01:00 -> Feb 28 01:00
    Case("wall clock kept across DST (one hour less)", "add_months", ("2026-03-01T17:00:00Z", 1),
         "2026-04-01T16:00:00Z", zone="America/New_York"),
    # window_of: windows of `months` months from the customer's first paid order
    Case("0 months: one window for ever", "window_of", ("2026-01-15T00:00:00Z", "2030-01-01T00:00:00Z", 0), 0),
    Case("before the first order: window 0", "window_of", ("2026-01-15T00:00:00Z", "2026-01-01T00:00:00Z", 3), 0),
    Case("at the first order", "window_of", ("2026-01-15T00:00:00Z", "2026-01-15T00:00:00Z", 3), 0),
    Case("last ms of the first window", "window_of", ("2026-01-15T00:00:00Z", "2026-04-14T23:59:59.999Z", 3), 0),
    Case("first ms of the second window", "window_of", ("2026-01-15T00:00:00Z", "2026-04-15T00:00:00Z", 3), 1),
    Case("fourth window", "window_of", ("2026-01-15T00:00:00Z", "2026-10-15T00:00:00Z", 3), 3),
    Case("1-month windows from Jan 31: Feb 28 starts window 1", "window_of",
         ("2026-01-31T12:00:00Z", "2026-02-28T12:00:00Z", 1), 1),
    Case("1-month windows from Jan 31: Feb 28 just before", "window_of",
         ("2026-01-31T12:00:00Z", "2026-02-28T11:59:59.999Z", 1), 0),
    Case("1-month windows from Jan 31: Mar 30 still window 1", "window_of",
         ("2026-01-31T12:00:00Z", "2026-03-30T12:00:00Z", 1), 1),
    Case("1-month windows from Jan 31: Mar 31 window 2", "window_of",
         ("2026-01-31T12:00:00Z", "2026-03-31T12:00:00Z", 1), 2),
    Case("windows follow the local calendar", "window_of",
         ("2026-01-14T16:00:00Z", "2026-02-14T15:59:59.999Z", 1), 0, zone="Asia/Shanghai"),
    Case("windows follow the local calendar: boundary", "window_of",
         ("2026-01-14T16:00:00Z", "2026-02-14T16:00:00Z", 1), 1, zone="Asia/Shanghai"),
]

CALLS: dict[str, Callable[..., int]] = {"month_of": month_of, "month_start": month_start, "month_end": month_end, "add_months": add_months,
         "window_of": window_of}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_calendar(case: Case) -> None:
    args = [ms(a) if isinstance(a, str) else a for a in case.args]
    expected = ms(case.expected) if isinstance(case.expected, str) else case.expected
    if case.call == "next_month":
        assert next_month(*args) == expected
        return
    assert CALLS[case.call](*args, ZoneInfo(case.zone)) == expected


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "America/New_York", "Pacific/Kiritimati"])
def test_months_tile_the_time_line(zone: str) -> None:
    """Every month starts where the previous one ended, and its bounds map back to it."""
    tz, month = ZoneInfo(zone), 202511
    for _ in range(30):
        start, end = month_start(month, tz), month_end(month, tz)
        assert (month_of(start, tz), month_of(end - 1, tz), month_of(end, tz)) == (month, month, next_month(month))
        assert month_start(next_month(month), tz) == end
        month = next_month(month)
