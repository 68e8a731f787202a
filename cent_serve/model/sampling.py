"""Token sampling: penalties, greedy, temperature, min-p, top-k, top-p; seeded and reproducible.

The order is vLLM's (vllm/v1/sample/sampler.py, `Sampler`'s docstring): the penalties act on the
logits first (`TokenCounts.penalize`), then greedy takes the argmax; otherwise the temperature
scales them, min-p drops the unlikely tokens, top-k and top-p cut what is left, and one token is drawn.

Randomness comes from numpy's PCG64 generator, whose stream is the same on
every platform, and each draw consumes exactly one uniform number, so a
request's samples depend only on its seed and its logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cent_serve.config import LOGPROBS_MODES


SAMPLING_EPS = 1e-5
"""A temperature below this is greedy, as in vLLM's sampler (vllm/v1/sample/sampler.py, `_SAMPLING_EPS`):
logits over a temperature of 1e-310 overflow to inf, and inf - inf made the probabilities NaN (token 0
drawn, NaN logprobs)."""


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
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token the output holds already (OpenAI's; -2..2)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time the output holds it (OpenAI's; -2..2)."""
    repetition_penalty: float = 1.0
    """vLLM's (> 0): the logit of a token in the prompt or the output so far is divided by it when
    positive, multiplied by it otherwise; 1 changes nothing."""
    min_p: float = 0.0
    """vLLM's (0..1): after the temperature, drop the tokens less likely than min_p times the most
    likely one; 0 drops none."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """OpenAI's: (token id, bias in [-100, 100]) pairs, each bias added to its token's logit."""
    allowed_token_ids: tuple[int, ...] | None = None
    """vLLM's: only these ids may be drawn (every other logit is -inf); None: any."""
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    """vLLM's `bad_words` as token sequences (`bad_words_token_ids`): a sequence's last token is not
    drawn where the output so far ends with the rest of it."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 2.0):
            raise ValueError(f"temperature={self.temperature!r} is invalid: use a value in [0, 2]")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p!r} is invalid: use a value in (0, 1]")
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k!r} is invalid: use -1 or 0 (all, as in vLLM) or a positive count")
        # the ranges are vLLM's (vllm/sampling_params.py, SamplingParams._verify_args)
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: use a value in [-2, 2] (0 is off)")
        if not 0.0 < self.repetition_penalty < float("inf"):  # (nan too; vLLM's check is > 0 alone, but an
            # infinite one would turn a logit of 0 into nan)
            raise ValueError(f"repetition_penalty={self.repetition_penalty!r} is invalid: use a finite value > 0 "
                             "(1 is off)")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p={self.min_p!r} is invalid: use a value in [0, 1] (0 is off)")
        bad = [(t, b) for t, b in self.logit_bias if t < 0 or not -100.0 <= b <= 100.0]
        if bad:
            raise ValueError(f"logit_bias={bad[0]!r} is invalid: use token ids >= 0 with biases in [-100, 100]")
        if any(not seq or min(seq) < 0 for seq in self.bad_words_ids):
            raise ValueError(f"bad_words_ids={self.bad_words_ids!r} is invalid: give non-empty sequences of "
                             "token ids >= 0")
        if self.allowed_token_ids is not None and (not self.allowed_token_ids or min(self.allowed_token_ids) < 0):
            raise ValueError(f"allowed_token_ids={self.allowed_token_ids!r} is invalid: give at least one token "
                             "id >= 0 (or None for any)")

    @property
    def has_penalties(self) -> bool:
        """Whether a penalty acts: `TokenCounts.penalize` changes the logits."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def is_greedy(self) -> bool:
        """A temperature below SAMPLING_EPS (0 included) or top_k 1 takes the most likely token."""
        return self.temperature < SAMPLING_EPS or self.top_k == 1


GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "repetition_penalty", "min_p")
"""The keys of a checkpoint's generation_config.json that set a request's sampling when it does not
(vLLM's `--generation-config auto`, its default, reads these and the one below)."""
UNSAMPLED_GENERATION_KEYS = {"max_new_tokens": None}
"""Keys vLLM also takes as defaults that this server does not apply, with the value that changes nothing."""


