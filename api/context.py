"""What every handler shares: one `ApiContext` per app (the engine loop, the metrics, the config,
the tokenizer), built once by `create_app` and handed to handlers as the FastAPI dependency
`api_context`, and the helpers both generation endpoints use (the model check, prompts to token
ids, the engine's validation as API errors, SSE framing, usage and the `cent` summary).

Validation has one owner per kind: pydantic the schema, api/protocol.py each field's range,
`Engine.check_request` the prompt's ids and length against the context and KV (reached through
`ApiContext.check_request`). This module refuses only what must be refused before the engine
can look: no prompt at all, empty text, and text too long to be worth tokenizing."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field

from fastapi import Request

from api.chat import template_inputs
from api.checks import ApiError, short
from api.metrics import Metrics
from cent_serve.config import CentConfig
from cent_serve.config.hf_config import hub_repo_id
from cent_serve.engine import Engine
from cent_serve.model.sampling import checkpoint_sampling_defaults
from cent_serve.model.tokenizer import Tokenizer, cut_ids, encode_chat, encode_truncated
from cent_serve.request import RequestRefused
from cent_serve.serving import Delta, EngineLoop

log = logging.getLogger("cent.server")

MAX_CHARS_PER_TOKEN = 32
"""A text prompt longer than this many characters per context token cannot fit (Llama's longest
vocabulary entries have 16), so it is refused before the tokenizer runs on the event loop."""


@dataclass(frozen=True)
class FieldNames:
    """The request fields an error names. The engine speaks of `prompt` and `max_tokens`; chat's
    prompt is its `messages`, and its limit may come from `max_completion_tokens`."""

    prompt: str = "prompt"
    max_tokens: str = "max_tokens"

    def name(self, engine_param: str | None) -> str | None:
        """The client's field for a `RequestRefused.param` (other params pass through)."""
        return {"prompt": self.prompt, "max_tokens": self.max_tokens}.get(engine_param, engine_param)


def refusal(exc: RequestRefused, fields: FieldNames) -> ApiError:
    """An engine refusal as a 400 naming the client's field: OpenAI's `context_length_exceeded`
    for a prompt or limit past the context, the engine's reason as the code otherwise."""
    code = "context_length_exceeded" if exc.reason == "context_exceeded" else exc.reason
    message = str(exc)
    if exc.param == "max_tokens" and fields.max_tokens != "max_tokens":
        # the engine knows one limit; the client set it as max_completion_tokens: say so in the text too
        message = message.replace("max_tokens", fields.max_tokens)
    return ApiError(message, fields.name(exc.param), code=code)


