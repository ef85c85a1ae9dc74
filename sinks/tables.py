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
#: exchange rates: below 10^12 with at most 12 decimal places (schemas.validate), stored exactly
FX_RATE = "Decimal(24, 12)"
STR = "String"
ENUM = "LowCardinality(String)"  # small sets of values: statuses, kinds, currencies
BOOL = "Bool"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    default: str | None = None  # filled by ClickHouse (not part of inserted rows) when set
    #: inserted all the same: the default only fills the rows written before the column existed
    written: bool = False

    def sql(self) -> str:
        """The column's definition, as CREATE TABLE and ADD COLUMN take it."""
        return f"{quote(self.name)} {self.type}" + (f" DEFAULT {self.default}" if self.default else "")


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
        return tuple(c.name for c in self.columns if c.default is None or c.written)

    @property
    def insert_types(self) -> tuple[str, ...]:
        """ClickHouse types of `insert_columns`: lets an insert skip the DESCRIBE round trip."""
        return tuple(c.type for c in self.columns if c.default is None or c.written)

    def create_sql(self) -> str:
        cols = ",\n    ".join(c.sql() for c in self.columns)
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


def _cols(*spec: tuple[str, str] | tuple[str, str, str] | tuple[str, str, str, bool]) -> tuple[Column, ...]:
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
        ("coupon_code", STR),  # migration 8
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
        ("coupon_code", STR),  # migration 8
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
        # the evidence behind the reasons, for the review queue (migration 5): the larger of
        # the IP / visitor click counts and of the IP / device signup counts, the exclusion's
        # owner, and which of the promoter's identities the customer shares ('' = none)
        ("flood_clicks", "UInt32"), ("farm_signups", "UInt32"), ("exclusion_owner", ENUM),
        ("identity_match", ENUM),
        # which limit cut the commission, '' for none (migration 6; `cap_applied` = cap != '')
        ("cap", ENUM),
        # multi-currency, coupons, two-level referrals (migration 7; docs/rules.md "Currencies"):
        # commission and bonus are in program_currency. The defaults fill older rows, priced in
        # their order's currency; the sink writes every column
        ("program_currency", ENUM, "currency", True), ("program_amount", MONEY, "amount", True),
        ("fx_rate", FX_RATE, "1", True), ("attributed_by", ENUM, "'click'", True),
        ("coupon_code", STR), ("override_of", STR),
    ),
    # revision: decision revision << 16 + price changes (streams/logic/pricing.py), so UInt32
    # holds 65,535 decision revisions of an order
    engine="ReplacingMergeTree(revision)",
    order_by="order_id",
)

# Review decisions (the `reviews` topic): the audit log of who decided what and why.
# One row per event_id, its first copy; `conversions_current` applies them (docs/payouts.md).
REVIEWS = Table(
    "reviews",
    _cols(
        ("event_id", STR), ("ts", TS), ("order_id", STR), ("promoter_id", STR), ("decision", ENUM),
        ("reason", STR), ("actor", STR),
    ),
    # Merges collapse identical copies only (the whole row is the key); of different copies of
    # one event_id (a retried decision with a later ts) the view `reviews_first` reads the
    # earliest, so a retry never re-times or rewords the first, before or after merges.
    engine="ReplacingMergeTree",
    order_by="(event_id, ts, order_id, promoter_id, decision, reason, actor)",
    comment="one of order_id / promoter_id is set; promoter_id: all his open conversions",
)

# Payout runs (docs/payouts.md). A batch's lines and per-promoter payouts are written first,
# under the run's `attempt`; the batch row is written last and names that attempt, so the
# rows of a run killed half-way (no batch row, or another attempt) are never read.
# Status changes (pending -> paid | failed) insert the batch row again with a higher version.
PAYOUT_BATCHES = Table(
    "payout_batches",
    _cols(
        ("batch_id", STR), ("attempt", STR), ("through", TS), ("cutoff", TS), ("status", ENUM),
        ("version", "UInt64"), ("created_at", TS), ("updated_at", TS), ("actor", STR), ("note", STR),
        ("promoters", "UInt32"), ("lines", "UInt32"),
    ),
    engine="ReplacingMergeTree(version)",
    order_by="batch_id",
    comment="status: pending (to be paid) | paid (confirmed) | failed (lines released)",
)

