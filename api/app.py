"""The OpenAI-compatible HTTP front end (docs/serving.md): completions, chat, models, health,
metrics and `/v1/cent/status`. Handlers validate and tokenize, hand requests to the
`EngineLoop`, and turn its `Delta`s into responses or SSE chunks.

Every error is OpenAI's error JSON. With an API key every path but `/health` needs it,
`/metrics` included (Prometheus sends it with `authorization: {credentials: ...}`): the
`Guard` middleware checks it before any body is read. Each generation request is counted
once, when it ends, in `cent:requests_total{outcome, reason}` (api/metrics.py).

The engine thread never waits for a client: it hands each `Delta` to the request's
unbounded asyncio queue with `call_soon_threadsafe`; a client that reads slowly only
slows its own response (uvicorn's flow control pauses that handler)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from api.errors import EventStream, install_error_handlers, record, record_finished
from api.guard import Guard
from api.metrics import Metrics
from api.protocol import ApiError, ChatCompletionRequest, CompletionRequest, chat_prompt, short
from cent_serve.scheduler import QueueFull
from cent_serve import __version__
from cent_serve.serving import Delta, EngineLoop, EngineStopped

DEFAULT_MAX_TOKENS = 16
"""Requests without max_tokens get this many (OpenAI's completions default), at most the context
the prompt leaves. vLLM gives chat the rest of the context instead; with random-weight models that
mostly means hundreds of tokens of noise, so chat keeps 16 here too."""
DISCONNECT_POLL_S = 0.25
"""How often a non-streaming handler checks whether its client is still there."""
MAX_CHARS_PER_TOKEN = 32
"""A text prompt longer than this many characters per context token cannot fit (Llama's longest
vocabulary entries have 16), so it is refused before the tokenizer runs on the event loop."""
RETRY_AFTER_S = 1
"""`Retry-After` of a 429 (seconds): a small constant, not an estimate. The queue drains at
engine speed, which in virtual mode is far faster than a client's retry loop; clients that
honour the header (the `openai` client does) back off this long."""


def _serve_docs_offline(app: FastAPI) -> None:
    """`/docs`: Swagger UI from the `swagger-ui-bundle` package, not a CDN (the server may run with
    no network). The schema itself is `/openapi.json`."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cent-serve API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")


