"""`generate`: build the traffic, lay it out in a realistic delivery order, attach its truth."""
from __future__ import annotations

import bisect
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from schemas.units import DAY_MS
from streams.dev.traffic.fraud import add_fraud, exclusion_after_orders
from streams.dev.traffic.honest import Ev, Gen
from streams.dev.traffic.model import (
    FRAUD_COUNTS,
    REFERENCE_TOPICS,
    TOPICS,
    TRAFFIC_TOPICS,
    AccountTruth,
    Counts,
    Traffic,
    TrafficSpec,
    Truth,
)
from streams.dev.traffic.oracle import compute_truth, expected_conversions


def _encode(e: Ev) -> bytes:
    if e.iso is None:
        return msgspec.json.encode(e.body)
    iso = datetime.fromtimestamp(e.ts / 1000, e.iso).isoformat(timespec="milliseconds")
    return msgspec.json.encode({**e.body, "ts": iso.replace("+00:00", "Z")})


def _malformed(g: Gen, i: int) -> tuple[str, str | None, bytes]:
    """One bad message of a few kinds, in rotation: each must be dead-lettered."""
    r, kind = g.r, i % 6
    ts = r.randint(g.start, g.end)
    eid, vid, code = g.eid(), f"v-{g.hex(16)}", g.pick_promoter().code if g.promoters else "T-XXXXXX"
    if kind == 0:  # not JSON at all (a truncated object)
        return "clicks", vid, f'{{"event_id": "{eid}", "ts": {ts}, "tracking_code": "{code}", "visi'.encode()
    if kind == 1:  # required field missing
        return "signups", vid, msgspec.json.encode({"event_id": eid, "ts": ts, "visitor_id": vid})
    if kind == 2:  # mistyped amount
        acc = f"acc-{g.hex(12)}"
        return "orders", acc, msgspec.json.encode({
            "event_id": eid, "ts": ts, "order_id": f"ord-{g.hex(12)}", "account_id": acc,
            "product": "cloud-server-basic", "amount": "sixty-nine dollars", "currency": "USD",
            "status": "paid"})
    if kind == 3:  # epoch seconds instead of milliseconds
        return "clicks", vid, msgspec.json.encode(
            {"event_id": eid, "ts": ts // 1000, "tracking_code": code, "visitor_id": vid})
    if kind == 4:  # far in the future (10 days after "now", so also at real produce time)
        return "clicks", vid, msgspec.json.encode(
            {"event_id": eid, "ts": g.end + 10 * DAY_MS, "tracking_code": code, "visitor_id": vid})
    naive = datetime.fromtimestamp(ts / 1000, UTC).replace(tzinfo=None).isoformat()
    return "signups", vid, msgspec.json.encode(  # ISO-8601 without a timezone
        {"event_id": eid, "ts": naive, "account_id": f"acc-{g.hex(12)}", "visitor_id": vid})


def generate(spec: TrafficSpec) -> Traffic:
    """Build the traffic, its delivery order and its ground truth. Deterministic per seed."""
    _check(spec)
    g = Gen(spec)
    r = g.r
    g.make_promoters()
    for _ in range(spec.visitors):
        if r.random() < spec.signup_rate:
            g.referred_visitor()
        else:
            g.browsing_visitor()
    for _ in range(round(spec.visitors * spec.organic_rate)):
        g.organic_signup()
    for _ in range(round(spec.visitors * spec.existing_customers)):
        g.existing_customer()
    for _ in range(round(spec.visitors * spec.coupon_rate)):
        g.coupon_customer()
    if spec.fraud:
        add_fraud(g)
    accounts = compute_truth(g.events, spec)
    excluded = g.account_exclusions(accounts) if spec.fraud else {}
    probe = _exclusion_probe(g, accounts) if spec.fraud else None
    if probe is not None:
        excluded[probe] = "channel_partner"
    g.fx_rates()
    expected = expected_conversions(g.events, accounts, _order_labels(g, accounts))

    refs = sorted((e for e in g.events if e.topic in REFERENCE_TOPICS), key=lambda e: (e.ts, e.body["event_id"]))
    traffic = sorted((e for e in g.events if e.topic in TRAFFIC_TOPICS), key=lambda e: (e.ts, e.body["event_id"]))
    # late only where it cannot change the truth: clicks of visitors who never sign up,
    # orders of accounts that are not attributed; never an event a fraud count depends on
    attributed = {a.account_id for a in accounts.values() if a.attributed}
    candidates = [
        i for i, e in enumerate(traffic)
        if ((e.topic == "clicks" and e.body["visitor_id"] not in g.signup_visitors)
            or (e.topic == "orders" and e.body["account_id"] not in attributed))
        and e.body["event_id"] not in g.protected
    ]
    late = set(r.sample(candidates, min(len(candidates), round(spec.late * len(traffic)))))

    # on-time deliveries: key = ts + delay, with delay <= max_delay (< allowed lateness)
    dmax = spec.max_delay
    jitter = min(2_000, dmax)
    ontime: list[tuple[int, int, Ev, str, bytes]] = []  # (deliver_at, seq, event, flag, value)
    n_ooo = 0
    late_evs = []
    for i, e in enumerate(traffic):
        if i in late:
            late_evs.append(e)
            continue
        value = _encode(e)
        if r.random() < spec.out_of_order and e.body["event_id"] not in g.protected:
            key, flag = e.ts + r.randint(0, dmax), "delayed"
            n_ooo += 1
        else:
            key, flag = e.ts + r.randint(0, jitter), "on_time"
        ontime.append((key, len(ontime), e, flag, value))
    n_dup = min(len(ontime), round(spec.duplicates * len(traffic)))
    for j in sorted(r.sample(range(len(ontime)), n_dup)):
        key, _, e, _, value = ontime[j]
        ontime.append((r.randint(key, e.ts + dmax), len(ontime), e, "duplicate", value))  # same bytes
    ontime.sort(key=lambda x: (x[0], x[1]))

    # late deliveries: right after the first event whose ts exceeds ts + lag, lag 4-12x the
    # lateness (the pipeline's watermark follows the slowest kind per partition: sparse
    # signups hold it back by hours, so a lag just above the lateness would rarely be late)
    prefix_max: list[int] = []
    m = -(2**62)
    for x in ontime:
        m = max(m, x[2].ts)
        prefix_max.append(m)
    inserts: dict[int, list[tuple[Ev, str]]] = {}
    for e in late_evs:
        lag = r.randint(4 * spec.allowed_lateness_ms, 12 * spec.allowed_lateness_ms)
        i = bisect.bisect_right(prefix_max, e.ts + lag)
        if i == len(prefix_max):
            i = bisect.bisect_right(prefix_max, e.ts + spec.allowed_lateness_ms)
        if i == len(prefix_max):  # too close to the end to be late: deliver it on time
            inserts.setdefault(bisect.bisect_right(prefix_max, e.ts) - 1, []).append((e, "on_time"))
        else:
            inserts.setdefault(i, []).append((e, "late"))
    malformed = [(r.randint(-1, len(ontime) - 1), _malformed(g, k)) for k in range(spec.malformed)]
    bad_at: dict[int, list[tuple[str, str | None, bytes]]] = {}
    for pos, msg in sorted(malformed, key=lambda x: x[0]):
        bad_at.setdefault(pos, []).append(msg)

    promoters = {e.body["tracking_code"]: dict(e.body) for e in refs if e.topic == "promoters"}  # latest wins
    actors: dict[str, frozenset[str]] = {}
    for labels in (g.account_labels, g.code_labels, g.actors):
        for who, patterns in labels.items():
            actors[who] = actors.get(who, frozenset()) | patterns
    fx: dict[str, list[tuple[int, Decimal]]] = {}
    for e in refs:
        if e.topic == "fx_rates":
            fx.setdefault(e.body["currency"], []).append((e.body["effective_from"], Decimal(e.body["rate"])))
    truth = Truth(accounts, promoters, excluded, expected, actors, {c: sorted(v) for c, v in fx.items()})
    out = Traffic(spec, [], [], [], [], [], truth, Counts({}, {}, {}, {}, {}, n_ooo))
    first = ontime[0][0] if ontime else spec.start_ms
    for e in refs:  # all first, even versions dated inside the traffic (looked up by time)
        _add(out, e.topic, e.key, _encode(e), min(e.ts, first), e.ts, e.body["event_id"], "reference")

    def extras(i: int, at: int) -> None:
        for e, flag in inserts.get(i, ()):
            _add(out, e.topic, e.key, _encode(e), max(at, e.ts), e.ts, e.body["event_id"], flag)
        for topic, key, value in bad_at.get(i, ()):
            _add(out, topic, key, value, at, None, None, "malformed")

    extras(-1, ontime[0][0] if ontime else spec.start_ms)
    for i, (key, _, e, flag, value) in enumerate(ontime):
        _add(out, e.topic, e.key, value, key, e.ts, e.body["event_id"], flag)
        extras(i, key)
    _count(out)
    return out


def _check(spec: TrafficSpec) -> None:
    if spec.promoters < 1 or spec.visitors < 0 or spec.days <= 0 or spec.malformed < 0:
        raise ValueError("need promoters >= 1, visitors >= 0, days > 0 and malformed >= 0")
    for name in ("signup_rate", "organic_rate", "existing_customers", "out_of_order", "late",
                 "duplicates", "iso_ts"):
        if not 0 <= getattr(spec, name) <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
    if not (len(spec.currency) == 3 and spec.currency.isascii() and spec.currency.isalpha()
            and spec.currency.isupper()) or (spec.eur and spec.currency == "EUR"):
        raise ValueError("currency must be an ISO-4217 code like USD, and not EUR when eur is on")
    if spec.allowed_lateness_ms < 1 or spec.time_scale < 1:
        raise ValueError("allowed_lateness_ms must be >= 1 and time_scale >= 1")
    for pattern, n in (spec.fraud_counts or {}).items():
        if pattern not in FRAUD_COUNTS:
            raise ValueError(f"unknown fraud pattern {pattern!r}; known: {', '.join(FRAUD_COUNTS)}")
        if n < 0:
            raise ValueError(f"fraud count of {pattern} must be >= 0")


def _order_labels(g: Gen, accounts: dict[str, AccountTruth]) -> dict[str, frozenset[str]]:
    """order_id -> patterns: those of its account, its own, and its promoter's code."""
    out = {}
    for a in accounts.values():
        for oid in a.orders:
            out[oid] = frozenset(g.account_labels.get(a.account_id, set()) | g.order_labels.get(oid, set())
                                 | g.code_labels.get(a.tracking_code or "", set()))
    return out


def _exclusion_probe(g: Gen, accounts: dict[str, AccountTruth]) -> str | None:
    """An honest account owned by a channel partner only after its last order (precision)."""
    paid_ts: dict[str, list[int]] = {}
    for e in g.events:
        if e.topic == "orders" and e.body["status"] == "paid":
            paid_ts.setdefault(e.body["account_id"], []).append(e.ts)
    return exclusion_after_orders(g, paid_ts, g.honest_accounts(accounts))


def _add(t: Traffic, topic: str, key: str | None, value: bytes, at: int, ts: int | None,
         eid: str | None, flag: str) -> None:
    t.messages.append((topic, key.encode() if key is not None else None, value))
    t.deliver_at.append(max(at, t.deliver_at[-1]) if t.deliver_at else at)
    t.ts.append(ts)
    t.event_ids.append(eid)
    t.flags.append(flag)


def _count(t: Traffic) -> None:
    c = t.counts
    for d in (c.messages, c.events, c.late, c.duplicates, c.malformed):
        d.update(dict.fromkeys(TOPICS, 0))
    for (topic, _, _), flag in zip(t.messages, t.flags):
        c.messages[topic] += 1
        if flag == "malformed":
            c.malformed[topic] += 1
        elif flag == "duplicate":
            c.duplicates[topic] += 1
        else:
            c.events[topic] += 1
            if flag == "late":
                c.late[topic] += 1