def checkpoint_sampling_defaults(checkpoint: str | None) -> tuple[dict, list[str]]:
    """({key: value} of `GENERATION_DEFAULTS` a checkpoint's generation_config.json sets, [what it sets
    that is not applied: an unsupported key, or a value `SamplingParams` refuses, each as `key=value (why)`]).
    No checkpoint or no file: ({}, [])."""
    import json
    from pathlib import Path

    path = Path(checkpoint) / "generation_config.json" if checkpoint else None
    if path is None or not path.is_file():
        return {}, []
    try:
        gen = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, []  # the model's load has already read it for its eos ids, and said what is wrong
    if not isinstance(gen, dict):
        return {}, []
    defaults, skipped = {}, []
    for key in GENERATION_DEFAULTS:
        value = gen.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (key == "top_k" and not float(value).is_integer()):
            skipped.append(f"{key}={value!r} (not {'an integer' if key == 'top_k' else 'a number'})")
            continue
        value = int(value) if key == "top_k" else float(value)
        value = -1 if key == "top_k" and value == 0 else value  # transformers' 0: no top-k
        try:
            SamplingParams(**{key: value})
        except (TypeError, ValueError) as exc:
            skipped.append(f"{key}={value!r} ({exc})")
            continue
        defaults[key] = value
    skipped += [f"{key}={gen[key]!r} (not supported here)" for key, off in UNSAMPLED_GENERATION_KEYS.items()
                if gen.get(key) is not None and gen[key] != off]
    return defaults, skipped


def bad_words_token_ids(words, tokenizer) -> tuple[tuple[int, ...], ...]:
    """vLLM's tokenization of `bad_words` (vllm/sampling_params.py `update_from_tokenizer`): each word,
    left-stripped, encoded without special tokens; and again after a space, kept when that makes a
    sequence as long whose first token differs (a word-start token), so the word is banned at the
    start of the text and inside it. Raises ValueError for a word with no token."""
    seqs: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_bos=False))
        if not plain:
            raise ValueError(f"bad_words={word!r} is invalid: give words with visible text")
        seqs.append(plain)
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_bos=False))
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            seqs.append(spaced)
    return tuple(seqs)


def banned_ids(bad_words_ids: tuple[tuple[int, ...], ...], output_ids: list[int]) -> list[int]:
    """The ids `bad_words_ids` bar next: each sequence's last token where the output ends with the rest
    of it (vLLM's bad-words step, vllm/v1/sample/ops/bad_words.py: over the output alone)."""
    out = []
    for seq in bad_words_ids:
        k = len(seq) - 1
        if k <= len(output_ids) and (k == 0 or tuple(output_ids[-k:]) == seq[:-1]):
            out.append(seq[-1])
    return out


def restrict_and_bias(logits: np.ndarray, params: SamplingParams, output_ids: list[int] = ()) -> np.ndarray:
    """A float64 copy of the (vocab,) `logits` with vLLM's first steps applied, in its order
    (vllm/v1/sample/sampler.py, before the penalties): every token outside `allowed_token_ids` at -inf,
    the bad words' next tokens after `output_ids` at -inf (unless that leaves no token to draw: the argmax
    of all -inf would be token 0, allowed or not, with NaN log-probabilities; the stand-in sampler keeps
    its ids then too), then each `logit_bias` added to its token's logit. Ids past the row (refused by
    the API) are skipped."""
    x = np.array(logits, dtype=np.float64).reshape(-1)  # (vocab,)
    if params.allowed_token_ids is not None:
        ids = [t for t in params.allowed_token_ids if t < len(x)]
        kept = np.full(x.shape, -np.inf)
        kept[ids] = x[ids]
        x = kept
    if params.bad_words_ids:
        barred = np.unique([t for t in banned_ids(params.bad_words_ids, output_ids) if t < len(x)]).astype(np.int64)
        if np.count_nonzero(np.isfinite(x)) > np.count_nonzero(np.isfinite(x[barred])):  # not if none would be left
            x[barred] = -np.inf
    for t, bias in params.logit_bias:
        if t < len(x):
            x[t] += bias
    return x


