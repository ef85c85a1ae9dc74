"""Replay / backtest: reprocess stored events with another rule book, compare, touch nothing.

`refstream replay --rules candidate.toml` reads the raw clicks, signups, orders, promoters
and exclusions that the sink stored in ClickHouse (`sinks.stored.load`), runs them through
the same pure attribution, check and pricing functions as the live pipeline, once with the
rule book in force (`REFSTREAM_RULES_FILE`) and once with the candidate, and reports per
promoter and per reason what would change (`compare`). `--against-stored` compares the
replay under the rule book in force with the stored `conversions_current`, field by field
(`against_stored`). It only reads: live results are never written.

Offline, the engine knows every event up front, so the counters that the live pipeline
sees "as of decision time" (flooding and farming windows) are complete here, and the rules
ClickHouse applies over a whole code (click spamming) are applied to each conversion as
`conversions_current` would show it. Each order is decided by the account join's functions
and all are priced by the promoter stage's (`pricing.price_all`: months in event-time
order), so tiers, levels and caps follow event time, as in the live pipeline once its months
have closed.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.records import AttributionRec, ClickRef, Conversion, DecisionRec, StoredEvents
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic import pricing
from streams.logic.fx import FxDirectory
from streams.logic.reference import ExclusionDirectory, PromoterDirectory
from streams.logic.rules import champion, reviews, spamming, windows
from streams.logic.rules.checks import APPROVED, PAYABLE_STATUSES, REJECTED
from streams.logic.rules.ruleset import RuleBook


def run(events: StoredEvents, book: RuleBook, window_ms: int, binding_ms: int, refund_window_ms: int,
        model: str = "last_click") -> list[Conversion]:
    """Every conversion the events imply under `book`: each order decided by the account
    join's functions, then all priced together by the promoter stage's (`pricing.price_all`),
    so the answer is the event-time one whatever order the events were stored in."""
    promoters = PromoterDirectory(salt=None)  # stored promoter IPs are already hashed
    for promoter in events.promoters:
        promoters.add(promoter)
    exclusions = ExclusionDirectory()
    for exclusion in events.exclusions:
        exclusions.add(exclusion)
    counted = windows.MemoryWindows()  # flood and farming windows, with complete knowledge
    counted.record(events.clicks)
    counted.record(events.signups)
    by_visitor: dict[str, list[ClickRef]] = defaultdict(list)
    for click_rec in events.clicks:
        by_visitor[click_rec.visitor_id].append(attr.click_ref(click_rec, book))
    rules = attr.AttributionRules(window_ms, model, max_clicks=10**9)
    clicks_of = {v: sorted(cs, key=lambda c: (c.ts, c.event_id)) for v, cs in by_visitor.items()}
    # the earliest signup of each account counts
    states: dict[str, conv.AccountState] = {}
    for s in sorted(events.signups, key=lambda s: (s.ts, s.event_id)):
        if s.account_id in states:
            continue
        click = attr.choose_click(clicks_of.get(s.visitor_id, []), s.ts, rules)
        rec = AttributionRec(s.account_id, s.event_id, s.ts, s.visitor_id, click, True, attr.signup_ident(s),
                             s.coupon_code)
        # every account's counters: an order's coupon code may attribute an organic one
        states[s.account_id] = conv.AccountState(signup=rec, signals=counted.snapshot(rec), signals_final=True)
    # click spamming: per code, its attributed signups and those long after their click
    spam_all: Counter[str] = Counter()
    spam_long: Counter[str] = Counter()
    for state in states.values():
        a = state.signup
        if a is not None and a.click is not None:
            spam_all[a.click.tracking_code] += 1
            if spamming.is_long(a.click.ts, a.signup_ts, book.at(a.signup_ts)):
                spam_long[a.click.tracking_code] += 1
    for o in sorted(events.orders, key=lambda o: (o.ts, o.event_id)):
        if o.account_id in states:
            conv.add_order(states[o.account_id], o)
    ctx = conv.Context(conv.ConversionRules(binding_ms, refund_window_ms, model), book, promoters.as_of,
                       exclusions.owner, promoters.by_coupon, promoters.parent_of)
    decisions: list[DecisionRec] = []
    for state in states.values():
        paid = conv.paid_orders(state)
        first = paid[0][1] if paid else None
        for oid, source in conv.sources(state, ctx).items():
            d = conv.decide(state.orders[oid], state, ctx, oid == first, 0, paid, source)
            code = d.tracking_code  # '' for a coupon conversion: no click, no spamming (as in SQL)
            if code and spamming.is_spamming(spam_all[code], spam_long[code], book.at(d.order_ts)):
                d = _held(d)  # held orders still count towards their promoter's month
            decisions.append(d)
    rates = FxDirectory()
    for rate in events.fx_rates:
        rates.add(rate)
    return pricing.price_all(decisions, book, rates=rates.rate)


def _held(d: DecisionRec) -> DecisionRec:
    held = spamming.hold(d)
    assert isinstance(held, DecisionRec)  # `hold` replaces fields, the type stays
    return held


@dataclass
class Diff:
    by_promoter: list[dict[str, Any]]
    by_reason: list[dict[str, Any]]
    changed_orders: int
    orders: int


#: what a conversion's outcome is: a candidate book "changes" an order when any of these does
OUTCOME_FIELDS = ("status", "reasons", "promoter_id", "level", "rate", "tier", "commission", "bonus", "points",
                  "cap")


def _outcome(c: Conversion | None) -> tuple[Any, ...] | None:
    return None if c is None else tuple(_norm(f, getattr(c, f)) for f in OUTCOME_FIELDS)


def compare(base: Iterable[Conversion], cand: Iterable[Conversion]) -> Diff:
    """Per promoter and per reason: counts and commission under both rule books."""
    a = {c.order_id: c for c in base}
    b = {c.order_id: c for c in cand}
    promoters: dict[str, dict[str, Any]] = {}
    reasons: dict[str, dict[str, Any]] = {}

    def add(c: Conversion, side: str) -> None:
        row = promoters.setdefault(c.promoter_id or UNKNOWN, {
            "promoter_id": c.promoter_id or UNKNOWN, "approved_base": 0, "approved_new": 0,
            "held_base": 0, "held_new": 0, "commission_base": Decimal(0), "commission_new": Decimal(0)})
        if c.status in PAYABLE_STATUSES:
            row[f"{c.status}_{side}"] += 1
        row[f"commission_{side}"] += c.commission + c.bonus
        for r in c.reasons:
            rr = reasons.setdefault(r, {"reason": r, "orders_base": 0, "orders_new": 0})
            rr[f"orders_{side}"] += 1

    for c in a.values():
        add(c, "base")
    for c in b.values():
        add(c, "new")
    for row in promoters.values():
        row["commission_delta"] = row["commission_new"] - row["commission_base"]
    for rr in reasons.values():
        rr["delta"] = rr["orders_new"] - rr["orders_base"]
    changed = sum(1 for k in a.keys() | b.keys() if _outcome(a.get(k)) != _outcome(b.get(k)))
    return Diff(sorted(promoters.values(), key=lambda r: (-abs(r["commission_delta"]), r["promoter_id"])),
                sorted(reasons.values(), key=lambda r: (-abs(r["delta"]), r["reason"])),
                changed, len(a.keys() | b.keys()))


# -- replay against what is stored ---------------------------------------------------------
#: fields that mean the same in a replay and in `conversions_current`. Not compared: revision
#: and decided_at (bookkeeping), the attribution and evidence columns (the live join may have
#: seen fewer clicks or provisional windows), payable_at and the review columns (reviews are
#: not replayed: `_stored_fields` takes status and reasons from before them).
STORED_FIELDS = ("status", "reasons", "promoter_id", "tracking_code", "order_status", "amount", "first_order",
                 "rule_version", "level", "rate", "tier", "commission", "bonus", "points", "cap")
#: zeroed in SQL when a review rejects the order: not comparable then
_MONEY = ("commission", "bonus", "points")
_DECIMALS = frozenset({"amount", "rate", "commission", "bonus"})
#: the pseudo-field of an order only one side has
PRESENCE = "conversion"
ABSENT, PRESENT = "absent", "present"
UNKNOWN = "(unknown)"


def _norm(name: str, value: Any) -> Any:
    """One comparable value per field, whichever side (and driver type) it comes from."""
    if name == "reasons":
        return tuple(sorted(value))  # SQL appends spam and enterprise reasons after the join's
    if name in _DECIMALS:
        return Decimal(str(value))
    if name == "first_order":
        return bool(value)
    if name in ("level", "tier", "points"):
        return int(value)
    return str(value)


def _stored_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `conversions_current` row's comparable fields as the rules left them, before any
    review: status = `auto_status`, without the reason code the winning review added, and
    no money when a review rejected the order (it zeroed it). Columns the row lacks (an
    older table) are not compared."""
    auto = str(row.get("auto_status") or row["status"])
    code = reviews.effect(str(row.get("review") or ""), auto).reason
    skip = set(_MONEY) if row["status"] == REJECTED and auto != REJECTED else set()
    out = {f: _norm(f, row[f]) for f in STORED_FIELDS if f in row and f not in skip and f != "status"}
    out["status"] = auto
    if "reasons" in out and code:
        out["reasons"] = tuple(r for r in out["reasons"] if r != code)
    return out


