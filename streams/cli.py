"""`refstream` — command line entry point. Every command has --help.

Settings come from REFSTREAM_* environment variables (see README, "Configuration").
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from streams.config import ROLES, ConfigError, Settings


def _use_uvloop() -> None:
    """uvloop's event loop: the worker's per-message work is mostly event-loop work
    (futures, callbacks, socket writes), which uvloop does in C."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run a Faust worker until stopped: by role (REFSTREAM_ROLE or --role) the router and joins
    (stream), the ClickHouse sink with the stats API and dashboard (sink), or all of it (all)."""
    import faust

    from streams import logs
    from streams.agents.app import create_app
    from streams.agents.sink import EXIT_UNDRAINED
    from streams.topology import RAW_TOPICS, ensure_pipeline_topics_sync, partition_counts_sync

    if args.role:
        settings = dataclasses.replace(settings, role=args.role)
    logs.setup(settings.log_level)
    _use_uvloop()
    if args.create_topics:
        ensure_pipeline_topics_sync(settings)
    app = create_app(settings, partition_counts_sync(settings, list(RAW_TOPICS)))
    worker = faust.Worker(app, loglevel=settings.log_level, logging_config=logs.logging_config(settings.log_level))
    code: Any = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # how Faust's worker ends, also after a clean stop
        code = exc.code
    if app.sink is not None and app.sink.undrained:
        return EXIT_UNDRAINED  # stopped during a ClickHouse outage: its batches are left for the next run
    return code if isinstance(code, int) else 0


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    """Start, stop or show the embedded local stack (Tansu broker, Redis)."""
    from streams.dev import stack

    if args.action == "up":
        s = stack.up(settings)
        print(f"kafka  {s.kafka_url}\nredis  {s.redis_url}\ndata   {s.data_dir}")
    elif args.action == "down":
        stack.down(settings)
    else:
        print(json.dumps(stack.status(settings), indent=2, default=str))
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Produce sample traffic to the input topics."""
    from streams.dev import generate

    try:
        return asyncio.run(generate.run(args, settings))
    except KeyboardInterrupt:
        return 130


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev import demo

    return demo.run(args, settings)


