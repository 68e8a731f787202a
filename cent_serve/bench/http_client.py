"""Replay a trace against a running server over HTTP (`cent bench run --url`).

Every request streams (`stream_options.include_usage`), so the client sees
each token when the server releases it and measures wall-clock TTFT, ITL
and E2E. Against cent-serve it also collects the server's simulated times
(the `cent` fields). How requests are sent depends on the server's clock:

- `virtual` (cent-serve): exact replay. Requests go one after another in
  arrival order, each carrying its trace arrival (`arrival_s`) and the next
  one's (`hold_until_s`), so the engine never runs past a request it has not
  seen yet; the simulated results equal the in-process run's.
- `paced` (cent-serve) or any other OpenAI-compatible server: each request is
  sent when the wall clock reaches its arrival (x the pace factor), with at
  most `concurrency` in flight.

What the replay learns of the server before it starts is `http_server`'s; how a failed answer is
named, `http_failures`'.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

from cent_serve.bench.http_failures import (BAD_REQUEST, CONNECTION_ERROR, ERROR_CODES, SERVER_ERROR, error_code,
                                            event_reason, failure_reason)
from cent_serve.bench.http_server import _bos, _probe, _Server, _server, _tokens, server_root
from cent_serve.bench.progress import Progress
from cent_serve.bench.prompts import prompt_ids
from cent_serve.bench.records import BenchResult, RequestRecord, Sample
from cent_serve.bench.request import Request as TraceRequest
from cent_serve.bench.runner import ZeroTokens, engine_id
from cent_serve.request import prompt_too_long
from cent_serve.serving import HOLD_EXPIRY_S, RELEASE_HOLD_S  # RELEASE_HOLD_S: the last request's hold, released

__all__ = ["replay_http", "release_free_heap", "WallTimes", "REQUEST_TIMEOUT_S", "STATUS_POLL_S",
           "RELEASE_EVERY_REQUESTS",
           # http_failures.py's and http_server.py's, still reached here (the private ones by tests)
           "SERVER_ERROR", "ERROR_CODES", "CONNECTION_ERROR", "BAD_REQUEST", "error_code", "failure_reason",
           "event_reason", "server_root", "_Server", "_server", "_probe", "_tokens", "_bos"]

log = logging.getLogger("cent.bench")
REQUEST_TIMEOUT_S = 600.0
"""Longest wait for one request's stream."""
STATUS_POLL_S = 0.25
"""Wall seconds between samples of the server's queues."""
RELEASE_EVERY_REQUESTS = 64
"""Requests ended between two `release_free_heap` calls of a replay."""


@dataclass
class WallTimes:
    """Client-side wall-clock measurements of one request."""

    sent: float = 0.0
    first: float | None = None
    last: float | None = None
    chunks: array | None = None
    """The wall time of each chunk with text, kept only from a server without simulated times, where
    they become the token times (`_Replay.records_in_trace_time`; an `array('d')` as theirs). From
    cent-serve it stays None: its chunks carry each token's simulated time, and a float per token kept
    here for nothing was about half of what a long replay held per request (~9 kB for 260 tokens)."""


JSON_HEADERS = {"Content-Type": "application/json"}


