"""A device's paged KV cache: blocks on crossings, exact capacity, frees at once."""
from __future__ import annotations

import pytest

from device_worker.kv_cache import KVCacheFull, PagedKVCache


def test_blocks_are_taken_when_a_sequence_crosses_into_one():
    kv = PagedKVCache(num_blocks=10, block_tokens=16)
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
    kv = PagedKVCache(num_blocks=4, block_tokens=16)
    kv.grow(1, 48)
    with pytest.raises(KVCacheFull, match="sequence 2 needs 2 more KV blocks, 1 free of 4"):
        kv.grow(2, 20)
    assert 2 not in kv.capacity and kv.num_free_blocks == 1
    assert 2 not in kv.block_tables


def test_free_returns_every_block_for_reuse():
    kv = PagedKVCache(num_blocks=4, block_tokens=16)
    kv.grow(1, 64)
    assert kv.num_free_blocks == 0
    assert kv.free(1) == 4
    assert kv.num_free_blocks == 4 and 1 not in kv.capacity
    kv.grow(2, 64)  # the freed blocks, not new ones
    assert sorted(kv.block_tables[2]) == [0, 1, 2, 3]
    assert kv.free(99) == 0


def test_block_tables_cost_about_eight_bytes_a_block():
    """A device holds one block id per 16 tokens of every resident sequence: at 1,008 devices, 126
    sequences of 4,096 tokens, that is 32 million ids, 1.2 GB as lists of Python ints (36 bytes an
    id). Kept as int64 arrays they take about 8 bytes an id (array growth slack aside)."""
    import tracemalloc

    kv = PagedKVCache(num_blocks=(1 << 40) // 64, block_tokens=16)
    seqs, blocks = 64, 512
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(1, blocks + 1):  # every sequence crosses into a block a round, as in a pipeline
            kv.grow_all([(s, 16 * (k - 1) + 1) for s in range(seqs)])
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sum(len(t) for t in kv.block_tables.values()) == seqs * blocks
    assert sorted(kv.block_tables[0])[:3] == [0, 64, 128]  # ids as before: round-robin from the unused ones
    assert used / (seqs * blocks) < 12, f"{used / (seqs * blocks):.1f} bytes a block id"
    assert kv.free(0) == blocks and kv.num_free_blocks == kv.num_blocks - (seqs - 1) * blocks
