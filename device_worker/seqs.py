"""Where each sequence stands on the devices: its next position, kept across rounds.

A plan names a sequence's first position once, when it is new (`RoundPlan.new_seqs`); after that
its position moves on by the tokens each round gives it, until the plan that finishes it. Every
device of a replica holds the same positions, so the devices of one process share one table (a
Ray device actor has its own) and its work is done once per round: while the layout holds, the
positions are one vector add a round; the dict is brought up to date when the layout changes.
"""
from __future__ import annotations

import numpy as np

from cent_serve.messages import EMPTY_LAYOUT, RoundPlan


class SeqTable:
    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.pos: dict[int, int] = {}
        """Position of each sequence's next token (tokens its KV cache holds), but for those of the
        current layout, whose positions are in `_starts`."""
        self._layout = EMPTY_LAYOUT
        self._starts = self._tokens = self._held = np.zeros(0, dtype=np.int64)
        self._round: object = None
        self._result: tuple[np.ndarray, list[tuple[int, int]]] = (self._starts, [])

    def advance(self, plan: RoundPlan) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """For `plan` (once per round, whichever device asks first): each of its sequences' first
        position (layout order), and the (sequence, tokens to hold) that cross into a new KV
        block this round; positions move on by the round's tokens."""
        if plan.round_id == self._round:
            return self._result
        layout = plan.layout
        changed = bool(plan.new_seqs) or (layout is not self._layout and layout != self._layout)
        if changed:
            self.pos.update(zip(self._layout.seq_ids, self._starts.tolist()))
        for sid in plan.finished:
            self.pos.pop(sid, None)
        self.pos.update(plan.new_seqs)
        if changed:
            ids, bt = layout.seq_ids, self.block_tokens
            self._starts = np.array([self.pos.pop(sid) for sid in ids], dtype=np.int64)
            self._tokens = np.array(layout.seq_tokens, dtype=np.int64)
            self._held = -(-self._starts // bt) * bt  # the blocks a sequence holds so far ...
            if plan.new_seqs:  # ... but a new one holds none yet
                self._held[[i for i, sid in enumerate(ids) if sid in plan.new_seqs]] = 0
        self._layout = layout  # an equal layout is compared by identity next time
        starts, ends = self._starts, self._starts + self._tokens
        crossing = []
        for i in np.flatnonzero(ends > self._held).tolist():
            end = int(ends[i])
            crossing.append((layout.seq_ids[i], end))
            self._held[i] = -(-end // self.block_tokens) * self.block_tokens
        self._starts = ends
        self._round, self._result = plan.round_id, (starts, crossing)
        return self._result
