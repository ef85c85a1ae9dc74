"""Join state size and recovery: `memory://` against `rocksdb://`, in the same run.

1. Realistic states: generated traffic (`streams.dev.traffic`) runs through the real router
   logic, the visitor join and the account join (`JoinEngine` with `VisitorLogic`,
   `AccountLogic`, the fraud counters in a real Redis) without a broker. What remains in
   their stores are the live keys a worker holds within the windows: their encoded states
   are the values loaded below. The Redis counters they wrote give Redis bytes per event
   (`MEMORY USAGE` of the namespace's keys, and `INFO memory` before and after).
2. For each N (`--keys`) and store: a worker process (a `GuardedApp` with tables `visitors`
   and `accounts` on a private Tansu, `BatchedTable` as in the joins) loads N live keys,
   split between the tables as in the sample and given the sample's values in turn, in
   steps of 2,000 keys, each step's writes flushed to the changelog; it reports its RSS
   growth, the store's directory size and the changelog record-batch bytes it sent. A
   second worker on the same data directory then recovers (memory: the whole changelog;
   RocksDB: the tail past the persisted offsets, here empty), and for RocksDB a third on an
   empty directory (the whole changelog). Each reports Faust's recovery time, the changelog
   records it applied, its RSS (the report: over the loading worker's before it loaded),
   and the time and RSS the join engine's deadline index over the recovered keys takes
   (rebuilt after every assignment, `JoinEngine._heap`).

    .venv/bin/python -m bench.state --help
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
STEP = 2000  # keys per flushed step (a join step takes up to JOIN_BATCH messages)
TABLES = ("visitors", "accounts")
SHARED_REDIS_DB = 15  # as in tests/conftest.py and bench/e2e.py


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# -- 1. realistic states and Redis bytes per event ------------------------------------------


async def sample_states(redis_url: str, visitors: int, days: float, partitions: int) -> dict[str, Any]:
    """Live join states (table -> [(key, value)]) of generated traffic, and Redis per event."""
    import redis

    from schemas.records import Batch
    from streams.adapters.reference_feed import reference_reader
    from streams.adapters.signals import SignalStore, drop_namespace
    from streams.config import Settings
    from streams.dev.traffic import TrafficSpec, generate
    from streams.logic import attribution as attr
    from streams.logic import conversions as conv
    from streams.logic.engine import JoinEngine, MemoryStore
    from streams.logic.join_logics import AccountLogic, VisitorLogic
    from streams.logic.privacy import Pseudonyms
    from streams.logic.reference import ExclusionDirectory, PromoterDirectory
    from streams.logic.routing import Routing
    from streams.logic.rules.ruleset import load_rules
    from streams.topology import RAW_TOPICS

    s = Settings(partitions=partitions)
    now = int(time.time() * 1000)
    traffic = generate(TrafficSpec(seed=5, visitors=visitors, days=days, end_ms=now - 3_600_000))
    directory, exclusions = PromoterDirectory(None), ExclusionDirectory()
    reader = reference_reader(s)
    for topic, _, value in traffic.messages:
        if topic == "promoters":
            directory.add(reader.read(topic, value, now))
    routing = Routing(partitions, 0, int(s.max_future_s * 1000), s.max_message_bytes, Pseudonyms(b"bench"))
    namespace = f"bench-state-{uuid.uuid4().hex[:8]}"
    signals = SignalStore(redis_url, namespace)
    r = redis.Redis.from_url(redis_url)
    used_before = int(r.info("memory")["used_memory"])
    book = load_rules("")
    visitor = JoinEngine(VisitorLogic(attr.AttributionRules(s.window_ms, s.attribution_model, s.max_clicks_per_visitor),
                                      book, s.lateness_ms, partitions), MemoryStore(),
                         sources=("clicks/0", "signups/0"), lateness_ms=s.lateness_ms, partitions=partitions,
                         sweep_every_s=0)
    ctx = conv.Context(conv.ConversionRules(s.binding_ms, s.refund_window_ms, s.attribution_model), book,
                       directory.as_of, exclusions.owner, directory.by_coupon, directory.parent_of)
    account = JoinEngine(AccountLogic(ctx, signals, partitions), MemoryStore(), sources=("orders/0",),
                         lateness_ms=s.lateness_ms, partitions=partitions, sweep_every_s=0)
    raw = [(t, k, v) for t, k, v in traffic.messages if t in RAW_TOPICS]
    events = counted = 0
    for i in range(0, len(raw), 500):  # steps as the router takes fetched batches
        chunk = [SimpleNamespace(topic=t, partition=0, offset=i + j, key=k, value=v)
                 for j, (t, k, v) in enumerate(raw[i:i + 500])]
        routed = routing.route(chunk, now)
        records = [rec for recs in routed.visitors.values() for rec in recs]
        events += len(records) + sum(len(recs) for recs in routed.accounts.values())
        counted += len(records)  # clicks and signups: the events that add to the counters
        await signals.record_events(records)
        attributions: dict[int, list[Any]] = {}
        for p, recs in routed.visitors.items():
            out = await visitor.process(p, [Batch(records=list(recs))])
            for q, atts in out.attributions.items():
                attributions.setdefault(q, []).extend(atts)
        for p in set(attributions) | set(routed.accounts):
            await account.process(p, [Batch(records=attributions.get(p, []) + list(routed.accounts.get(p, [])))])
    keys = [k.decode() for k in r.scan_iter(match=f"{namespace}:*", count=1000)]
    usage = sum(int(r.memory_usage(k) or 0) for k in keys)
    used_after = int(r.info("memory")["used_memory"])
    ttl = max((int(r.ttl(k)) for k in keys[:100]), default=0)
    await signals.close()
    drop_namespace(redis_url, namespace)
    states = {name: [(k, v) for k, v in engine.store.data.items() if not k.startswith(b"\x00")]
              for name, engine in (("visitors", visitor), ("accounts", account))}
    return {"events": events, "counted_events": counted, "raw_messages": len(raw), "redis_keys": len(keys),
            "redis_usage": usage, "redis_used_delta": used_after - used_before, "redis_ttl_s": ttl, "states": states}


# -- 2. one worker process: load N keys, or recover ------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run in a fresh process: a Faust worker with the two tables; writes its figures to --out."""
    import faust

    from streams.delivery import GuardedApp
    from streams.logic.partitioning import partition_for

    app = GuardedApp(args.app_id, broker=args.kafka, store=args.store, autodiscover=False, datadir=args.datadir,
                     topic_partitions=args.partitions, topic_allow_declare=True, web_enabled=False,
                     broker_session_timeout=6, broker_heartbeat_interval=2, consumer_auto_offset_reset="earliest",
                     stream_recovery_delay=0.5, logging_config=None,
                     # Tansu lists a partition's end as its last record batch's first offset + 1, short
                     # of the last offset a RocksDB store persisted: Faust's check would stop the worker
                     recovery_consistency_check=False)
    source = app.topic(f"{args.app_id}-source", partitions=args.partitions, internal=True, value_serializer="raw")
    tables = {name: app.batched(app.Table(name, partitions=args.partitions, key_type=bytes, value_type=bytes))
              for name in TABLES}
    applied = {"records": 0}
    for t in tables.values():  # count what the recovery applies
        apply = t.table.data.apply_changelog_batch

        def counting(batch: Any, to_key: Any, to_value: Any, apply: Any = apply) -> None:
            batch = list(batch)
            applied["records"] += len(batch)
            apply(batch, to_key=to_key, to_value=to_value)
        t.table.data.apply_changelog_batch = counting

    @app.agent(source)
    async def idle(stream: Any) -> None:
        async for _ in stream:
            pass

    @app.task
    async def measure() -> None:
        started = time.monotonic()
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        await recovery.completed.wait()
        out: dict[str, Any] = {"ready_s": time.monotonic() - started, "rss_start": rss_start,
                               "rss_ready": rss_bytes(), "records_applied": applied["records"]}
        if recovery._recovery_started_at is not None and recovery._recovery_ended_at is not None:
            out["recovery_s"] = recovery._recovery_ended_at - recovery._recovery_started_at
        if args.mode == "load":
            values = msgspec.msgpack.decode(Path(args.values).read_bytes())
            out.update(await load(tables, values, args.keys, args.partitions, partition_for))
            out["rss_loaded"] = rss_bytes()
        else:
            out.update(index(tables, args.partitions))
        out["disk_bytes"] = dir_bytes(Path(args.datadir))
        Path(args.out).write_text(json.dumps(out))
        os.kill(os.getpid(), signal.SIGTERM)  # a clean stop: RocksDB closes its databases

    app.count_readers()
    rss_start = rss_bytes()  # the process before its worker starts
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


