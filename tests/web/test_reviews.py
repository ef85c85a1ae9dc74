"""The review queue, review decisions and payout totals: exact figures against a real chdb
engine on a hand-made dataset, the parsers (malformed input is a 400, never a 500), and the
HTTP routes on a real Faust app's web server (POST needs a configured and sent token).

`conversions_current` applies reviews in the worker (streams/logic/rules/views.py); here it is a
view over the stored conversions plus a table of the review columns, so the queue and the
totals are checked on values this module chooses.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import faust
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Conversion
from sinks.clickhouse import ClickHouseWriter
from sinks.tables import TABLES
from streams.config import Settings
from streams.web import balances, reviews
from streams.web.api import BadRequest
from streams.web.review_api import PublishFailed, ReviewApi
from streams.web.routes import register
from tests.sinks import write_records
from tests.web.test_api import sink_with

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000
AS_OF = T0 + 40 * D  # event time "now": the newest order, lateness 0 below
NOW = T0 + 41 * D  # wall clock of the API
TOKEN = "rev13w-t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


# --- the dataset ---------------------------------------------------------------------------


@dataclass
class Row:
    """A conversion as conversions_current shows it after reviews."""

    order: str
    status: str
    promoter: str
    order_ts: int
    commission: str = "0"
    bonus: str = "0"
    currency: str = "USD"
    reasons: tuple[str, ...] = ()
    payable_at: int = 0
    review: tuple[str, str, str, int] = ("", "", "", 0)  # decision, actor, reason, ts
    reviews: int = 0
    auto_status: str = ""  # '' = status
    click_ts: int | None = None  # None: 20 min before the signup; 0: no click
    evidence: dict[str, Any] = field(default_factory=dict)


ROWS = [
    # the queue: held, newest first h3, a5, h2, h1
    Row("h1", "held", "P1", T0 + H, "9000", "50", reasons=("high_value_review",), click_ts=T0 + H - 2 * H,
        evidence={"flood_clicks": 3, "farm_signups": 1}),
    Row("h2", "held", "P2", T0 + 2 * H, "4", reasons=("click_spamming",), click_ts=0),
    Row("h3", "held", "P1", T0 + 3 * H, "6", reasons=("manual_hold",), review=("hold", "alice", "check the docs",
        T0 + 4 * H), reviews=1, auto_status="approved", evidence={"identity_match": "ip", "exclusion_owner": ""}),
    Row("a5", "held", "P1", T0 + 5 * D, "40", reasons=("high_value_review", "click_spamming")),
    # payouts: approved and matured, booked or not; pending; reversed after being paid
    Row("a1", "approved", "P1", T0, "10", "5", payable_at=T0 + 30 * D),
    Row("a2", "approved", "P1", T0 + S, "20", payable_at=T0 + 35 * D),
    Row("a3", "approved", "P1", T0 + 2 * S, "7", payable_at=T0 + 35 * D),
    Row("a4", "approved", "P1", T0 + 20 * D, "30", payable_at=T0 + 50 * D),
    Row("a6", "reversed", "P1", T0 + 3 * S, reasons=("refunded",)),
    Row("a7", "rejected", "P2", T0 + 4 * S, reasons=("manual_rejected",), review=("reject", "bob", "", T0 + D),
        reviews=2, auto_status="held"),
    Row("a8", "approved", "P1", T0 + 5 * S, "8", payable_at=T0 + 10 * D),  # its batch failed: payable again
    Row("a9", "approved", "P2", T0 + 6 * S, "100", payable_at=AS_OF),  # matured exactly now
    Row("e1", "approved", "P1", T0 + 7 * S, "3.3333", currency="EUR", payable_at=T0 + 31 * D),
    Row("n1", "approved", "", T0 + 8 * S, payable_at=T0 + 30 * D),  # no promoter: never paid
]

# batch_id, attempt, status; lines: (batch, attempt, promoter, currency, order, amount); payouts: amounts
BATCHES = [("B1", "x1", "paid"), ("B2", "x2", "pending"), ("B3", "x3", "failed")]
LINES = [("B1", "x1", "P1", "USD", "a2", "20"), ("B1", "x1", "P1", "USD", "a6", "12"),
         ("B1", "x0", "P1", "USD", "a1", "999"),  # a run killed half-way: its attempt is not the batch's
         ("B2", "x2", "P1", "USD", "a3", "7"), ("B3", "x3", "P1", "USD", "a8", "5")]
PAYOUTS = [("B1", "x1", "P1", "USD", "32"), ("B2", "x2", "P1", "USD", "7"), ("B3", "x3", "P1", "USD", "5")]

REVIEW_COLUMNS = [("order_id", "String"), ("payable_at", "DateTime64(3, 'UTC')"), ("review", "String"),
                  ("review_actor", "String"), ("review_reason", "String"), ("review_ts", "DateTime64(3, 'UTC')"),
                  ("reviews", "UInt64"), ("auto_status", "String")]
FIXTURE_VIEW = """SELECT c.*, r.payable_at AS payable_at, r.review AS review, r.review_actor AS review_actor,
    r.review_reason AS review_reason, r.review_ts AS review_ts, r.reviews AS reviews,
    if(r.auto_status = '', c.status, r.auto_status) AS auto_status
