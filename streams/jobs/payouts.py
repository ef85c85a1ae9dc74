"""Payout runs and batch status changes (`refstream payouts run | confirm | fail | list | export`).

A run (docs/payouts.md, "No line is paid twice"), under the deployment's payout lock, taken
before ClickHouse is opened (a chdb directory admits one process at a time):

1. note every batch row and attempt there is (`Seen`), for the check of step 6;
2. cut-off = min(the last millisecond of the `--through` day (UTC), event time now - allowed lateness);
3. batch id `PO-<through day>-<n>`, n = 1 + the highest n of that day with a batch row, so a
   run killed before its batch row reuses its id; a fresh random attempt id;
4. plan against what pending and paid batches booked (`streams.logic.payouts.plan`);
5. write the lines and payouts under the attempt; refuse if a batch row with our id appeared
   meanwhile (another run committed it); check the lock; write the batch row (pending) naming
   the attempt: that row commits the batch;
6. fencing: the lock and the commit are not atomic (a job that stalls past the lock's TTL
   after its check still commits), so right after the commit the run looks for batches that
   another run committed since step 1 (`overlaps`). The booked ledger is a function of the
   committed attempts and their statuses, and a status only ever moves pending -> paid |
   failed (which books nothing new), so "no attempt committed since step 1" is exactly "what
   our plan assumed booked is still what is booked". If there is one, our batch is taken back
   (marked failed, or the other run's row restored when it had our batch id) and the run
   fails before it writes any CSV: the re-run plans against what the other run booked;
7. the summary (stdout) and the finance CSV (`refstream payouts export` writes it again).
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import msgspec

from schemas.payouts import BOOKED, CLAWBACK, FAILED, PAID, PENDING
from schemas.units import DAY_MS, utc_text
from sinks import payouts as store
from sinks.clickhouse import connect
from sinks.migrations import install_views, migrate
from sinks.queries import format_table
from streams.adapters.payout_lock import Holder, PayoutLock, lock_key
from streams.config import Settings
from streams.logic.payouts.money import round_down
from streams.logic.payouts.plan import Carry, Entitlement, Line, Payout, Plan, minimum_for, plan_payout
from streams.logic.rules.ruleset import RuleBook, RuleSet, load_rules
from streams.logic.rules.views import rule_views

log = logging.getLogger(__name__)

#: test-only hook: sleep this long between writing a batch's lines and its batch row (the crash tests)
PAUSE_BEFORE_COMMIT_ENV = "REFSTREAM_PAYOUTS_PAUSE_BEFORE_COMMIT_S"
#: test-only hook, in-process: called with (stage, client) at "written" (the lines and payouts
#: are written, nothing checked yet) and "committing" (checked, the batch row comes next)
TEST_HOOK: Callable[[str, Any], None] | None = None
OVERLAP_NOTE = "overlapping payout run"
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
                install_views(client, rule_views(load_rules(settings.rules_file), lateness_ms=settings.lateness_ms))
                yield lock, client
            finally:
                client.close()
    finally:
        lock.close()


# run ------------------------------------------------------------------------------------


def read_plan(client: Any, cutoff_ms: int, book: RuleBook) -> Plan:
    ents = [msgspec.convert(r, Entitlement) for r in store.entitlements(client, cutoff_ms)]
    line_rows = store.booked_lines(client)
    booked = [msgspec.convert(r, Line) for r in line_rows]
    pending_orders = {r["order_id"] for r in line_rows if r["batch_status"] == PENDING and r["order_id"]}
    rows = store.booked_payouts(client)
    booked_payouts = [msgspec.convert(r, Payout) for r in rows]
    pending = [p for p, r in zip(booked_payouts, rows, strict=True) if r["batch_status"] == PENDING]
    return plan_payout(ents, booked, booked_payouts, cutoff_ms, book, pending_payouts=pending,
                       pending_orders=pending_orders)


# fencing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a run saw before it planned: every (batch id, attempt) with a batch row, and the
    attempts with lines under its own batch id (a killed run's orphans among them)."""

    committed: frozenset[tuple[str, str]]
    line_attempts: frozenset[str]


def seen(client: Any, batch_id: str) -> Seen:
    return Seen(frozenset((r["batch_id"], r["attempt"]) for r in store.batch_attempts(client)),
                frozenset(store.line_attempts(client, batch_id)))


