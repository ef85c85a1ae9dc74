"""Time units in epoch milliseconds, the unit of every `ts` in the records and tables.

Defined once here, in the shared contract, so that the pure logic, the sinks (which may not
import `streams/`), the worker and the dev tooling all read the same numbers.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def utc_text(ms: int) -> str:
    """Epoch ms as `YYYY-MM-DD HH:MM:SS` (UTC), for people reading a command's output."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S")