class TokenCounts:
    """One request's tokens as the penalties read them: which ids its prompt or output holds, and
    how many times its output holds each, kept as the output grows (`penalize` brings them up to
    date with the tokens appended since, so a step costs the new tokens, not the whole output)."""

    def __init__(self, prompt_ids: list[int], vocab_size: int) -> None:
        self.seen = np.zeros(vocab_size, dtype=bool)  # (vocab,) in the prompt or the output
        self.seen[[t for t in prompt_ids if 0 <= t < vocab_size]] = True
        self.output_counts = np.zeros(vocab_size, dtype=np.int64)  # (vocab,) times in the output
        self.num_counted = 0
        """Output tokens counted so far."""

    def penalize(self, logits: np.ndarray, params: SamplingParams, output_ids: list[int]) -> np.ndarray:
        """A float64 copy of the (vocab,) `logits` with the penalties applied as vLLM applies them
        (vllm/model_executor/layers/utils.py `apply_penalties`): the repetition penalty over the
        prompt and the output (a positive logit divided by it, any other multiplied), then the
        frequency penalty times each token's count in the output and the presence penalty once for a
        token the output holds (OpenAI's definition: over the output alone)."""
        for t in output_ids[self.num_counted:]:
            if 0 <= t < len(self.seen):
                self.seen[t] = True
                self.output_counts[t] += 1
        self.num_counted = len(output_ids)
        x = np.array(logits, dtype=np.float64).reshape(-1)  # (vocab,)
        if params.repetition_penalty != 1.0:
            hit = x[self.seen]
            x[self.seen] = np.where(hit > 0, hit / params.repetition_penalty, hit * params.repetition_penalty)
        if params.frequency_penalty:
            x -= params.frequency_penalty * self.output_counts
        if params.presence_penalty:
            x -= params.presence_penalty * (self.output_counts > 0)
        return x


def make_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick one token id from a (vocab,) logits vector."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if params.is_greedy:
        return int(np.argmax(logits))
    _, order, probs = _candidates(logits, params)
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(probs), u, side="right"))
    return int(order[min(idx, len(order) - 1)])


def _candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the logits over the temperature, the ids the sampler may draw (most likely first, ties by
    id: min-p, then top-k, then the smallest set reaching top-p), their probabilities)."""
    scaled = logits / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.min_p > 0.0:
        # vLLM's min-p (vllm/v1/sample/logits_processor/builtin.py, MinPLogitsProcessor), after the
        # temperature: keep a token whose probability is at least min_p times the top one's
        ratio = np.exp(scaled[order] - scaled[order[0]])  # p / p_max, most likely first
        order = order[: int(np.count_nonzero(ratio >= params.min_p))]
    if params.top_k > 0:
        order = order[: params.top_k]
    kept = scaled[order]
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        cum = np.cumsum(probs)
        cut = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        order, probs = order[:cut], probs[:cut] / probs[:cut].sum()
    return scaled, order, probs


MIN_LOGPROB = -9999.0
"""A log-probability of zero probability, as vLLM writes it (JSON has no -inf)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probabilities: the token's own, its rank (1 = most likely), and the
    `n` most likely (id, logprob) pairs, most likely first, ties by id."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]


def logprobs_of(logits: np.ndarray, params: SamplingParams, mode: str = LOGPROBS_MODES[0]) -> np.ndarray:
    """(vocab,) float64 log-probabilities of one logits row: the model's (`raw_logprobs`, or
    greedy sampling) or the sampler's (`processed_logprobs`: the same scaling and cuts as
    `sample`); a token the sampler cannot draw has -inf."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if mode == "raw_logprobs" or params.temperature < SAMPLING_EPS:
        return _log_softmax(x)
    scaled, order, _ = _candidates(x, params)
    out = np.full(x.shape, -np.inf)
    out[order] = _log_softmax(scaled[order])
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def token_logprob(logprobs: np.ndarray, token_id: int, n: int) -> TokenLogprob:
    """`token_id`'s entry of a (vocab,) log-probability vector, with the `n` most likely."""
    lp = float(logprobs[token_id])
    rank = 1 + int(np.count_nonzero(logprobs > lp))
    top = ()
    if n > 0:
        best = np.lexsort((np.arange(logprobs.size), -logprobs))[:n]  # by logprob, then id
        top = tuple((int(i), float(logprobs[i])) for i in best)
    return TokenLogprob(int(token_id), lp, rank, top)


class UniformLogprobs:
    """Entries under the uniform distribution over `ids` (the stand-in sampler's), prepared once:
    an entry costs a set lookup, not a pass over the vocabulary."""

    def __init__(self, ids: np.ndarray, most: int = 20) -> None:
        self.logprob = -float(np.log(len(ids)))
        self.ids = frozenset(int(i) for i in ids)
        self.top = tuple((int(i), self.logprob) for i in np.sort(ids)[:most])

    def entry(self, token_id: int, n: int) -> TokenLogprob:
        if token_id in self.ids:
            return TokenLogprob(int(token_id), self.logprob, 1, self.top[:n])
        return TokenLogprob(int(token_id), -np.inf, len(self.ids) + 1, self.top[:n])
