"""Versioned DDL migrations, applied in order at every start-up (`migrate`).

A migration is `(version, description, [statements])`. Applied versions are recorded in
`schema_migrations`; a version is recorded only after all its statements succeeded, and
every statement is idempotent (`IF NOT EXISTS`, `CREATE OR REPLACE VIEW`), so a
migration interrupted half-way, or two workers migrating at once, converge on a re-run.
Never edit a released migration: append a new one (see `sinks.tables` for adding columns).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from sinks.stats import STATS_STATEMENTS
from sinks.tables import TABLES, VIEWS, quote

log = logging.getLogger(__name__)


class Migration(NamedTuple):
    version: int
    description: str
    statements: list[str]


MIGRATIONS_TABLE = "schema_migrations"

_MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version UInt32,
    description String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version"""


def _views() -> list[str]:
    """Every view, re-created: a view expands `SELECT *` when it is created (sinks.tables)."""
    return [f"CREATE OR REPLACE VIEW {quote(name)} AS {sql}" for name, sql in VIEWS.items()]


def _add_columns(table: str, names: list[str]) -> list[str]:
    cols = {c.name: c for c in TABLES[table].columns}
    return [f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {cols[n].sql()}" for n in names]


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "raw events, attributions, conversions, promoters, late events, dead letters; *_current views",
        # every table as it is today (the ALTERs below are then no-ops); the views come with the
        # last migration that changes them, once every table they read exists
        [t.create_sql() for t in TABLES.values()],
    ),
    Migration(
        2,
        "checks and commission: conversion pricing columns, promoter identity, exclusions, statement",
        _add_columns("conversions", ["level", "rate", "tier", "commission", "bonus", "points", "cap_applied",
                                     "first_order", "rule_version"])
        + _add_columns("promoters", ["realname_id_hash", "email_hash", "device_id", "ip_hash"])
        + [TABLES["exclusions"].create_sql()],
    ),
    Migration(
        3,
        "live stats: per-minute aggregates over clicks, signups, orders (exact under duplicates); alerts",
        STATS_STATEMENTS,
    ),
    Migration(
        4,
        "bounded dead letters: size and digest of the original value, truncated flag",
        _add_columns("dead_letters", ["value_bytes", "value_sha256", "truncated"]),
    ),
    Migration(
        5,
        "after the decision: review decisions, conversion evidence, payout batches, lines and payouts",
        _add_columns("conversions", ["flood_clicks", "farm_signups", "exclusion_owner", "identity_match"])
        + [TABLES[t].create_sql() for t in ("reviews", "payout_batches", "payout_lines", "payouts")]
        + _views(),
    ),
    Migration(
        6,
        "pricing independent of arrival order: which limit cut a conversion's commission",
        _add_columns("conversions", ["cap"]) + _views(),  # the views' SELECT * must see it
    ),
    Migration(
        7,
        "multi-currency: exchange rates; conversions in the program currency, coupon and override columns",
        # the defaults price older rows in their order's currency (rate 1), attributed by click
        _add_columns("conversions", ["program_currency", "program_amount", "fx_rate", "attributed_by",
                                     "coupon_code", "override_of"])
        + [TABLES["fx_rates"].create_sql()] + _views(),
    ),
    Migration(
        8,
        "coupon codes on signups and orders, promoters' coupon codes and recruiters",
        _add_columns("signups", ["coupon_code"]) + _add_columns("orders", ["coupon_code"])
        + _add_columns("promoters", ["coupon_codes", "parent_promoter_id"]) + _views(),
    ),
]


def applied_versions(client: Any) -> set[int]:
    client.command(_MIGRATIONS_DDL)
    result = client.query(f"SELECT DISTINCT version FROM {MIGRATIONS_TABLE}")
    return {int(row[0]) for row in result.result_rows}


def migrate(client: Any, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not applied yet, in version order; return their versions."""
    migrations = MIGRATIONS if migrations is None else migrations
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {versions}")
    done = applied_versions(client)
    applied: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.version in done:
            continue
        log.info("applying ClickHouse migration %d: %s", m.version, m.description)
        for statement in m.statements:
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE, [(m.version, m.description)], column_names=["version", "description"],
            column_type_names=["UInt32", "String"],
        )
        applied.append(m.version)
    return applied


def install_views(client: Any, views: Mapping[str, str]) -> None:
    """Create or replace `views` (name -> SELECT), in the order given: the rule-applying views
    that replace the migrations' placeholders (`streams.logic.rules.views.rule_views`), installed
    by the sink agent and by the batch jobs that read them."""
    for name, sql in views.items():
        client.command(f"CREATE OR REPLACE VIEW {quote(name)} AS {sql}")
