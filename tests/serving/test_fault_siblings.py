"""Over HTTP, the choices of one request on two replicas (n=2, a choice each, full numerics): one
replica's device fails mid-decode with an error that is not retried, so the request is failed. Its
sibling, decoding on the healthy replica, is aborted in the same round (as a client's disconnect
aborts it) rather than left to finish for a reply that is already the 500: the reply comes at the
failure's round, the healthy replica's KV is free again, and a later request there draws what it
draws on devices that never failed. The executors are `LocalExecutor`s in fakes
(tests/serving/utils.py); test_faults.py kills real actors on Ray."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from cent_serve.executor import LocalExecutor
from tests.serving.utils import HANG_GUARD_S, Rebuild, body, metric, server_cfg, status, tiny_weights, wait_for

FAIL_AT_ROUND = 6
"""The round (of those with work) the failing replica's device dies under: the prompt's 3 tokens
take rounds 1-3 (one a round), so rounds 4 and 5 decoded, and the sixth fails mid-decode."""
PROMPT = [1, 5, 6]
MAX_TOKENS = 40  # far past the failure: a sibling left to finish would run 34 rounds more


class FailingAt:
    """A replica's executor (full numerics, one device) whose device raises under its round number
    `at` (rounds with work; None: never), a device's own error, which is not retried."""

    def __init__(self, cfg, at: int | None) -> None:
        self.inner = LocalExecutor(cfg, tiny_weights())
        self.at, self.rounds = at, 0

    def submit(self, plan):
        if not plan.is_empty:
            self.rounds += 1
            if self.rounds == self.at:
                raise RuntimeError("device 0 raised while computing")
        return self.inner.submit(plan)

    def stats(self) -> dict:
        return self.inner.stats()

    def shutdown(self) -> None:
        self.inner.shutdown()


def _server(fail_at: int | None):
    """A server of two replicas of one device and one lane; replica 1's device fails under its round
    `fail_at` (None: never) and is not re-created while the test runs."""
    from api.server import Server
    from cent_serve.engine import Engine

    cfg = server_cfg("full", devices=2, pp=1, replica_retry_s=3600.0)
    eng = Engine(cfg, executors=[FailingAt(cfg, None), FailingAt(cfg, fail_at)], remake=Rebuild(cfg),
                 weights=tiny_weights())
    return Server(cfg, "local", engine=eng)


def _kv(url: str) -> tuple[float, list[float]]:
    """(the scheduler's KV usage, each device's), from the status."""
    st = status(url)
    return st["kv_usage"], [d["kv_usage"] for d in sorted(st["devices"], key=lambda d: d["replica"])]


def _later(url: str) -> list[int]:
    """A later request's tokens (seeded, full numerics: its KV cache's contents decide them)."""
    r = httpx.post(url + "/v1/completions", json=body(prompt=PROMPT, max_tokens=8, seed=5, return_token_ids=True),
                   timeout=HANG_GUARD_S)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def _request(stream: bool) -> dict:
    return body(prompt=PROMPT, n=2, max_tokens=MAX_TOKENS, seed=3, stream=stream, return_token_ids=True)


@pytest.fixture(scope="module")
def reference() -> list[int]:
    """The later request's tokens on a server whose devices never fail (the n=2 request first)."""
    with _server(None) as s:
        r = httpx.post(s.url + "/v1/completions", json=_request(False), timeout=HANG_GUARD_S)
        assert r.status_code == 200 and status(s.url)["num_rounds"] == len(PROMPT) + MAX_TOKENS - 1, r.text
        return _later(s.url)


async def _stream(url: str) -> tuple[list[dict], list[str]]:
    """The stream's error events and its lines, in order."""
    import json

    errors, lines = [], []
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", url + "/v1/completions", json=_request(True), timeout=HANG_GUARD_S) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if line.startswith("data: {") and "error" in (chunk := json.loads(line[6:])):
                        errors.append(chunk["error"])
    return errors, lines


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_request_s_sibling_on_a_healthy_replica_is_aborted_at_the_failure_s_round(reference, stream):
    with _server(FAIL_AT_ROUND) as s:
        before = _kv(s.url)
        if stream:
            errors, lines = asyncio.run(_stream(s.url))
            # each choice's error event once (the failure's, the aborted sibling's naming it too), then the end
            assert len(errors) == 2 and {e["cent"]["code"] for e in errors} == {"device_fault"}, errors
            assert errors[0]["message"] == errors[1]["message"] and "replica 1" in errors[0]["message"]
            assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
        else:
            r = httpx.post(s.url + "/v1/completions", json=_request(False), timeout=HANG_GUARD_S)
            assert r.status_code == 500 and r.json()["error"]["cent"]["code"] == "device_fault", r.text
        st = status(s.url)
        # decided at the failure's round: no round after it, and each choice's 3 tokens before it alone
        # (the sibling's token of the failing round is dropped with it)
        assert st["num_rounds"] == FAIL_AT_ROUND and st["generation_tokens"] == 2 * (FAIL_AT_ROUND - len(PROMPT)), st
        assert (st["num_failed"], st["num_aborted"], st["num_running"], st["replicas_up"]) == (1, 1, 0, 1), st
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "vllm:request_success_total", finished_reason="abort") == 1
        assert metric(text, "vllm:request_success_total", finished_reason="error") == 1
        assert metric(text, "cent:requests_total", outcome="failed") == 1
        # the healthy replica's devices forget the aborted sequence once idle (its id goes with the next plan)
        wait_for(lambda: _kv(s.url)[1][0] == before[1][0], "replica 0's device KV back to what it was")
        assert _kv(s.url)[0] == before[0]
        assert _later(s.url) == reference
        assert status(s.url)["num_rounds"] == FAIL_AT_ROUND + len(PROMPT) + 8 - 1  # on replica 0 alone
