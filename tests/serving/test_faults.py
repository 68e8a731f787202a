"""A device actor or the switch (fabric actor) dies under load: the requests on its replica are
recomputed on the re-created devices (their prompt and output so far) and complete as if nothing had
happened, the replica is re-created and the server goes on with correct numerics; a hung device
fails its requests."""
from __future__ import annotations

import asyncio
import re

import httpx
import pytest
import ray

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.generate import generate
from tests.serving.utils import read_stream, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TINY = model_preset("tiny")


PROMPTS = [[1, 10 + i, 6] for i in range(8)]
"""The killing test's prompts (stream i sends prompt i % 8), greedy: each has one right answer."""


async def _stream(client: httpx.AsyncClient, i: int, progress: list) -> dict:
    body = {"model": "tiny", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 24, "ignore_eos": True,
            "temperature": 0, "stream": True, "return_token_ids": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        return await read_stream(r, lambda: progress.append(1))


def _idle_check_off(monkeypatch, parallel: ParallelConfig) -> tuple[CentConfig, dict]:
    """tiny on `parallel` with full numerics, and the idle check that never comes (the links must tell
    of a death), with the greedy request the idle-death tests send."""
    from cent_serve import serving

    monkeypatch.setattr(serving, "HEALTH_CHECK_S", 1e9)
    cfg = CentConfig(model=TINY, parallel=parallel, numerics="full")
    cfg.server.port = 0
    return cfg, {"model": "tiny", "prompt": [1, 5, 6], "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                 "return_token_ids": True}


def _idle(s) -> None:
    """Wait until the engine has told the devices to forget the finished request (the round of no
    lanes it sends on going idle, `Engine.forget_finished`): a device killed or stopped before it would
    fail that round, with no request on it, instead of the round the test sends."""
    eng = s.loop.engine
    wait_for(lambda: not eng.scheduler._freed and s.loop.round_started is None, "the idle engine's free round")


def _dead(actor) -> bool:
    """Whether Ray says `actor` is gone (a call to it fails so)."""
    try:
        ray.get(actor.ready.remote(), timeout=60)
    except ray.exceptions.RayActorError:
        return True
    return False


def test_a_request_after_an_idle_tensor_rank_died_waits_for_the_re_created_devices(ray_cluster, monkeypatch):
    """With tp 2 a unit's second rank outside the first unit has no link to the host: its leader reads
    it only during a round. It dies while nothing runs: the switch, which holds a link to every device,
    names it to the host, so the next request waits for the re-created devices instead of failing with
    500 `device_fault`."""
    import select

    cfg, body = _idle_check_off(monkeypatch, ParallelConfig(4, 2, 2))
    with Server(cfg, "ray") as s:
        assert httpx.post(s.url + "/v1/completions", json=body, timeout=60).status_code == 200
        _idle(s)
        ex = s.loop.engine.executors[0]
        assert [u.device_ids for u in ex.units] == [(0, 1), (2, 3)]
        ray.kill(ex.actors[3])  # the last unit's second rank
        wait_for(lambda: _dead(ex.actors[3]), "device 3's death as Ray tells it")  # its sockets closed before
        # a hang guard, not a check: where the switch says nothing the request below shows the outcome
        select.select([ex.switch_link.fileno()], [], [], 10.0)
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        st = httpx.get(s.url + "/v1/cent/status").json()
        assert st["num_recoveries"] == 1 and st["num_failed"] == 0
        # the switch's word, or, when its unit's leader closed its own link to the host first (a fresh run
        # saw it: check_links reads that link before the switch's), that closed link
        assert "device 3 is gone" in st["last_fault"] or "LinkClosed" in st["last_fault"], st["last_fault"]
        assert st["last_fault"].endswith("; no request was on it"), st["last_fault"]
    ref = generate(LlamaModel(TINY, load_weights(TINY)), [1, 5, 6], 4, ignore_eos=True)
    assert r.json()["choices"][0]["token_ids"] == ref.token_ids


@pytest.fixture(scope="module")
def pipeline(ray_cluster):
    """(server, request body): one tiny 4-stage pipeline on Ray with full numerics and no idle check,
    for the killing, idle-death and round tests below, which each kill or stop an actor and see the
    replica re-created: each counts its own recoveries and failures (`_counts`) on the idle engine.
    A server's start on Ray is most of such a test's time. These tests come last in the module: the
    idle check stays off until the module ends."""
    with pytest.MonkeyPatch.context() as mp:
        cfg, body = _idle_check_off(mp, ParallelConfig(4, 0, 1))
        with Server(cfg, "ray") as s:
            yield s, body


def _counts(s) -> tuple[int, int]:
    """The server's (num_recoveries, num_failed) so far."""
    st = httpx.get(s.url + "/v1/cent/status").json()
    return st["num_recoveries"], st["num_failed"]


@pytest.mark.parametrize("victim", ["device", "fabric"])
def test_killing_an_actor_under_decoding_requests_recomputes_them_and_the_server_recovers(pipeline, victim):
    """32 greedy streams on 8 lanes, some decoding, when an actor is killed: the requests on the replica
    are recomputed on the re-created devices (prompt and output so far) and every stream ends with the
    reference's 24 tokens, none repeated or missing; none fails."""
    # the pure pipeline's 8 stages (8 lanes) on 4 devices, 2 blocks each: the fault path is the same
    # as on 8 (a middle device: the next one's input link closes), at half the actors to start
    s, _ = pipeline
    before = httpx.get(s.url + "/v1/cent/status").json()
    engine = s.loop.engine
    ex = engine.executors[0]
    assert engine.scheduler.lanes_per_replica == 8 and len(ex.actors) == 4
    victim = ex.actors[2] if victim == "device" else ex.fabric

    async def main():
        progress: list = []
        async with httpx.AsyncClient(base_url=s.url, limits=httpx.Limits(max_connections=64)) as client:
            tasks = [asyncio.create_task(_stream(client, i, progress)) for i in range(32)]
            while len(progress) < 16:  # the first lanes are decoding
                await asyncio.sleep(0.01)
            ray.kill(victim)
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert all(r["done"] and r["finish"] == "length" and r["error"] is None for r in results), results
    st = httpx.get(s.url + "/v1/cent/status").json()
    assert st["num_recoveries"] == before["num_recoveries"] + 1 and st["num_failed"] == before["num_failed"] \
        and st["num_preemptions"] == before["num_preemptions"], st
    # the lanes that were on the devices, queued again once
    assert 1 <= st["num_fault_retries"] - before["num_fault_retries"] <= 8, (before, st)
    assert st["last_fault"].startswith("the emulated devices of replica 0 failed")  # it stayed null
    assert re.search(r"; \d requests? on it with tokens produced waits? to be recomputed", st["last_fault"]), st
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}
    model = LlamaModel(TINY, load_weights(TINY))
    refs = [generate(model, p, 24, ignore_eos=True).token_ids for p in PROMPTS]
    for i, r in enumerate(results):  # the streamed ids, in order: none twice, none missing
        assert r["tokens"] == 24 and r["token_ids"] == refs[i % len(PROMPTS)], (i, r)


def test_status_and_metrics_answer_while_a_replica_is_re_created(pipeline):
    """An actor dies between rounds (as when Ray's memory monitor takes it): the next /metrics
    notices (the idle check is off here: nothing else looks), the replica is re-created in the
    background, and /metrics and /v1/cent/status keep answering 200 meanwhile; a request then gets
    served by the new devices."""
    import threading

    s, _ = pipeline
    recoveries, _ = _counts(s)
    assert httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2},
                      timeout=60).status_code == 200
    _idle(s)  # else its free round may find the death first
    ex = s.loop.engine.executors[0]
    num_devices = len(ex.actors)
    codes, stop = [], threading.Event()

    def poll():
        with httpx.Client(base_url=s.url, timeout=60) as h:
            while not stop.is_set():
                codes.append(h.get("/metrics").status_code)
                codes.append(h.get("/v1/cent/status").status_code)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        ray.kill(ex.actors[1])
        health = wait_for(lambda: (h := httpx.get(s.url + "/health", timeout=10)).status_code == 503 and h,
                          "health degraded while re-creating")
        assert health.json()["status"] == "degraded" and "replica" in health.json()["reason"]
        wait_for(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 200, "the replica back")
    finally:
        stop.set()
        poller.join()
    assert codes and set(codes) == {200}, codes
    st = httpx.get(s.url + "/v1/cent/status").json()
    assert st["num_recoveries"] == recoveries + 1 and st["replicas_up"] == 1
    assert len(st["devices"]) == num_devices
    assert st["last_fault"].endswith("; no request was on it"), st["last_fault"]  # found between rounds
    r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": [1, 5, 6], "max_tokens": 4,
                                                    "temperature": 0, "ignore_eos": True,
                                                    "return_token_ids": True}, timeout=60)
    ref = generate(LlamaModel(TINY, load_weights(TINY)), [1, 5, 6], 4, ignore_eos=True)
    assert r.json()["choices"][0]["token_ids"] == ref.token_ids


