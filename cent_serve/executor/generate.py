"""Greedy/sampled generation through an executor: the sharded counterpart of
`cent_serve.model.generate.generate`, used by tests and `cent generate --devices`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cent_serve.messages import MicroBatch, SeqStep
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
    """One sequence per micro-batch; prompts in one chunk (prefill_chunk=0) or in chunks."""
    host_s = executor.timer.host_s
    n = len(prompts)
    rngs = [make_generator(params.seed if params.seed is not None else i) for i in range(n)]
    pos = [0] * n
    ready = [0.0] * n
    pending = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in range(n)]
    logits: list[list[np.ndarray]] = [[] for _ in range(n)]
    times: list[list[float]] = [[] for _ in range(n)]
    while any(len(o) < max_tokens for o in out):
        mbs = []
        for q in range(n):
            if len(out[q]) >= max_tokens:
                continue
            take = len(pending[q]) if prefill_chunk <= 0 else min(prefill_chunk, len(pending[q]))
            ids = pending[q][:take]
            mbs.append(MicroBatch(q, [SeqStep(q, pos[q], take, ids, wants_logits=take == len(pending[q]))],
                                  ready_s=ready[q]))
        for mb in executor.execute(mbs):
            q = mb.mb_id
            step = mb.seqs[0]
            pos[q] += step.num_tokens
            pending[q] = pending[q][step.num_tokens:]
            ready[q] = mb.ready_s + host_s
            if pending[q]:
                continue
            row = mb.logits[0] if mb.logits is not None else None
            tok = sample(row, params, rngs[q]) if row is not None else 0
            out[q].append(tok)
            logits[q].append(row)
            times[q].append(ready[q])
            pending[q] = [tok]
    return BatchGeneration(out, logits, times)
