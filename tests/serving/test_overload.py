"""Overload, slow readers and loss accounting, against a real server (local executor)."""
from __future__ import annotations

import asyncio
import fcntl
import json
import re
import socket
import struct
import threading
import termios
import time

import httpx
import pytest

from api.app import RETRY_AFTER_S
from api.server import Server
from tests.serving.utils import body, metric, outcomes, server_cfg, status, wait_for, wait_idle

REQUEST_TIMEOUT_S = 60.0
"""Client timeout of one request: a hang fails the test instead of stalling it."""
HEALTH_ROUNDS = 2500
"""Engine rounds a /health probe may wait for while the engine computes without pause: 10x the most
seen here between a status read before and one after the probe (74 to 229, idle or beside two busy
loops at load 5-14), and under the ~4,000 a starved event loop's 14 s covered."""
HEALTH_WAIT_S = 10.0
"""Wall seconds a /health probe may take then: a liveness probe's usual longest timeout, over 10x the
most measured beside two busy loops at load 10-14 (0.52 s in the test, 0.89 s in a script of it)."""


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


def test_a_full_server_refuses_a_ten_times_burst_without_waiting_for_a_slot():
    """Lanes and queue are held by requests that run for minutes of wall time (pace x 1e4), so no
    slot frees while the burst is answered: every burst request gets 429 at once, and the proof is
    the order of events (the holders still run afterwards), not a wall-clock bound."""
    lanes, max_waiting = 8, 4
    capacity = lanes + max_waiting
    cfg = server_cfg(max_waiting=max_waiting, clock="paced", pace_factor=1e4)
    with Server(cfg, "local") as s:
        async def main():
            limits = httpx.Limits(max_connections=capacity + 10 * capacity)
            async with httpx.AsyncClient(base_url=s.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as h:
                holders = [h.stream("POST", "/v1/completions", json=body(max_tokens=400, stream=True))
                           for _ in range(capacity)]
                streams = await asyncio.gather(*[x.__aenter__() for x in holders])  # all admitted together
                assert [r.status_code for r in streams] == [200] * capacity
                held = wait_for(lambda: (st := status(s.url))["num_running"] == lanes and st, "the lanes filled")
                burst = await asyncio.gather(*[h.post("/v1/completions", json=body()) for _ in range(10 * capacity)])
                after = status(s.url)
                for x in holders:
                    await x.__aexit__(None, None, None)  # hang up: the holders are aborted
                return held, burst, after

        held, burst, after = asyncio.run(main())
        assert (held["num_running"], held["num_waiting"]) == (lanes, max_waiting)
        assert [r.status_code for r in burst] == [429] * (10 * capacity)
        for r in burst:
            assert r.headers["retry-after"] == str(RETRY_AFTER_S)
            assert r.json()["error"]["cent"]["code"] == "queue_full" and r.json()["error"]["type"] == "rate_limit_error"
        # no slot freed while the burst was answered: nothing waited for one
        assert (after["num_running"], after["num_waiting"]) == (lanes, max_waiting)
        st = wait_idle(s.url)
        assert st["kv_usage"] == 0.0
        counts = wait_for(lambda: (c := outcomes(s.url)).get(("aborted", "client_disconnect")) == capacity and c,
                          "the holders counted as aborted")
        assert counts == {("rejected", "queue_full"): 10 * capacity, ("aborted", "client_disconnect"): capacity}


def test_under_a_ten_times_burst_admitted_requests_wait_at_most_one_turn():
    """Every request the server admits is served (none lost, none starved): its simulated queueing
    time is at most one turn of the lanes, the e2e latency of a request alone. A request that
    arrives while lane places are free is admitted, so at least lanes + max_waiting are."""
    lanes, max_waiting = 8, 4
    capacity = lanes + max_waiting
    cfg = server_cfg(max_waiting=max_waiting, clock="paced", pace_factor=200.0)  # ~1 wall s per request
    with Server(cfg, "local") as s:
        alone = httpx.post(s.url + "/v1/completions", json=body(max_tokens=20), timeout=REQUEST_TIMEOUT_S)
        turn_s = alone.json()["cent"]["e2e_s"]

        results = _post_all(s.url, [body(max_tokens=20)] * (10 * capacity))

        codes = [r.status_code for r, _ in results]
        assert set(codes) <= {200, 429}, codes
        admitted = [r.json()["cent"] for r, _ in results if r.status_code == 200]
        rejected = [r for r, _ in results if r.status_code == 429]
        assert len(admitted) >= capacity, (len(admitted), len(rejected))
        queued = [c["queue_s"] for c in admitted]
        assert max(queued) <= 2 * turn_s, (max(queued), turn_s)  # one turn, with room for arrival skew
        assert all(c["e2e_s"] <= c["queue_s"] + 2 * turn_s for c in admitted)

        st = wait_idle(s.url)
        assert st["kv_usage"] == 0.0
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=3), timeout=REQUEST_TIMEOUT_S)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        counts = outcomes(s.url)
        assert counts.get(("rejected", "queue_full"), 0) == len(rejected)
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


