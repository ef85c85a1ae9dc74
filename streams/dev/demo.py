"""Run the whole pipeline once on the embedded local stack, with sample traffic.

Starts the local stack (Tansu, Redis) unless already running, starts a worker, produces
realistic traffic, waits until everything is processed, stops the worker, prints a
summary read back from ClickHouse and checks it against the traffic's ground truth, then
stops what it started. The demo uses its own topic prefix, consumer group and a fresh
ClickHouse directory, so it never mixes with earlier runs.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from streams.config import FILE_SUFFIX, Settings
from streams.topology import RAW_TOPICS, REFERENCE_TOPICS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--visitors", type=int, default=5000, help="visitors to simulate (default 5000)")
    p.add_argument("--promoters", type=int, default=20, help="promoters (default 20)")
    p.add_argument("--days", type=float, default=45,
                   help="days of traffic, ending now (default 45: older orders outlive the 30-day holding "
                        "period, so the closing payout run pays them)")
    p.add_argument("--seed", type=int, default=7, help="traffic seed (default 7)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for processing")
    p.add_argument("--keep-stack", action="store_true", help="leave the local stack running")
    p.add_argument("--linger", type=float, default=0,
                   help="keep the worker (and its dashboard) running this many seconds after processing")


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def wait_for(what: str, check, timeout: float, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode} while waiting for {what}; see {log}")
        if check():
            return
        time.sleep(1)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}; see {log}")


#: the demo's recruiters earn this share of their recruits' commission (override lines)
DEMO_OVERRIDE_RATE = Decimal("0.05")
#: the demo's rule book (unless REFSTREAM_RULES_FILE names one): the SPEC defaults, priced in
#: USD (the traffic's EUR orders are converted with its fx_rates), with two-level referrals
DEMO_RULES = f"""\
currency = "USD"

