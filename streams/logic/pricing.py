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

import functools
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal

import msgspec

from schemas.records import Conversion, DecisionRec
from schemas.units import DAY_MS
from streams.logic import overrides
from streams.logic.rules import calendar
from streams.logic.rules.checks import status_of
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
    to_program,
)
from streams.logic.rules.ruleset import RuleBook

REVISION_BITS = 16
#: fewer entries than this encode far below any state bound (ids are at most 128 characters)
SMALL_BOOK = 256
FX_RATE_MISSING = "fx_rate_missing"
_FIELDS = Conversion.__struct_fields__
_ONE = Decimal(1)
#: currency, event time -> program-currency units per unit then (streams/logic/fx.py), None: unknown
RateLookup = Callable[[str, int], "Decimal | None"]


def no_rates(currency: str, ts: int) -> Decimal | None:
    return None


class Fx(msgspec.Struct, frozen=True, array_like=True):
    """An order's amount in the program currency, and the rate used (None: no rate yet)."""

    currency: str
    rate: Decimal | None
    amount: Decimal | None


def in_program_currency(d: DecisionRec, book: RuleBook, rates: RateLookup) -> Fx:
    """The order's amount in the program currency at the rate in force at the order's time.
    Without a program currency (`book.currency` '') nothing is converted."""
    if not book.currency or d.currency == book.currency:
        return Fx(d.currency if not book.currency else book.currency, _ONE, d.amount)
    rate = rates(d.currency, d.order_ts)
    return Fx(book.currency, rate, None if rate is None else to_program(d.amount, rate))


class OpenOrder(msgspec.Struct, array_like=True):
    decision: DecisionRec
    revision: int = 0  # of the last conversion sent
    digest: int = 0  # of its content
    #: what that conversion was made of (its decision revision, price, conversion): an
    #: order whose three are unchanged is not rebuilt and hashed again on every step
    sent: tuple[int, Pricing, Fx] | None = None
    line_to: str = ""  # the recruiter whose override line of this order was sent last


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
    line_to: str = ""
    fx: Fx | None = None  # the rate it was priced at


class CustomerTotals(msgspec.Struct, array_like=True):
    """A customer's counted commission in closed months, per cap window."""

    windows: dict[int, Decimal]
    expires: int


class PromoterBook(msgspec.Struct, array_like=True):
    open: dict[str, OpenOrder] = {}
    closed: dict[int, MonthTotals] = {}  # kept for good: levels count points of every earlier month
    final: dict[str, FinalOrder] = {}
    customers: dict[str, CustomerTotals] = {}


def content_digest(c: Conversion, extra: str = "") -> int:
    """A digest of everything but the revision and when it was decided (and of `extra`)."""
    content = msgspec.msgpack.encode(msgspec.structs.replace(c, revision=0, decided_at=0)) + extra.encode()
    return int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "big")


def conversion(d: DecisionRec, p: Pricing, now_ms: int, fx: Fx | None = None) -> Conversion:
    """The conversion row of decision `d` at price `p` (already payable), its amount in the
    program currency `fx` (default: no conversion). Without a rate it is held
    (`fx_rate_missing`) and priced when the rate arrives."""
    fields = {f: getattr(d, f) for f in _FIELDS}
    fx = fx or Fx(d.currency, _ONE, d.amount)
    fields.update(level=p.level, rate=p.rate, tier=p.tier, commission=p.commission, bonus=p.bonus,
                  points=p.points, cap_applied=p.cap_applied, cap=p.cap, decided_at=now_ms,
                  program_currency=fx.currency, fx_rate=fx.rate or ZERO, program_amount=fx.amount or ZERO)
    if fx.rate is None:
        reasons = [*d.reasons, FX_RATE_MISSING]
        fields.update(reasons=reasons, status=status_of(reasons))
    return Conversion(**fields)


