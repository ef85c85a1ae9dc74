"""Shared values of the sink tests."""
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sinks.rows import rows_for

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HUGE = 99_000_000_000_000_000_000_000  # the joined_at of defect 6 (fits JSON, not msgpack)


def ms(year: int, month: int, day: int = 15) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp() * 1000)


NINETIES = [ms(1990 + i // 12, i % 12 + 1) for i in range(120)]  # one click per month: defect 5


def write_records(writer: Any, records: Iterable[Any]) -> list[Any]:
    """Write records through `writer` (the sink builds rows with `sinks.rows.rows_for` too)."""
    return writer.write(rows_for(records))
