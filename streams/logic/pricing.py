"""Decisions -> priced conversions (the promoter stage): pure functions over plain data.

State per `promoter_id` (a `PromoterBook`): the decided orders of the months still open,
priced together in event-time order every time one changes, so the result never depends
on the order decisions arrive in. Per promoter and calendar month (the program's time
zone), in order of (order time, order id):

- the month's volume before an order sets its tier, the points of earlier months its
  level, the month's and the customer's commission before it what the caps leave;
- an order counts towards all of these unless rejected, or reversed before the month
  closed (`commission.counts`).

A month closes `month_close_days` after it ends (event time, the stage's watermark): its
orders' prices are final, and the book keeps of it only the totals (points for levels,
volume and commission for a decision that still comes) and each order's price until the
account join can send no more decisions of it (`DecisionRec.expires`: a refund then
reverses the order at its final price). So a promoter's state holds the orders of about
one month plus `month_close_days`, and a small record per order of the refund horizon.

Revisions: an order's conversion revision is its decision revision << 16 plus the number
of times its price changed since, so a re-priced order gets a higher revision, and an
order that moved to another promoter (a higher decision revision) outranks everything
its old promoter sent.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal

import msgspec

from schemas.records import Conversion, DecisionRec
from schemas.units import DAY_MS
from streams.logic.rules import calendar
from streams.logic.rules.commission import (
    NOT_PRICED,
    ZERO,
    Pricing,
    counts,
    customer_rule,
    level_for,
    payable,
    price,
    tier_for,
)
from streams.logic.rules.ruleset import RuleBook

REVISION_BITS = 16
_FIELDS = Conversion.__struct_fields__


class OpenOrder(msgspec.Struct, array_like=True):
    decision: DecisionRec
    revision: int = 0  # of the last conversion sent
    digest: int = 0  # of its content


class MonthTotals(msgspec.Struct, array_like=True):
    """A closed month: what its counted orders added up to."""

    volume: Decimal = ZERO
    commission: Decimal = ZERO
    points: int = 0


class FinalOrder(msgspec.Struct, array_like=True):
    """An order of a closed month: its final price, until no decision of it can come."""

    month: int
    pricing: Pricing  # before `payable`: its status may still change
    expires: int
    revision: int = 0
    digest: int = 0


class CustomerTotals(msgspec.Struct, array_like=True):
    """A customer's counted commission in closed months, per cap window."""

    windows: dict[int, Decimal]
    expires: int


class PromoterBook(msgspec.Struct, array_like=True):
    open: dict[str, OpenOrder] = {}
    closed: dict[int, MonthTotals] = {}  # kept for good: levels count points of every earlier month
    final: dict[str, FinalOrder] = {}
    customers: dict[str, CustomerTotals] = {}
    closed_through: int = 0  # the last closed month (yyyymm)


def content_digest(c: Conversion) -> int:
    """A digest of everything but the revision and when it was decided."""
    content = msgspec.msgpack.encode(msgspec.structs.replace(c, revision=0, decided_at=0))
    return int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "big")


def conversion(d: DecisionRec, p: Pricing, now_ms: int) -> Conversion:
    """The conversion row of decision `d` at price `p` (already payable)."""
    fields = {f: getattr(d, f) for f in _FIELDS}
    fields.update(level=p.level, rate=p.rate, tier=p.tier, commission=p.commission, bonus=p.bonus,
                  points=p.points, cap_applied=p.cap_applied, cap=p.cap, decided_at=now_ms)
    return Conversion(**fields)


def unpriced(d: DecisionRec, now_ms: int) -> Conversion:
    """The conversion of a decision without a promoter (`unknown_promoter`): nothing to
    price, so the account join sends it itself, at revision decision << 16."""
    conv = conversion(d, NOT_PRICED, now_ms)
    conv.revision = d.revision << REVISION_BITS
    return conv


def closes_at(month: int, book: RuleBook) -> int:
    """Event time at which `month` closes: its end plus the rule set's `month_close_days`."""
    end = calendar.month_end(month, book.zone)
    return end + book.at(end - 1).month_close_days * DAY_MS