def create_app(loop: EngineLoop, metrics: Metrics, api_key: str | None = None,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    eng = loop.engine
    cfg, tok = eng.cfg, eng.tokenizer
    model_name = cfg.model.name
    created = int(time.time())

    app = FastAPI(title="cent-serve", version=__version__, docs_url=None, redoc_url=None)
    _serve_docs_offline(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       on_reject=lambda reason: metrics.count_request("rejected", reason))
    app.state.loop, app.state.metrics = loop, metrics

    install_error_handlers(app)

    # ------------------------------------------------------------------ helpers

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(f"model {short(name)} does not exist: this server serves {model_name!r}", "model", 404,
                           "not_found_error", "model_not_found")

    def to_ids(prompt, param: str = "prompt") -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError("prompt is empty: give text or token ids", param)
        out = []
        for p in prompts:
            if isinstance(p, str):
                if not p:
                    raise ApiError("prompt is empty: give text or token ids", param)
                if len(p) > MAX_CHARS_PER_TOKEN * cfg.model.max_seq_len:  # refuse without tokenizing it all
                    raise ApiError(f"the prompt has {len(p)} characters; the model's context is "
                                   f"{cfg.model.max_seq_len} tokens: shorten the prompt", param,
                                   code="context_length_exceeded")
                out.append(tok.encode(p))
            else:
                if not p:
                    raise ApiError("prompt is empty: give text or token ids", param)
                bad = [t for t in p if not 0 <= t < cfg.model.vocab_size]
                if bad:
                    raise ApiError(f"prompt token id {short(bad[0])} is outside the vocabulary "
                                   f"[0, {cfg.model.vocab_size})", param)
                out.append(list(p))
        for ids in out:
            if len(ids) >= cfg.model.max_seq_len:
                raise ApiError(f"the prompt has {len(ids)} tokens; the model's context is {cfg.model.max_seq_len}: "
                               "shorten the prompt", param, code="context_length_exceeded")
        return out

    def queue_full(exc: QueueFull) -> ApiError:
        """429 with the scheduler's own words (the same as an in-process replay records)."""
        return ApiError(str(exc), None, 429, "rate_limit_error", "queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_S)})

    async def release_hold(body) -> None:
        """A refused replay request still moves the replayer's clock hold on (or the engine
        would wait for it until the hold expires)."""
        if getattr(body, "hold_until_s", None) is not None and loop.clock == "virtual":
            await loop.call(lambda e: loop.set_hold(body.hold_until_s))

    async def start(body, prompts: list[list[int]], max_tokens: int | None,
                    max_tokens_param: str = "max_tokens",
                    default_max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[list, asyncio.Queue]:
        """Submit n choices per prompt; all or none are queued. Without max_tokens a choice gets
        `default_max_tokens`, clamped to the context the prompt leaves."""
        body.max_tokens = max_tokens
        per_prompt = [body.to_params(min(default_max_tokens, cfg.model.max_seq_len - len(p)),
                                     cfg.model.max_seq_len - len(p), max_tokens_param)  # checks n too
                      for p in prompts]
        plans = [(i * body.n + j, p, per_prompt[i]) for i, p in enumerate(prompts) for j in range(body.n)]
        if len(plans) > cfg.scheduler.max_waiting:
            raise ApiError(f"{len(plans)} choices (prompts x n) can never be queued at once: this server queues "
                           f"at most {cfg.scheduler.max_waiting}; send fewer prompts or a smaller n", "prompt")
        if body.arrival_s is None and eng.scheduler.is_full():  # a fast 429 (racy; the engine decides)
            raise queue_full(eng.scheduler.queue_full())
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
            raise queue_full(exc) from None
        except ValueError as exc:
            abort_all(reqs)
            reason = getattr(exc, "reason", None)  # RequestRefused: OpenAI's code for the context, else ours
            code = "context_length_exceeded" if reason == "context_exceeded" else reason
            raise ApiError(str(exc), "arrival_s" if str(exc).startswith("arrival_s") else "prompt", code=code) from None
        except EngineStopped as exc:
            abort_all(reqs)
            raise ApiError(str(exc), None, 503, "server_error", "engine_stopped") from None
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
            record(raw, "aborted", "client_disconnect")
            raise
        failed = [o["error"] for o in out.values() if o.get("finish_reason") == "error"]
        if failed:
            raise ApiError(failed[0], None, 500, "server_error")
        record_finished(raw, [o["finish_reason"] for o in out.values()])
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

    def event_stream(raw: Request, reqs, q, prompts, chunk) -> EventStream:
        """SSE: one chunk per delta, the finish per choice, usage if asked, then [DONE]. If the
        client leaves first, its choices are aborted and the request counts as aborted."""
        left = [len(reqs)]

        async def body() -> AsyncIterator[str]:
            outs = {i: {"token_ids": []} for i in range(len(reqs))}
            reasons = []
            if chunk.get("chat"):
                for i in range(len(reqs)):
                    yield sse(chunk["make"](i, {"role": "assistant", "content": ""}, None, None))
            while left[0]:
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
                    left[0] -= 1
                    reasons.append(d.finish_reason)
                    yield sse(chunk["make"](index, "" if not chunk.get("chat") else {}, d.finish_reason,
                                            {"cent": d.timing}))
            record_finished(raw, reasons)
            if chunk["include_usage"]:
                yield sse(dict(chunk["base"], choices=[], usage=usage(prompts, outs)))
            yield "data: [DONE]\n\n"

        def on_close() -> None:
            if left[0]:  # the client went away mid-stream
                abort_all(reqs)
                record(raw, "aborted", "client_disconnect")

        return EventStream(body(), on_close)

    # ------------------------------------------------------------------ endpoints

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        try:
            check_model(body.model)
            body.check_fields(cfg.model.vocab_size)
            prompts = to_ids(body.prompt)
            reqs, q = await start(body, prompts, body.max_tokens,
                                  default_max_tokens=cfg.server.max_tokens_default or DEFAULT_MAX_TOKENS)
        except ApiError:
            await release_hold(body)
            raise
        rid = f"cmpl-{uuid.uuid4().hex}"
        base = dict(id=rid, object="text_completion", created=int(time.time()), model=model_name)
        if body.stream:
            def make(index, text, finish, extra):
                choice = dict(index=index, text=text, logprobs=None, finish_reason=finish, **(extra or {}))
                return dict(base, choices=[choice])
            spec = dict(base=base, make=make, include_usage=body.include_usage,
                        return_token_ids=body.return_token_ids)
            return event_stream(raw, reqs, q, prompts, spec)
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
        try:
            check_model(body.model)
            body.check_fields(cfg.model.vocab_size)
            if not body.messages:
                raise ApiError("messages is empty: give at least one message", "messages")
            prompts = to_ids(chat_prompt(body.messages), "messages")
            # no limit given: the rest of the context, as vLLM's chat endpoint (completions: 16, OpenAI's)
            default = cfg.server.max_tokens_default or cfg.model.max_seq_len
            newer = body.max_completion_tokens is not None  # OpenAI's newer name wins
            reqs, q = await start(body, prompts, body.max_completion_tokens if newer else body.max_tokens,
                                  "max_completion_tokens" if newer else "max_tokens", default)
        except ApiError:
            await release_hold(body)
            raise
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
            return event_stream(raw, reqs, q, prompts, spec)
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
        if eng.recovering or eng.degraded:
            reason = eng.degraded or "re-creating failed devices"
            return JSONResponse({"status": "degraded", "reason": reason}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/cent/status")
    async def status():
        st, devices, fabrics = await loop.call(lambda e: (loop.status(), e.device_stats(), e.fabric_stats()))
        return dict(st, devices=devices, fabric=fabrics)

    @app.get("/metrics")
    async def prometheus():
        st, devices, fabrics = await loop.call(lambda e: (loop.status(), e.device_stats(), e.fabric_stats()))
        return Response(metrics.render(st, devices, fabrics), media_type="text/plain; version=0.0.4")

    return app