def _queued_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's receive queue at this instant (FIONREAD): what the server managed to
    push while the client read nothing. A snapshot, not a read: reading would let the server
    refill the buffers while we read, so the count would depend on the machine's load."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


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
            # running, or (the engine is fast: 2,000 timing-only tokens) already done with
            wait_for(lambda: (lambda st: st["num_running"] >= n or st["generation_tokens"] >= n)(status(s.url)),
                     "the slow request started")

            # if the engine waited for the stalled client these could not finish before it reads
            # (they would time out), so their completing here is the proof, not their wall time
            quick = _post_all(s.url, [body(prompt=f"quick {i}", max_tokens=8) for i in range(16)])
            assert all(r.status_code == 200 for r, _ in quick)

            st = wait_idle(s.url)  # the engine finished the stalled request's tokens too
            assert st["generation_tokens"] >= n * max_tokens + 16 * 8
            early = _queued_bytes(slow)

            rest = b""
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
        # backpressure: when the engine was done, most of the stream was still held by the server
        # (the client's kernel queue is bounded by the small receive buffer set above)
        assert 0 < early < len(rest) / 4, (early, len(rest))
        assert httpx.post(s.url + "/v1/completions", json=body(), timeout=REQUEST_TIMEOUT_S).status_code == 200


def test_choices_that_fit_the_free_lanes_and_the_queue_are_admitted_and_only_more_are_refused_outright():
    """One lane and max_waiting=2: an idle server admits n=3 (one runs, two wait) however small
    max_waiting is; 400 (naming n, or the prompt with n=1) only past lane places + max_waiting,
    which no wait would fix; while the lane is held, n=3 is the ordinary 429."""
    with Server(server_cfg(devices=1, pp=1, max_waiting=2), "local") as s:
        r = httpx.post(s.url + "/v1/completions", json=body(n=3), timeout=REQUEST_TIMEOUT_S)
        assert r.status_code == 200, r.text
        assert sorted(c["index"] for c in r.json()["choices"]) == [0, 1, 2]
        r = httpx.post(s.url + "/v1/completions", json=body(prompt=["a", "b"], n=2), timeout=REQUEST_TIMEOUT_S)
        err = r.json()["error"]
        assert (r.status_code, err["param"]) == (400, "n")
        assert "4 choices" in err["message"] and "at most 3" in err["message"], err["message"]
        r = httpx.post(s.url + "/v1/completions", json=body(prompt=["a", "b", "c", "d"]), timeout=REQUEST_TIMEOUT_S)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "prompt")
    cfg = server_cfg(devices=1, pp=1, max_waiting=2, clock="paced", pace_factor=1e4)  # the holder runs for minutes
    with Server(cfg, "local") as s, httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h:
        with h.stream("POST", "/v1/completions", json=body(max_tokens=400, stream=True)) as holder:
            assert holder.status_code == 200
            wait_for(lambda: status(s.url)["num_running"] == 1, "the lane held")
            r = h.post("/v1/completions", json=body(n=3))
            assert (r.status_code, r.json()["error"]["cent"]["code"]) == (429, "queue_full")
        wait_idle(s.url)


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
            wait_for(lambda: status(s.url)["num_waiting"] >= 1, "the second request waiting")  # ... and the second waits
            for _ in range(3):
                assert httpx.post(s.url + "/v1/completions", json=body()).status_code == 429
            assert httpx.post(s.url + "/v1/completions", json=body(max_tokens=-1)).status_code == 400
            assert httpx.post(s.url + "/v1/chat/completions", json={"model": "tiny"}).status_code == 400
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
        counts = wait_for(lambda: (c := outcomes(s.url)) == expected and c, "the expected outcome counts")
        assert sum(counts.values()) == submitted
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "vllm:request_success_total", finished_reason="abort") == 3
        assert metric(text, "vllm:request_success_total", finished_reason="length") == 3


