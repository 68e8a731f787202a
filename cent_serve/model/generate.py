"""Plain autoregressive generation with the reference model (the ground truth for engines)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cent_serve.model.reference import LlamaModel
from cent_serve.model.sampling import SamplingParams, make_generator, sample


@dataclass
class Generation:
    """What `generate` returns: generated ids, their logits rows and why it stopped."""

    token_ids: list[int]
    finish_reason: str  # "stop" (eos) or "length"
    logits: list[np.ndarray]


def generate(model: LlamaModel, prompt_ids: list[int], max_tokens: int,
             params: SamplingParams = SamplingParams(temperature=0.0), ignore_eos: bool = False,
             default_seed: int = 0) -> Generation:
    """Prefill the prompt in one forward, then decode one token at a time."""
    if not prompt_ids:
        raise ValueError("prompt is empty: give at least one token")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} is invalid: use a positive count")
    rng = make_generator(params.seed if params.seed is not None else default_seed)
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache)[-1]
    out: list[int] = []
    rows: list[np.ndarray] = []
    reason = "length"
    for i in range(max_tokens):
        rows.append(logits)
        tok = sample(logits, params, rng)
        out.append(tok)
        if model.cfg.is_eos(tok) and not ignore_eos:
            reason = "stop"
            break
        if i + 1 < max_tokens:
            logits = model.forward([tok], cache)[-1]
    return Generation(out, reason, rows)
