"""Decode and validate raw input messages.

`decode` never raises: it returns either a valid event (with `ts` normalised to epoch
milliseconds) or an `Invalid` carrying a reason a person can act on. Callers dead-letter
the `Invalid` ones; nothing is dropped silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import msgspec

from schemas.events import MODELS, Click, Exclusion, Order, Promoter, Signup

_decoders = {topic: msgspec.json.Decoder(model) for topic, model in MODELS.items()}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
#: money is stored as Decimal(18, 4): 14 integer digits, 4 decimals
MAX_AMOUNT = Decimal(10) ** 14
_MONEY_STEP = Decimal("0.0001")
#: ints below this are almost certainly epoch *seconds* (before 1973-03-03 as millis)
_MIN_EPOCH_MS = 100_000_000_000


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that cannot be processed, and why."""

    reason: str


def parse_ts(value: int | str | None) -> int:
    """Return epoch milliseconds for an epoch-millis int or an ISO-8601 string with a zone.

    Raises ValueError with a message fit for a dead-letter reason.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError("ts must be epoch milliseconds (int) or ISO-8601 with timezone")
    if isinstance(value, int):
        if value < _MIN_EPOCH_MS:
            raise ValueError(f"ts {value} looks like epoch seconds; send epoch milliseconds")
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"ts {value!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        raise ValueError(f"ts {value!r} has no timezone; add Z or +HH:MM")
    return int(parsed.timestamp() * 1000)


def _check(event: msgspec.Struct) -> str | None:
    """Domain checks msgspec's type validation cannot express. Returns a reason or None."""
    if not event.event_id:
        return "event_id is empty"
    if isinstance(event, Click) and not (event.tracking_code and event.visitor_id):
        return "tracking_code and visitor_id must be non-empty"
    if isinstance(event, Signup) and not (event.account_id and event.visitor_id):
        return "account_id and visitor_id must be non-empty"
    if isinstance(event, Order):
        if not (event.order_id and event.account_id):
            return "order_id and account_id must be non-empty"
        if not (event.amount.is_finite() and event.discount.is_finite()):
            return "amount and discount must be finite numbers"
        if event.amount < 0 or event.discount < 0:
            return "amount and discount must be >= 0"
        if event.amount >= MAX_AMOUNT or event.discount >= MAX_AMOUNT:
            return f"amount and discount must be below {MAX_AMOUNT:,}"
        if event.amount != event.amount.quantize(_MONEY_STEP) or event.discount != event.discount.quantize(_MONEY_STEP):
            return "amount and discount may have at most 4 decimal places"
        if not _CURRENCY.match(event.currency):
            return f"currency {event.currency!r} is not an ISO-4217 code like USD"
    if isinstance(event, Promoter):
        if not (event.promoter_id and event.tracking_code):
            return "promoter_id and tracking_code must be non-empty"
        if not 1 <= event.level <= 99:
            return "level must be between 1 and 99"
    if isinstance(event, Exclusion) and not (event.account_id or event.email_domain):
        return "an exclusion needs account_id or email_domain"
    return None


def decode(topic: str, raw: bytes | None, now_ms: int, max_future_ms: int):
    """Decode one message of input `topic` (name without prefix).

    Returns the event with `ts` (and `joined_at` / `since`) as epoch millis, or `Invalid`.
    """
    decoder = _decoders.get(topic)
    if decoder is None:
        return Invalid(f"unknown input topic {topic!r}")
    if not raw:
        return Invalid("empty message value")
    try:
        event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Invalid(f"invalid {topic[:-1]}: {exc}")
    except msgspec.DecodeError as exc:
        return Invalid(f"not valid JSON: {exc}")
    try:
        event.ts = parse_ts(event.ts)
        for field in ("joined_at", "since"):
            if getattr(event, field, None) is not None:
                setattr(event, field, parse_ts(getattr(event, field)))
    except ValueError as exc:
        return Invalid(str(exc))
    if event.ts > now_ms + max_future_ms:
        return Invalid(f"ts {event.ts} is more than {max_future_ms // 1000}s in the future")
    reason = _check(event)
    return Invalid(reason) if reason else event
