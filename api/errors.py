"""Errors as OpenAI's error JSON, and the one count per generation request of how it ended
(`cent:requests_total{outcome, reason}`, api/metrics.py).

A request's outcome is recorded by the first of: its handler (completed, or aborted when the
engine stopped under it), the error handlers below (rejected, aborted by a disconnect,
failed), or `EventStream`'s close (aborted: the client left mid-stream). The `Guard`
middleware counts the requests it refuses before the app sees them."""
from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.checks import ApiError, prompt_error, short
from api.guard import is_generation, is_preflight, send_error
from api.protocol import schema_param
from cent_serve.serving import EngineStopped

log = logging.getLogger("cent.server")


def record(raw: Request, outcome: str, reason: str) -> None:
    """Count how a generation request ended; only the first call per request counts."""
    if is_generation(raw.scope) and not raw.scope.get("cent.counted"):
        raw.scope["cent.counted"] = True
        raw.app.state.metrics.count_request(outcome, reason)


def record_finished(raw: Request, finish_reasons: list[str | None], n: int, generated: list[int]) -> None:
    """Count a request whose choices all came back from the engine (`generated`: each choice's
    token count, by index, its prompts' `n` choices at a time)."""
    raw.app.state.metrics.observe_prompts(n, generated)
    if "error" in finish_reasons:
        record(raw, "failed", "engine_error")
    elif "abort" in finish_reasons:  # the engine stopped under a connected client
        record(raw, "aborted", "server_abort")
    else:
        record(raw, "completed", "length" if "length" in finish_reasons else "stop")


def _prompt_of(errs: list[dict]):
    """The `prompt` a validation failed on: the input of its string branch's error, the whole value."""
    return next((e.get("input") for e in errs if tuple(e.get("loc", ()))[:3] == ("body", "prompt", "str")),
                errs[0].get("input"))


METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The order a 405 lists the allowed methods in: reading first."""


NOT_SERVED = {
    "/v1/responses": "OpenAI's Responses API, which vLLM also serves",
    "/v1/messages": "Anthropic's Messages API, which vLLM also serves",
    "/v1/embeddings": "embeddings, which vLLM serves for pooling models only",
    "/v1/audio": "OpenAI's audio API", "/v1/images": "OpenAI's images API", "/v1/moderations": "moderation",
    "/v1/files": "OpenAI's files API", "/v1/batches": "OpenAI's batch API", "/v1/fine_tuning": "fine-tuning",
    "/v1/assistants": "OpenAI's Assistants API", "/v1/threads": "OpenAI's Assistants API",
    "/v1/vector_stores": "OpenAI's vector stores", "/v1/realtime": "OpenAI's Realtime API",
    "/v1/chat/completions/": "OpenAI's stored chat completions"}
"""The paths (with what lies below them; a trailing slash: below it only) of OpenAI's and vLLM's APIs this
server does not serve, with what they are, for a 404 that names them (vLLM registers /v1/responses and
/v1/messages for every generative model, /v1/embeddings for pooling ones: vllm/entrypoints/generate/api_router.py
`register_generate_api_routers`). A 404, as a path no route answers: a client's SDK retries a 5xx (the
`openai` client's `_should_retry`), so 501 would resend the request twice before failing."""


def not_served(method: str, path: str) -> str:
    """The 404 message of a path no route answers: an API of OpenAI's or vLLM's named, with what this
    server does serve (the chat endpoint takes what the Responses API would: a conversation)."""
    served = "/v1/completions, /v1/chat/completions, /v1/models; every path: /docs"
    what = next((w for p, w in NOT_SERVED.items()  # "/v1/x" is itself and below it; "/v1/x/" below it only
                 if path.startswith(p if p.endswith("/") else p + "/") or path == p), None)
    if what is None:
        return f"{method} {path} is not a path of this server: the OpenAI API is under /v1 ({served})"
    return (f"{method} {path} is not served here ({what}): this server serves text generation only ({served})"
            + ("; send the conversation as messages to /v1/chat/completions"
               if path.startswith(("/v1/responses", "/v1/messages")) else ""))


def allowed_methods(raw: Request, router: APIRouter) -> str:
    """Every method some route answers at the request's path, for a 405's message and its `Allow`
    header (RFC 9110 requires it). Starlette's own names the first partial match's alone: a path whose
    GET and HEAD are two routes (`api.routes.read`) told a DELETE "use HEAD", and dropped the header.
    The API's routes are read from their `router` itself, `api.routes.router` (FastAPI wraps an included
    router)."""
    routes = [*raw.app.router.routes, *router.routes]
    methods = {m for route in routes if getattr(route, "methods", None)
               and route.matches(raw.scope)[0] != Match.NONE for m in route.methods}
    return ", ".join(sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m)))


