"""Payout runs end to end on a real chdb directory and the stack's Redis: conversions are written
by hand (`sinks.rows`), runs go through `streams.jobs.payouts` in-process or `python -m streams.cli`
in subprocesses (concurrent runs, a run killed half-way). Whatever happens, no line is paid twice."""
from __future__ import annotations

import csv
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