def test_token_counters_move_with_the_rounds_and_count_only_prompts_that_ran():
    """vLLM's counters as vLLM keeps them: every series exists at 0 before the first request, none
    `_created`; tokens are counted, TTFT and inter-token gaps observed, as rounds make them
    (mid-stream, not when the sequence ends); a prompt counts once
    its first token is made, so a request aborted while waiting adds no prompt tokens; a request
    whose choices do not all fit is refused whole (n=3, room for two), so none of them is a
    sequence; at the end the counters equal the status's totals."""
    cfg = server_cfg(devices=1, pp=1, max_waiting=2, clock="paced", pace_factor=100.0)
    with Server(cfg, "local") as s, httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h, \
            httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h2:
        text = h.get("/metrics").text
        for name, labels in (("vllm:time_to_first_token_seconds_count", {}), ("vllm:prompt_tokens_total", {}),
                             ("vllm:request_success_total", {"finished_reason": "abort"}),
                             ("cent:requests_total", {"outcome": "failed", "reason": "internal_error"})):
            series = [line for line in text.splitlines() if line.startswith(name + "{")
                      and all(f'{k}="{v}"' in line for k, v in labels.items())]
            assert len(series) == 1 and series[0].endswith(" 0.0"), (name, series)
        assert "_created" not in text  # vLLM's /metrics has no creation-time series
        with h.stream("POST", "/v1/completions", json=body(prompt="hold", max_tokens=400, stream=True)) as holder:
            lines, seen = holder.iter_lines(), 0  # the iterator kept: a discarded one closes the response
            while seen < 2:  # two tokens delivered
                seen += next(lines).startswith("data: {")
            text = h.get("/metrics").text
            assert metric(text, "vllm:generation_tokens_total") >= 2  # while the stream runs
            assert metric(text, "vllm:time_to_first_token_seconds_count") == 1
            assert metric(text, "vllm:inter_token_latency_seconds_count") >= 1
            assert metric(text, "vllm:prompt_tokens_total") == 5  # "hold" and its BOS
            # the gauges follow the engine (idle they all read 0, as they would read nothing)
            assert metric(text, "vllm:num_requests_running") == 1 and metric(text, "vllm:num_requests_waiting") == 0
            assert metric(text, "vllm:kv_cache_usage_perc") > 0
            with h2.stream("POST", "/v1/completions", json=body(prompt="waits", stream=True)):
                wait_for(lambda: status(s.url)["num_waiting"] == 1, "the second request waiting")
                assert metric(h.get("/metrics").text, "vllm:num_requests_waiting") == 1
            wait_for(lambda: status(s.url)["num_waiting"] == 0, "the waiting request aborted")
            r = h.post("/v1/completions", json=body(prompt="three", n=3))
            assert (r.status_code, r.json()["error"]["cent"]["code"]) == (429, "queue_full")
            text = h.get("/metrics").text
            assert metric(text, "vllm:prompt_tokens_total") == 5
            assert metric(text, "vllm:request_success_total", finished_reason="abort") == 1  # the waiting one
        st = wait_idle(s.url)
        text = h.get("/metrics").text
        assert metric(text, "vllm:prompt_tokens_total") == st["prompt_tokens"] == 5
        assert metric(text, "vllm:generation_tokens_total") == st["generation_tokens"] > 0
        assert metric(text, "vllm:request_success_total", finished_reason="abort") == 2  # and the holder


def test_concurrent_requests_with_several_choices_are_admitted_whole_or_refused_whole():
    """n=3 requests racing for a small queue: each is admitted with all its choices or refused with
    none run, so the sequences the metrics and the status count are exactly the 200s' choices (a
    choice queued before its sibling was refused used to run, and count, under a 429)."""
    with Server(server_cfg(devices=1, pp=1, max_waiting=4), "local") as s:
        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=REQUEST_TIMEOUT_S) as h:
                sent = [h.post("/v1/completions", json=body(n=3, max_tokens=40)) for _ in range(30)]
                return [r.status_code for r in await asyncio.gather(*sent)]
        codes = [c for _ in range(3) for c in asyncio.run(burst())]
        assert set(codes) <= {200, 429} and 200 in codes
        st = wait_idle(s.url)
        text = httpx.get(s.url + "/metrics").text
        ran = sum(metric(text, "vllm:request_success_total", finished_reason=r) for r in ("stop", "length", "abort"))
        assert ran == st["num_finished"] + st["num_aborted"] == 3 * codes.count(200), (codes.count(200), ran, st)


def test_paced_mode_says_when_it_cannot_keep_pace(caplog):
    """At pace factor 1e-4 no engine keeps up: the lag shows in /metrics and the status while the
    request runs, the log warns once with a pace factor that would keep up, and the lag is 0 again
    once the engine is idle. The lag grows with the wall time the request has run, so the request
    must outlast the half second the status needs on any machine: 4 x 300 tokens ran 5 s here, the
    lag passed half a second after 0.6 s, and a machine 8x faster would have ended it first. Its
    4 x 3,000 tokens would run ten times as long; the client hangs up once the warning is logged
    (the episode ends as the aborted request leaves nothing in flight). The warning comes after the
    episode's first 8 rounds (or second of them), and the episode starts with the first late token:
    on a loaded machine a slow first round alone makes a lag over half a second, and a hang-up as
    soon as it was seen ended the episode before any round of its own ran, warned as a stall with
    no factor (seen once beside two busy loops); the status read after the warning has the factor."""
    import logging

    from cent_serve.serving import PACE_LAG_WARN_S

    def warnings():
        return [rec.getMessage() for rec in caplog.records if "cannot keep up" in rec.getMessage()]

    caplog.set_level(logging.WARNING, logger="cent.serving")
    with Server(server_cfg(numerics="full", clock="paced", pace_factor=1e-4), "local") as s:
        with httpx.stream("POST", s.url + "/v1/completions", json=body(max_tokens=3000, n=4, stream=True),
                          timeout=REQUEST_TIMEOUT_S) as r:
            assert r.status_code == 200
            wait_for(lambda: status(s.url)["pace_lag_s"] > PACE_LAG_WARN_S, "a lag")
            wait_for(warnings, "the warning while the request runs")
            st = status(s.url)
            assert st["num_running"] == 4 and st["pace_lag_s"] > 0  # seen while it ran
            assert metric(httpx.get(s.url + "/metrics").text, "cent:pace_lag_seconds") > 0
        assert st["pace_lag_episodes"] == 1 and st["pace_factor_needed"] > 1e-4
        idle = wait_for(lambda: (x := status(s.url))["pace_lag_s"] == 0.0 and x, "no lag when idle")
        assert idle["pace_lag_episodes"] == 1
    assert len(warnings()) == 1 and "--pace-factor" in warnings()[0], warnings()


