"""Personal data: keyed hashes, the scrub of free text, and bounded dead letters.

IP addresses (and, by setting, id fields whose values are personal data) are replaced by
a keyed hash before anything is stored: still comparable for the fraud checks, not
reversible. A dead letter keeps the original message's head, minus e-mail and IP
addresses, and the size and SHA-256 of the whole (`scrub`). Text typed by people (a review's
reason) loses phone numbers too (`scrub_text`): runs of 8 or more digits, which in a dead
letter are mostly timestamps and ids, so `scrub` keeps them.

The scrub runs in time linear in its input: an e-mail is found from its "@" (the local
part by walking left, never past the previous match), and every alternative of `_IP` is
anchored by a lookbehind that fails at once inside a run of the characters it consumes
and matches a bounded number of characters, so no position is looked at more than a
bounded number of times. `_PHONE` is linear too: its alternatives match bounded text or
consume digits, at most three separators before each, with nothing after that could make
it backtrack; its lookbehind fails at once inside a word.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Callable
from typing import TypeVar

from schemas.events import Click, Event, Exclusion, Order, Promoter, Signup
from schemas.records import DeadLetter
from streams.logic.messages import Message

E = TypeVar("E", bound=Event)

#: id fields that `REFSTREAM_HASH_ID_FIELDS` may name, and the inputs that carry each
HASHABLE_IDS: dict[str, tuple[type, ...]] = {
    "visitor_id": (Click, Signup),
    "account_id": (Signup, Order, Promoter, Exclusion),
    "device_id": (Signup, Promoter),
}
#: a dead letter keeps this much of the original value and key (bytes, before decoding)
DEAD_LETTER_HEAD = 4096
DEAD_LETTER_KEY_HEAD = 256
MAX_REASON = 1000


def hash_pii(value: str | None, salt: bytes) -> str | None:
    """Keyed hash of a personal value (IP, personal id): comparable, not reversible."""
    if not value:
        return None
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:24]


#: an e-mail's "@" (also URL-encoded: alice%40example.net) and domain; the local part is
#: found by walking left from the "@", so its length does not matter
_EMAIL_AT = re.compile(r"(?:@|%40)(?:[\w-]{1,63}\.){1,8}[\w-]{2,63}")
_LOCAL = re.compile(r"[\w.+-]")
_IP = re.compile(
    # IPv6 candidates, checked below: two colons within the first groups; a %zone may follow
    r"(?<![\w:.])(?P<ipv6>(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.]{2,45}(?:%[\w.-]{1,32})?)"
    # IPv4, also inside words (x1.2.3.4y) or after a dot (host.10.0.0.1), not inside longer
    # dotted numbers (1.2.3.4.5)
    r"|(?<!\d)(?<!\d\.)(?P<ipv4>(?:\d{1,3}\.){3}\d{1,3})(?!\.?\d)"
)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def scrub(text: str, salt: bytes) -> str:
    """Replace e-mail and IP addresses in free text by their keyed hashes."""
    def hashed(found: str) -> str:
        return f"<pii:{hash_pii(found, salt)}>"

    def ip(m: re.Match[str]) -> str:
        found = m.group(0)
        if m.lastgroup == "ipv6" and not _is_ipv6(found):
            return found  # a time like 12:30:45, a MAC-like id, ...
        return hashed(found)

    return _IP.sub(ip, _scrub_emails(text, hashed))


#: kept as they are: a hash `scrub` wrote, an ISO date (2026-03-12) or a dotted date (12.03.2026);
#: a phone number: an optional "+" and "(", then digits with up to three separators (spaces,
#: dashes, dots, parentheses) between them, not glued to a word, "-", "/" or "#" before it
#: (ORD-20261130-0042 is an id) nor to a word after it (checked after it)
_PHONE = re.compile(
    r"(?P<keep><pii:[0-9a-f]{24}>|(?<!\d)(?:\d{4}-\d\d-\d\d|\d\d?\.\d\d?\.\d{4})(?!\d))"
    r"|(?<![\w\-/#])(?P<phone>\+?\(?\d(?:[ \t.()\-]{0,3}\d)*)"
)
#: a phone number has at least this many digits
PHONE_DIGITS = 8


def scrub_text(text: str, salt: bytes) -> str:
    """`scrub`, then phone numbers replaced by the keyed hash of their digits (with the "+" if
    it has one, so spellings of one number hash alike): for free text typed by people. A run
    of fewer than `PHONE_DIGITS` digits, one glued to a word after it (an id like
    12345678abc) and a date stay."""
    def phone(m: re.Match[str]) -> str:
        found = m.group(0)
        if m.lastgroup != "phone" or (m.end() < len(text) and (text[m.end()].isalnum() or text[m.end()] == "_")):
            return found
        digits = "".join(ch for ch in found if ch.isdecimal())
        if len(digits) < PHONE_DIGITS or digits == found:
            return found  # short, or a bare digit run: an order id or a timestamp more often than a phone
        return f"<pii:{hash_pii(('+' if found.startswith('+') else '') + digits, salt)}>"

    return _PHONE.sub(phone, scrub(text, salt))


def _scrub_emails(text: str, hashed: Callable[[str], str]) -> str:
    """Each "@domain" with the local part before it (however long) replaced; every
    character is looked at a bounded number of times."""
    out: list[str] = []
    done = 0  # text[:done] is in `out`
    for m in _EMAIL_AT.finditer(text):
        start = m.start()
        while start > done and _LOCAL.match(text, start - 1):
            start -= 1
        if start == m.start():
            continue  # no local part: "@handle.example" alone is no address
        out += [text[done:start], hashed(text[start:m.end()])]
        done = m.end()
    return "".join(out) + text[done:] if out else text


def _head(data: bytes, limit: int) -> tuple[str, bool]:
    """`data` decoded (invalid UTF-8 replaced), cut to `limit` bytes; True when cut. A cut
    drops the token it split, so half an address never escapes the scrub."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    text = data[:limit].decode("utf-8", "replace")
    return re.sub(r"[^\s\"',;{}\[\]<>]{1,256}\Z", "", text), True


