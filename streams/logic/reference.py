"""Reference data every partition needs: which promoter owns a tracking code, and which
customers are excluded (owned by direct sales or a channel partner), as of when.

Each worker reads the whole (compacted) `promoters` and `exclusions` topics (and `fx_rates`:
`streams.logic.fx`) from the beginning and keeps it in memory, like a global table: lookups
are keyed by tracking code, not by the join keys, and reference data is small. Invalid
messages are skipped here; the `reference` agent dead-letters them once for the whole group.

`ReferenceReader` also reads the `reviews` topic for the sink, which stores decisions as
they come; no directory holds them (ClickHouse applies them, in `conversions_current`).
"""
from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass

from schemas.events import Exclusion, FxRate, Promoter, Review, millis
from schemas.validate import Invalid, decode
from streams.logic.privacy import Pseudonyms, hash_pii, scrub_text
from streams.logic.rules.checks import PromoterRef

Version = tuple[int, str, Promoter]  # (ts, event_id, promoter)


def _version_order(v: Version) -> tuple[int, str]:
    return v[0], v[1]


def _in_force(versions: list[Version], ts: int) -> int:
    """Index of the version in force at `ts`; before the first version we know, the first."""
    return max(bisect.bisect_right(versions, ts, key=lambda v: v[0]), 1) - 1


class PromoterDirectory:
    """tracking_code -> promoter versions sorted by event time, and coupon code -> the
    tracking codes whose versions ever listed it (`by_coupon`)."""

    def __init__(self, salt: bytes | None = b"") -> None:
        self._versions: dict[str, list[tuple[int, str, Promoter]]] = {}
        self._coupons: dict[str, set[str]] = {}
        self._codes: dict[str, set[str]] = {}  # promoter_id -> his tracking codes
        # promoters' IPs are hashed like signups' for the self-referral check (None: already hashed)
        self.salt = salt
        self.ready = asyncio.Event()

    def add(self, p: Promoter) -> None:
        versions = self._versions.setdefault(p.tracking_code, [])
        item = (millis(p.ts), p.event_id, p)
        if not any(v[1] == p.event_id for v in versions):
            bisect.insort(versions, item, key=_version_order)
        for code in p.coupon_codes:
            self._coupons.setdefault(code, set()).add(p.tracking_code)
        self._codes.setdefault(p.promoter_id, set()).add(p.tracking_code)

    def parent_of(self, promoter_id: str, ts: int) -> str | None:
        """Who recruited `promoter_id` as of event time `ts` (his latest version in force
        over his tracking codes), or None."""
        found: tuple[tuple[int, str], str | None] | None = None
        for tracking_code in self._codes.get(promoter_id, ()):
            versions = self._versions[tracking_code]
            at, event_id, p = versions[_in_force(versions, ts)]
            if p.promoter_id == promoter_id and (found is None or (at, event_id) > found[0]):
                found = (at, event_id), p.parent_promoter_id
        return found[1] if found else None

    def as_of(self, tracking_code: str, ts: int) -> PromoterRef | None:
        """The promoter owning `tracking_code` at event time `ts`, or None if nobody does.

        Before the first version we know, the first version counts: a compacted topic keeps
        only the latest record per tracking code, so older versions may be gone. A later
        version of the same promoter as an enterprise account is reported in
        `enterprise_since` (it reverses his earlier earnings).
        """
        versions = self._versions.get(tracking_code)
        if not versions:
            return None
        i = _in_force(versions, ts) + 1
        p = versions[i - 1][2]
        later = [v[0] for v in versions[i:] if v[2].promoter_id == p.promoter_id and v[2].account_type == "enterprise"]
        return PromoterRef(
            promoter_id=p.promoter_id, level=p.level, account_type=p.account_type,
            is_employee=p.is_employee, is_partner_staff=p.is_partner_staff, account_id=p.account_id,
            realname_id_hash=p.realname_id_hash, email_hash=p.email_hash, device_id=p.device_id,
            ip_hash=p.ip if self.salt is None else hash_pii(p.ip, self.salt),
            enterprise_since=later[0] if later else None,
            parent_promoter_id=p.parent_promoter_id, joined_at=millis(p.joined_at) if p.joined_at is not None else None,
        )

    def by_coupon(self, code: str, ts: int) -> PromoterRef | None:
        """The promoter owning coupon `code` at event time `ts` (as `as_of` tells him), or None.

        A promoter owns the codes his version in force lists (the rule of `as_of`: before
        the first version we know, the first counts), so a code dropped from his list is
        nobody's from then on. When versions of several tracking codes list it then, the
        most recent version wins (the code was handed over), and a version of that time
        wins over a first version assumed for it (the nearest of those if only they do)."""
        owner: tuple[tuple[int, int, str], str] | None = None
        for tracking_code in self._coupons.get(code, ()):
            versions = self._versions[tracking_code]
            at, event_id, p = versions[_in_force(versions, ts)]
            rank = (1, at, event_id) if at <= ts else (0, -at, event_id)
            if code in p.coupon_codes and (owner is None or rank > owner[0]):
                owner = rank, tracking_code
        return self.as_of(owner[1], ts) if owner else None

    def __len__(self) -> int:
        return len(self._versions)