def _encoded(body: dict) -> bytes:
    """`body` as httpx's `json=` sends it (compact UTF-8), encoded before the request is sent so that
    only these bytes stay while it streams: a request in flight held its prompt as a list of ids too
    (8 bytes a token, ~9 kB of the ~40 kB an Azure conversation request holds in flight), and an
    overloaded replay has as many in flight as the server queues (up to `scheduler.max_waiting`)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


async def _one(client: httpx.AsyncClient, content: bytes, rec: RequestRecord, wall: WallTimes,
               submitted: asyncio.Event) -> RequestRecord:
    """Send one request (`content`: its JSON body, `_encoded`) and fill `rec` and `wall` from its
    stream; returns `rec`."""
    wall.sent = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", content=content, headers=JSON_HEADERS,
                                 timeout=REQUEST_TIMEOUT_S) as r:
            submitted.set()
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    err = json.loads(raw).get("error", {})
                except (ValueError, AttributeError):  # not OpenAI's error JSON (a proxy, another server)
                    err = {"message": raw[:200].decode(errors="replace")}
                if not isinstance(err, dict):
                    err = {"message": str(err)}
                # a 5xx is the server's failure ("error", as a stream's error event and in-process), a 4xx a refusal
                rec.finish_reason = "rejected" if r.status_code == 429 else "error" if r.status_code >= 500 else "invalid"
                rec.failure_reason = failure_reason(r.status_code, err)
                rec.error = str(err.get("message", "")) or f"HTTP {r.status_code}"  # as in-process: the reason
                return rec
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:  # cent-serve ends a stream this way when the devices failed (or none serve)
                    rec.finish_reason = "error"
                    rec.failure_reason = event_reason(chunk["error"])
                    rec.error = chunk["error"].get("message", "error")
                    continue
                now = time.perf_counter()
                if chunk.get("usage"):
                    rec.num_output_tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    cent = c.get("cent", {})
                    if c.get("text"):
                        wall.first = wall.first or now
                        wall.last = now
                        if wall.chunks is not None:
                            wall.chunks.append(now)
                    rec.token_times_s.extend(cent.get("times_s", ()))  # copied: the chunk's float objects go with it
                    if c.get("finish_reason"):
                        rec.finish_reason = c["finish_reason"]
                        if "arrival_s" in cent:
                            rec.arrival_s, rec.scheduled_s = cent["arrival_s"], cent["scheduled_s"]
                            rec.first_token_s, rec.finish_s = cent["first_token_s"], cent["finish_s"]
                            rec.energy_mj, rec.preemptions = cent["energy_mj"], cent["preemptions"]
    except httpx.HTTPError as exc:
        rec.finish_reason, rec.failure_reason = "error", CONNECTION_ERROR
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        submitted.set()  # whatever happened, the replay moves on to the next request
    return rec


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, None where the C library has none (musl, macOS) or cannot be opened
    by name None (Windows, where `ctypes.CDLL(None)` raises)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
    return getattr(libc, "malloc_trim", None)


def release_free_heap() -> None:
    """Give the free pages inside the C heap back to the kernel (glibc's `malloc_trim(0)`; nothing
    where there is none). A replay's streams read their socket 256 kB at a time (asyncio's `recv`
    size), which glibc serves from its heap once its mmap threshold has risen past that, and the
    records' token times (an `array('d')` past pymalloc's 512 bytes) land in the freed tails of
    those reads: each later read needs new room at the heap's top. Nothing stayed allocated, but
    the heap's free space, and the resident memory with it, grew by ~18 kB a request of an Azure
    conversation replay (39 MB free in a 61 MB heap after 2000 requests) without end; the kernel
    takes those pages back."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _Replay:
    """One HTTP replay: the requests in flight, their records, the status samples."""

    def __init__(self, client: httpx.AsyncClient, srv: _Server, requests: list[TraceRequest], concurrency: int,
                 seed: int, progress: bool, release_heap: Callable[[], None] = release_free_heap) -> None:
        """`release_heap`: called every RELEASE_EVERY_REQUESTS requests that ended (`release_free_heap`)."""
        self.client, self.srv, self.requests, self.seed = client, srv, requests, seed
        self.release_heap = release_heap
        self.num_ended = 0
        self.records: dict[str, RequestRecord] = {}
        self.walls: dict[str, WallTimes] = {}
        self.tasks: set[asyncio.Task] = set()
        """Virtual clock: the requests in flight (`_ended` lets each go)."""
        self.samples: list[Sample] = []
        self.sem = asyncio.Semaphore(concurrency)
        self.zeros = ZeroTokens()
        self.bar = Progress(len(requests), "replay (http)", progress)
        self.done = asyncio.Event()
        self.t0 = time.perf_counter()
        self._in_trace: list[RequestRecord] | None = None
        """`records_in_trace_time`'s records, once shifted."""
        # each request's refusal for a prompt past the server's context (not sent: `send`), and the
        # index of the next request that is sent: a sent request holds the server's clock until it
        nxt: list[int | None] = [None] * len(requests)
        self.too_long = [srv.max_model_len and prompt_too_long(max(1, tr.num_prompt_tokens), srv.max_model_len)
                         for tr in requests]
        for i in range(len(requests) - 2, -1, -1):
            nxt[i] = i + 1 if not self.too_long[i + 1] else nxt[i + 1]
        self.next_sent = nxt

    async def run(self) -> float:
        """Send every request (see the module docstring for how); returns the wall seconds."""
        poller = asyncio.create_task(self.poll())
        if self.srv.virtual:
            for i, tr in enumerate(self.requests):
                await self.send(i, tr)
            await asyncio.gather(*self.tasks)  # each ticks the bar as it ends, while later ones are sent
        else:
            await asyncio.gather(*[self.send(i, tr) for i, tr in enumerate(self.requests)])
        self.bar.close()
        self.done.set()
        await poller
        return time.perf_counter() - self.t0

    async def send(self, i: int, tr: TraceRequest) -> None:
        srv = self.srv
        rid = engine_id(tr)
        self.zeros.add(tr)  # 0 tokens are sent as 1: the engine needs at least one of each
        rec = self.records[rid] = RequestRecord(rid, tr.arrival_s, max(1, tr.num_prompt_tokens),
                                                trace_arrival_s=tr.trace_arrival_s)
        wall = self.walls[rid] = WallTimes(chunks=None if srv.cent else array("d"))
        too_long = self.too_long[i]
        if too_long:
            # what the server answers (400, context_exceeded), without building and sending a prompt
            # that long first: a trace row of 3e9 tokens would take all the memory
            rec.finish_reason, rec.failure_reason, rec.error = "invalid", too_long.reason, str(too_long)
            self.ended(rec)
            return
        submitted = asyncio.Event()
        if srv.virtual:
            task = asyncio.create_task(self._counted(_one(self.client, self.body(i, tr), rec, wall, submitted)))
            await submitted.wait()  # in order: the engine must see request i before i + 1
            self.tasks.add(task)
            task.add_done_callback(self._ended)
            return
        delay = self.t0 + tr.arrival_s * srv.pace - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with self.sem:
            await _one(self.client, self.body(i, tr), rec, wall, submitted)
        self.ended(rec)

    def body(self, i: int, tr: TraceRequest) -> bytes:
        """Request `i`'s JSON body, encoded (`_encoded`: its list of prompt ids goes once this returns)."""
        srv = self.srv
        # the server's own start (a prompt of ids is not given one by the server)
        ids = prompt_ids(max(1, tr.num_prompt_tokens), (self.seed, i), srv.bos)
        body = dict(model=srv.model, prompt=ids, max_tokens=max(1, tr.num_output_tokens), ignore_eos=True,
                    stream=True, stream_options={"include_usage": True})
        if srv.virtual:
            j = self.next_sent[i]  # the next request the server will see (a refused one is not sent)
            nxt = self.requests[j].arrival_s + srv.offset if j is not None else RELEASE_HOLD_S
            body.update(arrival_s=tr.arrival_s + srv.offset, hold_until_s=nxt)
        return _encoded(body)

    def _ended(self, task: asyncio.Task) -> None:
        """Let a finished request's task go: kept to the end, each held its coroutine, context and
        weak references (~0.7 kB a request). One that raised stays, for `run`'s gather to raise."""
        if not task.cancelled() and task.exception() is None:
            self.tasks.discard(task)

    def ended(self, rec: RequestRecord) -> None:
        """Tick the bar for a request that ended; every RELEASE_EVERY_REQUESTS, release the free heap."""
        self.bar.done(rec)
        self.num_ended += 1
        if self.num_ended % RELEASE_EVERY_REQUESTS == 0:
            self.release_heap()

    async def _counted(self, sent) -> None:
        """A virtual-clock request's `_one`, ticking the bar when it ends (it ticked once the whole
        trace was sent: a replay against a slow server sat at 0 while requests finished)."""
        self.ended(await sent)

    async def poll(self) -> None:
        """The engine's queues over time, for the timeline plot."""
        while self.srv.cent and not self.done.is_set():
            try:
                x = (await self.client.get("/v1/cent/status")).json()
                # paced: the wall clock's time (the engine's waits idle); virtual: the engine's, as in-process
                now = x["clock_s"] if self.srv.virtual else x.get("sim_now_s", x["clock_s"])
                # a reused virtual server's clock can stand a round before the offset (its last finish)
                self.samples.append(Sample(max(0.0, now - self.srv.offset), x["num_waiting"], x["num_running"],
                                           x["kv_usage"]))
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            try:
                await asyncio.wait_for(self.done.wait(), STATUS_POLL_S)
            except asyncio.TimeoutError:
                pass

    def records_in_trace_time(self) -> list[RequestRecord]:
        """The records with the server's simulated times shifted back to trace time, or, from a
        server without simulated times, the wall clock's. A request the server refused keeps the
        trace arrival the client gave it (no simulated time came back). The shift is made once, in
        place (a second copy of every request's token times would double the peak): a second call
        returns the same records."""
        if self._in_trace is not None:
            return self._in_trace
        recs, srv, t0 = list(self.records.values()), self.srv, self.t0
        if srv.cent:
            for r in recs:
                if r.finish_s is not None:  # the server's times came back (else: the client's trace arrival)
                    for name in ("arrival_s", "scheduled_s", "first_token_s", "finish_s"):
                        v = getattr(r, name)
                        if v is not None:
                            setattr(r, name, v - srv.offset)
                _shift(r.token_times_s, srv.offset)
        else:
            for r in recs:  # no simulated times: the wall clock is the only clock
                w = self.walls[r.request_id]
                r.arrival_s, r.scheduled_s = w.sent - t0, w.sent - t0
                r.first_token_s = None if w.first is None else w.first - t0
                r.finish_s = None if w.last is None else w.last - t0
                times, w.chunks = w.chunks, None  # the chunks' times become the record's: one copy
                _shift(times, t0)
                r.token_times_s = times
        self._in_trace = recs
        return recs


