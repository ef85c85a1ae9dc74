"""Reference data every partition needs: which promoter owns a tracking code, as of when.

Each worker reads the whole (compacted) `promoters` topic from the beginning and keeps
it in memory, like a global table: lookups are keyed by tracking code, not by the join
keys, and reference data is small. Invalid messages are skipped here; the `reference`
agent dead-letters them once for the whole group.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import Promoter
from schemas.validate import decode
from streams.config import Settings
from streams.join.conversions import PromoterRef

log = logging.getLogger(__name__)


class PromoterDirectory:
    """tracking_code -> promoter versions sorted by event time."""

    def __init__(self) -> None:
        self._versions: dict[str, list[tuple[int, str, Promoter]]] = {}
        self.ready = asyncio.Event()

    def add(self, p: Promoter) -> None:
        versions = self._versions.setdefault(p.tracking_code, [])
        item = (p.ts, p.event_id, p)
        if not any(v[1] == p.event_id for v in versions):
            bisect.insort(versions, item, key=lambda v: (v[0], v[1]))

    def as_of(self, tracking_code: str, ts: int) -> PromoterRef | None:
        """The promoter owning `tracking_code` at event time `ts`, or None if nobody does.

        Before the first version we know, the first version counts: a compacted topic keeps
        only the latest record per tracking code, so older versions may be gone.
        """
        versions = self._versions.get(tracking_code)
        if not versions:
            return None
        i = bisect.bisect_right(versions, ts, key=lambda v: v[0])
        return PromoterRef(versions[max(i, 1) - 1][2].promoter_id)

    def __len__(self) -> int:
        return len(self._versions)


async def follow_promoters(settings: Settings, directory: PromoterDirectory) -> None:
    """Load the promoters topic from the start, set `ready`, then keep following it."""
    topic = settings.topic("promoters")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata, so partitions_for_topic knows the topic
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps) if tps else {}
        max_future = int(settings.max_future_s * 1000)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            now = int(time.time() * 1000)
            for records in batches.values():
                for rec in records:
                    if rec.value is None:
                        continue  # a compaction tombstone: nothing to add
                    event = decode("promoters", rec.value, now, max_future)
                    if isinstance(event, Promoter):
                        directory.add(event)
            if not directory.ready.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    log.info("promoters loaded", extra={"tracking_codes": len(directory)})
                    directory.ready.set()
    finally:
        await consumer.stop()
