"""The host's sampling: what happens to a step's logits after the LM head, before the engine appends
the token (`Engine._update` calls `HostSampler.sample` once per sequence that finished its step).

With full numerics tokens come from the logits: `allowed_token_ids`, `bad_words`, `logit_bias`, then
the penalties (each request's `TokenCounts`), then the min_tokens mask of the stop tokens, then the
sampler (`cent_serve.model.sampling.sample`); vLLM masks for min_tokens before the bias and the
penalties (vllm/v1/sample/sampler.py), to the same effect (a -inf stays -inf). Timing-only
runs use a seeded stand-in sampler, uniform over the tokenizer's `stand_in_ids` (ids that decode alone
to visible text: one printable character each for the byte tokenizer), so every streamed token is
visible text, lengths are honoured with `ignore_eos` and a run is reproducible. A greedy request's
draws are seeded by its prompt (`greedy_stand_in_seed`), so they depend on the context alone, as
argmax's would. Log-probabilities are recorded here too, as `scheduler.logprobs_mode` says.
"""
from __future__ import annotations

import hashlib

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.model.sampling import (TokenCounts, UniformLogprobs, banned_ids, logprobs_of, make_generator,
                                       restrict_and_bias, sample, token_logprob)
from cent_serve.model.tokenizer import Tokenizer
from cent_serve.request import Request, RequestParams


def greedy_stand_in_seed(prompt_ids: list[int]) -> int:
    """The stand-in sampler's seed for a greedy request: a stable hash of its prompt's ids (as
    little-endian 64-bit integers, so every platform draws the same text)."""
    return int.from_bytes(hashlib.blake2b(np.asarray(prompt_ids, dtype="<i8").tobytes(), digest_size=8).digest(),
                          "little")


