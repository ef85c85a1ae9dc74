"""End-to-end throughput of refstream with 1 and 2 stream workers, against a raw-consumer baseline.

Starts a private local stack (Tansu on a free port, the machine's Redis if it answers),
generates one backlog and measures, in the same run:

- baseline: a bare `aiokafka` consumer (no group) draining clicks/signups/orders, without
  decoding and with `json.loads` per value: what the broker and client alone can do here;
- pipeline, once per `--workers` count (default 1, then 2): that many `refstream worker
  --role stream` subprocesses plus one `--role sink` (chdb allows one ClickHouse process),
  each count on its own copy of the backlog (own topic prefix, groups and chdb directory),
  from the first consumed traffic event (`refstream_events_in_total` > 0 in the stream
  workers' /metrics) to the last change of the sink's output, once ClickHouse got every
  valid message, the rows written stopped changing and both consumer groups (joins, sink)
  have caught up with every topic they read.

It prints a table (stdout) with the rates, their ratios and the 5,000 events/s per worker
target. The machine is small and noisy: compare ratios between runs, not absolute figures.
On 2 cores the broker, chdb and every worker share the same CPUs, so a second worker can
only show part of what it adds on a bigger machine.
Exit status 0 whether the target is met or not (this is a report); non-zero on errors.

    .venv/bin/python -m bench.e2e --help
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
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.adapters.kafka import client_kwargs
from streams.adapters.signals import drop_namespace
from streams.adapters.topics import ensure_topics_sync
from streams.config import Settings
from streams.dev import stack
from streams.dev.demo import child_env, on_stack, only
from streams.dev.generate import produce
from streams.dev.traffic import Traffic, TrafficSpec, generate
from streams.topology import INPUT_TOPICS, OUTPUT_TOPICS, RAW_TOPICS, REFERENCE_TOPICS, Topology

ROOT = Path(__file__).resolve().parents[1]
TARGET_EVENTS_PER_S = 5_000
SHARED_REDIS_DB = 15  # as in tests/conftest.py: stay off db 0 of a Redis somebody else runs
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark could not run to the end; the message says where to look."""


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# /proc readings (Linux; None elsewhere) ------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# Traffic --------------------------------------------------------------------------------


def preload(settings: Settings, traffic: Traffic) -> None:
    """Reference data first (the joins need promoters), then all traffic, before any consumer."""
    ensure_topics_sync(settings, INPUT_TOPICS + OUTPUT_TOPICS, settings.partitions)
    asyncio.run(produce(settings, only(traffic, REFERENCE_TOPICS), progress=False))
    started = time.monotonic()
    asyncio.run(produce(settings, only(traffic, RAW_TOPICS), progress=True))
    say(f"pre-loaded the backlog in {time.monotonic() - started:.1f} s")


# Baseline: a bare consumer --------------------------------------------------------------