def _late(mon, late_s: float) -> None:
    """A round's tokens reached their clients `late_s` wall s late, on a paced latency so long (1e6 s)
    that only the absolute bound (`warn_s`) can start an episode."""
    mon.delivered(late_s, 1e6, 0.0)


def test_the_pace_estimate_averages_the_episode_not_its_first_round(caplog):
    """In the engine loop a stall (a warm-up round) runs, then its tokens are delivered late (`delivered`),
    then the episode's rounds run (`stepped`). A slow round right after the stall, then rounds that keep up:
    the warning, after 8 rounds, says it fell behind after a stall, not a pace factor ~80x too high from
    one round (the audit's 0.0518 against the 0.00066 the status gave); rounds that really are too slow
    get a factor measured over the episode, said as a short episode ends."""
    import logging

    from cent_serve.serving import PaceMonitor

    caplog.set_level(logging.WARNING, logger="cent.serving")
    mon = PaceMonitor(pace_factor=0.0005)
    mon.stepped(2.0, 0.05)  # the stall: on schedule until now, no episode yet
    _late(mon, 2.0)
    mon.stepped(0.02, 0.5)  # still slowish: 0.04 wall s per simulated s
    for _ in range(PaceMonitor.ESTIMATE_ROUNDS - 1):
        _late(mon, 1.9)
        mon.stepped(0.0001, 10.0)  # then well within the pace
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "after a stall" in msgs[0] and "--pace-factor" not in msgs[0], msgs
    assert mon.needed_factor() == pytest.approx(1.2 * (0.02 + 7 * 0.0001) / (0.5 + 7 * 10.0))

    caplog.clear()
    slow = PaceMonitor(pace_factor=0.0005)
    slow.stepped(5.0, 0.01)  # the stall, before the episode
    for k in range(3):  # a short episode: said as it ends
        _late(slow, 1.0 + k)
        slow.stepped(0.01, 1.0)
    slow.on_schedule()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "use --pace-factor 0.012 or more" in msgs[0] and "3.00 s late" in msgs[0], msgs


def test_below_pace_factor_1_a_lag_is_judged_in_simulated_time_and_the_estimate_keeps_what_was_said(caplog):
    """At pace 0.1 a 0.2 wall s lag is 2 s off every client figure: an episode, warned with both
    times (it passed unnoticed under the 0.5 wall s bound). The status's estimate does not fall below
    what the log said as the episode's later rounds run lighter (the audit's 0.0597 after a warned 0.222)."""
    import logging

    from cent_serve.serving import PACE_LAG_WARN_S, PaceMonitor

    caplog.set_level(logging.WARNING, logger="cent.serving")
    assert PaceMonitor(10.0).warn_s == PACE_LAG_WARN_S and PaceMonitor(0.1).warn_s == pytest.approx(0.05)
    mon = PaceMonitor(pace_factor=0.1)
    for _ in range(PaceMonitor.ESTIMATE_ROUNDS):
        _late(mon, 0.2)
        mon.stepped(0.02, 0.1)  # 0.2 wall s per simulated s: needs 0.24
    msgs = [r.getMessage() for r in caplog.records]
    assert mon.num_episodes == 1 and len(msgs) == 1, msgs
    assert "0.20 s late (2 s of simulated time at pace factor 0.1, " in msgs[0] and "--pace-factor 0.24" in msgs[0]
    for _ in range(50):  # lighter rounds, the lag not yet gone
        _late(mon, 0.1)
        mon.stepped(0.001, 0.1)
    assert mon.needed_factor() == pytest.approx(0.24)  # the running mean alone is 1.2 * 0.21 / 5.8 = 0.043
    mon.on_schedule()  # the next episode is its own: a light one reports its own figure
    _late(mon, 0.2)
    mon.stepped(0.001, 0.1)
    assert mon.num_episodes == 2 and mon.needed_factor() == pytest.approx(0.012)
    stall = PaceMonitor(pace_factor=0.1)  # a stall's warning gives no factor, so nothing holds the figure up
    _late(stall, 0.2)
    for _ in range(PaceMonitor.ESTIMATE_ROUNDS):
        stall.stepped(0.001, 0.1)
    stall.stepped(0.0, 10.0)
    assert stall.needed_factor() == pytest.approx(1.2 * 0.008 / 10.8)


