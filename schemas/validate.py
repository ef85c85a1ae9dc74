"""Decode and validate raw input messages, as strictly as the contract (docs/events.md).

`decode` never raises: it returns either a valid event (with its timestamps normalised
to epoch milliseconds) or an `Invalid` carrying a reason a person can act on. Callers
dead-letter the `Invalid` ones; nothing is dropped silently. Whatever arrives (deep
nesting, huge numbers, megabytes of garbage), the work done is bounded by the message
size limit, checked before anything is parsed.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from schemas.events import MODELS, Click, Event, Exclusion, FxRate, Order, Promoter, Review, Signup

_decoders: dict[str, msgspec.json.Decoder[Event]] = {
    topic: msgspec.json.Decoder(model) for topic, model in MODELS.items()}

#: ids (event_id, visitor_id, promoter_id, tracking_code, ...): 1 to MAX_ID_LEN characters
MAX_ID_LEN = 128
#: a review's free-text reason: at most this many characters
MAX_REASON_LEN = 500
#: a larger input message is dead-lettered unread (REFSTREAM_MAX_MESSAGE_BYTES overrides it)
MAX_MESSAGE_BYTES = 65_536
#: money is stored as Decimal(18, 4): 14 integer digits, 4 decimals
MAX_AMOUNT = Decimal(10) ** 14
_MONEY_STEP = Decimal("0.0001")
#: an exchange rate is stored as Decimal(24, 12) (conversions' `fx_rate`, table `fx_rates`):
#: positive, below 10^12, at most 12 decimal places, so it is stored exactly
MAX_FX_RATE = Decimal(10) ** 12
_FX_STEP = Decimal("1e-12")
#: every timestamp field (`ts`, `joined_at`, `since`), ints and ISO strings alike, lies in
#: [MIN_TS_MS, now + REFSTREAM_MAX_FUTURE_S]. Below 1e11 an int is almost certainly epoch
#: *seconds*, so 1973-03-03T09:46:40Z is the earliest time the contract accepts.
MIN_TS_MS = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_CURRENCY = re.compile(r"[A-Z]{3}")
_METHOD = re.compile(r"[A-Za-z]{1,16}")
#: a plain ASCII decimal, as a JSON number or a JSON string: no sign, exponent, spaces,
#: underscores or non-ASCII digits (Python's Decimal() would take all of those)
_MONEY_TEXT = re.compile(rb'[0-9]+(?:\.[0-9]+)?|"[0-9]+(?:\.[0-9]+)?"')
#: a hash as hex digits: MD5 (32) up to SHA-512 (128)
_HASH = re.compile(r"[0-9A-Fa-f]{32,128}")
#: a DNS name with at least two labels (IDN labels in Unicode or as xn-- punycode)
_DOMAIN = re.compile(r"(?=.{1,253}\Z)(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_][\w-]{0,61}[^\W_]")


def valid_id(value: str) -> bool:
    """An id as the contract allows it (docs/events.md): 1 to 128 printable characters, i.e.
    no control, format (such as U+202E) or separator characters other than the ASCII space.
    The stats API's filters accept exactly these."""
    return 0 < len(value) <= MAX_ID_LEN and value.isprintable()


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that cannot be processed, and why."""

    reason: str


class _MoneyText(msgspec.Struct):
    """An order's money fields as sent, to hold them to the grammar before Decimal() sees them."""

    amount: msgspec.Raw = msgspec.Raw(b"0")
    discount: msgspec.Raw = msgspec.Raw(b"0")


_money_text = msgspec.json.Decoder(_MoneyText)

