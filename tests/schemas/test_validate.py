"""The input contract: what is accepted, normalised, or dead-lettered with which reason."""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import pytest

from schemas.validate import Invalid, decode

NOW = 1_790_000_000_000
HOUR = 3_600_000
CLICK = {"event_id": "e1", "ts": NOW - 1000, "tracking_code": "T-1", "visitor_id": "v1"}
ORDER = {"event_id": "o1-paid", "ts": NOW - 1000, "order_id": "o1", "account_id": "a1", "product": "db",
         "amount": 12.5, "currency": "USD", "status": "paid"}
REVIEW = {"event_id": "r1", "ts": NOW - 1000, "order_id": "o1", "decision": "approve", "actor": "pm-7",
          "reason": "customer confirmed by phone"}
FX = {"event_id": "fx1", "ts": NOW - 1000, "currency": "EUR", "rate": "1.0825"}


@dataclass
class Case:
    name: str
    topic: str
    value: bytes
    expect: str | dict  # a substring of the Invalid reason, or fields of the valid event


def j(base: dict, **changes) -> bytes:
    out = {**base, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}).encode()


CASES = [
    Case("valid click", "clicks", j(CLICK), {"ts": NOW - 1000, "method": "GET"}),
    Case("ISO-8601 ts with zone", "clicks", j(CLICK, ts="2026-09-21T14:13:20Z"), {"ts": 1790000000000}),
    Case("ISO-8601 ts with offset", "clicks", j(CLICK, ts="2026-09-21T16:13:20+02:00"), {"ts": 1790000000000}),
    Case("ISO-8601 without zone", "clicks", j(CLICK, ts="2026-09-21T14:13:20"), "no timezone"),
    Case("epoch seconds", "clicks", j(CLICK, ts=1_790_000_000), "epoch seconds"),
    Case("far future", "clicks", j(CLICK, ts=NOW + 2 * HOUR), "in the future"),
    Case("not JSON", "clicks", b"{nope", "not valid JSON"),
    Case("empty value", "clicks", b"", "empty message"),
    Case("missing field", "clicks", j(CLICK, visitor_id=...), "visitor_id"),
    Case("empty id", "clicks", j(CLICK, visitor_id=""), "visitor_id must be 1 to 128 printable"),
    Case("mistyped amount", "orders", j(ORDER, amount="lots"), "amount"),
    Case("money is exact", "orders", j(ORDER, amount=0.1), {"amount": Decimal("0.1")}),
    Case("negative amount", "orders", j(ORDER, amount=-1), "no sign"),
    Case("bad currency", "orders", j(ORDER, currency="usd"), "ISO-4217"),
    Case("amount too large for storage", "orders", j(ORDER, amount=1e15), "below"),
    Case("sub-cent precision beyond 4 places", "orders", j(ORDER, amount=1.00001), "4 decimal places"),
    Case("trailing zeros are fine", "orders", j(ORDER, amount="1.000000"), {"amount": Decimal("1")}),
    Case("unknown status", "orders", j(ORDER, status="shipped"), "status"),
    Case("extra fields are ignored", "orders", j(ORDER, coupon="X"), {"order_id": "o1"}),
    # coupon codes: the limits of a tracking code; '' counts as absent
    Case("order with a coupon code", "orders", j(ORDER, coupon_code="KOL-10"), {"coupon_code": "KOL-10"}),
    Case("empty coupon code is none", "orders", j(ORDER, coupon_code=""), {"coupon_code": None}),
    Case("coupon code too long", "orders", j(ORDER, coupon_code="K" * 129), "coupon_code must be 1 to 128"),
    Case("coupon code with a control character", "signups",
         j({"event_id": "s1", "ts": NOW - 1000, "account_id": "a1", "visitor_id": "v1"}, coupon_code="K\n1"),
         "coupon_code must be 1 to 128"),
    Case("signup with a coupon code", "signups",
         j({"event_id": "s1", "ts": NOW - 1000, "account_id": "a1", "visitor_id": "v1"}, coupon_code="KOL10"),
         {"coupon_code": "KOL10"}),
    Case("exclusion needs a subject", "exclusions",
         j({"event_id": "x", "ts": NOW, "owner": "direct_sales"}), "account_id or email_domain"),
    # defect 12 of issue 11: as strict as docs/events.md
    Case("Arabic-Indic digits", "orders", j(ORDER, amount="\u0661\u0660"), "plain decimal"),
    Case("underscore in an amount", "orders", j(ORDER, amount="1_000"), "plain decimal"),
    Case("spaces around an amount", "orders", j(ORDER, amount=" 10 "), "plain decimal"),
    Case("exponent in an amount", "orders", j(ORDER).replace(b"12.5", b"1e3"), "plain decimal"),
    Case("exponent in an amount string", "orders", j(ORDER, amount="1e3"), "plain decimal"),
    Case("NaN amount", "orders", j(ORDER, amount="NaN"), "plain decimal"),
    Case("signed discount", "orders", j(ORDER, discount="+1"), "discount must be a plain decimal"),
    Case("amount as a string", "orders", j(ORDER, amount="19.90", discount="0.10"),
         {"amount": Decimal("19.90"), "discount": Decimal("0.10")}),
    Case("currency with a newline", "orders", j(ORDER, currency="USD\n"), "ISO-4217"),
    Case("ISO ts in year 1", "clicks", j(CLICK, ts="0001-01-01T00:00:00Z"), "before 1973"),
    Case("ISO ts in 1900", "clicks", j(CLICK, ts="1900-01-01T00:00:00Z"), "before 1973"),
    Case("negative int ts", "clicks", j(CLICK, ts=-5), "before 1973"),
    Case("ts beyond any range", "clicks", j(CLICK, ts=2**70), "in the future"),
    Case("earliest accepted ts", "clicks", j(CLICK, ts="1973-03-03T09:46:40Z"), {"ts": 100_000_000_000}),
    Case("ms truncated, not rounded through a float", "clicks", j(CLICK, ts="2026-09-21T14:13:20.1239Z"),
         {"ts": 1790000000123}),
    Case("a 1990s click is valid history", "clicks", j(CLICK, ts="1995-07-01T00:00:00Z"), {"ts": 804556800000}),
    Case("far-future joined_at", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "joined_at": 99 * 10**21}),
         "joined_at"),
    Case("far-future since", "exclusions",
         j({"event_id": "x", "ts": NOW, "account_id": "a", "owner": "direct_sales", "since": 2**63}), "since"),
    Case("empty product", "orders", j(ORDER, product=""), "product must be"),
    Case("id with a bidi override", "clicks", j(CLICK, tracking_code="T-\u202e1"), "tracking_code must be"),
    Case("id of 129 characters", "clicks", j(CLICK, visitor_id="v" * 129), "visitor_id must be"),
    Case("id of 128 characters", "clicks", j(CLICK, visitor_id="v" * 128), {"visitor_id": "v" * 128}),
    Case("unicode id", "clicks", j(CLICK, visitor_id="访客-1"), {"visitor_id": "访客-1"}),
    Case("empty optional id is absent", "clicks", j(CLICK, campaign=""), {"campaign": None}),
    Case("optional id with a newline", "clicks", j(CLICK, campaign="c\n1"), "campaign must be"),
    Case("odd method", "clicks", j(CLICK, method="G E T"), "HTTP method"),
    # defect 8: e-mails only as a domain or a hash
    Case("e-mail address as email_domain", "signups",
         j({"event_id": "s", "ts": NOW, "account_id": "a", "visitor_id": "v", "email_domain": "dave@example.com"}),
         "email_domain must be a domain"),
    Case("clear address as email_hash", "signups",
         j({"event_id": "s", "ts": NOW, "account_id": "a", "visitor_id": "v", "email_hash": "dave@example.com"}),
         "email_hash must be a hash"),
    Case("clear id as realname_id_hash", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "realname_id_hash": "110101199003077777"}),
         "realname_id_hash must be a hash"),
    Case("e-mail in an exclusion's domain", "exclusions",
         j({"event_id": "x", "ts": NOW, "email_domain": "ceo@bigcorp.com", "owner": "direct_sales"}), "email_domain"),
    Case("domain and hash accepted", "signups",
         j({"event_id": "s", "ts": NOW, "account_id": "a", "visitor_id": "v", "email_domain": "mail.example.co.uk",
            "email_hash": "ab" * 32}), {"email_domain": "mail.example.co.uk", "email_hash": "ab" * 32}),
    Case("IDN domain accepted", "signups",
         j({"event_id": "s", "ts": NOW, "account_id": "a", "visitor_id": "v", "email_domain": "例え.jp"}),
         {"email_domain": "例え.jp"}),
    # defect 1 and bounded input
    Case("deep nesting", "clicks", b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested too deeply"),
    Case("deep nesting in an unknown field", "promoters",
         b'{"event_id":"p","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    Case("too large", "clicks", b" " * 70_000, "message too large: 70,000 bytes"),
    Case("huge level", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "level": 2**80}), "level"),
    Case("promoter", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "level": 3,
            "joined_at": "2026-01-01T00:00:00Z"}), {"level": 3, "joined_at": 1767225600000}),
    Case("promoter with coupon codes and a recruiter", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "coupon_codes": ["KOL1", "KOL2"],
            "parent_promoter_id": "p0"}), {"coupon_codes": ["KOL1", "KOL2"], "parent_promoter_id": "p0"}),
    Case("empty recruiter is none", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "parent_promoter_id": ""}),
         {"parent_promoter_id": None}),
    Case("recruiter id of 129 characters", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "parent_promoter_id": "P" * 129}),
         "parent_promoter_id must be"),
    Case("empty coupon code", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "coupon_codes": [""]}),
         "coupon_codes must be"),
    Case("coupon code with a newline", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "coupon_codes": ["A\nB"]}),
         "coupon_codes must be"),
    Case("coupon codes not a list", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T", "coupon_codes": "KOL1"}),
         "coupon_codes"),
    Case("a thousand coupon codes", "promoters",
         j({"event_id": "p", "ts": NOW, "promoter_id": "p1", "tracking_code": "T",
            "coupon_codes": [f"C{i}" for i in range(1000)]}), "at most 100"),
    # reviews: one order, or all of one promoter's open conversions
    Case("review of an order", "reviews", j(REVIEW),
         {"order_id": "o1", "promoter_id": None, "decision": "approve", "actor": "pm-7", "ts": NOW - 1000}),
    Case("review of a promoter", "reviews", j(REVIEW, order_id=..., promoter_id="P1", decision="hold"),
         {"order_id": None, "promoter_id": "P1", "decision": "hold"}),
    Case("review with an ISO ts", "reviews", j(REVIEW, ts="2026-09-21T14:13:20Z"), {"ts": 1790000000000}),
    Case("review without a reason", "reviews", j(REVIEW, reason=..., decision="reject"),
         {"reason": "", "decision": "reject"}),
    Case("empty promoter_id beside an order is absent", "reviews", j(REVIEW, promoter_id=""),
         {"order_id": "o1", "promoter_id": None}),
    Case("review of an order and a promoter", "reviews", j(REVIEW, promoter_id="P1"), "exactly one of order_id"),
    Case("review of nothing", "reviews", j(REVIEW, order_id=...), "exactly one of order_id"),
    Case("review of empty ids", "reviews", j(REVIEW, order_id="", promoter_id=""), "exactly one of order_id"),
    Case("review decision outside the three", "reviews", j(REVIEW, decision="pay"), "decision"),
    Case("review decision in capitals", "reviews", j(REVIEW, decision="APPROVE"), "decision"),
    Case("review without an actor", "reviews", j(REVIEW, actor=...), "actor"),
    Case("review with an empty actor", "reviews", j(REVIEW, actor=""), "actor must be 1 to 128 printable"),
    Case("actor of 129 characters", "reviews", j(REVIEW, actor="a" * 129), "actor must be 1 to 128 printable"),
    Case("order_id with a newline", "reviews", j(REVIEW, order_id="o\n1"), "order_id must be 1 to 128"),
    Case("promoter_id of 129 characters", "reviews", j(REVIEW, order_id=..., promoter_id="P" * 129),
         "promoter_id must be 1 to 128"),
    Case("reason of 500 characters", "reviews", j(REVIEW, reason="x" * 500), {"reason": "x" * 500}),
    Case("reason of 501 characters", "reviews", j(REVIEW, reason="x" * 501), "at most 500 characters"),
    Case("unicode reason", "reviews", j(REVIEW, reason="已电话确认 — ok\u00a0"), {"reason": "已电话确认 — ok\u00a0"}),
    Case("reason with a newline", "reviews", j(REVIEW, reason="line 1\nline 2"), "without control characters"),
    Case("reason with a tab", "reviews", j(REVIEW, reason="a\tb"), "without control characters"),
    Case("reason with a bidi override", "reviews", j(REVIEW, reason="ok \u202egnp.exe"), "without control"),
    Case("reason with a line separator", "reviews", j(REVIEW, reason="a\u2028b"), "without control"),
    Case("reason not a string", "reviews", j(REVIEW, reason=5), "reason"),
    Case("review in epoch seconds", "reviews", j(REVIEW, ts=1_790_000_000), "epoch seconds"),
    Case("review from the far future", "reviews", j(REVIEW, ts=NOW + 2 * HOUR), "in the future"),
    Case("review before 1973", "reviews", j(REVIEW, ts="1970-01-02T00:00:00Z"), "before 1973"),
    Case("review not JSON", "reviews", b"approve o1", "not valid JSON"),
    # exchange rates (fx_rates): program-currency units per unit of `currency`
    Case("fx rate", "fx_rates", j(FX), {"currency": "EUR", "rate": Decimal("1.0825"), "effective_from": None}),
    Case("fx rate as a JSON number", "fx_rates", j(FX, rate=0.0069), {"rate": Decimal("0.0069")}),
    Case("fx rate with effective_from", "fx_rates", j(FX, effective_from="2026-09-01T00:00:00Z"),
         {"effective_from": 1788220800000, "ts": NOW - 1000}),
    Case("fx rate of 12 decimals", "fx_rates", j(FX, currency="VND", rate="0.000039300001"),
         {"rate": Decimal("0.000039300001")}),
    Case("fx rate of 13 decimals", "fx_rates", j(FX, rate="0.0000393000001"), "at most 12 decimal places"),
    Case("fx rate of 0", "fx_rates", j(FX, rate="0"), "above 0"),
    Case("negative fx rate", "fx_rates", j(FX, rate="-1.08"), "above 0"),
    Case("fx rate NaN", "fx_rates", j(FX, rate="NaN"), "above 0"),
    Case("fx rate Infinity", "fx_rates", j(FX, rate="Infinity"), "above 0"),
    Case("fx rate too large to store", "fx_rates", j(FX, rate="1000000000000"), "below 1,000,000,000,000"),
    Case("fx rate not a number", "fx_rates", j(FX, rate="one"), "rate"),
    Case("fx rate missing", "fx_rates", j(FX, rate=...), "rate"),
    Case("fx currency in lower case", "fx_rates", j(FX, currency="eur"), "ISO-4217"),
    Case("fx currency of 4 letters", "fx_rates", j(FX, currency="EURO"), "ISO-4217"),
    Case("fx currency missing", "fx_rates", j(FX, currency=...), "currency"),
    Case("fx rate without an event_id", "fx_rates", j(FX, event_id=""), "event_id must be"),
    Case("fx rate in epoch seconds", "fx_rates", j(FX, ts=1_790_000_000), "epoch seconds"),
    Case("fx rate from the far future", "fx_rates", j(FX, ts=NOW + 2 * HOUR), "in the future"),
    Case("far-future effective_from", "fx_rates", j(FX, effective_from=NOW + 2 * HOUR), "effective_from"),
    Case("effective_from without a zone", "fx_rates", j(FX, effective_from="2026-09-01T00:00:00"), "no timezone"),
    Case("effective_from before 1973", "fx_rates", j(FX, effective_from="1970-01-02T00:00:00Z"), "before 1973"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decode(case: Case) -> None:
    result = decode(case.topic, case.value, NOW, HOUR)
    if isinstance(case.expect, str):
        assert isinstance(result, Invalid), result
        assert case.expect in result.reason
    else:
        assert not isinstance(result, Invalid), result
        for field, value in case.expect.items():
            assert getattr(result, field) == value


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from schemas.records import MAX_BATCH_BYTES, ClickRec, batch_decoder, encode_batches  # noqa: E402
from schemas.validate import MAX_MESSAGE_BYTES  # noqa: E402

TOPICS = ["clicks", "signups", "orders", "promoters", "exclusions", "reviews", "fx_rates"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
FIELDS = ["event_id", "ts", "tracking_code", "visitor_id", "account_id", "order_id", "product", "amount",
          "currency", "status", "discount", "promoter_id", "level", "joined_at", "owner", "since",
          "email_domain", "email_hash", "method", "ip", "decision", "actor", "reason", "rate", "effective_from"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(topic: str, raw: bytes) -> None:
    result = decode(topic, raw, NOW, HOUR)
    assert isinstance(result, Invalid) or result.event_id


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=12))
def test_arbitrary_json_never_raises(topic: str, doc: dict) -> None:
    raw = json.dumps(doc, allow_nan=True).encode()
    result = decode(topic, raw, NOW, HOUR)
    if not isinstance(result, Invalid):  # a valid event has its timestamps in range, ids in grammar
        assert 100_000_000_000 <= result.ts <= NOW + HOUR


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=20_000))
def test_join_batches_fit_the_message_limit(n: int, url_len: int) -> None:
    """However many records of whatever size (each within the input limit) one fetch gives a
    partition, every join-topic message stays under MAX_BATCH_BYTES, in order, clocks last."""
    recs = [ClickRec(f"e{i}", NOW, "v", "T", url="u" * min(url_len, MAX_MESSAGE_BYTES), src=f"clicks/0/{i}")
            for i in range(n * 10)]
    clocks = {"clicks/0": NOW}
    messages = encode_batches(recs, clocks)
    assert all(len(m) <= MAX_BATCH_BYTES for m in messages)
    batches = [batch_decoder.decode(m) for m in messages]
    assert [r.event_id for b in batches for r in b.records] == [r.event_id for r in recs]
    assert batches[-1].clocks == clocks and all(not b.clocks for b in batches[:-1])