def test_a_short_request_late_relative_to_its_paced_latency_is_counted_and_warned(caplog):
    """The tiny model's 64-token completions at pace factor 10 (full numerics, a user's report): every
    round takes ~9 ms of wall time where its 0.23 ms of simulated time is 2.3 ms paced, so the lag
    grows 6.7 ms a round and stays under the 0.5 s episode bound for all 64 rounds, yet a client timed
    the request ~3x its paced latency and nothing said so. Now the request is counted late once, the
    worst fraction (its first token: 6.7 ms late on 2.3 ms) stays after the engine is idle, and the
    log warns with the pace factor the rounds need; a second such request within QUIET_S is counted,
    not logged again, and one a few percent late on a long latency is neither."""
    import logging

    from cent_serve.serving import PACE_LATE_FRAC, PaceMonitor

    caplog.set_level(logging.WARNING, logger="cent.serving")
    now = [0.0]
    mon = PaceMonitor(pace_factor=10.0, clock=lambda: now[0])
    wall_s, sim_s = 0.009, 0.00023

    def request() -> None:
        worst = 0.0
        for k in range(1, 65):
            mon.stepped(wall_s, sim_s)
            worst = mon.delivered(k * (wall_s - 10 * sim_s), 10 * k * sim_s, worst)
            assert 0 < mon.lag_s < mon.warn_s  # never an episode by the absolute bound
        mon.on_schedule()
        now[0] += 1.0

    request()
    msgs = [r.getMessage() for r in caplog.records]
    assert mon.num_late_requests == 1 and mon.num_episodes == 1 and mon.lag_s == 0.0
    assert mon.late_frac_max == pytest.approx((wall_s - 10 * sim_s) / (10 * sim_s))  # 2.91
    assert len(msgs) == 1 and "291% of a request's paced latency" in msgs[0], msgs
    assert f"use --pace-factor {1.2 * wall_s / sim_s:.3g} or more" in msgs[0]  # 47
    request()
    assert mon.num_late_requests == 2 and len(caplog.records) == 1  # within QUIET_S, nothing new: not logged
    assert mon.delivered(PACE_LATE_FRAC * 0.5 * 10.0, 10.0, 0.0) == pytest.approx(0.05)  # 5% late on 10 s: not late
    assert mon.num_late_requests == 2 and mon.late_frac_max == pytest.approx(2.913, abs=1e-3)


def test_a_paced_servers_late_requests_show_after_it_is_idle():
    """At pace factor 1e-4 no engine keeps up: after a short request the lag gauge is back to 0 (in
    the first read), but the status and /metrics still count the request late, with how late (a
    fraction of its paced latency; the histogram has it above the late bound), so a client reading
    them after a run learns its wall times were off."""
    with Server(server_cfg(clock="paced", pace_factor=1e-4), "local") as s:
        before = status(s.url)
        assert (before["pace_late_requests"], before["pace_late_frac_max"]) == (0, 0.0)
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "cent:pace_late_fraction_count") == 0  # the series is there from the start
        assert "cent:pace_late_fraction_bucket{" in text
        assert httpx.post(s.url + "/v1/completions", json=body(), timeout=REQUEST_TIMEOUT_S).status_code == 200
        idle = status(s.url)
        assert idle["pace_lag_s"] == 0.0
        assert idle["pace_late_requests"] == 1 and idle["pace_late_frac_max"] > 0.1
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "cent:pace_late_requests_total") == 1
        assert metric(text, "cent:pace_late_fraction_max") == idle["pace_late_frac_max"]
        assert metric(text, "cent:pace_lag_seconds") == 0.0
        assert metric(text, "cent:pace_late_fraction_count") == 1
        assert metric(text, "cent:pace_late_fraction_sum") == idle["pace_late_frac_max"]
        assert metric(text, "cent:pace_late_fraction_bucket", le="0.1") == 0  # observed above the late bound


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises the bug
def test_a_request_whose_engine_thread_fails_gets_503_saying_so(caplog):
    """A bug that ends the engine thread under a collected request: 503 engine_stopped naming the
    failed engine thread (not a shutdown), and the log says so with the traceback."""
    cfg = server_cfg(clock="paced", pace_factor=1e4)  # the request runs for minutes unless stopped
    with Server(cfg, "local") as s:
        next_start = s.loop.engine.next_start_s  # called outside the round's fault handling
        calls = []

        def failing():
            calls.append(1)
            if len(calls) > 3:  # the request is running by then
                raise RuntimeError("a bug in the engine loop")
            return next_start()

        s.loop.engine.next_start_s = failing
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=400), timeout=60)
        assert (r.status_code, r.json()["error"]["cent"]["code"]) == (503, "engine_stopped"), r.text
        assert r.json()["error"]["message"].startswith("its engine thread failed: the request was aborted"), r.text
    assert "the engine thread failed" in caplog.text and "a bug in the engine loop" in caplog.text