PAYOUT_LINES = Table(
    "payout_lines",
    _cols(
        ("batch_id", STR), ("attempt", STR), ("promoter_id", STR), ("currency", ENUM),
        ("order_id", STR), ("revision", "UInt32"), ("kind", ENUM), ("part", "UInt16"),
        ("parts", "UInt16"), ("amount", MONEY), ("points", "Int64"), ("payable_at", TS),
        ("order_ts", TS),
    ),
    engine="ReplacingMergeTree",
    order_by="(batch_id, attempt, promoter_id, currency, kind, order_id)",
    comment="kind: commission | clawback (negative) | points (order_id empty)",
)

PAYOUTS = Table(
    "payouts",
    _cols(
        ("batch_id", STR), ("attempt", STR), ("promoter_id", STR), ("currency", ENUM),
        ("lines_total", MONEY), ("carried_in", MONEY), ("amount", MONEY), ("carried_out", MONEY),
        ("points_cashed", "Int64"), ("lines", "UInt32"),
    ),
    engine="ReplacingMergeTree",
    order_by="(batch_id, attempt, promoter_id, currency)",
    comment="amount = lines_total + carried_in rounded down to the currency minor unit",
)

PROMOTERS = Table(
    "promoters",
    _cols(
        ("promoter_id", STR), ("tracking_code", STR), ("level", "UInt16"), ("account_type", ENUM),
        ("account_id", STR), ("is_employee", BOOL), ("is_partner_staff", BOOL),
        ("verified", BOOL), ("joined_at", TS), ("ts", TS), ("event_id", STR),
        # the promoter's identity for self-referral checks (migration 2)
        ("realname_id_hash", STR), ("email_hash", STR), ("device_id", STR), ("ip_hash", STR),
        # coupon codes and the recruiter (migration 8)
        ("coupon_codes", "Array(String)"), ("parent_promoter_id", STR),
    ),
    engine="ReplacingMergeTree",
    order_by="(tracking_code, ts, event_id)",
)

FX_RATES = Table(
    "fx_rates",
    _cols(
        ("currency", ENUM), ("rate", FX_RATE), ("effective_from", TS), ("ts", TS), ("event_id", STR),
    ),
    engine="ReplacingMergeTree",
    order_by="(currency, effective_from, ts, event_id)",
    comment="program-currency units per unit of currency, from effective_from (reference data)",
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
    for t in (CLICKS, SIGNUPS, ORDERS, ATTRIBUTIONS, CONVERSIONS, PROMOTERS, EXCLUSIONS, FX_RATES,
              LATE_EVENTS, DEAD_LETTERS, REVIEWS, PAYOUT_BATCHES, PAYOUT_LINES, PAYOUTS)
}

#: the views over the payout tables: a batch's rows are those of the attempt its batch row names
PAYOUT_VIEWS: dict[str, str] = {
    "payout_batches_current": "SELECT * FROM payout_batches FINAL",
    "payout_lines_current": (
        "SELECT l.*, b.status AS batch_status, b.through AS through FROM payout_lines AS l FINAL "
        "INNER JOIN payout_batches_current AS b ON l.batch_id = b.batch_id AND l.attempt = b.attempt"
    ),
    "payouts_current": (
        "SELECT p.*, b.status AS batch_status, b.through AS through, b.created_at AS created_at "
        "FROM payouts AS p FINAL "
        "INNER JOIN payout_batches_current AS b ON p.batch_id = b.batch_id AND p.attempt = b.attempt"
    ),
}

