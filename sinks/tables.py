"""The ClickHouse tables: column names and types, in insert order, in one place.

`sinks.rows` builds tuples in exactly the order of `Table.insert_columns`, and
`sinks.migrations` renders the version-1 DDL from the same specs, so the two cannot drift.

Changing a table later: append the column here *and* add a migration in `sinks.migrations`
with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS ...` (fresh databases already get the
column from version 1, old ones from the ALTER; both converge), plus
`CREATE OR REPLACE VIEW` for views over the table: ClickHouse expands `SELECT *` when a
view is created, so a view does not see columns added afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

TS = "DateTime64(3, 'UTC')"  # epoch milliseconds; inserted as plain ints (the raw ticks)
MONEY = "Decimal(18, 4)"
STR = "String"
ENUM = "LowCardinality(String)"  # small sets of values: statuses, kinds, currencies
BOOL = "Bool"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    default: str | None = None  # filled by ClickHouse (not part of inserted rows) when set


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    engine: str
    order_by: str
    partition_by: str | None = None
    comment: str = ""

    @property
    def insert_columns(self) -> tuple[str, ...]:
        """Column names of the rows `sinks.rows` produces, in tuple order."""
        return tuple(c.name for c in self.columns if c.default is None)

    @property
    def insert_types(self) -> tuple[str, ...]:
        """ClickHouse types of `insert_columns`: lets an insert skip the DESCRIBE round trip."""
        return tuple(c.type for c in self.columns if c.default is None)

    def create_sql(self) -> str:
        cols = ",\n    ".join(
            f"{quote(c.name)} {c.type}" + (f" DEFAULT {c.default}" if c.default else "")
            for c in self.columns
        )
        parts = [f"CREATE TABLE IF NOT EXISTS {quote(self.name)} (\n    {cols}\n)", f"ENGINE = {self.engine}"]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        parts.append(f"ORDER BY {self.order_by}")
        if self.comment:
            parts.append("COMMENT '" + self.comment.replace("\\", "\\\\").replace("'", "\\'") + "'")
        return "\n".join(parts)


def quote(identifier: str) -> str:
    """Backtick-quote an identifier (`join`, `partition`, `offset` are SQL keywords)."""
    return "`" + identifier.replace("`", "``") + "`"


def _cols(*spec: tuple[str, str] | tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


# Raw input events. Duplicates of one event (redelivery, retried batch) share every field,
# so they share the ORDER BY key and ReplacingMergeTree collapses them; FINAL (or a
# distinct count on event_id) hides copies not merged yet.
CLICKS = Table(
    "clicks",
    _cols(
        ("event_id", STR), ("ts", TS), ("visitor_id", STR), ("tracking_code", STR),
        ("campaign", STR), ("material_id", STR), ("ip_hash", STR), ("user_agent", STR),
        ("url", STR), ("referrer", STR), ("method", ENUM),
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(tracking_code, ts, event_id)",
)

SIGNUPS = Table(
    "signups",
    _cols(
        ("event_id", STR), ("ts", TS), ("account_id", STR), ("visitor_id", STR),
        ("ip_hash", STR), ("user_agent", STR), ("email_domain", STR), ("email_hash", STR),
        ("account_type", ENUM), ("realname_id_hash", STR), ("device_id", STR),
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(account_id, ts, event_id)",
)

ORDERS = Table(
    "orders",
    _cols(
        ("event_id", STR), ("ts", TS), ("order_id", STR), ("account_id", STR), ("cart_id", STR),
        ("product", ENUM), ("sku", STR), ("category", ENUM), ("amount", MONEY),
        ("discount", MONEY), ("currency", ENUM), ("status", ENUM), ("renewal", BOOL),
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(order_id, ts, event_id)",
)

# Mutable state, one row per natural id, the highest version wins. Not partitioned: a
# later version may carry a different event time (e.g. a re-attributed click), and
# background merges only collapse rows within one partition.
ATTRIBUTIONS = Table(
    "attributions",
    _cols(
        ("account_id", STR), ("signup_event_id", STR), ("signup_ts", TS), ("visitor_id", STR),
        ("tracking_code", STR), ("campaign", STR), ("click_event_id", STR), ("click_ts", TS),
        ("final", BOOL), ("version", "UInt64"),
    ),
    engine="ReplacingMergeTree(version)",
    order_by="account_id",
    comment="signup -> click; tracking_code '' and click_ts 0 when organic",
)

CONVERSIONS = Table(
    "conversions",
    _cols(
        ("order_id", STR), ("revision", "UInt32"), ("status", ENUM), ("reasons", "Array(String)"),
        ("promoter_id", STR), ("tracking_code", STR), ("campaign", STR), ("account_id", STR),
        ("visitor_id", STR), ("click_event_id", STR), ("click_ts", TS),
        ("signup_event_id", STR), ("signup_ts", TS), ("order_event_id", STR), ("order_ts", TS),
        ("cart_id", STR), ("product", ENUM), ("category", ENUM), ("amount", MONEY),
        ("discount", MONEY), ("currency", ENUM), ("order_status", ENUM), ("renewal", BOOL),
        ("attribution_model", ENUM), ("attribution_final", BOOL), ("decided_at", TS),
        # pricing and explanation (migration 2; docs/rules.md)
        ("level", "UInt8"), ("rate", "Decimal(9, 6)"), ("tier", "UInt8"), ("commission", MONEY),
        ("bonus", MONEY), ("points", "Int64"), ("cap_applied", BOOL), ("first_order", BOOL),
        ("rule_version", ENUM),
    ),
    engine="ReplacingMergeTree(revision)",
    order_by="order_id",
)

PROMOTERS = Table(
    "promoters",
    _cols(
        ("promoter_id", STR), ("tracking_code", STR), ("level", "UInt16"), ("account_type", ENUM),
        ("account_id", STR), ("is_employee", BOOL), ("is_partner_staff", BOOL),
        ("verified", BOOL), ("joined_at", TS), ("ts", TS), ("event_id", STR),
        # the promoter's identity for self-referral checks (migration 2)
        ("realname_id_hash", STR), ("email_hash", STR), ("device_id", STR), ("ip_hash", STR),
    ),
    engine="ReplacingMergeTree",
    order_by="(tracking_code, ts, event_id)",
)

EXCLUSIONS = Table(
    "exclusions",
    _cols(
        ("account_id", STR), ("email_domain", STR), ("owner", ENUM), ("since", TS), ("ts", TS),
        ("event_id", STR),
    ),
    engine="ReplacingMergeTree",
    order_by="(account_id, email_domain, ts, event_id)",
    comment="customers owned by direct sales or a channel partner (reference data)",
)

# Operational reports. Deduplicated on their natural keys as well, so a redelivered
# batch does not inflate the late / dead-letter counts.
LATE_EVENTS = Table(
    "late_events",
    _cols(
        ("kind", ENUM), ("event_id", STR), ("ts", TS), ("watermark", TS), ("lateness_ms", "Int64"),
        ("join", ENUM), ("source", STR), ("key", STR),
        ("inserted_at", TS, "now64(3, 'UTC')"),
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(`join`, kind, event_id)",
)

DEAD_LETTERS = Table(
    "dead_letters",
    _cols(
        ("reason", STR), ("topic", ENUM), ("partition", "Int32"), ("offset", "Int64"),
        ("key", STR), ("value", STR), ("at", TS),
        # the original value's size and SHA-256 (`value` may be cut to its head; migration 4)
        ("value_bytes", "UInt64"), ("value_sha256", STR), ("truncated", BOOL),
    ),
    engine="ReplacingMergeTree",
    order_by="(topic, `partition`, `offset`)",
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (CLICKS, SIGNUPS, ORDERS, ATTRIBUTIONS, CONVERSIONS, PROMOTERS, EXCLUSIONS, LATE_EVENTS,
              DEAD_LETTERS)
}

#: view name -> SELECT. `*_current` views are the deduplicated, latest-state contract
#: that dashboards and `sinks.queries` read.
#:
#: `spam_codes` and `conversions_current` are placeholders here: the latter shows the join's
#: latest decision per order, without the two rules ClickHouse applies over a whole code or
#: promoter (click spamming, the retroactive enterprise reversal). Those rules live with
#: their Python definitions (`streams/logic/rules/views.py`, which sinks may not import),
#: and the sink agent replaces both views with their rule-applying versions, thresholds from
#: the newest rule set, every time it opens ClickHouse (`streams.agents.sink`).
VIEWS: dict[str, str] = {
    "attributions_current": "SELECT * FROM attributions FINAL",
    "spam_codes": "SELECT tracking_code, count() AS signups, count() AS long FROM attributions_current "
                  "WHERE 0 GROUP BY tracking_code",
    "conversions_current": "SELECT * FROM conversions FINAL",
    # One line per promoter, month and status, traceable to its orders.
    "promoter_statement": """SELECT promoter_id, toStartOfMonth(order_ts) AS month, status,
        count() AS orders, sum(amount) AS amount, sum(commission) AS commission,
        sum(bonus) AS bonus, sum(points) AS points, groupArray(order_id) AS order_ids
    FROM conversions_current WHERE promoter_id != ''
    GROUP BY promoter_id, month, status""",
    "exclusions_current": "SELECT * FROM exclusions FINAL",
    "promoters_current": (
        "SELECT * FROM promoters FINAL "
        "ORDER BY tracking_code, ts DESC, event_id DESC LIMIT 1 BY tracking_code"
    ),
}
