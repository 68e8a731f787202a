"""The HTTP endpoints (docs/serving.md): completions and chat (two `Endpoint`s over the one
generation path, api/generate.py), models, vLLM's `/tokenize` and `/detokenize`, `/version`, `/ping`,
health, `/v1/cent/status` and `/metrics` (HEAD wherever GET: `read`). Handlers
take the app's `ApiContext` as a dependency; `create_app` includes `router`. Handlers carry comments,
not docstrings: FastAPI would publish a docstring as the operation's description in /openapi.json."""
from __future__ import annotations

import asyncio
import shlex
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api.chat import chat_messages
from api.checks import ApiError
from api.context import ApiContext, FieldNames, api_context
from api.generate import Endpoint, Prompts, generate, with_prompt
from api.logprobs import chat_logprobs, completion_logprobs, piece
from api.protocol import (DEFAULT_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                          ErrorResponse, TokenizeRequest)
from cent_serve import __version__
from cent_serve.config import config_to_dict
from cent_serve.model.tokenizer import ByteTokenizer

Ctx = Annotated[ApiContext, Depends(api_context)]
router = APIRouter()


class Completions(Endpoint):
    """`/v1/completions`: the prompt is given (text or ids); a choice is `text`."""

    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"
    prompt_on_choice = True

    def prompts(self, ctx: ApiContext, body: CompletionRequest, keep: int | None = None) -> Prompts:
        default = ctx.cfg.server.max_tokens_default or DEFAULT_MAX_TOKENS
        ids = ctx.to_ids(body.prompt, add_bos=body.add_special_tokens, keep=keep, side=body.truncation_side)
        if body.echo_only:  # the prompt's pass makes one token, which `generate` drops (vLLM's way)
            if body.min_tokens:
                raise ApiError(f"min_tokens={body.min_tokens} is invalid with echo and max_tokens=0, which generate "
                               "nothing: use 0", "min_tokens")
            return Prompts(ids, 1, default, echo_only=True)
        return Prompts(ids, body.max_tokens, default)

    def piece(self, text: str) -> dict:
        return {"text": text}

    def end(self) -> dict:
        return {"text": ""}

    def logprobs(self, ctx: ApiContext, entries, token_ids: list[int], offset: int, output_from: int = 0,
                 skip_special_tokens: bool = True) -> dict:
        return completion_logprobs(ctx.tokenizer, entries, token_ids, offset, output_from, skip_special_tokens)

    def echo(self, ctx: ApiContext, body: CompletionRequest, prompt_ids: list[int]) -> str | None:
        if not body.echo:
            return None
        tok = ctx.tokenizer  # the prompt as text, without the BOS the tokenizer added
        return tok.decode([t for t in prompt_ids if t != tok.bos_token_id])

    def whole(self, ctx: ApiContext, body: CompletionRequest, prompt_ids: list[int], out: dict) -> dict:
        echoed = self.echo(ctx, body, prompt_ids)
        fields = {"text": (echoed or "") + out["text"]}
        if out.get("logprobs") is not None:
            ids, entries = with_prompt(echoed, prompt_ids, out.get("prompt_logprobs"), out["token_ids"],
                                       out["logprobs"])
            fields["logprobs"] = completion_logprobs(ctx.tokenizer, entries, ids, 0, len(ids) - len(out["token_ids"]),
                                                     body.skips_special_tokens)
        return fields


MESSAGE_DEFAULTS = dict.fromkeys(("refusal", "annotations", "audio", "function_call", "reasoning"))
"""The keys of a chat reply's message besides role and content, null, as vLLM 0.33 sends them without
tool or reasoning parsers (vllm/entrypoints/openai/chat_completion/protocol.py, ChatMessage). It drops
`tool_calls` when the list is empty, as OpenAI does; so does this server, which calls no tools."""