def _replayed_fields(c: Conversion) -> dict[str, Any]:
    return {f: _norm(f, getattr(c, f)) for f in STORED_FIELDS}


@dataclass(frozen=True)
class OrderDiff:
    order_id: str
    promoter_id: str  # the replayed one, else the stored one
    #: (field, stored, replayed); (PRESENCE, ABSENT, PRESENT) and back for an order one side lacks
    fields: tuple[tuple[str, Any, Any], ...]


@dataclass
class StoredDiff:
    orders: int  # compared: on either side
    differing: int
    by_field: list[dict[str, Any]]  # field, orders; most first
    #: promoters with a differing order (both of a re-attributed one): orders, commission
    #: (commission + bonus) stored and replayed over all their orders, delta
    by_promoter: list[dict[str, Any]]
    first: list[OrderDiff]  # the first `show` differing orders, by order_id


def against_stored(stored: Iterable[Mapping[str, object]], replayed: Iterable[Conversion],
                   show: int = 20) -> StoredDiff:
    """Compare `conversions_current` rows with replayed conversions, order by order, field
    by field (`_stored_fields`, `_replayed_fields`)."""
    a = {str(r["order_id"]): r for r in stored}
    b = {c.order_id: c for c in replayed}
    fields: Counter[str] = Counter()
    promoters: dict[str, dict[str, Any]] = {}
    diffs: list[OrderDiff] = []

    def promoter(pid: str) -> dict[str, Any]:
        pid = pid or UNKNOWN
        return promoters.setdefault(pid, {"promoter_id": pid, "orders": 0, "differing": 0,
                                          "commission_stored": Decimal(0), "commission_replayed": Decimal(0)})

    for oid in sorted(a.keys() | b.keys()):
        row, c = a.get(oid), b.get(oid)
        s = _stored_fields(row) if row is not None else None
        r = _replayed_fields(c) if c is not None else None
        if s is None or r is None:
            found: tuple[tuple[str, Any, Any], ...] = (
                (PRESENCE, ABSENT, PRESENT) if s is None else (PRESENCE, PRESENT, ABSENT),)
        else:
            found = tuple((f, s[f], r[f]) for f in STORED_FIELDS if f in s and s[f] != r[f])
        owners = {p for p in ((s or {}).get("promoter_id"), (r or {}).get("promoter_id")) if p is not None}
        for pid in owners:
            promoter(pid)["orders"] += 1
        if s is not None:  # money a review zeroed in the stored row counts as the replayed money
            money = s if "commission" in s or r is None else r
            promoter(s["promoter_id"])["commission_stored"] += money.get("commission", 0) + money.get("bonus", 0)
        if r is not None:
            promoter(r["promoter_id"])["commission_replayed"] += r["commission"] + r["bonus"]
        if found:
            fields.update(f for f, _, _ in found)
            for pid in owners:
                promoter(pid)["differing"] += 1
            pid = (r or s or {}).get("promoter_id", "")
            diffs.append(OrderDiff(oid, pid or UNKNOWN, found))
    rows = [p for p in promoters.values() if p["differing"]]
    for p in rows:
        p["commission_delta"] = p["commission_replayed"] - p["commission_stored"]
    return StoredDiff(
        orders=len(a.keys() | b.keys()), differing=len(diffs),
        by_field=[{"field": f, "orders": n} for f, n in sorted(fields.items(), key=lambda t: (-t[1], t[0]))],
        by_promoter=sorted(rows, key=lambda p: (-abs(p["commission_delta"]), -p["differing"], p["promoter_id"])),
        first=diffs[:show])


