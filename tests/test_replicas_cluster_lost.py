"""The server gives its Ray cluster up while a replica is being re-created (`Replicas.give_up_cluster`,
as `run_server` does on the way out): the re-creation leaves without asking Ray anything more, since
every call about the lost cluster's actors and placement groups waits on its dead GCS. No Ray here:
its calls are fakes that record what is asked and block, as on a dead GCS, until the test ends."""
from __future__ import annotations

import importlib
import threading
import types

import pytest

import cent_serve.replicas as replicas_module
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import ray_placement
from cent_serve.executor.ray_executor import STARTUP_TIMEOUT_S, RayExecutor, await_started
from cent_serve.replicas import Replicas
from tests.test_replicas_stop import HANG_GUARD_S, _Executor


class _DeadRay:
    """The Ray calls a re-creation makes, on a cluster whose head is gone: a placement never granted,
    devices that never answer, and a kill or a group's removal that blocks (recorded in `asked`) until
    `revive`. `waiting` is set once the re-creation waits for its placement, its switch or its devices
    (or is inside a call that blocks)."""

    def __init__(self, monkeypatch) -> None:
        self.asked: list[tuple] = []
        self.waiting, self._gcs = threading.Event(), threading.Event()
        rpg = importlib.import_module("ray.util.placement_group")  # the module: ray.util's attribute is its function
        ray = ray_placement.ray
        monkeypatch.setattr(ray_placement, "_cluster_units", lambda cfg: ({"a": 4}, "A: 4"))
        monkeypatch.setattr(rpg, "placement_group", lambda *a, **k: types.SimpleNamespace(ready=lambda: "granted"))
        monkeypatch.setattr(rpg, "remove_placement_group", lambda pg: self._blocked("remove_placement_group", pg))
        monkeypatch.setattr(ray, "kill", lambda actor: self._blocked("kill", actor))
        monkeypatch.setattr(ray, "wait", self._wait)
        # of nothing ready: nothing; of an answer asked after the loss (a switch's): it never comes
        monkeypatch.setattr(ray, "get", lambda refs, timeout=None: self._blocked("get", refs) if refs else [])

    def _blocked(self, call: str, what) -> None:
        self.asked.append((call, what))
        self.waiting.set()
        assert self._gcs.wait(HANG_GUARD_S)

    def _wait(self, refs, num_returns=1, timeout=None):
        self.waiting.set()
        threading.Event().wait(min(timeout, 0.01))
        return [], list(refs)

    def revive(self) -> None:
        self._gcs.set()


def _placing() -> None:
    """A re-creation waiting for its placement group (`place_devices`)."""
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 4, 1), numerics="off", executor="ray")
    cfg.server.placement_timeout_s = 1e6  # never reached
    ray_placement.place_devices(cfg, 4)


def _starting() -> None:
    """A re-creation waiting for its devices to answer, placed and started, cleaned up on a failure as
    `RayExecutor.__init__` does."""
    ex = RayExecutor.__new__(RayExecutor)
    ex.inputs, ex.output, ex.switch_link, ex.replica_host = [], None, None, None
    ex.pg, ex.fabric, ex.actors = "group", "switch actor", {0: "device actor 0", 1: "device actor 1"}
    try:
        await_started(["address 0", "address 1"], STARTUP_TIMEOUT_S)
    except BaseException:
        ex.shutdown()
        raise


def _switching(monkeypatch):
    """A re-creation waiting for its switch to answer (`RayExecutor.__init__`, its devices placed): a
    switch actor created after the loss never starts."""
    import fabric.actor

    from cent_serve.executor import ray_executor as rx

    switch = types.SimpleNamespace(address=types.SimpleNamespace(remote=lambda: "the switch's address"),
                                   where=types.SimpleNamespace(remote=lambda: "the switch's node"))
    options = types.SimpleNamespace(remote=lambda *a: switch)
    monkeypatch.setattr(fabric.actor, "FabricActor", types.SimpleNamespace(options=lambda **k: options))
    for name, fake in [("ensure_ray", lambda address: None), ("warm", lambda: None), ("warm_steady", lambda: None),
                       ("place_devices", lambda *a: None), ("_single_node", lambda: True)]:
        monkeypatch.setattr(rx, name, fake)
    monkeypatch.setattr(rx.ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "ab" * 28))
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 4, 1), numerics="off", executor="ray")
    return lambda: RayExecutor(cfg)


@pytest.mark.parametrize("remake", [lambda mp: _placing, lambda mp: _starting, _switching],
                         ids=["placing", "starting", "switching"])