[[rule_set]]
version = "demo"
override_rate = "{DEMO_OVERRIDE_RATE}"
"""


def run(args: argparse.Namespace, base: Settings) -> int:
    from sinks import queries
    from sinks.clickhouse import connect
    from streams.adapters.topics import ensure_pipeline_topics_sync
    from streams.dev import generate, stack
    from streams.dev.traffic import TrafficSpec
    from streams.dev.traffic import generate as make_traffic

    run_id = f"demo{int(time.time())}"
    data = Path(base.data_dir).resolve()
    ch_dir = data / "demo-clickhouse"
    settings = dataclasses.replace(
        base,
        topic_prefix=base.topic_prefix or f"{run_id}-",
        app_id=f"refstream-{run_id}",
        clickhouse_dsn=base.clickhouse_dsn or f"chdb://{ch_dir}",
        web_port=base.web_port if not stack.port_open("127.0.0.1", base.web_port) else stack.free_port(),
    )
    if not base.clickhouse_dsn:
        shutil.rmtree(ch_dir, ignore_errors=True)
    if not base.rules_file:
        data.mkdir(parents=True, exist_ok=True)
        rules = data / "demo-rules.toml"
        rules.write_text(DEMO_RULES)
        settings = dataclasses.replace(settings, rules_file=str(rules))

    started = time.monotonic()
    say("starting the local stack")
    local = stack.up(settings)
    settings = on_stack(settings, local)
    ensure_pipeline_topics_sync(settings)

    env = child_env(settings)
    log = data / "demo-worker.log"
    say(f"starting a worker (log: {log}, metrics: http://127.0.0.1:{settings.web_port}/metrics)")
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        traffic = make_traffic(TrafficSpec(seed=args.seed, promoters=args.promoters, visitors=args.visitors,
                                           days=args.days, end_ms=int(time.time() * 1000), malformed=5,
                                           allowed_lateness_ms=settings.lateness_ms, currency="USD"))
        wait_for("the worker to start", lambda: (health(settings.web_port) or {}).get("ok"), 120, worker, log)
        say(f"live dashboard: http://127.0.0.1:{settings.web_port}/dashboard (stats API: /api, docs/api.md)")
        say(f"producing {len(traffic.messages)} messages "
            f"({', '.join(f'{k} {v}' for k, v in sorted(traffic.counts.messages.items()))})")
        # reference data first, as in production where promoters exist before their traffic
        asyncio.run(generate.produce(settings, only(traffic, REFERENCE_TOPICS), progress=False))
        wait_for("promoters to load",
                 lambda: (health(settings.web_port) or {}).get("promoters", 0) >= len(traffic.truth.promoters),
                 60, worker, log)
        asyncio.run(generate.produce(settings, only(traffic, RAW_TOPICS), progress=True))
        wait_processed(settings, traffic, worker, log, args.timeout)
        if args.linger > 0:
            say(f"processed; the dashboard stays up for {args.linger:g} s: "
                f"http://127.0.0.1:{settings.web_port}/dashboard")
            time.sleep(args.linger)
    finally:
        say("stopping the worker")
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        try:
            if worker.returncode in (0, -signal.SIGTERM):
                payout_run(settings, data)  # needs Redis (its lock): before the stack goes down
        finally:
            if not args.keep_stack:
                stack.down(settings)

    client = connect(settings.clickhouse)
    print()
    print(queries.format_summary(queries.promoter_summary(client)))
    counts = queries.counts(client)
    print("\nrows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    ok = check_truth(client, traffic, None if base.rules_file else DEMO_OVERRIDE_RATE)
    say(f"done in {time.monotonic() - started:.0f}s; query the results yourself with "
        f"clickhouse-connect at {settings.clickhouse} (view conversions_current)")
    return 0 if ok else 1


def payout_run(settings: Settings, data: Path) -> None:
    """The month's close: a payout run through today over what the demo produced (its
    summary on stdout, the CSV for finance under the data directory; docs/payouts.md)."""
    from datetime import UTC, datetime

    from streams.jobs import payouts

    today = datetime.now(UTC).date()
    say(f"payout run through {today} (refstream payouts run --through {today})")
    print()
    payouts.run(settings, today, csv_path=data / f"demo-payout-{today:%Y%m%d}.csv")


def wait_processed(settings: Settings, traffic, worker, log: Path, timeout: float) -> None:
    """Wait until the sink wrote every valid message and conversions stopped changing."""
    expected = {t: traffic.counts.messages.get(t, 0) - traffic.counts.malformed.get(t, 0)
                for t in RAW_TOPICS}
    malformed = sum(traffic.counts.malformed.values())
    last = {"conversions": -1, "since": time.monotonic()}

    def done() -> bool:
        h = health(settings.web_port) or {}
        rows = h.get("sink", {}).get("rows_written", {})
        progress = ", ".join(f"{t} {rows.get(t, 0)}/{n}" for t, n in expected.items())
        say(f"processed: {progress}, dead letters {rows.get('dead_letters', 0)}/{malformed}, "
            f"conversions {rows.get('conversions', 0)}")
        if any(rows.get(t, 0) < n for t, n in expected.items()) or rows.get("dead_letters", 0) < malformed:
            return False
        if rows.get("conversions", 0) != last["conversions"]:
            last.update(conversions=rows.get("conversions", 0), since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= 3

    wait_for("processing", done, timeout, worker, log)


#: status mismatches `check_truth` tolerates (see there why it can be 0)
STATUS_TOLERANCE = 0


def check_truth(client, traffic, override_rate: Decimal | None = None) -> bool:
    """Compare conversions_current with the generator's ground truth; print the verdict.

    Attribution must match exactly: the same orders, each with its tracking code and amount.
    The checks are scored per reason code against `traffic.truth.expected` (precision /
    recall table, streams/dev/scoring.py) and the statuses compared. Tolerance: the pipeline
    counts some signals "as of decision time" (flood and farming counters when an
    attribution becomes final, spam counts when an order is decided), which may
    legitimately differ from the truth's whole-traffic counts for events near a threshold
    or near a decision. The generator keeps its traffic away from both (streams/dev/traffic/
    fraud.py; tests/dev/test_generate.py checks the margins), so at most `STATUS_TOLERANCE` (0)
    status mismatches pass. Returns False on any attribution mismatch or more status
    mismatches than that; a wrong reason that leaves the status right shows in the table only.

    Override lines (a recruiter's share of his recruit's order, `override_of` set) are not
    conversions: they are left out of the comparison and checked on their own when the demo
    wrote the rule book (`override_rate`; None: not checked). The amount compared is the
    order's own and its `program_amount` (USD, converted with the traffic's fx_rates).
    """
    from sinks import queries
    from streams.dev.scoring import check_overrides, format_report, is_override_line, orders_only, score

    rows = queries.conversions_for(client)
    want = {oid: (e.tracking_code, e.amount, e.program_amount) for oid, e in traffic.truth.expected.items()}
    got = {r["order_id"]: (r["tracking_code"], Decimal(str(r["amount"])), Decimal(str(r["program_amount"])))
           for r in orders_only(rows)}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(oid for oid in set(want) & set(got) if want[oid] != got[oid])
    print(f"\ntruth check: {len(want)} expected conversions, {len(got)} in conversions_current, "
          f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} with another code or amount")
    for oid in (missing + extra + wrong)[:10]:
        print(f"  {oid}: expected {want.get(oid)}, got {got.get(oid)}")
    lines = [r for r in rows if is_override_line(r)]
    problems = check_overrides(traffic.truth, rows, override_rate) if override_rate is not None else []
    print(f"override lines: {len(lines)} in conversions_current"
          + (f", {len(problems)} differing from the truth" if override_rate is not None else " (not checked)"))
    for problem in problems[:10]:
        print(f"  {problem}")
    report = score(traffic.truth, rows)
    print("\nchecks vs the truth, per reason code:")
    print(format_report(report))
    statuses_ok = len(report.status_mismatches) <= STATUS_TOLERANCE
    if not statuses_ok:
        print(f"status check failed: {len(report.status_mismatches)} mismatches, tolerance {STATUS_TOLERANCE}")
    return not (missing or extra or wrong or problems) and statuses_ok


def only(traffic, topics: tuple[str, ...]):
    """The part of `traffic` on `topics`, in delivery order."""
    keep = [i for i, m in enumerate(traffic.messages) if m[0] in topics]
    return dataclasses.replace(traffic, messages=[traffic.messages[i] for i in keep],
                               deliver_at=[traffic.deliver_at[i] for i in keep])


def on_stack(settings: Settings, local: Any, **changes: Any) -> Settings:
    """`settings` pointed at the local stack `local`: its plaintext Tansu (the Kafka security
    settings, meant for the user's own brokers, go back to their defaults) and its Redis."""
    plaintext: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)
                                 if f.name.startswith("kafka_") and f.name != "kafka_url"}
    return dataclasses.replace(settings, kafka_url=local.kafka_url, redis_url=local.redis_url, **plaintext, **changes)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process run with `settings`: every setting by value, over
    this process's environment without the `REFSTREAM_<NAME>_FILE` variables that would clash."""
    own = to_env(settings)
    inherited = {k: v for k, v in os.environ.items() if k.removesuffix(FILE_SUFFIX) not in own}
    return {**inherited, **own}


def to_env(settings: Settings) -> dict[str, str]:
    """REFSTREAM_* variables reproducing `settings` in a child process."""
    return {f"REFSTREAM_{f.name.upper()}": str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