def overlaps(before: Seen, batch_id: str, attempt: str, rows: Iterable[Mapping[str, Any]],
             current: Mapping[str, Mapping[str, Any]], line_attempts: Iterable[str]) -> list[str]:
    """The other runs that worked while we planned and committed `batch_id` under `attempt`
    (empty: none), given what we saw `before` planning and, after our commit, every batch row
    (`rows`), the latest row of each batch (`current`) and the attempts with lines under our
    batch id. Another run overlapped when, since `before`:
    - a batch of another id got committed and is booked (pending or paid) now;
    - another attempt committed our batch id, or its row is our batch's latest;
    - another attempt wrote lines under our batch id (a run about to commit it)."""
    found: list[str] = []

    def add(text: str) -> None:
        if text not in found:
            found.append(text)

    for r in rows:
        key = (r["batch_id"], r["attempt"])
        if key in before.committed or key == (batch_id, attempt):
            continue
        if r["batch_id"] == batch_id:
            add(f"{batch_id} (attempt {r['attempt']})")
        else:
            now = current.get(r["batch_id"])
            if now is not None and now["attempt"] == r["attempt"] and now["status"] in BOOKED:
                add(f"{r['batch_id']} ({now['status']})")
    ours = current.get(batch_id)
    if ours is not None and ours["attempt"] != attempt:
        add(f"{batch_id} (attempt {ours['attempt']})")
    for other in sorted(set(line_attempts) - before.line_attempts - {attempt}):
        if not any(r["batch_id"] == batch_id and r["attempt"] == other for r in rows):
            add(f"{batch_id} (attempt {other}, lines written, not committed yet)")
    return found


def _take_back(client: Any, batch_id: str, attempt: str, others: list[str]) -> str:
    """Undo our commit after an overlap (`overlaps`); what was done, for the message."""
    rows = store.batch_attempts(client, batch_id)
    current = store.batch(client, batch_id)
    top = max((int(r["version"]) for r in rows), default=0)
    at = _now_ms()
    note = f"{OVERLAP_NOTE}: {', '.join(others)}"
    if current is None:  # not even our row: nothing to take back
        return f"batch {batch_id} has no batch row: nothing of this run is booked"
    if current["attempt"] != attempt:
        return f"batch {batch_id} names the other run's attempt {current['attempt']}: nothing of this run is booked"
    if current["status"] == PAID:  # confirmed in the instant since our commit: finance paid it, keep it
        return (f"batch {batch_id} was confirmed meanwhile and is left paid: check {', '.join(others)} "
                f"against it before paying that")
    theirs = [r for r in rows if r["attempt"] != attempt]
    if theirs:  # another run committed our batch id too: its row is the batch again (it may have paid it)
        restored = max(theirs, key=lambda r: int(r["version"]))
        store.write_batch(client, {**restored, "version": max(at, top + 1), "updated_at": at})
        return (f"batch {batch_id} names the other run's attempt {restored['attempt']} again "
                f"({restored['status']}): nothing of this run is booked")
    store.write_batch(client, {**current, "status": FAILED, "version": max(at, top + 1), "updated_at": at,
                               "note": note})
    return f"batch {batch_id} of this run is marked failed ({note}): its lines are released"


def _check_no_overlap(client: Any, before: Seen, batch_id: str, attempt: str) -> None:
    """Step 6 of the module docstring: raise PayoutError (after taking our batch back) if
    another run committed a batch while we planned."""
    current = {b["batch_id"]: b for b in store.batches(client)}
    others = overlaps(before, batch_id, attempt, store.batch_attempts(client), current,
                      store.line_attempts(client, batch_id))
    if not others:
        return
    done = _take_back(client, batch_id, attempt, others)
    log.error("payout run overlapped another run", extra={"batch": batch_id, "attempt": attempt,
                                                          "others": others, "done": done})
    raise PayoutError(
        f"{OVERLAP_NOTE}: {', '.join(others)} was committed by another payout run while this one planned "
        f"(this run lost the payout lock: it stalled longer than the lock's TTL). {done}; no CSV was written. "
        "Check `refstream payouts list` and run again: the next run plans against what the other run booked. "
        "(Should both runs have stopped here, a pending batch may have no CSV: `refstream payouts export BATCH` "
        "writes it, or `refstream payouts fail BATCH` releases its lines.)")


