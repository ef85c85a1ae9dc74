"""ClickHouse sink against a real chdb engine (no mocks).

chdb hosts one engine (one data directory) per process: every test here shares one
directory, and each test gets its own database in it (a second client on the same
directory shares the engine). The module closes all its clients at the end so that
other test modules can open chdb on another directory.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from schemas.events import Exclusion, Promoter, Review
from schemas.records import (
    AttributionRec,
    ClickRec,
    ClickRef,
    Conversion,
    DeadLetter,
    LateEvent,
    OrderRec,
    SignupRec,
)
from sinks import queries, stored
from sinks.clickhouse import ChdbOpenError, ClickHouseUnavailable, ClickHouseWriter, DsnError, connect
from sinks.migrations import MIGRATIONS, Migration, migrate
from sinks.rows import rows_for
from sinks.tables import TABLES, VIEWS
from tests.sinks import write_records

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def client(empty_db):
    return empty_db


@pytest.fixture
def db(client):
    migrate(client)
    return client


def click(eid: str, code: str = "T1", ts: int = T0, visitor: str = "v1", **kw) -> ClickRec:
    return ClickRec(eid, ts, visitor, code, **kw)


def conversion(order_id: str, revision: int = 1, **kw: Any) -> Conversion:
    base = dict(
        order_id=order_id, revision=revision, status="approved", reasons=[], promoter_id="P1",
        tracking_code="T1", campaign="spring", account_id="a1", visitor_id="v1",
        click_event_id="c1", click_ts=T0, signup_event_id="s1", signup_ts=T0 + 1_000,
        order_event_id="o-" + order_id, order_ts=T0 + 2_000, cart_id="", product="pro",
        category="saas", amount=Decimal("100.00"), discount=Decimal("0"), currency="USD",
        order_status="paid", renewal=False, attribution_model="last_click",
        attribution_final=True, decided_at=T0 + 3_000,
    )
    base.update(kw)
    # priced, as the promoter stage sends them: in the program currency (here the order's)
    base.setdefault("program_currency", base["currency"])
    base.setdefault("program_amount", base["amount"])
    base.setdefault("fx_rate", Decimal(1))
    return Conversion(**base)


def attribution(account: str, code: str | None, version: int, final: bool = False) -> tuple:
    ref = None if code is None else ClickRef(f"c-{account}-{code}", T0, code, campaign="spring")
    return (version, AttributionRec(account, f"s-{account}", T0 + 10, f"v-{account}", ref, final))


def promoter(pid: str, code: str, ts: int = T0 - 1, **kw: Any) -> Promoter:
    return Promoter(event_id=f"p-{pid}-{code}-{ts}", ts=ts, promoter_id=pid, tracking_code=code, **kw)


def review(eid: str, ts: int = T0, decision: str = "approve", **kw: Any) -> Review:
    return Review(event_id=eid, ts=ts, decision=decision, actor=kw.pop("actor", "pm-1"), **kw)  # type: ignore[arg-type]


def scalar(client, sql: str, **params: Any) -> Any:
    return client.query(sql, parameters=params).result_rows[0][0]


# --- migrations -------------------------------------------------------------------------


def test_migrate_is_idempotent_and_records_versions(client):
    assert migrate(client) == [m.version for m in MIGRATIONS]
    assert migrate(client) == []
    rows = client.query("SELECT version, description, applied_at FROM schema_migrations ORDER BY version").result_rows
    assert [(v, d) for v, d, _ in rows] == [(m.version, m.description) for m in MIGRATIONS]
    assert rows[0][2].year >= 2024
    names = {r[0] for r in client.query("SHOW TABLES").result_rows}
    assert set(TABLES) | set(VIEWS) | {"schema_migrations"} <= names


def test_tables_match_the_column_specs(db):
    """The rows module builds tuples from the same specs: the live tables must agree."""
    for table in TABLES.values():
        live = db.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}"
            " ORDER BY position",
            parameters={"t": table.name},
        ).result_rows
        assert live == [(c.name, c.type) for c in table.columns], table.name


def test_later_migrations_apply_in_order_once(db):
    migrate(db)
    n = max(m.version for m in MIGRATIONS)
    extra = MIGRATIONS + [
        Migration(n + 2, "later", ["ALTER TABLE clicks ADD COLUMN IF NOT EXISTS c3 String"]),
        Migration(n + 1, "next", ["ALTER TABLE clicks ADD COLUMN IF NOT EXISTS c2 String"]),
    ]
    assert migrate(db, extra) == [n + 1, n + 2]
    assert migrate(db, extra) == []
    cols = [r[0] for r in db.query("DESCRIBE TABLE clicks").result_rows]
    assert cols[-2:] == ["c2", "c3"]
    with pytest.raises(ValueError, match="duplicate"):
        migrate(db, extra + [Migration(n + 1, "again", [])])


# --- idempotent writes ------------------------------------------------------------------


@dataclass
class Case:
    name: str
    records: list
    relation: str  # what the dashboards read: a *_current view, or the table with FINAL
    key: str
    expected_keys: list[str] = field(default_factory=list)
    stored: int | None = None  # rows left in the table after a merge; default len(expected_keys)


CASES = [
    Case("clicks", [click("c1"), click("c2", "T2"), click("c1")], "clicks FINAL", "event_id", ["c1", "c2"]),
    Case(
        "signups",
        [SignupRec("s1", T0, "a1", "v1"), SignupRec("s2", T0, "a2", "v2")],
        "signups FINAL", "event_id", ["s1", "s2"],
    ),
    Case(
        "orders",
        [
            OrderRec("e1", T0, "o1", "a1", "pro", Decimal("10"), "USD", "paid"),
            OrderRec("e2", T0 + 5, "o1", "a1", "pro", Decimal("10"), "USD", "refunded"),
        ],
        "orders FINAL", "event_id", ["e1", "e2"],
    ),
    Case(
        "attributions",
        [attribution("a1", "T1", 100), attribution("a1", "T2", 200), attribution("a2", None, 101)],
        "attributions_current", "account_id", ["a1", "a2"],
    ),
    Case(
        "conversions",
        [conversion("o1", 1), conversion("o1", 2, status="reversed"), conversion("o2", 1)],
        "conversions_current", "order_id", ["o1", "o2"],
    ),
    Case(
        "promoters",
        [promoter("P1", "T1"), promoter("P2", "T1", ts=T0 + 5), promoter("P3", "T3")],
        "promoters_current", "tracking_code", ["T1", "T3"], stored=3,  # history is kept
    ),
    Case(
        "late_events",
        [
            LateEvent(kind="click", event_id="c9", ts=T0, watermark=T0 + 9_000, lateness_ms=9_000,
                      join="visitor", source="clicks/0/9", key="v1"),
            LateEvent(kind="order", event_id="e9", ts=T0, watermark=T0 + 9_000, lateness_ms=9_000,
                      join="account", source="orders/1/3", key="a1"),
        ],
        "late_events FINAL", "event_id", ["c9", "e9"],
    ),
    Case(
        "dead_letters",
        [
            DeadLetter(reason="bad json", topic="clicks", partition=0, offset=7, key=None, value="{", at=T0),
            DeadLetter(reason="bad json", topic="clicks", partition=1, offset=7, key="k", value="[", at=T0),
        ],
        "dead_letters FINAL", "toString(`partition`)", ["0", "1"],
    ),
    Case(
        "reviews",
        [review("r1", order_id="o1"), review("r2", promoter_id="P1", decision="hold"), review("r1", order_id="o1")],
        "reviews FINAL", "event_id", ["r1", "r2"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_redelivered_batch_leaves_one_row_per_id(db, case):
    writer = ClickHouseWriter(db)
    batch = rows_for(case.records)
    writer.write(batch)
    writer.write(batch)  # the retry / the redelivery
    write_records(writer, case.records)  # and once more, through the records API
    keys = [r[0] for r in db.query(f"SELECT {case.key} FROM {case.relation} ORDER BY 1").result_rows]
    assert keys == case.expected_keys
    raw = scalar(db, f"SELECT count() FROM {case.relation.split()[0]}")
    assert raw >= len(case.expected_keys)  # copies may still exist before a merge...
    db.command(f"OPTIMIZE TABLE {case.name} FINAL")  # ...and a merge removes them
    stored = len(case.expected_keys) if case.stored is None else case.stored
    assert scalar(db, f"SELECT count() FROM {case.name}") == stored


def test_conversions_current_has_the_highest_revision_once_per_order(db):
    writer = ClickHouseWriter(db)
    # revisions arrive out of order, in separate inserts, and some twice
    for rev in (1, 3, 2, 3, 1):
        write_records(writer, [conversion("o1", rev, status="reversed" if rev == 3 else "approved",
                                         reasons=[f"r{rev}"], amount=Decimal(f"{rev}.25"))])
    write_records(writer, [conversion("o2", 1)])
    rows = queries.conversions_for(db)
    assert [(r["order_id"], r["revision"], r["status"], r["reasons"]) for r in rows] == [
        ("o1", 3, "reversed", ["r3"]),
        ("o2", 1, "approved", []),
    ]
    # the view's rows convert back to the exact records written
    back = msgspec.convert(queries.conversions_for(db, ["o2"])[0], Conversion)
    assert back == conversion("o2", 1)
    assert queries.conversions_for(db, []) == []
    assert [r["order_id"] for r in queries.conversions_for(db, ["o1", "nope"])] == ["o1"]
    contract = {"order_id", "promoter_id", "tracking_code", "account_id", "amount", "currency",
                "status", "reasons", "click_ts", "signup_ts", "order_ts"}
    assert contract <= set(rows[0])


def test_attributions_current_keeps_the_highest_version(db):
    writer = ClickHouseWriter(db)
    write_records(writer, [attribution("a1", "T2", 300, final=True), attribution("a1", "T1", 200)])
    write_records(writer, [attribution("a1", None, 100), attribution("a2", None, 101)])
    rows = db.query(
        "SELECT account_id, tracking_code, campaign, click_event_id, toUnixTimestamp64Milli(click_ts),"
        " final, version FROM attributions_current ORDER BY account_id"
    ).result_rows
    assert rows == [
        ("a1", "T2", "spring", "c-a1-T2", T0, True, 300),
        ("a2", "", "", "", 0, False, 101),  # organic
    ]


def test_decimal_amounts_round_trip_exactly(db):
    amounts = [Decimal("0.0001"), Decimal("19.99"), Decimal("12345678901234.5678"), Decimal("0"),
               Decimal("-5.5")]
    writer = ClickHouseWriter(db)
    write_records(writer,
        [OrderRec(f"e{i}", T0, f"o{i}", "a1", "pro", a, "EUR", "paid", discount=a) for i, a in enumerate(amounts)]
        + [conversion(f"o{i}", amount=a, discount=a) for i, a in enumerate(amounts)]
    )
    got = db.query("SELECT amount, discount FROM orders ORDER BY order_id").result_rows
    assert [r[0] for r in got] == amounts and [r[1] for r in got] == amounts
    assert all(isinstance(r[0], Decimal) for r in got)
    assert [r["amount"] for r in queries.conversions_for(db)] == amounts
    assert scalar(db, "SELECT sum(amount) FROM orders") == sum(amounts)


def test_null_optional_fields_become_empty_strings(db):
    write_records(ClickHouseWriter(db), [
        ClickRec("c1", T0, "v1", "T1"),
        SignupRec("s1", T0, "a1", "v1"),
        OrderRec("e1", T0, "o1", "a1", "pro", Decimal("1"), "USD", "paid"),
        DeadLetter(reason="x", topic="orders", partition=0, offset=1, key=None, value="", at=T0),
        promoter("P1", "T1", account_id=None, joined_at=None),
    ])
    assert db.query(
        "SELECT campaign, material_id, ip_hash, user_agent, url, referrer, method FROM clicks"
    ).result_rows == [("", "", "", "", "", "", "GET")]
    assert db.query(
        "SELECT ip_hash, user_agent, email_domain, email_hash, account_type, realname_id_hash, device_id"
        " FROM signups"
    ).result_rows == [("", "", "", "", "personal", "", "")]
    assert db.query("SELECT cart_id, sku, category, renewal FROM orders").result_rows == [("", "", "", False)]
    assert scalar(db, "SELECT key FROM dead_letters") == ""
    assert db.query(
        "SELECT account_id, toUnixTimestamp64Milli(joined_at) FROM promoters"
    ).result_rows == [("", 0)]
    # timestamps are stored as the exact milliseconds
    assert scalar(db, "SELECT toUnixTimestamp64Milli(ts) FROM clicks") == T0
    assert str(scalar(db, "SELECT toString(ts) FROM clicks")) == "2026-01-01 00:00:00.000"


# --- queries ----------------------------------------------------------------------------


def small_dataset() -> list:
    return [
        # promoters: T1 moved from P1 to P2 (latest wins); P1 keeps T9; P3 has no activity
        promoter("P1", "T1", ts=T0 - 100), promoter("P2", "T1", ts=T0 - 50),
        promoter("P1", "T9", ts=T0 - 100), promoter("P3", "T3", ts=T0 - 100),
        # clicks: 3 distinct on T1 (one duplicated), 1 on T9, 1 on an unknown code
        click("c1", "T1"), click("c2", "T1"), click("c3", "T1"), click("c1", "T1"),
        click("c4", "T9"), click("c5", "TX"),
        # accounts: a1 re-attributed T9 -> T1, a2 on T1, a3 organic, a4 on T9
        attribution("a1", "T9", 10), attribution("a1", "T1", 20), attribution("a2", "T1", 11),
        attribution("a3", None, 12), attribution("a4", "T9", 13),
        # conversions on T1 credited to P2: o1 approved (rev 2, final since), o2 approved (its
        # attribution still open), o3 reversed later
        conversion("o1", 1, promoter_id="P2", amount=Decimal("10.00"), attribution_final=False),
        conversion("o1", 2, promoter_id="P2", amount=Decimal("12.50")),
        conversion("o2", 1, promoter_id="P2", amount=Decimal("7.25"), attribution_final=False),
        conversion("o3", 1, promoter_id="P2", amount=Decimal("99")),
        conversion("o3", 2, promoter_id="P2", amount=Decimal("99"), status="reversed"),
        # on T9 for P1: one approved, one rejected; one approved on T1 from before the move
        conversion("o4", 1, promoter_id="P1", tracking_code="T9", amount=Decimal("5.5")),
        conversion("o5", 1, promoter_id="P1", tracking_code="T9", amount=Decimal("1"), status="rejected",
                   reasons=["self_referral"]),
        conversion("o6", 1, promoter_id="P1", tracking_code="T1", amount=Decimal("3")),
        SignupRec("s1", T0, "a1", "v1"),
        OrderRec("e1", T0, "o1", "a1", "pro", Decimal("12.50"), "USD", "paid"),
        DeadLetter(reason="bad json", topic="clicks", partition=0, offset=1, key=None, value="{", at=T0),
    ]


def test_queries_on_a_small_dataset(db):
    writer = ClickHouseWriter(db)
    data = small_dataset()
    write_records(writer, data)
    write_records(writer, data)  # redelivered: nothing changes
    summary = queries.promoter_summary(db)
    got = {(r["promoter_id"], r["tracking_code"]): (r["clicks"], r["signups"], r["orders"], r["gmv"])
           for r in summary}
    assert got == {
        ("P2", "T1"): (3, 2, 2, Decimal("19.75")),
        ("P1", "T9"): (1, 1, 2, Decimal("8.5")),  # per promoter: o6 came through his old code T1
        ("P3", "T3"): (0, 0, 0, Decimal(0)),
    }
    assert [r["promoter_id"] for r in summary] == ["P2", "P1", "P3"]  # by gmv
    assert {r["promoter_id"]: (r["rejected"], r["reversed"]) for r in summary} == {
        "P2": (0, 1), "P1": (1, 0), "P3": (0, 0)}
    rejected = queries.promoter_summary(db, status="rejected")
    assert {(r["promoter_id"], r["orders"]) for r in rejected} == {("P2", 0), ("P1", 1), ("P3", 0)}
    assert queries.counts(db) == {
        "clicks": 5, "signups": 1, "orders": 1, "conversions_current": 6, "override_lines": 0, "conversions_open": 1,
        "attributions_current": 4, "dead_letters": 1, "late_events": 0, "reviews": 0,
    }
    text = queries.format_summary(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["promoter_id", "tracking_code", "clicks", "signups", "orders", "gmv",
                                "commission", "held", "rejected", "reversed"]
    assert lines[-1].split() == ["TOTAL", "4", "3", "4", "28.25", "0.00", "0", "1", "1"]
    assert "19.75" in lines[2] and lines[2].startswith("P2")
    assert len({len(line) for line in lines if set(line) == {"-", " "}}) == 1
    assert queries.format_summary([]) == "(no promoters)"


def test_queries_on_an_empty_database(db):
    assert queries.promoter_summary(db) == []
    assert set(queries.counts(db).values()) == {0}
    assert queries.conversions_for(db) == []


# --- writer: outages, refused rows, callbacks -------------------------------------------------


def test_writer_tries_once_and_raises_unavailable_on_an_outage(client):
    """No tables yet: a real failure the writer cannot classify as bad rows. It tries once
    (the caller, streams.agents.sink, owns the retries) and raises; once the tables exist it writes."""
    batches, failures = [], []
    writer = ClickHouseWriter(
        client, on_batch=lambda t, n, s: batches.append((t, n, s)),
        on_failure=lambda t, e: failures.append((t, type(e))),
    )
    with pytest.raises(ClickHouseUnavailable, match="insert into clicks failed") as info:
        writer.write(rows_for([click("c1"), click("c2")]))
    assert isinstance(info.value.cause, DatabaseError) and info.value.table == "clicks"
    assert [f[0] for f in failures] == ["clicks"] and batches == []
    migrate(client)
    assert writer.write(rows_for([click("c1"), click("c2")])) == []
    assert [(t, n) for t, n, _ in batches] == [("clicks", 2)] and batches[0][2] > 0
    assert scalar(client, "SELECT count() FROM clicks") == 2


def test_writer_returns_bad_rows_instead_of_raising(db):
    failures = []
    writer = ClickHouseWriter(db, on_failure=lambda t, e: failures.append(t))
    bad_letter = ("r", "t", "not-an-int", 1, "", "v", T0, 0, "", False)
    [refused] = writer.write({"dead_letters": [bad_letter]})
    assert (refused.table, refused.index, refused.row) == ("dead_letters", 0, bad_letter)
    assert refused.error == "ValueError: invalid literal for int() with base 10: 'not-an-int'"
    [refused] = writer.write({"clicks": [("c1", T0, "v1", "T1", None, "", "", "", "", "", "GET")]})
    assert "non-Nullable" in refused.error and "`campaign`" in refused.error
    with pytest.raises(KeyError, match="unknown ClickHouse table"):
        writer.write({"nope": [(1,)]})
    assert failures == []  # refused rows are not outages


def test_writer_serialises_concurrent_writes(db):
    writer = ClickHouseWriter(db)
    threads = [
        threading.Thread(target=write_records, args=(writer, [click(f"c{t}-{i}") for i in range(200)]))
        for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert queries.counts(db)["clicks"] == 800


def test_rows_for_needs_a_version_for_attributions():
    with pytest.raises(TypeError, match="version"):
        rows_for([attribution("a1", "T1", 1)[1]])
    with pytest.raises(TypeError, match="no ClickHouse table"):
        rows_for([object()])
    assert rows_for([]) == {}


# --- DSNs and chdb's engine rules -------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    ["", "localhost:8123", "clickhouse://default:s3cret@host:9000/db", "chdb://relative/dir",
     "chdb:///", "chdb://memory", "mysql://u:s3cret@h/db", "http:///db"],
)
def test_bad_dsn_gives_a_clear_error(dsn):
    with pytest.raises(DsnError) as info:
        connect(dsn)
    message = str(info.value)
    assert "chdb:///" in message and "s3cret" not in message


def test_chdb_engine_rules(engine, tmp_path):
    """Documents chdb: clients on the engine's directory share data; while any client is
    open, another directory cannot be opened in this process."""
    dsn, admin = engine
    other = connect(dsn)
    try:
        assert scalar(other, "SELECT 1") == 1
        admin.command("CREATE TABLE IF NOT EXISTS default.shared (x UInt8) ENGINE = Memory")
        admin.insert("default.shared", [(7,)], column_names=["x"])
        assert scalar(other, "SELECT x FROM default.shared") == 7
    finally:
        other.close()
    with pytest.raises(ChdbOpenError, match="one data directory per process.*already initialized"):
        connect(f"chdb://{tmp_path / 'elsewhere'}")


def test_http_dsn_is_accepted_and_goes_to_the_server():
    """A server URL passes the DSN check; with no server there, the client fails to connect."""
    with pytest.raises(DatabaseError) as info:  # clickhouse-connect's OperationalError
        connect("http://default:s3cret@127.0.0.1:1/refstream", connect_timeout=2)
    assert not isinstance(info.value, DsnError) and "s3cret" not in str(info.value)


# --- conversions_current before the sink agent installs the rules ----------------------------


def test_conversions_current_is_the_latest_decision_until_the_rules_are_installed(db):
    """The migrations create placeholders: the rules ClickHouse applies over a whole code or
    promoter come from `streams.logic.rules.views` (tests/logic/rules/test_program_rules.py)."""
    write_records(ClickHouseWriter(db),
        [conversion("o1", commission=Decimal("15")), promoter("P1", "T1", ts=T0 + 5_000, account_type="enterprise")]
        + [(1, AttributionRec(f"a{i}", f"s{i}", T0 + 2 * 86_400_000, f"v{i}", ClickRef(f"c{i}", T0, "T1"), True))
           for i in range(20)])
    row = db.query("SELECT status, reasons, commission FROM conversions_current WHERE order_id = 'o1'").result_rows
    assert tuple(row[0]) == ("approved", [], Decimal("15"))
    assert scalar(db, "SELECT count() FROM spam_codes") == 0


# --- stored events read back (replay) -----------------------------------------------------------


def test_stored_events_read_back_as_the_records_written(db):
    full = [ClickRec("c1", T0, "v1", "T1", "spring", "m1", "ip1", "ua", "https://x", "https://r", "HEAD"),
            SignupRec("s1", T0 + 1, "a1", "v1", "ip2", "ua", "x.example", "em", "business", "rn", "dev"),
            OrderRec("e1", T0 + 2, "o1", "a1", "pro", Decimal("12.5"), "USD", "paid", Decimal("1.25"), "k1", "sku",
                     "saas", True),
            promoter("P1", "T1", level=2, account_type="enterprise", account_id="acc", is_employee=True,
                     realname_id_hash="rn", email_hash="em", device_id="d", ip="iphash"),
            Exclusion(event_id="x1", ts=T0, account_id="a9", owner="direct_sales", since=T0 - 1)]
    bare = [ClickRec("c2", T0 + 10, "v2", "T1"), SignupRec("s2", T0 + 11, "a2", "v2"),
            OrderRec("e2", T0 + 12, "o2", "a2", "pro", Decimal(1), "USD", "paid"),
            Exclusion(event_id="x2", ts=T0 + 13, email_domain="corp.example", owner="channel_partner", since=T0)]
    write_records(ClickHouseWriter(db), full + bare + full)  # duplicates are read once
    got = stored.load(db)
    assert sorted(got.clicks, key=lambda r: r.event_id) == [full[0], bare[0]]
    assert sorted(got.signups, key=lambda r: r.event_id) == [full[1], bare[1]]
    assert sorted(got.orders, key=lambda r: r.event_id) == [full[2], bare[2]]
    assert got.promoters == [full[3]]
    assert sorted(got.exclusions, key=lambda e: e.event_id) == [full[4], bare[3]]
    until = stored.load(db, until_ms=T0 + 10)
    assert ([c.event_id for c in until.clicks], [s.event_id for s in until.signups]) == (["c1", "c2"], ["s1"])


# --- the evidence behind a conversion's reasons (review queue) ---------------------------------

EVIDENCE = dict(flood_clicks=23, farm_signups=5, exclusion_owner="channel_partner", identity_match="device")


CAPPED = dict(cap="customer", cap_applied=True)  # which limit cut the commission (migration 6)


def test_conversion_row_follows_the_conversions_columns():
    """Every value lands in the column of its name, the evidence after the pricing, then the cap
    (then the columns of migration 7: tests/sinks/test_fx_rates.py)."""
    columns = TABLES["conversions"].insert_columns
    c = conversion("o1", reasons=["self_referral"], commission=Decimal("1.5"), rule_version="v2",
                   **EVIDENCE, **CAPPED)
    assert rows_for([c]) == {"conversions": [tuple(getattr(c, name) for name in columns)]}
    assert columns[-11:-6] == (*EVIDENCE, "cap")


def test_conversion_evidence_round_trips_through_clickhouse(db):
    write_records(ClickHouseWriter(db), [conversion("o1", **EVIDENCE, **CAPPED), conversion("o2")])
    rows = db.query("SELECT order_id, flood_clicks, farm_signups, exclusion_owner, identity_match, cap"
                    " FROM conversions FINAL ORDER BY order_id").result_rows
    assert [tuple(r) for r in rows] == [("o1", 23, 5, "channel_partner", "device", "customer"),
                                        ("o2", 0, 0, "", "", "")]
    back = [msgspec.convert(r, Conversion) for r in queries.conversions_for(db)]
    assert back == [conversion("o1", **EVIDENCE, **CAPPED), conversion("o2")]


PRICED = 16  # a conversion's revision: decision revision << 16 + price changes (streams/logic/pricing.py)


@pytest.mark.parametrize("revisions, newest", [
    ([1 << PRICED, (1 << PRICED) + 1], (1 << PRICED) + 1),  # re-priced
    ([(1 << PRICED) + 9, 2 << PRICED], 2 << PRICED),  # a new decision outranks every price of the old one
    ([(65_535 << PRICED) + 65_535, 1 << PRICED], 2**32 - 1),  # the largest fits UInt32
])
def test_conversions_current_keeps_the_newest_priced_revision(db, revisions: list[int], newest: int):
    write_records(ClickHouseWriter(db), [conversion("o1", r, cap=f"r{r}") for r in revisions])
    assert [(r["revision"], r["cap"]) for r in queries.conversions_for(db)] == [(newest, f"r{newest}")]


def test_migration_6_adds_the_cap_to_an_older_database(client):
    """A database of migrations 1-5 (conversions without `cap`) gets the column, and the
    placeholder `conversions_current` shows it."""
    old = [m for m in MIGRATIONS if m.version <= 5]
    migrate(client, old)
    client.command("ALTER TABLE conversions DROP COLUMN cap")  # as version 1 created it before
    client.command("CREATE OR REPLACE VIEW conversions_current AS " + VIEWS["conversions_current"])
    assert "cap" not in [r[0] for r in client.query("DESCRIBE TABLE conversions_current").result_rows]
    assert migrate(client) == [6, 7, 8]
    write_records(ClickHouseWriter(client), [conversion("o1", **CAPPED)])
    assert [r["cap"] for r in queries.conversions_for(client)] == ["customer"]


# --- review decisions ---------------------------------------------------------------------------


def test_review_row_follows_the_reviews_columns():
    r = review("r1", order_id="o1", decision="reject", reason="same card as the promoter")
    [row] = rows_for([r])["reviews"]
    columns = TABLES["reviews"].insert_columns
    assert dict(zip(columns, row)) == dict(event_id="r1", ts=T0, order_id="o1", promoter_id="",
                                           decision="reject", reason="same card as the promoter", actor="pm-1")
    with pytest.raises(TypeError, match="epoch-millis"):
        rows_for([review("r2", ts="2026-01-01T00:00:00Z", order_id="o1")])


def test_reviews_round_trip_through_clickhouse(db):
    write_records(ClickHouseWriter(db), [
        review("r1", order_id="o1", reason="called the customer: genuine"),
        review("r2", ts=T0 + 7, promoter_id="P1", decision="hold", actor="pm-2"),
    ])
    rows = db.query("SELECT event_id, toUnixTimestamp64Milli(ts), order_id, promoter_id, toString(decision),"
                    " reason, actor FROM reviews FINAL ORDER BY event_id").result_rows
    assert [tuple(r) for r in rows] == [
        ("r1", T0, "o1", "", "approve", "called the customer: genuine", "pm-1"),
        ("r2", T0 + 7, "", "P1", "hold", "", "pm-2"),
    ]
