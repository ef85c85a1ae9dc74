"""Payout runs end to end on a real chdb directory and the stack's Redis: conversions are written
by hand (`sinks.rows`), runs go through `streams.jobs.payouts` in-process or `python -m streams.cli`
in subprocesses (concurrent runs, a run killed half-way). Whatever happens, no line is paid twice."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.records import Conversion, OrderRec
from schemas.units import DAY_MS, HOUR_MS
from sinks import payouts as store
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.rows import rows_for
from sinks.tables import TABLES
from streams import cli
from streams.config import Settings
from streams.jobs import payouts as job
from streams.jobs.payouts import PAUSE_BEFORE_COMMIT_ENV, PayoutError
from tests import ROOT

pytestmark = pytest.mark.integration

JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z: orders payable from 2026-01-31 (30 holding days)
MAR = JAN + (31 + 28) * DAY_MS  # 2026-03-01: the newest order, so event time "now" - 1 h is 2026-02-28 23:00
THROUGH = date(2026, 2, 28)
BATCH = "PO-20260228-01"


def conversion(order_id: str, commission: str = "150", status: str = "approved", revision: int = 1,
               promoter: str = "P1", order_ts: int = JAN, **kw: Any) -> Conversion:
    return Conversion(
        order_id=order_id, revision=revision, status=status, reasons=[], promoter_id=promoter,
        tracking_code="T-" + promoter, campaign="", account_id="a-" + order_id, visitor_id="v-" + order_id,
        click_event_id="c", click_ts=order_ts - HOUR_MS, signup_event_id="s", signup_ts=order_ts - 1000,
        order_event_id="oe-" + order_id, order_ts=order_ts, cart_id="", product="pro", category="saas",
        amount=Decimal("1000"), discount=Decimal(0), currency="USD", order_status="paid", renewal=False,
        attribution_model="last_click", attribution_final=True, decided_at=order_ts, level=1, rate=Decimal("0.15"),
        commission=Decimal(commission), bonus=Decimal(0), rule_version="default", **kw)


def newest_order(ts: int = MAR) -> OrderRec:
    return OrderRec(event_id=f"e-now-{ts}", ts=ts, order_id=f"now-{ts}", account_id="a-now", product="pro",
                    amount=Decimal("10"), currency="USD", status="paid")


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    workdir: Path

    def write(self, *records: Any) -> None:
        """Insert records the way the sink does (and close chdb again: jobs open it themselves)."""
        client = connect(self.settings.clickhouse)
        try:
            migrate(client)
            for table, rows in rows_for(records).items():
                client.insert(table, rows, column_names=TABLES[table].insert_columns)
        finally:
            client.close()

    def read(self, fn: Any, *args: Any) -> Any:
        client = connect(self.settings.clickhouse)
        try:
            migrate(client)
            return fn(client, *args)
        finally:
            client.close()

    def run(self, through: date = THROUGH, **kw: Any) -> tuple[job.RunResult, str]:
        out = io.StringIO()
        kw.setdefault("csv_path", self.workdir / "payouts.csv")
        result = job.run(self.settings, through, wait_s=30, actor="test", out=out, **kw)
        return result, out.getvalue()

    def cli(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=self.workdir,
                                env={**os.environ, **self.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def lines(self, batch_id: str) -> list[tuple[str, str, Decimal]]:
        return sorted((r["order_id"], r["kind"], r["amount"]) for r in self.read(store.batch_lines, batch_id))


@pytest.fixture
def deployment(stack: Any, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of its own: chdb directory, and app id (so its own payout lock)."""
    overrides = {"data_dir": tmp_path / "data", "app_id": f"payouts-{uuid.uuid4().hex[:8]}",
                 "allowed_lateness_s": 3600, "log_level": "INFO"}
    env = stack.settings_env(**overrides)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    d = Deployment(Settings.from_env(env), env, tmp_path)
    d.write(newest_order(), *(conversion(f"o{i}") for i in (1, 2, 3)))
    yield d


