"""How `cent bench run --url` names a failed request: the failure reason (`RequestRecord.failure_reason`)
of an HTTP error answer (`failure_reason`) or of a stream's error event (`event_reason`), in the
engine's refusal names, so a replay over HTTP groups its failures as an in-process one does.
"""
from __future__ import annotations

from cent_serve.bench.records import DEVICE_FAULT
from cent_serve.replicas import NO_REPLICA
from cent_serve.request import REFUSAL_REASONS


SERVER_ERROR = "server_error"
"""The reason of a 5xx answer: the server failed, not the request and not (knowingly) a device."""
ERROR_CODES = {"context_length_exceeded": "context_exceeded", DEVICE_FAULT: DEVICE_FAULT, NO_REPLICA: SERVER_ERROR}
"""Error codes (`error_code`) that name a refusal reason differently, cent-serve's for a
request its devices failed (a 500, not a bug's) and for one no replica could serve (a 503, answered or
as a stream's error event, `event_reason`, while every replica is down and none comes back soon); the reason codes
themselves (`REFUSAL_REASONS`) map to themselves."""
CONNECTION_ERROR = "connection_error"
"""The reason of a request whose connection failed (timeout, reset)."""
BAD_REQUEST = "bad_request"
"""The reason of a 4xx answer that names none of the refusal reasons."""


def error_code(err: dict) -> str | None:
    """The machine-readable reason of OpenAI's `error` object: cent-serve's `cent.code` (its `code` is
    the HTTP status, as vLLM's is), else a string `code` (OpenAI's, an older cent-serve's); None for
    a server that names none (vLLM: only the status)."""
    cent = err.get("cent")
    if isinstance(cent, dict) and isinstance(cent.get("code"), str):
        return cent["code"]
    code = err.get("code")
    return code if isinstance(code, str) else None


def failure_reason(status: int, err: dict) -> str:
    """The bench failure reason of an HTTP error answer (`err` is OpenAI's `error` object),
    in the engine's refusal names so HTTP and in-process runs group failures alike.

    The error code decides; without one (servers that do not set it, vLLM's context error),
    the status, then the message and param, which is the best such servers give.
    """
    code = error_code(err)
    if status == 429 or code == "queue_full":
        return "queue_full"
    if code in REFUSAL_REASONS:
        return code
    if code in ERROR_CODES:
        return ERROR_CODES[code]
    if status >= 500:
        return SERVER_ERROR
    message = str(err.get("message", "")).lower()
    if "context" in message:  # "... the model's context is 4096", vLLM's "maximum context length"
        return "context_exceeded"
    if "kv blocks" in message:
        return "kv_capacity"
    return "invalid_prompt" if err.get("param") == "prompt" else BAD_REQUEST


def event_reason(err: dict) -> str:
    """The bench failure reason of a stream's error event (`err`: its `error` object), as
    `failure_reason` gives for the same error answered before the stream began: its status is the
    integer `code` (cent-serve's and vLLM 0.33's, `ErrorInfo.code`), else 500 (the stream was cut
    under way: the server's failure). cent-serve's device fault stays `device_fault` by its
    `cent.code`; a vLLM server's 500 is a `server_error`, never a device's."""
    code = err.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 500
    return failure_reason(status, err)