class HostSampler:
    """Turns a sequence's logits row (None when timing-only) into its next token; plain Python, one
    per engine, called on the engine's thread."""

    def __init__(self, cfg: CentConfig, tokenizer: Tokenizer) -> None:
        self.cfg = cfg
        full = cfg.resolved_numerics == "full"
        self.stand_in_ids = None if full else tokenizer.stand_in_ids()
        """Timing-only: the ids the stand-in sampler draws from, uniformly."""
        self._uniform = None if full else UniformLogprobs(self.stand_in_ids)

    def generator(self, prompt_ids: list[int], params: RequestParams, index: int) -> np.random.Generator:
        """The draws of the engine's `index`-th request: its own seed's, else one from
        `scheduler.seed` and its index."""
        seed = params.sampling.seed
        if seed is None:
            seed = self.cfg.scheduler.seed * 1_000_003 + index
        if self._uniform is not None and params.sampling.is_greedy:
            # greedy decoding is a function of the context: the stand-in draws from the prompt alone,
            # so a prompt gives the same text each time and its n choices agree, as argmax would
            seed = greedy_stand_in_seed(prompt_ids)
        return make_generator(seed)

    def sample(self, req: Request, row) -> int:
        """The next token, from the logits `row` (None: the stand-in sampler), its log-probabilities
        recorded when the request asks for them."""
        p = req.params
        if row is None:
            ids = self.stand_in_ids
            if p.sampling.allowed_token_ids is not None:  # the stand-in draws only allowed ids too
                ids = self._stand_in_allowed(p.sampling.allowed_token_ids)
            if p.sampling.bad_words_ids:  # and none a bad word bars next, unless it bars them all
                kept = ids[~np.isin(ids, banned_ids(p.sampling.bad_words_ids, req.output_ids))]
                ids = kept if len(kept) else ids
            if p.stop_token_ids and len(req.output_ids) < p.min_tokens:  # as `stops_masked` does a row
                allowed = ids[~np.isin(ids, p.stop_token_ids)]
                if 0 < len(allowed) < len(ids):
                    ids = allowed
            token = int(ids[req.rng.integers(len(ids))])
            if p.logprobs is not None:
                req.logprobs.append(self._uniform.entry(token, p.logprobs))
            if p.prompt_logprobs is not None and req.prompt_logprobs is None:
                req.prompt_logprobs = [None] + [self._uniform.entry(t, p.prompt_logprobs) for t in req.prompt_ids[1:]]
            return token
        logits = row
        if p.sampling.logit_bias or p.sampling.allowed_token_ids is not None or p.sampling.bad_words_ids:
            logits = restrict_and_bias(row, p.sampling, req.output_ids)
        if p.sampling.has_penalties:  # vLLM's order: the penalties before sampling, greedy too
            if req.token_counts is None:
                req.token_counts = TokenCounts(req.prompt_ids, len(row))
            logits = req.token_counts.penalize(logits, p.sampling, req.output_ids)
        if len(req.output_ids) < p.min_tokens:
            logits = self.stops_masked(logits, p)
        token = sample(logits, p.sampling, req.rng)
        if p.logprobs is not None:
            req.logprobs.append(self.logprob(row, p, token, p.logprobs, processed=logits))
        return token

    def _stand_in_allowed(self, allowed: tuple[int, ...]) -> np.ndarray:
        """The ids the stand-in draws from under `allowed_token_ids`: its own ids that are allowed, or,
        when none is, the allowed ids themselves (visible text or not: the request asked for them)."""
        ids = self.stand_in_ids[np.isin(self.stand_in_ids, allowed)]
        return ids if len(ids) else np.unique(np.asarray(allowed, dtype=self.stand_in_ids.dtype))

    def stops_masked(self, row, p: RequestParams) -> np.ndarray:
        """`row` with its stop ids and the eos ids at -inf, the eos under `ignore_eos` too: before
        `min_tokens` they cannot be drawn, as vLLM's min-tokens logits processor masks its requests'
        all_stop_token_ids before sampling, greedy too (vllm/v1/sample/logits_processor/builtin.py), and
        those hold the eos ids whatever ignore_eos says (vllm/sampling_params.py
        `update_from_generation_config`: "to support min_tokens processing"); raw
        log-probabilities are the row's as it came, processed ones see the mask (`logprob`). Not
        where they are all the row leaves (allowed_token_ids of stop ids alone): the argmax of all -inf
        would be token 0, which was not allowed; the stand-in draws them then too."""
        m = self.cfg.model
        stops = {*p.stop_token_ids, m.eos_token_id, *m.extra_eos_token_ids}
        row = np.array(row, dtype=np.float64).reshape(-1)
        ids = [t for t in stops if t is not None and 0 <= t < len(row)]
        if np.count_nonzero(np.isfinite(row)) > np.count_nonzero(np.isfinite(row[ids])):
            row[ids] = -np.inf
        return row

    def logprob(self, logits, p: RequestParams, token: int, n: int, processed=None):
        """`token`'s `TokenLogprob` (with `n` alternatives) under the logits row, as
        `scheduler.logprobs_mode` says: `raw_logprobs` the model's row as it came, before any bias or
        penalty (vLLM's default mode); `processed_logprobs` the sampler's distribution over the
        `processed` row (allowed_token_ids, bad_words, logit_bias, the penalties, the min_tokens mask of
        the stop tokens, when asked for), as vLLM's processed logprobs come after all of them
        (vllm/v1/sample/sampler.py: its min-tokens processor runs in `apply_logits_processors`, before
        `sample` takes them)."""
        mode = self.cfg.scheduler.logprobs_mode
        if processed is not None and mode != "raw_logprobs":
            logits = processed
        return token_logprob(logprobs_of(logits, p.sampling, mode), token, n)

    def prompt_logprobs(self, req: Request, block, first: int) -> None:
        """Log-probabilities of the prompt tokens that the logits `block` (positions `first`, ...)
        predict: position i's logits give prompt token i + 1's (a recompute of a request that has them
        all asks for no such rows: `scheduler.logit_rows`)."""
        p, prompt = req.params, req.prompt_ids
        if req.prompt_logprobs is None:
            req.prompt_logprobs = [None] * len(prompt)
        for i, logits in enumerate(block, start=first):
            if i + 1 < len(prompt):
                req.prompt_logprobs[i + 1] = self.logprob(logits, p, prompt[i + 1], p.prompt_logprobs)
