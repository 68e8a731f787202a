"""The HTTP endpoints (docs/serving.md): completions and chat (two `Endpoint`s over the one
generation path, api/generate.py), models, health, `/v1/cent/status` and `/metrics`. Handlers
take the app's `ApiContext` as a dependency; `create_app` includes `router`. Handlers carry comments,
not docstrings: FastAPI would publish a docstring as the operation's description in /openapi.json."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api.context import ApiContext, FieldNames, api_context
from api.generate import Endpoint, Prompts, generate
from api.protocol import ApiError, ChatCompletionRequest, CompletionRequest, chat_prompt

DEFAULT_MAX_TOKENS = 16
"""Completions without max_tokens get this many (OpenAI's completions default), at most the
context the prompt leaves. Chat without a limit gets the rest of the context instead, as vLLM's
chat endpoint does. `server.max_tokens_default`, when set, replaces both defaults."""

Ctx = Annotated[ApiContext, Depends(api_context)]
router = APIRouter()


class Completions(Endpoint):
    """`/v1/completions`: the prompt is given (text or ids); a choice is `text`."""

    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def prompts(self, ctx: ApiContext, body: CompletionRequest) -> Prompts:
        default = ctx.cfg.server.max_tokens_default or DEFAULT_MAX_TOKENS
        return Prompts(ctx.to_ids(body.prompt), body.max_tokens, default)

    def piece(self, text: str) -> dict:
        return {"text": text}

    def end(self) -> dict:
        return {"text": ""}

    def whole(self, ctx: ApiContext, body: CompletionRequest, prompt_ids: list[int], text: str) -> dict:
        if body.echo:  # the prompt as text, without the BOS the tokenizer added
            tok = ctx.tokenizer
            text = tok.decode([t for t in prompt_ids if t != tok.bos_token_id]) + text
        return {"text": text}


class Chat(Endpoint):
    """`/v1/chat/completions`: the prompt is the messages in the chat template; a choice is an
    assistant `message`, a chunk a `delta`."""

    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def prompts(self, ctx: ApiContext, body: ChatCompletionRequest) -> Prompts:
        if not body.messages:
            raise ApiError("messages is empty: give at least one message", "messages")
        newer = body.max_completion_tokens is not None  # OpenAI's newer name wins
        fields = FieldNames("messages", "max_completion_tokens" if newer else "max_tokens")
        # no limit given: the rest of the context, as vLLM's chat endpoint (DEFAULT_MAX_TOKENS)
        default = ctx.cfg.server.max_tokens_default or ctx.cfg.model.max_seq_len
        return Prompts(ctx.to_ids(chat_prompt(body.messages), "messages"),
                       body.max_completion_tokens if newer else body.max_tokens, default, fields)

    def opening(self) -> dict:
        return {"delta": {"role": "assistant", "content": ""}}

    def piece(self, text: str) -> dict:
        return {"delta": {"content": text}}

    def end(self) -> dict:
        return {"delta": {}}

    def whole(self, ctx: ApiContext, body: ChatCompletionRequest, prompt_ids: list[int], text: str) -> dict:
        return {"message": {"role": "assistant", "content": text}}


COMPLETIONS, CHAT = Completions(), Chat()  # stateless: one of each serves every request


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request, ctx: Ctx):
    return await generate(ctx, raw, body, COMPLETIONS)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request, ctx: Ctx):
    return await generate(ctx, raw, body, CHAT)


@router.get("/v1/models")
async def models(ctx: Ctx):
    name = ctx.model_name
    return {"object": "list", "data": [dict(id=name, object="model", created=ctx.created, owned_by="cent-serve",
                                            root=name, max_model_len=ctx.cfg.model.max_seq_len)]}


@router.get("/health")
async def health(ctx: Ctx):
    # 503, with why, while the engine cannot serve in full (stopped, devices down or re-created)
    eng = ctx.engine
    if not ctx.loop.is_alive():
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    if eng.recovering or eng.degraded:
        reason = eng.degraded or "re-creating failed devices"
        return JSONResponse({"status": "degraded", "reason": reason}, status_code=503)
    return {"status": "ok"}


async def _snapshot(ctx: ApiContext):
    """(loop status, device stats, fabric stats), read together on the engine thread between
    rounds, so the three describe the same moment."""
    loop = ctx.loop
    return await loop.call(lambda e: (loop.status(), e.device_stats(), e.fabric_stats()))


@router.get("/v1/cent/status")
async def status(ctx: Ctx):
    st, devices, fabrics = await _snapshot(ctx)
    return dict(st, devices=devices, fabric=fabrics)


@router.get("/metrics")
async def prometheus(ctx: Ctx):
    st, devices, fabrics = await _snapshot(ctx)
    return Response(ctx.metrics.render(st, devices, fabrics), media_type="text/plain; version=0.0.4")
