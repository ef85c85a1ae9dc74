"""The refstream Faust app: models -> topics -> tables -> agents.

raw clicks, signups ──route──> visitor-join ──join_visitors──> account-join ─┐
raw orders ───────────route──────────────────────────────────> account-join ─┴─join_accounts──> promoter-join
promoter-join ──join_promoters──> conversions (decisions without a promoter: join_accounts ──> conversions)
visitor-join, account-join, conversions, late-events, dead-letters ──sink──> ClickHouse
promoters, exclusions, fx_rates, reviews ──reference──> ClickHouse (+ promoters, exclusions and
fx_rates in every worker's in-memory directories; reviews are applied in ClickHouse, in conversions_current)

Roles (REFSTREAM_ROLE): `stream` runs route and the joins, `sink` the ClickHouse agents,
`all` both (docs/operations.md, "Roles").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types import TopicT

from streams.adapters.kafka import ssl_context
from streams.adapters.reference_feed import follow_reference
from streams.adapters.signals import SignalStore
from streams.agents.alerts import register_alerts
from streams.agents.joins import AccountJoin, JoinAgent, PromoterJoin, VisitorJoin, by_partition
from streams.agents.outputs import DeadLetters
from streams.agents.router import Router
from streams.agents.sink import SinkStep
from streams.config import Settings
from streams.delivery import GuardedApp, finished
from streams.delivery.changelog import BatchedTable
from streams.logic.fx import FxDirectory
from streams.logic.reference import ExclusionDirectory, PromoterDirectory
from streams.metrics import Metrics, consumer_positions, observe_lag
from streams.topology import (
    ACCOUNT_JOIN,
    CONVERSIONS,
    DEAD_LETTERS,
    LATE_EVENTS,
    PROMOTER_JOIN,
    RAW_TOPICS,
    REVIEWS,
    SINK_INPUTS,
    STORED_INPUTS,
    VISITOR_JOIN,
    Topology,
)
from streams.web.routes import register as register_web

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"value_serializer": "raw", "key_serializer": "raw"}
# Each agent loop below drops its event(s) (`del`) before waiting for the next: on shutdown
# and rebalance Faust drops queued messages and waits for every unacked one still referenced,
# and a message another agent of the worker never took stays unacked, so a loop variable
# holding it would stall the shutdown or rebalance (it is simply redelivered later).


@dataclass
class Topics:
    """The app's Faust topics, named as `streams.topology` says."""

    raw_events: TopicT  # clicks, signups, orders
    stored_inputs: TopicT  # promoters, exclusions, fx_rates, reviews: validated, then straight to ClickHouse
    reviews: TopicT  # where the review queue publishes decisions (read through `stored_inputs`)
    visitor_join: TopicT
    account_join: TopicT
    promoter_join: TopicT  # the account join's decisions, by promoter_id, to the promoter stage
    conversions: TopicT
    late_events: TopicT
    dead_letters: TopicT
    sink_inputs: TopicT  # everything the ClickHouse sink stores


def make_topics(app: RefstreamApp, s: Settings) -> Topics:
    internal: dict[str, Any] = {"partitions": s.partitions, "internal": True, **RAW}
    t = Topology(s)
    return Topics(
        raw_events=app.topic(*t.topics(RAW_TOPICS), **RAW),
        stored_inputs=app.topic(*t.topics(STORED_INPUTS), **RAW),
        reviews=app.topic(t.topic(REVIEWS), **RAW),
        visitor_join=app.topic(t.topic(VISITOR_JOIN), **internal),
        account_join=app.topic(t.topic(ACCOUNT_JOIN), **internal),
        promoter_join=app.topic(t.topic(PROMOTER_JOIN), **internal),
        conversions=app.topic(t.topic(CONVERSIONS), **RAW),
        late_events=app.topic(t.topic(LATE_EVENTS), **RAW),
        dead_letters=app.topic(t.topic(DEAD_LETTERS), **RAW),
        sink_inputs=app.topic(*t.topics(SINK_INPUTS), **RAW),
    )


class RefstreamApp(GuardedApp):
    """The guarded Faust app, holding the parts the CLI, tests and bench look at."""

    metrics: Metrics
    directory: PromoterDirectory | None = None  # stream and all roles
    rates: FxDirectory | None = None  # stream and all roles: exchange rates as of a time
    sink: SinkStep | None = None  # sink and all roles


