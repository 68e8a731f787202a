"""A server that has served many requests holds no more state than a fresh one: every per-request
record (the engine's requests, the loop's streams, the scheduler's queues and KV reservations, each
device's positions and block tables) is dropped once the request ends, on every way it can end, and
/metrics keeps running aggregates, not a series per request. Counted in entries, not memory."""
from __future__ import annotations

import asyncio

import httpx

from api.server import Server
from tests.serving.utils import HANG_GUARD_S, server_cfg, wait_idle

N = 240
"""Requests per burst: eight kinds, thirty of each."""


async def _burst(url: str, n: int, conc: int = 12) -> dict[int, int]:
    """n requests of eight kinds, `conc` at a time: plain, streamed, n=3 with logprobs, chat, a stop string,
    refused (400), streamed and left after its first chunk, not streamed and left at once (client gone).
    Returns the count of each status code; with few waiting places some are 429."""
    codes: dict[int, int] = {}
    sent = 0
    plain = {"model": "tiny", "prompt": "hello", "max_tokens": 3, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S) as c:
        async def one(k: int) -> int:
            if k == 0:
                return (await c.post("/v1/completions", json=plain)).status_code
            if k == 1:
                return (await c.post("/v1/completions", json=dict(plain, stream=True))).status_code
            if k == 2:
                return (await c.post("/v1/completions", json=dict(plain, n=3, logprobs=2))).status_code
            if k == 3:
                return (await c.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3, "messages": [
                    {"role": "user", "content": "hi"}]})).status_code
            if k == 4:
                return (await c.post("/v1/completions", json=dict(plain, stop=["e"], ignore_eos=False))).status_code
            if k == 5:
                return (await c.post("/v1/completions", json=dict(plain, max_tokens=-1))).status_code
            if k == 6:
                async with c.stream("POST", "/v1/completions", json=dict(plain, max_tokens=200, stream=True)) as r:
                    async for _ in r.aiter_lines():
                        break
                    return r.status_code
            try:
                await c.post("/v1/completions", json=dict(plain, max_tokens=200), timeout=0.001)
            except httpx.TimeoutException:
                pass
            return 0

        async def worker() -> None:
            nonlocal sent
            while sent < n:
                sent += 1
                code = await one(sent % 8)
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    return codes


def _held(s: Server) -> dict[str, int]:
    """Per-request entries the server holds (read on the engine thread, between rounds)."""
    def count(eng):
        sched, ex = eng.scheduler, eng.executors[0]
        workers = ex.workers.values()
        return {"engine.requests": len(eng.requests), "loop.streams": len(s.loop.streams),
                "loop.arrivals": len(s.loop._arrivals), "scheduler.running": sched.num_running,
                "scheduler.waiting": sched.num_waiting, "scheduler.held": len(sched._held),
                "scheduler.requeued": len(sched._requeued), "scheduler.freed": len(sched._freed),
                "devices.positions": sum(len(w.seqs.pos) + w.seqs.state.shape[1] for w in workers),
                "devices.block_tables": sum(len(w.kv.block_tables) + len(w.kv.capacity) for w in workers)}
    return asyncio.run(s.loop.call(count))


def test_nothing_per_request_is_kept_after_bursts_of_every_kind_of_ending():
    with Server(server_cfg(max_waiting=4), "local") as s:
        first = asyncio.run(_burst(s.url, N))
        wait_idle(s.url)
        held = _held(s)
        series = httpx.get(s.url + "/metrics", timeout=HANG_GUARD_S).text.count("\n")
        second = asyncio.run(_burst(s.url, N))
        wait_idle(s.url)
        assert _held(s) == held == dict.fromkeys(held, 0)
        assert httpx.get(s.url + "/metrics", timeout=HANG_GUARD_S).text.count("\n") == series
    for codes in (first, second):  # every kind of ending happened
        assert codes.get(200, 0) > 0 and codes.get(400, 0) == N // 8 and codes.get(0, 0) == N // 8, codes