#: per model: required ids, optional ids ('' counts as absent), hashes, e-mail domains
_IDS: dict[type, tuple[str, ...]] = {
    Click: ("event_id", "tracking_code", "visitor_id"),
    Signup: ("event_id", "account_id", "visitor_id"),
    Order: ("event_id", "order_id", "account_id", "product"),
    Promoter: ("event_id", "promoter_id", "tracking_code"),
    Exclusion: ("event_id",),
    Review: ("event_id", "actor"),
    FxRate: ("event_id",),
}
#: coupon codes one promoter version may list (a KOL has a handful; a list of thousands is a mistake)
MAX_COUPON_CODES = 100
_OPTIONAL_IDS: dict[type, tuple[str, ...]] = {
    Click: ("campaign", "material_id"),
    Signup: ("device_id", "coupon_code"),  # a coupon code: the limits of a tracking code
    Order: ("cart_id", "sku", "category", "coupon_code"),
    Promoter: ("account_id", "device_id", "parent_promoter_id"),  # the recruiter: a payee id
    Exclusion: ("account_id",),
    Review: ("order_id", "promoter_id"),
}
_HASHES: dict[type, tuple[str, ...]] = {
    Signup: ("email_hash", "realname_id_hash"),
    Promoter: ("email_hash", "realname_id_hash"),
}
_DOMAINS: dict[type, tuple[str, ...]] = {Signup: ("email_domain",), Exclusion: ("email_domain",)}
_TIMES: dict[type, tuple[str, ...]] = {Promoter: ("ts", "joined_at"), Exclusion: ("ts", "since"),
                                        FxRate: ("ts", "effective_from")}


#: characters a reason may not hold: control (newlines, tabs), format (bidi overrides, zero
#: width), surrogates and line / paragraph separators; they garble or spoof the review queue
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def valid_reason(value: str) -> bool:
    """A review's reason as the contract allows it: up to 500 characters of visible text and spaces."""
    return len(value) <= MAX_REASON_LEN and not any(unicodedata.category(c) in _HIDDEN for c in value)


def parse_ts(value: int | str | None, field: str = "ts") -> int:
    """Epoch milliseconds for an epoch-millis int or an ISO-8601 string with a zone (fractions
    below a millisecond truncated). Raises ValueError with a message fit for a dead letter."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field} must be epoch milliseconds (int) or ISO-8601 with timezone")
    if isinstance(value, int):
        if 0 <= value < MIN_TS_MS:
            raise ValueError(f"{field} {value} looks like epoch seconds; send epoch milliseconds")
        return value
    if len(value) > 64:
        raise ValueError(f"{field} is not ISO-8601 (a string of {len(value)} characters)")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{field} {value!r} has no timezone; add Z or +HH:MM")
    try:
        return (parsed - _EPOCH) // _MS  # exact: no float on the way
    except OverflowError:
        raise ValueError(f"{field} {value!r} is out of range") from None


def _check_time(event: Any, field: str, now_ms: int, max_future_ms: int) -> str | None:
    """Normalise `event.<field>` to epoch ms in place; a reason if it is not a valid time."""
    value = getattr(event, field)
    if value is None:
        return None
    try:
        ms = parse_ts(value, field)
    except ValueError as exc:
        return str(exc)
    if ms < MIN_TS_MS:
        return f"{field} {value!r} is before 1973-03-03T09:46:40Z, the earliest time accepted"
    if ms > now_ms + max_future_ms:
        return f"{field} {value!r} is more than {max_future_ms // 1000}s in the future"
    setattr(event, field, ms)
    return None


#: optional fields: (fields per model, the check, what the field must be); '' counts as absent
_OPTIONAL: list[tuple[dict[type, tuple[str, ...]], Callable[[str], object], str]] = [
    (_OPTIONAL_IDS, valid_id, f"1 to {MAX_ID_LEN} printable characters, or null"),
    (_HASHES, _HASH.fullmatch, "a hash in hex (32 to 128 hex digits, e.g. SHA-256), never the value in clear"),
    (_DOMAINS, _DOMAIN.fullmatch, "a domain name like example.com (never an e-mail address)"),
]


def _check_fields(event: Event) -> str | None:
    """Ids, hashes, domains and codes of `event` against the contract; '' optionals to None."""
    kind = type(event)
    for field in _IDS[kind]:
        if not valid_id(getattr(event, field)):
            return f"{field} must be 1 to {MAX_ID_LEN} printable characters"
    for fields, valid, must in _OPTIONAL:
        for field in fields.get(kind, ()):
            value = getattr(event, field)
            if value == "":
                setattr(event, field, None)
            elif value is not None and not valid(value):
                return f"{field} must be {must}"
    return None


def _check(event: Event, raw: bytes) -> str | None:
    """Domain checks msgspec's type validation cannot express. Returns a reason or None."""
    reason = _check_fields(event)
    if reason:
        return reason
    if isinstance(event, Click) and not _METHOD.fullmatch(event.method):
        return "method must be an HTTP method like GET or HEAD"
    if isinstance(event, Order):
        text = _money_text.decode(raw)
        for field in ("amount", "discount"):
            if not _MONEY_TEXT.fullmatch(bytes(getattr(text, field))):
                return (f"{field} must be a plain decimal like 19.90 or \"19.90\" (ASCII digits and "
                        f"an optional fraction; no sign, exponent, spaces or separators)")
        if event.amount >= MAX_AMOUNT or event.discount >= MAX_AMOUNT:
            return f"amount and discount must be below {MAX_AMOUNT:,}"
        if event.amount != event.amount.quantize(_MONEY_STEP) or event.discount != event.discount.quantize(_MONEY_STEP):
            return "amount and discount may have at most 4 decimal places"
        if not _CURRENCY.fullmatch(event.currency):
            return f"currency {event.currency!r} is not an ISO-4217 code like USD"
    if isinstance(event, Promoter) and not 1 <= event.level <= 99:
        return "level must be between 1 and 99"
    if isinstance(event, Promoter) and not all(isinstance(c, str) and valid_id(c) for c in event.coupon_codes):
        return f"coupon_codes must be codes of 1 to {MAX_ID_LEN} printable characters"
    if isinstance(event, Promoter) and len(event.coupon_codes) > MAX_COUPON_CODES:
        return f"coupon_codes may list at most {MAX_COUPON_CODES} codes"
    if isinstance(event, Exclusion) and not (event.account_id or event.email_domain):
        return "an exclusion needs account_id or email_domain"
    if isinstance(event, Review):
        return _check_review(event)
    if isinstance(event, FxRate):
        return _check_fx_rate(event)
    return None