def run(settings: Settings, through: date, *, wait_s: float = 120.0, csv_path: Path | None = None,
        lines_csv: Path | None = None, actor: str = "", out: TextIO = sys.stdout) -> RunResult:
    """Plan and write one payout batch through `through` (see the module docstring)."""
    _check_dirs(csv_path, lines_csv)
    book = load_rules(settings.rules_file)
    attempt = secrets.token_hex(8)
    with session(settings, wait_s, f"payouts run --through {through}") as (lock, client):
        now = store.event_now(client)
        if now is None:
            out.write("nothing to pay: no orders stored yet\n")
            return RunResult(None, attempt, 0, Plan(lines=[], payouts=[], carried=[]))
        cutoff = cutoff_of(through, now, settings.lateness_ms)
        batch_id = f"{batch_prefix(through)}{store.last_batch_number(client, batch_prefix(through)) + 1:02d}"
        before = seen(client, batch_id)
        log.info("payout run planning", extra={"batch": batch_id, "attempt": attempt, "cutoff": utc_text(cutoff),
                                               "event_now": utc_text(now)})
        plan = read_plan(client, cutoff, book)
        if not plan.payouts:
            out.write(f"nothing to pay through {through} (cut-off {utc_text(cutoff)} UTC)\n")
            _print_carried(plan.carried, book.at(cutoff), out)
            log.info("payout run: nothing to pay", extra={"cutoff": utc_text(cutoff), "carried": len(plan.carried)})
            return RunResult(None, attempt, cutoff, plan)
        store.write_lines(client, batch_id, attempt, [msgspec.structs.asdict(ln) for ln in plan.lines])
        store.write_payouts(client, batch_id, attempt, [msgspec.structs.asdict(p) for p in plan.payouts])
        _pause_before_commit()
        _hook("written", client)
        taken = store.batch_attempts(client, batch_id)
        if taken:
            raise PayoutError(
                f"batch {batch_id} was committed by another payout run meanwhile (attempt "
                f"{', '.join(sorted({r['attempt'] for r in taken}))}); this run (attempt {attempt}) committed "
                "nothing and its lines stay unread. Check `refstream payouts list` and run again")
        lock.check()
        _hook("committing", client)
        at = _now_ms()
        store.write_batch(client, {
            "batch_id": batch_id, "attempt": attempt, "through": day_start_ms(through), "cutoff": cutoff,
            "status": PENDING, "version": at, "created_at": at, "updated_at": at, "actor": _actor(actor),
            "note": "", "promoters": len({p.promoter_id for p in plan.payouts}), "lines": len(plan.lines),
        })
        _check_no_overlap(client, before, batch_id, attempt)
        log.info("payout batch written", extra={"batch": batch_id, "attempt": attempt, "lines": len(plan.lines),
                                                "payouts": len(plan.payouts)})
    csv_path = csv_path if csv_path is not None else Path.cwd() / f"payout-{batch_id}.csv"
    _write_batch_csvs(batch_id, plan.payouts, plan.lines, csv_path, lines_csv)
    _print_summary(batch_id, cutoff, plan, book.at(cutoff), csv_path, lines_csv, out)
    return RunResult(batch_id, attempt, cutoff, plan, csv_path)