@dataclass(frozen=True)
class ApiContext:
    """The app's shared state; immutable, so handlers on the event loop share it without locks.
    Everything that changes lives behind `loop` (the engine thread) or in `metrics`."""

    loop: EngineLoop
    metrics: Metrics
    cfg: CentConfig
    tokenizer: Tokenizer
    model_name: str
    created: int
    """When the server started (unix seconds): `/v1/models`' `created`."""
    sampling_defaults: dict = field(default_factory=dict)
    """The sampling a request that does not say takes: the checkpoint's generation_config.json
    temperature, top_p, top_k, repetition_penalty and min_p, as vLLM's `--generation-config auto` (its
    default) takes them."""

    @classmethod
    def build(cls, loop: EngineLoop, metrics: Metrics) -> ApiContext:
        eng = loop.engine
        defaults, skipped = checkpoint_sampling_defaults(eng.cfg.model.checkpoint)
        if defaults:
            log.info("a request's default sampling is the checkpoint's generation_config.json: %s (as vLLM's "
                     "--generation-config auto; a request's own values win)",
                     ", ".join(f"{k}={v}" for k, v in defaults.items()))
        if skipped:
            log.warning("generation_config.json: %s: not applied (vLLM would take it as a default)", "; ".join(skipped))
        if getattr(eng.tokenizer, "has_own_chat_template", True) is False:  # a base model, most likely
            log.warning("%s has no chat template (tokenizer_config.json, chat_template.jinja): /v1/chat/completions "
                        "renders messages with this server's plain default (vLLM refuses chat for such a model); "
                        "use /v1/completions, or add the template", eng.cfg.model.checkpoint)
        return cls(loop, metrics, eng.cfg, eng.tokenizer, eng.cfg.model.name, int(time.time()), defaults)

    @property
    def engine(self) -> Engine:
        return self.loop.engine

    def check_model(self, name: str) -> None:
        """Raise ApiError 404 unless `name` is the model this server serves: its id, or for a checkpoint
        the directory (or its config.json) as given to --model or as an absolute path (vLLM serves a model
        by the path it was given, so `vllm bench serve --model DIR` names it so), and a snapshot of the
        Hugging Face cache by its repository id, ORG/NAME, as vLLM serves a model from the Hub."""
        ckpt = self.cfg.model.checkpoint
        if name != self.model_name and not (ckpt and name.rstrip("/") and _same_path(name, ckpt)) \
                and not (ckpt and name == hub_repo_id(ckpt)):
            raise ApiError(f"model {short(name)} does not exist: this server serves {self.model_name!r}", "model",
                           404, "not_found_error", "model_not_found")

    def to_ids(self, prompt, param: str = "prompt", add_bos: bool = True, keep: int | None = None,
               side: str | None = None) -> list[list[int]]:
        """A `prompt` (text, token ids, or a list of either) as one id list per prompt, each cut to
        `keep` tokens (`truncate_prompt_tokens`; None: whole) as vLLM cuts it: token ids to their last
        `keep` (their first with `side` "right", vLLM's `truncation_side`), text by `encode_truncated`
        (the BOS the tokenizer adds stays unless `side` is given). Refuses
        (ApiError 400 naming `param`) no prompt at all, an empty string as the prompt (vLLM's
        completions refuse `""` alone: vllm/entrypoints/openai/completion/protocol.py
        `validate_prompt_and_prompt_embeds`) and text longer than the context could hold. An empty
        string in a list is encoded as vLLM encodes it: a lone BOS where the tokenizer adds one (served),
        else no token, which the engine refuses as vLLM's does ("The decoder prompt cannot be empty",
        vllm/v1/engine/input_processor.py); token ids and lengths are the engine's to check
        (`check_request`)."""
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError("prompt is empty: give text or token ids", param, code="invalid_prompt")
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError("prompt is empty: give text or token ids", param, code="invalid_prompt")
        return [self._encode(p, param, add_bos, keep, side) if isinstance(p, str) else cut_ids(list(p), keep, side)
                for p in prompts]

    def _encode(self, text: str, param: str, add_bos: bool = True, keep: int | None = None,
                side: str | None = None) -> list[int]:
        self.check_chars(len(text), param)
        return encode_truncated(self.tokenizer, text, add_bos, keep, side)

    def check_chars(self, chars: int, param: str) -> None:
        """A DoS guard: refuse text the context cannot hold without tokenizing it all."""
        context = self.cfg.model.max_seq_len
        if chars > MAX_CHARS_PER_TOKEN * context:
            raise ApiError(f"the prompt has {chars} characters; the model's context is {context} tokens: "
                           "shorten the prompt", param, code="context_length_exceeded")

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True, param: str = "messages",
                 continue_final_message: bool = False, template_kwargs: dict | None = None,
                 add_special_tokens: bool = False, keep: int | None = None, side: str | None = None,
                 tools: list[dict] | None = None, documents: list[dict] | None = None) -> list[int]:
        """A chat's token ids: the model's chat template rendered (given `tools` and `documents`; the template
        writes the BOS; `add_special_tokens`, vLLM's, adds those the tokenizer adds to any text), at most `keep` of
        them from `side` (`encode_truncated`; None: all), with `template_kwargs` (vLLM's
        `chat_template_kwargs`) as more template variables, merged with the request's fields as vLLM merges
        them (`template_inputs`, which refuses the kwargs vLLM fails), then encoded (tokenizer.py). A template
        that refuses the messages is a 400 naming `param`; `continue_final_message` with
        `add_generation_prompt` a 400 naming the first."""
        given = template_inputs(template_kwargs, tools, documents, add_special_tokens)
        if not messages:
            raise ApiError(f"{param} is empty: give at least one message", param)
        if continue_final_message and add_generation_prompt:
            raise ApiError("continue_final_message=true needs add_generation_prompt=false (they exclude each "
                           "other, as in vLLM): send \"add_generation_prompt\": false", "continue_final_message")
        self.check_chars(sum(len(m["content"]) for m in messages), param)
        try:
            return encode_chat(self.tokenizer, messages, add_generation_prompt, continue_final_message,
                               given.variables, given.add_special_tokens, keep, side, given.tools, given.documents)
        except ValueError as exc:
            raise ApiError(str(exc), param) from None

    def check_request(self, prompt_ids: list[int], max_tokens: int, fields: FieldNames) -> None:
        """`Engine.check_request` (the one validator of a prompt and its length), its refusal as
        ApiError 400 naming `fields`. Pure (reads the config), so it runs on the event loop; the
        engine checks again when it queues the request, and then finds nothing."""
        try:
            self.engine.check_request(prompt_ids, max_tokens)
        except RequestRefused as exc:
            raise refusal(exc, fields) from None

    def abort_all(self, reqs) -> None:
        """Abort every request in `reqs` (a request's choices live and die together)."""
        for r in reqs:
            self.loop.abort(r.request_id)

    def due_in(self, delta: Delta) -> float:
        """Paced clock: the wall seconds until `delta` is due, its last token's simulated time (0 or
        less: due now; always 0 on the virtual clock)."""
        return self.loop.wall_delay_s(delta.times_s[-1]) if delta.times_s else 0.0

    async def pace(self, delta: Delta) -> None:
        """Paced clock: hold `delta` back until it is due (`due_in`; a no-op on the virtual clock)."""
        wait = self.due_in(delta)
        if wait > 0:
            await asyncio.sleep(wait)

    async def release_hold(self, body) -> None:
        """A refused replay request still moves the replayer's clock hold on (or the engine
        would wait for it until the hold expires)."""
        if getattr(body, "hold_until_s", None) is not None and body.valid_hold() and self.loop.clock == "virtual":
            await self.loop.call(lambda e: self.loop.set_hold(body.hold_until_s))