def unpriced(d: DecisionRec, now_ms: int, book: RuleBook | None = None, rates: RateLookup = no_rates) -> Conversion:
    """The conversion of a decision without a promoter (`unknown_promoter`): nothing to
    price, so the account join sends it itself, at revision decision << 16."""
    conv = conversion(d, NOT_PRICED, now_ms, in_program_currency(d, book, rates) if book else None)
    conv.revision = d.revision << REVISION_BITS
    return conv


def closes_at(month: int, book: RuleBook) -> int:
    """Event time at which `month` closes: its end plus the rule set's `month_close_days`."""
    end = calendar.month_end(month, book.zone)
    return end + book.at(end - 1).month_close_days * DAY_MS


# -- applying decisions --------------------------------------------------------------
def add(state: PromoterBook, d: DecisionRec, book: RuleBook, now_ms: int,
        rates: RateLookup = no_rates) -> tuple[str | None, list[Conversion]]:
    """Take in one decision. Returns the open order it touched (to be re-priced: `reprice`),
    or the conversion of an order whose price is already final (a refund after its month
    closed: it changes no other order), with its override line. A first decision for an
    order of a closed month is open like any other: priced after that month's final totals,
    and made final by the next `advance`."""
    oid = d.order_id
    if d.removed:  # its old neighbours are re-priced without it; a line it earned is taken back
        held: OpenOrder | FinalOrder | None = state.open.pop(oid, None) or state.final.pop(oid, None)
        if held is None or not held.line_to:
            return oid, []
        gone = conversion(d, NOT_PRICED, now_ms)
        gone.revision = held.revision + 1
        return oid, [overrides.withdrawn(gone, held.line_to)]
    final = state.final.get(oid)
    if final is None:
        entry = state.open.get(oid)
        if entry is None:
            state.open[oid] = OpenOrder(d)
        elif d.revision >= entry.decision.revision:  # an older decision redelivered changes nothing
            entry.decision = d
        return oid, []
    final.expires = max(final.expires, d.expires)
    conv = conversion(d, payable(final.pricing, d.status), now_ms, final.fx or in_program_currency(d, book, rates))
    return None, _emit(final, d, conv, book, touched=True)


def reprice(state: PromoterBook, touched: set[str], book: RuleBook, now_ms: int,
            rates: RateLookup = no_rates) -> list[Conversion]:
    """Price every open order again in event-time order; return the conversions whose
    content changed (new revisions), and the `touched` ones unchanged (a redelivery
    repairs an output lost in a crash), each followed by its override line if any."""
    out = []
    for entry, p, fx, _ in _priced(state, book, rates):
        d = entry.decision
        made_of = (d.revision, p, fx)
        if made_of == entry.sent and d.order_id not in touched:
            continue  # nothing it is made of changed: neither did it
        entry.sent = made_of
        out += _emit(entry, d, conversion(d, payable(p, d.status), now_ms, fx), book, d.order_id in touched)
    return out


def refresh(state: PromoterBook, book: RuleBook, now_ms: int, rates: RateLookup) -> list[Conversion]:
    """Re-price the open months with the exchange rates known now: an order that waited for
    its rate is priced, and one whose rate was replaced (a rate published late for a past
    time) re-priced. Run before months close, so what closes is what was sent."""
    return reprice(state, set(), book, now_ms, rates)


def _emit(held: OpenOrder | FinalOrder, d: DecisionRec, conv: Conversion, book: RuleBook,
          touched: bool) -> list[Conversion]:
    """`conv` with its override line (or the withdrawal of the last one), at a new revision
    when it or its line changed; nothing when unchanged and not `touched`."""
    line = overrides.line(conv, d, book.at(d.order_ts), book.zone)
    parent = line.promoter_id if line else ""
    digest = content_digest(conv, parent)
    changed = digest != held.digest
    if changed:
        held.revision, held.digest = max(held.revision + 1, d.revision << REVISION_BITS), digest
    conv.revision = held.revision
    if not (changed or touched):
        return []
    out = [conv]
    if line is not None:
        line.revision = conv.revision
        out.append(line)
    elif held.line_to:
        out.append(overrides.withdrawn(conv, held.line_to))
    held.line_to = parent
    return out


