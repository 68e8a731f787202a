"""A non-streaming request whose client goes away is aborted as soon as the server hears of it (the
ASGI `http.disconnect`), not at the next poll: in virtual time the engine makes hundreds of tokens
in a quarter second, and they moved every other request's simulated times (server audit: ~330
tokens of a timing-only 70B after the client left)."""
from __future__ import annotations

import asyncio

import pytest

from api.checks import ApiError
from api.generate import collect
from tests.serving.utils import FAIL_AFTER_S, FakeCtx, FakeReq, FakeStreamRaw


class _Raw:
    """A request whose client has gone: the server says so on receive, and the poll never does."""

    async def receive(self) -> dict:
        return {"type": "http.disconnect"}

    async def is_disconnected(self) -> bool:
        return False


def test_a_client_gone_is_heard_without_polling():
    ctx, reqs = FakeCtx(), [FakeReq(), FakeReq()]

    async def run():
        with pytest.raises(ApiError) as e:
            await asyncio.wait_for(collect(ctx, _Raw(), reqs, asyncio.Queue(), 2), FAIL_AFTER_S)
        return e.value

    err = asyncio.run(run())
    assert err.status == 499 and ctx.aborted == reqs


def test_a_stream_with_a_backlog_hears_its_client_leave():
    """A stream whose queue already holds many deltas (the engine ran ahead of the client, as it
    does in virtual time) lets the event loop in between writes: the server hears the client leave
    (uvicorn's connection_lost comes from the loop, after the write that failed) and aborts the
    request after a write or two (each carries about STREAM_BATCH events). It drained the whole
    backlog into the closed socket before (no await suspends on a non-empty queue, and uvicorn's
    send to a gone client returns at once): a
    20,000-request soak logged 105,370 "socket.send() raised exception." lines, and ~8% of the
    streams whose client left ran to their max_tokens, counted as completed."""
    from api.generate import STREAM_BATCH, Reply, event_stream
    from api.protocol import CompletionRequest
    from api.routes import Completions
    from cent_serve.serving import Delta

    backlog, left_after = 40 * STREAM_BATCH, 3
    ctx, reqs, raw = FakeCtx(), [FakeReq()], FakeStreamRaw()
    body = CompletionRequest(model="m", prompt="x", stream=True)
    reply = Reply(dict(id="cmpl-1", object="text_completion", created=0, model="m"), Completions(), body, [[1]])

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        for _ in range(backlog):  # no finished delta: the client leaves long before the end
            q.put_nowait((0, Delta([65], [0.1], "A")))
        stream = event_stream(ctx, raw, reqs, q, reply)
        gone, written = asyncio.Event(), []

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):  # uvicorn's: never suspends; after a disconnect it drops what it is given
            if message["type"] == "http.response.body" and not gone.is_set():
                written.append(message)
                if len(written) == left_after:  # the write fails: the transport's connection_lost is call_soon'd
                    asyncio.get_running_loop().call_soon(gone.set)

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "path": "/v1/completions", "method": "POST"}
        await asyncio.wait_for(stream(scope, receive, send), FAIL_AFTER_S)
        return q.qsize()

    unread = asyncio.run(run())
    assert ctx.aborted == reqs and raw.metrics.counted == [("aborted", "client_disconnect")]
    written = backlog - unread
    assert written <= (left_after + 2) * STREAM_BATCH, f"the stream went on writing to a gone client: {written} events"
