"""A Ray cluster's head watched (`cent_serve.executor.watch`): when it counts as a problem, when as
lost, and the engine loop ending every request with the reason once it is (no Ray: a fake probe,
clock and watch). tests/cluster/test_ray_head.py loses a real head under `cent serve`."""
from __future__ import annotations

import asyncio

import pytest

from cent_serve.config import CentConfig
from cent_serve.engine import Engine
from cent_serve.executor.watch import ClusterWatch
from cent_serve.request import RequestParams
from cent_serve.serving import EngineLoop, EngineStopped

GCS = "10.0.0.1:6379"


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_head_silent_for_cluster_lost_s_is_lost_for_good_and_one_that_answers_again_is_not():
    clock, up = Clock(), {"answers": True}
    watch = ClusterWatch(GCS, 3.0, probe=lambda address: up["answers"] and address == GCS, clock=clock)
    watch.check()
    assert watch.problem is None and watch.lost is None
    up["answers"] = False
    watch.check()
    clock.now_s += 2.0
    watch.check()
    assert watch.lost is None
    assert watch.problem == (f"the Ray cluster's head (its GCS at {GCS}) has not answered for 2 s; the server gives "
                             "it up at 3 s (server.cluster_lost_s)")
    up["answers"] = True  # back within the time (a GCS restarted, a network blip): served on
    watch.check()
    assert watch.problem is None and watch.lost is None
    up["answers"] = False
    watch.check()  # silent again: counted from now, not from the first silence
    clock.now_s += 2.9
    watch.check()
    assert watch.lost is None
    clock.now_s += 0.1
    watch.check()
    assert watch.lost == (f"the Ray cluster's head (its GCS at {GCS}) has not answered for 3 s "
                          "(server.cluster_lost_s): the cluster and its devices are gone; start the cluster's head "
                          "again (ray start --head), then the server")
    up["answers"] = True
    watch.check()
    assert watch.problem == watch.lost  # for good: the devices went with it


def test_the_fix_of_a_lost_local_ray_is_a_restart_of_the_server():
    clock = Clock()
    watch = ClusterWatch(GCS, 1.0, own=True, probe=lambda address: False, clock=clock)
    watch.check()
    clock.now_s += 1.0
    watch.check()
    assert watch.lost.endswith("the cluster and its devices are gone; restart the server (it starts a fresh local "
                               "Ray)"), watch.lost


class FakeWatch:
    """What the engine loop reads of a `ClusterWatch`; the test says when the cluster is lost."""

    def __init__(self) -> None:
        self.lost = self.problem = None
        self.started = self.stopped = False

    def fault(self) -> str | None:
        return self.problem

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def test_a_lost_cluster_ends_every_request_with_its_reason_and_refuses_new_ones():
    """A running generation (paced: minutes of work) ends as aborted, and the loop says why
    (`stopped_by`: the API's 503 and /health give it); a command sent after is refused with it."""
    watch = FakeWatch()
    loop = EngineLoop(Engine(CentConfig(numerics="off")), clock="paced", pace_factor=1e4, watch=watch)
    loop.start()
    assert watch.started

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        await loop.submit_all([([1, 2, 3], RequestParams(max_tokens=400, ignore_eos=True), "x")], q)
        watch.lost = "the Ray cluster's head is gone"
        deltas = []
        while not (deltas and deltas[-1][1].finished):
            deltas.append(await asyncio.wait_for(q.get(), 10))  # a hang fails here; the end takes milliseconds
        with pytest.raises(EngineStopped, match=": the Ray cluster's head is gone$"):  # taken or not, refused
            await asyncio.wait_for(loop.call(lambda e: e.now_s), 10)
        return deltas[-1][1]

    try:
        end = asyncio.run(run())
    finally:
        loop.stop()
    assert end.finish_reason == "abort" and loop.stopped_by == "the Ray cluster's head is gone"
    assert watch.stopped and not loop.is_alive()


