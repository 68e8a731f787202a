"""A device's paged KV cache: fixed-size blocks, a block table per sequence.

Capacity is what the device's DRAM holds after its weight shard (CENT keeps
the KV cache in the same banks as the weights). Accounting is exact in both
numerics modes; with full numerics the values themselves live in
`cent_serve.sharding.ShardKV` arrays keyed by sequence.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

_BLOCK_IDS = "q"
"""Block ids are kept in arrays of 8-byte ints, not lists of Python ints (36 bytes an id): a
device holds one id per 16 tokens of every sequence resident on it, so a 1,008-device replica
of 126 sequences at 4,096 tokens holds 32 million of them (1.2 GB as lists, 0.26 GB as arrays)."""


def _ids() -> array:
    return array(_BLOCK_IDS)


class KVCacheFull(RuntimeError):
    """Raised when a sequence needs a block and the device has none free."""


@dataclass
class PagedKVCache:
    """Block allocator for one device.

    `num_blocks`: the blocks of `block_tokens` tokens of every layer resident on the device (K and V of the
    KV heads it holds) that fit beside its weight shard, counted by `cent_serve.timing.mapping.
    device_num_kv_blocks`, the count the scheduler and the preflight read.
    """

    num_blocks: int
    block_tokens: int = 16
    block_tables: dict[int, array] = field(default_factory=dict)
    """Each sequence's block ids, in order (arrays of int64: `_BLOCK_IDS`)."""
    capacity: dict[int, int] = field(default_factory=dict)
    """Tokens each sequence's blocks hold (len(block table) x block_tokens): the fast check
    callers make before `grow`."""
    _free: array = field(default_factory=_ids)
    """Blocks handed back; never-used blocks come from `_next_unused` (millions of them on a
    16 GiB device, so they are not listed up front)."""

    def __post_init__(self) -> None:
        assert self.num_blocks >= 0 and self.block_tokens > 0, (self.num_blocks, self.block_tokens)
        self._next_unused = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + self.num_blocks - self._next_unused

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (vLLM's kv_cache_usage_perc, as a fraction)."""
        return 0.0 if self.num_blocks == 0 else 1.0 - self.num_free_blocks / self.num_blocks

    def grow(self, seq_id: int, new_total_tokens: int) -> None:
        """Make room for `new_total_tokens` tokens of `seq_id` (allocating on first use)."""
        if new_total_tokens <= self.capacity.get(seq_id, 0):
            return
        table = self.block_tables.get(seq_id)
        if table is None:
            table = _ids()
        need = -(-new_total_tokens // self.block_tokens) - len(table)
        reused = min(need, len(self._free))
        if need - reused > self.num_blocks - self._next_unused:
            raise KVCacheFull(f"sequence {seq_id} needs {need} more KV blocks, {self.num_free_blocks} free "
                              f"of {self.num_blocks}")
        self.block_tables[seq_id] = table
        if reused:
            table.extend(self._free[-reused:][::-1])  # the most recently freed first, as a stack
            del self._free[-reused:]
        fresh = need - reused
        if fresh:
            table.extend(range(self._next_unused, self._next_unused + fresh))
            self._next_unused += fresh
        self.capacity[seq_id] = len(table) * self.block_tokens

    def grow_all(self, wanted: list[tuple[int, int]]) -> None:
        """`grow` for each (sequence, tokens) in turn; the common case (one more block, from the
        never-used ones) inline, as a round calls this for every sequence crossing a block."""
        bt, tables, capacity, free = self.block_tokens, self.block_tables, self.capacity, self._free
        get, num_blocks = tables.get, self.num_blocks
        for seq_id, tokens in wanted:
            table = get(seq_id)
            blocks = -(-tokens // bt)
            if table is None or blocks != len(table) + 1:
                self.grow(seq_id, tokens)
            elif free:
                table.append(free.pop())
                capacity[seq_id] = blocks * bt
            elif self._next_unused < num_blocks:
                table.append(self._next_unused)
                self._next_unused += 1
                capacity[seq_id] = blocks * bt
            else:
                self.grow(seq_id, tokens)  # raises KVCacheFull

    def free(self, seq_id: int) -> int:
        """Release every block of `seq_id`; returns how many were freed."""
        table = self.block_tables.pop(seq_id, None)
        self.capacity.pop(seq_id, None)
        if table is None:
            return 0
        self._free.extend(reversed(table))
        return len(table)
