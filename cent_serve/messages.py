"""Boundary messages between the executor, the device actors and the fabric.

They carry only what changed (STYLE.md, vLLM's CachedRequestData): sequence
ids, positions, token ids for the first stage, activations, and `ready_s`,
the simulated time at which the payload exists (DESIGN.md: simulated time
travels with the data).
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