def champions_of(convs: Iterable[Conversion], book: RuleBook, event_now: int) -> list[champion.Champion]:
    """The sales champions `convs` make under `book` (what the view `champion_bonuses`
    would show over them): approved conversions, override lines excluded."""
    sales = [champion.Sale(c.promoter_id, c.order_ts, c.program_currency or c.currency, c.program_amount)
             for c in convs if c.status == APPROVED and not c.override_of and c.promoter_id]
    return champion.champions(sales, book, event_now)


def champion_changes(base: list[champion.Champion], new: list[champion.Champion]) -> list[dict[str, object]]:
    """Per month, currency and rank where either side has a champion: who and what bonus
    under both rule books, the rows that differ."""
    a = {(c.month, c.currency, c.rank): c for c in base}
    b = {(c.month, c.currency, c.rank): c for c in new}
    rows: list[dict[str, object]] = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if (x and (x.promoter_id, x.bonus)) != (y and (y.promoter_id, y.bonus)):
            rows.append({"month": key[0], "currency": key[1], "rank": key[2],
                         "promoter_base": x.promoter_id if x else "", "bonus_base": x.bonus if x else Decimal(0),
                         "promoter_new": y.promoter_id if y else "", "bonus_new": y.bonus if y else Decimal(0)})
    return rows
