"""Key -> partition, the same way Kafka's default partitioner places keyed messages.

Routers and joins must agree on it: a join's table entry for a key lives in the
partition this returns, and Faust recovers it from the same changelog partition.
"""
from __future__ import annotations

import struct

_SEED, _M = 0x9747B28C, 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int:
    the Java client's and aiokafka's default partitioner hash (a test compares them)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length - length % 4
    for (k,) in struct.iter_unpack("<I", data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail >= 3:
        h ^= data[body + 2] << 16
    if tail >= 2:
        h ^= data[body + 1] << 8
    if tail >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of `key` among `partitions` (murmur2, positive, modulo; as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