FROM conversions AS c FINAL LEFT JOIN review_fixture AS r ON c.order_id = r.order_id"""


def conversion(r: Row) -> Conversion:
    signup = r.order_ts - H
    click = signup - 20 * M if r.click_ts is None else r.click_ts
    return Conversion(
        order_id=r.order, revision=1 + r.reviews, status=r.status, reasons=list(r.reasons), promoter_id=r.promoter,
        tracking_code=f"T-{r.promoter}", campaign="spring", account_id=f"acc-{r.order}", visitor_id=f"v-{r.order}",
        click_event_id="c" if click else "", click_ts=click, signup_event_id=f"s-{r.order}", signup_ts=signup,
        order_event_id=f"e-{r.order}", order_ts=r.order_ts, cart_id="", product="pro", category="saas",
        amount=Decimal(60000 if "high_value_review" in r.reasons else 100), discount=Decimal(0),
        currency=r.currency, order_status="paid", renewal=False, attribution_model="last_click",
        attribution_final=True, decided_at=r.order_ts + S, commission=Decimal(r.commission), bonus=Decimal(r.bonus),
        rule_version="default", **r.evidence)


def load(client: Any) -> None:
    write_records(ClickHouseWriter(client), [conversion(r) for r in ROWS])
    client.command(f"CREATE TABLE review_fixture ({', '.join(f'{n} {t}' for n, t in REVIEW_COLUMNS)})"
                   " ENGINE = MergeTree ORDER BY order_id")
    client.insert("review_fixture", [(r.order, r.payable_at, *r.review[:3], r.review[3], r.reviews, r.auto_status)
                                     for r in ROWS], column_names=[n for n, _ in REVIEW_COLUMNS])
    client.command(f"CREATE OR REPLACE VIEW conversions_current AS {FIXTURE_VIEW}")
    insert(client, "orders", [("last", AS_OF)], ("event_id", "ts"))
    insert(client, "payout_batches", [(b, a, s, T0 + 39 * D) for b, a, s in BATCHES],
           ("batch_id", "attempt", "status", "created_at"))
    insert(client, "payout_lines", [(b, a, p, c, o, Decimal(x)) for b, a, p, c, o, x in LINES],
           ("batch_id", "attempt", "promoter_id", "currency", "order_id", "amount"))
    insert(client, "payouts", [(b, a, p, c, Decimal(x)) for b, a, p, c, x in PAYOUTS],
           ("batch_id", "attempt", "promoter_id", "currency", "amount"))


def insert(client: Any, table: str, rows: list[tuple[Any, ...]], columns: tuple[str, ...]) -> None:
    types = dict(zip(TABLES[table].insert_columns, TABLES[table].insert_types))
    client.insert(table, rows, column_names=list(columns), column_type_names=[types[c] for c in columns])


@pytest.fixture(scope="module")
def full(database: Any) -> Any:
    client = database("reviews_full")
    load(client)
    return client


@pytest.fixture(scope="module")
def before_reviews(database: Any) -> Any:
    """conversions_current as it was before it applied reviews (no payable_at, review columns)."""
    client = database("reviews_before")
    client.command("CREATE OR REPLACE VIEW conversions_current AS SELECT * FROM conversions FINAL")
    return client


def api_for(client: Any, publish: Any = None) -> ReviewApi:
    return ReviewApi(sink_with(ClickHouseWriter(client)).read, publish, lateness_ms=0, clock=lambda: NOW)


def call(client: Any, endpoint: str, **params: str) -> dict[str, Any]:
    return asyncio.run(api_for(client).endpoints()[endpoint]({k: [v] for k, v in params.items()}))


# --- the queue -------------------------------------------------------------------------------


@dataclass
class QueueCase:
    name: str
    params: dict[str, str]
    orders: list[str]
    total: int
    reasons: list[tuple[str, int]] = field(default_factory=list)  # among the status, for the filter


HELD_REASONS = [("click_spamming", 2), ("high_value_review", 2), ("manual_hold", 1)]
QUEUE_CASES = [
    QueueCase("held, newest first", {}, ["a5", "h3", "h2", "h1"], 4, HELD_REASONS),
    QueueCase("by reason", {"reason": "high_value_review"}, ["a5", "h1"], 2, HELD_REASONS),
    QueueCase("by promoter", {"promoter": "P2"}, ["h2"], 1, [("click_spamming", 1)]),
    QueueCase("by reason and promoter", {"reason": "click_spamming", "promoter": "P1"}, ["a5"], 1,
              [("high_value_review", 2), ("click_spamming", 1), ("manual_hold", 1)]),
    QueueCase("limit keeps the total", {"limit": "1"}, ["a5"], 4, HELD_REASONS),
    QueueCase("a reason nobody has", {"reason": "velocity"}, [], 0, HELD_REASONS),
    QueueCase("rejected", {"status": "rejected"}, ["a7"], 1, [("manual_rejected", 1)]),
    QueueCase("nobody", {"promoter": "P404"}, [], 0),
]


@pytest.mark.parametrize("case", QUEUE_CASES, ids=lambda c: c.name)
def test_queue(full: Any, case: QueueCase) -> None:
    got = call(full, "reviews", **case.params)
    assert [r["order_id"] for r in got["rows"]] == case.orders
    assert (got["total"], got["available"]) == (case.total, True)
    assert [(r["reason"], r["conversions"]) for r in got["reasons"]] == case.reasons


def test_a_queue_row_carries_its_evidence_and_last_review(full: Any) -> None:
    rows = {r["order_id"]: r for r in call(full, "reviews")["rows"]}
    assert rows["h1"] == {
        "order_id": "h1", "revision": 1, "status": "held", "auto_status": "held", "reasons": ["high_value_review"],
        "promoter_id": "P1", "tracking_code": "T-P1", "campaign": "spring", "account_id": "acc-h1", "product": "pro",
        "currency": "USD", "program_currency": "USD", "amount": "60000.0000", "commission": "9000.0000", "bonus": "50.0000",
        "earning": "9050.0000", "rule_version": "default", "order_ts": T0 + H, "click_ts": T0 - H,
        "signup_ts": T0, "payable_at": None,
        "evidence": {"click_to_signup_ms": H, "flood_clicks": 3, "farm_signups": 1, "exclusion_owner": "",
                     "identity_match": ""},
        "last_review": {"decision": "", "actor": "", "reason": "", "ts": None, "decisions": 0},
    }
    assert rows["h2"]["click_ts"] is None and rows["h2"]["evidence"]["click_to_signup_ms"] is None  # no click
    assert rows["h3"]["last_review"] == {"decision": "hold", "actor": "alice", "reason": "check the docs",
                                         "ts": T0 + 4 * H, "decisions": 1}
    assert (rows["h3"]["auto_status"], rows["h3"]["evidence"]["identity_match"]) == ("approved", "ip")


def test_values_travel_as_parameters_only(full: Any) -> None:
    hostile = "P1' OR 1=1 --"
    queries = reviews.queue_queries(reviews.QueueFilter("held", "high_value_review", hostile))
    assert all(hostile not in q.sql for q in queries.values())
    assert call(full, "reviews", promoter=hostile)["rows"] == []
    assert call(full, "payouts/summary", promoter=hostile)["currencies"] == []


# --- payout totals ---------------------------------------------------------------------------


def money_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "currency"}


def test_summary(full: Any) -> None:
    got = call(full, "payouts/summary")
    assert (got["as_of"], got["available"], got["batches"]) == (AS_OF, True, {"pending": 1, "paid": 1, "failed": 1})
    by = {c["currency"]: money_of(c) for c in got["currencies"]}
    assert by["USD"] == {
        "payable": "123.0000", "payable_orders": 3,  # a1 15, a8 8 (its batch failed), a9 100 (matured now)
        "clawback": "-12.0000", "clawback_orders": 1,  # a6 reversed after it was paid
        "pending": "30.0000", "pending_conversions": 1,  # a4
        "held": "9100.0000", "held_conversions": 4,  # h1 9050, h2 4, h3 6, a5 40
        "in_pending_batches": "7.0000", "pending_lines": 1, "paid": "32.0000", "paid_lines": 2,
        "to_pay": "7.0000", "paid_out": "32.0000",
    }
    assert by["EUR"]["payable"] == "3.3333" and by["EUR"]["paid"] == "0.0000"
    assert [c["currency"] for c in got["currencies"]] == ["EUR", "USD"]


def test_summary_of_one_promoter(full: Any) -> None:
    got = call(full, "payouts/summary", promoter="P2")
    [usd] = got["currencies"]
    assert (usd["currency"], usd["payable"], usd["held"], usd["paid"], usd["clawback"]) == (
        "USD", "100.0000", "4.0000", "0.0000", "0.0000")
    assert got["promoter"] == "P2"


@pytest.mark.parametrize("orders,newest,lateness,as_of", [
    (0, 0, 0, 0), (3, T0, 0, T0), (3, T0, H, T0 - H), (1, 5, H, 0),
])
def test_event_now(orders: int, newest: int, lateness: int, as_of: int) -> None:
    assert balances.event_now(orders, newest, lateness) == as_of


def test_lateness_holds_back_maturity(full: Any) -> None:
    api = ReviewApi(sink_with(ClickHouseWriter(full)).read, lateness_ms=S, clock=lambda: NOW)
    got = asyncio.run(api.summary({}))
    usd = next(c for c in got["currencies"] if c["currency"] == "USD")
    assert got["as_of"] == AS_OF - S and usd["payable"] == "23.0000" and usd["pending"] == "130.0000"  # a9 not yet


def test_before_reviews_the_endpoints_say_unavailable(before_reviews: Any) -> None:
    queue = call(before_reviews, "reviews")
    assert (queue["available"], queue["rows"], queue["total"]) == (False, [], 0)
    summary = call(before_reviews, "payouts/summary")
    assert (summary["available"], summary["currencies"]) == (False, [])


# --- parameters ------------------------------------------------------------------------------


@dataclass
class BadCase:
    endpoint: str
    params: dict[str, list[str]]
    message: str


BAD_CASES = [
    BadCase("reviews", {"status": ["paid"]}, "status='paid' is not one of held, approved, rejected, reversed"),
    BadCase("reviews", {"reason": ["High value"]}, "is not a reason code"),
    BadCase("reviews", {"reason": ["x" * 65]}, "is not a reason code"),
    BadCase("reviews", {"reason": ["a", "b"]}, "given 2 times"),
    BadCase("reviews", {"promoter": ["P\n1"]}, "printable"),
    BadCase("reviews", {"limit": ["1001"]}, "from 1 to 1000"),
    BadCase("reviews", {"limit": ["²"]}, "from 1 to 1000"),
    BadCase("reviews", {"from": ["0"]}, "unknown parameter(s) from"),
    BadCase("payouts/summary", {"status": ["held"]}, "unknown parameter(s) status"),
    BadCase("payouts/summary", {"promoter": ["x" * 129]}, "1 to 128 printable"),
]


def parse_step(endpoint: str, params: dict[str, list[str]]) -> BadRequest | None:
    """None when the parameters pass and a query would run, else the BadRequest; anything
    else propagates (it would be a 503)."""
    class Parsed(Exception):
        pass

    async def runner(fn: Any) -> Any:
        raise Parsed

    api = ReviewApi(runner, clock=lambda: NOW)
    api._available = True
    try:
        asyncio.run(api.endpoints()[endpoint](params))
    except Parsed:
        return None
    except BadRequest as exc:
        assert len(str(exc)) < 400, "an error message quotes a bounded part of the value"
        return exc
    raise AssertionError("no query ran and no BadRequest")


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: f"{c.endpoint}-{c.message[:24]}")
def test_bad_parameters_are_rejected_before_any_query(case: BadCase) -> None:
    error = parse_step(case.endpoint, case.params)
    assert error is not None and case.message in str(error)


@pytest.mark.parametrize("params", [{}, {"status": ["approved"]}, {"reason": ["manual_hold"]},
                                    {"promoter": ["プロモーター"], "limit": ["1000"]}, {"reason": [""]}])
def test_good_parameters_pass(params: dict[str, list[str]]) -> None:
    assert parse_step("reviews", params) is None


QUEUE_PARAMS = {"reviews": list(reviews.QUEUE_ARGS), "payouts/summary": list(balances.SUMMARY_ARGS)}
HOSTILE = ["\x00", "\udce9", "\ud800", "\u202e5", "\t", "9" * 5000, "é" * 10000, "٣", "HELD", "held\x00"]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(QUEUE_PARAMS)), st.data())
def test_any_text_for_any_parameter_is_parsed_or_a_bad_request(endpoint: str, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(QUEUE_PARAMS[endpoint]))
    parse_step(endpoint, {name: [data.draw(st.text() | st.sampled_from(HOSTILE))]})


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(QUEUE_PARAMS)),
       st.dictionaries(st.text(max_size=12), st.lists(st.text(), max_size=3), max_size=5))
def test_any_query_string_is_parsed_or_a_bad_request(endpoint: str, params: dict[str, list[str]]) -> None:
    parse_step(endpoint, params)


# --- decisions -------------------------------------------------------------------------------

GOOD = {"order_id": "o-1", "decision": "approve", "reason": "docs checked", "actor": "alice", "request_id": "r-1"}


def body(**changes: Any) -> bytes:
    fields = {**GOOD, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


@dataclass
class DecisionCase:
    name: str
    raw: bytes
    error: str | None = None  # substring of the BadRequest; None: accepted


DECISION_CASES = [
    DecisionCase("one order", body()),
    DecisionCase("a promoter", body(order_id=..., promoter_id="P1", decision="hold")),
    DecisionCase("reason optional", body(reason=...)),
    DecisionCase("empty other target", body(promoter_id="")),
    DecisionCase("null other target", body(promoter_id=None, decision="reject")),
    DecisionCase("not JSON", b"decision=approve", "not valid JSON"),
    DecisionCase("empty", b"", "not valid JSON"),
    DecisionCase("invalid UTF-8", b'{"order_id": "\xff"}', "not valid JSON"),
    DecisionCase("deeply nested", b"[" * 5_000 + b"]" * 5_000, "not valid JSON"),
    DecisionCase("too large", body(reason="x" * 20_000), "at most 16,384"),
    DecisionCase("an array", b"[1, 2]", "a JSON object"),
    DecisionCase("unknown field", body(amount="5"), "unknown field(s) amount"),
    DecisionCase("both targets", body(promoter_id="P1"), "exactly one of order_id"),
    DecisionCase("no target", body(order_id=...), "exactly one of order_id"),
    DecisionCase("no decision", body(decision=...), "decision must be one of approve, reject, hold"),
    DecisionCase("unknown decision", body(decision="pay"), "decision must be one of"),
    DecisionCase("decision not a string", body(decision=1), "decision must be a string"),
    DecisionCase("no actor", body(actor=...), "actor must be 1 to 128"),
    DecisionCase("actor with a newline", body(actor="al\nice"), "actor must be"),
    DecisionCase("actor too long", body(actor="a" * 129), "actor must be"),
    DecisionCase("no request id", body(request_id=...), "request_id must be"),
    DecisionCase("request id a number", body(request_id=5), "request_id must be a string"),
    DecisionCase("order id with a bidi override", body(order_id="o\u202e1"), "order_id must be"),
    DecisionCase("reason with a newline", body(reason="a\nb"), "reason must be"),
    DecisionCase("reason too long", body(reason="x" * 501), "reason must be at most 500"),
    DecisionCase("reason not a string", body(reason=["x"]), "reason must be a string"),
]


@pytest.mark.parametrize("case", DECISION_CASES, ids=lambda c: c.name)
def test_parse_decision(case: DecisionCase) -> None:
    if case.error is None:
        d = reviews.parse_decision(case.raw)
        key, value, event = reviews.review_message(d, NOW, H)
        assert key == d.target_id.encode() and event["event_id"] == d.event_id and event["ts"] == NOW
        assert msgspec.json.decode(value) == {k: v for k, v in event.items() if v is not None}
        return
    with pytest.raises(BadRequest) as info:
        reviews.parse_decision(case.raw)
    assert case.error in str(info.value)


def test_the_event_id_is_the_same_for_a_retry_and_differs_otherwise() -> None:
    first = reviews.parse_decision(body()).event_id
    assert first.startswith("web-") and len(first) == 4 + 64
    assert reviews.parse_decision(body(reason="other words")).event_id == first  # a retry, edited or not
    for change in ({"request_id": "r-2"}, {"actor": "bob"}, {"decision": "reject"}, {"order_id": "o-2"},
                   {"order_id": ..., "promoter_id": "o-1"}):
        assert reviews.parse_decision(body(**change)).event_id != first, change


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(st.sampled_from([*reviews.DECISION_FIELDS, "x"]),
                                                 st.none() | st.text(max_size=140) | st.integers()
                                                 | st.sampled_from(reviews.DECISIONS)).map(
    lambda d: json.dumps(d).encode()))
def test_any_body_is_a_decision_or_a_bad_request(raw: bytes) -> None:
    try:
        d = reviews.parse_decision(raw)
    except BadRequest:
        return
    reviews.review_message(d, NOW, H)  # what the parser accepts, the topic's validation accepts


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None


def http(client: Any, token: str, requests: list[Request], publish: Any = None) -> list[tuple[int, Any]]:
    """Run requests against the routes `register` adds to a real Faust app's web server."""
    async def go() -> list[tuple[int, Any]]:
        app = faust.App(f"reviews-web-{len(token)}", broker="kafka://127.0.0.1:1", web_enabled=True)
        register(app, sink_with(ClickHouseWriter(client)), Settings(api_token=token), publish=publish)
        out = []
        async with TestClient(TestServer(app.web.web_app)) as session:
            for r in requests:
                response = await session.request(r.method, r.path, headers=r.headers, data=r.data)
                text = await response.text()
                assert response.status == 405 or response.headers["Content-Type"].startswith("application/json")
                out.append((response.status, json.loads(text) if response.status != 405 else text))
        return out

    return asyncio.run(go())