def test_a_request_after_an_idle_device_died_waits_for_the_re_created_devices(pipeline):
    """A device dies while nothing runs, before the idle check looks (kill -9 of its actor, then a
    request within seconds): the request is not sent to the broken chain to fail with 500
    `device_fault`; the host's links show the death, so it waits for the re-created devices."""
    import select

    s, body = pipeline
    recoveries, failed = _counts(s)
    assert httpx.post(s.url + "/v1/completions", json=body, timeout=60).status_code == 200
    _idle(s)  # else its free round may find the death first and shut the executor (its output link) down
    ex = s.loop.engine.executors[0]
    ray.kill(ex.actors[2])
    # the next device's error for its closed input link reaches the host with no round asked
    wait_for(lambda: select.select([ex.output.fileno()], [], [], 0)[0], "the error at the host's link")
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    st = httpx.get(s.url + "/v1/cent/status").json()
    assert st["num_recoveries"] == recoveries + 1 and st["num_failed"] == failed
    assert "device 3's input link from device 2 closed" in st["last_fault"], st["last_fault"]  # the device's words
    assert st["last_fault"].endswith("; no request was on it"), st["last_fault"]
    ref = generate(LlamaModel(TINY, load_weights(TINY)), [1, 5, 6], 4, ignore_eos=True)
    assert r.json()["choices"][0]["token_ids"] == ref.token_ids


