"""What a replica holds of sequences' KV, and what a sequence of n tokens takes of it.

A full-attention block keeps a sequence's keys for all its n tokens; a block with a window keeps
them for min(n, cap) (`CentConfig.kv_tokens_cap`: the window, a step's tokens and one KV block),
reusing the blocks of keys that left the window, as vLLM's hybrid KV cache manager reserves a
sliding-window layer's slots for its most recent window of tokens only, a full-attention layer's for
all (https://docs.vllm.ai/en/latest/design/hybrid_kv_cache_manager/).
A device (a GPU stage) holding `full` full-attention and `windowed` windowed blocks counts its
KV in blocks of `block_tokens` tokens of all of them, as its paged cache allocates
(`device_worker.kv_cache.PagedKVCache`), so a sequence whose keys fill b such blocks of a
full-attention block takes ceil((full x b + windowed x min(b, cap blocks)) / (full + windowed))
of them (`seq_blocks`): exact on a device of one kind of block; on a mixed one never fewer than
its bytes take, rounded up to a block, and at most one block more (b and cap blocks each round up,
so up to two blocks above the bytes themselves).

Devices hold different mixes (a pipeline stage of Gemma 3's sixth, full-attention, block against
one of five windowed ones), so a replica is one row per kind of device (`KVRoom.rows`), and a set
of sequences fits when it fits every row: the tightest row for a sequence depends on its length.
A model with no window, or a window on every block, has one row: today's single pool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


def seq_blocks(blocks: int, full: int, windowed: int, cap_blocks: int | None) -> int:
    """KV blocks a sequence whose keys fill `blocks` blocks (ceil(n / block_tokens)) takes on a
    device holding `full` full-attention and `windowed` windowed blocks, a windowed block keeping
    `cap_blocks` at most (None: no window)."""
    if cap_blocks is None or not windowed or blocks <= cap_blocks:
        return blocks
    if not full:
        return cap_blocks
    return -(-(full * blocks + windowed * cap_blocks) // (full + windowed))


@dataclass(frozen=True)
class Row:
    """A kind of device of a replica: its full-attention and windowed blocks (reduced by their
    common divisor: only the mix matters) and the KV blocks it holds (the fewest of its kind's)."""

    full: int
    windowed: int
    blocks: int


@dataclass(frozen=True)
class KVRoom:
    """A replica's KV: `rows`, one per kind of device; the scheduler admits against every row."""

    block_tokens: int
    cap: int | None
    """Tokens a windowed block keeps of a sequence (`CentConfig.kv_tokens_cap`); None: no window."""
    rows: tuple[Row, ...]

    @classmethod
    def of(cls, block_tokens: int, cap: int | None, devices) -> KVRoom:
        """From (full, windowed, blocks) of every device (or GPU stage): one row a mix, its fewest
        blocks. A model of one kind of block gets one row, whatever the devices."""
        rows: dict[tuple[int, int], int] = {}
        for full, windowed, blocks in devices:
            if cap is None or not windowed:
                full, windowed = 1, 0
            elif not full:
                windowed = 1
            else:
                g = math.gcd(full, windowed)
                full, windowed = full // g, windowed // g
            rows[full, windowed] = min(blocks, rows.get((full, windowed), blocks))
        return cls(block_tokens, cap, tuple(Row(f, w, b) for (f, w), b in sorted(rows.items(), reverse=True)))

    @classmethod
    def uniform(cls, blocks: int, block_tokens: int = 16, cap: int | None = None) -> KVRoom:
        """One kind of device holding `blocks`: every block windowed (keeping `cap` tokens) or none."""
        return cls(block_tokens, cap, (Row(0 if cap else 1, 1 if cap else 0, blocks),))

    def capped(self, override: int | None) -> KVRoom:
        """At most `override` blocks a device (scheduler.num_kv_blocks_override); None: as held."""
        if override is None:
            return self
        return replace(self, rows=tuple(replace(r, blocks=min(r.blocks, override)) for r in self.rows))

    @property
    def is_hybrid(self) -> bool:
        """Whether the model has full-attention blocks and windowed ones: a sequence's blocks then
        depend on the device (a model of one kind has one row, as before this rule)."""
        return len(self.rows) > 1 or bool(self.rows[0].full and self.rows[0].windowed)

    @property
    def num_blocks(self) -> int:
        """The fewest blocks a device of the replica holds: the sequences of a whole model's KV it admits."""
        return min(r.blocks for r in self.rows)

    @property
    def cap_blocks(self) -> int | None:
        return None if self.cap is None else -(-self.cap // self.block_tokens)

    def need(self, num_tokens: int) -> tuple[int, ...]:
        """Blocks a sequence of `num_tokens` tokens takes on each row's devices."""
        return self.need_blocks(-(-num_tokens // self.block_tokens))

    def need_blocks(self, blocks: int) -> tuple[int, ...]:
        """`need` of a sequence whose keys fill `blocks` blocks of a full-attention block."""
        cap = self.cap_blocks
        return tuple(seq_blocks(blocks, r.full, r.windowed, cap) for r in self.rows)

    def tightest_row(self, num_tokens: int) -> int:
        """The index of the row sequences of `num_tokens` tokens fill the most (whatever their count).
        The rows keep their order when `capped`: a refusal names the same devices' own count."""
        need = self.need(num_tokens)
        return max(range(len(self.rows)), key=lambda k: (need[k] / self.rows[k].blocks if self.rows[k].blocks
                                                         else math.inf, need[k]))

    def tightest(self, num_tokens: int, count: int = 1) -> tuple[int, int]:
        """(blocks `count` sequences of `num_tokens` take, blocks held) on the row they fill the most:
        they fit a replica alone iff the first is at most the second (`fits`)."""
        k = self.tightest_row(num_tokens)
        return count * self.need(num_tokens)[k], self.rows[k].blocks

    def fits(self, num_tokens: int, count: int = 1) -> bool:
        """Whether `count` sequences of `num_tokens` tokens fit an empty replica."""
        need, have = self.tightest(num_tokens, count)
        return need <= have

    def most_sequences(self, num_tokens: int) -> int:
        """Sequences of `num_tokens` tokens a replica holds at once."""
        return min(r.blocks // n for n, r in zip(self.need(num_tokens), self.rows))

    def longest(self, count: int) -> int | None:
        """The longest sequence, in tokens (block-aligned), of which `count` fit a replica at once; None:
        any length (every block windowed and the windows fit)."""
        cap, best = self.cap_blocks, None
        for r in self.rows:
            q = r.blocks // count  # blocks one sequence may take on this row
            if cap is None or not r.windowed or q < cap:
                b = q
            elif not r.full:
                continue
            else:
                b = ((r.full + r.windowed) * q - r.windowed * cap) // r.full
            best = b if best is None else min(best, b)
        return None if best is None else best * self.block_tokens