def create_app(s: Settings, raw_partitions: dict[str, int]) -> RefstreamApp:
    """Build the app of role `s.role` for settings `s` and the partition counts of the raw input topics.

    `all` runs everything; `stream` the router, the joins and the reference directories (no
    ClickHouse); `sink` the ClickHouse sink, the reference and review writer, spike alerts, `/counts`,
    the stats API and dashboard, in a consumer group of its own (`Settings.group_id`).
    """
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    app = RefstreamApp(
        s.group_id,
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
        # commit on the 1 s timer: a count-triggered commit stalls the fetch loop on a producer flush
        broker_commit_every=100_000,
        broker_commit_interval=1.0,
        producer_max_batch_size=s.producer_max_batch_bytes,
        producer_linger=s.producer_linger_ms / 1000,
        stream_recovery_delay=0.5,
        web_enabled=True,
        web_bind=s.web_bind,
        web_host=s.web_bind,
        web_port=s.web_port,
        # Faust's own pages answer without the API token: /router and /table (table keys and
        # data, cluster URLs), the stats at / with /assignment, /graph, /performance. Off; /
        # then serves Faust's production index, {"status": "OK"}. Routing stays in one worker.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        logging_config=None,
        **broker_credentials(s),  # TLS and SASL of the app's Kafka clients
    )
    metrics = Metrics()
    topics = make_topics(app, s)
    directory, rates = (_stream_agents(app, s, topics, metrics, raw_partitions) if s.role in ("all", "stream")
                        else (None, None))
    sink = _sink_agents(app, s, topics, metrics) if s.role in ("all", "sink") else None
    app.count_readers()  # commits pass only what every agent reading a topic finished
    app.on_reread = lambda tp: metrics.rereads.labels(tp.topic).inc()
    app.metrics, app.directory, app.rates, app.sink = metrics, directory, rates, sink
    _pages(app, s, metrics, directory, sink)
    return app


def broker_credentials(s: Settings) -> dict[str, Any]:
    """The Faust app's `broker_credentials` for TLS and SASL (none for PLAINTEXT). Faust 0.15.3
    turns them into the same aiokafka arguments as `client_kwargs` (`credentials_to_aiokafka_auth`)
    for its consumer, its producer and the topic creation it does with the producer's client;
    SCRAM mechanisms pass through unchanged. SASL_SSL or SASL_PLAINTEXT: with or without a context."""
    protocol = s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    if protocol == "SSL":
        return {"broker_credentials": SSLCredentials(ssl_context(s))}
    return {"broker_credentials": SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                                  ssl_context=ssl_context(s), mechanism=s.kafka_sasl_mechanism)}


def _stream_agents(app: RefstreamApp, s: Settings, topics: Topics, metrics: Metrics,
                   raw_partitions: dict[str, int]) -> tuple[PromoterDirectory, FxDirectory]:
    """Router, the joins and the promoter stage with their tables, and the reference
    directories the account join (promoters, exclusions) and the promoter stage (rates) read."""
    def table(name: str) -> BatchedTable:
        return app.batched(app.Table(name, partitions=s.partitions, key_type=bytes, value_type=bytes))

    visitors, accounts = table("visitors"), table("accounts")
    books = table("promoter-books")  # the promoter stage's `pricing.PromoterBook`s
    directory = PromoterDirectory(None)  # follow_reference hashes the promoters' IPs on arrival
    exclusions = ExclusionDirectory()
    rates = FxDirectory()  # the promoter stage converts order amounts into the program currency
    signals = SignalStore(s.redis_url, s.redis_namespace,
                          on_failure=lambda op: metrics.redis_failures.labels(op).inc())

    raw_topics = frozenset(Topology(s).topics(RAW_TOPICS))
    router = Router(s, topics, metrics, DeadLetters(topics.dead_letters, metrics, s.pii_salt.encode()), signals,
                    positions=lambda: consumer_positions(app.consumer, raw_topics))  # for its idleness decision
    visitor_sources, account_sources, promoter_sources = Topology(s).join_sources(raw_partitions)
    visitor_join = VisitorJoin(s, visitors, topics, metrics, visitor_sources)
    account_join = AccountJoin(s, accounts, topics, metrics, account_sources, directory.as_of,
                               exclusions.owner, signals, directory.by_coupon, directory.parent_of, rates.rate)
    promoter_join = PromoterJoin(s, books, topics, metrics, promoter_sources, rates=rates.rate)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # a union of callables mypy cannot match
    def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        visitor_join.forget_assignment()
        account_join.forget_assignment()
        promoter_join.forget_assignment()

    @app.task
    async def load_reference() -> None:
        await follow_reference(s, directory, exclusions, rates)

    @app.timer(1.0)
    async def heartbeat() -> None:
        await router.heartbeat()  # the joins' event time moves on when input pauses

    done = finished(app)

    # route: the raw topics a fetched batch at a time, not one Faust event per message
    app.read_in_bulk(topics.raw_events, router.route, max_messages=s.router_batch)

    async def take_steps(join: JoinAgent, stream: Any) -> None:
        """What arrived (up to JOIN_BATCH messages), one step per partition."""
        async for events in stream.take_events(s.join_batch, within=s.join_wait_s):
            for step in by_partition(events):
                await join.process(step)
            done(events)
            del events

    @app.agent(topics.visitor_join)
    async def join_visitors(stream: Any) -> None:
        await take_steps(visitor_join, stream)

    @app.agent(topics.account_join)
    async def join_accounts(stream: Any) -> None:
        await directory.ready.wait()
        await take_steps(account_join, stream)

    @app.agent(topics.promoter_join)
    async def join_promoters(stream: Any) -> None:
        # after a restart its backlog would otherwise be priced before the rates are loaded
        # (held as fx_rate_missing, then re-priced): wait for the reference data like the account join
        await directory.ready.wait()
        await take_steps(promoter_join, stream)

    return directory, rates