def test_a_round_that_fails_as_the_head_goes_names_the_head_not_the_closed_link():
    """A head lost mid-round fails the round's links before the watch's next question: the running
    request's error (its 500 device_fault) names the head, found by a probe then, not only the
    symptom; a round that fails with the head answering keeps the device's own error."""
    clock, up = Clock(), {"answers": True}
    watch = ClusterWatch(GCS, 30.0, probe=lambda address: up["answers"], clock=clock)
    assert watch.fault() is None
    up["answers"] = False
    assert watch.fault() == f"the Ray cluster's head (its GCS at {GCS}) does not answer"
    watch.check()
    clock.now_s += 5
    assert watch.fault() == watch.problem and "has not answered for 5 s" in watch.fault()
    clock.now_s += 25
    watch.check()
    assert watch.lost and watch.fault() == f"the Ray cluster's head (its GCS at {GCS}) is gone"  # the fix is the exit's

    for answers in (False, True):
        fake = FakeWatch()
        fake.problem = None if answers else "the Ray cluster's head (its GCS at 10.0.0.1:6379) does not answer"
        eng = Engine(CentConfig(numerics="off"))
        loop = EngineLoop(eng, watch=fake)
        loop.start()

        async def run():
            await loop.call(lambda e: setattr(e.executors[0], "submit", broken))  # its first round fails
            q: asyncio.Queue = asyncio.Queue()
            await loop.submit_all([([1, 2, 3], RequestParams(max_tokens=400, ignore_eos=True), "x")], q)
            deltas = []
            while not (deltas and deltas[-1][1].finished):
                deltas.append(await asyncio.wait_for(q.get(), 10))  # a hang fails here; this takes milliseconds
            return deltas[-1][1]

        def broken(*_):
            raise ConnectionError("LinkClosed: the device's link closed")

        try:
            end = asyncio.run(run())
        finally:
            loop.stop()
        assert end.finish_reason == "error"
        if answers:
            assert end.error == ("the emulated devices of replica 0 failed: ConnectionError: LinkClosed: the device's "
                                 "link closed; the request was stopped, retry it")
        else:
            assert end.error == (f"{fake.problem}; the emulated devices of replica 0 went with it (ConnectionError: "
                                 "LinkClosed: the device's link closed); the request was stopped, retry it")


@pytest.mark.parametrize("given, own", [(None, True), ("local", True), (GCS, False), ("ray://10.0.0.1:10001", False)])
def test_the_lost_heads_fix_names_a_restart_for_the_local_ray_the_server_started(monkeypatch, given, own):
    """`--ray-address local` starts a fresh local Ray as no address does (`ensure_ray`): its loss is
    fixed by restarting the server, not by `ray start --head` (review: "local" counted as a cluster)."""
    import ray

    from cent_serve.executor.ray_executor import cluster_watch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "127.0.0.1:1"})())
    cfg = CentConfig()
    cfg.server.ray_address = given
    assert cluster_watch(cfg).own is own


@pytest.mark.parametrize("lost_s, ray_env, warned", [(30.0, None, False), (60.0, None, True), (90.0, "120", False),
                                                     (30.0, "20", True)])
def test_a_cluster_lost_s_that_ray_would_cut_short_is_warned_about(monkeypatch, caplog, lost_s, ray_env, warned):
    """Ray's core ends the driver after its own limit (60 s, or the environment's
    RAY_gcs_rpc_server_reconnect_timeout_s): a `server.cluster_lost_s` not below it could never
    take effect, and the server says so in one line when it starts watching the cluster."""
    import ray

    from cent_serve.executor.ray_executor import cluster_watch

    if ray_env is None:
        monkeypatch.delenv("RAY_gcs_rpc_server_reconnect_timeout_s", raising=False)
    else:
        monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", ray_env)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "127.0.0.1:1"})())
    cfg = CentConfig()
    cfg.server.cluster_lost_s = lost_s
    with caplog.at_level("WARNING"):
        assert cluster_watch(cfg).lost_after_s == lost_s
    said = [r.getMessage() for r in caplog.records if "cluster_lost_s" in r.getMessage()]
    assert bool(said) is warned, said
    if warned:
        assert said[0].endswith(f"set server.cluster_lost_s below {float(ray_env or 60):g}"), said


