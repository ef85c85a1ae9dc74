"""Replay / backtest: reprocess stored events with another rule book, compare, touch nothing.

`refstream replay --rules candidate.toml` reads the raw clicks, signups, orders, promoters
and exclusions that the sink stored in ClickHouse, runs them through the same pure
attribution, check and pricing functions as the live pipeline, once with the rule book
in force (`REFSTREAM_RULES_FILE`) and once with the candidate, and reports per promoter
and per reason what would change. It only reads: live results are never written.

Offline, the engine knows every event up front, so the counters that the live pipeline
sees "as of decision time" (flooding, farming, spamming, monthly volume) are complete
here. Orders are decided in event-time order, so monthly tiers follow event time.
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable

from schemas.events import Exclusion, Promoter
from schemas.records import AttributionRec, ClickRef, Conversion, OrderRec, SignupIdent
from streams.logic import attribution as attr
from streams.logic import conversions as conv
from streams.logic.reference import ExclusionDirectory, PromoterDirectory
from streams.logic.rules.checks import DAY_MS, HOUR_MS, Signals, is_bot
from streams.logic.rules.ruleset import RuleBook
from streams.adapters.signals import counted_amount, month_of


@dataclass
class Events:
    """Deduplicated stored events, as plain dicts keyed like the ClickHouse columns."""

    clicks: list[dict]
    signups: list[dict]
    orders: list[dict]
    promoters: list[Promoter] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)


def _order_rec(o: dict) -> OrderRec:
    return OrderRec(o["event_id"], o["ts"], o["order_id"], o["account_id"], o["product"], Decimal(o["amount"]),
                    o["currency"], o["status"], Decimal(o["discount"]), o["cart_id"] or None, o["sku"] or None,
                    o["category"] or None, bool(o["renewal"]))


def run(events: Events, book: RuleBook, window_ms: int, binding_ms: int, refund_window_ms: int,
        model: str = "last_click") -> list[Conversion]:
    """Every conversion the events imply under `book`, decided in event-time order."""
    promoters = PromoterDirectory(salt=None)  # stored promoter IPs are already hashed
    for p in events.promoters:
        promoters.add(p)
    exclusions = ExclusionDirectory()
    for e in events.exclusions:
        exclusions.add(e)
    # counters with complete knowledge
    flood_ip: dict[tuple, set] = defaultdict(set)
    flood_v: dict[tuple, set] = defaultdict(set)
    farm_ip: dict[tuple, set] = defaultdict(set)
    farm_dev: dict[tuple, set] = defaultdict(set)
    by_visitor: dict[str, list[tuple[ClickRef, str | None]]] = defaultdict(list)
    for c in events.clicks:
        bot = is_bot(c["user_agent"], c["method"] or "GET", book.at(c["ts"]))
        ref = ClickRef(c["event_id"], c["ts"], c["tracking_code"], c["campaign"] or None, c["ip_hash"] or None, bot)
        by_visitor[c["visitor_id"]].append((ref, c["ip_hash"] or None))
        hour = c["ts"] // HOUR_MS
        if c["ip_hash"]:
            flood_ip[c["tracking_code"], c["ip_hash"], hour].add(c["event_id"])
        flood_v[c["tracking_code"], c["visitor_id"], hour].add(c["event_id"])
    for s in events.signups:
        day = s["ts"] // DAY_MS
        if s["ip_hash"]:
            farm_ip[s["ip_hash"], day].add(s["account_id"])
        if s["device_id"]:
            farm_dev[s["device_id"], day].add(s["account_id"])
    rules = attr.AttributionRules(window_ms, model, max_clicks=10**9)
    clicks_of = {v: sorted((c for c, _ in cs), key=lambda c: (c.ts, c.event_id)) for v, cs in by_visitor.items()}
    # the earliest signup of each account counts
    states: dict[str, conv.AccountState] = {}
    for s in sorted(events.signups, key=lambda s: (s["ts"], s["event_id"])):
        if s["account_id"] in states:
            continue
        click = attr.choose_click(clicks_of.get(s["visitor_id"], []), s["ts"], rules)
        ident = SignupIdent(s["ip_hash"] or None, s["device_id"] or None, s["email_hash"] or None,
                            s["email_domain"] or None, s["realname_id_hash"] or None)
        rec = AttributionRec(s["account_id"], s["event_id"], s["ts"], s["visitor_id"], click, True, ident)
        state = states[s["account_id"]] = conv.AccountState(signup=rec)
        if click is not None:
            hour, day = click.ts // HOUR_MS, s["ts"] // DAY_MS
            state.signals = Signals(
                flood_ip=len(flood_ip.get((click.tracking_code, click.ip_hash, hour), ())),
                flood_visitor=len(flood_v.get((click.tracking_code, s["visitor_id"], hour), ())),
                farm_ip=len(farm_ip.get((ident.ip_hash, day), ())) if ident.ip_hash else 0,
                farm_device=len(farm_dev.get((ident.device_id, day), ())) if ident.device_id else 0,
            )
    spam_all: Counter[str] = Counter()
    spam_long: Counter[str] = Counter()
    for state in states.values():
        s = state.signup
        if s is not None and s.click is not None:
            spam_all[s.click.tracking_code] += 1
            if s.signup_ts - s.click.ts > book.at(s.signup_ts).spam_long_delay_ms:
                spam_long[s.click.tracking_code] += 1
    for o in sorted(events.orders, key=lambda o: (o["ts"], o["event_id"])):
        state = states.get(o["account_id"])
        if state is not None:
            conv.add_order(state, _order_rec(o))
    ctx = conv.Context(conv.ConversionRules(binding_ms, refund_window_ms, model), book, promoters.as_of,
                       exclusions.owner)
    todo = sorted(((st.orders[oid].order.ts, oid, st) for st in states.values()
                   for oid in conv.candidates(st, ctx.rules)), key=lambda t: (t[0], t[1]))
    volume: dict[tuple[str, int], list[tuple[int, Decimal]]] = defaultdict(list)
    points: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    out = []
    for ts, oid, state in todo:
        assert state.signup is not None and state.signup.click is not None
        code = state.signup.click.tracking_code
        p = promoters.as_of(code, ts)
        pid, month = (p.promoter_id if p else ""), month_of(ts)
        live = conv.Live(spam_all[code], spam_long[code],
                         sum((a for t, a in volume[pid, month] if t < ts), Decimal(0)),
                         sum(v for m, v in points[pid].items() if m < month))
        c = conv.decide(state.orders[oid], state, ctx, live, oid == conv.first_order(state, ctx.rules), 0)
        if pid:
            volume[pid, month].append((ts, counted_amount(c)))
            points[pid][month] += c.points
        out.append(c)
    return out


@dataclass
class Diff:
    by_promoter: list[dict]
    by_reason: list[dict]
    changed_orders: int
    orders: int


def compare(base: Iterable[Conversion], cand: Iterable[Conversion]) -> Diff:
    """Per promoter and per reason: counts and commission under both rule books."""
    a = {c.order_id: c for c in base}
    b = {c.order_id: c for c in cand}
    promoters: dict[str, dict] = {}
    reasons: dict[str, dict] = {}

    def add(c: Conversion, side: str) -> None:
        row = promoters.setdefault(c.promoter_id or "(unknown)", {
            "promoter_id": c.promoter_id or "(unknown)", "approved_base": 0, "approved_new": 0,
            "held_base": 0, "held_new": 0, "commission_base": Decimal(0), "commission_new": Decimal(0)})
        if c.status in ("approved", "held"):
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


# -- reading stored events ---------------------------------------------------------------

_INT_TIMES = {"DateTime64": "int"}


def load(client: Any, until_ms: int | None = None) -> Events:
    """Deduplicated raw events from ClickHouse, up to event time `until_ms` (all if None)."""
    where, params = ("WHERE ts <= {until:Int64}", {"until": until_ms}) if until_ms is not None else ("", {})
    # ts is DateTime64(3): compare on its millisecond value
    where = where.replace("ts <=", "toUnixTimestamp64Milli(ts) <=")

    def rows(table: str) -> list[dict]:
        r = client.query(f"SELECT * FROM {table} FINAL {where}", parameters=params, query_formats=_INT_TIMES)
        return [dict(zip(r.column_names, row)) for row in r.result_rows]

    promoters = [Promoter(event_id=p["event_id"], ts=p["ts"], promoter_id=p["promoter_id"],
                          tracking_code=p["tracking_code"], level=p["level"], account_type=p["account_type"],
                          account_id=p["account_id"] or None, is_employee=p["is_employee"],
                          is_partner_staff=p["is_partner_staff"], verified=p["verified"],
                          realname_id_hash=p["realname_id_hash"] or None, email_hash=p["email_hash"] or None,
                          device_id=p["device_id"] or None, ip=p["ip_hash"] or None) for p in rows("promoters")]
    exclusions = [Exclusion(event_id=e["event_id"], ts=e["ts"], account_id=e["account_id"] or None,
                            email_domain=e["email_domain"] or None, owner=e["owner"], since=e["since"])
                  for e in rows("exclusions")]
    return Events(rows("clicks"), rows("signups"), rows("orders"), promoters, exclusions)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", required=True, help="candidate rule book (TOML, see docs/rules.md)")
    p.add_argument("--from", dest="from_", default=None, help="only orders at or after this day (YYYY-MM-DD)")
    p.add_argument("--to", default=None, help="only orders before this day (YYYY-MM-DD)")
    p.add_argument("--top", type=int, default=20, help="promoters to list (largest changes first)")
