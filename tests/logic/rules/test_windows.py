"""Flood and farming windows: which window an event adds to, which a decision reads, by UTC
hour / day of event time. The same cases run on Redis in tests/integration/test_signals.py."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from schemas.records import AttributionRec, ClickRec, ClickRef, SignupIdent, SignupRec
from streams.logic.rules import windows
from streams.logic.rules.checks import Signals

JAN_31 = 1_769_817_600_000  # 2026-01-31T00:00:00Z
H = 3_600_000
DAY = 24 * H
MIN = 60_000


IDENT = SignupIdent(ip_hash="ip9", device_id="d1")


def attributed(click_ts: int = JAN_31, signup_ts: int = JAN_31 + 30 * MIN, ip: str | None = "ip1",
               ident: SignupIdent | None = IDENT) -> AttributionRec:
    return AttributionRec("a0", "s0", signup_ts, "v0", ClickRef("c0", click_ts, "T1", ip_hash=ip), True, ident)


@dataclass
class Case:
    name: str
    events: list  # ClickRec | SignupRec, recorded twice (a redelivery adds nothing)
    read: AttributionRec
    expected: Signals


CLICKS_25 = [ClickRec(f"c{i}", JAN_31 + i * MIN, f"v{i % 2}", "T1", ip_hash="ip1") for i in range(25)]
SIGNUPS_4 = [SignupRec(f"s{i}", JAN_31 + i, f"a{i}", f"v{i}", ip_hash="ip9", device_id="d1") for i in range(4)]

CASES = [
    Case("nothing counted", [], attributed(), Signals()),
    Case("clicks per IP and per visitor on the code in the hour, signups per IP and device in the day",
         CLICKS_25 + SIGNUPS_4, attributed(), Signals(flood_ip=25, flood_visitor=13, farm_ip=4, farm_device=4)),
    Case("the next hour is another window", CLICKS_25 + [ClickRec("c-next", JAN_31 + H, "v0", "T1", ip_hash="ip1")],
         attributed(click_ts=JAN_31 + H), Signals(flood_ip=1, flood_visitor=1)),
    Case("the last millisecond of the hour is in it", [ClickRec("c-end", JAN_31 + H - 1, "v0", "T1", ip_hash="ip1")],
         attributed(click_ts=JAN_31 + 1), Signals(flood_ip=1, flood_visitor=1)),
    Case("another code is another window", [ClickRec("c-t2", JAN_31, "v0", "T2", ip_hash="ip1")], attributed(),
         Signals()),
    Case("the next day is another window", SIGNUPS_4 + [SignupRec("s-next", JAN_31 + DAY, "a9", "v9", ip_hash="ip9")],
         attributed(signup_ts=JAN_31 + DAY), Signals(farm_ip=1)),
    Case("farming counts accounts: one account signing up twice counts once",
         [SignupRec("s1", JAN_31, "a1", "v1", ip_hash="ip9"), SignupRec("s2", JAN_31 + 1, "a1", "v2", ip_hash="ip9")],
         attributed(), Signals(farm_ip=1)),
    Case("a click without IP counts for its visitor only", [ClickRec("c1", JAN_31, "v0", "T1")],
         attributed(ip=None), Signals(flood_visitor=1)),
    Case("a signup without identity reads no farming window", SIGNUPS_4, attributed(ident=None), Signals()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_memory_windows(case: Case) -> None:
    counted = windows.MemoryWindows()
    counted.record(case.events)
    counted.record(case.events)  # redelivered
    assert counted.snapshot(case.read) == case.expected


def test_buckets_and_closing_time() -> None:
    assert (windows.hour_of(JAN_31 + H - 1), windows.hour_of(JAN_31 + H)) == (JAN_31 // H, JAN_31 // H + 1)
    assert (windows.day_of(JAN_31 + DAY - 1), windows.day_of(JAN_31 + DAY)) == (JAN_31 // DAY, JAN_31 // DAY + 1)
    # the later of the click's hour end and the signup's day end
    assert windows.closes_at(JAN_31 + 5 * MIN, JAN_31 + 10 * MIN) == JAN_31 + DAY
    assert windows.closes_at(JAN_31 + DAY - MIN, JAN_31 - MIN) == JAN_31 + DAY
    assert (windows.month_of(JAN_31 - 1), windows.month_of(JAN_31 + DAY - 1), windows.month_of(JAN_31 + DAY)) == (
        202601, 202601, 202602)
