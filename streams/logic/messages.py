"""What pure code needs to know of a Kafka message: where it came from and its bytes."""
from __future__ import annotations

from typing import Protocol


class Message(Protocol):
    """A Kafka message as a consumer hands it over (aiokafka's ConsumerRecord, Faust's Message)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
