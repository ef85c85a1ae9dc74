"""`refstream` — command line entry point. Every command has --help.

Settings come from REFSTREAM_* environment variables (see README, "Configuration").
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from schemas.units import utc_text
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
    from streams.adapters.topics import ensure_pipeline_topics_sync, partition_counts_sync
    from streams.agents.app import create_app
    from streams.agents.sink import EXIT_UNDRAINED
    from streams.topology import RAW_TOPICS

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


def cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    """Print a promoter's statement for a month: per currency the opening balance, earned
    (conversions that became payable that month), held, clawed back, paid and in payment (net
    commission and clawback lines of that month's confirmed / pending batches), closing balance
    and points; then the month's orders by status. With
    --orders, every order behind those figures."""
    from sinks import queries
    from sinks.clickhouse import connect
    from streams.logic.rules.checks import PAYABLE_STATUSES

    promoter = args.promoter or args.promoter_opt
    if not promoter or (args.promoter and args.promoter_opt and args.promoter != args.promoter_opt):
        print("refstream statement: give one promoter: refstream statement PROMOTER --month YYYY-MM", file=sys.stderr)
        return 2
    client = connect(settings.clickhouse)
    try:
        money = queries.statement_v2(client, promoter, args.month)
        lines, orders = queries.statement(client, promoter, args.month)
        behind = _orders_behind(client, money) if args.orders else []
    finally:
        client.close()
    print(f"statement of {promoter} for {args.month}\n")
    if money:
        totals = ("currency", "opening", "earned", "held", "clawed_back", "paid", "in_payment", "closing",
                  "points_earned", "points_cashed", "points_paid")
        print(queries.format_table(totals, money, frozenset(totals[1:])))
    else:
        print("(no money movements up to this month)")
    print(f"\norders of {args.month} by status:")
    if not lines:
        print("(no conversions)")
    else:
        num = frozenset({"orders", "amount", "commission", "bonus", "points"})
        print(queries.format_table(("status", "orders", "amount", "commission", "bonus", "points"), lines, num))
        payable = [ln for ln in lines if ln["status"] in PAYABLE_STATUSES]
        by_currency: dict[str, Decimal] = {}
        for ln in payable:  # money is in each line's program currency
            by_currency[ln["currency"]] = by_currency.get(ln["currency"], Decimal(0)) + ln["commission"] + ln["bonus"]
        for currency, total in sorted(by_currency.items()):
            print(f"\ncommission + bonus on approved and held orders: {total:,.2f} {currency}")
    if args.orders:
        if behind:
            print("\norders behind the figures:")
            figures = ("figure", "currency", "order_id", "order_ts", "status", "reasons", "commission", "bonus",
                       "payable_at")
            print(queries.format_table(figures, behind, frozenset({"commission", "bonus"})))
        if orders:
            for o in orders:
                o["order_ts"] = utc_text(o["order_ts"])
            cols = ("order_id", "order_ts", "status", "reasons", "amount", "rate", "tier", "cap_applied",
                    "commission", "bonus", "points", "rule_version")
            print(f"\norders of {args.month}:")
            print(queries.format_table(cols, orders, frozenset({"amount", "rate", "tier", "commission",
                                                                "bonus", "points"})))
    return 0


#: statement figure -> the column of `statement_v2` naming its orders
_FIGURE_ORDERS = {"earned": "earned_orders", "held": "held_orders", "clawed back": "clawed_back_orders"}


def _orders_behind(client: Any, money: list[dict]) -> list[dict]:
    """One row per (figure, currency, order) of a v2 statement, with the order's conversion."""
    from sinks import queries

    wanted = [(figure, row["currency"], oid) for row in money
              for figure, col in _FIGURE_ORDERS.items() for oid in row.get(col, [])]
    found = {c["order_id"]: c for c in queries.conversions_for(client, sorted({oid for *_, oid in wanted}))}
    out = []
    for figure, currency, oid in wanted:
        c = found.get(oid, {})
        out.append({"figure": figure, "currency": currency, "order_id": oid,
                    "order_ts": utc_text(c["order_ts"]) if c else "", "status": c.get("status", ""),
                    "reasons": ",".join(c.get("reasons", [])), "commission": c.get("commission", Decimal(0)),
                    "bonus": c.get("bonus", Decimal(0)),
                    "payable_at": utc_text(c["payable_at"]) if c.get("payable_at") else ""})
    return out


def _through(value: str) -> date:
    from streams.jobs.payouts import parse_through

    try:
        return parse_through(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _payout_job(fn: Callable[[], Any]) -> int:
    """Run a payout job: its expected failures print what to do and exit 1."""
    from streams.adapters.payout_lock import LockError
    from streams.jobs.payouts import PayoutError

    try:
        fn()
    except (PayoutError, LockError) as exc:
        print(f"refstream: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_payouts_run(args: argparse.Namespace, settings: Settings) -> int:
    """Pay every promoter's payable balance through a day (or a month's last day): plan a
    batch against what earlier pending and paid batches booked, write it (status pending),
    print the summary and write the finance CSV. Nothing new to pay writes nothing.
    Two runs never plan at once (a Redis lock per deployment); re-running pays nothing twice."""
    from streams import logs
    from streams.jobs import payouts

    logs.setup(settings.log_level)
    return _payout_job(lambda: payouts.run(settings, args.through, wait_s=args.wait, csv_path=args.csv,
                                           lines_csv=args.lines_csv, actor=args.actor))


def cmd_payouts_confirm(args: argparse.Namespace, settings: Settings) -> int:
    """Mark a pending batch paid, once the bank transfer went out."""
    from streams import logs
    from streams.jobs import payouts

    logs.setup(settings.log_level)
    return _payout_job(lambda: payouts.confirm(settings, args.batch, actor=args.actor, wait_s=args.wait))


def cmd_payouts_fail(args: argparse.Namespace, settings: Settings) -> int:
    """Mark a pending batch failed (the transfer did not go out): its lines are released and
    the next run pays them. A paid batch cannot fail: a later refund becomes a clawback line."""
    from streams import logs
    from streams.jobs import payouts

    logs.setup(settings.log_level)
    return _payout_job(lambda: payouts.fail(settings, args.batch, args.reason, actor=args.actor,
                                            wait_s=args.wait))


def cmd_payouts_list(args: argparse.Namespace, settings: Settings) -> int:
    """List the payout batches, oldest first: status, through day, cut-off, promoters, lines and
    totals per currency."""
    from streams import logs
    from streams.jobs import payouts

    logs.setup(settings.log_level)
    return _payout_job(lambda: payouts.list_batches(settings, wait_s=args.wait))


def cmd_payouts_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write a batch's finance CSV (one row per promoter payout) again from ClickHouse, and with
    --lines-csv its lines: for a run that stopped after writing its batch but before its CSV, or
    a lost file. A failed batch has nothing to export (its lines go into the next run)."""
    from streams import logs
    from streams.jobs import payouts

    logs.setup(settings.log_level)
    return _payout_job(lambda: payouts.export(settings, args.batch, csv_path=args.csv, lines_csv=args.lines_csv,
                                              wait_s=args.wait))


def add_payouts_parser(sub: Any) -> None:
    p = sub.add_parser("payouts", help="payout runs: run | confirm | fail | list | export",
                       description="Payout runs (docs/payouts.md): pay the promoters' payable balances in batches, "
                                   "then confirm or fail each batch.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                       help="how long to wait for another payout job holding the lock (default 120)")
        q.add_argument("--actor", default="", help="who does this, for the batch row (default: the OS user)")

    q = verbs.add_parser("run", help="plan and write a payout batch", description=cmd_payouts_run.__doc__)
    q.add_argument("--through", required=True, type=_through, metavar="YYYY-MM-DD|YYYY-MM",
                   help="pay what is payable by the end of this day (UTC); a month means its last day")
    q.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="finance CSV, one row per promoter payout (default: payout-<batch>.csv here)")
    q.add_argument("--lines-csv", type=Path, default=None, metavar="PATH", help="also write every line to this CSV")
    common(q)
    q.set_defaults(func=cmd_payouts_run)

    q = verbs.add_parser("confirm", help="mark a pending batch paid", description=cmd_payouts_confirm.__doc__)
    q.add_argument("batch", help="batch id, e.g. PO-20261130-01")
    common(q)
    q.set_defaults(func=cmd_payouts_confirm)

    q = verbs.add_parser("fail", help="mark a pending batch failed", description=cmd_payouts_fail.__doc__)
    q.add_argument("batch", help="batch id, e.g. PO-20261130-01")
    q.add_argument("--reason", required=True, help="why the transfer did not go out")
    common(q)
    q.set_defaults(func=cmd_payouts_fail)

    q = verbs.add_parser("list", help="list the payout batches", description=cmd_payouts_list.__doc__)
    q.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for another payout job holding the lock (default 120)")
    q.set_defaults(func=cmd_payouts_list)

    q = verbs.add_parser("export", help="write a batch's finance CSV again", description=cmd_payouts_export.__doc__)
    q.add_argument("batch", help="batch id, e.g. PO-20261130-01")
    q.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="finance CSV, one row per promoter payout (default: payout-<batch>.csv here)")
    q.add_argument("--lines-csv", type=Path, default=None, metavar="PATH", help="also write every line to this CSV")
    q.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for another payout job holding the lock (default 120)")
    q.set_defaults(func=cmd_payouts_export)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Reprocess the stored events with a candidate rule book and report what would change,
    per promoter and per reason, without touching the live results. With --against-stored,
    also compare the replay under the rule book in force with the stored conversions_current,
    field by field; the exit status is then 1 when any conversion differs (for CI), else 0."""
    from sinks import queries, stored
    from sinks.clickhouse import connect
    from streams.logic import replay
    from streams.logic.rules.ruleset import load_rules

    if not (args.rules or args.against_stored):
        print("refstream: replay needs --rules, --against-stored or both", file=sys.stderr)
        return 2
    try:
        candidate = load_rules(args.rules) if args.rules else None
    except ValueError as exc:
        print(f"refstream: {exc}", file=sys.stderr)
        return 2
    current = load_rules(settings.rules_file)
    client = connect(settings.clickhouse)
    print("reading stored events from ClickHouse ...", file=sys.stderr)
    events = stored.load(client)
    print(f"replaying {len(events.clicks):,} clicks, {len(events.signups):,} signups, "
          f"{len(events.orders):,} orders ...", file=sys.stderr)
    lo = _day_ms(args.from_) if args.from_ else None
    hi = _day_ms(args.to) if args.to else None

    def keep(c: Any) -> bool:
        return (lo is None or c.order_ts >= lo) and (hi is None or c.order_ts < hi)

    s = settings
    base = [c for c in replay.run(events, current, s.window_ms, s.binding_ms, s.refund_window_ms,
                                  s.attribution_model) if keep(c)]
    if candidate is not None:
        new = [c for c in replay.run(events, candidate, s.window_ms, s.binding_ms, s.refund_window_ms,
                                     s.attribution_model) if keep(c)]
        _print_candidate(replay.compare(base, new), current, candidate, args.top)
        # sales champions of the months closed by the newest stored order (the views' event time "now")
        now = max((o.ts for o in events.orders), default=0) - s.lateness_ms
        champions = replay.champion_changes(replay.champions_of(base, current, now),
                                            replay.champions_of(new, candidate, now))
        if champions:
            print("\nsales champions that change:")
            print(queries.format_table(("month", "currency", "rank", "promoter_base", "bonus_base", "promoter_new",
                                        "bonus_new"), champions, frozenset({"bonus_base", "bonus_new"})))
    if not args.against_stored:
        return 0
    if candidate is not None:
        print()
    diff = replay.against_stored(queries.conversions_between(client, lo, hi), base, args.show)
    _print_against_stored(diff, current, args.top)
    return 1 if diff.differing else 0


_REPLAY_NUMERIC = frozenset({"approved_base", "approved_new", "held_base", "held_new", "commission_base",
                             "commission_new", "commission_delta", "orders_base", "orders_new", "delta", "orders",
                             "differing", "commission_stored", "commission_replayed"})


def _print_candidate(diff: Any, current: Any, candidate: Any, top: int) -> None:
    from sinks import queries

    print(f"{diff.changed_orders:,} of {diff.orders:,} conversions change "
          f"(rules {[r.version for r in current.rule_sets]} -> {[r.version for r in candidate.rule_sets]})\n")
    print(queries.format_table(("promoter_id", "approved_base", "approved_new", "held_base", "held_new",
                                "commission_base", "commission_new", "commission_delta"),
                               diff.by_promoter[:top], _REPLAY_NUMERIC))
    print()
    print(queries.format_table(("reason", "orders_base", "orders_new", "delta"), diff.by_reason, _REPLAY_NUMERIC))


def _print_against_stored(diff: Any, current: Any, top: int) -> None:
    from sinks import queries

    print(f"{diff.differing:,} of {diff.orders:,} stored conversions differ from the replay "
          f"(rules {[r.version for r in current.rule_sets]})")
    if not diff.differing:
        return
    print()
    print(queries.format_table(("field", "orders"), diff.by_field, _REPLAY_NUMERIC))
    print()
    print(queries.format_table(("promoter_id", "orders", "differing", "commission_stored", "commission_replayed",
                                "commission_delta"), diff.by_promoter[:top], _REPLAY_NUMERIC))
    print()
    lines = [{"order_id": d.order_id, "promoter_id": d.promoter_id, "field": f, "stored": _shown(a),
              "replayed": _shown(b)} for d in diff.first for f, a, b in d.fields]
    print(queries.format_table(("order_id", "promoter_id", "field", "stored", "replayed"), lines))


def _shown(value: Any) -> str:
    if isinstance(value, tuple):  # reasons
        return ",".join(value) or "-"
    return str(value) if value != "" else "-"


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", default=None, help="candidate rule book (TOML, see docs/rules.md)")
    p.add_argument("--against-stored", action="store_true",
                   help="compare the replay under the rule book in force with the stored conversions_current, "
                        "order by order: status (its auto_status: reviews are not replayed), reasons (in any "
                        "order, without a review's code), promoter_id, tracking_code, order_status, amount, "
                        "first_order, rule_version, level, rate, tier, commission, bonus, points and cap "
                        "(money not for orders a review rejected). Click spamming and the enterprise reversal, "
                        "which conversions_current applies in SQL, are replayed too; revision, decided_at, the "
                        "attribution and the evidence columns are not compared. Exit status 1 when any "
                        "conversion differs")
    p.add_argument("--from", dest="from_", default=None, help="only orders at or after this day (YYYY-MM-DD)")
    p.add_argument("--to", default=None, help="only orders before this day (YYYY-MM-DD)")
    p.add_argument("--top", type=int, default=20, help="promoters to list (largest changes first)")
    p.add_argument("--show", type=int, default=20, metavar="N",
                   help="with --against-stored: differing orders to list, field by field (default 20)")


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
    p.set_defaults(func=cmd_worker, uses_kafka=True)

    p = sub.add_parser("stack", help="local stack: up | down | status", description=cmd_stack.__doc__)
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_stack)

    from streams.dev import demo, generate

    p = sub.add_parser("generate", help="produce realistic sample traffic",
                       description="Produce sample promoters, clicks, signups and orders to the input topics.")
    generate.add_arguments(p)
    p.set_defaults(func=cmd_generate, uses_kafka=True)

    p = sub.add_parser("demo", help="run the whole pipeline on the local stack with sample traffic",
                       description=demo.__doc__)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("statement", help="a promoter's monthly statement", description=cmd_statement.__doc__)
    p.add_argument("promoter", nargs="?", default=None, help="promoter_id")
    p.add_argument("--promoter", dest="promoter_opt", default=None, metavar="PROMOTER",
                   help="promoter_id (the older form of the argument)")
    p.add_argument("--month", required=True, type=_month, help="YYYY-MM (UTC)")
    p.add_argument("--orders", action="store_true", help="also list every order behind the figures")
    p.set_defaults(func=cmd_statement)

    add_payouts_parser(sub)

    p = sub.add_parser("replay", help="backtest another rule book on the stored events",
                       description=cmd_replay.__doc__)
    add_replay_arguments(p)
    p.set_defaults(func=cmd_replay)
    return parser


def check_kafka(settings: Settings) -> int:
    """Connect to Kafka once as the command's clients will: a wrong certificate, password or
    protocol ends the command here with one line saying which setting to fix (exit status 2,
    as for any configuration error), not with clients retrying in the log."""
    from streams.adapters.kafka_check import check_connection

    try:
        check_connection(settings)
    except ConfigError as exc:
        print(f"refstream: kafka: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"refstream: configuration error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "uses_kafka", False) and not getattr(args, "dry_run", False):
        code = check_kafka(settings)
        if code:
            return code
    try:
        return args.func(args, settings)
    except Exception as exc:  # expected operational failures: say what and how, no traceback
        if type(exc).__name__ not in ("StackError", "DsnError", "ChdbOpenError", "KafkaConnectionError"):
            raise
        print(f"refstream: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
