"""Token sampling: greedy, temperature, top-k, top-p; seeded and reproducible.

Randomness comes from numpy's PCG64 generator, whose stream is the same on
every platform, and each draw consumes exactly one uniform number, so a
request's samples depend only on its seed and its logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token."""

    temperature: float = 1.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 or 0 keeps all."""
    seed: int | None = None
    """Seed of this request's generator; None draws from the engine's seed."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 2.0):
            raise ValueError(f"temperature={self.temperature!r} is invalid: use a value in [0, 2]")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p!r} is invalid: use a value in (0, 1]")
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k!r} is invalid: use -1 (all) or a positive count")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def make_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick one token id from a (vocab,) logits vector."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if params.is_greedy:
        return int(np.argmax(logits))
    scaled = logits / params.temperature
    order = np.argsort(-scaled, kind="stable")  # most likely first; ties by id
    if params.top_k > 0:
        order = order[: params.top_k]
    kept = scaled[order]
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        cum = np.cumsum(probs)
        cut = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        order, probs = order[:cut], probs[:cut] / probs[:cut].sum()
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(probs), u, side="right"))
    return int(order[min(idx, len(order) - 1)])