class Chat(Endpoint):
    """`/v1/chat/completions`: the prompt is the messages in the chat template; a choice is an
    assistant `message`, a chunk a `delta`."""

    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"
    prompt_on_choice = False
    chunk_usage_extra = {"completion_tokens_details": None}

    def prompts(self, ctx: ApiContext, body: ChatCompletionRequest, keep: int | None = None) -> Prompts:
        newer = body.max_completion_tokens is not None  # OpenAI's newer name wins
        fields = FieldNames("messages", "max_completion_tokens" if newer else "max_tokens")
        # no limit given: the rest of the context, as vLLM's chat endpoint (DEFAULT_MAX_TOKENS)
        default = ctx.cfg.server.max_tokens_default or ctx.cfg.model.max_seq_len
        ids = ctx.chat_ids(chat_messages(body.messages), body.add_generation_prompt,
                           continue_final_message=body.continue_final_message,
                           template_kwargs=body.template_variables(), add_special_tokens=body.add_special_tokens,
                           keep=keep, side=body.truncation_side, tools=body.template_tools(),
                           documents=body.documents)
        return Prompts([ids], body.max_completion_tokens if newer else body.max_tokens, default, fields)

    def opening(self, body: ChatCompletionRequest) -> list[dict]:
        # the role, then with `echo` the last message's text (vLLM sends it as its own chunk)
        first = [{"delta": {"role": body.reply_role(), "content": ""}}]
        echoed = body.echoed()
        return first + [self.piece(echoed)] if echoed else first

    def piece(self, text: str) -> dict:
        return {"delta": {"content": text}}

    def end(self) -> dict:
        return {"delta": {}}

    def logprobs(self, ctx: ApiContext, entries, token_ids: list[int], offset: int, output_from: int = 0,
                 skip_special_tokens: bool = True) -> dict:
        return chat_logprobs(ctx.tokenizer, entries)

    def whole(self, ctx: ApiContext, body: ChatCompletionRequest, prompt_ids: list[int], out: dict) -> dict:
        fields = {"message": {"role": body.reply_role(), "content": body.echoed() + out["text"], **MESSAGE_DEFAULTS}}
        if out.get("logprobs") is not None:
            fields["logprobs"] = chat_logprobs(ctx.tokenizer, out["logprobs"])
        return fields


COMPLETIONS, CHAT = Completions(), Chat()  # stateless: one of each serves every request