@pytest.mark.parametrize("how", ["call", "arrive"])
def test_a_command_sent_as_the_engine_thread_closes_is_refused_not_left_waiting(how):
    """The engine thread closing: it has emptied its inbox (answering what was there) and is still
    alive. A command put then was never taken, and its client waited until the server's shutdown
    grace (10 s) cancelled it. Here the thread is held just after that emptying while a command is
    sent: it is refused at once with EngineStopped (503 engine_stopped over HTTP)."""
    import queue
    import sys
    import threading

    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.serving import EngineLoop, EngineStopped

    loop = EngineLoop(Engine(CentConfig(numerics="off")))
    get_nowait, emptied, go_on = loop.inbox.get_nowait, threading.Event(), threading.Event()

    def held_get_nowait():
        try:
            return get_nowait()
        except queue.Empty:
            if sys._getframe(1).f_code.co_name in ("_close", "_answer_pending") and not emptied.is_set():
                emptied.set()  # the closing thread's inbox is empty: hold it here, alive
                go_on.wait(10)
            raise

    loop.inbox.get_nowait = held_get_nowait
    loop.start()
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    assert emptied.wait(10) and loop.is_alive()

    async def send():
        if how == "call":
            return await loop.call(lambda eng: eng.now_s)
        return await loop.submit_all([([1, 2, 3], None, None)], asyncio.Queue(), arrival_s=0.0)

    async def bounded():  # 10 s: a hang fails here instead of stalling the suite; the answer takes microseconds
        return await asyncio.wait_for(send(), 10)

    try:
        with pytest.raises(EngineStopped):
            asyncio.run(bounded())
    finally:
        go_on.set()
        stopper.join(10)
    assert not loop.is_alive()


@pytest.mark.slow
def test_health_answers_while_the_engine_computes_without_pause():
    """On the virtual clock the engine thread computes round after round; the event loop shares its
    process (and the GIL). 8 sequences of 4,000 tokens of llama2-70b timing-only: /health waited up
    to 14 s for the event loop (each socket call gave the GIL up for a whole 5 ms switch interval,
    each sequence's every token woke the loop, and each round decoded every sequence's whole text
    again); well under a second now. The clients send again as soon as an answer comes, so the
    engine computes however fast the machine (a fixed amount of work once ran out before the
    probes on a fast one), and each probe is checked to have been answered while it did: the
    simulated clock moved between a status read before and one after. A starved event loop answers
    after the engine has run many rounds: the bug's 14 s were most of a 4,000-round request (13.6 s).
    So each probe must be answered within HEALTH_ROUNDS engine rounds, a count a loaded machine does
    not move (its load slows both threads; the GIL changes hands every 1 ms whatever the load). The
    wall bound, HEALTH_WAIT_S, is a liveness probe's longest usual timeout (1-10 s), 10x the most
    measured beside two busy loops; the 3 s it was failed once under heavier load."""
    import threading

    from cent_serve.config import CentConfig, ParallelConfig, model_preset

    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(32, 80, 1), numerics="off")
    cfg.server.port = 0
    done = threading.Event()

    def client(url):
        long = dict(model="llama2-70b", prompt="CENT", max_tokens=4000, ignore_eos=True)
        while not done.is_set():
            try:
                httpx.post(url + "/v1/completions", json=long, timeout=120)
            except httpx.HTTPError:  # the server stopping under it at the end
                return

    with Server(cfg, "local") as s:
        clients = [threading.Thread(target=client, args=(s.url,), daemon=True) for _ in range(24)]
        for t in clients:
            t.start()
        wait_for(lambda: status(s.url)["num_running"] >= 8, "8 running")
        waits, clocks, rounds = [], [], []
        for _ in range(5):
            before = status(s.url)
            t0 = time.monotonic()
            assert httpx.get(s.url + "/health", timeout=60).status_code == 200
            waits.append(time.monotonic() - t0)
            after = status(s.url)
            clocks.append((before["clock_s"], after["clock_s"]))
            rounds.append(after["num_rounds"] - before["num_rounds"])
            time.sleep(0.1)
        done.set()
    assert all(a < b for a, b in clocks), f"the engine stood still across a /health probe: {clocks}"
    assert max(rounds) < HEALTH_ROUNDS, (rounds, waits)
    assert max(waits) < HEALTH_WAIT_S, (waits, rounds)