def _shift(times: array, by: float) -> None:
    """`times` less `by`, in place (a numpy view of the array's buffer: no per-token Python loop)."""
    if len(times):
        view = np.frombuffer(times, dtype=np.float64)
        view -= by
        del view  # the array can grow again once no view holds its buffer


def _over_replay(start: list[dict], end: list[dict], offset: float) -> list[dict]:
    """The devices' busy seconds and clocks over this replay: a server that ran before counts its
    devices' busy time from its own start, and its clock from before the trace's time 0."""
    before = {(d.get("replica", 0), d["device_id"]): d["busy_s"] for d in start}
    out = []
    for d in end:
        was = before.get((d.get("replica", 0), d["device_id"]), {})
        out.append(dict(d, busy_s={k: v - was.get(k, 0.0) for k, v in d["busy_s"].items()},
                        **({"clock_s": d["clock_s"] - offset} if d.get("clock_s") is not None else {})))
    return out


def _terms_over_replay(start: dict | None, end: dict | None) -> dict[str, float] | None:
    """The devices' joules by term charged during this replay (the status's `energy_by_term_j` at its end
    less at its start); None when the server gives none (GPUs, not cent-serve)."""
    if start is None or end is None:
        return None
    return {k: v - start.get(k, 0.0) for k, v in end.items()}


