"""Click flooding and signup farming windows, and the promoter ledger's month: the one
definition of which counter an event adds to and which counters a decision reads.

- click flooding: click ids per (tracking code, IP) and per (tracking code, visitor), per
  UTC hour of the click;
- signup farming: account ids per IP and per device, per UTC day of the signup.

Counters are *sets* (a redelivered event adds nothing), named by a window key such as
`fl:ip:<code>:<ip>:<hour>`. Two stores implement the counting: Redis for the live worker
(`streams.adapters.signals`, which prefixes the keys with its namespace) and `MemoryWindows`
here for replay. Both read a `Signals` snapshot the same way (`reads`, `signals_of`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from schemas.records import AttributionRec, ClickRec, SignupRec
from schemas.units import DAY_MS, HOUR_MS
from streams.logic.rules.checks import Signals


def hour_of(ts: int) -> int:
    """The UTC hour bucket of an event time (flooding)."""
    return ts // HOUR_MS


def day_of(ts: int) -> int:
    """The UTC day bucket of an event time (farming)."""
    return ts // DAY_MS


def month_of(ts: int) -> int:
    """yyyymm of an event time (UTC): the promoter ledger's month (volume tiers, levels)."""
    d = datetime.fromtimestamp(ts / 1000, tz=UTC)
    return d.year * 100 + d.month


def closes_at(click_ts: int, signup_ts: int) -> int:
    """Event time at which the click's hour and the signup's day are both over: from then
    on their flood and farming counts can no longer grow."""
    return max((hour_of(click_ts) + 1) * HOUR_MS, (day_of(signup_ts) + 1) * DAY_MS)


def flood_ip(code: str, ip: str, ts: int) -> str:
    return f"fl:ip:{code}:{ip}:{hour_of(ts)}"


def flood_visitor(code: str, visitor: str, ts: int) -> str:
    return f"fl:v:{code}:{visitor}:{hour_of(ts)}"


def farm_ip(ip: str, ts: int) -> str:
    return f"fa:ip:{ip}:{day_of(ts)}"


def farm_device(device: str, ts: int) -> str:
    return f"fa:dev:{device}:{day_of(ts)}"


def adds(rec: ClickRec | SignupRec) -> list[tuple[str, str]]:
    """(window key, member) pairs an event adds: a click its id to its code's IP and visitor
    windows, a signup its account to its IP and device windows."""
    if isinstance(rec, ClickRec):
        out = [(flood_visitor(rec.tracking_code, rec.visitor_id, rec.ts), rec.event_id)]
        if rec.ip_hash:
            out.append((flood_ip(rec.tracking_code, rec.ip_hash, rec.ts), rec.event_id))
        return out
    out = []
    if rec.ip_hash:
        out.append((farm_ip(rec.ip_hash, rec.ts), rec.account_id))
    if rec.device_id:
        out.append((farm_device(rec.device_id, rec.ts), rec.account_id))
    return out


def reads(rec: AttributionRec) -> tuple[str | None, str | None, str | None, str | None]:
    """The windows a signup's decision reads, in `Signals` order (flood_ip, flood_visitor,
    farm_ip, farm_device); None where the event has no such key (count 0): no flood windows
    without a click (an account a coupon code attributes)."""
    c, ident = rec.click, rec.ident
    ip, dev = (ident.ip_hash, ident.device_id) if ident else (None, None)
    return (flood_ip(c.tracking_code, c.ip_hash, c.ts) if c is not None and c.ip_hash else None,
            flood_visitor(c.tracking_code, rec.visitor_id, c.ts) if c is not None else None,
            farm_ip(ip, rec.signup_ts) if ip else None,
            farm_device(dev, rec.signup_ts) if dev else None)


def signals_of(counts: Sequence[int]) -> Signals:
    """A snapshot from the sizes of the four windows of `reads`, in that order."""
    flood_ip_n, flood_visitor_n, farm_ip_n, farm_device_n = counts
    return Signals(flood_ip=flood_ip_n, flood_visitor=flood_visitor_n, farm_ip=farm_ip_n,
                   farm_device=farm_device_n)


class MemoryWindows:
    """The windows in memory (replay, tests): the same keys and snapshots as Redis."""

    def __init__(self) -> None:
        self.sets: defaultdict[str, set[str]] = defaultdict(set)

    def record(self, records: Iterable[ClickRec | SignupRec]) -> None:
        for r in records:
            for key, member in adds(r):
                self.sets[key].add(member)

    def snapshot(self, rec: AttributionRec) -> Signals:
        return signals_of([len(self.sets.get(k, ())) if k else 0 for k in reads(rec)])