class Broker:
    """A fake `publish`: records messages; `fail` makes it raise."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.fail = fail

    async def __call__(self, key: bytes, value: bytes) -> Any:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((key, value))
        return asyncio.sleep(0)  # like Faust's send: an awaitable delivery


@dataclass
class PostCase:
    name: str
    token: str
    request: Request
    status: int
    check: str = ""  # substring of the error message
    published: int = 0


POST = "/api/reviews"
POST_CASES = [
    PostCase("no token configured", "", Request("POST", POST, BEARER, body()), 403, "set REFSTREAM_API_TOKEN"),
    PostCase("no token configured, none sent", "", Request("POST", POST, {}, body()), 403, "REFSTREAM_API_TOKEN"),
    PostCase("no token sent", TOKEN, Request("POST", POST, {}, body()), 401, "bearer token"),
    PostCase("wrong token", TOKEN, Request("POST", POST, {"Authorization": "Bearer nope"}, body()), 401),
    PostCase("query token is not enough", TOKEN, Request("POST", POST + f"?token={TOKEN}", {}, body()), 401),
    PostCase("accepted", TOKEN, Request("POST", POST, BEARER, body()), 202, published=1),
    PostCase("bad body", TOKEN, Request("POST", POST, BEARER, body(decision="pay")), 400, "decision must be"),
    PostCase("not JSON", TOKEN, Request("POST", POST, BEARER, b"\x00\xff"), 400, "not valid JSON"),
    PostCase("too large", TOKEN, Request("POST", POST, BEARER, b" " * 20_000), 400, "at most 16,384"),
    PostCase("GET needs the token too", TOKEN, Request("GET", POST), 401),
    PostCase("summary needs the token", TOKEN, Request("GET", "/api/payouts/summary"), 401),
    PostCase("other routes take no POST", TOKEN, Request("POST", "/api/funnel", BEARER, body()), 405),
]


@pytest.mark.parametrize("case", POST_CASES, ids=lambda c: c.name)
def test_post_routes(full: Any, case: PostCase) -> None:
    broker = Broker()
    [(status, reply)] = http(full, case.token, [case.request], publish=broker)
    assert status == case.status, reply
    assert len(broker.sent) == case.published
    if status >= 400 and status != 405:
        assert case.check in reply["error"]


def test_a_retried_click_publishes_the_same_event(full: Any) -> None:
    broker = Broker()
    replies = http(full, TOKEN, [Request("POST", POST, BEARER, body())] * 2, publish=broker)
    assert [s for s, _ in replies] == [202, 202]
    [(_, first), (_, second)] = replies
    assert first["event"]["event_id"] == second["event"]["event_id"]
    assert first["event"] | {"ts": 0} == {"event_id": first["event"]["event_id"], "ts": 0, "order_id": "o-1",
                                          "promoter_id": None, "decision": "approve", "reason": "docs checked",
                                          "actor": "alice"}
    assert [key for key, _ in broker.sent] == [b"o-1", b"o-1"]
    assert json.loads(broker.sent[0][1])["event_id"] == first["event"]["event_id"]


def test_publishing_failures_are_503_and_without_a_publisher_too(full: Any) -> None:
    [(status, reply)] = http(full, TOKEN, [Request("POST", POST, BEARER, body())], publish=Broker(fail=True))
    assert status == 503 and "retry with the same request_id" in reply["error"]
    [(status, reply)] = http(full, TOKEN, [Request("POST", POST, BEARER, body())], publish=None)
    assert status == 503 and "cannot publish" in reply["error"]


def test_get_routes(full: Any) -> None:
    replies = http(full, TOKEN, [Request("GET", "/api/reviews?reason=manual_hold", BEARER),
                                 Request("GET", "/api/payouts/summary", BEARER),
                                 Request("GET", "/api/reviews?limit=%C2%B2", BEARER),
                                 Request("GET", "/api", BEARER)])
    assert [s for s, _ in replies] == [200, 200, 400, 200]
    assert [r["order_id"] for r in replies[0][1]["rows"]] == ["h3"]
    assert replies[1][1]["as_of"] == AS_OF - Settings().lateness_ms  # the worker's allowed lateness
    assert {"/api/reviews", "/api/payouts/summary"} <= set(replies[3][1]["endpoints"])


def test_a_failing_publisher_is_reported_as_publish_failed() -> None:
    api = ReviewApi(SimpleNamespace(), publish=Broker(fail=True), clock=lambda: NOW)  # type: ignore[arg-type]
    with pytest.raises(PublishFailed):
        asyncio.run(api.decide(body()))