async def load(tables: dict[str, Any], values: dict[str, list[bytes]], n: int, partitions: int,
               partition_for: Any) -> dict[str, Any]:
    """N live keys, split between the tables like the sample's, each a sample value in turn."""
    sent = {"bytes": 0}
    for t in tables.values():
        send = t._send

        async def counting(producer: Any, batch: Any, topic: str, partition: int, writes: Any, first: int,
                           send: Any = send) -> int:
            sent["bytes"] += batch.size()
            return int(await send(producer, batch, topic, partition, writes, first))
        t._send = counting
    total = sum(len(values[name]) for name in tables)
    started = time.monotonic()
    for name, table in tables.items():
        share = round(n * len(values[name]) / total)
        sample = values[name]
        width = max(len(k) for k in values[name + "_keys"])
        for first in range(0, share, STEP):
            for i in range(first, min(first + STEP, share)):
                key = f"{name[0]}{i:0{width - 1}d}".encode()  # as long as the sample's longest key
                value = bytes(bytearray(sample[i % len(sample)]))  # an object of its own, as a fresh encode
                table.set(partition_for(key, partitions), key, value)
            await table.flush()
    producer = tables[TABLES[0]]._producer()
    await producer.flush()
    await asyncio.sleep(0.5)  # the acks' callbacks (RocksDB writes) run
    return {"load_s": time.monotonic() - started, "changelog_bytes": sent["bytes"]}


