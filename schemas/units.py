"""Time units in epoch milliseconds, the unit of every `ts` in the records and tables.

Defined once here, in the shared contract, so that the pure logic, the sinks (which may not
import `streams/`), the worker and the dev tooling all read the same numbers.
"""
from __future__ import annotations

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
