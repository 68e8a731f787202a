"""Request bodies of the OpenAI-compatible API (docs/serving.md), and their translation to
`RequestParams`. Schema errors (wrong types, missing fields) come from pydantic; they and values out of range
are answered 400 naming the parameter (as OpenAI and vLLM answer both; FastAPI's default is 422).

Integer fields (`LaxInt`) take what vLLM 0.33's pydantic models take in their default lax mode (`"5"`,
`5.0`, `true` are 5, 5 and 1; `5.5` and `"1e3"` are refused); other types are strict: `1` is not a
boolean and `"0.5"` is not a number (an integer is accepted where a number is expected). Unknown fields are accepted and
ignored, as vLLM does (clients send vendor extensions), except OpenAI parameters whose
silent loss would change the answer (`UNSUPPORTED`): those are rejected with 400 unless
they hold their neutral value. Strings must be valid Unicode (a lone surrogate escape such
as `"\\ud800"` is rejected with 400)."""
from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from api.chat import ChatMessage, ContentPart, tool_definitions
from api.checks import (INT64_RANGE, LAX_INT, MAX_ARRIVAL_S, MAX_BAD_WORDS, MAX_LOGPROBS, MAX_N, MAX_STOP_CHARS,
                        MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, NULLABLE, OFF_TESTS, UNSUPPORTED, UNSUPPORTED_WHY,
                        ApiError, LaxInt, check_unicode, logprob_count, null_is_default, short)
from cent_serve.model.sampling import SamplingParams, bad_words_token_ids
from cent_serve.request import RequestParams

