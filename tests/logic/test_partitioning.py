"""Our murmur2 is Kafka's: the same partition as aiokafka's (and the Java client's) partitioner."""
from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.logic.partitioning import murmur2, partition_for

# Known values of the Java client's Utils.murmur2 (its unit test)
KNOWN = [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
         (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
         (b"abc", 479470107)]


@pytest.mark.parametrize("key,expected", KNOWN, ids=[k.decode() for k, _ in KNOWN])
def test_known_values(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=64))
def test_same_partition_as_aiokafka(key: bytes, partitions: int) -> None:
    assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key)  # aiokafka returns it unsigned
    assert partition_for(key, partitions) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions
