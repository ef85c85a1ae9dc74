"""The review queue (`GET /api/reviews`) and review decisions (`POST /api/reviews`).

Pure like `streams.web.api`: `parse_*` raise only `BadRequest`, `*_query` return SQL plus
bound parameters, `shape_*` make JSON-ready dicts. A decision is built into a `Review`
event and checked by the same validation as the `reviews` topic (`schemas.validate.decode`)
before anything is published; its `event_id` is derived from the client's `request_id`, so a
retried click publishes the same event_id and only its first copy counts (`reviews_first`,
streams/logic/rules/reviews.py).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.validate import MAX_ID_LEN, MAX_REASON_LEN, Invalid, decode, valid_id
from streams.logic.overrides import OVERRIDE_SUFFIX
from streams.web.api import (
    Args,
    BadRequest,
    Query,
    check_names,
    money,
    parse_choice,
    parse_limit,
    parse_promoter,
    shown,
    single,
)

QUEUE_STATUSES = ("held", "approved", "rejected", "reversed")  # held (the queue) first: the default
QUEUE_LIMIT = (100, 1000)  # default, maximum
QUEUE_ARGS = ("reason", "promoter", "status", "limit")
DECISIONS = ("approve", "reject", "hold")
TARGETS = ("order_id", "promoter_id")
DECISION_FIELDS = (*TARGETS, "decision", "reason", "actor", "request_id")
MAX_BODY_BYTES = 16_384
EVENT_ID_PREFIX = "web-"
#: reason codes are snake_case words (docs/rules.md); anything else can match nothing
_REASON_CODE = re.compile(r"[a-z0-9_]{1,64}")

#: the queue's columns; times as epoch ms (0 = none)
QUEUE_COLUMNS = """order_id, revision, status, auto_status, reasons, promoter_id, tracking_code, campaign,
    account_id, product, amount, currency, toString(program_currency) AS program_currency, commission, bonus,
    rule_version,
    toUnixTimestamp64Milli(order_ts) AS order_ms, toUnixTimestamp64Milli(click_ts) AS click_ms,
    toUnixTimestamp64Milli(signup_ts) AS signup_ms, flood_clicks, farm_signups, exclusion_owner,
    identity_match, review, review_actor, review_reason, toUnixTimestamp64Milli(review_ts) AS review_ms,
    reviews, toUnixTimestamp64Milli(payable_at) AS payable_ms"""


@dataclass(frozen=True)
class QueueFilter:
    status: str
    reason: str | None = None
    promoter: str | None = None
    limit: int = QUEUE_LIMIT[0]

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "promoter": self.promoter, "limit": self.limit}


@dataclass(frozen=True)
class Decision:
    """A checked `POST /api/reviews` body."""

    target: str  # "order_id" | "promoter_id"
    target_id: str
    decision: str
    reason: str
    actor: str
    request_id: str

    @property
    def event_id(self) -> str:
        """The same for a retry of the same click: request_id, actor, target and decision."""
        parts = (self.request_id, self.actor, self.target, self.target_id, self.decision)
        return EVENT_ID_PREFIX + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# --- parameters ------------------------------------------------------------------------


def parse_reason(args: Args) -> str | None:
    raw = single(args, "reason")
    if raw is None:
        return None
    if not _REASON_CODE.fullmatch(raw):
        raise BadRequest(f"reason='{shown(raw)}' is not a reason code (lower-case letters, digits and _, "
                         f"e.g. high_value_review)")
    return raw


def parse_queue(args: Args) -> QueueFilter:
    check_names(args, QUEUE_ARGS)
    return QueueFilter(status=parse_choice(args, "status", QUEUE_STATUSES, QUEUE_STATUSES[0]),
                       reason=parse_reason(args), promoter=parse_promoter(args),
                       limit=parse_limit(args, QUEUE_LIMIT))


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def parse_decision(body: bytes) -> Decision:
    """The JSON body of `POST /api/reviews`: one of order_id / promoter_id, decision, actor,
    request_id and an optional reason; nothing else."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"the body has {len(body):,} bytes; at most {MAX_BODY_BYTES:,}")
    try:
        parsed = msgspec.json.decode(body)
    except Exception:  # DecodeError, RecursionError on deep nesting, ...
        raise BadRequest("the body is not valid JSON; send an object like "
                         '{"order_id": "...", "decision": "approve", "actor": "...", "request_id": "..."}') from None
    if not isinstance(parsed, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(parsed) - set(DECISION_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(shown(n) for n in unknown[:5])}; "
                         f"a decision has {', '.join(DECISION_FIELDS)}")
    targets = [(name, value) for name in TARGETS if (value := _text(parsed, name)) is not None]
    if len(targets) != 1:
        raise BadRequest("give exactly one of order_id (one order) or promoter_id (all his open conversions)")
    [(target, target_id)] = targets
    if target == "order_id" and target_id.endswith(OVERRIDE_SUFFIX):
        raise BadRequest(f"{shown(target_id)} is an override line: decide on its order "
                         f"{shown(target_id.removesuffix(OVERRIDE_SUFFIX))}, the line follows it")
    decision = _text(parsed, "decision")
    if decision not in DECISIONS:
        raise BadRequest(f"decision must be one of {', '.join(DECISIONS)}")
    checked = {name: _text(parsed, name) for name in ("actor", "request_id")}
    for name, value in [(target, target_id), *checked.items()]:
        if value is None or not valid_id(value):
            raise BadRequest(f"{name} must be 1 to {MAX_ID_LEN} printable characters")
    reason = _text(parsed, "reason") or ""
    if len(reason) > MAX_REASON_LEN or not reason.isprintable():
        raise BadRequest(f"reason must be at most {MAX_REASON_LEN} printable characters")
    return Decision(target, target_id, decision, reason, actor=str(checked["actor"]),
                    request_id=str(checked["request_id"]))


