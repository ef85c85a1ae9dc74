"""Run real refstream workers (subprocesses) against the test stack, and read results back."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.units import DAY_MS, HOUR_MS
from streams.adapters.kafka import client_kwargs
from streams.config import Settings
from streams.logic.partitioning import partition_for
from streams.topology import RAW_TOPICS, REFERENCE_TOPICS, Topology
from tests import ROOT

#: (redis_url, namespace) of every pipeline of this test session: conftest drops them at the end
NAMESPACES: set[tuple[str, str]] = set()


#: settings of the table store, by its URL. Tansu lists a partition's end as its last record
#: batch's first offset + 1, below the last offset a RocksDB store persisted from a batch, and
#: Faust's check of that (persisted <= end) would stop a restarted worker: off on Tansu only
STORES: dict[str, dict[str, str]] = {
    "memory://": {"table_store": "memory://"},
    "rocksdb://": {"table_store": "rocksdb://", "faust_recovery_consistency_check": "false"},
}


#: tiers, levels and caps that the tests' traffic (tens of orders per promoter) reaches; priced
#: in USD: the traffic's EUR orders are converted with its fx_rates (no override_rate: the
#: conversion counts of `expected_counts` have no override lines)
COMPARABLE_RULES = """\
currency = "USD"

[[rule_set]]
version = "comparable"
tiers = [{ volume = "150", bonus_rate = "0.01" }, { volume = "600", bonus_rate = "0.02" }]
level_points = [1500, 6000]
renewal_level_rates = ["0.10", "0.12", "0.14", "0.16", "0.18"]
cap_per_promoter_month = "120"
cap_per_customer = "45"
"""


@dataclass
class Pipeline:
    """One pipeline deployment: its topics (prefix), consumer group, ClickHouse dir and workers."""

    env: dict[str, str]
    workdir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)
    started: int = 0  # workers ever started, for distinct log files
    ports: dict[int, int] = field(default_factory=dict)  # worker pid -> its web port
    roles: set[str] = field(default_factory=set)  # roles of the workers ever started

    @classmethod
    def create(cls, stack: Any, prefix: str, workdir: Path, comparable: bool = False,
               **overrides: Any) -> Pipeline:
        """`comparable`: price with a rule book whose every price depends on the promoter's
        other orders (low volume tiers, levels from a few points, monthly and customer caps,
        renewal rates), so that runs whose messages arrive in another order, crash or
        rebalance are compared on the rules that arrival order could change."""
        workdir.mkdir(parents=True, exist_ok=True)
        if comparable:
            rules = workdir / "comparable-rules.toml"
            rules.write_text(COMPARABLE_RULES)
            overrides.setdefault("rules_file", str(rules))
        env = stack.settings_env(
            topic_prefix=prefix, app_id=f"app-{prefix}{uuid.uuid4().hex[:4]}", data_dir=str(workdir),
            clickhouse_dsn=f"chdb://{workdir / 'clickhouse'}", **overrides,
        )
        settings = Settings.from_env(env)
        NAMESPACES.add((settings.redis_url, settings.redis_namespace))  # dropped at session end
        return cls(env, workdir)

    @property
    def port(self) -> int:
        return int(self.env["REFSTREAM_WEB_PORT"])

    @property
    def kafka(self) -> str:
        return self.env["REFSTREAM_KAFKA_URL"].split("://", 1)[1]

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """Security arguments of an aiokafka client of this pipeline (TLS, SASL; none in plaintext)."""
        return client_kwargs(Settings.from_env(self.env))

    @property
    def dsn(self) -> str:
        return self.env["REFSTREAM_CLICKHOUSE_DSN"]

    @property
    def topology(self) -> Topology:
        """The pipeline's topics, roles and consumer groups."""
        return Topology(Settings.from_env(self.env))

    def topic(self, name: str) -> str:
        return self.env["REFSTREAM_TOPIC_PREFIX"] + name

    # -- workers -------------------------------------------------------------------
    def start_worker(self, timeout: float = 120, role: str | None = None) -> subprocess.Popen:
        """Start a worker (of `role`, default REFSTREAM_ROLE) and wait until its web server answers.
        It serves on the pipeline's port unless a live worker has it (then on a free port)."""
        from streams.dev.stack import free_port

        port = free_port() if self.port in self.ports.values() else self.port
        env = {**os.environ, **self.env, "REFSTREAM_WEB_PORT": str(port)}
        if role is not None:
            env["REFSTREAM_ROLE"] = role
        self.roles.add(env.get("REFSTREAM_ROLE") or "all")
        log = (self.workdir / f"worker-{self.started}{'-' + role if role else ''}.log").open("w")
        self.started += 1
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        self.ports[proc.pid] = port
        self.wait(lambda: (self.get("/health", proc) or {}).get("ok"), timeout, "worker start")
        return proc

    def stop_worker(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Signal one worker and wait for it; its exit code, None if it had to be killed."""
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        self.workers.remove(proc)
        self.ports.pop(proc.pid, None)
        return code

    def stop_workers(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.workers:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers = []
        self.ports = {}

    def get(self, path: str, worker: subprocess.Popen | None = None) -> Any:
        """GET a JSON page of `worker` (default: the one on the pipeline's port); None if it does not answer."""
        port = self.ports.get(worker.pid, self.port) if worker is not None else self.port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def metric(self, name: str, worker: subprocess.Popen | None = None) -> float:
        """Sum of a Prometheus sample over its labels on a worker's /metrics (0 if absent)."""
        port = self.ports.get(worker.pid, self.port) if worker is not None else self.port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + "{", name + " ")))

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.workers:
                if proc.poll() is not None and proc.returncode not in (0, -9):
                    raise AssertionError(f"worker {proc.args} exited with {proc.returncode} during {what}; "
                                         f"logs in {self.workdir}")
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.workdir}")

    def wait_counts(self, expected: dict[str, int], timeout: float = 180, settle_s: float = 3) -> dict:
        """Wait until ClickHouse holds `expected` distinct rows per table and conversions settle."""
        state: dict[str, Any] = {"last": None, "since": 0.0, "counts": None}

        def check() -> bool:
            counts = self.get("/counts")
            state["counts"] = counts
            if not counts or any(counts.get(t) != n for t, n in expected.items()):
                return False
            key = json.dumps(counts, sort_keys=True)
            if key != state["last"]:
                state.update(last=key, since=time.monotonic())
                return False
            return time.monotonic() - state["since"] >= settle_s

        try:
            self.wait(check, timeout, f"counts {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last counts {state['counts']}") from None
        return state["counts"]

    # -- input -------------------------------------------------------------------------
    def produce(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        """Send (topic without prefix, key, value) messages in order and wait for the acks."""
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.kafka, linger_ms=5, **self.client_kwargs)
            await producer.start()
            try:
                futures = [await producer.send(self.topic(t), value=v, key=k) for t, k, v in messages]
                await asyncio.gather(*futures)
            finally:
                await producer.stop()

        asyncio.run(send())

    def offsets(self, group: str, topics: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
        """End offsets and the committed offsets of consumer group `group` on `topics` (without
        prefix), as {"topic/partition": offset}; partitions without a commit are left out of
        the latter. The reading consumer never subscribes, so it does not join the group."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def read() -> tuple[dict[str, int], dict[str, int]]:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka, group_id=group, enable_auto_commit=False,
                                        **self.client_kwargs)
            await consumer.start()
            try:
                await consumer.topics()
                tps = [TopicPartition(self.topic(name), p) for name in topics
                       for p in sorted(consumer.partitions_for_topic(self.topic(name)) or ())]
                ends = {f"{tp.topic}/{tp.partition}": n for tp, n in (await consumer.end_offsets(tps)).items()}
                committed = {}
                for tp in tps:
                    offset = await consumer.committed(tp)
                    if offset is not None:
                        committed[f"{tp.topic}/{tp.partition}"] = offset
                return ends, committed
            finally:
                await consumer.stop()

        return asyncio.run(read())

    def committed(self, group: str, topics: Sequence[str]) -> dict[str, int]:
        """Committed offsets of consumer group `group` on `topics` (see `offsets`)."""
        return self.offsets(group, topics)[1]

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Consumer group -> the topics it reads, for the roles of the workers started so far."""
        return self.topology.groups(self.roles)

    def wait_caught_up(self, timeout: float = 180) -> None:
        """Wait until every consumer group has committed the end offsets seen one check (>= 1 s)
        earlier: the joins send clock heartbeats, so the ends move while traffic flows."""
        previous: dict[tuple[str, str], int] = {}

        def check() -> bool:
            nonlocal previous
            ends, committed = {}, {}
            for group, topics in self.groups().items():
                e, c = self.offsets(group, topics)
                ends.update({(group, tp): n for tp, n in e.items()})
                committed.update({(group, tp): n for tp, n in c.items()})
            done = bool(previous) and all(committed.get(k, 0) >= n for k, n in previous.items())
            previous = ends
            time.sleep(0.5)
            return done

        self.wait(check, timeout, "consumer groups caught up")

    def wait_done(self, expected: dict[str, int], timeout: float = 180) -> dict:
        """Wait for `expected` rows (see `wait_counts`) and for every consumer group to catch up,
        then for the counts to settle again: all input processed, all output written."""
        self.wait_counts(expected, timeout)
        self.wait_caught_up(timeout)
        return self.wait_counts(expected, timeout)

    # -- output ------------------------------------------------------------------------
    def query(self, sql: str) -> list[dict]:
        """Rows of a query on this pipeline's ClickHouse (in a subprocess: chdb allows one process
        per directory, so the test process never holds it open). Workers must be stopped."""
        code = ("import json,sys; from sinks.clickhouse import connect, rows_as_dicts; c=connect(sys.argv[1]); "
                "print(json.dumps(rows_as_dicts(c.query(sys.argv[2])), default=str))")
        out = subprocess.run([sys.executable, "-c", code, self.dsn, sql], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout)


    def cli(self, *args: str) -> str:
        """Run a `refstream` command against this pipeline (workers stopped); its stdout."""
        out = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env={**os.environ, **self.env},
                             capture_output=True, text=True)
        assert out.returncode == 0, f"refstream {' '.join(args)} failed: {out.stderr[-2000:]}"
        return out.stdout