# -- applying decisions --------------------------------------------------------------
def add(state: PromoterBook, d: DecisionRec, book: RuleBook, now_ms: int) -> tuple[str | None, Conversion | None]:
    """Take in one decision. Returns the open order it touched (to be re-priced with its
    month: `reprice`), or the conversion of an order of a closed month (priced at once,
    alone: it changes no other order)."""
    oid = d.order_id
    if d.removed:
        state.open.pop(oid, None)
        state.final.pop(oid, None)
        return oid, None  # its old neighbours are re-priced without it
    month = calendar.month_of(d.order_ts, book.zone)
    final = state.final.get(oid)
    if final is None and (oid in state.open or month > state.closed_through):
        entry = state.open.get(oid)
        if entry is None:
            state.open[oid] = OpenOrder(d)
        else:
            entry.decision = d
        return oid, None
    if final is None:
        final = state.final[oid] = FinalOrder(month, _price_late(state, d, month, book), d.expires)
    final.expires = max(final.expires, d.expires)
    conv = conversion(d, payable(final.pricing, d.status), now_ms)
    final.revision, final.digest, changed = _revise(final.revision, final.digest, d, conv)
    conv.revision = final.revision
    return None, conv


def reprice(state: PromoterBook, touched: set[str], book: RuleBook, now_ms: int) -> list[Conversion]:
    """Price every open order again in event-time order; return the conversions whose
    content changed (new revisions), and the `touched` ones unchanged (a redelivery
    repairs an output lost in a crash)."""
    out = []
    for entry, p, _ in _priced(state, book):
        d = entry.decision
        conv = conversion(d, payable(p, d.status), now_ms)
        entry.revision, entry.digest, changed = _revise(entry.revision, entry.digest, d, conv)
        conv.revision = entry.revision
        if changed or d.order_id in touched:
            out.append(conv)
    return out


def _revise(revision: int, digest: int, d: DecisionRec, conv: Conversion) -> tuple[int, int, bool]:
    new = content_digest(conv)
    if new == digest:
        return revision, digest, False
    return max(revision + 1, d.revision << REVISION_BITS), new, True


# -- pricing in event-time order ----------------------------------------------------
def _priced(state: PromoterBook, book: RuleBook) -> Iterator[tuple[OpenOrder, Pricing, bool]]:
    """Each open order (by order time, order id) with its price before `payable` and
    whether it counts towards its month."""
    zone = book.zone
    volume: dict[int, Decimal] = defaultdict(Decimal)
    commission: dict[int, Decimal] = defaultdict(Decimal)
    points: dict[int, int] = defaultdict(int)
    customer: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    closes: dict[int, int] = {}
    for entry in sorted(state.open.values(), key=lambda e: (e.decision.order_ts, e.decision.order_id)):
        d = entry.decision
        month = calendar.month_of(d.order_ts, zone)
        if month not in closes:
            closes[month] = closes_at(month, book)
        rs = book.at(d.order_ts)
        points_before = (sum(t.points for m, t in state.closed.items() if m < month)
                         + sum(v for m, v in points.items() if m < month))
        window = calendar.window_of(d.customer_first_ts, d.order_ts, rs.cap_per_customer_months, zone)
        spent = _closed_customer(state, d.account_id, window) + customer[d.account_id, window]
        p = price(d.amount, level_for(d.base_level, points_before, rs), tier_for(volume[month], rs),
                  d.first_order, d.renewal, rs, rule=customer_rule(d, rs, zone),
                  customer_room=rs.cap_per_customer - spent if rs.cap_per_customer else None,
                  month_room=rs.cap_per_promoter_month - commission[month] if rs.cap_per_promoter_month else None)
        counted = counts(d, closes[month])
        if counted:
            volume[month] += d.amount
            commission[month] += p.commission
            points[month] += p.points
            customer[d.account_id, window] += p.commission
        yield entry, p, counted