def dead_letter(reason: str, message: Message, salt: bytes, at_ms: int | None = None) -> DeadLetter:
    """A dead letter for Kafka `message` (see `letter`)."""
    value = message.value if isinstance(message.value, bytes) else b""
    return letter(reason, message.topic, message.partition, message.offset, message.key, value, salt, at_ms)


def letter(reason: str, topic: str, partition: int, offset: int, key: bytes | None, value: bytes,
           salt: bytes, at_ms: int | None = None) -> DeadLetter:
    """The one way a dead letter is made: the reason, where the content came from, and the
    head of `value` (personal data hashed) with the size and SHA-256 of the whole."""
    text, truncated = _head(value, DEAD_LETTER_HEAD)
    shown_key = scrub(_head(key, DEAD_LETTER_KEY_HEAD)[0], salt) if isinstance(key, bytes) else None
    return DeadLetter(
        reason=reason[:MAX_REASON], topic=topic, partition=partition, offset=offset, key=shown_key,
        value=scrub(text, salt), at=int(time.time() * 1000) if at_ms is None else at_ms,
        value_bytes=len(value), value_sha256=hashlib.sha256(value).hexdigest(), truncated=truncated,
    )


class Pseudonyms:
    """Hashes the personal fields of a valid input event in place, before it is stored:
    IP addresses always, and the id fields named in `REFSTREAM_HASH_ID_FIELDS`."""

    def __init__(self, salt: bytes, id_fields: tuple[str, ...] = ()) -> None:
        unknown = set(id_fields) - set(HASHABLE_IDS)
        if unknown:
            raise ValueError(f"cannot hash {', '.join(sorted(unknown))}: choose from {', '.join(HASHABLE_IDS)}")
        self.salt = salt
        self._fields: dict[type, tuple[str, ...]] = {}
        for kind in (Click, Signup, Order, Promoter, Exclusion):
            fields = tuple(f for f in id_fields if kind in HASHABLE_IDS[f])
            self._fields[kind] = (("ip",) if "ip" in kind.__struct_fields__ else ()) + fields

    def hash(self, value: str | None) -> str | None:
        return hash_pii(value, self.salt)

    def apply(self, event: E) -> E:
        """`event` with its personal fields hashed (the same object)."""
        for field in self._fields.get(type(event), ()):
            value = getattr(event, field)
            if value:
                setattr(event, field, hash_pii(value, self.salt))
        return event
