"""The input contract: what is accepted, normalised, or dead-lettered with which reason."""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import pytest

from schemas.validate import Invalid, decode

NOW = 1_790_000_000_000
HOUR = 3_600_000
CLICK = {"event_id": "e1", "ts": NOW - 1000, "tracking_code": "T-1", "visitor_id": "v1"}
ORDER = {"event_id": "o1-paid", "ts": NOW - 1000, "order_id": "o1", "account_id": "a1", "product": "db",
         "amount": 12.5, "currency": "USD", "status": "paid"}


@dataclass
class Case:
    name: str
    topic: str
    value: bytes
    expect: str | dict  # a substring of the Invalid reason, or fields of the valid event


def j(base: dict, **changes) -> bytes:
    out = {**base, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}).encode()


CASES = [
    Case("valid click", "clicks", j(CLICK), {"ts": NOW - 1000, "method": "GET"}),
    Case("ISO-8601 ts with zone", "clicks", j(CLICK, ts="2026-09-21T14:13:20Z"), {"ts": 1790000000000}),
    Case("ISO-8601 ts with offset", "clicks", j(CLICK, ts="2026-09-21T16:13:20+02:00"), {"ts": 1790000000000}),
    Case("ISO-8601 without zone", "clicks", j(CLICK, ts="2026-09-21T14:13:20"), "no timezone"),
    Case("epoch seconds", "clicks", j(CLICK, ts=1_790_000_000), "epoch seconds"),
    Case("far future", "clicks", j(CLICK, ts=NOW + 2 * HOUR), "in the future"),
    Case("not JSON", "clicks", b"{nope", "not valid JSON"),
    Case("empty value", "clicks", b"", "empty message"),
    Case("missing field", "clicks", j(CLICK, visitor_id=...), "visitor_id"),
    Case("empty id", "clicks", j(CLICK, visitor_id=""), "non-empty"),
    Case("mistyped amount", "orders", j(ORDER, amount="lots"), "amount"),
    Case("money is exact", "orders", j(ORDER, amount=0.1), {"amount": Decimal("0.1")}),
    Case("negative amount", "orders", j(ORDER, amount=-1), ">= 0"),
    Case("bad currency", "orders", j(ORDER, currency="usd"), "ISO-4217"),
    Case("amount too large for storage", "orders", j(ORDER, amount=1e15), "below"),
    Case("sub-cent precision beyond 4 places", "orders", j(ORDER, amount=1.00001), "4 decimal places"),
    Case("trailing zeros are fine", "orders", j(ORDER, amount="1.000000"), {"amount": Decimal("1")}),
    Case("unknown status", "orders", j(ORDER, status="shipped"), "status"),
    Case("extra fields are ignored", "orders", j(ORDER, coupon="X"), {"order_id": "o1"}),
    Case("exclusion needs a subject", "exclusions",
         j({"event_id": "x", "ts": NOW, "owner": "direct_sales"}), "account_id or email_domain"),
    Case("promoter", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "level": 3,
            "joined_at": "2026-01-01T00:00:00Z"}), {"level": 3, "joined_at": 1767225600000}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decode(case: Case) -> None:
    result = decode(case.topic, case.value, NOW, HOUR)
    if isinstance(case.expect, str):
        assert isinstance(result, Invalid), result
        assert case.expect in result.reason
    else:
        assert not isinstance(result, Invalid), result
        for field, value in case.expect.items():
            assert getattr(result, field) == value