def _check_dirs(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise PayoutError(f"cannot write {path}: {path.parent} is not a directory")


def _write_batch_csvs(batch_id: str, payouts: Sequence[Payout], lines: Sequence[Line], csv_path: Path,
                      lines_csv: Path | None) -> None:
    write_csv(csv_path, PAYOUT_CSV_COLUMNS, [{"batch_id": batch_id, **msgspec.structs.asdict(p)} for p in payouts])
    if lines_csv is not None:
        write_csv(lines_csv, LINE_CSV_COLUMNS, [{"batch_id": batch_id, **msgspec.structs.asdict(ln),
                                                 "payable_at": utc_text(ln.payable_at),
                                                 "order_ts": utc_text(ln.order_ts)} for ln in lines])


def _hook(stage: str, client: Any) -> None:
    if TEST_HOOK is not None:
        TEST_HOOK(stage, client)


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


def _print_summary(batch_id: str, cutoff: int, plan: Plan, rules: RuleSet, csv_path: Path,
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
              f"cut-off {utc_text(cutoff)} UTC\n\n")
    rows = [{"currency": c, **v} for c, v in sorted(per.items())]
    cols = ("currency", "promoters", "lines", "amount", "clawbacks", "clawed_back", "points_cashed")
    out.write(format_table(cols, rows, frozenset(cols[1:])) + "\n")
    _print_carried(plan.carried, rules, out)
    out.write(f"\nfinance CSV: {csv_path}\n")
    if lines_csv is not None:
        out.write(f"lines CSV:   {lines_csv}\n")
    out.write(f"next: `refstream payouts confirm {batch_id}` once the transfer went out, or "
              f"`refstream payouts fail {batch_id} --reason ...` if it did not\n")


def carry_reason(carry: Carry, rules: RuleSet) -> str:
    """Why `carry` was not paid, with the minimum payout of its currency under the run's `rules`."""
    if carry.balance < 0:
        return "negative balance: recovered from later earnings"
    minimum = minimum_for(rules, carry.currency)
    if round_down(carry.balance, carry.currency) < minimum:
        return f"below the minimum payout of {minimum} {carry.currency}"
    return "nothing to pay after rounding down to the currency's minor unit"


def _print_carried(carried: Sequence[Carry], rules: RuleSet, out: TextIO) -> None:
    if not carried:
        return
    rows = [{"promoter_id": c.promoter_id, "currency": c.currency, "balance": c.balance, "lines": c.lines,
             "reason": carry_reason(c, rules)} for c in sorted(carried, key=lambda c: (c.promoter_id, c.currency))]
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


def export(settings: Settings, batch_id: str, *, csv_path: Path | None = None, lines_csv: Path | None = None,
           wait_s: float = 120.0, out: TextIO = sys.stdout) -> Path:
    """Write a batch's finance CSV (and its lines CSV) again from ClickHouse, as its run wrote
    them: for a run that died after its batch row but before its CSV, or a lost file. A failed
    batch is not exported: its lines were released and the next run pays them."""
    _check_dirs(csv_path, lines_csv)
    with session(settings, wait_s, f"payouts export {batch_id}") as (_, client):
        current = store.batch(client, batch_id)
        if current is None:
            raise PayoutError(f"no batch {batch_id!r}: `refstream payouts list` shows the batches")
        if current["status"] == FAILED:
            raise PayoutError(f"batch {batch_id} failed ({current['note'] or 'no reason given'}): its lines were "
                              "released and the next `refstream payouts run` pays them; nothing to export")
        payouts = [msgspec.convert(r, Payout) for r in store.batch_payouts(client, batch_id)]
        lines = [msgspec.convert(r, Line) for r in store.batch_lines(client, batch_id)]
    payouts = sorted((msgspec.structs.replace(p, amount=round_down(p.amount, p.currency)) for p in payouts),
                     key=lambda p: (p.promoter_id, p.currency))
    lines.sort(key=lambda ln: (ln.promoter_id, ln.currency, ln.kind, ln.order_id))
    csv_path = csv_path if csv_path is not None else Path.cwd() / f"payout-{batch_id}.csv"
    _write_batch_csvs(batch_id, payouts, lines, csv_path, lines_csv)
    out.write(f"batch {batch_id} ({current['status']}): {len(payouts)} payouts, {len(lines)} lines\n"
              f"finance CSV: {csv_path}\n")
    if lines_csv is not None:
        out.write(f"lines CSV:   {lines_csv}\n")
    if current["status"] == PAID:
        out.write(f"note: batch {batch_id} is already paid; this CSV is for the records, not to pay again\n")
    log.info("payout batch exported", extra={"batch": batch_id, "csv": str(csv_path)})
    return csv_path


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
    shown = [{**r, "through": utc_text(r["through"])[:10], "cutoff": utc_text(r["cutoff"]),
              "updated_at": utc_text(r["updated_at"]), "totals": ", ".join(by_batch.get(r["batch_id"], []))}
             for r in rows]
    cols = ("batch_id", "status", "through", "cutoff", "promoters", "lines", "totals", "updated_at", "actor", "note")
    out.write(format_table(cols, shown, frozenset({"promoters", "lines"})) + "\n")
    return rows
