"""A device's paged KV cache: blocks on crossings, exact capacity, frees at once."""
from __future__ import annotations

import pytest

from device_worker.kv_cache import KVCacheFull, PagedKVCache


def test_blocks_are_taken_when_a_sequence_crosses_into_one():
    kv = PagedKVCache(capacity_bytes=10 * 16 * 4, bytes_per_token=4, block_tokens=16)
    assert kv.num_blocks == 10
    kv.grow(1, 1)
    assert len(kv.block_tables[1]) == 1 and kv.capacity[1] == 16
    kv.grow(1, 16)  # still the first block
    assert len(kv.block_tables[1]) == 1
    kv.grow(1, 17)
    assert len(kv.block_tables[1]) == 2 and kv.capacity[1] == 32
    kv.grow(1, 5)  # never shrinks
    assert len(kv.block_tables[1]) == 2
    kv.grow(2, 100)  # a whole prompt at once
    assert len(kv.block_tables[2]) == 7 and kv.num_free_blocks == 1
    assert kv.usage == pytest.approx(0.9)


def test_a_full_cache_names_the_sequence_and_changes_nothing():
    kv = PagedKVCache(capacity_bytes=4 * 16 * 4, bytes_per_token=4, block_tokens=16)
    kv.grow(1, 48)
    with pytest.raises(KVCacheFull, match="sequence 2 needs 2 more KV blocks, 1 free of 4"):
        kv.grow(2, 20)
    assert 2 not in kv.capacity and kv.num_free_blocks == 1
    assert 2 not in kv.block_tables


def test_free_returns_every_block_for_reuse():
    kv = PagedKVCache(capacity_bytes=4 * 16 * 4, bytes_per_token=4, block_tokens=16)
    kv.grow(1, 64)
    assert kv.num_free_blocks == 0
    assert kv.free(1) == 4
    assert kv.num_free_blocks == 4 and 1 not in kv.capacity
    kv.grow(2, 64)  # the freed blocks, not new ones
    assert sorted(kv.block_tables[2]) == [0, 1, 2, 3]
    assert kv.free(99) == 0
