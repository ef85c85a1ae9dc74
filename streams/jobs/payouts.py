"""Payout runs and batch status changes (`refstream payouts run | confirm | fail | list`).

A run (docs/payouts.md, "No line is paid twice"), under the deployment's payout lock, taken
before ClickHouse is opened (a chdb directory admits one process at a time):

1. cut-off = min(the last millisecond of the `--through` day (UTC), event time now - allowed lateness);
2. batch id `PO-<through day>-<n>`, n = 1 + the batches of that day with a batch row, so a run
   killed before its batch row reuses its id; a fresh random attempt id;
3. plan against what pending and paid batches booked (`streams.logic.payouts.plan`);
4. write the lines and payouts under the attempt, then the batch row (pending) naming it:
   that row commits the batch. Then the summary (stdout) and the finance CSV.
"""
from __future__ import annotations

import calendar
import csv
import getpass
import logging
import os
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import msgspec

from schemas.units import DAY_MS
from sinks import payouts as store
from sinks.clickhouse import connect
from sinks.migrations import install_views, migrate
from sinks.queries import format_table
from streams.adapters.payout_lock import Holder, PayoutLock, lock_key
from streams.config import Settings
from streams.logic.payouts.plan import CLAWBACK, Carry, Entitlement, Line, Payout, Plan, plan_payout
from streams.logic.rules.ruleset import RuleBook, load_rules
from streams.logic.rules.views import rule_views

log = logging.getLogger(__name__)

PENDING, PAID, FAILED = "pending", "paid", "failed"
#: test-only hook: sleep this long between writing a batch's lines and its batch row (the crash tests)
PAUSE_BEFORE_COMMIT_ENV = "REFSTREAM_PAYOUTS_PAUSE_BEFORE_COMMIT_S"
PAYOUT_CSV_COLUMNS = ("batch_id", "promoter_id", "currency", "amount", "lines", "points_cashed")
LINE_CSV_COLUMNS = ("batch_id", "promoter_id", "currency", "order_id", "revision", "kind", "part", "parts",
                    "amount", "points", "payable_at", "order_ts")


class PayoutError(Exception):
    """A payout command cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class RunResult:
    batch_id: str | None  # None: nothing to pay, nothing written
    attempt: str
    cutoff_ms: int
    plan: Plan
    csv_path: Path | None = None


# the through day ------------------------------------------------------------------------


def parse_through(value: str) -> date:
    """`YYYY-MM-DD`, or `YYYY-MM` for that month's last day."""
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        pass
    try:
        month = datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"{value!r} is neither a day (YYYY-MM-DD) nor a month (YYYY-MM)") from None
    return month.replace(day=calendar.monthrange(month.year, month.month)[1])


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def cutoff_of(through: date, event_now_ms: int, lateness_ms: int) -> int:
    """The last millisecond of the through day, never later than event time now - lateness
    (conversions payable at or before it are paid)."""
    return min(day_start_ms(through) + DAY_MS - 1, event_now_ms - lateness_ms)


def batch_prefix(through: date) -> str:
    return f"PO-{through:%Y%m%d}-"


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _actor(actor: str) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# lock + ClickHouse ----------------------------------------------------------------------


@contextmanager
def session(settings: Settings, wait_s: float, what: str) -> Iterator[tuple[PayoutLock, Any]]:
    """The payout lock, then a ClickHouse client with the tables migrated and the rule views
    installed (so a database the worker never opened answers with `payable_at`). The client
    is closed before the lock is released: the next job may then open the chdb directory."""
    lock = PayoutLock(settings.redis_url, lock_key(settings.redis_namespace), what=what)

    def waiting(holder: Holder) -> None:
        log.warning("waiting for the payout lock", extra={"holder": holder.describe(), "wait_s": wait_s})

    try:
        with lock.hold(wait_s, waiting):
            client = connect(settings.clickhouse)
            try:
                migrate(client)
                install_views(client, rule_views(load_rules(settings.rules_file)))  # as the sink does
                yield lock, client
            finally:
                client.close()
    finally:
        lock.close()


# run ------------------------------------------------------------------------------------


def read_plan(client: Any, cutoff_ms: int, book: RuleBook) -> Plan:
    ents = [msgspec.convert(r, Entitlement) for r in store.entitlements(client, cutoff_ms)]
    booked = [msgspec.convert(r, Line) for r in store.booked_lines(client)]
    rows = store.booked_payouts(client)
    booked_payouts = [msgspec.convert(r, Payout) for r in rows]
    pending = [p for p, r in zip(booked_payouts, rows, strict=True) if r["batch_status"] == PENDING]
    return plan_payout(ents, booked, booked_payouts, cutoff_ms, book, pending_payouts=pending)