def test_a_response_not_streamed_gets_one_delta_at_its_end_and_its_tokens_are_observed_each_round():
    """`final_only` (a response that is not streamed): the engine thread decodes its text and wakes
    the event loop once, when it ends, with all of its output, the same as the streamed request's
    deltas joined; the live metrics (`on_tokens`) still see its tokens round by round."""
    from cent_serve.config import CentConfig, model_preset
    from cent_serve.engine import Engine
    from cent_serve.model import load_weights
    from cent_serve.model.sampling import SamplingParams
    from cent_serve.request import RequestParams
    from cent_serve.serving import EngineLoop

    import numpy as np

    tiny = model_preset("tiny")
    eng = Engine(CentConfig(model=tiny, numerics="full"), weights=load_weights(tiny))
    observed, decoded = [], []
    loop = EngineLoop(eng, on_tokens=lambda req, before: observed.append((req.request_id, before,
                                                                         len(req.output_ids))))
    text = eng.text
    eng.text = lambda req: decoded.append(req.request_id) or text(req)
    loop.start()

    async def run(final_only):
        q: asyncio.Queue = asyncio.Queue()
        params = RequestParams(max_tokens=24, ignore_eos=True, sampling=SamplingParams(temperature=0.0))
        [req] = await loop.submit_all([([5, 6, 7], params, "x")], q, final_only=final_only)
        deltas = []
        while not (deltas and deltas[-1].finished):
            deltas.append((await asyncio.wait_for(q.get(), 60))[1])  # a hang fails here; this takes < 1 s
        return req.request_id, deltas

    try:
        streamed, parts = asyncio.run(run(False))
        whole, [end] = asyncio.run(run(True))
    finally:
        loop.stop()
    assert len(parts) > 1 and end.finished and end.finish_reason == "length"
    assert end.token_ids == [t for d in parts for t in d.token_ids] and len(end.token_ids) == 24
    assert end.text == "".join(d.text for d in parts)
    gaps = lambda times: np.diff(times).tolist()  # noqa: E731 - the second request arrived later
    assert gaps(end.times_s) == pytest.approx(gaps([t for d in parts for t in d.times_s]), rel=1e-9)
    assert len(end.times_s) == 24
    assert decoded.count(whole) == 1 and decoded.count(streamed) == len(parts)
    seen = [(before, upto) for rid, before, upto in observed if rid == whole]
    assert len(seen) > 1 and seen[0][0] == 0 and seen[-1][1] == 24
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:])), seen  # every token observed once, in order


@pytest.mark.parametrize("clock", ["virtual", "paced"])
def test_the_virtual_clock_wakes_the_event_loop_once_per_flush_interval_not_per_round(monkeypatch, clock):
    """The engine thread hands the deltas of its rounds to the event loop at most once per
    FLUSH_EVERY_S of wall time on the virtual clock (and always before it waits): a wake-up per
    round of a fast virtual clock kept the event loop writing one token per stream at a time. Here
    the interval is an hour, so the only wake-ups are the first (nothing was handed yet) and when the engine runs out of work, with every
    delta of the run after the first round's, in order. The paced clock still wakes the loop every round (its tokens are
    due at their times)."""
    from cent_serve import serving, streams
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.request import RequestParams
    from cent_serve.serving import EngineLoop

    monkeypatch.setattr(streams, "FLUSH_EVERY_S", 3600.0)  # read by StreamDelivery._flush, in streams.py
    tokens, streams = 40, 3
    loop = EngineLoop(Engine(CentConfig(numerics="off")), clock=clock, pace_factor=1e-3)
    rounds = []
    loop.on_round = rounds.append
    loop.start()

    async def run():
        aio, wakeups = asyncio.get_running_loop(), []
        call = aio.call_soon_threadsafe

        def counted(fn, *args):
            if fn is serving._put_all:
                wakeups.append(len(args[0]))
            return call(fn, *args)

        aio.call_soon_threadsafe = counted
        q: asyncio.Queue = asyncio.Queue()
        params = RequestParams(max_tokens=tokens, ignore_eos=True)
        await loop.submit_all([([1, 2, 3], params, i) for i in range(streams)], q)
        got, ended = {i: [] for i in range(streams)}, 0
        while ended < streams:
            tag, d = await asyncio.wait_for(q.get(), 60)  # a hang fails here; the run takes well under a second
            got[tag] += d.token_ids
            ended += d.finished
        return wakeups, got

    try:
        wakeups, got = asyncio.run(run())
    finally:
        loop.stop()
    assert all(len(ids) == tokens for ids in got.values())
    assert len(rounds) >= tokens
    if clock == "virtual":
        assert wakeups == [streams, streams * (tokens - 1)]  # the first round's at once, the rest at the end
    else:
        assert len(wakeups) >= tokens, wakeups


