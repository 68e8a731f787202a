"""Overload, slow readers and loss accounting, against a real server (local executor)."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx

from api.app import RETRY_AFTER_S
from api.server import Server
from tests.serving.utils import body, metric, outcomes, server_cfg, status, wait_idle

REQUEST_TIMEOUT_S = 60.0
"""Client timeout of one request: a hang fails the test instead of stalling it."""


def _post_all(url: str, bodies: list[dict]) -> list[tuple[httpx.Response, float]]:
    """POST every body at once; (response, wall seconds) each."""
    async def one(h, b):
        t0 = time.monotonic()
        r = await h.post("/v1/completions", json=b)
        return r, time.monotonic() - t0

    async def main():
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as h:
            return await asyncio.gather(*[one(h, b) for b in bodies])

    return asyncio.run(main())


def test_a_ten_times_overload_burst_gets_fast_429s_and_admitted_requests_finish_in_bounded_time():
    lanes, max_waiting = 8, 4
    capacity = lanes + max_waiting
    cfg = server_cfg(max_waiting=max_waiting, clock="paced", pace_factor=200.0)  # ~1 wall s per request
    with Server(cfg, "local") as s:
        t0 = time.monotonic()
        assert httpx.post(s.url + "/v1/completions", json=body(max_tokens=20), timeout=REQUEST_TIMEOUT_S).is_success
        alone_s = time.monotonic() - t0

        results = _post_all(s.url, [body(max_tokens=20)] * (10 * capacity))

        codes = [r.status_code for r, _ in results]
        assert set(codes) <= {200, 429}, codes
        admitted = [wall for r, wall in results if r.status_code == 200]
        rejected = [(r, wall) for r, wall in results if r.status_code == 429]
        assert len(admitted) >= capacity and len(rejected) >= 5 * capacity, (len(admitted), len(rejected))
        for r, wall in rejected:
            assert r.headers["retry-after"] == str(RETRY_AFTER_S)
            assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["type"] == "rate_limit_error"
            assert wall < 2.0, wall  # refused at once, not after waiting for a slot
        # an admitted request waits for at most one turn of the queue, then runs
        assert max(admitted) < 2 * alone_s + 2.0, (max(admitted), alone_s)

        st = wait_idle(s.url)
        assert st["kv_usage"] == 0.0
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=3), timeout=REQUEST_TIMEOUT_S)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        counts = outcomes(s.url)
        assert counts[("rejected", "queue_full")] == len(rejected)
        assert counts[("completed", "length")] == len(admitted) + 2


def _raw_stream_request(port: int, payload: dict, rcvbuf_bytes: int) -> socket.socket:
    """Send a request on a socket with a small receive buffer, and read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(payload).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def _drain(sock: socket.socket) -> bytes:
    """Whatever is readable right now."""
    sock.setblocking(False)
    out = b""
    try:
        while chunk := sock.recv(1 << 16):
            out += chunk
    except BlockingIOError:
        pass
    sock.setblocking(True)
    return out


def test_a_client_that_does_not_read_its_stream_stalls_only_itself():
    """The engine thread hands deltas to asyncio queues and never waits for a client: while one
    client reads nothing (its socket buffers full, the server's writes to it paused), the
    others are served at once and the engine finishes the stalled request's tokens."""
    small = 8192
    with Server(server_cfg(), "local") as s:
        for listener in s.server.servers[0].sockets:  # accepted sockets inherit a small send buffer
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
        n, max_tokens = 4, 500
        slow = _raw_stream_request(s.port, body(prompt="x", n=n, max_tokens=max_tokens, stream=True,
                                                return_token_ids=True), small)
        try:
            deadline = time.monotonic() + 10
            while status(s.url)["num_running"] < n:
                assert time.monotonic() < deadline, "the slow request never started"
                time.sleep(0.02)

            quick = _post_all(s.url, [body(prompt=f"quick {i}", max_tokens=8) for i in range(16)])
            assert all(r.status_code == 200 for r, _ in quick)
            assert max(wall for _, wall in quick) < 5.0, [wall for _, wall in quick]

            st = wait_idle(s.url)  # the engine finished the stalled request's tokens too
            assert st["generation_tokens"] >= n * max_tokens + 16 * 8
            early = _drain(slow)
            assert len(early) < 100 * 1024, len(early)  # backpressure: most of the stream is still unsent

            rest = early
            slow.settimeout(REQUEST_TIMEOUT_S)
            while b"data: [DONE]" not in rest:
                chunk = slow.recv(1 << 16)
                assert chunk, "the server closed the stalled stream"
                rest += chunk
        finally:
            slow.close()
        events = [json.loads(m) for m in re.findall(rb"data: (\{.*?\})\n\n", rest)]
        ids = [t for e in events for c in e["choices"] for t in c.get("token_ids", [])]
        assert len(ids) == n * max_tokens  # nothing was lost while the client was not reading
        assert len(rest) > 4 * len(early)
        assert httpx.post(s.url + "/v1/completions", json=body(), timeout=REQUEST_TIMEOUT_S).status_code == 200


def test_every_request_is_counted_once_as_completed_aborted_or_rejected():
    cfg = server_cfg(devices=1, pp=1, max_waiting=1, clock="paced", pace_factor=100.0)  # one lane, a queue of one
    long = body(prompt="x", max_tokens=400)
    with Server(cfg, "local") as s, httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h, \
            httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h2:
        submitted = 0
        with h.stream("POST", "/v1/completions", json=dict(long, stream=True)) as running, \
                h2.stream("POST", "/v1/completions", json=dict(long, stream=True)) as waiting:
            submitted += 2
            lines = running.iter_lines()  # kept: a discarded line iterator closes the response
            next(lines)  # the first runs ...
            deadline = time.monotonic() + 10
            while status(s.url)["num_waiting"] < 1:  # ... and the second waits
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for _ in range(3):
                assert httpx.post(s.url + "/v1/completions", json=body()).status_code == 429
            assert httpx.post(s.url + "/v1/completions", json=body(max_tokens=-1)).status_code == 400
            assert httpx.post(s.url + "/v1/chat/completions", json={"model": "tiny"}).status_code == 422
            submitted += 5
            assert waiting.status_code == 200
        # both clients hung up: their requests are aborted
        wait_idle(s.url)

        async def hang_up_on_a_plain_request():
            async with httpx.AsyncClient(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as ah:
                task = asyncio.create_task(ah.post("/v1/completions", json=long))
                while status(s.url)["num_running"] < 1:
                    await asyncio.sleep(0.02)
                task.cancel()
        asyncio.run(hang_up_on_a_plain_request())
        submitted += 1
        for _ in range(3):
            assert h.post("/v1/completions", json=body(max_tokens=2)).status_code == 200
        submitted += 3

        expected = {("aborted", "client_disconnect"): 3, ("rejected", "queue_full"): 3,
                    ("rejected", "invalid_request"): 2, ("completed", "length"): 3}
        deadline = time.monotonic() + 10
        while (counts := outcomes(s.url)) != expected:
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
        assert sum(counts.values()) == submitted
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "vllm:request_success_total", finished_reason="abort") == 3
        assert metric(text, "vllm:request_success_total", finished_reason="length") == 3
