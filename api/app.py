"""The OpenAI-compatible HTTP front end (SERVING.md): completions, chat, models, health,
metrics and `/v1/cent/status`. Handlers validate and tokenize, hand requests to the
`EngineLoop`, and turn its `Delta`s into responses or SSE chunks."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import Metrics
from api.protocol import ApiError, ChatCompletionRequest, CompletionRequest, chat_prompt
from cent_serve.scheduler import QueueFull
from cent_serve.serving import Delta, EngineLoop

DISCONNECT_POLL_S = 0.25
"""How often a non-streaming handler checks whether its client is still there."""


def create_app(loop: EngineLoop, metrics: Metrics, api_key: str | None = None) -> FastAPI:
    eng = loop.engine
    cfg, tok = eng.cfg, eng.tokenizer
    model_name = cfg.model.name
    created = int(time.time())

    async def check_key(request: Request) -> None:
        """A dependency, not an HTTP middleware: BaseHTTPMiddleware hides client disconnects."""
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                raise ApiError("missing or wrong API key: send 'Authorization: Bearer <key>'", None, 401,
                               "authentication_error")

    app = FastAPI(title="cent-serve", version="0.1.0", dependencies=[Depends(check_key)])
    app.state.loop, app.state.metrics = loop, metrics

    # ------------------------------------------------------------------ errors

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _schema_error(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            err = ApiError(f"the body is not valid JSON: {first.get('msg')}", None, 400)
        else:
            param = ".".join(loc) or None
            err = ApiError(f"{param or 'body'}: {first.get('msg')} (got {first.get('input')!r})", param, 422)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        err = ApiError(str(exc.detail), None, exc.status_code, "not_found_error" if exc.status_code == 404
                       else "invalid_request_error")
        return JSONResponse(err.body(), status_code=exc.status_code)

    # ------------------------------------------------------------------ helpers

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(f"model {name!r} does not exist: this server serves {model_name!r}", "model", 404,
                           "not_found_error", "model_not_found")

    def to_ids(prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError("prompt is empty: give text or token ids", "prompt")
        out = []
        for p in prompts:
            if isinstance(p, str):
                if not p:
                    raise ApiError("prompt is empty: give text or token ids", "prompt")
                out.append(tok.encode(p))
            else:
                if not p:
                    raise ApiError("prompt is empty: give text or token ids", "prompt")
                bad = [t for t in p if not 0 <= t < cfg.model.vocab_size]
                if bad:
                    raise ApiError(f"prompt token id {bad[0]} is outside the vocabulary [0, {cfg.model.vocab_size})",
                                   "prompt")
                out.append(list(p))
        for ids in out:
            if len(ids) >= cfg.model.max_seq_len:
                raise ApiError(f"the prompt has {len(ids)} tokens; the model's context is {cfg.model.max_seq_len}: "
                               "shorten the prompt", "prompt", code="context_length_exceeded")
        return out

    async def start(body, prompts: list[list[int]], max_tokens: int | None) -> tuple[list, asyncio.Queue]:
        """Submit n choices per prompt; all or none are queued."""
        body.max_tokens = max_tokens
        per_prompt = [body.to_params(16, cfg.model.max_seq_len - len(p)) for p in prompts]  # checks n too
        plans = [(i * body.n + j, p, per_prompt[i]) for i, p in enumerate(prompts) for j in range(body.n)]
        q: asyncio.Queue = asyncio.Queue()
        reqs = []
        try:
            for index, ids, params in plans:
                if params.sampling.seed is not None and body.n > 1:  # distinct but reproducible choices
                    from dataclasses import replace
                    params = replace(params, sampling=replace(params.sampling, seed=params.sampling.seed + index))
                last = index == len(plans) - 1
                reqs.append(await loop.submit(ids, params, q, tag=index, arrival_s=body.arrival_s,
                                              hold_until_s=body.hold_until_s if last else None))
        except QueueFull as exc:
            abort_all(reqs)
            raise ApiError(str(exc), None, 429, "rate_limit_error", "queue_full") from None
        except ValueError as exc:
            abort_all(reqs)
            raise ApiError(str(exc), "arrival_s" if str(exc).startswith("arrival_s") else "prompt") from None
        return reqs, q

    def abort_all(reqs) -> None:
        for r in reqs:
            loop.abort(r.request_id)

    async def pace(delta: Delta) -> None:
        if delta.times_s:
            wait = loop.wall_delay_s(delta.times_s[-1])
            if wait > 0:
                await asyncio.sleep(wait)

    async def collect(raw: Request, reqs, q: asyncio.Queue) -> dict[int, dict]:
        """Wait for every choice; abort them all if the client goes away."""
        out = {r_index: {"token_ids": [], "text": "", "times": []} for r_index in range(len(reqs))}
        left = len(reqs)
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while left:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + DISCONNECT_POLL_S
                    if await raw.is_disconnected():
                        abort_all(reqs)
                        raise ApiError("client disconnected", None, 499)
                try:
                    index, d = await asyncio.wait_for(q.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    continue
                await pace(d)
                o = out[index]
                o["token_ids"] += d.token_ids
                o["text"] += d.text
                o["times"] += d.times_s
                if d.finished:
                    left -= 1
                    o.update(finish_reason=d.finish_reason, error=d.error, timing=d.timing)
        except asyncio.CancelledError:
            abort_all(reqs)
            raise
        failed = [o["error"] for o in out.values() if o.get("finish_reason") == "error"]
        if failed:
            raise ApiError(failed[0], None, 500, "server_error")
        return out

    def usage(prompts, outs) -> dict:
        p = sum(len(x) for x in prompts)
        c = sum(len(o["token_ids"]) for o in outs.values())
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

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

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def stream(raw: Request, reqs, q, prompts, chunk) -> AsyncIterator[str]:
        """SSE: one chunk per delta, the finish per choice, usage if asked, then [DONE]."""
        outs = {i: {"token_ids": []} for i in range(len(reqs))}
        left = len(reqs)
        try:
            if chunk.get("chat"):
                for i in range(len(reqs)):
                    yield sse(chunk["make"](i, {"role": "assistant", "content": ""}, None, None))
            while left:
                index, d = await q.get()
                await pace(d)
                outs[index]["token_ids"] += d.token_ids
                if d.error:
                    yield sse(ApiError(d.error, None, 500, "server_error").body())
                extra = {"cent": {"times_s": d.times_s}}
                if chunk["return_token_ids"]:
                    extra["token_ids"] = d.token_ids
                if d.text or d.token_ids:
                    yield sse(chunk["make"](index, d.text, None, extra))
                if d.finished:
                    left -= 1
                    yield sse(chunk["make"](index, "" if not chunk.get("chat") else {}, d.finish_reason,
                                            {"cent": d.timing}))
            if chunk["include_usage"]:
                yield sse(dict(chunk["base"], choices=[], usage=usage(prompts, outs)))
            yield "data: [DONE]\n\n"
        finally:
            if left:  # the client went away mid-stream
                abort_all(reqs)

    # ------------------------------------------------------------------ endpoints

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        check_model(body.model)
        prompts = to_ids(body.prompt)
        reqs, q = await start(body, prompts, body.max_tokens)
        rid = f"cmpl-{uuid.uuid4().hex}"
        base = dict(id=rid, object="text_completion", created=int(time.time()), model=model_name)
        if body.stream:
            def make(index, text, finish, extra):
                choice = dict(index=index, text=text, logprobs=None, finish_reason=finish, **(extra or {}))
                return dict(base, choices=[choice])
            spec = dict(base=base, make=make, include_usage=body.include_usage,
                        return_token_ids=body.return_token_ids)
            return StreamingResponse(stream(raw, reqs, q, prompts, spec), media_type="text/event-stream")
        outs = await collect(raw, reqs, q)
        choices = []
        for index in range(len(reqs)):
            o = outs[index]
            text = o["text"]
            if body.echo:
                text = tok.decode([t for t in prompts[index // body.n] if t != tok.bos_token_id]) + text
            c = dict(index=index, text=text, logprobs=None, finish_reason=o["finish_reason"], cent=o["timing"])
            if body.return_token_ids:
                c["token_ids"] = o["token_ids"]
            choices.append(c)
        return dict(base, choices=choices, usage=usage(prompts, outs),
                    cent=summary([c["cent"] for c in choices]))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        check_model(body.model)
        if not body.messages:
            raise ApiError("messages is empty: give at least one message", "messages")
        prompts = to_ids(chat_prompt(body.messages))
        reqs, q = await start(body, prompts, body.max_completion_tokens or body.max_tokens)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        base = dict(id=rid, object="chat.completion.chunk", created=int(time.time()), model=model_name)
        if body.stream:
            def make(index, delta, finish, extra):
                if isinstance(delta, str):
                    delta = {"content": delta}
                choice = dict(index=index, delta=delta, logprobs=None, finish_reason=finish, **(extra or {}))
                return dict(base, choices=[choice])
            spec = dict(base=base, make=make, include_usage=body.include_usage,
                        return_token_ids=body.return_token_ids, chat=True)
            return StreamingResponse(stream(raw, reqs, q, prompts, spec), media_type="text/event-stream")
        outs = await collect(raw, reqs, q)
        choices = []
        for index in range(len(reqs)):
            o = outs[index]
            c = dict(index=index, message={"role": "assistant", "content": o["text"]}, logprobs=None,
                     finish_reason=o["finish_reason"], cent=o["timing"])
            if body.return_token_ids:
                c["token_ids"] = o["token_ids"]
            choices.append(c)
        return dict(base, object="chat.completion", choices=choices, usage=usage(prompts, outs),
                    cent=summary([c["cent"] for c in choices]))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [dict(id=model_name, object="model", created=created,
                                                owned_by="cent-serve", root=model_name,
                                                max_model_len=cfg.model.max_seq_len)]}

    @app.get("/health")
    async def health():
        if not loop.is_alive():
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        if eng.recovering:
            return JSONResponse({"status": "degraded", "reason": "re-creating failed devices"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/cent/status")
    async def status():
        st, devices, fabrics = await loop.call(lambda e: (e.status(), e.device_stats(), e.fabric_stats()))
        return dict(st, devices=devices, fabric=fabrics, clock_mode=loop.clock, pace_factor=loop.pace_factor,
                    last_fault=loop.fault)

    @app.get("/metrics")
    async def prometheus():
        st, devices, fabrics = await loop.call(lambda e: (e.status(), e.device_stats(), e.fabric_stats()))
        return Response(metrics.render(st, devices, fabrics), media_type="text/plain; version=0.0.4")

    return app
