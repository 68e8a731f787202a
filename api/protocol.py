"""Request bodies of the OpenAI-compatible API (SERVING.md), and their translation to
`RequestParams`. Schema errors (wrong types, missing fields) come from pydantic and are
answered 422; values out of range raise `ApiError` with 400 naming the parameter."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

from cent_serve.model.sampling import SamplingParams
from cent_serve.request import RequestParams

MAX_N = 16
"""Choices per request at most."""
MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop`."""


class ApiError(Exception):
    """A client mistake: becomes `{"error": {...}}` with `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are accepted and ignored, as vLLM does

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    return_token_ids: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Union[bool, int, None] = None
    user: str | None = None
    arrival_s: float | None = None
    """cent-serve replay extension (virtual clock): the request's arrival in simulated seconds."""
    hold_until_s: float | None = None
    """cent-serve replay extension (virtual clock): start no round at or past this simulated
    time until the next request arrives (the replayer's next arrival; null releases)."""

    def to_params(self, default_max_tokens: int, room: int) -> RequestParams:
        """Checked options of one choice. `room` = context left after the prompt."""
        if not 1 <= self.n <= MAX_N:
            raise ApiError(f"n={self.n} is invalid: use 1..{MAX_N}", "n")
        if self.presence_penalty or self.frequency_penalty:
            raise ApiError("presence_penalty and frequency_penalty are not supported: leave them at 0",
                           "presence_penalty" if self.presence_penalty else "frequency_penalty")
        if self.logprobs not in (None, False, 0):
            raise ApiError("logprobs are not supported: leave logprobs unset", "logprobs")
        max_tokens = default_max_tokens if self.max_tokens is None else self.max_tokens
        if max_tokens < 1:
            raise ApiError(f"max_tokens={max_tokens} is invalid: use a positive integer", "max_tokens")
        if max_tokens > room:
            raise ApiError(f"max_tokens={max_tokens} does not fit: the prompt leaves {room} tokens of the "
                           "model's context; lower max_tokens or shorten the prompt", "max_tokens")
        if not 0 <= self.min_tokens <= max_tokens:
            raise ApiError(f"min_tokens={self.min_tokens} is invalid: use 0..max_tokens ({max_tokens})",
                           "min_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise ApiError(f"stop={self.stop!r} is invalid: give up to {MAX_STOP_STRINGS} non-empty strings",
                           "stop")
        try:
            sampling = SamplingParams(temperature=1.0 if self.temperature is None else self.temperature,
                                      top_p=1.0 if self.top_p is None else self.top_p,
                                      top_k=-1 if self.top_k is None else self.top_k, seed=self.seed)
        except ValueError as exc:
            raise ApiError(str(exc), str(exc).split("=", 1)[0]) from None
        return RequestParams(max_tokens=max_tokens, sampling=sampling, stop=tuple(stop),
                             stop_token_ids=tuple(self.stop_token_ids or ()), ignore_eos=self.ignore_eos,
                             min_tokens=self.min_tokens)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The chat template: one line per turn, then the assistant's cue. Random-weight presets
    have no template of their own; a checkpoint's Jinja template is not applied (yet)."""
    lines = [f"<|{m.role}|>\n{m.text()}" for m in messages]
    return "\n".join(lines) + "\n<|assistant|>\n"