async def replay_http(url: str, requests: list[TraceRequest], concurrency: int = 256, seed: int = 0,
                      api_key: str | None = None, progress: bool = True) -> tuple[BenchResult, dict]:
    """Replay over HTTP; returns the result (simulated times when the server gives them) and the
    client's wall-clock measurements per request id."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # exact replay keeps every request's stream open while the next is sent: no connection cap there
    # (a cap would hold back the request the engine's clock is waiting for)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    try:
        client = httpx.AsyncClient(base_url=server_root(url), headers=headers, limits=limits, timeout=30)
    except httpx.InvalidURL as exc:
        raise ValueError(f"--url {url!r} is invalid ({exc}): use e.g. http://127.0.0.1:8000") from None
    async with client:
        srv = await _server(client, url)
        replay = _Replay(client, srv, requests, concurrency, seed, progress)
        wall_s = await replay.run()
        end = (await client.get("/v1/cent/status")).json() if srv.cent else {}
    recs = replay.records_in_trace_time()
    if srv.virtual:  # the engine's clock is the replay's: exactly the in-process run's
        clock = end.get("clock_s", 0.0) - srv.offset
    elif srv.cent:  # paced: the engine's clock idles behind the wall clock's, maybe before the replay's start
        clock = max([end.get("clock_s", 0.0) - srv.offset, 0.0] + [r.finish_s for r in recs if r.finish_s is not None])
    else:
        clock = wall_s
    devices = _over_replay(srv.status.get("devices", []), end.get("devices", []), srv.offset)
    result = BenchResult(recs, replay.samples, devices, clock, wall_s, end, replay.zeros.requests,
                         energy_terms_j=_terms_over_replay(srv.status.get("energy_by_term_j"),
                                                           end.get("energy_by_term_j")))
    replay.zeros.warn()
    # what the server counted during this replay that makes it not the in-process one (`EngineLoop`)
    # None where the server keeps no such count (no virtual clock: paced, or not cent-serve), not a 0 that reads as exact
    missed = {k: end[f"num_{k}"] - srv.status.get(f"num_{k}", 0) if srv.virtual and f"num_{k}" in end else None
              for k in ("hold_expiries", "late_arrivals")}
    if srv.virtual and any(missed.values()):
        log.warning("%d replay hold(s) lapsed and %d arrival(s) came late on the server during this replay: its "
                    "figures are not the in-process ones (a hold lapses when the replay sends nothing for %g s; "
                    "an arrival comes late when another client's requests moved the server's clock past it): "
                    "replay again on a server no other client uses", missed["hold_expiries"],
                    missed["late_arrivals"], HOLD_EXPIRY_S)
    wall_stats = {rid: dict(ttft_s=None if w.first is None else w.first - w.sent,
                            e2e_s=None if w.last is None else w.last - w.sent) for rid, w in replay.walls.items()}
    return result, dict(per_request=wall_stats, clock="simulated" if srv.cent else "wall",
                        server_clock=srv.status.get("clock_mode"), model=srv.model, server_config=srv.config,
                        **missed)