# -- pricing in event-time order ----------------------------------------------------
def _priced(state: PromoterBook, book: RuleBook,
            rates: RateLookup = no_rates) -> Iterator[tuple[OpenOrder, Pricing, Fx, bool]]:
    """Each open order (by order time, order id) with its price before `payable`, its
    amount in the program currency, and whether it counts towards its month. An order
    without an exchange rate is not priced and does not count (yet)."""
    zone = book.zone
    closed_points = sorted(state.closed.items())
    # an open month starts from what of it was fixed early (`shrink`), else from nothing
    volume: dict[int, Decimal] = defaultdict(Decimal, {m: t.volume for m, t in closed_points})
    commission: dict[int, Decimal] = defaultdict(Decimal, {m: t.commission for m, t in closed_points})
    points: dict[int, int] = defaultdict(int)
    customer: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    closes: dict[int, int] = {}
    before: dict[int, int] = {}  # month -> points of every earlier month
    for entry in sorted(state.open.values(), key=lambda e: (e.decision.order_ts, e.decision.order_id)):
        d = entry.decision
        month = calendar.month_of(d.order_ts, zone)
        if month not in closes:
            closes[month] = closes_at(month, book)
            before[month] = (sum(t.points for m, t in closed_points if m < month)
                             + sum(v for m, v in points.items() if m < month))
        fx = in_program_currency(d, book, rates)
        if fx.amount is None:
            yield entry, NOT_PRICED, fx, False
            continue
        rs = book.at(d.order_ts)
        window = _window(d, book)
        spent = _closed_customer(state, d.account_id, window) + customer[d.account_id, window]
        p = price(fx.amount, level_for(d.base_level, before[month], rs), tier_for(volume[month], rs),
                  d.first_order, d.renewal, rs, rule=customer_rule(d, rs, zone),
                  customer_room=rs.cap_per_customer - spent if rs.cap_per_customer else None,
                  month_room=rs.cap_per_promoter_month - commission[month] if rs.cap_per_promoter_month else None)
        counted = counts(d, closes[month])
        if counted:
            volume[month] += fx.amount
            commission[month] += p.commission
            points[month] += p.points
            customer[d.account_id, window] += p.commission
        yield entry, p, fx, counted


def _window(d: DecisionRec, book: RuleBook) -> int:
    """The customer-cap window of `d`'s order (counted from the customer's first paid order)."""
    months = book.at(d.order_ts).cap_per_customer_months
    return calendar.window_of(d.customer_first_ts, d.order_ts, months, book.zone)


def _closed_customer(state: PromoterBook, account_id: str, window: int) -> Decimal:
    totals = state.customers.get(account_id)
    return totals.windows.get(window, ZERO) if totals else ZERO


# -- time ----------------------------------------------------------------------------
def due(state: PromoterBook, book: RuleBook) -> int | None:
    """The earliest watermark past which `advance` changes `state`."""
    first = min((e.decision.order_ts for e in state.open.values()), default=None)
    times = [] if first is None else [closes_at(calendar.month_of(first, book.zone), book)]  # months close in order
    times += [f.expires for f in state.final.values()] + [c.expires for c in state.customers.values()]
    if any(e.sent is not None and e.sent[2].rate is None for e in state.open.values()):
        times.append(0)  # waiting for an exchange rate: looked at on every sweep (`refresh`)
    return min(times, default=None)