def run(settings: Settings, through: date, *, wait_s: float = 120.0, csv_path: Path | None = None,
        lines_csv: Path | None = None, actor: str = "", out: TextIO = sys.stdout) -> RunResult:
    """Plan and write one payout batch through `through` (see the module docstring)."""
    for path in (csv_path, lines_csv):
        if path is not None and not path.parent.is_dir():
            raise PayoutError(f"cannot write {path}: {path.parent} is not a directory")
    book = load_rules(settings.rules_file)
    attempt = secrets.token_hex(8)
    with session(settings, wait_s, f"payouts run --through {through}") as (lock, client):
        now = store.event_now(client)
        if now is None:
            out.write("nothing to pay: no orders stored yet\n")
            return RunResult(None, attempt, 0, Plan(lines=[], payouts=[], carried=[]))
        cutoff = cutoff_of(through, now, settings.lateness_ms)
        batch_id = f"{batch_prefix(through)}{store.batches_of_day(client, batch_prefix(through)) + 1:02d}"
        log.info("payout run planning", extra={"batch": batch_id, "attempt": attempt, "cutoff": _iso(cutoff),
                                               "event_now": _iso(now)})
        plan = read_plan(client, cutoff, book)
        if not plan.payouts:
            out.write(f"nothing to pay through {through} (cut-off {_iso(cutoff)} UTC)\n")
            _print_carried(plan.carried, book.at(cutoff).minimum_payout, out)
            log.info("payout run: nothing to pay", extra={"cutoff": _iso(cutoff), "carried": len(plan.carried)})
            return RunResult(None, attempt, cutoff, plan)
        store.write_lines(client, batch_id, attempt, [msgspec.structs.asdict(ln) for ln in plan.lines])
        store.write_payouts(client, batch_id, attempt, [msgspec.structs.asdict(p) for p in plan.payouts])
        _pause_before_commit()
        lock.check()
        at = _now_ms()
        store.write_batch(client, {
            "batch_id": batch_id, "attempt": attempt, "through": day_start_ms(through), "cutoff": cutoff,
            "status": PENDING, "version": at, "created_at": at, "updated_at": at, "actor": _actor(actor),
            "note": "", "promoters": len({p.promoter_id for p in plan.payouts}), "lines": len(plan.lines),
        })
        log.info("payout batch written", extra={"batch": batch_id, "attempt": attempt, "lines": len(plan.lines),
                                                "payouts": len(plan.payouts)})
    csv_path = csv_path if csv_path is not None else Path.cwd() / f"payout-{batch_id}.csv"
    write_csv(csv_path, PAYOUT_CSV_COLUMNS, [{"batch_id": batch_id, **msgspec.structs.asdict(p)}
                                             for p in plan.payouts])
    if lines_csv is not None:
        write_csv(lines_csv, LINE_CSV_COLUMNS, [{"batch_id": batch_id, **msgspec.structs.asdict(ln),
                                                 "payable_at": _iso(ln.payable_at), "order_ts": _iso(ln.order_ts)}
                                                for ln in plan.lines])
    _print_summary(batch_id, cutoff, plan, book.at(cutoff).minimum_payout, csv_path, lines_csv, out)
    return RunResult(batch_id, attempt, cutoff, plan, csv_path)


def _pause_before_commit() -> None:
    pause = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    if pause:
        log.warning("pausing before the batch row (test hook)", extra={"seconds": pause})
        time.sleep(float(pause))


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the CSV next to its place, then move it there: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])
    os.replace(tmp, path)


def _print_summary(batch_id: str, cutoff: int, plan: Plan, minimum: Decimal, csv_path: Path,
                   lines_csv: Path | None, out: TextIO) -> None:
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"promoters": 0, "amount": Decimal(0), "lines": 0,
                                                         "clawbacks": 0, "clawed_back": Decimal(0),
                                                         "points_cashed": 0})
    for p in plan.payouts:
        row = per[p.currency]
        row["promoters"] += 1
        row["amount"] += p.amount
        row["points_cashed"] += p.points_cashed
    paid = {(p.promoter_id, p.currency) for p in plan.payouts}
    for ln in plan.lines:
        if (ln.promoter_id, ln.currency) not in paid:
            continue
        row = per[ln.currency]
        row["lines"] += 1
        if ln.kind == CLAWBACK or ln.amount < 0:
            row["clawbacks"] += 1
            row["clawed_back"] += -ln.amount
    promoters = len({p.promoter_id for p in plan.payouts})
    out.write(f"batch {batch_id} (pending): promoters paid {promoters}, lines {len(plan.lines)}, "
              f"cut-off {_iso(cutoff)} UTC\n\n")
    rows = [{"currency": c, **v} for c, v in sorted(per.items())]
    cols = ("currency", "promoters", "lines", "amount", "clawbacks", "clawed_back", "points_cashed")
    out.write(format_table(cols, rows, frozenset(cols[1:])) + "\n")
    _print_carried(plan.carried, minimum, out)
    out.write(f"\nfinance CSV: {csv_path}\n")
    if lines_csv is not None:
        out.write(f"lines CSV:   {lines_csv}\n")
    out.write(f"next: `refstream payouts confirm {batch_id}` once the transfer went out, or "
              f"`refstream payouts fail {batch_id} --reason ...` if it did not\n")