def event(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


#: fields of conversions_current compared between runs of the same traffic
COMPARED = ("order_id", "status", "reasons", "promoter_id", "amount", "level", "tier", "rate", "commission", "bonus", "cap",
            "points", "rule_version", "attribution_final")


def conversions(p: Pipeline) -> dict[str, dict[str, str]]:
    """order_id -> the COMPARED fields of conversions_current (workers stopped)."""
    rows = p.query(f"SELECT {', '.join(COMPARED)} FROM conversions_current")
    return {r["order_id"]: {c: str(r[c]) for c in COMPARED} for r in rows}


def assert_same_conversions(result: dict[str, dict[str, str]], reference: dict[str, dict[str, str]]) -> None:
    """The same orders with the same status, reasons, promoter, amount and price (runs made
    with `Pipeline.create(..., comparable=True)`)."""
    assert set(result) == set(reference), (f"missing {sorted(set(reference) - set(result))[:5]}, "
                                           f"unexpected {sorted(set(result) - set(reference))[:5]}")
    other = {o: (result[o], reference[o]) for o in reference if result[o] != reference[o]}
    assert not other, f"{len(other)} orders differ: {list(other.items())[:3]}"


def settled_end_ms(now_ms: int | None = None) -> int:
    """An end for generated test traffic that `closing_messages` can settle: its last UTC day
    ends at least three hours before now, so closing events at or before now move every
    join's watermark (two allowed latenesses of 1 h behind) past every fraud window."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return (now - 4 * HOUR_MS) // DAY_MS * DAY_MS - 3 * HOUR_MS


def closing_messages(traffic: Any, partitions: int = 4) -> list[tuple[str, bytes, bytes]]:
    """One click, signup and order per raw partition, 3 h after the traffic's last UTC day:
    they close every click hour and signup day of `traffic`, so every flood and farming
    count is final and runs of the same traffic compare exactly (while a window is open, a
    decision depends on when its counters were read). They make no conversion: a click
    nobody signs up after, an organic signup, an order of an account that never signed up."""
    ts = (traffic.spec.end_ms // DAY_MS + 1) * DAY_MS + 3 * HOUR_MS
    assert ts <= time.time() * 1000, "closing events would lie in the future: use settled_end_ms()"
    out = []
    for topic in RAW_TOPICS:
        for p in range(partitions):
            key = next(k for k in (f"closing-{topic}-{p}-{i}".encode() for i in range(1000))
                       if partition_for(k, partitions) == p)
            body: dict[str, Any] = {"event_id": key.decode(), "ts": ts}
            if topic == "clicks":
                body.update(tracking_code="closing", visitor_id=key.decode())
            elif topic == "signups":
                body.update(account_id=key.decode(), visitor_id=key.decode())
            else:
                body.update(order_id=key.decode(), account_id=key.decode(), product="closing", amount="1.00",
                            currency="USD", status="paid")
            out.append((topic, key, json.dumps(body).encode()))
    return out


def expected_counts(traffic: Any, partitions: int = 4) -> dict[str, int]:
    """Distinct rows ClickHouse must hold once every input of generated `traffic` and its
    closing messages is processed: every attribution final (`conversions_open` 0), else a
    run could stop between the last conversion and the update that finalises it."""
    events = traffic.counts.events
    return {"clicks": events["clicks"] + partitions, "signups": events["signups"] + partitions,
            "orders": events["orders"] + partitions,
            "dead_letters": sum(traffic.counts.malformed.values()),
            "conversions_current": sum(len(acc.orders) for acc in traffic.truth.accounts.values()),
            "conversions_open": 0}


def raw_messages(traffic: Any, partitions: int = 4) -> list:
    """The clicks, signups and orders of generated `traffic`, in delivery order, then its
    closing messages (traffic made with `end_ms=settled_end_ms()`)."""
    return [m for m in traffic.messages if m[0] not in REFERENCE_TOPICS] + closing_messages(traffic, partitions)


def load_reference(p: Pipeline, traffic: Any, *workers: subprocess.Popen) -> None:
    """Produce promoters and exclusions; wait until every given worker (stream or all) loaded them."""
    p.produce([m for m in traffic.messages if m[0] in REFERENCE_TOPICS])
    n = len(traffic.truth.promoters)
    for w in workers:
        p.wait(lambda w=w: (p.get("/health", w) or {}).get("promoters") == n, 60, "promoters loaded")


def undisturbed(stack: Any, traffic: Any, workdir: Path, **overrides: Any) -> dict[str, dict[str, str]]:
    """conversions_current of one `all` worker fed `traffic` without disturbance; it must
    match the generator's ground truth. `overrides`: settings, e.g. another (secured) Kafka."""
    p = Pipeline.create(stack, f"t{uuid.uuid4().hex[:8]}-one-", workdir, comparable=True, **overrides)
    try:
        w = p.start_worker()
        load_reference(p, traffic, w)
        p.produce(raw_messages(traffic))
        p.wait_done(expected_counts(traffic))
    finally:
        p.stop_workers()
    result = conversions(p)
    truth = {oid for acc in traffic.truth.accounts.values() for oid in acc.orders}
    assert set(result) == truth, "one undisturbed worker must match the generator's ground truth"
    open_ = [o for o, row in result.items() if row["attribution_final"] != "True"]
    assert not open_, f"the closing messages must make every attribution final: {open_[:5]}"
    return result