def test_modelled_gpus_on_ray_ask_no_cluster(monkeypatch):
    """GPUs are modelled in this process whatever `executor` says (`executor_factory`): the server does
    not join a Ray cluster for them, nor hold them to its cent_device units (review)."""
    import api.server as srv
    from cent_serve.config import build_config
    from cent_serve.executor import ray_executor

    def join_cluster(cfg, replicas=None):
        raise AssertionError("joined a Ray cluster for modelled GPUs")

    monkeypatch.setattr(ray_executor, "join_cluster", join_cluster)
    cfg = build_config("tiny", hardware="gpu:a100-80gb:1")
    cfg.executor = "ray"
    _, loop = srv.build(cfg)
    try:
        assert loop.watch is None
    finally:
        loop.stop()


def test_replicas_failing_with_a_silent_head_wait_for_one_probe_not_one_each():
    """A silent head (a host gone: no refusal) holds a probe PROBE_TIMEOUT_S on the engine thread;
    several replicas failing in one round ask `fault` once each: one probe stands for PROBE_S."""
    from cent_serve.executor.watch import PROBE_S

    clock, asked, up = Clock(), [], {"answers": False}
    watch = ClusterWatch(GCS, 30.0, probe=lambda address: asked.append(address) or up["answers"], clock=clock)
    assert all(watch.fault() == f"the Ray cluster's head (its GCS at {GCS}) does not answer" for _ in range(4))
    assert len(asked) == 1
    clock.now_s += PROBE_S
    up["answers"] = True
    assert watch.fault() is None and watch.fault() is None and len(asked) == 3  # an answer is asked again


RAYLET = "10.0.0.2:40123"


def _recording(up: dict[str, bool]):
    """A probe answering as `up` says for each address, and the list of the addresses it was asked."""
    asked: list[str] = []

    def probe(address: str) -> bool:
        asked.append(address)
        return up[address]

    return probe, asked


def test_a_raylet_silent_for_cluster_lost_s_while_the_head_answers_is_lost_with_its_own_reason():
    """This node's raylet killed alone (the head's GCS answering): before, nothing asked it, and the
    server retried the devices' re-creation for ever (/health: 're-creating the devices of
    replica(s) [0]'). Now it is a problem, then lost after cluster_lost_s, as a silent head is, and
    one that answers again is not."""
    clock, up = Clock(), {GCS: True, RAYLET: True}
    probe, asked = _recording(up)
    watch = ClusterWatch(GCS, 3.0, probe=probe, clock=clock, raylet=RAYLET)
    watch.check()
    assert asked == [GCS, RAYLET] and watch.problem is None and watch.lost is None
    up[RAYLET] = False
    watch.check()
    clock.now_s += 2
    watch.check()
    assert watch.lost is None
    assert watch.problem == (f"this node's raylet (at {RAYLET}) has not answered for 2 s; the server gives it up at "
                             "3 s (server.cluster_lost_s)")
    assert watch.fault() == watch.problem
    up[RAYLET] = True
    watch.check()
    assert watch.problem is None and watch.lost is None
    up[RAYLET] = False
    watch.check()  # silent again: counted from now
    clock.now_s += 2
    watch.check()
    assert watch.lost is None
    clock.now_s += 1
    watch.check()
    assert watch.lost == (f"this node's raylet (at {RAYLET}) has not answered for 3 s (server.cluster_lost_s): the "
                          "server's Ray node and the devices on it are gone; start Ray on this node again (ray start), "
                          "then the server")
    assert watch.problem == watch.lost and watch.fault() == f"this node's raylet (at {RAYLET}) is gone"
    own = ClusterWatch(GCS, 1.0, own=True, probe=lambda address: address == GCS, clock=clock, raylet=RAYLET)
    own.check()
    clock.now_s += 1
    own.check()
    assert own.lost.endswith("are gone; restart the server (it starts a fresh local Ray)"), own.lost


