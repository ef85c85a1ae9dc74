"""The refstream Faust app: models -> topics -> tables -> agents.

raw clicks, signups ──route──> visitor-join ──join_visitors──> account-join ─┐
raw orders ───────────route──────────────────────────────────> account-join ─┴─join_accounts──> conversions
visitor-join, account-join, conversions, late-events, dead-letters ──sink──> ClickHouse
promoters, exclusions ──reference──> ClickHouse (+ every worker's in-memory directory)
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from sinks.step import SinkStep
from streams.config import Settings
from streams.joiners import AccountJoin, VisitorJoin
from streams.metrics import Metrics
from streams.reference import ExclusionDirectory, PromoterDirectory, follow_reference
from streams.router import Router
from streams.web.routes import register as register_web
from streams.rules.signals import SignalStore

log = logging.getLogger(__name__)
RAW = {"value_serializer": "raw", "key_serializer": "raw"}


@dataclass
class Topics:
    raw_events: Any  # clicks, signups, orders
    reference: Any  # promoters, exclusions
    visitor_join: Any
    account_join: Any
    conversions: Any
    late_events: Any
    dead_letters: Any
    sink_inputs: Any


def make_topics(app: faust.App, s: Settings) -> Topics:
    internal = {"partitions": s.partitions, "internal": True, **RAW}
    t = s.topic
    return Topics(
        raw_events=app.topic(t("clicks"), t("signups"), t("orders"), **RAW),
        reference=app.topic(t("promoters"), t("exclusions"), **RAW),
        visitor_join=app.topic(t("visitor-join"), **internal),
        account_join=app.topic(t("account-join"), **internal),
        conversions=app.topic(t("conversions"), **RAW),
        late_events=app.topic(t("late-events"), **RAW),
        dead_letters=app.topic(t("dead-letters"), **RAW),
        sink_inputs=app.topic(
            t("visitor-join"), t("account-join"), t("conversions"), t("late-events"), t("dead-letters"), **RAW
        ),
    )


def join_sources(s: Settings, raw_partitions: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The upstream partitions whose event-time progress each join's watermark waits for."""
    def raw(name: str) -> list[str]:
        return [f"{s.topic(name)}/{i}" for i in range(raw_partitions[name])]
    visitor = tuple(raw("clicks") + raw("signups"))
    account = tuple(raw("orders") + [f"visitor/{p}" for p in range(s.partitions)])
    return visitor, account


def create_app(s: Settings, raw_partitions: dict[str, int]) -> faust.App:
    """Build the app for settings `s` and the partition counts of the raw input topics."""
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.app_id,
        broker=s.kafka_url,
        store=s.table_store,
        autodiscover=False,
        datadir=str(Path(s.data_dir) / "faust"),
        processing_guarantee="at_least_once",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        env_prefix="REFSTREAM_FAUST_",  # so unprefixed variables like WEB_PORT do not override ours
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.broker_session_timeout_s / 3),
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        producer_max_batch_size=s.producer_max_batch_bytes,
        stream_recovery_delay=0.5,
        web_enabled=True,
        web_bind=s.web_bind,
        web_host=s.web_bind,
        web_port=s.web_port,
        logging_config=None,
    )
    metrics = Metrics()
    topics = make_topics(app, s)
    visitors = app.Table("visitors", partitions=s.partitions, key_type=bytes, value_type=bytes)
    accounts = app.Table("accounts", partitions=s.partitions, key_type=bytes, value_type=bytes)
    directory = PromoterDirectory(s.pii_salt.encode())
    exclusions = ExclusionDirectory()
    signals = SignalStore(s.redis_url, s.redis_namespace,
                          on_failure=lambda op: metrics.redis_failures.labels(op).inc())

    router = Router(s, topics, metrics, signals)
    visitor_sources, account_sources = join_sources(s, raw_partitions)
    visitor_join = VisitorJoin(s, visitors, topics, metrics, visitor_sources)
    account_join = AccountJoin(s, accounts, topics, metrics, account_sources, directory.as_of,
                               exclusions.owner, signals)
    sink = SinkStep(s, metrics)
    app.refstream = {"metrics": metrics, "directory": directory, "sink": sink}  # for tests and bench

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        visitor_join.forget_assignment()
        account_join.forget_assignment()

    @app.task
    async def load_reference() -> None:
        await follow_reference(s, directory, exclusions)

    @app.agent(topics.raw_events)
    async def route(stream: Any) -> None:
        async for events in stream.take_events(s.router_batch, within=s.router_flush_s):
            await router.route(events)

    @app.agent(topics.visitor_join)
    async def join_visitors(stream: Any) -> None:
        async for event in stream.events():
            await visitor_join.process(event)

    @app.agent(topics.account_join)
    async def join_accounts(stream: Any) -> None:
        await directory.ready.wait()
        async for event in stream.events():
            await account_join.process(event)

    @app.agent(topics.reference)
    async def reference(stream: Any) -> None:
        async for events in stream.take_events(1000, within=1.0):
            await sink.write_reference(events, router)

    @app.agent(topics.sink_inputs)
    async def sink_to_clickhouse(stream: Any) -> None:
        async for events in stream.take_events(s.sink_batch, within=s.sink_flush_s):
            await sink.write(events)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "promoters_loaded": directory.ready.is_set(), "promoters": len(directory),
                         "sink": sink.stats()})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """200 once assigned partitions are recovered and reference data is loaded, else 503
        (a readiness probe: no traffic until the worker can decide)."""
        recovered = app.tables.recovery.completed.is_set() and not app.in_recovery and not app.rebalancing
        ok = recovered and directory.ready.is_set()
        return web.json({"ready": ok, "recovered": recovered, "reference_loaded": directory.ready.is_set()},
                        status=200 if ok else 503)

    @app.page("/counts")
    async def counts(web: Any, request: Any) -> Any:
        return web.json(await sink.counts())

    register_web(app, sink, s)  # stats API (/api/*) and dashboard (/dashboard)

    return app