#: view name -> SELECT. `*_current` views are the deduplicated, latest-state contract
#: that dashboards and `sinks.queries` read.
#:
#: `spam_codes`, `conversions_current`, `review_audit`, `champion_bonuses`, `promoter_balances`
#: and `promoter_statement` are placeholders here, with the columns of the real views: the program
#: rules ClickHouse applies (click spamming, the retroactive enterprise reversal, review
#: decisions, each rule version's holding period) live with their Python definitions
#: (`streams/logic/rules/views.py`, which sinks may not import), and the sink agent and the
#: payout jobs replace these views with the rule-applying ones, from the rule book, every time
#: they open ClickHouse. Until then: conversions as the join decided them, payable after the
#: default 30 days, no decision applied, and no balances or statements.
_NO_TIME = "toDateTime64(0, 3, 'UTC')"
_ZERO = "toDecimal128(0, 4)"
VIEWS: dict[str, str] = {
    "attributions_current": "SELECT * FROM attributions FINAL",
    "spam_codes": "SELECT tracking_code, count() AS signups, count() AS long FROM attributions_current "
                  "WHERE 0 GROUP BY tracking_code",
    "conversions_current": f"""SELECT *,
        if(status = 'approved', order_ts + toIntervalDay(30), {_NO_TIME}) AS payable_at, '' AS review,
        '' AS review_actor, '' AS review_reason, {_NO_TIME} AS review_ts, toUInt64(0) AS reviews,
        status AS auto_status
    FROM conversions FINAL""",
    # each decision's earliest copy, like the real view (streams.logic.rules.reviews.FIRST_COPIES_SQL)
    "review_audit": f"""SELECT event_id, tupleElement(copy, 1) AS ts, tupleElement(copy, 6) AS actor,
        tupleElement(copy, 5) AS reason, toLowCardinality(tupleElement(copy, 4)) AS decision,
        if(tupleElement(copy, 2) != '', 'order', 'promoter') AS scope, tupleElement(copy, 2) AS order_id,
        tupleElement(copy, 3) AS promoter_id, '' AS status_before,
        '' AS status_after, toDecimal64(0, 4) AS commission_before, toDecimal64(0, 4) AS commission_after,
        {_NO_TIME} AS payable_before, {_NO_TIME} AS payable_after, 'not applied: rules not installed' AS note
    FROM (SELECT event_id, min((ts, order_id, promoter_id, toString(decision), reason, actor)) AS copy
          FROM reviews GROUP BY event_id)""",
    "champion_bonuses": f"""SELECT toUInt32(0) AS month, toLowCardinality('') AS currency, toUInt64(0) AS rank,
        '' AS promoter_id, {_ZERO} AS sales, toDecimal128(0, 4) AS bonus, {_NO_TIME} AS decided_at, '' AS line_id
    WHERE 0""",
    "promoter_balances": f"""SELECT '' AS promoter_id, toLowCardinality('') AS currency, {_ZERO} AS earned,
        {_ZERO} AS pending, {_ZERO} AS held, {_ZERO} AS clawed_back, {_ZERO} AS paid, {_ZERO} AS in_payment,
        {_ZERO} AS balance, toInt64(0) AS points_earned, toInt64(0) AS points_cashed, {_ZERO} AS points_paid
    WHERE 0""",
    "promoter_statement": f"""SELECT '' AS promoter_id, toLowCardinality('') AS currency, toDate(0) AS month,
        {_ZERO} AS opening, {_ZERO} AS earned, {_ZERO} AS held, {_ZERO} AS clawed_back, {_ZERO} AS paid,
        {_ZERO} AS in_payment, {_ZERO} AS closing, toInt64(0) AS points_earned, toInt64(0) AS points_cashed,
        {_ZERO} AS points_paid, CAST([], 'Array(String)') AS earned_orders, CAST([], 'Array(String)') AS held_orders,
        CAST([], 'Array(String)') AS clawed_back_orders
    WHERE 0""",
    "exclusions_current": "SELECT * FROM exclusions FINAL",
    "promoters_current": (
        "SELECT * FROM promoters FINAL "
        "ORDER BY tracking_code, ts DESC, event_id DESC LIMIT 1 BY tracking_code"
    ),
    # the rate of each currency in force now (wall clock), as `streams.logic.fx.FxDirectory` picks it
    "fx_rates_current": (
        "SELECT * FROM fx_rates FINAL WHERE effective_from <= now64(3, 'UTC') "
        "ORDER BY currency, effective_from DESC, event_id DESC LIMIT 1 BY currency"
    ),
    **PAYOUT_VIEWS,
}
