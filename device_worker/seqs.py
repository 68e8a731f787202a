"""Where each sequence stands on a device: its next position, kept across rounds.

A plan names a sequence's first position once, when it is new (`RoundPlan.new_seqs`); after that
its position moves on by the tokens each round gives it, until the plan that finishes it. The
positions of the current layout's sequences are rows of one array the device's compiled round
updates in place (`cent_serve.timing.clock.device_round`): `starts` (the next token's position) and
`held` (the tokens the sequence's KV blocks hold), and a third row where the round lists the
sequences that cross into a new KV block. The others wait in a dict; `update` moves them in
and out when the layout changes, so while it holds a round costs no Python here.
"""
from __future__ import annotations

import numpy as np

from cent_serve.messages import EMPTY_LAYOUT, RoundPlan


FOREVER = 2**62
"""`held` of a sequence whose KV blocks never need to grow again (a sliding window's ring)."""


class SeqTable:
    def __init__(self, block_tokens: int, kv_tokens_cap: int | None = None) -> None:
        self.block_tokens = block_tokens
        self.kv_tokens_cap = kv_tokens_cap
        """A sequence's KV here when every block the device holds is windowed (`CentConfig.kv_tokens_cap`):
        past it, blocks are reused, never added; None: it grows with the sequence."""
        self.pos: dict[int, int] = {}
        """Position of each sequence's next token (tokens its KV cache holds), but for those of the
        current layout, whose positions are in `starts`."""
        self.layout = EMPTY_LAYOUT
        self.state = np.zeros((3, 0), dtype=np.int64)
        """(3, sequences of the layout) int64: each one's next position (the round moves it on), the
        tokens its KV blocks hold (0 for a new sequence), and, from the last round, the indexes of
        the sequences it took into a new KV block (the first as many as the round says crossed)."""

    def keep_in(self, state: np.ndarray) -> None:
        """Hold the positions in `state` (as `state` is shaped), their values copied there: a row
        of the positions of a tensor-parallel unit's twin ranks, stacked, which
        `fabric.rounds.Lockstep` copies from the first rank to the others in one assignment.
        Until the layout changes: `update` lays them out in a new array then."""
        state[:] = self.state
        self.state = state

    def update(self, plan: RoundPlan) -> None:
        """Before `plan` runs: forget the finished, take in the new, and lay the positions out in
        the order of the plan's layout when it changed."""
        layout = plan.layout
        if not (plan.new_seqs or plan.finished) and (layout is self.layout or layout == self.layout):
            self.layout = layout  # an equal layout is compared by identity next time
            return
        self.pos.update(zip(self.layout.seq_ids, self.state[0].tolist()))
        for sid in plan.finished:
            self.pos.pop(sid, None)
        self.pos.update(plan.new_seqs)
        ids, bt = layout.seq_ids, self.block_tokens
        starts = np.array([self.pos.pop(sid) for sid in ids], dtype=np.int64)
        # the blocks a sequence holds so far (no round has listed crossings here yet) ...
        self.state = np.stack([starts, -(-starts // bt) * bt, np.zeros_like(starts)])
        if plan.new_seqs:  # ... but a new one holds none yet
            self.state[1, [i for i, sid in enumerate(ids) if sid in plan.new_seqs]] = 0
        if self.kv_tokens_cap is not None:  # ... and one past its window's cap needs no more
            self.state[1, starts >= self.kv_tokens_cap] = FOREVER
        self.layout = layout
