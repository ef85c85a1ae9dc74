"""`refstream` — command line entry point. Every command has --help.

Settings come from REFSTREAM_* environment variables (see README, "Configuration").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from streams.config import ConfigError, Settings


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the Faust worker (router, joins, ClickHouse sink) until stopped."""
    import faust

    from streams import logs
    from streams.app import create_app
    from streams.topics import ensure_pipeline_topics_sync, partition_counts_sync

    logs.setup(settings.log_level)
    if args.create_topics:
        ensure_pipeline_topics_sync(settings)
    app = create_app(settings, partition_counts_sync(settings, ["clicks", "signups", "orders"]))
    worker = faust.Worker(app, loglevel=settings.log_level, logging_config=logs.logging_config(settings.log_level))
    worker.execute_from_commandline()
    return 0


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    """Start, stop or show the embedded local stack (Tansu broker, Redis)."""
    from streams import stack

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
    from streams import generate

    try:
        return asyncio.run(generate.run(args, settings))
    except KeyboardInterrupt:
        return 130


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams import demo

    return demo.run(args, settings)


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
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("stack", help="local stack: up | down | status", description=cmd_stack.__doc__)
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_stack)

    from streams import demo, generate

    p = sub.add_parser("generate", help="produce realistic sample traffic",
                       description="Produce sample promoters, clicks, signups and orders to the input topics.")
    generate.add_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="run the whole pipeline on the local stack with sample traffic",
                       description=demo.__doc__)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)
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