@pytest.mark.parametrize("victim", [0, 2, 3])
def test_a_request_sent_to_a_device_dead_before_its_round_waits_for_the_re_created_devices(pipeline, monkeypatch,
                                                                                          victim):
    """The race between a device's death and the host's reading of it: the device is dead (Ray says so,
    and the switch's word is at the host's switch link) but the engine's look at the links before the
    round (`check_links`) is held, so the round goes out to the dead chain, as it does when it is sent
    in the instant before the word arrives. Where it fails: device 0 (the first) fails the host's send
    (a closed link) or its next device's error comes back; device 2 (a middle one) fails with the
    error device 3 sent for its closed input link; device 3 (the last) with the host's output link
    closed. No device produced anything for the request: it waits for the re-created devices (200,
    the reference's tokens) instead of failing with 500 `device_fault`."""
    import select

    s, body = pipeline
    recoveries, failed = _counts(s)
    assert httpx.post(s.url + "/v1/completions", json=body, timeout=60).status_code == 200
    _idle(s)
    ex = s.loop.engine.executors[0]
    monkeypatch.setattr(ex, "check_links", lambda: None)  # held: the round goes out as before the word came
    ray.kill(ex.actors[victim])
    wait_for(lambda: _dead(ex.actors[victim]), f"device {victim}'s death as Ray tells it")
    # a hang guard, not a check: the switch's word of the death is at the host's link (unread)
    select.select([ex.switch_link.fileno()], [], [], 10.0)
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    st = httpx.get(s.url + "/v1/cent/status").json()
    assert st["num_recoveries"] == recoveries + 1 and st["num_failed"] == failed, st
    assert "LinkClosed" in st["last_fault"], st["last_fault"]  # the round's failure: a link closed
    assert st["last_fault"].endswith("; 1 request on it with nothing produced waits for the re-created "
                                     "devices"), st["last_fault"]
    ref = generate(LlamaModel(TINY, load_weights(TINY)), [1, 5, 6], 4, ignore_eos=True)
    assert r.json()["choices"][0]["token_ids"] == ref.token_ids