def index(tables: dict[str, Any], partitions: int) -> dict[str, Any]:
    """The deadline index a join engine rebuilds over the recovered keys: one heap entry per key."""
    import heapq

    from streams.logic.partitioning import partition_for

    before, started, now_ms = rss_bytes(), time.monotonic(), int(time.time() * 1000)
    heaps: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    deadlines: dict[bytes, int] = {}
    keys = 0
    for table in tables.values():
        for key in table.keys():  # as JoinEngine._heap: keys, each one's state read once
            if key.startswith(b"\x00"):
                continue
            deadline = now_ms + len(table.get(key) or b"")  # stands in for logic.deadline(state): epoch ms
            deadlines[key] = deadline
            heapq.heappush(heaps[partition_for(key, partitions)], (deadline, key))
            keys += 1
    return {"keys": keys, "index_s": time.monotonic() - started, "index_rss": rss_bytes() - before}


# -- 3. orchestration -----------------------------------------------------------------------


def run_child(mode: str, store: str, app_id: str, datadir: Path, kafka: str, args: argparse.Namespace,
              values: Path, n: int) -> dict[str, Any]:
    out = datadir.parent / f"{app_id}-{mode}-{uuid.uuid4().hex[:4]}.json"
    cmd = [sys.executable, "-m", "bench.state", "--child", mode, "--store", store, "--app-id", app_id,
           "--datadir", str(datadir), "--kafka", kafka, "--partitions", str(args.partitions),
           "--values", str(values), "--n", str(n), "--out", str(out)]
    log = (datadir.parent / f"{app_id}-{mode}.log").open("a")
    proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
    if not out.exists():
        raise RuntimeError(f"{mode} worker for {store} exited {proc.returncode} without figures: see {log.name}")
    return dict(json.loads(out.read_text()))


def measure(store: str, n: int, kafka: str, workdir: Path, values: Path, args: argparse.Namespace) -> dict[str, Any]:
    app_id = f"bench-state-{uuid.uuid4().hex[:8]}"
    datadir = workdir / app_id
    loaded = run_child("load", store, app_id, datadir, kafka, args, values, n)
    result: dict[str, Any] = {"store": store, "n": n, "load": loaded}
    result["restart"] = run_child("recover", store, app_id, datadir, kafka, args, values, n)
    if store.startswith("rocksdb"):
        shutil.rmtree(datadir)
        result["full"] = run_child("recover", store, app_id, datadir, kafka, args, values, n)
    shutil.rmtree(datadir, ignore_errors=True)
    return result