printable_ids = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
                        min_size=1, max_size=128).filter(lambda s: s.isprintable())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(printable_ids, printable_ids, st.text(max_size=3000), st.text(max_size=3000), st.text(max_size=200))
def test_a_valid_input_record_is_no_larger_than_its_message(event_id: str, visitor: str, url: str, ua: str,
                                                            ip: str) -> None:
    """Records in the join topics are bounded by the input size limit: a record is never
    larger than the message it came from plus its source offset and a hashed IP."""
    from schemas.records import batch_encoder
    from streams.logic.privacy import Pseudonyms
    from streams.logic.routing import to_record

    raw = json.dumps({"event_id": event_id, "ts": NOW, "tracking_code": "T", "visitor_id": visitor,
                      "url": url, "user_agent": ua, "ip": ip}).encode()
    event = decode("clicks", raw, NOW, HOUR)
    assert not isinstance(event, Invalid), event
    src = "a-long-topic-prefix-clicks/11/123456789012"
    rec = to_record(Pseudonyms(b"s").apply(event), src)
    assert len(batch_encoder.encode(rec)) <= len(raw) + len(src) + 64


reasons = st.text(max_size=520)
subjects = st.one_of(st.none(), st.just(""), printable_ids, st.text(max_size=130))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subjects, subjects, reasons, st.sampled_from(["approve", "reject", "hold", "pay", ""]))
def test_a_valid_review_has_one_subject_and_a_plain_reason(order_id, promoter_id, reason: str,
                                                           decision: str) -> None:
    """Whatever the fields, a review is accepted exactly when the contract allows it."""
    import unicodedata

    from schemas.validate import valid_id

    doc = {**REVIEW, "order_id": order_id, "promoter_id": promoter_id, "reason": reason, "decision": decision}
    result = decode("reviews", json.dumps(doc).encode(), NOW, HOUR)
    ids = [v for v in (order_id, promoter_id) if v]  # '' and null are absent
    plain = len(reason) <= 500 and not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")
                                           for c in reason)
    allowed = (len(ids) == 1 and valid_id(ids[0]) and plain and decision in ("approve", "reject", "hold"))
    assert (not isinstance(result, Invalid)) == allowed, result
    if allowed:
        assert (result.order_id or result.promoter_id) == ids[0] and result.reason == reason


def test_the_documented_reviews_are_valid() -> None:
    """The examples of the `reviews` section of docs/events.md decode as reviews."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    section = text.split("\n## reviews\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```json\n(.*?)```", section, re.S)
    assert len(examples) == 2
    got = [decode("reviews", e.encode(), 1_718_200_000_000, HOUR) for e in examples]
    assert [(r.decision, r.order_id, r.promoter_id) for r in got] == [  # type: ignore[union-attr]
        ("reject", "ord-86c0923b3bea", None), ("hold", None, "P100003")]