def test_the_devices_wait_on_a_peer_as_long_as_the_configured_round_timeout(pipeline):
    """The actors are made with the server's config: their waits within a round (a rank's output, an
    exchange, a send to a peer that stops reading: each link's SO_SNDTIMEO) and the switch's and the
    host's sends are `server.peer_wait_s`, the round timeout with a margin, not the fixed 120 s and
    300 s they were (tests/fabric/test_peer_waits.py gives up on a stalled rank with a small one)."""
    import os
    import socket
    import struct
    import types

    def stall(link) -> tuple[int, int]:
        return struct.unpack("@ll", link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize("@ll")))

    s, _ = pipeline
    ex = s.loop.engine.executors[0]
    want = ex.cfg.server.peer_wait_s
    assert want > ex.cfg.server.round_timeout_s
    option = (int(want), round((want - int(want)) * 1e6))
    def outputs(actor) -> set:
        """Its output links' options (the next stage's device, or, on the last, the host's accepted link)."""
        socks = [socket.socket(fileno=os.dup(int(fd))) for fd in actor.port._out_fds]
        try:
            return {stall(types.SimpleNamespace(sock=sock)) for sock in socks}
        finally:
            for sock in socks:
                sock.close()

    got = ray.get([a.__ray_call__.remote(lambda actor: (actor.port.wait_s, stall(actor.port.switch),
                                                        actor.listener.send_stall_s, outputs(actor)))
                   for a in ex.actors.values()], timeout=60)
    assert got == [(want, option, want, {option})] * len(ex.actors), got
    assert ray.get(ex.fabric.__ray_call__.remote(lambda f: f.listener.send_stall_s), timeout=60) == want
    assert {stall(link) for link in [*ex.inputs, ex.output, ex.switch_link]} == {option}


def test_a_device_hung_mid_round_fails_its_requests_after_the_round_timeout_and_the_server_serves_on(pipeline,
                                                                                                   monkeypatch):
    """A device whose process is alive with its links open but never answers (SIGSTOP: a paused
    process, a hung one): no link shows it, so the round sent to it waits `server.round_timeout_s`
    (here 10 s, for a round of milliseconds), then its request fails with 500 `device_fault` naming
    the timeout, the replica is re-created, and the next request is served with correct tokens."""
    import os
    import signal

    s, body = pipeline
    recoveries, failed = _counts(s)
    assert httpx.post(s.url + "/v1/completions", json=body, timeout=60).status_code == 200
    _idle(s)
    ex = s.loop.engine.executors[0]
    monkeypatch.setattr(ex.cfg.server, "round_timeout_s", 10.0)  # read at each wait; restored after the test
    pid = ray.get(ex.actors[2].__ray_call__.remote(lambda actor: os.getpid()), timeout=60)
    os.kill(pid, signal.SIGSTOP)
    try:
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
    finally:
        try:  # the replica's re-creation has killed it (SIGKILL ends a stopped process) or will
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert r.status_code == 500 and r.json()["error"]["cent"]["code"] == "device_fault", r.text
    message = r.json()["error"]["message"]
    assert message.startswith("the emulated devices of replica 0 failed: DevicesHung: round ") and \
        "gave no output within 10 s (server.round_timeout_s)" in message, message
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    st = httpx.get(s.url + "/v1/cent/status").json()
    assert st["num_recoveries"] == recoveries + 1 and st["num_failed"] == failed + 1, st
    ref = generate(LlamaModel(TINY, load_weights(TINY)), [1, 5, 6], 4, ignore_eos=True)
    assert r.json()["choices"][0]["token_ids"] == ref.token_ids
