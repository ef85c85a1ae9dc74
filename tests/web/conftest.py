"""Fixtures of the web tests: named, migrated databases on the module's chdb engine."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sinks.clickhouse import connect
from sinks.migrations import migrate


@pytest.fixture(scope="module")
def database(engine: tuple[str, Any]) -> Iterator[Callable[[str], Any]]:
    """`database(name)`: a client on a fresh, migrated database of that name; all closed at the
    module's end (chdb hosts one engine per process: the next module opens its own)."""
    dsn, admin = engine
    clients: list[Any] = []

    def open_database(name: str) -> Any:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
        admin.command(f"CREATE DATABASE {name}")
        client = connect(dsn, database=name)
        clients.append(client)
        migrate(client)
        return client

    yield open_database
    for client in clients:
        client.close()
