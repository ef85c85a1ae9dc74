"""Replay / backtest: reprocess stored events with another rule book, compare, touch nothing.

`refstream replay --rules candidate.toml` reads the raw clicks, signups, orders, promoters
and exclusions that the sink stored in ClickHouse (`sinks.stored.load`), runs them through
the same pure attribution, check and pricing functions as the live pipeline, once with the
rule book in force (`REFSTREAM_RULES_FILE`) and once with the candidate, and reports per
promoter and per reason what would change. It only reads: live results are never written.

Offline, the engine knows every event up front, so the counters that the live pipeline
sees "as of decision time" (flooding and farming windows, monthly volume) are complete
here, and the rules ClickHouse applies over a whole code (click spamming) are applied to
each conversion as `conversions_current` would show it. Orders are decided in event-time
order, so monthly tiers follow event time.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.records import AttributionRec, ClickRef, Conversion, StoredEvents
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.reference import ExclusionDirectory, PromoterDirectory
from streams.logic.rules import spamming, windows
from streams.logic.rules.checks import PAYABLE_STATUSES
from streams.logic.rules.commission import counted_amount
from streams.logic.rules.ruleset import RuleBook


def run(events: StoredEvents, book: RuleBook, window_ms: int, binding_ms: int, refund_window_ms: int,
        model: str = "last_click") -> list[Conversion]:
    """Every conversion the events imply under `book`, decided in event-time order."""
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
        rec = AttributionRec(s.account_id, s.event_id, s.ts, s.visitor_id, click, True, attr.signup_ident(s))
        states[s.account_id] = conv.AccountState(signup=rec)
        if click is not None:
            states[s.account_id].signals = counted.snapshot(rec)
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
                       exclusions.owner)
    todo = sorted(((st.orders[oid].order.ts, oid, st) for st in states.values()
                   for oid in conv.candidates(st, ctx.rules)), key=lambda t: (t[0], t[1]))
    volume: dict[tuple[str, int], list[tuple[int, Decimal]]] = defaultdict(list)
    points: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    out: list[Conversion] = []
    for ts, oid, state in todo:
        assert state.signup is not None and state.signup.click is not None
        code = state.signup.click.tracking_code
        ref = promoters.as_of(code, ts)
        pid, month = (ref.promoter_id if ref else ""), windows.month_of(ts)
        live = conv.Live(sum((a for t, a in volume[pid, month] if t < ts), Decimal(0)),
                         sum(v for m, v in points[pid].items() if m < month))
        c = conv.decide(state.orders[oid], state, ctx, live, oid == conv.first_order(state, ctx.rules), 0)
        if spamming.is_spamming(spam_all[code], spam_long[code], book.at(ts)):
            c = spamming.hold(c)
        if pid:
            volume[pid, month].append((ts, counted_amount(c)))
            points[pid][month] += c.points
        out.append(c)
    return out


@dataclass
class Diff:
    by_promoter: list[dict[str, Any]]
    by_reason: list[dict[str, Any]]
    changed_orders: int
    orders: int


def compare(base: Iterable[Conversion], cand: Iterable[Conversion]) -> Diff:
    """Per promoter and per reason: counts and commission under both rule books."""
    a = {c.order_id: c for c in base}
    b = {c.order_id: c for c in cand}
    promoters: dict[str, dict[str, Any]] = {}
    reasons: dict[str, dict[str, Any]] = {}

    def add(c: Conversion, side: str) -> None:
        row = promoters.setdefault(c.promoter_id or "(unknown)", {
            "promoter_id": c.promoter_id or "(unknown)", "approved_base": 0, "approved_new": 0,
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
    changed = sum(1 for k in a.keys() | b.keys()
                  if (a.get(k) and (a[k].status, a[k].reasons, a[k].commission, a[k].bonus))
                  != (b.get(k) and (b[k].status, b[k].reasons, b[k].commission, b[k].bonus)))
    return Diff(sorted(promoters.values(), key=lambda r: (-abs(r["commission_delta"]), r["promoter_id"])),
                sorted(reasons.values(), key=lambda r: (-abs(r["delta"]), r["reason"])),
                changed, len(a.keys() | b.keys()))