@dataclass
class Drain:
    messages: int
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def drain(settings: Settings, expected: int, decode: bool, timeout: float) -> Drain:
    """Read every partition of the raw traffic topics from the beginning, as fast as possible."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, **client_kwargs(settings))
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so partitions_for_topic knows the topics
        tps = [TopicPartition(settings.topic(t), p) for t in RAW_TOPICS
               for p in sorted(consumer.partitions_for_topic(settings.topic(t)) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = json.loads
        n = size = 0
        started = time.perf_counter()
        while n < expected:
            if time.perf_counter() - started > timeout:
                raise BenchError(f"baseline consumer read {n}/{expected} messages in {timeout:g} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                n += len(records)
                for rec in records:
                    size += len(rec.value)
                    if decode:
                        loads(rec.value)
        return Drain(n, size, time.perf_counter() - started)
    finally:
        await consumer.stop()


def baseline(settings: Settings, expected: int, runs: int, decode: bool) -> Drain:
    """Best of `runs` drains: the least disturbed by the noisy neighbours."""
    results = [asyncio.run(drain(settings, expected, decode, timeout=120)) for _ in range(runs)]
    best = min(results, key=lambda d: d.seconds)
    say(f"baseline ({'json.loads' if decode else 'raw'}): "
        + ", ".join(f"{d.rate:,.0f}" for d in results) + " msg/s")
    return best


# Pipeline: N stream workers and a sink --------------------------------------------------------


@dataclass
class Run:
    workers: int  # stream workers (plus one sink worker)
    events: int  # traffic messages consumed between t_start and t_end
    seconds: float  # t_end - t_start
    startup_s: float  # worker spawn -> first traffic event seen consumed
    promoters_s: float | None  # worker spawn -> promoters loaded (by every stream worker)
    worker_cpu_s: float | None  # all workers, sink included
    broker_cpu_s: float | None
    peak_rss_mib: float | None  # the largest worker's
    rows: dict[str, int]  # /health sink.rows_written at the end
    stop_s: float  # SIGTERM -> exit, all workers
    killed: bool  # one did not stop within the grace time
    check: str = ""  # conversions_current vs the truth

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def http_get(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read()
    except OSError:
        return None


def events_in(port: int, topics: set[str]) -> int | None:
    """`refstream_events_in_total` summed over the raw traffic topics; None before the web is up."""
    body = http_get(port, "/metrics")
    if body is None:
        return None
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("refstream_events_in_total{"):
            labels, value = line.rsplit(" ", 1)
            if any(f'topic="{t}"' in labels for t in topics):
                total += float(value)
    return int(total)


async def group_offsets(settings: Settings) -> tuple[dict[Any, int], dict[Any, int]]:
    """End offsets and committed offsets of the stream and the sink group, on every topic
    each reads (keys: (group, TopicPartition)).

    A group-less look: these consumers never subscribe, so they do not join the workers'
    groups (Tansu does not answer the admin client's OffsetFetch, the consumer's works)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    ends: dict[Any, int] = {}
    committed: dict[Any, int] = {}
    for group, topics in Topology(settings).groups(("stream", "sink")).items():
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group,
                                    enable_auto_commit=False, **client_kwargs(settings))
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(settings.topic(t), p) for t in topics
                   for p in sorted(consumer.partitions_for_topic(settings.topic(t)) or ())]
            ends.update({(group, tp): n for tp, n in (await consumer.end_offsets(tps)).items()})
            committed.update({(group, tp): await consumer.committed(tp) or 0 for tp in tps})
        finally:
            await consumer.stop()
    return ends, committed


