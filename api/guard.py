"""A pure ASGI middleware in front of the app: the API key, then the body's size and encoding.

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`, which hides client disconnects
from the handlers (they abort a departed client's requests). The body is read here, at most
`max_body_bytes` of it, and replayed to the app once; later `receive()` calls go straight to
the server, so the app still sees `http.disconnect`.
"""
from __future__ import annotations

import hmac
import json
from typing import Callable

from api.checks import ApiError

OPEN_PATHS = frozenset({"/health", "/ping", "/docs", "/openapi.json"})
"""Paths served without the API key: the liveness probes, and the API's documentation (a browser
opening `/docs` sends no key; the schema holds no data and runs nothing)."""
OPEN_PREFIX = "/docs/static/"
"""The documentation page's scripts and styles, open with it."""
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
"""Paths that generate (by POST)."""


def is_generation(scope) -> bool:
    """Whether an ASGI request is a generation request, the one kind `cent:requests_total` counts:
    a POST to a generation path (a GET there is a wrong method, 405, not a request to generate)."""
    return scope["path"] in GENERATION_PATHS and scope.get("method") == "POST"


def is_preflight(scope) -> bool:
    """Whether an ASGI request is a browser's CORS preflight (browsers send it without the key). It
    reaches the guard only when no origin is allowed (the CORS middleware, outside, answers it
    otherwise), and the routes answer it with a 400 naming `--allowed-origins`."""
    names = {name.lower() for name, _ in scope["headers"]}
    return scope.get("method") == "OPTIONS" and b"origin" in names and b"access-control-request-method" in names


def bearer_ok(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    """Whether `Authorization: Bearer <key>` is present; the key is compared in constant time."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)
    return False


async def send_error(send, err: ApiError) -> None:
    """Send `err` as OpenAI's error JSON (ASCII-escaped, so any client text in it is safe)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guard:
    """401 without the key (all paths but `OPEN_PATHS` and the docs' static files), 415 for a
    compressed body, 413 past `max_body_bytes` (by Content-Length or by the bytes actually
    streamed), 400 for a body that is not UTF-8; a client that leaves before its body is complete is
    answered by no one. `on_count(outcome, reason)` is called once for each generation request
    (`is_generation`) that ends here: rejected, or aborted by its client."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 on_count: Callable[[str, str], None] | None = None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.on_count = on_count

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if (self.key is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX)
                and not is_preflight(scope) and not bearer_ok(scope["headers"], self.key)):
            await self._refuse(scope, send, "unauthorized", ApiError(
                "missing or wrong API key: send 'Authorization: Bearer <key>'", None, 401, "authentication_error",
                "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            return
        headers = dict((name.lower(), value) for name, value in scope["headers"])
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity") and scope.get("method") == "POST":  # a JSON body read as broken text
            await self._refuse(scope, send, "invalid_request", ApiError(
                f"Content-Encoding {encoding.decode('latin-1')[:40]} is not accepted: send the body uncompressed",
                None, 415, code="unsupported_media_type"))
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, send, "too_large", self._too_large(int(declared)))
            return
        chunks, size, last = [], 0, None
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was complete
                last = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._refuse(scope, send, "too_large", self._too_large(size))
                return
            if not message.get("more_body", False):
                break
        if last is not None and last["type"] == "http.disconnect":  # gone mid-body: nobody to answer
            if self.on_count is not None and is_generation(scope):
                self.on_count("aborted", "client_disconnect")
            return
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._refuse(scope, send, "invalid_request", ApiError(
                f"the body is not valid UTF-8 (byte {exc.start}): send JSON encoded as UTF-8", None, 400))
            return
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    def _too_large(self, size: int) -> ApiError:
        return ApiError(f"the request body has {size} bytes or more; this server takes at most "
                        f"{self.max_body_bytes} (server.max_body_bytes)", None, 413, code="request_too_large")

    async def _refuse(self, scope, send, reason: str, err: ApiError) -> None:
        if self.on_count is not None and is_generation(scope):
            self.on_count("rejected", reason)
        await send_error(send, err)