def api_context(raw: Request) -> ApiContext:
    """The FastAPI dependency handlers get their context from (set by `create_app`)."""
    return raw.app.state.ctx


def sse(obj) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj)}\n\n"


USAGE_DETAILS = {"prompt_tokens_details": None, "completion_tokens_details": None}
"""The details a whole (not streamed) response's `usage` carries, as vLLM 0.33 sends them by default:
null `prompt_tokens_details` (its `cached_tokens` only with --enable-prompt-tokens-details; no prefix
cache is modelled here, so none are cached) and null `completion_tokens_details` (reasoning tokens, only
with a reasoning parser). Its stream's usage chunk leaves both out (serialized without nulls).
Source: vllm/entrypoints/serve/engine/protocol.py (UsageInfo) and the completion and chat serving.py."""


def usage(prompts: list[list[int]], outs: dict[int, dict], details: bool = False) -> dict:
    """OpenAI's `usage`: each prompt's tokens once (however many choices it has), completion
    tokens over every choice; with `details`, vLLM's `USAGE_DETAILS` (a whole response's)."""
    p = sum(len(x) for x in prompts)
    c = sum(len(o["token_ids"]) for o in outs.values())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, **(USAGE_DETAILS if details else {})}


def summary(timings: list[dict]) -> dict:
    """The response-level `cent` field: one choice's timing, or the span of all of them."""
    if len(timings) == 1:
        return timings[0]
    firsts = [t["first_token_s"] for t in timings if t.get("first_token_s") is not None]
    arrival = min(t["arrival_s"] for t in timings)
    finish = max(t["finish_s"] for t in timings if t.get("finish_s") is not None)
    return dict(arrival_s=arrival, first_token_s=min(firsts) if firsts else None, finish_s=finish,
                ttft_s=min(firsts) - arrival if firsts else None, e2e_s=finish - arrival,
                energy_mj=sum(t["energy_mj"] for t in timings), choices=len(timings))


def _same_path(name: str, directory: str) -> bool:
    """Whether `name` names `directory`: as given, or as an absolute path (from this process's working
    directory), or its `config.json` so (`--model DIR/config.json` serves DIR, and a client is given the
    same string). Strings only: a client's name never walks the filesystem (resolving a name of
    300,000 components held the event loop ~10 s; a symlink loop raised RuntimeError, a 500)."""
    if name == "config.json" or name.endswith("/config.json"):
        name = name.removesuffix("config.json") or "."
    if name.rstrip("/") == directory.rstrip("/"):
        return True
    if len(name) > 4096 or "\0" in name:  # longer than any path (PATH_MAX), or no path at all
        return False
    absolute = os.path.normpath(os.path.abspath(name))
    return absolute in (os.path.normpath(os.path.abspath(directory)), os.path.realpath(directory))