def report(sample: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"sample: {sample['events']:,} routed events, live keys {sample['live']}, mean value bytes "
             f"{sample['value_bytes']}",
             f"redis: {sample['redis_keys']:,} keys, MEMORY USAGE {sample['redis_usage'] / sample['events']:.0f} B "
             f"per event ({sample['redis_usage'] / sample.get('counted_events', sample['events']):.0f} B per click "
             f"or signup), used_memory delta {sample['redis_used_delta'] / sample['events']:.0f} B per event, "
             f"TTL {sample['redis_ttl_s'] / 3600:.0f} h",
             "| store | keys | RSS/key (load) | disk/key | changelog/key | load s | restart: recovery s, records, "
             "RSS/key | full replay: recovery s, records | index s, RSS/key |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        n, load, restart = r["n"], r["load"], r["restart"]
        full = r.get("full", restart)
        lines.append(
            f"| {r['store']} | {n:,} | {(load['rss_loaded'] - load['rss_ready']) / n:.0f} | "
            f"{load['disk_bytes'] / n:.0f} | {load['changelog_bytes'] / n:.0f} | {load['load_s']:.1f} | "
            f"{restart.get('recovery_s', 0):.1f}, {restart['records_applied']:,}, "
            f"{(restart['rss_ready'] - load['rss_ready']) / n:.0f} | "
            f"{full.get('recovery_s', 0):.1f}, {full['records_applied']:,} | "
            f"{restart['index_s']:.1f}, {restart['index_rss'] / n:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.state", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", default="100000,300000,1000000",
                   help="live keys to load, comma-separated (default 100000,300000,1000000)")
    p.add_argument("--stores", default="memory://,rocksdb://", help="table stores (default both)")
    p.add_argument("--partitions", type=int, default=8, help="table partitions (default 8)")
    p.add_argument("--visitors", type=int, default=4000, help="visitors of the sample traffic (default 4000)")
    p.add_argument("--days", type=float, default=14, help="days of sample traffic (default 14)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each worker (default 3600)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--report", help="print the report of a --json file of an earlier run, and run nothing")
    for hidden in ("--child", "--store", "--app-id", "--datadir", "--kafka", "--values", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.mode, args.keys = args.child, args.n
        child(args)
        return 0
    if args.report:
        figures = json.loads(Path(args.report).read_text())
        print(report(figures["sample"], figures["results"]))
        return 0
    from streams.config import Settings
    from streams.dev import stack

    workdir = Path(tempfile.mkdtemp(prefix="refstream-bench-state-"))
    shared_redis = stack.redis_answers("127.0.0.1", 6379)
    base = Settings(data_dir=str(workdir), redis_url=f"redis://127.0.0.1:6379/{SHARED_REDIS_DB}")
    started = time.monotonic()
    try:
        local = stack.up(base, kafka_port=stack.free_port(), redis_port=None if shared_redis else stack.free_port())
        say(f"temp dir {workdir}; sampling join states")
        sample = asyncio.run(sample_states(local.redis_url, args.visitors, args.days, args.partitions))
        states = sample.pop("states")
        values = {name: [v for _, v in kv] for name, kv in states.items()}
        values.update({f"{name}_keys": [k for k, _ in kv] for name, kv in states.items()})
        sample["live"] = {name: len(kv) for name, kv in states.items()}
        sample["value_bytes"] = {name: round(sum(map(len, v)) / max(len(v), 1)) for name, v in values.items()
                                 if not name.endswith("_keys")}
        values_file = workdir / "values.msgpack"
        values_file.write_bytes(msgspec.msgpack.encode(values))
        say(f"sample: {json.dumps(sample)}")
        results = []
        for n in (int(k) for k in args.keys.split(",")):
            for store in args.stores.split(","):
                say(f"{store} with {n:,} keys")
                results.append(measure(store, n, local.kafka_url, workdir, values_file, args))
                say(json.dumps(results[-1]))
        text = report(sample, results)
        print(text + f"\n\n{time.monotonic() - started:.0f} s in all, {os.cpu_count()} CPUs", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"sample": sample, "results": results}, indent=1))
        return 0
    finally:
        stack.down(base)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
