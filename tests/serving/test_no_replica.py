"""No replica can come back (its worker host lost): the requests waiting for one are failed with a
503 and Retry-After, new ones are refused at once, and serving resumes as soon as a replica is back.
A first re-creation in flight (the normal short recovery) is waited for, and a replica still serving
takes every request.

A local server whose replicas' executors are fakes that can be broken (`Breakable`), and whose
re-creations do what the test says when it says (`Rebuild`, the engine's `remake`; both in
tests/serving/utils.py). The fault tests on Ray (test_faults.py) kill real actors; these need no Ray."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from api.server import Server
from cent_serve.replicas import NO_REPLICA
from tests.serving.utils import (HANG_GUARD_S, OK, Breakable, Rebuild, body, breakable_replicas, outcomes,
                                 read_stream, status, wait_for)

LOST = "the worker host holding the devices was lost"


def _post(url: str, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body(**fields), timeout=HANG_GUARD_S)


def _fault(url: str, device: Breakable, n: int = 1) -> None:
    """Break `device` and send a request that runs on it (its replica then goes down): with `n`
    choices admitted together, one on each idle replica. It fails as any device fault does."""
    device.broken = True
    r = _post(url, n=n, max_tokens=8)
    assert r.status_code == 500 and r.json()["error"]["cent"]["code"] == "device_fault", r.text


def _health(url: str) -> tuple[int, dict]:
    h = httpx.get(url + "/health", timeout=10)
    return h.status_code, h.json()


def _down_for_good(url: str, rebuild: Rebuild, replica: int) -> str:
    """Fail replica `replica`'s next re-creation (the host is gone); returns /health's reason once it
    says so (200 while another replica serves, else 503)."""
    rebuild.plan.put(RuntimeError(LOST))
    return wait_for(lambda: (h := _health(url))[1]["status"] == "degraded"
                    and f"replica {replica}: could not" in h[1]["reason"] and h[1]["reason"],
                    f"replica {replica}'s re-creation failed")


def _check_no_replica(error: dict, health_reason: str) -> None:
    """The 503's error: OpenAI's shape, the code a client can tell, why (as /health says it) and to retry."""
    assert error["type"] == "server_error" and (error["code"], error["cent"]["code"]) == (503, NO_REPLICA) and error["param"] is None, error
    assert health_reason in error["message"], (error["message"], health_reason)
    assert f"RuntimeError: {LOST}" in error["message"] and error["message"].endswith("retry later"), error


async def _queue_two(url: str, until) -> tuple[httpx.Response, dict, int]:
    """A collected and a streamed request that wait for a replica; once both wait, `until()` (the
    re-creation's outcome); returns (the collected response, the stream's outcome, its status)."""
    async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S) as client:
        async def streamed():
            async with client.stream("POST", "/v1/completions", json=body(stream=True)) as r:
                return await read_stream(r), r.status_code

        tasks = [asyncio.ensure_future(client.post("/v1/completions", json=body())), asyncio.ensure_future(streamed())]
        while (await client.get("/v1/cent/status")).json()["num_waiting"] < 2:
            await asyncio.sleep(0.02)
        until()
        collected, (stream, code) = await asyncio.gather(*tasks)
    return collected, stream, code


def test_queued_requests_fail_with_503_and_retry_after_once_every_re_creation_has_failed():
    """Requests queued while the replica's first re-creation runs wait for it; once it fails (the
    host is gone, retried in an hour) they are failed: the collected one with 503 and Retry-After, the
    stream (its 200 sent when it was queued) with the error event; counted as failed."""
    cfg, (device,), rebuild, eng = breakable_replicas(1)
    with Server(cfg, "local", engine=eng) as s:
        _fault(s.url, device)
        wait_for(lambda: rebuild.calls == 1, "the re-creation started")
        collected, stream, code = asyncio.run(_queue_two(s.url, lambda: rebuild.plan.put(RuntimeError(LOST))))
        health, reason = _health(s.url)
        assert health == 503 and reason["reason"].startswith("replica 0: could not be re-created: RuntimeError")
        assert collected.status_code == 503 and collected.headers["Retry-After"] == "3600", collected.text
        _check_no_replica(collected.json()["error"], reason["reason"])
        assert code == 200 and stream["done"] and stream["finish"] == "error", stream
        assert stream["code"] == NO_REPLICA and stream["error"] == collected.json()["error"]["message"]
        st = status(s.url)
        assert st["num_waiting"] == st["num_running"] == 0 and st["num_failed"] == 3  # the fault's, then both
        assert outcomes(s.url) == {("failed", "engine_error"): 3}
        assert rebuild.calls == 1  # nothing retried meanwhile: the failures did not wait for it


def test_a_new_request_gets_503_at_once_while_no_replica_can_come_back():
    """Once every replica's re-creation has failed, a request is refused before anything is queued:
    a 503 with Retry-After, streamed or not (a stream gets the 503, not a 200)."""
    cfg, (device,), rebuild, eng = breakable_replicas(1, retry_s=2.5)
    with Server(cfg, "local", engine=eng) as s:
        _fault(s.url, device)
        reason = _down_for_good(s.url, rebuild, 0)
        for fields in ({}, {"stream": True}, {"n": 3}):
            r = _post(s.url, **fields)
            assert r.status_code == 503 and r.headers["Retry-After"] == "3", (fields, r.text)  # 2.5 s, whole
            _check_no_replica(r.json()["error"], reason)
            assert r.json()["error"]["message"].endswith("the re-creation is retried every 2.5 s: retry later"), r.text
        st = status(s.url)
        assert st["num_waiting"] == 0 and st["num_failed"] == 1  # none queued: only the fault's failed in the engine
        assert outcomes(s.url) == {("failed", "engine_error"): 4}


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_while_a_first_re_creation_is_in_flight_a_request_waits_then_completes(num_replicas):
    """The normal short recovery: the replica's first re-creation runs, so the request waits and is
    served once it is back. With 2 replicas the other is down for good already: no replica serves,
    but not every re-creation has failed, so nothing is refused."""
    cfg, devices, rebuild, eng = breakable_replicas(num_replicas)
    with Server(cfg, "local", engine=eng) as s:
        if num_replicas == 2:
            _fault(s.url, devices[0], n=2)  # a choice on each replica: replica 0 goes down
            _down_for_good(s.url, rebuild, 0)
        _fault(s.url, devices[-1])  # the last replica serving goes down
        wait_for(lambda: rebuild.calls == num_replicas, "its re-creation started")

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=HANG_GUARD_S) as client:
                task = asyncio.ensure_future(client.post("/v1/completions", json=body(max_tokens=6)))
                while (await client.get("/v1/cent/status")).json()["num_waiting"] < 1:
                    await asyncio.sleep(0.02)
                assert eng.replicas.none_can_serve() is None and not task.done()  # waiting, not refused
                rebuild.plan.put(OK)
                return await task

        r = asyncio.run(main())
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6, r.text
        st = status(s.url)
        assert st["replicas_up"] == 1 and st["num_recoveries"] == 1 and st["num_failed"] == num_replicas


def test_requests_are_served_again_as_soon_as_a_replica_is_back():
    """Refused while the re-creation had failed; the retry (every 0.05 s here) brings the replica
    back, and the requests queued and sent after are served."""
    cfg, (device,), rebuild, eng = breakable_replicas(1, retry_s=0.05)
    with Server(cfg, "local", engine=eng) as s:
        _fault(s.url, device)
        _down_for_good(s.url, rebuild, 0)
        wait_for(lambda: rebuild.calls >= 2, "the retry started")  # it waits for its outcome: refused meanwhile
        r = _post(s.url)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        rebuild.plan.put(OK)
        wait_for(lambda: _health(s.url)[0] == 200, "the replica back")
        for fields in ({}, {"stream": True}):
            r = _post(s.url, **fields)
            assert r.status_code == 200 and "error" not in r.text, r.text
        assert status(s.url)["num_recoveries"] == 1


def test_with_a_replica_serving_nothing_is_refused_until_the_last_one_is_down_for_good():
    """Two replicas, one down for good: the other takes every request (none refused, none failed);
    once it goes down for good too, requests are refused, the message naming both replicas."""
    cfg, devices, rebuild, eng = breakable_replicas(2)
    with Server(cfg, "local", engine=eng) as s:
        _fault(s.url, devices[0], n=2)  # replica 1's choice completes, replica 0's fails
        _down_for_good(s.url, rebuild, 0)

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=HANG_GUARD_S) as client:
                return await asyncio.gather(*[client.post("/v1/completions", json=body(stream=i % 2 == 1))
                                              for i in range(8)])

        results = asyncio.run(burst())
        assert [r.status_code for r in results] == [200] * 8 and not any("error" in r.text for r in results)
        st = status(s.url)
        assert st["replicas_up"] == 1 and st["num_failed"] == 1
        _fault(s.url, devices[1])
        reason = _down_for_good(s.url, rebuild, 1)
        r = _post(s.url)
        assert r.status_code == 503 and r.headers["Retry-After"] == "3600", r.text
        _check_no_replica(r.json()["error"], reason)
        assert "replica 0: could not be re-created" in reason and "replica 1: could not be re-created" in reason


def test_health_says_degraded_with_200_while_a_replica_serves_and_503_once_none_does():
    """Two replicas, one down: the other serves every request, so /health answers 200 "degraded" with
    the reason and the replicas that serve (a load balancer keeps the server in rotation and a liveness
    probe does not restart it, ending the serving replica's requests), as vLLM's /health is 200 while
    its engine lives; 503 once no replica serves (a first re-creation running or not), and a round
    stalled past its timeout is 503 whatever the replicas. Before, any replica down was a 503."""
    cfg, devices, rebuild, eng = breakable_replicas(2)
    with Server(cfg, "local", engine=eng) as s:
        _fault(s.url, devices[0], n=2)  # a choice on each replica: replica 0 goes down
        wait_for(lambda: rebuild.calls == 1, "its re-creation started")
        assert _health(s.url) == (200, {"status": "degraded", "reason": "re-creating the devices of replica(s) [0]",
                                        "replicas_serving": [1], "replicas": 2})
        reason = _down_for_good(s.url, rebuild, 0)
        assert _health(s.url) == (200, {"status": "degraded", "reason": reason, "replicas_serving": [1], "replicas": 2})
        assert httpx.head(s.url + "/health", timeout=10).status_code == 200  # a probe's HEAD, as its GET
        assert httpx.get(s.url + "/ping", timeout=10).status_code == 200
        assert _post(s.url).status_code == 200  # it serves, as it says

        real = s.loop.round_running_s
        s.loop.round_running_s = lambda: 1e6  # a round stalled past every threshold
        try:
            code, h = _health(s.url)
            assert code == 503 and h["status"] == "degraded" and "a round has run" in h["reason"], h
        finally:
            s.loop.round_running_s = real

        _fault(s.url, devices[1])  # the last replica serving goes down: its first re-creation runs
        wait_for(lambda: rebuild.calls == 2, "its re-creation started")
        code, h = _health(s.url)
        assert code == 503 and h["replicas_serving"] == [] and h["replicas"] == 2, h
        assert h["reason"].startswith(f"replica 0: could not be re-created: RuntimeError: {LOST}"), h
        rebuild.plan.put(OK)  # replica 1 back; replica 0 retries in an hour
        wait_for(lambda: _health(s.url)[0] == 200, "replica 1 back")
        assert _health(s.url) == (200, {"status": "degraded", "reason": reason, "replicas_serving": [1], "replicas": 2})


def test_none_can_serve_only_once_every_down_replica_s_re_creation_has_failed():
    """`Replicas.none_can_serve` alone: None while a replica is up or a first re-creation runs; the
    errors once every one has failed, also while their retries run; None again once one is built."""
    import queue

    from cent_serve.replicas import Replicas

    class Made:
        def shutdown(self) -> None:
            pass

    plan: queue.Queue = queue.Queue()
    calls = []

    def remake():
        calls.append(1)
        outcome = plan.get(timeout=HANG_GUARD_S)  # a hang guard: the test says what happens
        if outcome is not OK:
            raise outcome
        return Made()

    reps = Replicas(Made, 2, retry_s=0.0, remake=remake)
    failed = lambda r: f"replica {r}: could not" in (reps.degraded or "")  # noqa: E731
    reps.fail(0, RuntimeError("gone"))
    plan.put(RuntimeError(LOST))
    wait_for(lambda: failed(0), "replica 0's re-creation failed")
    assert reps.none_can_serve() is None  # replica 1 serves
    reps.fail(1, RuntimeError("gone"))
    assert reps.none_can_serve() is None  # replica 1's first re-creation runs
    plan.put(RuntimeError(LOST))
    wait_for(lambda: failed(1), "replica 1's re-creation failed")
    why = reps.none_can_serve()
    assert why == f"replica 0: could not be re-created: RuntimeError: {LOST}; replica 1: could not be re-created: " \
                  f"RuntimeError: {LOST}" == reps.degraded
    reps.poll()  # both retried now (retry_s 0): still known not to come back soon while they run
    wait_for(lambda: len(calls) == 4, "both retries started")
    assert reps.none_can_serve() == why
    plan.put(OK)
    wait_for(lambda: reps.none_can_serve() is None, "a retry built its replica")
    wait_for(lambda: reps.poll(), "the built replica swapped in")
    assert sum(ex is not None for ex in reps.executors) == 1 and reps.none_can_serve() is None
    plan.put(RuntimeError(LOST))  # the other retry ends
    reps.shutdown()


def test_a_silent_cluster_is_named_before_the_re_creation_errors_it_causes():
    """While the cluster has a fault (`Engine.cluster_fault`: this node's raylet silent), the 503's
    message (a new request refused, the waiting failed) names it first, as a failed round does: Ray's
    GCS may mark the dead raylet's node dead, its placement group removed, before the server gives the
    raylet up, and the re-creation's "placement group removed" is only its symptom. Without one, the
    message is as before."""
    from cent_serve.replicas import NoReplica
    from cent_serve.request import RequestParams

    raylet = "this node's raylet (at 127.0.0.1:1) does not answer"
    removed = "TaskPlacementGroupRemoved: the placement group of this task has been removed"
    cfg, (device,), rebuild, eng = breakable_replicas(1)
    try:
        device.broken = True
        eng.add_request([1, 5, 6], RequestParams(max_tokens=4, ignore_eos=True))
        eng.step()  # its round fails: the replica goes down, its re-creation starts
        rebuild.plan.put(RuntimeError(removed))
        wait_for(lambda: eng.replicas.none_can_serve(), "the re-creation failed")
        no_replica = (f"no replica of the emulated devices can serve: replica 0: could not be re-created: "
                      f"RuntimeError: {removed}; the re-creation is retried every 3600 s: retry later")
        with pytest.raises(NoReplica) as refused:
            eng.check_serving()
        assert str(refused.value) == no_replica
        eng.cluster_fault = lambda: raylet
        with pytest.raises(NoReplica) as refused:
            eng.check_serving()
        assert str(refused.value) == f"{raylet}; {no_replica}"
        waiting = eng.add_request([1, 5, 6], RequestParams(max_tokens=4, ignore_eos=True))
        assert eng.fail_waiting() == [waiting] and waiting.error == f"{raylet}; {no_replica}"
        eng.cluster_fault = lambda: None  # the cluster answers: the re-creation's error alone
        with pytest.raises(NoReplica) as refused:
            eng.check_serving()
        assert str(refused.value) == no_replica
    finally:
        eng.replicas.shutdown()