def review_message(d: Decision, now_ms: int, max_future_ms: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """(key, value, event) of the `reviews` message for `d`, validated as the topic validates
    it; BadRequest with the validation's reason when it would be dead-lettered."""
    fields: dict[str, Any] = {"event_id": d.event_id, "ts": now_ms, d.target: d.target_id,
                              "decision": d.decision, "reason": d.reason, "actor": d.actor}
    value = msgspec.json.encode(fields)
    event = decode("reviews", value, now_ms, max_future_ms)
    if isinstance(event, Invalid):
        raise BadRequest(f"the review would be refused by the reviews topic: {event.reason}")
    return d.target_id.encode(), value, msgspec.to_builtins(event)


# --- queries -----------------------------------------------------------------------------


def _where(f: QueueFilter, with_reason: bool = True) -> tuple[str, dict[str, Any]]:
    # override lines follow their recruit's order and are decided through it
    sql, params = "status = {status:String} AND override_of = ''", {"status": f.status}
    if with_reason and f.reason is not None:
        sql += " AND has(reasons, {reason:String})"
        params["reason"] = f.reason
    if f.promoter is not None:
        sql += " AND promoter_id = {promoter:String}"
        params["promoter"] = f.promoter
    return sql, params


def queue_queries(f: QueueFilter) -> dict[str, Query]:
    """The rows (newest order first), how many match, and the reasons among the status (for
    the reason filter: the promoter filter applies, the reason filter does not)."""
    where, params = _where(f)
    any_reason, reason_params = _where(f, with_reason=False)
    return {
        "rows": Query(f"SELECT {QUEUE_COLUMNS} FROM conversions_current WHERE {where}"
                      " ORDER BY order_ms DESC, order_id DESC LIMIT {limit:UInt32}", {**params, "limit": f.limit}),
        "total": Query(f"SELECT count() AS total FROM conversions_current WHERE {where}", params),
        "reasons": Query("SELECT reason, count() AS conversions FROM conversions_current ARRAY JOIN reasons AS reason"
                         f" WHERE {any_reason} GROUP BY reason ORDER BY conversions DESC, reason", reason_params),
    }


def review_columns_query() -> Query:
    """Whether `conversions_current` applies reviews yet (it gains `payable_at` with them)."""
    return Query("SELECT count() AS n FROM system.columns WHERE database = currentDatabase()"
                 " AND table = 'conversions_current' AND name IN ('payable_at', 'review', 'flood_clicks')")


# --- shaping -----------------------------------------------------------------------------


def _ms(value: Any) -> int | None:
    """Epoch ms, None for the zero time (no click, no review, not payable)."""
    return int(value) or None


def shape_queue_row(r: dict[str, Any]) -> dict[str, Any]:
    click, signup = _ms(r["click_ms"]), _ms(r["signup_ms"])
    return {
        "order_id": r["order_id"], "revision": int(r["revision"]), "status": r["status"],
        "auto_status": r["auto_status"], "reasons": list(r["reasons"]), "promoter_id": r["promoter_id"],
        "tracking_code": r["tracking_code"], "campaign": r["campaign"], "account_id": r["account_id"],
        "product": r["product"], "currency": r["currency"], "amount": money(r["amount"]),
        "program_currency": r["program_currency"],  # of commission, bonus and earning
        "commission": money(r["commission"]), "bonus": money(r["bonus"]),
        "earning": money(r["commission"] + r["bonus"]), "rule_version": r["rule_version"],
        "order_ts": int(r["order_ms"]), "click_ts": click, "signup_ts": signup,
        "payable_at": _ms(r["payable_ms"]),
        "evidence": {
            "click_to_signup_ms": signup - click if click is not None and signup is not None else None,
            "flood_clicks": int(r["flood_clicks"]), "farm_signups": int(r["farm_signups"]),
            "exclusion_owner": r["exclusion_owner"], "identity_match": r["identity_match"],
        },
        "last_review": {"decision": r["review"], "actor": r["review_actor"], "reason": r["review_reason"],
                        "ts": _ms(r["review_ms"]), "decisions": int(r["reviews"])},
    }


def shape_queue(f: QueueFilter, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        **f.describe(), "available": True,
        "total": int(results["total"][0]["total"]),
        "reasons": [{"reason": r["reason"], "conversions": int(r["conversions"])} for r in results["reasons"]],
        "rows": [shape_queue_row(r) for r in results["rows"]],
    }