def carry_reason(carry: Carry, minimum: Decimal) -> str:
    if carry.balance < 0:
        return "negative balance: recovered from later earnings"
    return f"below the minimum payout of {minimum}"


def _print_carried(carried: Sequence[Carry], minimum: Decimal, out: TextIO) -> None:
    if not carried:
        return
    rows = [{"promoter_id": c.promoter_id, "currency": c.currency, "balance": c.balance, "lines": c.lines,
             "reason": carry_reason(c, minimum)} for c in sorted(carried, key=lambda c: (c.promoter_id, c.currency))]
    out.write(f"\ncarried over to the next run ({len(rows)}):\n")
    out.write(format_table(("promoter_id", "currency", "balance", "lines", "reason"), rows,
                           frozenset({"balance", "lines"})) + "\n")


# status changes and listing -------------------------------------------------------------


def confirm(settings: Settings, batch_id: str, *, actor: str = "", wait_s: float = 120.0,
            out: TextIO = sys.stdout) -> dict[str, Any]:
    """Mark a pending batch paid (the transfer went out)."""
    return _move(settings, batch_id, PAID, "", actor, wait_s, out)


def fail(settings: Settings, batch_id: str, reason: str, *, actor: str = "", wait_s: float = 120.0,
         out: TextIO = sys.stdout) -> dict[str, Any]:
    """Mark a pending batch failed: its lines are released and the next run pays them."""
    if not reason.strip():
        raise PayoutError("say why the batch failed: --reason TEXT")
    return _move(settings, batch_id, FAILED, reason, actor, wait_s, out)


def refusal(batch_id: str, status: str, to: str) -> str:
    """Why a batch in `status` cannot move to `to` (only a pending batch moves)."""
    if to == FAILED and status == PAID:
        return (f"batch {batch_id} is paid; a paid batch cannot fail — a refund after payment becomes a "
                "clawback in the next run")
    if to == PAID and status == FAILED:
        return (f"batch {batch_id} failed; its lines were released and the next `refstream payouts run` "
                "pays them in a new batch: a failed batch cannot be confirmed")
    return f"batch {batch_id} is already {status}; only a pending batch can be confirmed or failed"


def _move(settings: Settings, batch_id: str, to: str, note: str, actor: str, wait_s: float,
          out: TextIO) -> dict[str, Any]:
    verb = "confirm" if to == PAID else "fail"
    with session(settings, wait_s, f"payouts {verb} {batch_id}") as (lock, client):
        current = store.batch(client, batch_id)
        if current is None:
            raise PayoutError(f"no batch {batch_id!r}: `refstream payouts list` shows the batches")
        if current["status"] != PENDING:
            raise PayoutError(refusal(batch_id, current["status"], to))
        lock.check()
        at = _now_ms()
        row = {**current, "status": to, "version": max(at, int(current["version"]) + 1), "updated_at": at,
               "actor": _actor(actor), "note": note}
        store.write_batch(client, row)
    log.info("payout batch moved", extra={"batch": batch_id, "status": to, "note": note})
    if to == PAID:
        out.write(f"batch {batch_id} is paid\n")
    else:
        out.write(f"batch {batch_id} failed ({note}); its lines are released: the next "
                  "`refstream payouts run` pays them\n")
    return row


def list_batches(settings: Settings, *, wait_s: float = 120.0, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Print every batch, oldest first, with its totals per currency."""
    with session(settings, wait_s, "payouts list") as (_, client):
        rows = store.batches(client)
        totals = store.batch_totals(client)
    by_batch: dict[str, list[str]] = defaultdict(list)
    for t in totals:
        by_batch[t["batch_id"]].append(f"{t['currency']} {t['amount']:,.2f}")
    if not rows:
        out.write("(no payout batches)\n")
        return rows
    shown = [{**r, "through": _iso(r["through"])[:10], "cutoff": _iso(r["cutoff"]),
              "updated_at": _iso(r["updated_at"]), "totals": ", ".join(by_batch.get(r["batch_id"], []))}
             for r in rows]
    cols = ("batch_id", "status", "through", "cutoff", "promoters", "lines", "totals", "updated_at", "actor", "note")
    out.write(format_table(cols, shown, frozenset({"promoters", "lines"})) + "\n")
    return rows
