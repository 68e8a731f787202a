"""A request as the engine sees it: its prompt, sampling options, progress and simulated times.

Every time here is simulated seconds (docs/architecture.md); wall-clock time never
enters a `Request`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from cent_serve.model.sampling import SamplingParams, TokenCounts
from cent_serve.model.tokenizer import IncrementalText


class RequestRefused(ValueError):
    """A request the engine will not take; nothing changed. `reason` is a short code the API,
    the bench summary and the metrics group refusals by (`REFUSAL_REASONS`)."""

    def __init__(self, reason: str, message: str, param: str | None = "prompt") -> None:
        assert reason in REFUSAL_REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.param = param
        """The request field at fault (the API's error `param`): `prompt`, `max_tokens`, ..."""


def prompt_too_long(num_prompt_tokens: int, max_seq_len: int) -> RequestRefused | None:
    """The refusal of a prompt that leaves no room for one token of the model's context."""
    if num_prompt_tokens + 1 <= max_seq_len:
        return None
    return RequestRefused("context_exceeded", f"the prompt has {num_prompt_tokens} tokens; the model's context is "
                          f"{max_seq_len} (model.max_seq_len): shorten the prompt")


REFUSAL_REASONS = ("context_exceeded", "kv_capacity", "invalid_prompt", "duplicate_id", "queue_full")
"""Why a request is refused: prompt + max_tokens past the model's context; its KV can never fit a
replica; an empty prompt or an id outside the vocabulary; a request id in use; the waiting queue
is full (the API answers 429 for that one, 400 for the others)."""


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class RequestParams:
    """What a client asks of one completion (one choice; the API fans out n)."""

    max_tokens: int = 16
    """Generated tokens at most."""
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends at the first; the string itself is not returned unless
    `include_stop_str_in_output`."""
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    """Keep going past the end-of-sequence token (vLLM's extension; benchmarks use it)."""
    min_tokens: int = 0
    """No eos or stop before this many tokens."""
    logprobs: int | None = None
    """Log-probabilities of each generated token with this many most likely alternatives (0:
    the token's own only); None: none."""
    prompt_logprobs: int | None = None
    """The same for every prompt token after the first (vLLM's `prompt_logprobs`); None: none."""
    skip_special_tokens: bool = True
    """Leave special tokens (`</s>` generated under ignore_eos, `<s>`) out of the output text, as vLLM
    does by default; False writes them, as vLLM's `skip_special_tokens: false` does. A stop token
    (the eos, a stop id) that ends the output is never in its text, either way (vLLM's too)."""

    include_stop_str_in_output: bool = False
    """vLLM's: the text keeps the stop string that ended it (up to its end), and the text of a stop
    token (a stop id; the eos, which skip_special_tokens leaves out anyway); streams hold nothing back
    for a possible stop string then, as vLLM's detokenizer holds none (vllm/v1/engine/detokenizer.py)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} is invalid: use a positive integer")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens!r} is invalid: use 0..max_tokens ({self.max_tokens})")


@dataclass(eq=False)
class Request:
    """One sequence through the engine."""

    request_id: str
    prompt_ids: list[int]
    params: RequestParams
    arrival_s: float
    rng: np.random.Generator
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)
    """Simulated time each generated token was sampled."""
    seq_id: int = -1
    """Id of this sequence's KV on the devices (a new one after a preemption)."""
    replica: int = -1
    lane: int = -1
    num_computed: int = 0
    """Tokens whose KV is on the devices."""
    ready_s: float = 0.0
    """Simulated time the next step's input exists (last token sampled, or arrival)."""
    scheduled_s: float | None = None
    """First time it was given to the devices (end of queueing)."""
    finish_s: float | None = None
    finish_reason: str | None = None
    """'stop', 'length' or 'abort'; 'error' when a fault failed it."""
    error: str | None = None
    retry_after_s: float | None = None
    """Set on a request failed because no replica can serve soon (`Engine.fail_waiting`): when to
    retry (the API's 503 and `Retry-After`); None for a device fault (500)."""
    energy_j: float = 0.0
    num_preemptions: int = 0
    num_fault_retries: int = 0
    """Times a replica's devices died under it and it was queued again (`Engine._recover`): started
    over, or recomputed from its prompt and output so far."""
    choices: list | None = field(default=None, repr=False)
    """The requests of the one API request this is a choice of (its n choices of each prompt; the
    same list for each), or None: one fails, the reply is an error (`Engine._recover` queues none of
    them again then)."""
    text: str = ""
    """Detokenized output with the stop string cut, kept only when stop strings are given
    (read the text through `Engine.text`)."""
    detok: IncrementalText = field(default_factory=IncrementalText, repr=False, compare=False)
    """The output's text so far, kept between rounds (`Engine.text` and stop strings read it)."""
    ends_with_stop_token: bool = False
    """The last output id is the eos or a stop id (counted, but not part of the text)."""
    stop_reason: str | int | None = None
    """vLLM's `stop_reason`: the stop string or stop token id that ended it (None for the eos,
    a length limit, or still running)."""
    logprobs: list = field(default_factory=list)
    """With `params.logprobs`: one `TokenLogprob` per output token."""
    prompt_logprobs: list | None = None
    """With `params.prompt_logprobs`: None for the first prompt token, then one `TokenLogprob`
    per prompt token, filled as the prompt's chunks are computed."""
    token_counts: TokenCounts | None = field(default=None, repr=False)
    """With penalties and full numerics: the prompt's and output's tokens as the penalties read them,
    made at the first token sampled and kept up to date with the output (`HostSampler.sample`)."""

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt_ids) + len(self.output_ids)
        """Prompt and output tokens (kept as tokens are appended: read on every round)."""

    def append_token(self, token: int, t: float) -> None:
        """A token sampled at simulated time `t`."""
        self.output_ids.append(token)
        self.token_times_s.append(t)
        self.num_tokens += 1

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    def timing(self) -> dict:
        """The `cent` field of a completion: simulated times and energy of this request."""
        first, finish, n = self.first_token_s, self.finish_s, len(self.output_ids)
        return dict(arrival_s=self.arrival_s, scheduled_s=self.scheduled_s, first_token_s=first,
                    finish_s=finish,
                    queue_s=None if self.scheduled_s is None else self.scheduled_s - self.arrival_s,
                    ttft_s=None if first is None else first - self.arrival_s,
                    tpot_s=(finish - first) / (n - 1) if first is not None and finish is not None and n > 1
                    else None,
                    e2e_s=None if finish is None else finish - self.arrival_s,
                    energy_mj=self.energy_j * 1e3, preemptions=self.num_preemptions)
