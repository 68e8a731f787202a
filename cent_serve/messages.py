"""Boundary messages between the executor, the device actors and the fabric.

They carry only what changed (as vLLM's CachedRequestData): sequence
ids, positions, token ids for the first stage, activations, and `ready_s`,
the simulated time at which the payload exists (docs/architecture.md: simulated time
travels with the data). `Wave` is the same round in columns, the form the
workers compute on and the links between actors carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SeqStep:
    """One sequence's share of a micro-batch in one round."""

    seq_id: int
    start: int
    """Position of the first token of this step (= tokens already in the KV cache)."""
    num_tokens: int
    """Tokens processed in this step: 1 when decoding, a chunk when prefilling."""
    token_ids: list[int] | None = None
    """Input ids (needed by the embedding stage; None with numerics off)."""
    wants_logits: bool = True
    """Whether the last position's logits are needed (False for a non-final prefill chunk)."""

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class MicroBatch:
    """What flows from stage to stage: the sequences, their activations and a timestamp."""

    mb_id: int
    seqs: list[SeqStep]
    ready_s: float
    """Simulated time at which this payload exists at its current holder."""
    hidden: np.ndarray | None = None
    """(total_tokens, D) float32 activations; None with numerics off."""
    logits: np.ndarray | None = None
    """(num_seqs_wanting_logits, vocab) after the LM head; None before it or with numerics off."""
    trace: list[tuple[str, float, float]] = field(default_factory=list)
    """Optional (resource, start_s, end_s) records for debugging and plots."""

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)

    def payload_elements(self, hidden_size: int) -> int:
        """Activation elements on the wire (same count whether or not numerics run)."""
        return self.num_tokens * hidden_size


@dataclass
class RoundResult:
    """What the executor hands back after one round: per micro-batch outputs."""

    micro_batches: list[MicroBatch]
    """Outputs of the last stage (logits when numerics run), stamped with ready_s."""


SeqRow = tuple[int, int, int, "list[int] | None", bool]
"""A SeqStep on the wire: (seq_id, start, num_tokens, token_ids, wants_logits)."""


@dataclass
class Wave:
    """A round's micro-batches in columns: the compact form the device and fabric workers
    compute on and the links between actors carry (a few tuples pickle ~10x faster than
    80 MicroBatch/SeqStep dataclasses). Column i is one micro-batch."""

    mb_ids: tuple[int, ...]
    seqs: tuple[tuple[SeqRow, ...], ...]
    """Per micro-batch, its sequences' steps (constant through a round)."""
    ready_s: list[float]
    """Simulated time each payload exists at its current holder."""
    hidden: list | None = None
    """Per micro-batch (tokens, D) float32 activations; None with numerics off."""
    logits: list | None = None
    """Per micro-batch (seqs wanting logits, vocab) after the LM head; None before it."""
    tokens: tuple[int, ...] = ()
    """Per micro-batch, its tokens in this step (filled from `seqs` when not given)."""
    costs: tuple | None = field(default=None, compare=False, repr=False)
    """(owner, per-column list): what charging each column costs on a device, computed by the
    first device of a mapping and reused by the others in the same process (`owner` is the
    cost table they share). Never sent over a link: a device in another process recomputes it."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.mb_ids):
            self.tokens = tuple(sum(s[2] for s in ss) for ss in self.seqs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["costs"] = None
        return state

    def __len__(self) -> int:
        return len(self.mb_ids)

    def arrival_order(self) -> list[int]:
        """Columns in the order a resource serves them: by ready_s, ties by mb_id."""
        ids, ready = self.mb_ids, self.ready_s
        if list(ids) == sorted(ids):  # the usual case: then a stable sort by time breaks ties by mb_id
            return sorted(range(len(ids)), key=ready.__getitem__)
        return [i for _, _, i in sorted(zip(ready, ids, range(len(ids))))]

    def id_order(self) -> list[int]:
        ids = self.mb_ids
        return sorted(range(len(ids)), key=ids.__getitem__)

    def take(self, order: list[int], ready_s: list[float], hidden: list | None = None,
             logits: list | None = None) -> "Wave":
        """The columns in `order` with new ready_s (given per column of self) and payloads
        (given per position of `order`)."""
        if order == list(range(len(order))):  # the usual case: already in mb_id order
            return Wave(self.mb_ids, self.seqs, list(ready_s), hidden, logits, self.tokens, self.costs)
        costs = None if self.costs is None else (self.costs[0], [self.costs[1][i] for i in order])
        return Wave(tuple([self.mb_ids[i] for i in order]), tuple([self.seqs[i] for i in order]),
                    [ready_s[i] for i in order], hidden, logits, tuple([self.tokens[i] for i in order]), costs)

    @classmethod
    def from_micro_batches(cls, mbs: list[MicroBatch]) -> "Wave":
        ids = tuple(mb.mb_id for mb in mbs)
        assert len(set(ids)) == len(ids), f"micro-batch ids repeat in a round: {ids}"
        has_hidden = any(mb.hidden is not None for mb in mbs)
        has_logits = any(mb.logits is not None for mb in mbs)
        return cls(ids, tuple(tuple((s.seq_id, s.start, s.num_tokens, s.token_ids, s.wants_logits)
                                    for s in mb.seqs) for mb in mbs),
                   [mb.ready_s for mb in mbs], [mb.hidden for mb in mbs] if has_hidden else None,
                   [mb.logits for mb in mbs] if has_logits else None)

    def to_micro_batches(self, seqs_by_id: dict[int, list[SeqStep]] | None = None) -> list[MicroBatch]:
        """MicroBatches again; `seqs_by_id` hands back the caller's own SeqStep lists."""
        out = []
        for i, mb_id in enumerate(self.mb_ids):
            seqs = seqs_by_id[mb_id] if seqs_by_id is not None else [SeqStep(*s) for s in self.seqs[i]]
            out.append(MicroBatch(mb_id, seqs, self.ready_s[i],
                                  self.hidden[i] if self.hidden is not None else None,
                                  self.logits[i] if self.logits is not None else None))
        return out