def test_an_aborts_end_is_handed_over_at_once_under_the_flush_interval(monkeypatch):
    """A command taken (an abort, here) hands what is pending to the event loop at once, whatever
    FLUSH_EVERY_S (an hour here): the aborted stream's end reaches its handler while the other
    stream still runs, not when the engine next waits. Checked on the engine thread as it hands the
    end over (so no race): the other request has not finished then."""
    from cent_serve import serving, streams
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.request import RequestParams
    from cent_serve.serving import EngineLoop

    monkeypatch.setattr(streams, "FLUSH_EVERY_S", 3600.0)  # read by StreamDelivery._flush, in streams.py
    engine = Engine(CentConfig(numerics="off"))
    # the rounds after the first tokens wait for the abort: on a busy machine the engine thread ran all
    # 2,000 tokens of both before this thread got to abort one (the check below met an unset request)
    released, real_step = threading.Event(), engine.step

    def step():
        if engine.stats.generation_tokens:
            assert released.wait(60), "the test never released the engine"
        return real_step()

    engine.step = step
    loop = EngineLoop(engine)
    loop.start()

    async def run():
        aio, seen, reqs = asyncio.get_running_loop(), [], {}
        call = aio.call_soon_threadsafe

        def counted(fn, *args):
            if fn is serving._put_all:
                for _, (tag, d) in args[0]:
                    if tag == "aborted" and d.finished:  # on the engine thread: the other one's state now
                        seen.append(reqs["kept"].is_finished)
            return call(fn, *args)

        aio.call_soon_threadsafe = counted
        q: asyncio.Queue = asyncio.Queue()
        params = RequestParams(max_tokens=2000, ignore_eos=True)
        reqs["kept"], aborted = await loop.submit_all([([1, 2, 3], params, "kept"), ([1, 2, 3], params, "aborted")],
                                                      q)
        await asyncio.wait_for(q.get(), 60)  # the first round's, handed over at once
        loop.abort(aborted.request_id)
        released.set()
        ended = set()
        while len(ended) < 2:
            tag, d = await asyncio.wait_for(q.get(), 60)  # a hang fails here; the run takes a few seconds
            if d.finished:
                ended.add(tag)
        return seen

    try:
        seen = asyncio.run(run())
    finally:
        released.set()
        loop.stop()
    assert seen == [False]  # handed over once, while the kept stream still ran


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises the bug
def test_a_stream_gets_its_end_when_a_failed_engine_thread_cannot_end_it_either():
    """A bug ends the engine thread, and strikes again as the thread ends the streams (here: the
    text of every request fails): each stream still gets a last delta, finish_reason error, and a
    command sent meanwhile is refused; before, the stream waited for ever and so did the command."""
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.request import RequestParams
    from cent_serve.serving import EngineLoop, EngineStopped

    loop = EngineLoop(Engine(CentConfig(numerics="off")), clock="paced", pace_factor=1e4)  # runs for minutes
    loop.start()
    eng = loop.engine

    def broken(*_):
        raise RuntimeError("a bug in the engine")

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        await loop.submit_all([([1, 2, 3], RequestParams(max_tokens=400, ignore_eos=True), "x")], q)
        eng.text = broken  # ending the stream fails too
        eng.next_start_s = broken  # the thread's loop fails
        deltas = []
        while not (deltas and deltas[-1][1].finished):
            deltas.append(await asyncio.wait_for(q.get(), 10))  # a hang fails here; the end takes milliseconds
        with pytest.raises(EngineStopped):
            await asyncio.wait_for(loop.call(lambda e: e.now_s), 10)
        return deltas[-1][1]

    end = asyncio.run(run())
    assert end.finish_reason == "error" and "could not end this request: a bug in the engine" in end.error
    loop._thread.join(10)
    assert not loop.is_alive()


def test_a_compressed_body_is_415_and_a_client_gone_mid_body_is_counted_aborted():
    """`Content-Encoding: gzip` got "the body is not valid UTF-8 (byte 1)"; a client that sent part of
    its body and left was counted a rejected invalid request, as if its body had been bad."""
    import gzip as gz

    with Server(server_cfg(), "local") as s:
        r = httpx.post(s.url + "/v1/completions", content=gz.compress(json.dumps(body()).encode()),
                       headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert r.status_code == 415 and "Content-Encoding gzip is not accepted" in r.json()["error"]["message"]
        sock = socket.create_connection(("127.0.0.1", s.port))
        data = json.dumps(body()).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(data) + data[:-20])
        sock.close()
        expected = {("rejected", "invalid_request"): 1, ("aborted", "client_disconnect"): 1}
        wait_for(lambda: outcomes(s.url) == expected, "the two requests counted")
        assert httpx.post(s.url + "/v1/completions", json=body()).status_code == 200


def test_lag_warnings_that_tell_nothing_new_are_counted_not_logged(caplog):
    """A busy machine stalls a low pace factor's rounds again and again (the soak audit: 63 warnings in
    47 s at pace 0.02): within `QUIET_S` of a warning, a stall's warning or one that asks no higher a
    factor is counted, and the next logged one says how many were not; a higher factor is always said."""
    import logging

    from cent_serve.serving import PaceMonitor

    caplog.set_level(logging.WARNING, logger="cent.serving")
    now = [0.0]
    mon = PaceMonitor(pace_factor=0.02, clock=lambda: now[0])

    def episode(wall_per_round: float) -> None:  # a short episode of 3 rounds, said as it ends
        for _ in range(3):
            _late(mon, 1.0)
            mon.stepped(wall_per_round, 1.0)
        mon.on_schedule()
        now[0] += 1.0

    for _ in range(5):
        episode(0.001)  # the rounds keep up: stalls
    episode(0.05)  # too slow: 0.06 needed, news
    episode(0.04)  # too slow, but no higher than said
    episode(0.1)  # higher: said
    msgs = [r.getMessage() for r in caplog.records]
    assert mon.num_episodes == 8 and len(msgs) == 3, msgs
    assert "after a stall" in msgs[0] and "unlogged" not in msgs[0]
    assert "--pace-factor 0.06 or more (4 more episodes of lag since the last warning went unlogged" in msgs[1]
    assert "--pace-factor 0.12 or more (1 more episode of lag" in msgs[2]
    now[0] += PaceMonitor.QUIET_S
    caplog.clear()
    episode(0.001)  # a stall, the quiet time over: logged again
    assert [r.getMessage() for r in caplog.records][0].startswith("paced mode fell behind")
