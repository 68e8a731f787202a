"""How a stream's events reach the socket: events ready together (a client behind the engine) go
out in writes of STREAM_BATCH events (the rest with the end), each event whole and in order; an event made while
nothing else is ready goes out at once; on the paced clock, what is due goes out before the stream
waits for the next event's time. Driven through `event_stream` with an ASGI `send` that records its
writes (no server: the batching is the handler's, uvicorn writes what it is given)."""
from __future__ import annotations

import asyncio
import json

from api.generate import STREAM_BATCH, Reply, event_stream
from api.protocol import CompletionRequest
from api.routes import Completions
from cent_serve.serving import Delta
from tests.serving.utils import FAIL_AFTER_S, FakeCtx, FakeReq, FakeStreamRaw

SCOPE = {"type": "http", "asgi": {"spec_version": "2.3"}, "path": "/v1/completions", "method": "POST"}


def _delta(i: int, last: bool = False) -> Delta:
    return Delta([65 + i % 26], [0.1 * (i + 1)], chr(65 + i % 26), finished=last,
                 finish_reason="length" if last else None)


def _events(writes: list[bytes]) -> list[str]:
    """The events of the whole body, split where a client splits them (blank lines)."""
    body = b"".join(writes).decode()
    assert body.endswith("\n\n")
    return [e.removeprefix("data: ") for e in body[:-2].split("\n\n")]


async def _serve(ctx, q: asyncio.Queue, on_write=None) -> list[bytes]:
    """Run one stream to its end; the body writes it made."""
    body = CompletionRequest(model="m", prompt="x", stream=True)
    reply = Reply(dict(id="cmpl-1", object="text_completion", created=0, model="m"), Completions(), body, [[1]])
    stream = event_stream(ctx, FakeStreamRaw(), [FakeReq()], q, reply)
    writes: list[bytes] = []

    async def receive():
        await asyncio.Event().wait()  # the client stays

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            writes.append(message["body"])
            if on_write is not None:
                on_write(writes)

    await asyncio.wait_for(stream(SCOPE, receive, send), FAIL_AFTER_S)
    return writes


def _texts(events: list[str]) -> str:
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])


def test_a_backlog_goes_out_in_few_writes_each_event_whole():
    n = 5 * STREAM_BATCH + 7

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        for i in range(n):
            q.put_nowait((0, _delta(i, last=i == n - 1)))
        return await _serve(FakeCtx(), q)

    writes = asyncio.run(run())
    events = _events(writes)
    assert len(events) == n + 1  # one event per delta, then [DONE]
    assert _texts(events) == "".join(chr(65 + i % 26) for i in range(n))
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert len(writes) == -(-n // STREAM_BATCH)  # full batches, the rest with [DONE]
    assert all(w.count(b"\n\n") <= STREAM_BATCH + 1 for w in writes)


def test_an_event_made_while_nothing_else_is_ready_goes_out_at_once():
    n = 6

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        wrote = asyncio.Event()

        async def produce():
            for i in range(n):
                wrote.clear()
                q.put_nowait((0, _delta(i, last=i == n - 1)))
                await wrote.wait()  # the next one only after this one was written

        producer = asyncio.ensure_future(produce())
        writes = await _serve(FakeCtx(), q, on_write=lambda w: wrote.set())
        await producer
        return writes

    writes = asyncio.run(run())
    assert [w.count(b"\n\n") for w in writes] == [1] * (n - 1) + [2]  # the last with [DONE]
    assert _texts(_events(writes)) == "ABCDEF"


class _PacedCtx(FakeCtx):
    """The paced clock: delta `late` is not due yet; `pace` records what was written when it waited."""

    def __init__(self, late: int, writes: list) -> None:
        super().__init__()
        self.late, self.writes, self.seen, self.written_at_wait = late, writes, 0, None

    def due_in(self, delta) -> float:
        self.seen += 1
        return 0.01 if self.seen == self.late + 1 else 0.0

    async def pace(self, delta) -> None:
        self.written_at_wait = b"".join(self.writes).count(b"\n\n")
        await asyncio.sleep(0.01)


def test_paced_what_is_due_goes_out_before_the_stream_waits():
    n, late = 10, 4
    seen: list = []

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        for i in range(n):
            q.put_nowait((0, _delta(i, last=i == n - 1)))
        ctx = _PacedCtx(late, seen)
        return ctx, await _serve(ctx, q, on_write=lambda w: seen.__setitem__(slice(None), w))

    ctx, writes = asyncio.run(run())
    assert ctx.written_at_wait == late  # the four due events were written before the wait for the fifth
    assert _texts(_events(writes)) == "ABCDEFGHIJ"
