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
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
from tqdm import tqdm

from cent_serve.bench.prompts import synthetic_prompt
from cent_serve.bench.request import Request as TraceRequest
from cent_serve.bench.runner import BenchResult, RequestRecord, Sample

RELEASE_HOLD_S = 1e18
"""`hold_until_s` of the last request: no hold."""
REQUEST_TIMEOUT_S = 600.0
"""Longest wait for one request's stream."""
STATUS_POLL_S = 0.25
"""Wall seconds between samples of the server's queues."""


@dataclass
class WallTimes:
    """Client-side wall-clock measurements of one request."""

    sent: float = 0.0
    first: float | None = None
    last: float | None = None
    chunks: list[float] = field(default_factory=list)


async def _one(client: httpx.AsyncClient, body: dict, rec: RequestRecord, wall: WallTimes,
               submitted: asyncio.Event) -> None:
    wall.sent = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S) as r:
            submitted.set()
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    err = json.loads(raw).get("error", {})
                except (ValueError, AttributeError):  # not OpenAI's error JSON (a proxy, another server)
                    err = {"message": raw[:200].decode(errors="replace")}
                rec.finish_reason = "rejected" if r.status_code == 429 else "invalid"
                rec.error = f"{r.status_code}: {err.get('message', '')}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
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
                        wall.chunks.append(now)
                    rec.token_times_s += cent.get("times_s", [])
                    if c.get("finish_reason"):
                        rec.finish_reason = c["finish_reason"]
                        if "arrival_s" in cent:
                            rec.arrival_s, rec.scheduled_s = cent["arrival_s"], cent["scheduled_s"]
                            rec.first_token_s, rec.finish_s = cent["first_token_s"], cent["finish_s"]
                            rec.energy_mj, rec.preemptions = cent["energy_mj"], cent["preemptions"]
    except httpx.HTTPError as exc:
        submitted.set()
        rec.finish_reason, rec.error = "error", f"{type(exc).__name__}: {exc}"


async def replay_http(url: str, requests: list[TraceRequest], concurrency: int = 256, seed: int = 0,
                      api_key: str | None = None, progress: bool = True) -> tuple[BenchResult, dict]:
    """Replay over HTTP; returns the result (simulated times when the server gives them) and the
    client's wall-clock measurements per request id."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # exact replay keeps every request's stream open while the next is sent: no connection cap there
    # (a cap would hold back the request the engine's clock is waiting for)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=30) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        st = await client.get("/v1/cent/status")
        cent = st.status_code == 200
        status = st.json() if cent else {}
        virtual = cent and status.get("clock_mode") == "virtual"
        offset = status.get("clock_s", 0.0) if virtual else 0.0
        pace = status.get("pace_factor", 1.0) if cent else 1.0
        bos = 1
        records, walls, tasks = {}, {}, []
        sem = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(requests), unit="req", desc="replay (http)", disable=not progress, mininterval=1.0)
        t0 = time.perf_counter()

        async def run(i: int, tr: TraceRequest) -> None:
            rid = f"trace-{tr.request_id}"
            rec = records[rid] = RequestRecord(rid, tr.arrival_s, max(1, tr.num_prompt_tokens))
            wall = walls[rid] = WallTimes()
            ids = synthetic_prompt(max(1, tr.num_prompt_tokens), (seed, i), bos_token_id=bos).token_ids
            body = dict(model=model, prompt=ids, max_tokens=max(1, tr.num_output_tokens), ignore_eos=True,
                        stream=True, stream_options={"include_usage": True})
            submitted = asyncio.Event()
            if virtual:
                nxt = requests[i + 1].arrival_s + offset if i + 1 < len(requests) else RELEASE_HOLD_S
                body.update(arrival_s=tr.arrival_s + offset, hold_until_s=nxt)
                task = asyncio.create_task(_one(client, body, rec, wall, submitted))
                await submitted.wait()  # in order: the engine must see request i before i + 1
                tasks.append(task)
                return
            delay = t0 + tr.arrival_s * pace - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with sem:
                await _one(client, body, rec, wall, submitted)
            bar.update(1)

        samples: list[Sample] = []
        done = asyncio.Event()

        async def poll() -> None:  # the engine's queues over time, for the timeline plot
            while cent and not done.is_set():
                try:
                    x = (await client.get("/v1/cent/status")).json()
                    samples.append(Sample(x["clock_s"] - offset, x["num_waiting"], x["num_running"], x["kv_usage"]))
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                try:
                    await asyncio.wait_for(done.wait(), STATUS_POLL_S)
                except asyncio.TimeoutError:
                    pass

        poller = asyncio.create_task(poll())
        if virtual:
            for i, tr in enumerate(requests):
                await run(i, tr)
            for t in asyncio.as_completed(tasks):
                await t
                bar.update(1)
        else:
            await asyncio.gather(*[run(i, tr) for i, tr in enumerate(requests)])
        bar.close()
        done.set()
        await poller
        wall_s = time.perf_counter() - t0
        end = (await client.get("/v1/cent/status")).json() if cent else {}
    recs = list(records.values())
    if virtual:  # back to trace time
        for r in recs:
            for name in ("arrival_s", "scheduled_s", "first_token_s", "finish_s"):
                v = getattr(r, name)
                if v is not None:
                    setattr(r, name, v - offset)
            r.token_times_s = [t - offset for t in r.token_times_s]
    elif not cent:
        for r in recs:  # no simulated times: the wall clock is the only clock
            w = walls[r.request_id]
            r.arrival_s, r.scheduled_s = w.sent - t0, w.sent - t0
            r.first_token_s = None if w.first is None else w.first - t0
            r.finish_s = None if w.last is None else w.last - t0
            r.token_times_s = [c - t0 for c in w.chunks]
    devices = end.get("devices", [])
    clock = end.get("clock_s", 0.0) - offset if cent else wall_s
    result = BenchResult(recs, samples, devices, clock, wall_s, end)
    wall_stats = {rid: dict(ttft_s=None if w.first is None else w.first - w.sent,
                            e2e_s=None if w.last is None else w.last - w.sent) for rid, w in walls.items()}
    return result, dict(per_request=wall_stats, clock="simulated" if cent else "wall",
                        server_clock=status.get("clock_mode"), model=model)