def _sink_agents(app: RefstreamApp, s: Settings, topics: Topics, metrics: Metrics) -> SinkStep:
    """The ClickHouse sink, the writer of reference data and reviews, spike alerts and the
    pages that read ClickHouse."""
    sink = SinkStep(s, metrics, stopping=lambda: app.should_stop)
    dead_letters = DeadLetters(topics.dead_letters, metrics, s.pii_salt.encode())

    @app.task
    async def connect_clickhouse() -> None:
        await sink.connect()  # migrations before the first batch; /ready waits for it

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # as above
    def sink_stopped(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        sink.on_shutdown()

    done = finished(app)

    @app.agent(topics.stored_inputs)
    async def reference(stream: Any) -> None:
        async for events in stream.take_events(1000, within=1.0):
            if await sink.write_reference(events, dead_letters):
                done(events)
            del events

    @app.agent(topics.sink_inputs)
    async def sink_to_clickhouse(stream: Any) -> None:
        async for events in stream.take_events(s.sink_batch, within=s.sink_flush_s):
            if await sink.write(events):  # False: stopped during a ClickHouse outage, left for the next run
                done(events)
            del events

    @app.page("/counts")
    async def counts(web: Any, request: Any) -> Any:
        return web.json(await sink.counts())

    # stats API (/api/*), review queue and dashboard (/dashboard); decisions go to the reviews topic
    register_web(app, sink, s, publish=lambda key, value: topics.reviews.send(key=key, value=value))
    register_alerts(app, sink, s, metrics)  # spike alerts: leader-only poll of ClickHouse counts
    return sink


def readiness(app: RefstreamApp, directory: PromoterDirectory | None, sink: SinkStep | None) -> dict[str, bool]:
    """What `/ready` waits for: the assigned partitions recovered (no rebalance under way), and
    by role the reference data loaded (joins) and ClickHouse opened and migrated (sink)."""
    tables: Any = app.tables  # Faust's TableManager type does not declare its recovery
    checks = {"recovered": tables.recovery.completed.is_set() and not app.in_recovery
              and not app.rebalancing}
    if directory is not None:
        checks["reference_loaded"] = directory.ready.is_set()
    if sink is not None:
        checks["clickhouse_connected"] = sink.writer is not None
    return checks


def _pages(app: RefstreamApp, s: Settings, metrics: Metrics, directory: PromoterDirectory | None,
           sink: SinkStep | None) -> None:
    """`/metrics`, `/health` (liveness: answers while the event loop runs) and `/ready`."""
    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # lag of what the agents read (input and join topics), not of the tables' changelogs
        observe_lag(metrics, app.consumer, app.ledger.readers.keys())
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body: dict[str, Any] = {"ok": True, "role": s.role}
        if directory is not None:
            body.update(promoters_loaded=directory.ready.is_set(), promoters=len(directory),
                        fx_currencies=len(app.rates or ()))
        if sink is not None:
            body["sink"] = sink.stats()
        return web.json(body)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """200 when the worker can do its role's work, else 503 (a readiness probe)."""
        checks = readiness(app, directory, sink)
        ok = all(checks.values())
        return web.json({"ready": ok, "role": s.role, **checks}, status=200 if ok else 503)