def error_response(raw: Request, err: ApiError) -> JSONResponse:
    """`err` as OpenAI's error JSON (its headers too, e.g. `Retry-After`), counted."""
    if err.status == 429:
        record(raw, "rejected", "queue_full")
    elif err.status == 499:
        record(raw, "aborted", "client_disconnect")
    elif err.status >= 500:
        record(raw, "failed", "engine_error")
    else:
        record(raw, "rejected", "invalid_request")
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class EventStream(StreamingResponse):
    """SSE that runs `on_close()` however the response ends. The body generator's own
    `finally` is not enough: it never runs if the client leaves before the first chunk."""

    def __init__(self, body, on_close) -> None:
        super().__init__(body, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def install_error_handlers(app: FastAPI, router: APIRouter) -> None:
    """Every error the app raises becomes OpenAI's error JSON: 4xx for the client's mistakes
    (the param named where there is one), 500 only for the server's own faults. `router` holds the
    API's routes (`api.routes.router`, which `create_app` includes), whose methods a 405 lists."""

    @app.exception_handler(ApiError)
    async def _api_error(raw: Request, exc: ApiError):
        return error_response(raw, exc)

    @app.exception_handler(RequestValidationError)
    async def _schema_error(raw: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            why = (first.get("ctx") or {}).get("error") or first.get("msg")
            err = ApiError(f"the body is not valid JSON: {why}{where}", None, 400)
        elif loc == ("body",):  # the body as a whole is not an object
            ctype = raw.headers.get("content-type") or ""
            if "json" not in ctype:  # FastAPI parses only a JSON content type; anything else arrives as bytes
                why = f"the body was sent as {ctype or 'no content type'}"
            elif first.get("type") == "missing":
                why = "the request has no body"
            else:
                got = first.get("input")
                kind = {type(None): "null", str: "a string", list: "an array", bool: "a boolean"}.get(
                    type(got), "a number")
                why = f"the body is {kind}, not a JSON object"
            err = ApiError(f"{why}: send a JSON object ({{\"model\": ..., ...}}) with Content-Type: application/json",
                           None, 400)
        elif loc[:2] == ("body", "prompt") and len(loc) > 2:  # a union's every branch failed: say which shape broke
            param, message = prompt_error(_prompt_of(errs))
            err = ApiError(message, param, 400)
        elif loc[:2] == ("body", "stop") and len(loc) > 2:  # str | list[str]: not the string branch's words alone
            stop = next((e.get("input") for e in errs if tuple(e.get("loc", ()))[:3] == ("body", "stop", "str")),
                        first.get("input"))
            i = next((i for i, x in enumerate(stop) if not isinstance(x, str)), None) if isinstance(stop, list) else None
            err = (ApiError(f"stop.{i}: a list of stop strings holds strings only (got {short(stop[i])})", f"stop.{i}",
                            400) if i is not None else
                   ApiError(f"stop must be a string or a list of strings (got {short(stop)})", "stop", 400))
        elif loc == ("body", "model") and first.get("type") == "missing":  # said "Field required (got {...})"
            served = getattr(getattr(raw.app.state, "ctx", None), "model_name", None)
            name = f"{served!r}" if served else "its id"
            err = ApiError(f"model is required: name the model this server serves, {name} (GET /v1/models lists it)",
                           "model", 400)
        else:
            param = schema_param(first.get("loc", ()))
            err = ApiError(f"{param or 'body'}: {first.get('msg')} (got {short(first.get('input'))})", param, 400)
        return error_response(raw, err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(raw: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":  # no route: say which path, and where the API is
            message = not_served(raw.method, raw.url.path)
        elif exc.status_code == 405 and is_preflight(raw.scope):
            # a browser's CORS preflight reaches the routes only when no origin is allowed (the CORS
            # middleware answers it otherwise): a 400 as the middleware's for an origin not allowed
            origin = raw.headers["origin"]
            fix = (f"start it with --allowed-origins {origin}" if origin != "null" else
                   "serve the page over http(s) and allow its origin (a page opened from a file sends Origin: null, "
                   "as any sandboxed page does, so allowing null lets every site in)")
            return error_response(raw, ApiError(
                f"a browser page on {origin} asked to call {raw.url.path} (CORS preflight); this server allows no "
                f"web origins (server.allowed_origins is empty): {fix}", "origin", 400))
        elif exc.status_code == 405:
            allow = allowed_methods(raw, router)
            message = f"{raw.method} is not allowed on {raw.url.path}: " + (f"use {allow}" if allow else "see /docs")
            return error_response(raw, ApiError(message, None, 405, headers={"Allow": allow} if allow else None))
        err = ApiError(message, None, exc.status_code, "not_found_error" if exc.status_code == 404
                       else "invalid_request_error")
        return error_response(raw, err)

    @app.exception_handler(EngineStopped)
    async def _engine_stopped(raw: Request, exc: EngineStopped):
        return error_response(raw, ApiError(str(exc), None, 503, "server_error", "engine_stopped"))


class Faults:
    """A pure ASGI middleware that turns a bug (an exception no handler took) into OpenAI's error
    JSON, a 500, with the traceback logged. It sits inside the CORS middleware, so a browser page
    can read that 500 too (Starlette's own last-resort handler answers outside every middleware,
    with no CORS headers). A fault after the response started can only end the connection."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - a bug: answered, and logged with its traceback
            if started:
                raise
            log.exception("internal error on %s %r", scope.get("method"), scope["path"])  # %r: no forged log lines
            record(Request(scope), "failed", "internal_error")
            await send_error(send, ApiError(f"internal error: {type(_cause(exc)).__name__}", None, 500, "server_error"))


def _cause(exc: BaseException) -> BaseException:
    """The exception to name: an anyio task group's ExceptionGroup names the first it wraps."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
