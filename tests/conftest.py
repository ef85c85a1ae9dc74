"""Fixtures for integration tests: one local stack (Tansu + Redis) per test session."""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.signals import drop_namespace
from streams.config import PREFIX, Settings
from streams.dev import stack as local_stack
from tests.support.pipeline import NAMESPACES

# When we borrow the machine's Redis, use a db a demo on db 0 does not touch.
SHARED_REDIS_DB = 15


@dataclass
class StackHandle:
    """Where the session's stack answers, and env/settings for workers pointing at it."""

    kafka_url: str
    redis_url: str
    data_dir: Path
    base: Settings

    def settings_env(self, **overrides: Any) -> dict[str, str]:
        """REFSTREAM_* variables for a worker subprocess; `overrides` use field names."""
        env = {
            "KAFKA_URL": self.kafka_url,
            "REDIS_URL": self.redis_url,
            "DATA_DIR": str(self.data_dir),
            "BROKER_SESSION_TIMEOUT_S": "6",  # Faust's group join is slow on Tansu otherwise
            "WEB_BIND": "127.0.0.1",
            "WEB_PORT": str(local_stack.free_port()),
        }
        env.update({k.upper().removeprefix(PREFIX): str(v) for k, v in overrides.items()})
        return {PREFIX + k: v for k, v in env.items()}

    def settings(self, **overrides: Any) -> Settings:
        """In-process Settings for this stack (same values as `settings_env`)."""
        return Settings.from_env(self.settings_env(**overrides))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A dedicated Tansu on a free port (never 9092) and a Redis; stopped at session end."""
    data_dir = tmp_path_factory.mktemp("stack")
    shared = local_stack.redis_answers("127.0.0.1", 6379)
    base = Settings(
        data_dir=str(data_dir),
        redis_url=f"redis://127.0.0.1:6379/{SHARED_REDIS_DB if shared else 0}",
    )
    started = local_stack.up(
        base,
        kafka_port=local_stack.free_port(),
        redis_port=None if shared else local_stack.free_port(),
    )
    base = replace(base, kafka_url=started.kafka_url, redis_url=started.redis_url)
    try:
        yield StackHandle(started.kafka_url, started.redis_url, data_dir, base)
    finally:
        for url, namespace in NAMESPACES:  # a shared Redis keeps no test's counters and ledgers
            if url == started.redis_url:  # (a test's own Redis is gone by now)
                drop_namespace(url, namespace)
        local_stack.down(base)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A chdb engine for one test module: (dsn, admin client). chdb hosts one data directory
    per process, so a module closes its clients at its end before the next module opens its own."""
    from sinks.clickhouse import connect

    dsn = f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}"
    admin = connect(dsn)
    yield dsn, admin
    admin.close()


@pytest.fixture
def empty_db(engine: tuple[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client on a fresh, empty database of the module's chdb engine, named after the test."""
    from sinks.clickhouse import connect

    dsn, admin = engine
    name = "t_" + re.sub(r"\W", "_", request.node.name)[:60]
    admin.command(f"DROP DATABASE IF EXISTS {name}")
    admin.command(f"CREATE DATABASE {name}")
    client = connect(dsn, database=name)
    yield client
    client.close()


@pytest.fixture
def db(empty_db: Any) -> Any:
    """`empty_db` with refstream's tables and views (the migrations applied)."""
    from sinks.migrations import migrate

    migrate(empty_db)
    return empty_db


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic prefix, so tests sharing the session's broker never see each other."""
    return f"t{uuid.uuid4().hex[:8]}-"