def test_a_run_pays_once(deployment: Deployment) -> None:
    first, printed = deployment.run(lines_csv=deployment.workdir / "lines.csv")
    assert first.batch_id == BATCH and first.cutoff_ms == MAR - HOUR_MS
    assert deployment.lines(BATCH) == [(f"o{i}", "commission", Decimal("150")) for i in (1, 2, 3)]
    assert "promoters paid 1, lines 3" in printed and "450.00" in printed
    with (deployment.workdir / "payouts.csv").open() as f:
        assert list(csv.DictReader(f)) == [{"batch_id": BATCH, "promoter_id": "P1", "currency": "USD",
                                            "amount": "450.00", "lines": "3", "points_cashed": "0"}]
    with (deployment.workdir / "lines.csv").open() as f:
        assert [r["order_id"] for r in csv.DictReader(f)] == ["o1", "o2", "o3"]

    again, printed = deployment.run()
    assert again.batch_id is None and "nothing to pay" in printed
    [batch] = deployment.read(store.batches)
    assert (batch["batch_id"], batch["status"], batch["lines"], batch["promoters"], batch["actor"]) == (
        BATCH, "pending", 3, 1, "test")


def test_nothing_payable_yet_writes_nothing(deployment: Deployment) -> None:
    result, printed = deployment.run(through=date(2026, 1, 20))  # inside the holding period
    assert result.batch_id is None and "nothing to pay" in printed
    assert deployment.read(store.batches) == [] and not (deployment.workdir / "payouts.csv").exists()


def test_a_small_balance_carries_over(deployment: Deployment) -> None:
    deployment.write(conversion("small", commission="40", promoter="P2"))
    result, printed = deployment.run()
    assert [c.promoter_id for c in result.plan.carried] == ["P2"]
    assert "carried over" in printed and "below the minimum payout of 100" in printed
    assert {ln[0] for ln in deployment.lines(BATCH)} == {"o1", "o2", "o3"}


