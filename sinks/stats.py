"""Aggregate tables for live stats, and the `alerts` table: DDL for one migration.

`STATS_STATEMENTS` is appended to `sinks.migrations.MIGRATIONS` as one migration. Every
statement is idempotent (`IF NOT EXISTS`, backfills that may run twice), like the
other migrations.

**Exact under duplicates.** The raw tables are `ReplacingMergeTree`: a redelivered event
is stored twice until a merge collapses it, and a materialized view sees *every* insert.
So the per-minute aggregates keep `uniqExactState` of the natural id (a set, not a
counter): a duplicate adds an id already in the set and changes nothing. For the same
reason the backfill below may overlap the view (rows inserted while the migration runs)
or run twice (a re-run migration) without changing any count.

Money is *not* aggregated here: amounts live on conversions, which change (revisions,
refunds), so GMV and commission are read from `conversions_current` (one row per order,
latest revision) at query time. The raw `orders` table has no promoter; per-promoter
figures come from conversions too.

Aggregates (one row per minute and dimension values; read with `uniqExactMerge`):

- `stats_clicks_1m` — per tracking code and campaign: distinct clicks and visitors
  (tracking code -> promoter is resolved at query time via `promoters_current`);
- `stats_signups_1m` — per account type: distinct signup events and accounts (all signups,
  attributed or not);
- `stats_orders_1m` — per product, currency and order status: distinct order events and
  orders (all orders of the shop, attributed or not).
"""
from __future__ import annotations

from dataclasses import dataclass

from sinks.tables import ENUM, TS, Column, Table


@dataclass(frozen=True)
class Aggregate:
    """A per-minute AggregatingMergeTree fed by a materialized view over a raw table."""

    name: str
    source: str
    dimensions: tuple[tuple[str, str], ...]  # (column, type), taken as-is from the source
    states: tuple[tuple[str, str], ...]  # (column, source expression of uniqExact)

    @property
    def _select(self) -> str:
        dims = ", ".join(name for name, _ in self.dimensions)
        states = ", ".join(f"uniqExactState({expr}) AS {name}" for name, expr in self.states)
        return (f"SELECT toStartOfMinute(ts) AS minute, {dims}, {states} "
                f"FROM {self.source} GROUP BY minute, {dims}")

    def statements(self) -> list[str]:
        """Target table, the view that feeds it from now on, and a backfill of older rows."""
        cols = ",\n    ".join(
            ["minute DateTime('UTC')"]
            + [f"{name} {type_}" for name, type_ in self.dimensions]
            + [f"{name} AggregateFunction(uniqExact, String)" for name, _ in self.states]
        )
        order = ", ".join(["minute"] + [name for name, _ in self.dimensions])
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {cols}\n)\n"
            f"ENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMM(minute)\nORDER BY ({order})",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.name}_mv TO {self.name} AS {self._select}",
            f"INSERT INTO {self.name} {self._select}",
        ]


CLICKS_1M = Aggregate(
    "stats_clicks_1m", "clicks",
    dimensions=(("tracking_code", "String"), ("campaign", "String")),
    states=(("clicks", "event_id"), ("visitors", "visitor_id")),
)
SIGNUPS_1M = Aggregate(
    "stats_signups_1m", "signups",
    dimensions=(("account_type", ENUM),),
    states=(("signups", "event_id"), ("accounts", "account_id")),
)
ORDERS_1M = Aggregate(
    "stats_orders_1m", "orders",
    dimensions=(("product", ENUM), ("currency", ENUM), ("status", ENUM)),
    states=(("events", "event_id"), ("orders", "order_id")),
)
AGGREGATES: tuple[Aggregate, ...] = (CLICKS_1M, SIGNUPS_1M, ORDERS_1M)

#: Anomalous-spike alerts, written by the spike detector (not by this module); one row per
#: (kind, key, bucket_start), the latest detection wins. `kind` says what `key` is
#: (e.g. `promoter` or `tracking_code`).
ALERTS = Table(
    "alerts",
    (
        Column("kind", ENUM), Column("key", "String"), Column("bucket_start", TS),
        Column("observed", "UInt64"), Column("baseline", "Float64"), Column("score", "Float64"),
        Column("first_event_ts", TS), Column("detected_at", TS),
    ),
    engine="ReplacingMergeTree(detected_at)",
    order_by="(kind, key, bucket_start)",
    comment="referral spikes: observed count in a bucket vs its rolling baseline",
)

STATS_STATEMENTS: list[str] = [s for a in AGGREGATES for s in a.statements()] + [ALERTS.create_sql()]