def _closed_customer(state: PromoterBook, account_id: str, window: int) -> Decimal:
    totals = state.customers.get(account_id)
    return totals.windows.get(window, ZERO) if totals else ZERO


def _price_late(state: PromoterBook, d: DecisionRec, month: int, book: RuleBook) -> Pricing:
    """A first decision for an order of a month already closed: priced after all of that
    month's orders (its final totals), changing none of them."""
    rs, zone = book.at(d.order_ts), book.zone
    totals = state.closed.get(month, MonthTotals())
    points_before = sum(t.points for m, t in state.closed.items() if m < month)
    window = calendar.window_of(d.customer_first_ts, d.order_ts, rs.cap_per_customer_months, zone)
    spent = _closed_customer(state, d.account_id, window)
    return price(d.amount, level_for(d.base_level, points_before, rs), tier_for(totals.volume, rs),
                 d.first_order, d.renewal, rs, rule=customer_rule(d, rs, zone),
                 customer_room=rs.cap_per_customer - spent if rs.cap_per_customer else None,
                 month_room=rs.cap_per_promoter_month - totals.commission if rs.cap_per_promoter_month else None)


# -- time ----------------------------------------------------------------------------
def due(state: PromoterBook, book: RuleBook) -> int | None:
    """The earliest watermark past which `advance` changes `state`."""
    times = [closes_at(m, book) for m in {calendar.month_of(e.decision.order_ts, book.zone)
                                          for e in state.open.values()}]
    times += [f.expires for f in state.final.values()] + [c.expires for c in state.customers.values()]
    return min(times, default=None)


def advance(state: PromoterBook, watermark: int, book: RuleBook) -> bool:
    """Close the months whose close time the watermark passed (their prices become final)
    and forget what can no longer change; True when nothing but closed totals is left...
    which are kept: the key is never deleted once a month closed."""
    zone = book.zone
    closing = {m for m in (calendar.month_of(e.decision.order_ts, zone) for e in state.open.values())
               if closes_at(m, book) < watermark}
    if closing:
        last = max(closing)
        for entry, p, counted in list(_priced(state, book)):
            d = entry.decision
            month = calendar.month_of(d.order_ts, zone)
            if month > last:
                continue  # an open month after the last closing one stays open
            totals = state.closed.setdefault(month, MonthTotals())
            state.final[d.order_id] = FinalOrder(month, p, d.expires, entry.revision, entry.digest)
            del state.open[d.order_id]
            if counted:
                totals.volume += d.amount
                totals.commission += p.commission
                totals.points += p.points
                rs = book.at(d.order_ts)
                window = calendar.window_of(d.customer_first_ts, d.order_ts, rs.cap_per_customer_months, zone)
                cust = state.customers.setdefault(d.account_id, CustomerTotals({}, d.expires))
                cust.windows[window] = cust.windows.get(window, ZERO) + p.commission
                cust.expires = max(cust.expires, d.expires)
        state.closed_through = max(state.closed_through, last)
    state.final = {k: f for k, f in state.final.items() if f.expires >= watermark}
    state.customers = {k: c for k, c in state.customers.items() if c.expires >= watermark}
    return not (state.open or state.final or state.customers or state.closed)


def price_all(decisions: list[DecisionRec], book: RuleBook, now_ms: int = 0) -> list[Conversion]:
    """The final conversions of `decisions` (any order, the latest decision of each order
    last): what the stage ends with once every month closed. Replay and tests use it."""
    latest = {d.order_id: d for d in decisions if not d.removed}  # an order moved: only where it went
    books: dict[str, PromoterBook] = defaultdict(PromoterBook)
    unknown: dict[str, Conversion] = {}
    for d in latest.values():
        if d.promoter_id:
            add(books[d.promoter_id], d, book, now_ms)
        else:
            unknown[d.order_id] = unpriced(d, now_ms)
    out = list(unknown.values())
    for state in books.values():
        out += reprice(state, set(state.open), book, now_ms)
    return sorted(out, key=lambda c: c.order_id)