DEFAULT_MAX_TOKENS = 16
"""Completions without max_tokens get this many (OpenAI's completions default, vLLM's `max_tokens`
field default), at most the context the prompt leaves. Chat without a limit gets the rest of the
context instead, as vLLM's chat endpoint does. `server.max_tokens_default`, when set, replaces both
defaults (not in `output_tokens_asked`, as vLLM's generation-config override is not)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = False
    """Off unless set true, as vLLM 0.33's StreamOptions (vllm/entrypoints/generate/base/protocol.py;
    older vLLMs defaulted it to true): `{}` asks for no usage chunk; null is off."""
    continuous_usage_stats: bool | None = False
    """vLLM's: with include_usage, every chunk carries its choice's usage so far."""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # unknown fields: module docstring
    zero_tokens_hint: ClassVar[str] = ""
    """What the error of a zero token limit adds (completions: the echo that allows it)."""

    model: str
    max_tokens: LaxInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: LaxInt | None = None
    n: LaxInt = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[LaxInt] | None = None
    seed: LaxInt | None = None
    ignore_eos: bool = False
    min_tokens: LaxInt = 0
    return_token_ids: bool = False
    presence_penalty: float = 0.0
    """OpenAI's, -2..2: subtracted from the logit of each token the output holds already."""
    frequency_penalty: float = 0.0
    """OpenAI's, -2..2: subtracted from a token's logit once per time the output holds it."""
    repetition_penalty: float | None = None
    """vLLM's, > 0: divides a positive logit (multiplies another) of each token in the prompt or the
    output; null: the checkpoint's generation_config.json's, else 1 (off)."""
    logit_bias: dict[str, float] | None = None
    """OpenAI's: token id (a string, as JSON keys are) -> bias added to that token's logit, clamped to
    [-100, 100] as vLLM clamps it (vllm/sampling_params.py `from_optional`; NaN is -100); an id outside
    the vocabulary is a 400, as vLLM's."""
    allowed_token_ids: list[LaxInt] | None = None
    """vLLM's: only these ids may be generated (non-empty, in the vocabulary, as vLLM checks them)."""
    bad_words: list[str] | None = None
    """vLLM's: words the output must not contain (each banned at its last token once the output ends
    with the rest of it, at the text's start or after a space: `bad_words_token_ids`)."""
    include_stop_str_in_output: bool | None = None
    """vLLM's: keep the stop string (or stop token) that ended the output in its text; null is false."""
    truncate_prompt_tokens: LaxInt | None = None
    """vLLM's: keep only the last this many tokens of each prompt (-1: the model's context less the
    output tokens asked for, `prompt_truncation`); null: all."""
    truncation_side: Literal["left", "right"] | None = None
    """vLLM's (current vLLM's completions and chat, vllm-project/vllm pull request 43260; its
    renderers' `TokenizeParams.truncation_side`): which end `truncate_prompt_tokens` cuts, "left"
    (keep the last tokens) or "right" (keep the first); null: the tokenizer's side for generation,
    left (vllm/tokenizers/registry.py), with the BOS kept. Given, a text prompt is encoded whole and cut
    as token ids are (a BOS goes with "left"). Read only with truncate_prompt_tokens."""
    min_p: float | None = None
    """vLLM's, 0..1: drop tokens less likely than min_p times the most likely one; null: the
    checkpoint's generation_config.json's, else 0 (off)."""
    logprobs: Union[bool, int, None] = None
    """Completions: how many alternatives per token (an integer); chat: whether to return them."""
    prompt_logprobs: LaxInt | None = None
    """vLLM's: log-probabilities of the prompt tokens, with this many alternatives."""
    user: str | None = None
    priority: LaxInt = 0
    """vLLM's: accepted and not acted on, as vLLM 0.33 does under its default first-come-first-served
    policy (it reads `priority` only with --scheduling-policy priority; no check refuses it: its
    InputProcessor and Scheduler, vllm/v1/). This scheduler is first come first served."""
    skip_special_tokens: bool | None = None
    """vLLM's: false writes the special tokens the model generates (an eos under ignore_eos) into the
    output text, as vLLM 0.33 decodes them (vllm/v1/engine/detokenizer.py; a stop token that ends the
    output is left out either way); null or true leave them out (vLLM's default without a
    generation_config that sets it). An echoed prompt leaves them out either way."""
    stream_interval: LaxInt | None = None
    """vLLM 0.33's: a stream sends a choice's first output at once, then a chunk per this many tokens,
    the rest with the finish (vllm/v1/engine/output_processor.py); null or 1: a chunk per output."""
    arrival_s: float | None = None
    """cent-serve replay extension (virtual clock): the request's arrival in simulated seconds."""
    hold_until_s: float | None = None
    """cent-serve replay extension (virtual clock): start no round at or past this simulated
    time until the next request arrives (the replayer's next arrival). Null leaves the hold as it
    is; 1e18 or more (`cent_serve.serving.RELEASE_HOLD_S`, the last request's) releases it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        if isinstance(data, dict):  # unknown fields are ignored, their text too
            check_unicode({k: v for k, v in data.items() if k in cls.model_fields}, "")
        return null_is_default(data, NULLABLE)

    def check_fields(self, vocab_size: int) -> None:
        """Per-field checks that need no prompt (raise ApiError 400 naming the field)."""
        for name, neutral in UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if value is None or (name in OFF_TESTS and OFF_TESTS[name](value)) or self.serves(name):
                continue
            if not any(value == v and isinstance(value, bool) == isinstance(v, bool)
                       for v in neutral):  # true is not the 1 that means off
                why, fix = UNSUPPORTED_WHY.get(name, ("", ""))
                raise ApiError(f"{name}={short(value)} is not supported by this server{why and ', ' + why}: leave it "
                               "unset" + (f" (or {json.dumps(neutral[0])})" if neutral and neutral[0] != [] else "")
                               + fix, name)  # an empty list is no fix: vLLM's chat refuses `tools: []`
        if self.stream_options is not None and self.stream_options.model_fields_set and not self.stream:
            # vLLM's rule (an empty {} passes, as its truthiness test lets it)
            raise ApiError("stream_options is only allowed with stream=true: set stream or drop stream_options",
                           "stream_options")
        if not 1 <= self.n <= MAX_N:
            raise ApiError(f"n={short(self.n)} is invalid: use 1..{MAX_N}", "n")
        for name in ("seed", "priority"):  # int64s, as vLLM declares them
            value = getattr(self, name)
            if value is not None and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
                raise ApiError(f"{name}={short(value)} is invalid: use a 64-bit signed integer", name)
        if self.stream_interval is not None and self.stream_interval < 1:
            raise ApiError(f"stream_interval={short(self.stream_interval)} is invalid: use a number of tokens >= 1 "
                           "(or leave it unset)", "stream_interval")
        self._check_logit_bias(vocab_size)
        allowed = self.allowed_token_ids
        if allowed is not None and (not allowed or not all(0 <= t < vocab_size for t in allowed)):
            raise ApiError(f"allowed_token_ids is invalid: give at least one id in [0, {vocab_size})"
                           + (f" (got {short(next(t for t in allowed if not 0 <= t < vocab_size))})" if allowed
                              else " (got [])") + " or leave it unset", "allowed_token_ids")
        ids = self.stop_token_ids or []
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if len(ids) > MAX_STOP_TOKEN_IDS or bad:
            raise ApiError(f"stop_token_ids is invalid: give up to {MAX_STOP_TOKEN_IDS} ids in [0, {vocab_size})"
                           + (f" (got {short(bad[0])})" if bad else ""), "stop_token_ids")
        for name, most in (("arrival_s", MAX_ARRIVAL_S), ("hold_until_s", math.inf)):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= most):
                raise ApiError(f"{name}={value!r} is invalid: use a finite number of simulated seconds >= 0"
                               + (f" and <= {most:g}" if math.isfinite(most) else ""), name)
        if self.hold_until_s is not None and not self.valid_hold():
            raise ApiError(f"hold_until_s={self.hold_until_s!r} is invalid: a hold is the next trace arrival, so it "
                           "needs arrival_s and cannot come before it", "hold_until_s")

    def serves(self, name: str) -> bool:
        """Whether an `UNSUPPORTED` parameter that is not off is served by this request all the same (chat's
        `tools` beside `tool_choice` "none"); none is here."""
        return False

    def _check_logit_bias(self, vocab_size: int) -> None:
        """Each key a token id of the vocabulary (a string Python's int() reads, as vLLM converts it); a
        400 naming the entry otherwise. Any bias passes, NaN and infinities too: `logit_bias_pairs`
        clamps them as vLLM does."""
        for key, bias in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                token = None
            if token is None or not 0 <= token < vocab_size:
                raise ApiError(f"logit_bias key {short(key)} is invalid: use token ids in [0, {vocab_size}) "
                               "(as strings)", "logit_bias")

    def _bad_words_ids(self, tokenizer) -> tuple[tuple[int, ...], ...]:
        if not self.bad_words:
            return ()
        long = next((w for w in self.bad_words if len(w) > MAX_STOP_CHARS), None)
        if len(self.bad_words) > MAX_BAD_WORDS or long is not None:
            got = (f"{len(self.bad_words)} words" if long is None
                   else f"a word of {len(long)} characters ({short(long)})")
            raise ApiError(f"bad_words is invalid ({got}): give up to {MAX_BAD_WORDS} words of at most "
                           f"{MAX_STOP_CHARS} characters", "bad_words")
        assert tokenizer is not None, "to_params needs the tokenizer to encode bad_words"
        try:
            return bad_words_token_ids(self.bad_words, tokenizer)
        except ValueError as exc:
            raise ApiError(str(exc), "bad_words") from None

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """The checked `logit_bias` as (id, bias) pairs, each bias clamped to [-100, 100] as vLLM clamps it
        (vllm/sampling_params.py `from_optional`, min(100, max(-100, bias))): infinity is 100, -infinity
        -100, and NaN -100 (Python's max keeps its first argument against a NaN). Of two keys of one id,
        "5" and "05", the later wins there too."""
        clamped = {int(k): min(100.0, max(-100.0, float(v))) for k, v in (self.logit_bias or {}).items()}
        return tuple(clamped.items())

    def output_tokens_asked(self) -> int:
        """The output tokens the request asks for as vLLM counts them against the context when it
        truncates a prompt (each endpoint's `build_tok_params`' max_output_tokens, vllm/entrypoints/
        openai/completion/protocol.py and chat_completion/protocol.py): max_tokens, null or absent 0;
        each endpoint's request refines it."""
        return self.max_tokens or 0

    def prompt_truncation(self, max_seq_len: int) -> int | None:
        """How many tokens of each prompt to keep (its last ones) under `truncate_prompt_tokens`, as
        current vLLM reads it (vllm/renderers/params.py `TokenizeParams`: -1 is `max_input_tokens`, the
        context less `output_tokens_asked`, and a k past that is refused; vLLM's older
        vllm/entrypoints/utils.py `_validate_truncation_size` took -1 as the whole context and refused
        only a k past it); None: the whole prompt. 0 or below -1 is a 400 (an empty prompt, or not
        vLLM's range). A limit that leaves no room: None, for `Engine.check_length` to refuse the limit."""
        k = self.truncate_prompt_tokens
        if k is None:
            return None
        asked = max(0, self.output_tokens_asked())  # a negative limit: its own 400 (`to_params`)
        room = max_seq_len - asked
        if room < 1 and (k == 0 or k < -1):  # no range to give ("use 1..0"): the limit is the fix too
            raise ApiError(f"truncate_prompt_tokens={short(k)} is invalid: use a positive number of tokens, -1, or "
                           f"leave it unset; and the {asked} output tokens asked for fill the model's context "
                           f"({max_seq_len}), leaving no room for a prompt: ask for fewer", "truncate_prompt_tokens")
        if k == 0 or k < -1 or 1 <= room < k:
            raise ApiError(f"truncate_prompt_tokens={short(k)} is invalid: use 1..{room} (the model's context, "
                           f"{max_seq_len}, less the {asked} output tokens asked for, as vLLM counts them), -1 for "
                           "that, or leave it unset", "truncate_prompt_tokens")
        if room < 1:
            return None
        return room if k == -1 else k

    def valid_hold(self) -> bool:
        """Whether `hold_until_s` is a hold the clock may take: the next arrival, at or after this one's
        (a refused request's hold moves the replay on only then: a hold before the clock would stop it)."""
        hold, arrival = self.hold_until_s, self.arrival_s
        return (hold is not None and arrival is not None and math.isfinite(hold) and math.isfinite(arrival)
                and 0 <= arrival <= hold)

    def to_params(self, max_tokens: int, max_tokens_param: str = "max_tokens",
                  sampling_defaults: dict | None = None, tokenizer=None) -> RequestParams:
        """Checked options of one choice that generates at most `max_tokens` (the client's limit or
        the endpoint's default, resolved by the caller). Whether the limit fits the context the
        prompt leaves is `Engine.check_request`'s to say; `n` is `check_fields`'. Errors about the
        limit name `max_tokens_param` (chat's `max_completion_tokens` lands there). A sampling
        field the request leaves out is `sampling_defaults`' (the checkpoint's generation_config.json,
        as vLLM takes it), else the plain default. `bad_words` need the `tokenizer` (the served model's)."""
        given = sampling_defaults or {}
        logprobs, prompt_logprobs = self.logprob_counts()
        name = max_tokens_param
        if max_tokens < 1:
            raise ApiError(f"{name}={short(max_tokens)} is invalid: use a positive integer{self.zero_tokens_hint}",
                           name)
        if not 0 <= self.min_tokens <= max_tokens:
            raise ApiError(f"min_tokens={short(self.min_tokens)} is invalid: use 0..max_tokens ({max_tokens})",
                           "min_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise ApiError(f"stop={short(self.stop)} is invalid: give up to {MAX_STOP_STRINGS} non-empty strings "
                           f"of at most {MAX_STOP_CHARS} characters", "stop")
        seed = None if self.seed is None else self.seed % 2 ** 64  # numpy seeds are non-negative
        try:
            sampling = SamplingParams(
                temperature=given.get("temperature", 1.0) if self.temperature is None else self.temperature,
                top_p=given.get("top_p", 1.0) if self.top_p is None else self.top_p,
                top_k=given.get("top_k", -1) if self.top_k is None else self.top_k, seed=seed,
                presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                repetition_penalty=given.get("repetition_penalty", 1.0) if self.repetition_penalty is None
                else self.repetition_penalty,
                min_p=given.get("min_p", 0.0) if self.min_p is None else self.min_p,
                logit_bias=self.logit_bias_pairs(),
                allowed_token_ids=None if self.allowed_token_ids is None else tuple(self.allowed_token_ids),
                bad_words_ids=self._bad_words_ids(tokenizer))
        except ValueError as exc:
            raise ApiError(str(exc), str(exc).split("=", 1)[0]) from None
        return RequestParams(max_tokens=max_tokens, sampling=sampling, stop=tuple(stop),
                             stop_token_ids=tuple(self.stop_token_ids or ()), ignore_eos=self.ignore_eos,
                             min_tokens=self.min_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                             skip_special_tokens=self.skips_special_tokens,
                             include_stop_str_in_output=bool(self.include_stop_str_in_output))

    def logprob_counts(self) -> tuple[int | None, int | None]:
        """(alternatives per generated token, per prompt token), None where none are asked for;
        raises ApiError 400 naming the field out of range."""
        return self._logprobs(), logprob_count(self.prompt_logprobs, "prompt_logprobs")

    def _logprobs(self) -> int | None:
        if self.logprobs is False:  # OpenAI's "off"
            return None
        if isinstance(self.logprobs, bool):
            raise ApiError(f"logprobs={self.logprobs!r} is invalid here: completions take a number of alternatives, "
                           f"0..{MAX_LOGPROBS}", "logprobs")
        return logprob_count(self.logprobs, "logprobs")

    @property
    def skips_special_tokens(self) -> bool:
        return self.skip_special_tokens is not False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[LaxInt], list[list[LaxInt]]]
    """Token ids are lax integers as vLLM 0.33's (`[1.0, "2"]` is [1, 2]); a list of strings alone
    stays text prompts (pydantic's smart union takes the exact match)."""
    echo: bool = False
    add_special_tokens: bool = True
    """vLLM's: false encodes a text prompt without the special tokens the tokenizer adds (a BOS for
    most; token ids are sent as given)."""
    zero_tokens_hint: ClassVar[str] = " (or 0 with echo: the prompt back, with its logprobs if asked)"
    logprobs: Union[bool, LaxInt, None] = None
    """How many alternatives per token: an integer, lax as vLLM 0.33's (`logprobs: int | None`, so "2"
    and 2.0 are 2); a boolean stays one for `_logprobs`' rule (false off, true refused)."""

    @field_validator("logprobs", mode="wrap")
    @classmethod
    def _lax_count(cls, value, handler):
        """Booleans and null as sent; anything else an integer, its errors the integer's alone (the
        union's would say "a valid boolean" first)."""
        if value is None or isinstance(value, bool):
            return value
        return LAX_INT.validate_python(value)

    def output_tokens_asked(self) -> int:
        """max_tokens, or 16 when absent or null, vLLM's field default (an explicit null is the default
        since vLLM PR 45491: completion/protocol.py `normalize_null_max_tokens`); `_Common.output_tokens_asked`."""
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def echo_only(self) -> bool:
        """`echo` with max_tokens=0: the prompt back (with its log-probabilities when `logprobs` is
        set), nothing generated (prompt scoring, which OpenAI's legacy completions and vLLM answer;
        docs/serving.md says where the reply differs from vLLM's)."""
        return self.echo and self.max_tokens == 0

    def logprob_counts(self) -> tuple[int | None, int | None]:
        """With `echo`, the prompt's log-probabilities come with the output's (OpenAI, vLLM)."""
        if (self.model_extra or {}).get("top_logprobs") not in (None, 0):
            raise ApiError("top_logprobs is chat's: completions take logprobs=N (0..20) alternatives", "top_logprobs")
        logprobs, prompt = super().logprob_counts()
        if self.echo and logprobs is not None and prompt is None:
            prompt = logprobs
        return logprobs, prompt


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: LaxInt | None = None
    top_logprobs: LaxInt | None = None
    add_generation_prompt: bool = True
    """vLLM's: end the prompt with the assistant's cue (the template's `add_generation_prompt`);
    false: the reply takes the last message's role (vLLM's rule)."""
    continue_final_message: bool = False
    """vLLM's: end the prompt inside the last message, which the model continues (needs
    `add_generation_prompt` false)."""
    echo: bool = False
    """vLLM's: the reply starts with the last message's text when that message has the reply's role."""
    chat_template_kwargs: dict[str, Any] | None = None
    """vLLM's: more variables for the chat template (Qwen 3's `{"enable_thinking": false}`)."""
    add_special_tokens: bool = False
    """vLLM's: add the tokenizer's special tokens (a BOS for most) to the rendered chat (its templates
    write their own)."""
    documents: list[dict[str, str]] | None = None
    """vLLM's: documents for retrieval-augmented generation (each best a `title` and a `text`), given to the
    chat template as `documents` (vllm/entrypoints/openai/chat_completion/protocol.py `build_chat_params`);
    a template that does not read them renders as without them."""
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    """OpenAI's, as vLLM takes it (vllm/entrypoints/openai/chat_completion/protocol.py: these values, any other
    a 400; `build_chat_params`): a chat template variable, `reasoning_effort`, and unless
    `chat_template_kwargs` sets it, `enable_thinking` (false for "none", else true), which Qwen 3's
    template reads; a template that reads neither renders as without it (`template_variables`)."""

    def output_tokens_asked(self) -> int:
        """max_completion_tokens, else max_tokens (OpenAI's newer name wins, as in vLLM's chat
        `build_tok_params`); null or absent 0: `_Common.output_tokens_asked`."""
        newer = self.max_completion_tokens
        return (self.max_tokens if newer is None else newer) or 0

    def template_variables(self) -> dict[str, Any] | None:
        """The chat template's variables beyond the messages: `chat_template_kwargs`, with
        `reasoning_effort` (and from it `enable_thinking`, unless the kwargs set it) as vLLM's
        `build_chat_params` adds them; None when there are none."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs.setdefault("enable_thinking", self.reasoning_effort != "none")
            kwargs["reasoning_effort"] = self.reasoning_effort
        return kwargs or None

    def check_fields(self, vocab_size: int) -> None:
        """`_Common`'s, and an empty `tools` refused, as vLLM's `check_tool_usage` refuses it."""
        if (self.model_extra or {}).get("tools") == []:
            raise ApiError("tools=[] is empty, which vLLM refuses: give at least one tool or leave tools out", "tools")
        super().check_fields(vocab_size)

    def serves(self, name: str) -> bool:
        """`tools` with `tool_choice` "none" or an explicit null: no call is asked for, and the tools are given
        to the chat template (`template_tools`), as vLLM gives them by default (it drops them only under "none"
        with --exclude-tools-when-tool-choice-none, off by default: vllm/entrypoints/openai/cli_args.py;
        vllm/renderers/online_renderer.py `render_chat`), so a template that lists them counts them in the
        prompt. Without tool_choice, tools mean "auto" (vLLM's `check_tool_usage`), which makes calls: refused."""
        extra = self.model_extra or {}
        return name == "tools" and "tool_choice" in extra and extra["tool_choice"] in (None, "none")

    def template_tools(self) -> list[dict] | None:
        """The `tools` the chat template is given (`serves`; checked by `tool_definitions`), else None."""
        return tool_definitions((self.model_extra or {}).get("tools")) if self.serves("tools") else None

    def reply_role(self) -> str:
        """The role of the reply: the assistant's, or without the generation prompt the last message's."""
        return "assistant" if self.add_generation_prompt or not self.messages else self.messages[-1].role

    def echoed(self) -> str:
        """What `echo` puts before the reply: the last message's text if it has the reply's role."""
        last = self.messages[-1] if self.echo and self.messages else None
        return last.text() if last is not None and last.role == self.reply_role() else ""

    def _logprobs(self) -> int | None:
        if self.logprobs is not None and not isinstance(self.logprobs, bool):
            raise ApiError(f"logprobs={short(self.logprobs)} is invalid for chat: use true, with top_logprobs "
                           f"0..{MAX_LOGPROBS} for alternatives", "logprobs")
        if self.top_logprobs and not self.logprobs:
            raise ApiError("top_logprobs needs logprobs: set logprobs to true", "top_logprobs")
        top = logprob_count(self.top_logprobs, "top_logprobs")
        return (top or 0) if self.logprobs else None


FIELD_NAMES = frozenset(name for m in (CompletionRequest, ChatCompletionRequest, ChatMessage, ContentPart,
                                        StreamOptions) for name in m.model_fields) | {"tokens"}


def schema_param(loc) -> str | None:
    """The `param` of a pydantic error location: field names and list indices, without the
    `body` prefix and the union-branch tags pydantic inserts (`prompt.list[int].0` -> `prompt.0`)."""
    parts = [str(x) for x in loc[1:] if isinstance(x, int) or x in FIELD_NAMES]
    return ".".join(parts) or None


class ErrorReason(BaseModel):
    code: str | None = None
    """This server's reason (`context_length_exceeded`, `queue_full`, `device_fault`, ...; docs/serving.md)."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int
    """The HTTP status, as vLLM sends it."""
    cent: ErrorReason


class ErrorResponse(BaseModel):
    """OpenAI's error body, as every error of this server is written (for the OpenAPI schema)."""

    error: ErrorDetail


class TokenizeRequest(BaseModel):
    """vLLM's `/tokenize`: a `prompt`, or chat `messages` rendered with the chat template."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    """The tokenizer's special tokens (a BOS for most): for a prompt by default, for messages not (the
    template writes them)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """As chat's: more variables for the chat template."""
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    """As chat's: the messages end inside the last one (needs add_generation_prompt false)."""
    return_token_strs: bool = False

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        if isinstance(data, dict):
            check_unicode({k: v for k, v in data.items() if k in cls.model_fields}, "")
        return data


class DetokenizeRequest(BaseModel):
    """vLLM's `/detokenize`."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    tokens: list[LaxInt]
    """Lax integers, as vLLM 0.33's `tokens: list[int]` (serve/tokenize/protocol.py): "5" and 5.0 are 5."""
