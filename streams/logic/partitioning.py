"""Key -> partition, the same way Kafka's default partitioner places keyed messages.

Routers and joiners must agree on it: a join's table entry for a key lives in the
partition this returns, and Faust recovers it from the same changelog partition.
"""
from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of `key` among `partitions` (murmur2, positive, modulo; as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