class ExclusionDirectory:
    """Customers owned by direct sales or a channel partner, by account and by email domain."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[tuple[int, str, str]]] = {}  # key -> [(since, event_id, owner)]

    def add(self, e: Exclusion) -> None:
        since = millis(e.since if e.since is not None else e.ts)
        for key in (f"a:{e.account_id}" if e.account_id else None,
                    f"d:{e.email_domain.lower()}" if e.email_domain else None):
            if key is None:
                continue
            items = self._by_key.setdefault(key, [])
            if not any(i[1] == e.event_id for i in items):
                bisect.insort(items, (since, e.event_id, e.owner))

    def owner(self, account_id: str, email_domain: str | None, ts: int) -> str | None:
        """Who owned the customer at event time `ts` (the earliest exclusion in force), or None."""
        keys = [f"a:{account_id}"] + ([f"d:{email_domain.lower()}"] if email_domain else [])
        owners = [i for k in keys for i in self._by_key.get(k, ()) if i[0] <= ts]
        return min(owners)[2] if owners else None

    def __len__(self) -> int:
        return len(self._by_key)


Stored = Promoter | Exclusion | FxRate | Review
#: topics whose null values are compaction tombstones; on others a null value is a bad message
COMPACTED = ("promoters", "exclusions", "fx_rates")


@dataclass(frozen=True)
class ReferenceReader:
    """Reads a message of an input the sink stores as it comes (`streams.topology.STORED_INPUTS`):
    the promoter, exclusion, exchange rate or review with its personal data hashed, `Invalid(reason)`, or
    None for a compaction tombstone (not an error). Every worker's directories and the
    sink's reference writer read through it."""

    pseudonyms: Pseudonyms
    max_future_ms: int
    max_message_bytes: int

    def read(self, topic: str, value: bytes | None, now_ms: int) -> Stored | Invalid | None:
        """`topic`: the name without the prefix (`promoters`, `exclusions`, `fx_rates` or `reviews`)."""
        if value is None and topic in COMPACTED:
            return None
        event = decode(topic, value, now_ms, self.max_future_ms, self.max_message_bytes)
        if isinstance(event, (Promoter, Exclusion)):
            return self.pseudonyms.apply(event)
        if isinstance(event, FxRate):
            return event  # no personal data
        if isinstance(event, Review):
            # typed by a person: an e-mail or IP address or a phone number in it is hashed
            event.reason = scrub_text(event.reason, self.pseudonyms.salt)
            return event
        return event if isinstance(event, Invalid) else Invalid(f"{topic} is not a stored input topic")