def test_a_recreation_given_up_with_its_cluster_asks_ray_nothing_and_is_not_waited_for(monkeypatch, caplog, remake):
    """Given up, the re-creation removed its placement group, or killed its actors and removed their
    group, each call waiting on the dead GCS, or it waited up to STARTUP_TIMEOUT_S for a switch that
    never starts, deaf to the stop: `run_server` waited its join bound for it, and Ray's core
    could end the process (60 s without a GCS) before the server's one-line exit. Now it asks Ray
    nothing and leaves at its next check, so the wait ends with it, long before the bound (a hang guard
    here), and nothing it built is shut down or swapped in."""
    dead = _DeadRay(monkeypatch)
    shut: list = []
    replicas = Replicas(lambda: _Executor(shut), 1, remake=remake(monkeypatch))
    old = replicas.executors[0]
    try:
        replicas.fail(0, RuntimeError("the Ray cluster's head (its GCS at 10.0.0.1:6379) does not answer"))
        assert dead.waiting.wait(HANG_GUARD_S)
        thread = replicas._threads[0]
        with caplog.at_level("INFO", logger="cent.replicas"):
            replicas.give_up_cluster(join_s=HANG_GUARD_S)
        assert dead.asked == [] and not thread.is_alive(), dead.asked
        assert "replica 0: its re-creation was given up (the Ray cluster is lost)" in caplog.messages
        assert "still being re-created" not in caplog.text
        assert shut == [old]  # the failed one, shut down at the fault, before the loss
        assert replicas.poll() == [] and replicas.executors == [None] and not replicas._start(0)
    finally:
        dead.revive()


def test_a_recreation_inside_a_call_on_the_dead_gcs_is_waited_for_a_short_bound_only():
    """A re-creation inside a Ray call begun before the loss was known (the failed replica's kill, at
    the fault) never returns: the wait for it is LOST_JOIN_S, not the EXIT_JOIN_S of a stop (each second
    of it brings Ray's 60 s nearer), and a failure after the loss shuts nothing down."""
    shut: list = []
    entered, gcs = threading.Event(), threading.Event()

    class Parked(_Executor):
        def shutdown(self) -> None:
            super().shutdown()
            if self is first:
                entered.set()
                assert gcs.wait(HANG_GUARD_S)  # Ray's kill, on the dead GCS

    replicas = Replicas(lambda: Parked(shut), 2, remake=lambda: _Executor(shut))
    first = replicas.executors[0]
    try:
        replicas.fail(0, RuntimeError("gone"))
        assert entered.wait(HANG_GUARD_S)
        thread, joins = replicas._threads[0], []
        join = thread.join
        thread.join = lambda timeout=None: (joins.append(timeout), join(0.0))  # the bound asked, not waited
        replicas.give_up_cluster()
        assert len(joins) == 1 and 0 < joins[0] <= replicas_module.LOST_JOIN_S < replicas_module.EXIT_JOIN_S, joins
        assert thread.is_alive()
        replicas.fail(1, RuntimeError("gone too"))  # its actors went with the cluster: not asked to stop
        assert shut == [first] and replicas.executors == [None, None]
    finally:
        gcs.set()


def test_an_executor_built_after_the_cluster_was_given_up_is_not_shut_down():
    """A re-creation whose start-up returned after the loss (it was inside a call deaf to the stop)
    stops what it built on a normal stop; given up with the cluster, that executor's actors went with
    it, and its shutdown (Ray's kill) would wait on the dead GCS: it is dropped, never swapped in."""
    shut: list = []
    entered, release = threading.Event(), threading.Event()

    def remake():
        entered.set()
        assert release.wait(HANG_GUARD_S)
        return _Executor(shut)

    replicas = Replicas(lambda: _Executor(shut), 1, remake=remake)
    old = replicas.executors[0]
    replicas.fail(0, RuntimeError("gone"))
    assert entered.wait(HANG_GUARD_S)
    thread = replicas._threads[0]
    replicas.give_up_cluster(join_s=0.0)
    release.set()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and shut == [old]  # only the failed one, at the fault
    assert replicas.poll() == [] and replicas.executors == [None]


def test_a_cluster_given_up_is_known_only_inside_its_thread_s_start_up():
    """`cluster_gone` is true only inside the `cancellable_start` block of the thread given up with its
    cluster: after it (a later shutdown on that thread, the next test on pytest's) and on any other
    thread (the engine's, another server's re-creation), `RayExecutor.shutdown` kills its actors and
    removes their group as ever; a flag left behind would leave them running on a live cluster."""
    from cent_serve.executor.base import cancellable_start, check_start, cluster_gone

    elsewhere: list = []
    with cancellable_start(lambda: False, lambda: True):
        assert cluster_gone()
        other = threading.Thread(target=lambda: elsewhere.append(cluster_gone()))
        other.start()
        other.join(HANG_GUARD_S)
    assert elsewhere == [False] and not cluster_gone()
    check_start()  # wanted again: nothing raised