def _check_fx_rate(event: FxRate) -> str | None:
    if not _CURRENCY.fullmatch(event.currency):
        return f"currency {event.currency!r} is not an ISO-4217 code like EUR"
    rate = event.rate
    if not rate.is_finite() or not 0 < rate < MAX_FX_RATE:
        return f"rate must be a number above 0 and below {MAX_FX_RATE:,}"
    if rate != rate.quantize(_FX_STEP):
        return "rate may have at most 12 decimal places"
    return None


def _check_review(event: Review) -> str | None:
    if (event.order_id is None) == (event.promoter_id is None):
        return ("a review needs exactly one of order_id (one order's conversion) or promoter_id "
                "(all that promoter's open conversions)")
    if not valid_reason(event.reason):
        return (f"reason must be at most {MAX_REASON_LEN} characters, without control characters "
                f"(no newlines, tabs or bidi overrides)")
    return None


def decode(topic: str, raw: bytes | None, now_ms: int, max_future_ms: int,
           max_bytes: int = MAX_MESSAGE_BYTES) -> Event | Invalid:
    """Decode one message of input `topic` (name without prefix).

    Returns the event with `ts` (and `joined_at` / `since`) as epoch millis, or `Invalid`.
    Never raises.
    """
    decoder = _decoders.get(topic)
    if decoder is None:
        return Invalid(f"unknown input topic {topic!r}")
    if not raw:
        return Invalid("empty message value")
    if len(raw) > max_bytes:
        return Invalid(f"message too large: {len(raw):,} bytes, the limit is {max_bytes:,} "
                       f"(REFSTREAM_MAX_MESSAGE_BYTES)")
    try:
        event: Event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Invalid(f"invalid {topic[:-1]}: {exc}")
    except msgspec.DecodeError as exc:
        return Invalid(f"not valid JSON: {exc}")
    except RecursionError:
        return Invalid("not valid JSON: nested too deeply")
    except Exception as exc:  # whatever else a decoder may raise on hostile input
        return Invalid(f"cannot decode: {type(exc).__name__}")
    try:
        for field in _TIMES.get(type(event), ("ts",)):
            reason = _check_time(event, field, now_ms, max_future_ms)
            if reason:
                return Invalid(reason)
        reason = _check(event, raw)
    except Exception as exc:  # a check that trips on input it did not foresee: still a dead letter
        return Invalid(f"cannot validate: {type(exc).__name__}: {str(exc)[:200]}")
    return Invalid(reason) if reason else event