def advance(state: PromoterBook, watermark: int, book: RuleBook, rates: RateLookup = no_rates) -> bool:
    """Close the months whose close time the watermark passed (their prices become final)
    and forget what can no longer change; True when nothing but closed totals is left...
    which are kept: the key is never deleted once a month closed."""
    zone = book.zone
    closing = {m for m in (calendar.month_of(e.decision.order_ts, zone) for e in state.open.values())
               if closes_at(m, book) < watermark}
    if closing:
        last = max(closing)
        _fix(state, book, rates, lambda month, i: month <= last)  # a later open month stays open
    state.final = {k: f for k, f in state.final.items() if f.expires >= watermark}
    state.customers = {k: c for k, c in state.customers.items() if c.expires >= watermark}
    return not (state.open or state.final or state.customers or state.closed)


def _fix(state: PromoterBook, book: RuleBook, rates: RateLookup, which: Callable[[int, int], bool]) -> int:
    """Make final the open orders `which(month, i)` picks (i: the order's place in event-time
    order): their price is kept, what they counted goes to their month's totals. Returns how
    many."""
    zone, fixed = book.zone, 0
    for i, (entry, p, fx, counted) in enumerate(list(_priced(state, book, rates))):
        d = entry.decision
        month = calendar.month_of(d.order_ts, zone)
        if fx.amount is None or not which(month, i):
            continue  # waiting for its exchange rate: stays open until priced (`refresh`)
        fixed += 1
        totals = state.closed.setdefault(month, MonthTotals())
        state.final[d.order_id] = FinalOrder(month, p, d.expires, entry.revision, entry.digest, entry.line_to, fx)
        del state.open[d.order_id]
        if counted:
            totals.volume += fx.amount
            totals.commission += p.commission
            totals.points += p.points
            window = _window(d, book)
            cust = state.customers.setdefault(d.account_id, CustomerTotals({}, d.expires))
            cust.windows[window] = cust.windows.get(window, ZERO) + p.commission
            cust.expires = max(cust.expires, d.expires)
    return fixed


def _earliest(n: int, month: int, i: int) -> bool:
    return i < n


def shrink(state: PromoterBook, book: RuleBook, max_bytes: int, rates: RateLookup = no_rates) -> int:
    """Keep an outsized book (a promoter with thousands of orders in his open months or
    refund horizon) under `max_bytes` encoded, so its changelog record stays a valid Kafka
    message: forget the final prices that expire first (a later decision of such an order
    is priced after its month), then fix the earliest open orders' prices
    early, as if their month had closed. Exactness for this one promoter is what it costs
    (docs/architecture.md, Known limits). Returns how many orders it touched."""
    touched = 0
    encode = msgspec.msgpack.encode
    if len(state.final) + len(state.customers) + len(state.open) < SMALL_BOOK:
        return 0  # cannot be near the bound: spare the encoding
    while (size := len(encode(state))) > max_bytes and (state.final or state.customers or state.open):
        items = len(state.final) + len(state.customers) + len(state.open)
        share = int(items * (1 - max_bytes / size)) + 1  # about the excess, at least one
        if state.final or state.customers:
            held = state.final if state.final else state.customers
            for key in sorted(held, key=lambda k: held[k].expires)[:share]:
                del held[key]
                touched += 1
        else:
            touched += _fix(state, book, rates, functools.partial(_earliest, share))
    return touched


def price_all(decisions: list[DecisionRec], book: RuleBook, now_ms: int = 0,
              rates: RateLookup = no_rates) -> list[Conversion]:
    """The final conversions of `decisions` (any order, the latest decision of each order
    last): what the stage ends with once every month closed. Replay and tests use it."""
    latest = {d.order_id: d for d in decisions if not d.removed}  # an order moved: only where it went
    books: dict[str, PromoterBook] = defaultdict(PromoterBook)
    unknown: dict[str, Conversion] = {}
    for d in latest.values():
        if d.promoter_id:
            add(books[d.promoter_id], d, book, now_ms, rates)
        else:
            unknown[d.order_id] = unpriced(d, now_ms, book, rates)
    out = list(unknown.values())
    for state in books.values():
        out += reprice(state, set(state.open), book, now_ms, rates)
    return sorted(out, key=lambda c: c.order_id)