class Drained:
    """Whether the workers consumed everything: each check must find the groups' commits at or
    past the end offsets seen by the previous check (>= 1 s earlier). Exact equality never
    holds for long: routers and joins send clock heartbeats every second or two."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.previous: dict[Any, int] | None = None
        self.checked_at = 0.0
        self.lag = -1  # messages behind the previous ends at the last check

    def __call__(self) -> bool:
        if time.monotonic() - self.checked_at < 1.0:
            return False
        self.checked_at = time.monotonic()
        ends, committed = asyncio.run(group_offsets(self.settings))
        previous, self.previous = self.previous, ends
        if previous is None:
            return False
        self.lag = sum(max(0, previous.get(tp, 0) - committed.get(tp, 0)) for tp in ends)
        return self.lag == 0


def spawn(settings: Settings, role: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """One `refstream worker` of `role` serving its web pages on `port`."""
    env = child_env(dataclasses.replace(settings, role=role, web_port=port))
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def total_cpu(pids: list[int | None]) -> float | None:
    """CPU seconds of all these processes; None if one cannot be read."""
    values = [cpu_seconds(pid) for pid in pids]
    return None if any(v is None for v in values) else sum(values)  # type: ignore[misc]


def measure(settings: Settings, traffic: Traffic, workdir: Path, workers: int, broker_pid: int | None,
            poll_s: float, settle_s: float, timeout: float) -> Run:
    """Run `workers` stream workers and one sink over the pre-loaded backlog and time them
    (see the module docstring)."""
    counts = traffic.counts
    total = sum(counts.messages[t] for t in RAW_TOPICS)
    # the sink writes every valid message (duplicates and late ones too); malformed ones are dead letters
    valid = total - sum(counts.malformed[t] for t in RAW_TOPICS)
    malformed = sum(counts.malformed.values())
    promoters = len(traffic.truth.promoters)
    raw_topics = {settings.topic(t) for t in RAW_TOPICS}
    sink_port = settings.web_port
    ports = [stack.free_port() for _ in range(workers)]
    say(f"starting {workers} stream worker(s) and a sink (logs in {workdir}, "
        f"http://127.0.0.1:{sink_port}/health)")
    procs = [spawn(settings, "sink", sink_port, workdir / "sink.log")]
    procs += [spawn(settings, "stream", port, workdir / f"stream-{i}.log") for i, port in enumerate(ports)]
    pids: list[int | None] = [p.pid for p in procs]
    spawned = time.monotonic()
    first: tuple[float, int, float | None, float | None] | None = None  # t, events, cpu, broker cpu
    promoters_at: float | None = None
    rows: dict[str, int] = {}
    last_change, last_say = spawned, 0.0
    cpu_end: float | None = None  # CPU seconds of the workers and the broker at the last change
    broker_end: float | None = None
    drained = Drained(settings)
    try:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise BenchError(f"a worker exited with {proc.returncode}; see the logs in {workdir}")
            if time.monotonic() - spawned > timeout:
                raise BenchError(f"timed out after {timeout:g} s (rows {rows}); see the logs in {workdir}")
            if first is None:
                seen = [events_in(port, raw_topics) for port in ports]
                if any(seen):  # taken when the scrapes return; events already counted are subtracted below
                    first = (time.monotonic(), sum(n or 0 for n in seen), total_cpu(pids), cpu_seconds(broker_pid))
            if promoters_at is None:
                loaded = [json.loads(b).get("promoters") if (b := http_get(port, "/health")) else None
                          for port in ports]
                if all(n == promoters for n in loaded):
                    promoters_at = time.monotonic()
            body = http_get(sink_port, "/health")  # None while the web is not up or too busy to answer
            now = time.monotonic()
            health = json.loads(body) if body else {}
            if body and health.get("sink", {}).get("rows_written", {}) != rows:
                rows, last_change = health["sink"]["rows_written"], now
                cpu_end, broker_end = total_cpu(pids), cpu_seconds(broker_pid)
            written = sum(rows.get(t, 0) for t in RAW_TOPICS)
            # all input written, no output change for settle_s (the joins can stall for longer
            # than that while Faust drains its producer buffer: the group offsets decide)
            if (written >= valid and rows.get("dead_letters", 0) >= malformed and first is not None
                    and promoters_at is not None and now - last_change >= settle_s and drained()):
                break
            if now - last_say >= 2:
                last_say = now
                behind = f", group lag {drained.lag}" if drained.lag >= 0 else ""
                say(f"{workers} worker(s): {written}/{valid} rows written, conversions "
                    f"{rows.get('conversions', 0)}{behind}")
            time.sleep(poll_s)
        # waiting for the settle and the offsets is not work: the run ended at the last change seen
        t_end = last_change
        rss = max((r for p in procs if (r := peak_rss_mib(p.pid)) is not None), default=None)
    finally:
        stopping = time.monotonic()
        killed = any([stop(p) for p in procs])
        stop_s = time.monotonic() - stopping
        say(f"workers stopped in {stop_s:.1f} s" + (" (SIGKILL)" if killed else ""))
    assert first is not None and promoters_at is not None  # the loop only breaks with both
    t_start, n0, cpu0, broker0 = first
    if n0 > total / 2 or t_end <= t_start:  # the web answered late: most of the work was not timed
        raise BenchError(f"the workers had consumed {n0:,} of {total:,} events when their /metrics first "
                         "answered: too small a backlog to time; use more --visitors")
    return Run(
        workers=workers, events=total - n0, seconds=t_end - t_start, startup_s=t_start - spawned,
        promoters_s=promoters_at - spawned,
        worker_cpu_s=cpu_end - cpu0 if cpu_end is not None and cpu0 is not None else None,
        broker_cpu_s=broker_end - broker0 if broker_end is not None and broker0 is not None else None,
        peak_rss_mib=rss, rows=rows, stop_s=stop_s, killed=killed,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 120) -> bool:
    """SIGTERM (Faust flushes its producer buffer and closes chdb), SIGKILL if it hangs.
    Returns whether it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def check_conversions(dsn: str, traffic: Traffic) -> tuple[bool, str]:
    """Order ids in conversions_current vs the traffic's truth. In a subprocess: chdb allows one
    process per data directory, and this one must not keep the engine around."""
    code = ("import json,sys; from sinks.clickhouse import connect; "
            "r=connect(sys.argv[1]).query('SELECT order_id FROM conversions_current'); "
            "print(json.dumps([x[0] for x in r.result_rows]))")
    out = subprocess.run([sys.executable, "-c", code, dsn], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise BenchError(f"querying conversions_current failed:\n{out.stderr[-2000:]}")
    got, want = set(json.loads(out.stdout)), set(traffic.truth.conversions)
    missing, extra = len(want - got), len(got - want)
    verdict = "match" if not (missing or extra) else f"MISMATCH ({missing} missing, {extra} unexpected)"
    return not (missing or extra), f"{len(got):,} in conversions_current, {len(want):,} expected: {verdict}"


# Report ---------------------------------------------------------------------------------


def run_lines(run: Run) -> list[tuple[str, str]]:
    """Report lines of one pipeline run."""
    n = f"{run.workers} stream worker{'s' if run.workers > 1 else ''} + sink"
    per_worker = run.rate / run.workers
    lines = [
        (f"pipeline, {n}", f"{run.rate:,.0f} events/s ({run.events:,} events in {run.seconds:.2f} s)"),
        ("  target", f"{TARGET_EVENTS_PER_S:,} events/s per worker: "
                     + ("met" if per_worker >= TARGET_EVENTS_PER_S else "MISSED")
                     + f" (x{per_worker / TARGET_EVENTS_PER_S:.2f} per stream worker)"),
        ("  start", f"{run.startup_s:.1f} s to the first consumed event"
                    + (f", promoters loaded at {run.promoters_s:.1f} s" if run.promoters_s else "")),
    ]
    if run.worker_cpu_s:  # None off Linux; 0 on a run too short for the clock tick
        lines.append(("  workers' CPU", f"{run.worker_cpu_s:.1f} s ({run.worker_cpu_s / run.seconds:.2f} cores; "
                                        f"{run.events / run.worker_cpu_s:,.0f} events per CPU-s)"))
    if run.broker_cpu_s is not None:
        lines.append(("  broker CPU", f"{run.broker_cpu_s:.1f} s ({run.broker_cpu_s / run.seconds:.2f} cores)"))
    lines.append(("  stop", f"{run.stop_s:.1f} s from SIGTERM to exit"
                            + (" (one did not stop: SIGKILL)" if run.killed else "")))
    if run.peak_rss_mib is not None:
        lines.append(("  peak RSS", f"{run.peak_rss_mib:,.0f} MiB (largest worker, VmHWM)"))
    lines.append(("  rows written", ", ".join(f"{k} {v:,}" for k, v in sorted(run.rows.items()))))
    lines.append(("  conversions check", run.check))
    return lines


def report(args: argparse.Namespace, traffic: Traffic, raw: Drain, decoded: Drain, runs: list[Run]) -> str:
    c = traffic.counts
    total = sum(c.messages[t] for t in RAW_TOPICS)
    lines: list[tuple[str, str]] = [
        ("traffic messages", f"{total:,} ({', '.join(f'{t} {c.messages[t]:,}' for t in RAW_TOPICS)}; "
                             f"{sum(c.duplicates.values()):,} duplicates, {sum(c.late.values()):,} late, "
                             f"{sum(c.malformed.values()):,} malformed; {raw.bytes / 2**20:.1f} MiB)"),
        ("baseline, raw consume", f"{raw.rate:,.0f} msg/s (best of {args.baseline_runs}, no decoding)"),
        ("baseline, consume + json", f"{decoded.rate:,.0f} msg/s (best of {args.baseline_runs}, json.loads)"),
    ]
    for run in runs:
        lines += run_lines(run)
        lines.append(("  ratio pipeline/baseline",
                      f"{run.rate / raw.rate:.2%} of raw, {run.rate / decoded.rate:.2%} of json.loads"))
    first = runs[0]
    for run in runs[1:]:
        lines.append((f"scaling {run.workers} vs {first.workers} worker(s)",
                      f"x{run.rate / first.rate:.2f} events/s ({run.rate:,.0f} / {first.rate:,.0f})"))
    width = max(len(k) for k, _ in lines)
    head = (f"refstream e2e: {args.visitors:,} visitors, seed {args.seed}, {args.partitions} partitions, "
            f"{os.cpu_count()} CPUs")
    note = (f"note: broker, chdb, the sink and every stream worker share these {os.cpu_count()} CPUs; with 2 "
            "cores a second stream worker can show only part of what it adds on a larger machine.")
    return "\n".join([head, "-" * len(head), *(f"{k.ljust(width)}  {v}" for k, v in lines), note])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0],
                                epilog="Compare the ratio pipeline/baseline between runs: the "
                                       "machine is noisy. See bench/README.md.")
    p.add_argument("--visitors", type=int, default=40_000,
                   help="visitors of the generated traffic (default 40000: ~76k traffic messages)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topics (default 4)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="stream workers (plus one sink) per measured run; one run per N, each on its own "
                        "copy of the backlog (default: 1 2)")
    p.add_argument("--seed", type=int, default=7, help="traffic seed (default 7)")
    p.add_argument("--malformed", type=int, default=0, help="malformed messages to mix in (default 0)")
    p.add_argument("--baseline-runs", type=int, default=2, help="baseline drains per mode; best kept")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between worker polls (default 0.2)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds without new output rows before the end is confirmed (default 2; "
                        "not counted)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to each run (default 900)")
    p.add_argument("--log-level", default="INFO", help="worker log level (default INFO)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, chdb data)")
    args = p.parse_args(argv)
    if args.visitors < 1 or args.partitions < 1 or args.baseline_runs < 1 or min(args.workers) < 1:
        p.error("--visitors, --partitions, --workers and --baseline-runs must be at least 1")
    if max(args.workers) > args.partitions:
        p.error("--workers beyond --partitions would idle: at most one join partition per worker")
    return args


