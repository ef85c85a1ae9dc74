"""Every worker's copy of the reference topics (`promoters`, `exclusions`, `fx_rates`), read from the
beginning without a consumer group, like a global table. Invalid messages are skipped
here; the sink's `reference` agent dead-letters them once for the whole group."""
from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import Exclusion, FxRate, Promoter
from streams.adapters.kafka import client_kwargs
from streams.config import Settings
from streams.logic.fx import FxDirectory
from streams.logic.privacy import Pseudonyms
from streams.logic.reference import ExclusionDirectory, PromoterDirectory, ReferenceReader
from streams.topology import REFERENCE_TOPICS

log = logging.getLogger(__name__)


def reference_reader(settings: Settings) -> ReferenceReader:
    """The reference reader of a deployment (its salt, hashed ids and limits)."""
    return ReferenceReader(Pseudonyms(settings.pii_salt.encode(), settings.id_fields_to_hash),
                           int(settings.max_future_s * 1000), settings.max_message_bytes)


async def follow_reference(settings: Settings, directory: PromoterDirectory,
                           exclusions: ExclusionDirectory, rates: FxDirectory) -> None:
    """Load the promoters, exclusions and fx_rates topics from the start, set `directory.ready`
    (once all three caught up), then keep following them."""
    names = {settings.topic(name): name for name in REFERENCE_TOPICS}
    topics = tuple(names)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None,
        **client_kwargs(settings),
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata, so partitions_for_topic knows the topic
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps) if tps else {}
        reader = reference_reader(settings)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            now = int(time.time() * 1000)
            for records in batches.values():
                for rec in records:
                    event = reader.read(names[rec.topic], rec.value, now)
                    if isinstance(event, Promoter):
                        directory.add(event)  # the directory is made with salt None: hashed here
                    elif isinstance(event, Exclusion):
                        exclusions.add(event)
                    elif isinstance(event, FxRate):
                        rates.add(event)
            if not directory.ready.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    log.info("reference data loaded", extra={"tracking_codes": len(directory),
                                                              "exclusions": len(exclusions),
                                                              "fx_currencies": len(rates)})
                    directory.ready.set()
    finally:
        await consumer.stop()
