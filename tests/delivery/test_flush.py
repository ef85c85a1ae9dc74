"""The producer buffer's flush, which every commit waits for, waits for every message."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.transport.producer import ProducerBuffer

from streams.delivery.guarded import FlushingProducerBuffer

SEND_S = 0.3  # slower than Faust's 0.1 s patience


class SlowChannel:
    """Stands in for a topic: publishing a message takes SEND_S."""

    def __init__(self) -> None:
        self.sent = 0

    async def publish_message(self, fut: object, wait: bool = False) -> None:
        await asyncio.sleep(SEND_S)
        self.sent += 1


async def flush_three(buffer_type: type[ProducerBuffer]) -> int:
    buffer = buffer_type()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    await buffer.start()
    channel = SlowChannel()
    try:
        for _ in range(3):
            buffer.put(SimpleNamespace(message=SimpleNamespace(channel=channel)))
        await buffer.flush()
        return channel.sent
    finally:
        await asyncio.sleep(4 * SEND_S)  # let Faust's buffer drain too: it refuses to stop otherwise
        await buffer.stop()


@pytest.mark.parametrize("buffer_type, sent", [
    (ProducerBuffer, 0),  # Faust's: gives up after 0.1 s without a sent message
    (FlushingProducerBuffer, 3),
], ids=["faust", "flushing"])
def test_flush_returns_only_when_the_buffer_is_empty(buffer_type: type[ProducerBuffer], sent: int) -> None:
    assert asyncio.run(flush_three(buffer_type)) == sent