def test_two_runs_at_once_make_one_batch(deployment: Deployment) -> None:
    procs = [deployment.cli("payouts", "run", "--through", "2026-02", "--csv", f"run{i}.csv") for i in (1, 2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted("nothing to pay" in out for out, _ in outputs) == [False, True], outputs
    assert [b["batch_id"] for b in deployment.read(store.batches)] == [BATCH]
    assert deployment.lines(BATCH) == [(f"o{i}", "commission", Decimal("150")) for i in (1, 2, 3)]


def wait_for_log(proc: subprocess.Popen[str], message: str, timeout_s: float = 60) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"the run ended before {message!r}: {proc.wait()}")
        try:
            if json.loads(line).get("msg") == message:
                return
        except ValueError:
            continue
    pytest.fail(f"no {message!r} within {timeout_s} s")


def test_a_run_killed_before_its_batch_row_is_redone_under_the_same_id(deployment: Deployment) -> None:
    proc = deployment.cli("payouts", "run", "--through", "2026-02-28", **{PAUSE_BEFORE_COMMIT_ENV: "120"})
    try:
        wait_for_log(proc, "pausing before the batch row (test hook)")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    orphans = deployment.read(lambda c: c.query("SELECT DISTINCT attempt FROM payout_lines").result_rows)
    assert len(orphans) == 1 and deployment.read(store.batches) == []  # lines written, never committed
    orphaned = deployment.read(lambda c: sorted(c.query(
        "SELECT batch_id, order_id, kind, amount FROM payout_lines WHERE attempt = {a:String}",
        parameters={"a": orphans[0][0]}).result_rows))

    started = time.monotonic()
    result, _ = deployment.run()
    assert time.monotonic() - started < 20  # the dead run's lock was taken over, not waited out (30 s)
    assert result.batch_id == BATCH and result.attempt != orphans[0][0]
    assert deployment.lines(BATCH) == [(f"o{i}", "commission", Decimal("150")) for i in (1, 2, 3)]
    assert orphaned == [(BATCH, *line) for line in deployment.lines(BATCH)]  # the same id, the same lines
    assert len(deployment.read(store.booked_lines)) == 3  # the orphaned attempt stays unread


def test_a_refund_after_payment_is_clawed_back_by_the_next_run(deployment: Deployment) -> None:
    deployment.run()
    job.confirm(deployment.settings, BATCH, actor="finance", out=io.StringIO())
    deployment.write(conversion("o2", commission="0", status="reversed", revision=2),  # refunded after payment
                     conversion("o4", commission="400", order_ts=JAN + 2 * DAY_MS))
    result, printed = deployment.run()
    assert result.batch_id == "PO-20260228-02"
    assert deployment.lines("PO-20260228-02") == [("o2", "clawback", Decimal("-150")), ("o4", "commission", Decimal("400"))]
    assert [p.amount for p in result.plan.payouts] == [Decimal("250.00")]
    assert "clawed_back" in printed
    statuses = {b["batch_id"]: b["status"] for b in deployment.read(store.batches)}
    assert statuses == {BATCH: "paid", "PO-20260228-02": "pending"}


def test_a_failed_batch_is_paid_by_the_next_run(deployment: Deployment) -> None:
    deployment.run()
    out = io.StringIO()
    job.fail(deployment.settings, BATCH, "bank rejected the file", actor="finance", out=out)
    assert "released" in out.getvalue()
    assert deployment.read(store.booked_lines) == []
    result, _ = deployment.run()
    assert result.batch_id == "PO-20260228-02"
    assert deployment.lines("PO-20260228-02") == deployment.lines(BATCH)
    failed = deployment.read(store.batch, BATCH)
    assert (failed["status"], failed["note"], failed["actor"]) == ("failed", "bank rejected the file", "finance")


# (first move, second move, the second's error)
MOVES = [
    ("confirm", "confirm", "is already paid"),
    ("confirm", "fail", "a paid batch cannot fail — a refund after payment becomes a clawback in the next run"),
    ("fail", "fail", "is already failed"),
    ("fail", "confirm", "a failed batch cannot be confirmed"),
]


def move(deployment: Deployment, verb: str, batch_id: str = BATCH) -> None:
    if verb == "confirm":
        job.confirm(deployment.settings, batch_id, out=io.StringIO())
    else:
        job.fail(deployment.settings, batch_id, "no", out=io.StringIO())


@pytest.mark.parametrize("first,second,error", MOVES, ids=[f"{a}-{b}" for a, b, _ in MOVES])
def test_only_a_pending_batch_moves(deployment: Deployment, first: str, second: str, error: str) -> None:
    deployment.run()
    move(deployment, first)
    with pytest.raises(PayoutError, match=error):
        move(deployment, second)
    with pytest.raises(PayoutError, match="no batch 'PO-20990101-01'"):
        move(deployment, second, "PO-20990101-01")


# (arguments, exit code, text expected in stdout or stderr)
CLI_CASES = [
    (["payouts", "run", "--through", "2026-02"], 0, "batch PO-20260228-01 (pending)"),
    (["payouts", "run", "--through", "2026-13"], 2, "neither a day"),
    (["payouts", "run"], 2, "--through"),
    (["payouts", "confirm", "PO-20260228-09"], 1, "no batch 'PO-20260228-09'"),
    (["payouts", "fail", "PO-20260228-01"], 2, "--reason"),
    (["payouts", "list"], 0, "(no payout batches)"),
    (["payouts", "--help"], 0, "confirm"),
]


@pytest.mark.parametrize("args,code,text", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli(deployment: Deployment, args: list[str], code: int, text: str) -> None:
    proc = deployment.cli(*args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert text in out + err


def test_statement_and_list_after_a_run(deployment: Deployment) -> None:
    deployment.run()
    proc = deployment.cli("payouts", "list")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    [row] = [line.split() for line in out.splitlines() if line.startswith("PO-")]
    assert row[:3] == [BATCH, "pending", "2026-02-28"] and "450.00" in row

    proc = deployment.cli("statement", "P1", "--month", "2026-01", "--orders")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    [usd] = [line.split() for line in out.splitlines() if line.startswith("USD")]
    assert usd[:3] == ["USD", "0.00", "450.00"]  # opening, earned (matured in January)
    figures = {tuple(line.split()[:3]) for line in out.splitlines() if line.startswith("earned")}
    assert figures == {("earned", "USD", f"o{i}") for i in (1, 2, 3)}

    proc = deployment.cli("statement", "--month", "2026-01")
    assert proc.wait(timeout=120) == 2


# fencing, batch ids, export, pending orders, per-currency minimums --------------------------


def other_run(client: Any, batch_id: str, attempt: str = "other", version: int | None = None,
              commit: bool = True) -> None:
    """What another run that planned the same lines (o1..o3 of P1) writes: its lines and payout,
    and (`commit`) its pending batch row."""
    lines = [dict(promoter_id="P1", currency="USD", order_id=f"o{i}", revision=1, kind="commission", part=1,
                  parts=1, amount=Decimal("150"), points=0, payable_at=JAN + 30 * DAY_MS, order_ts=JAN)
             for i in (1, 2, 3)]
    store.write_lines(client, batch_id, attempt, lines)
    store.write_payouts(client, batch_id, attempt, [dict(
        promoter_id="P1", currency="USD", lines_total=Decimal("450"), carried_in=Decimal(0),
        amount=Decimal("450"), carried_out=Decimal(0), points_cashed=0, lines=3)])
    if commit:
        at = int(time.time() * 1000) if version is None else version
        store.write_batch(client, dict(batch_id=batch_id, attempt=attempt, through=job.day_start_ms(THROUGH),
                                       cutoff=MAR - HOUR_MS, status="pending", version=at, created_at=at,
                                       updated_at=at, actor="other", note="", promoters=1, lines=3))


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `fn(client)` inside the next run, at `stage` ("written" or "committing")."""
    def install(stage: str, fn: Any) -> None:
        def at(s: str, client: Any) -> None:
            if s == stage:
                fn(client)
        monkeypatch.setattr(job, "TEST_HOOK", at)
    return install


def test_a_run_overlapped_by_another_batch_takes_its_batch_back(deployment: Deployment, hook: Any) -> None:
    # another run (through another day: another batch id) committed the same lines after we planned,
    # and after our lock check: we stalled past the lock's TTL
    hook("committing", lambda c: other_run(c, "PO-20260227-01"))
    with pytest.raises(PayoutError, match=r"overlapping payout run: PO-20260227-01 \(pending\)"):
        deployment.run()
    ours = deployment.read(store.batch, BATCH)
    assert ours["status"] == "failed" and ours["note"] == "overlapping payout run: PO-20260227-01 (pending)"
    assert not (deployment.workdir / "payouts.csv").exists()
    assert {r["batch_id"] for r in deployment.read(store.booked_lines)} == {"PO-20260227-01"}  # each line once

    job.TEST_HOOK = None
    again, printed = deployment.run()
    assert again.batch_id is None and "nothing to pay" in printed  # the other run's batch holds the lines
    job.fail(deployment.settings, "PO-20260227-01", "bank rejected the file", out=io.StringIO())
    third, _ = deployment.run()
    assert third.batch_id == "PO-20260228-02"
    assert deployment.lines("PO-20260228-02") == [(f"o{i}", "commission", Decimal("150")) for i in (1, 2, 3)]


def test_a_run_overlapped_under_its_own_batch_id_gives_it_back(deployment: Deployment, hook: Any) -> None:
    # the other run committed our batch id first (its row is older than ours): it keeps the batch
    hook("committing", lambda c: other_run(c, BATCH, version=int(time.time() * 1000) - 1000))
    with pytest.raises(PayoutError, match=r"overlapping payout run: PO-20260228-01 \(attempt other\)") as err:
        deployment.run()
    assert "names the other run's attempt other again" in str(err.value)
    batch = deployment.read(store.batch, BATCH)
    assert (batch["attempt"], batch["status"], batch["actor"]) == ("other", "pending", "other")
    assert {(r["batch_id"], r["order_id"]) for r in deployment.read(store.booked_lines)} == {
        (BATCH, f"o{i}") for i in (1, 2, 3)}
    assert not (deployment.workdir / "payouts.csv").exists()


def test_a_run_about_to_commit_our_batch_id_is_an_overlap(deployment: Deployment, hook: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # another attempt wrote lines under our batch id while we planned (its batch row still to come)
    hook("committing", lambda c: other_run(c, BATCH, commit=False))
    assert cli._payout_job(deployment.run) == 1  # `refstream payouts run` exits 1, saying why
    err = capsys.readouterr().err
    assert "overlapping payout run" in err and "not committed yet" in err
    batch = deployment.read(store.batch, BATCH)
    assert batch["status"] == "failed" and batch["note"].startswith("overlapping payout run: PO-20260228-01")
    assert deployment.read(store.booked_lines) == []


def test_a_batch_id_committed_meanwhile_is_refused_before_committing(deployment: Deployment, hook: Any) -> None:
    hook("written", lambda c: other_run(c, BATCH))
    with pytest.raises(PayoutError, match="was committed by another payout run meanwhile"):
        deployment.run()
    rows = deployment.read(store.batch_attempts, BATCH)
    assert [r["attempt"] for r in rows] == ["other"]  # ours never committed
    assert not (deployment.workdir / "payouts.csv").exists()


def test_an_orphaned_attempt_is_no_overlap(deployment: Deployment) -> None:
    # lines of a run killed before its batch row (seen before we plan): the re-run commits normally
    deployment.read(lambda c: other_run(c, BATCH, attempt="killed", commit=False))
    result, _ = deployment.run()
    assert result.batch_id == BATCH and deployment.read(store.batch, BATCH)["status"] == "pending"


def test_the_batch_number_follows_the_highest_of_the_day(deployment: Deployment) -> None:
    # -03 has a row, -01 and -02 do not (say, they were cleaned up): count + 1 would reuse -02... or -01
    deployment.read(lambda c: other_run(c, "PO-20260228-03"))
    job.fail(deployment.settings, "PO-20260228-03", "test", out=io.StringIO())
    result, _ = deployment.run()
    assert result.batch_id == "PO-20260228-04"


SEEN = job.Seen(frozenset({("PO-1", "a"), ("PO-2", "b")}), frozenset({"orphan"}))


def row(batch_id: str, attempt: str, status: str = "pending") -> dict[str, Any]:
    return {"batch_id": batch_id, "attempt": attempt, "status": status}


# (batch rows after our commit of PO-3 / ours, the latest row per batch, line attempts under PO-3, overlaps)
OVERLAP_CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]] = [
    ("none", [row("PO-1", "a"), row("PO-2", "b"), row("PO-3", "ours")],
     [row("PO-1", "a"), row("PO-2", "b", "paid"), row("PO-3", "ours")], ["orphan", "ours"], []),
    ("a status change is no overlap", [row("PO-1", "a"), row("PO-1", "a", "failed"), row("PO-3", "ours")],
     [row("PO-1", "a", "failed"), row("PO-3", "ours")], ["ours"], []),
    ("another batch committed", [row("PO-1", "a"), row("PO-4", "x"), row("PO-3", "ours")],
     [row("PO-1", "a"), row("PO-4", "x"), row("PO-3", "ours")], ["ours"], ["PO-4 (pending)"]),
    ("another batch committed and already failed", [row("PO-4", "x", "failed"), row("PO-3", "ours")],
     [row("PO-4", "x", "failed"), row("PO-3", "ours")], ["ours"], []),
    ("another attempt committed our id first", [row("PO-3", "x"), row("PO-3", "ours")],
     [row("PO-3", "ours")], ["ours", "x"], ["PO-3 (attempt x)"]),
    ("another attempt committed our id after us", [row("PO-3", "ours"), row("PO-3", "x")],
     [row("PO-3", "x")], ["ours", "x"], ["PO-3 (attempt x)"]),
    ("our id's latest row is another's (its row merged away)", [row("PO-3", "x")],
     [row("PO-3", "x")], ["ours", "x"], ["PO-3 (attempt x)"]),
    ("another attempt is writing our id", [row("PO-3", "ours")], [row("PO-3", "ours")],
     ["orphan", "ours", "x"], ["PO-3 (attempt x, lines written, not committed yet)"]),
]


@pytest.mark.parametrize("name,rows,current,line_attempts,expected", OVERLAP_CASES, ids=[c[0] for c in OVERLAP_CASES])
def test_overlaps(name: str, rows: list[dict[str, Any]], current: list[dict[str, Any]], line_attempts: list[str],
                  expected: list[str]) -> None:
    latest = {r["batch_id"]: r for r in current}
    assert job.overlaps(SEEN, "PO-3", "ours", rows, latest, line_attempts) == expected


def test_export_writes_the_csvs_of_a_batch_again(deployment: Deployment) -> None:
    deployment.write(conversion("o5", commission="33.3333", promoter="P2"),
                     conversion("o6", commission="100.0050", promoter="P2"))
    deployment.run(lines_csv=deployment.workdir / "lines.csv")
    written = {name: (deployment.workdir / name).read_text() for name in ("payouts.csv", "lines.csv")}
    for name in written:
        (deployment.workdir / name).unlink()  # the run died before its CSV, or the file was lost

    proc = deployment.cli("payouts", "export", BATCH, "--csv", "again.csv", "--lines-csv", "again-lines.csv")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"batch {BATCH} (pending): 2 payouts, 5 lines" in out
    assert (deployment.workdir / "again.csv").read_text() == written["payouts.csv"]
    assert (deployment.workdir / "again-lines.csv").read_text() == written["lines.csv"]

    proc = deployment.cli("payouts", "export", BATCH)  # the run's default name, here
    assert proc.wait(timeout=120) == 0
    assert (deployment.workdir / f"payout-{BATCH}.csv").read_text() == written["payouts.csv"]


EXPORT_CASES = [
    (["payouts", "export", "PO-20260228-09"], 1, "no batch 'PO-20260228-09'"),
    (["payouts", "export"], 2, "batch"),
    (["payouts", "export", "--help"], 0, "--lines-csv"),
    (["payouts", "--help"], 0, "export"),
]


@pytest.mark.parametrize("args,code,text", EXPORT_CASES, ids=[" ".join(c[0]) for c in EXPORT_CASES])
def test_export_cli(deployment: Deployment, args: list[str], code: int, text: str) -> None:
    proc = deployment.cli(*args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert text in out + err


def test_a_failed_batch_is_not_exported(deployment: Deployment) -> None:
    deployment.run()
    job.fail(deployment.settings, BATCH, "bank rejected the file", out=io.StringIO())
    with pytest.raises(PayoutError, match="failed \\(bank rejected the file\\).*nothing to export"):
        job.export(deployment.settings, BATCH, csv_path=deployment.workdir / "x.csv", out=io.StringIO())


def test_an_order_in_a_pending_batch_does_not_move(deployment: Deployment) -> None:
    deployment.run()  # o1..o3 in PO-20260228-01, pending
    deployment.write(conversion("o1", commission="0", status="reversed", revision=2),  # refunded before payment
                     conversion("o4", commission="400", order_ts=JAN + 2 * DAY_MS))
    second, _ = deployment.run()
    assert deployment.lines("PO-20260228-02") == [("o4", "commission", Decimal("400"))]  # no clawback of o1 yet
    job.fail(deployment.settings, BATCH, "bank rejected the file", out=io.StringIO())
    third, _ = deployment.run()
    assert deployment.lines(third.batch_id) == [("o2", "commission", Decimal("150")),
                                                ("o3", "commission", Decimal("150"))]  # o1 was never paid


def test_the_carry_over_names_the_currency_minimum(deployment: Deployment) -> None:
    rules = deployment.workdir / "rules.toml"
    rules.write_text('[[rule_set]]\nversion = "v1"\nminimum_payout = "100"\nminimum_payouts = { USD = "500" }\n')
    deployment.settings = dataclasses.replace(deployment.settings, rules_file=str(rules))
    result, printed = deployment.run()
    assert result.batch_id is None and [c.promoter_id for c in result.plan.carried] == ["P1"]
    assert "below the minimum payout of 500 USD" in printed