def run_settings(base: Settings, local: Any, workdir: Path, args: argparse.Namespace) -> Settings:
    """Settings of one measured run: its own topic prefix, consumer groups and chdb directory."""
    prefix = f"bench{uuid.uuid4().hex[:8]}-"
    return on_stack(
        base, local, topic_prefix=prefix,
        app_id=f"bench-{prefix.rstrip('-')}", clickhouse_dsn=f"chdb://{workdir / prefix / 'clickhouse'}",
        data_dir=str(workdir / prefix), partitions=args.partitions, broker_session_timeout_s=6,
        web_port=stack.free_port(), log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="refstream-bench-"))
    shared_redis = stack.redis_answers("127.0.0.1", 6379)
    base = Settings(data_dir=str(workdir), redis_url=f"redis://127.0.0.1:6379/{SHARED_REDIS_DB}")
    try:
        say(f"temp dir {workdir}")
        local = stack.up(base, kafka_port=stack.free_port(),
                         redis_port=None if shared_redis else stack.free_port())
        kafka = local.services.get("kafka")
        broker_pid = kafka.pid if kafka and kafka.started_by_us else None
        started = time.monotonic()
        traffic = generate(TrafficSpec(seed=args.seed, visitors=args.visitors, malformed=args.malformed,
                                       end_ms=time.time_ns() // 1_000_000,
                                       allowed_lateness_ms=base.lateness_ms))
        expected = sum(traffic.counts.messages[t] for t in RAW_TOPICS)
        say(f"generated {len(traffic.messages):,} messages in {time.monotonic() - started:.1f} s")
        runs: list[Run] = []
        for i, workers in enumerate(args.workers):
            settings = run_settings(base, local, workdir, args)
            Path(settings.data_dir).mkdir(parents=True)
            preload(settings, traffic)
            if i == 0:
                raw = baseline(settings, expected, args.baseline_runs, decode=False)
                decoded = baseline(settings, expected, args.baseline_runs, decode=True)
            run = measure(settings, traffic, Path(settings.data_dir), workers, broker_pid,
                          args.poll, args.settle, args.timeout)
            _, run.check = check_conversions(settings.clickhouse, traffic)
            runs.append(run)
            drop_namespace(settings.redis_url, settings.redis_namespace)  # its counters and ledger
        print(report(args, traffic, raw, decoded, runs), flush=True)
        return 0
    except (BenchError, stack.StackError) as exc:
        say(f"error: {exc}")
        args.keep = True  # the worker logs are what explains the error
        return 1
    finally:
        stack.down(base)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