def _month(value: str) -> str:
    try:
        datetime.strptime(value, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a month like 2026-03") from None
    return value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    """Print a promoter's monthly statement: approved, held, rejected and reversed lines
    with counts, amounts, commission and points, and the orders behind each line."""
    from sinks import queries
    from sinks.clickhouse import connect
    from streams.logic.rules.checks import PAYABLE_STATUSES

    lines, orders = queries.statement(connect(settings.clickhouse), args.promoter, args.month)
    print(f"statement of {args.promoter} for {args.month}\n")
    if not lines:
        print("(no conversions)")
        return 0
    money = frozenset({"orders", "amount", "commission", "bonus", "points"})
    print(queries.format_table(("status", "orders", "amount", "commission", "bonus", "points"), lines, money))
    payable = [ln for ln in lines if ln["status"] in PAYABLE_STATUSES]
    total = sum((ln["commission"] + ln["bonus"] for ln in payable), Decimal(0))
    print(f"\ncommission + bonus on approved and held orders: {total:,.2f}")
    if args.orders:
        for o in orders:
            o["order_ts"] = _iso(o["order_ts"])
        cols = ("order_id", "order_ts", "status", "reasons", "amount", "rate", "tier", "cap_applied",
                "commission", "bonus", "points", "rule_version")
        print("\n" + queries.format_table(cols, orders, frozenset({"amount", "rate", "tier", "commission",
                                                                    "bonus", "points"})))
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Reprocess the stored events with a candidate rule book and report what would change,
    per promoter and per reason, without touching the live results."""
    from sinks import queries, stored
    from sinks.clickhouse import connect
    from streams.logic import replay
    from streams.logic.rules.ruleset import load_rules

    try:
        candidate = load_rules(args.rules)
    except ValueError as exc:
        print(f"refstream: {exc}", file=sys.stderr)
        return 2
    current = load_rules(settings.rules_file)
    print("reading stored events from ClickHouse ...", file=sys.stderr)
    events = stored.load(connect(settings.clickhouse))
    print(f"replaying {len(events.clicks):,} clicks, {len(events.signups):,} signups, "
          f"{len(events.orders):,} orders twice ...", file=sys.stderr)
    lo = _day_ms(args.from_) if args.from_ else None
    hi = _day_ms(args.to) if args.to else None

    def keep(c: Any) -> bool:
        return (lo is None or c.order_ts >= lo) and (hi is None or c.order_ts < hi)

    s = settings
    base = [c for c in replay.run(events, current, s.window_ms, s.binding_ms, s.refund_window_ms,
                                  s.attribution_model) if keep(c)]
    new = [c for c in replay.run(events, candidate, s.window_ms, s.binding_ms, s.refund_window_ms,
                                 s.attribution_model) if keep(c)]
    diff = replay.compare(base, new)
    print(f"{diff.changed_orders:,} of {diff.orders:,} conversions change "
          f"(rules {[r.version for r in current.rule_sets]} -> {[r.version for r in candidate.rule_sets]})\n")
    num = frozenset({"approved_base", "approved_new", "held_base", "held_new", "commission_base",
                     "commission_new", "commission_delta", "orders_base", "orders_new", "delta"})
    print(queries.format_table(("promoter_id", "approved_base", "approved_new", "held_base", "held_new",
                                "commission_base", "commission_new", "commission_delta"),
                               diff.by_promoter[:args.top], num))
    print()
    print(queries.format_table(("reason", "orders_base", "orders_new", "delta"), diff.by_reason, num))
    return 0


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", required=True, help="candidate rule book (TOML, see docs/rules.md)")
    p.add_argument("--from", dest="from_", default=None, help="only orders at or after this day (YYYY-MM-DD)")
    p.add_argument("--to", default=None, help="only orders before this day (YYYY-MM-DD)")
    p.add_argument("--top", type=int, default=20, help="promoters to list (largest changes first)")


def _day_ms(value: str) -> int:
    return int(datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refstream",
        description="Streaming attribution, fraud checks and commission pricing for referral programs. "
        "Configure with REFSTREAM_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run the stream worker", description=cmd_worker.__doc__)
    p.add_argument("--no-create-topics", dest="create_topics", action="store_false",
                   help="do not create missing input/output topics at start-up")
    p.add_argument("--role", choices=ROLES, default=None,
                   help="what this worker runs (overrides REFSTREAM_ROLE, default all): all; stream = router "
                        "and joins, no ClickHouse; sink = the ClickHouse sink, stats API and dashboard")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("stack", help="local stack: up | down | status", description=cmd_stack.__doc__)
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_stack)

    from streams.dev import demo, generate

    p = sub.add_parser("generate", help="produce realistic sample traffic",
                       description="Produce sample promoters, clicks, signups and orders to the input topics.")
    generate.add_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="run the whole pipeline on the local stack with sample traffic",
                       description=demo.__doc__)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("statement", help="a promoter's monthly statement", description=cmd_statement.__doc__)
    p.add_argument("--promoter", required=True, help="promoter_id")
    p.add_argument("--month", required=True, type=_month, help="YYYY-MM (UTC, by order time)")
    p.add_argument("--orders", action="store_true", help="also list every order behind the lines")
    p.set_defaults(func=cmd_statement)

    p = sub.add_parser("replay", help="backtest another rule book on the stored events",
                       description=cmd_replay.__doc__)
    add_replay_arguments(p)
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"refstream: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args, settings)
    except Exception as exc:  # expected operational failures: say what and how, no traceback
        if type(exc).__name__ not in ("StackError", "DsnError", "ChdbOpenError", "KafkaConnectionError"):
            raise
        print(f"refstream: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
