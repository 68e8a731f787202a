"""Greedy/sampled generation through an executor: the sharded counterpart of
`cent_serve.model.generate.generate`, used by tests and benchmarks."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cent_serve.messages import Layout, RoundPlan
from cent_serve.model.sampling import SamplingParams, make_generator, sample


@dataclass
class BatchGeneration:
    token_ids: list[list[int]]
    logits: list[list[np.ndarray]]
    token_times_s: list[list[float]]
    """Simulated time each generated token was sampled (after the host's sampling cost)."""


def generate_batch(executor, prompts: list[list[int]], max_tokens: int,
                   params: SamplingParams = SamplingParams(temperature=0.0), prefill_chunk: int = 0
                   ) -> BatchGeneration:
    """One sequence per lane (lane q holds prompt q); prompts in one chunk (prefill_chunk=0) or
    in chunks; a lane leaves the rounds when its sequence has `max_tokens` tokens."""
    n = len(prompts)
    rngs = [make_generator(params.seed if params.seed is not None else i) for i in range(n)]
    ready = [0.0] * n
    pending = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in range(n)]
    logits: list[list[np.ndarray]] = [[] for _ in range(n)]
    times: list[list[float]] = [[] for _ in range(n)]
    rounds, started = itertools.count(), set()
    while any(len(o) < max_tokens for o in out):
        lanes = [q for q in range(n) if len(out[q]) < max_tokens]
        take = [len(pending[q]) if prefill_chunk <= 0 else min(prefill_chunk, len(pending[q])) for q in lanes]
        plan = RoundPlan(Layout(tuple(lanes), tuple(((q, k),) for q, k in zip(lanes, take))),
                         np.array([ready[q] for q in lanes]), next(rounds),
                         {q: 0 for q in lanes if q not in started}, (),
                         np.array([t for q, k in zip(lanes, take) for t in pending[q][:k]], dtype=np.int64),
                         np.array([k == len(pending[q]) for q, k in zip(lanes, take)]))
        started.update(lanes)
        result = executor.run(plan)
        row = 0
        for i, (q, k) in enumerate(zip(lanes, take)):
            pending[q] = pending[q][k:]
            ready[q] = float(result.sampled_s[i])
            if pending[q]:
                continue
            lane_logits = result.logits[row] if result.logits is not None else None
            row += 1
            tok = sample(lane_logits, params, rngs[q]) if lane_logits is not None else 0
            out[q].append(tok)
            logits[q].append(lane_logits)
            times[q].append(ready[q])
            pending[q] = [tok]
    return BatchGeneration(out, logits, times)