def errors(*codes: int) -> dict:
    """The OpenAPI `responses` of an endpoint: each error code with OpenAI's error body."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


ERROR_TEXT = {400: "invalid request: a value out of range, a wrong type or a missing field (the message names it)",
              401: "missing or wrong API key", 404: "no such model", 413: "body too large", 415: "compressed body",
              429: "queue full (Retry-After)", 500: "the emulated devices failed",
              503: "engine stopped, or no replica can serve soon (Retry-After; status and metrics: busy in a "
                   "round, no snapshot yet)"}
GENERATION_ERRORS = errors(400, 401, 404, 413, 415, 429, 500, 503)


def read(path: str, **kw):
    """A GET route that HEAD serves too (load balancers and health probes send HEAD), both in
    the OpenAPI schema under their own operation ids."""
    def register(fn):
        router.head(path, operation_id=f"{fn.__name__}_head", **kw)(fn)
        return router.get(path, operation_id=fn.__name__, **kw)(fn)
    return register


@router.post("/v1/completions", responses=GENERATION_ERRORS)
async def completions(body: CompletionRequest, raw: Request, ctx: Ctx):
    return await generate(ctx, raw, body, COMPLETIONS)


@router.post("/v1/chat/completions", responses=GENERATION_ERRORS)
async def chat_completions(body: ChatCompletionRequest, raw: Request, ctx: Ctx):
    return await generate(ctx, raw, body, CHAT)


def model_card(ctx: ApiContext) -> dict:
    """The served model as `/v1/models` lists it. `root` is where its tokenizer is: the checkpoint
    directory, or for a preset the model name. `cent.tokenizer` is the checkpoint directory when it
    holds a tokenizer.json, else the command that writes the byte-level tokenizer the server uses
    in a form a client can load (`--tokenizer DIR` of vLLM's bench, guidellm's
    `--tokenizer kind=hf_auto,model=DIR`); `cent.tokenizer_kind` says which: `checkpoint`, `byte`
    (a preset's) or `byte_stand_in` (for a checkpoint directory without tokenizer.json)."""
    m = ctx.cfg.model
    byte_level = isinstance(ctx.tokenizer, ByteTokenizer)
    hint = f"cent tokenizer export DIR --model {shlex.quote(m.checkpoint or m.name)}" if byte_level else m.checkpoint
    kind = ("byte_stand_in" if m.checkpoint else "byte") if byte_level else "checkpoint"
    return dict(id=ctx.model_name, object="model", created=ctx.created, owned_by="cent-serve",
                root=m.checkpoint or ctx.model_name, parent=None, max_model_len=m.max_seq_len,
                permission=[], cent={"tokenizer": hint, "tokenizer_kind": kind, "vocab_size": m.vocab_size})


@read("/v1/models", responses=errors(401))
async def models(ctx: Ctx):
    return {"object": "list", "data": [model_card(ctx)]}


@read("/v1/models/{model:path}", responses=errors(401, 404))
async def model(model: str, ctx: Ctx):
    ctx.check_model(model)
    return model_card(ctx)


@router.post("/tokenize", responses=errors(400, 401, 404, 413, 415))
async def tokenize(body: TokenizeRequest, ctx: Ctx):
    # vLLM's: a prompt (BOS first unless add_special_tokens is false) or messages (the chat template)
    if body.model is not None:
        ctx.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError("give either prompt or messages", "prompt")
    if body.messages is not None:
        ids = ctx.chat_ids(chat_messages(body.messages), body.add_generation_prompt,
                           continue_final_message=body.continue_final_message,
                           template_kwargs=body.chat_template_kwargs, add_special_tokens=bool(body.add_special_tokens))
    else:
        ctx.check_chars(len(body.prompt), "prompt")
        ids = ctx.tokenizer.encode(body.prompt, add_bos=body.add_special_tokens is not False)
    strs = [piece(ctx.tokenizer, t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": ctx.cfg.model.max_seq_len, "tokens": ids, "token_strs": strs}


@router.post("/detokenize", responses=errors(400, 401, 404, 413, 415))
async def detokenize(body: DetokenizeRequest, ctx: Ctx):
    if body.model is not None:
        ctx.check_model(body.model)
    vocab = ctx.cfg.model.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise ApiError(f"token id {bad} is outside the vocabulary [0, {vocab}): give ids the model knows", "tokens")
    # special tokens kept, as vLLM's /detokenize keeps them (it decodes with transformers' default)
    return {"prompt": ctx.tokenizer.decode(body.tokens, skip_special_tokens=False)}


@read("/version", responses=errors(401))
async def version():
    return {"version": __version__}


UNHEALTHY = {503: {"description": "engine stopped, no replica up, a stalled round or the Ray cluster's head (or this "
                                  "node's raylet) silent"}}


@read("/ping", responses=UNHEALTHY)
@router.post("/ping", operation_id="ping_post", responses=UNHEALTHY)
async def ping(ctx: Ctx):
    # liveness without a key, as /health (SageMaker's and vLLM's /ping)
    return await health(ctx)


@read("/health", responses=UNHEALTHY)
async def health(ctx: Ctx):
    # 503, with why, while the engine cannot serve (stopped, the cluster's head or this node's raylet silent, a
    # stalled round, no replica up); 200 "degraded" while some replicas are down and another serves (docs/serving.md)
    eng, loop = ctx.engine, ctx.loop
    if not loop.is_alive():
        return JSONResponse(dict(status="engine stopped", **({"reason": loop.stopped_by} if loop.stopped_by else {})),
                            status_code=503)
    cluster = loop.watch.problem if loop.watch is not None else None
    # before the devices: a replica re-created on a cluster whose head (or this node's raylet) is gone never comes back
    if cluster:
        return JSONResponse({"status": "degraded", "reason": cluster}, status_code=503)
    running, timeout_s = loop.round_running_s(), ctx.cfg.server.round_timeout_s
    if running > stalled_round_s(timeout_s):  # past the wait that should have ended it: every replica waits on it
        return JSONResponse({"status": "degraded", "reason": f"a round has run {running:.0f} s, past "
                             f"server.round_timeout_s={timeout_s:g}: a device or the switch may have stopped or hung"},
                            status_code=503)
    if eng.recovering:
        return replicas_down(eng.replicas)
    return {"status": "ok"}


def replicas_down(replicas) -> JSONResponse:
    """/health while a replica is down: "degraded" with why and the replicas that serve; 200 while one
    does, as it serves every request (those of the down ones are queued again onto it), else 503. A
    load balancer's or Kubernetes' probe that takes the server out of rotation, or restarts it, on a
    non-2xx then keeps a server that serves; vLLM's /health is 200 while its engine lives, 503 once
    it is dead (vllm/entrypoints/serve/instrumentator/health.py), and Ray Serve restarts a failed
    replica alone while the others serve (its "Add End-to-End Fault Tolerance" guide)."""
    serving = [r for r in range(len(replicas)) if replicas.is_up(r)]
    reason = replicas.degraded or "re-creating failed devices"  # None if the replica came back meanwhile
    return JSONResponse({"status": "degraded", "reason": reason, "replicas_serving": serving,
                         "replicas": len(replicas)}, status_code=200 if serving else 503)


STALLED_ROUND_S = 120.0
"""The shortest run (wall seconds) after which /health calls a round stalled, whatever the round
timeout (timing-only and tiny models' rounds take milliseconds, full numerics on a busy machine
seconds): twice vLLM's engine iteration timeout, so a liveness probe does not restart a server in a
long round. `stalled_round_s` gives the threshold."""


def stalled_round_s(round_timeout_s: float) -> float:
    """How long (wall seconds) a round runs before /health says degraded: `server.round_timeout_s`,
    at least STALLED_ROUND_S. The timeout is what the user says a round may take (docs/serving.md:
    keep it above the longest round), so a shorter round may be a healthy one: calling it degraded
    (at 120 s, as /health did whatever the timeout) let a liveness probe restart the server, ending
    every replica's requests, in a round the user expects. On Ray a device that hangs is caught by the
    timeout itself, which fails the round and re-creates its replica (/health then says degraded while
    it comes back); a round that runs past it outlived the wait meant to end it, and on the local
    executor, where no timeout ends a round, one that runs this long holds the only engine."""
    return max(STALLED_ROUND_S, round_timeout_s)
SNAPSHOT_WAIT_S = 5.0
"""Longest a status or metrics read waits for the engine thread before it serves the last snapshot
(Prometheus gives a scrape 10 s)."""


def _read_snapshot(loop, engine) -> tuple[dict, list[dict], list[dict]]:
    """(loop status with the devices' joules by term, device stats, fabric stats) on the engine thread:
    one stats call a replica (`Engine.stats_now`), then the status, which counts a replica that call
    found gone. Its `snapshot_age_s`: 0, or while a replica's Ray devices are slow to answer, the age
    of the oldest figures served for them (`RayExecutor.figures_age_s`)."""
    devices, fabrics, terms = engine.stats_now(scrape=True)
    age_s = max([getattr(ex, "figures_age_s", 0.0) for ex in engine.executors if ex is not None], default=0.0)
    return dict(loop.status(), energy_by_term_j=terms, snapshot_age_s=round(age_s, 1)), devices, fabrics


async def _snapshot(ctx: ApiContext):
    """(loop status, device stats, fabric stats), read together on the engine thread between
    rounds, so the three describe the same moment. While a round holds the thread past
    SNAPSHOT_WAIT_S, the last snapshot, its status saying how old (`snapshot_age_s`); 503 if none."""
    loop = ctx.loop
    if loop.snapshot_task is None or loop.snapshot_task.done():
        async def read():
            got = await loop.call(lambda e: _read_snapshot(loop, e))
            loop.snapshot = (time.monotonic(), got)
            return got
        loop.snapshot_task = asyncio.ensure_future(read())
        # its error is every waiter's; one that comes after they all gave up is read here, not logged as lost
        loop.snapshot_task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        st, devices, fabrics = await asyncio.wait_for(asyncio.shield(loop.snapshot_task), SNAPSHOT_WAIT_S)
        return st, devices, fabrics
    except asyncio.TimeoutError:
        running = loop.round_running_s()
        held = f"in a round for {running:.0f} s" if running else "busy (between rounds: a device check)"
        if loop.snapshot is None:
            raise ApiError(f"the engine thread is {held} and there is no earlier snapshot: retry (a device may have "
                           "stopped or hung; /health says)", None, 503, "server_error", "engine_busy") from None
        at, (st, devices, fabrics) = loop.snapshot
        return dict(st, snapshot_age_s=round(time.monotonic() - at + st["snapshot_age_s"], 1)), devices, fabrics


@read("/v1/cent/status", responses=errors(401, 503))
async def status(ctx: Ctx):
    st, devices, fabrics = await _snapshot(ctx)
    return dict(st, devices=devices, fabric=fabrics)


@read("/v1/cent/config", responses=errors(401))
async def config(ctx: Ctx):
    """The server's resolved config, as a results config.json records it (the API key redacted): a
    `--url` replay writes it beside its results, so `--config` reruns them in-process."""
    return config_to_dict(ctx.cfg)


@read("/metrics", responses=errors(401, 503))
async def prometheus(ctx: Ctx):
    st, devices, fabrics = await _snapshot(ctx)
    return Response(ctx.metrics.render(st, devices, fabrics), media_type="text/plain; version=0.0.4")
