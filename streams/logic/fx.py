"""Exchange rates as of an event time: the `fx_rates` reference topic in memory.

Every stream worker reads the whole topic like `promoters` (`streams.adapters.reference_feed`).
A rate is in force from its `effective_from` (default: its `ts`) until the currency's next
one; the promoter stage converts each order's amount with the rate in force at the order's
event time (`streams/logic/pricing.py`). Unlike a promoter, no rate is invented before the
first one a worker knows: such an order is held (`fx_rate_missing`) until a rate arrives.
"""
from __future__ import annotations

import bisect
from decimal import Decimal

from schemas.events import FxRate, millis

#: (in force from, event_id, rate): sorted, so the last version at or before a time wins and
#: two versions from the same millisecond are ordered by event_id, the same on every worker
Version = tuple[int, str, Decimal]


class FxDirectory:
    """currency -> its rate versions (program-currency units per unit of the currency)."""

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._seen: set[str] = set()  # event ids: a redelivered or re-read message adds nothing

    def add(self, rate: FxRate) -> None:
        if rate.event_id in self._seen:
            return
        self._seen.add(rate.event_id)
        since = millis(rate.effective_from if rate.effective_from is not None else rate.ts)
        bisect.insort(self._versions.setdefault(rate.currency, []), (since, rate.event_id, rate.rate))

    def rate(self, currency: str, ts: int) -> Decimal | None:
        """The rate of `currency` in force at event time `ts`, or None before its first one."""
        versions = self._versions.get(currency)
        if not versions:
            return None
        i = bisect.bisect_right(versions, ts, key=lambda v: v[0])
        return versions[i - 1][2] if i else None

    def __len__(self) -> int:
        """The number of currencies with a rate."""
        return len(self._versions)
