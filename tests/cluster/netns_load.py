"""Load client run on host 1 of a `tests.cluster.netns.Hosts` cluster, next to `cent serve`:
waits up to WAIT_S for /health to answer 200, then `STREAMS` concurrent streamed completions; prints `STREAMING` once every stream has a token (the
test then injects its fault), then polls /health until the streams end, and prints one
`RESULT {json}`: each stream's outcome, every HTTP status seen, the health answers."""
from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from tests.serving.utils import read_stream

STREAM_TIMEOUT_S = 600.0
"""A stream that has not ended by then counts as hung (the issue's named timeout for a client)."""


async def stream(client: httpx.AsyncClient, i: int, started: set, max_tokens: int) -> dict:
    body = {"model": "tiny", "prompt": f"host stream {i}", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    out = {"status": None, "tokens": 0, "error": None, "finish": None, "done": False}
    try:
        async with client.stream("POST", "/v1/completions", json=body, timeout=STREAM_TIMEOUT_S) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["error"] = (await r.aread()).decode(errors="replace")[:300]
                return out
            out.update(await read_stream(r, lambda: started.add(i)))
    except httpx.TimeoutException:
        out["error"] = "hung: no end within the client's timeout"
    except httpx.HTTPError as exc:
        out["error"] = f"transport: {type(exc).__name__}: {exc}"
    return out


async def probe(client: httpx.AsyncClient) -> list:
    """One completion sent while the system is short: [status, its finish or error]."""
    try:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "probe", "max_tokens": 4,
                                                       "ignore_eos": True}, timeout=STREAM_TIMEOUT_S)
        body = r.json()
        return [r.status_code, body.get("error", {}).get("message") if r.status_code != 200
                else body["choices"][0]["finish_reason"]]
    except httpx.HTTPError as exc:
        return [None, f"transport: {type(exc).__name__}"]


async def healthy(client: httpx.AsyncClient, timeout_s: float, seen: list, probes: list) -> float | None:
    """Seconds until /health answers 200 "ok" (None: not within `timeout_s`): every replica up, not
    the 200 "degraded" of a server with one down while another serves; the other answers on the way
    go to `seen`; at the first of them a completion is sent (`probes` gets its task)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            h = await client.get("/health", timeout=5)
            if h.status_code == 200 and h.json()["status"] == "ok":
                return time.monotonic() - t0
            if not probes:
                probes.append(asyncio.create_task(probe(client)))
            seen.append([round(time.monotonic() - t0, 2), h.status_code, h.text[:200]])
        except httpx.HTTPError as exc:
            seen.append([round(time.monotonic() - t0, 2), None, type(exc).__name__])
        await asyncio.sleep(0.25)
    return None


async def main(url: str, streams: int, max_tokens: int, wait_s: float) -> dict:
    started: set = set()
    health: list = []
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=64)) as client:
        before: list = []
        probes: list = []
        waited = await healthy(client, wait_s, before, probes)
        probed = [await p for p in probes]
        if waited is None:
            return dict(results=[], health=before, wall_s=0.0, waited_s=None, health_before=before, probes=probed)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(stream(client, i, started, max_tokens)) for i in range(streams)]
        announced = False
        while not all(t.done() for t in tasks):
            if not announced and len(started) == streams:  # every stream has a token: inject now
                print("STREAMING", flush=True)
                announced = True
            try:
                h = await client.get("/health", timeout=5)
                health.append([round(time.monotonic() - t0, 2), h.status_code, h.text[:200]])
            except httpx.HTTPError as exc:
                health.append([round(time.monotonic() - t0, 2), None, type(exc).__name__])
            await asyncio.sleep(0.5)
        results = [t.result() for t in tasks]
    return dict(results=results, health=health, wall_s=time.monotonic() - t0, waited_s=waited,
                health_before=before, probes=probed)


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    print("RESULT " + json.dumps(out), flush=True)
