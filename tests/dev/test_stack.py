"""The local stack: port helpers and topic checks (end to end: tests/integration/test_stack.py)."""
from __future__ import annotations

import socket

import pytest

from streams.adapters.topics import ensure_topics_sync
from streams.config import Settings
from streams.dev import stack as local_stack


def test_free_port_is_bindable() -> None:
    port = local_stack.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_port_times_out_with_clear_message() -> None:
    port = local_stack.free_port()
    with pytest.raises(TimeoutError, match=rf"127\.0\.0\.1:{port} within 0\.2 s"):
        local_stack.wait_port("127.0.0.1", port, timeout=0.2)


def test_wait_port_returns_once_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        local_stack.wait_port("127.0.0.1", s.getsockname()[1], timeout=2)


def test_tansu_binary_is_executable() -> None:
    assert local_stack.tansu_binary().stat().st_mode & 0o111


def test_probes_tell_services_apart() -> None:
    with socket.socket() as s:  # listens but never speaks Kafka or Redis
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not local_stack.kafka_answers("127.0.0.1", port, timeout=0.2)
        assert not local_stack.redis_answers("127.0.0.1", port, timeout=0.2)


def test_ensure_topics_refuses_what_kafka_refuses() -> None:
    # Tansu would accept these; production Kafka would not. No broker is contacted.
    with pytest.raises(ValueError, match="illegal"):
        ensure_topics_sync(Settings(), ["no spaces"], 1)
    with pytest.raises(ValueError, match="at least 1"):
        ensure_topics_sync(Settings(), ["ok"], 0)