def test_while_the_head_is_silent_its_loss_is_counted_not_its_raylets():
    """A head lost whole takes its raylet with it: the reason names the head, whichever went silent
    first (the raylet is asked only while the GCS answers)."""
    clock, up = Clock(), {GCS: True, RAYLET: False}
    watch = ClusterWatch(GCS, 3.0, probe=lambda address: up[address], clock=clock, raylet=RAYLET)
    watch.check()  # the raylet went first
    clock.now_s += 1
    up[GCS] = False
    watch.check()
    clock.now_s += 2.5
    watch.check()
    assert watch.lost is None and watch.problem.startswith(f"the Ray cluster's head (its GCS at {GCS}) has not "
                                                           "answered for 2 s")
    clock.now_s += 0.5
    watch.check()
    assert watch.lost.startswith(f"the Ray cluster's head (its GCS at {GCS}) has not answered for 3 s"), watch.lost


def test_a_round_that_fails_as_this_nodes_raylet_goes_names_the_raylet():
    """The round's links close as the raylet dies, before the watch's next question: the error names
    the raylet, found by a probe then; one unanswered probe stands for PROBE_S (counted)."""
    clock, up = Clock(), {GCS: True, RAYLET: True}
    probe, asked = _recording(up)
    watch = ClusterWatch(GCS, 30.0, probe=probe, clock=clock, raylet=RAYLET)
    assert watch.fault() is None and asked == [GCS, RAYLET]
    up[RAYLET] = False
    assert watch.fault() == f"this node's raylet (at {RAYLET}) does not answer"
    assert watch.fault() == f"this node's raylet (at {RAYLET}) does not answer"
    assert asked == [GCS, RAYLET, GCS, RAYLET, GCS]  # the second: the GCS asked again, the raylet not


def test_the_raylet_timer_starts_again_when_the_head_answers_again():
    """While the GCS is silent only the head's loss is counted: a raylet silent before and after a
    head's silence is counted from the head's answer, not from its first silence."""
    clock, up = Clock(), {GCS: True, RAYLET: False}
    watch = ClusterWatch(GCS, 3.0, probe=lambda address: up[address], clock=clock, raylet=RAYLET)
    watch.check()  # the raylet silent first
    clock.now_s += 1
    up[GCS] = False
    watch.check()
    clock.now_s += 1
    up[GCS] = True
    watch.check()  # the head answers again: the raylet is counted from now
    clock.now_s += 2
    watch.check()
    assert watch.lost is None and watch.problem.startswith(f"this node's raylet (at {RAYLET}) has not answered "
                                                           "for 2 s"), watch.problem
    clock.now_s += 1
    watch.check()
    assert watch.lost.startswith(f"this node's raylet (at {RAYLET}) has not answered for 3 s"), watch.lost


def test_the_watched_raylet_is_the_one_of_this_process_s_node(monkeypatch):
    """`cluster_watch` asks the raylet of the node this process runs on (ray.nodes() lists every
    node, the head's first on a cluster joined from a worker host), none where Ray names none."""
    import ray

    from cent_serve.executor.ray_executor import cluster_watch

    class Context:
        gcs_address = GCS

        @staticmethod
        def get_node_id() -> str:
            return "ours"

    nodes = [{"NodeID": "head", "NodeManagerAddress": "10.0.0.1", "NodeManagerPort": 40100},
             {"NodeID": "ours", "NodeManagerAddress": "10.0.0.2", "NodeManagerPort": 40123}]
    monkeypatch.setattr(ray, "get_runtime_context", Context)
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert cluster_watch(CentConfig()).raylet == RAYLET
    nodes.pop()  # this node not listed: only the GCS is watched
    assert cluster_watch(CentConfig()).raylet is None

    def fails():
        raise ConnectionError("the GCS did not answer")

    monkeypatch.setattr(ray, "nodes", fails)
    assert cluster_watch(CentConfig()).raylet is None
