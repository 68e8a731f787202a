"""The Ray executor runs the same workers: identical tokens and identical simulated times."""
from __future__ import annotations

import types

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor, make_executor
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import Layout, RoundPlan

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("devices, pp, tp", [(4, 0, 1), (4, 2, 2)])  # a pure pipeline (2 blocks a device), pp x tp
def test_ray_equals_local_executor(ray_cluster, devices, pp, tp):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
    prompts = [[1, 9, 8, 7], [1, 50]]
    local_ex = LocalExecutor(cfg)
    local = generate_batch(local_ex, prompts, 12)
    ex = make_executor(cfg, "ray")
    try:
        remote = generate_batch(ex, prompts, 12)
        stats = ex.stats()
        terms = ex.energy_terms_j()
    finally:
        ex.shutdown()
    assert remote.token_ids == local.token_ids
    assert remote.token_times_s == local.token_times_s  # bit-identical simulated time
    # the devices' joules by term, charged beside their joules: as in this process, and adding up to them
    assert terms == local_ex.energy_terms_j()
    assert sum(terms.values()) == pytest.approx(sum(d["energy_j"] for d in stats["devices"]), rel=1e-9)
    assert len(stats["devices"]) == devices
    assert sum(d["tokens"] for d in stats["devices"]) > 0
    if pp == 0:  # pipeline: activations crossed the switch between all the devices
        assert stats["fabric"]["wire_bytes"] > 0 and len(stats["fabric"]["ports"]) == devices


def _round(r: int) -> RoundPlan:
    """Two sequences per lane, a prefill chunk then decode steps, lanes not ready in order."""
    seqs = tuple(tuple((10 * m + j, 3 if r == 0 else 1) for j in range(2)) for m in (0, 1))
    ids = [5 + m + j for m in (0, 1) for j in range(2) for _ in range(3 if r == 0 else 1)]
    return RoundPlan(Layout((0, 1), seqs), np.array([1e-4 * r * m for m in (0, 1)]), r,
                     {10 * m + j: 0 for m in (0, 1) for j in range(2)} if r == 0 else {}, (),
                     np.array(ids, dtype=np.int64), np.ones(4, bool))


@pytest.fixture(scope="module")
def auto_executor(ray_cluster):
    """(config, executor): a tiny 2-stage pipeline on Ray built from a config with numerics `auto` (full:
    the checkpoint is here), shared by the tests that run rounds on it or connect to its listeners and
    leave it working (a Ray executor's start is most of such a test's time)."""
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1))
    ex = make_executor(cfg, "ray")
    yield cfg, ex
    ex.shutdown()


def test_ray_rounds_in_flight_and_errors(auto_executor):
    cfg, ex = auto_executor
    assert cfg.resolved_numerics == "full"
    local = LocalExecutor(cfg)
    want = [local.run(_round(r)) for r in range(3)]
    futures = [ex.submit(_round(r)) for r in range(3)]  # all sent before any is awaited
    got = [f.result() for f in reversed(futures)][::-1]
    bad = RoundPlan(Layout((7,), (((70, 1),),)), np.zeros(1), 3, {70: 0}, (), np.array([10_000]),
                    np.ones(1, bool))
    with pytest.raises(ValueError, match="vocabulary"):
        ex.run(bad)
    after = ex.run(RoundPlan(Layout((8,), (((80, 1),),)), np.zeros(1), 4, {80: 0}, (), np.array([4]),
                             np.ones(1, bool)))
    for g, w in zip(got, want):
        assert g.ready_s.tolist() == w.ready_s.tolist()
        assert (g.logits.argmax(-1) == w.logits.argmax(-1)).all()
    assert after.logits.shape == (1, cfg.model.vocab_size)


def test_steady_rounds_move_only_times_one_tick_per_unit(ray_cluster):
    """Once a decode batch's layout holds, a round is one tick per unit plus the answer to the host
    (`fabric.rounds.tick_message`): the lanes' times and the sequences' joules, nothing else; the
    simulated results equal the in-process executor's bit for bit."""
    from fabric.link import HEADER
    from fabric.rounds import tick_message

    cfg = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(4, 0, 1), numerics="off")
    lanes, units = 32, 4  # 32 blocks on 4 devices: one query per stage, 8 stages per device
    layout = Layout(tuple(range(lanes)), tuple(((q, 1),) for q in range(lanes)))

    def rounds(ex, n: int):
        ready, outs, counted = np.zeros(lanes), [], None
        for r in range(n):
            if r == 2:
                counted = ex.stats().get("links")
            out = ex.run(RoundPlan(layout, ready, r, {q: 100 for q in range(lanes)} if r == 0 else {}))
            ready = out.sampled_s
            outs.append((out.sampled_s.tolist(), out.energy_j.tolist()))
        return outs, counted

    want, _ = rounds(LocalExecutor(cfg), 22)
    ex = make_executor(cfg, "ray")
    try:
        got, before = rounds(ex, 22)
        after = ex.stats()["links"]
    finally:
        ex.shutdown()
    assert got == want
    tick = HEADER.size + len(tick_message(20, np.zeros(2 * lanes)))  # times and joules, 8 bytes each
    answer = HEADER.size + len(tick_message(20, np.zeros(3 * lanes)))  # and the host's sampling times
    assert after["messages"] - before["messages"] == 20 * (units + 1)
    assert after["bytes"] - before["bytes"] == 20 * (units * tick + answer)


def test_a_replicas_devices_share_one_cpu_unless_tensor_ranks_compute_together(ray_cluster):
    import os

    import ray

    for numerics, pp, tp, pinned in (("off", 2, 1, True), ("off", 1, 2, True), ("full", 1, 2, False)):
        cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, pp, tp), numerics=numerics)
        ex = make_executor(cfg, "ray")
        try:
            cpus = ray.get([a.cpus.remote() for a in ex.actors.values()])
        finally:
            ex.shutdown()
        if pinned:
            assert len(cpus[0]) == 1 and all(c == cpus[0] for c in cpus), (numerics, pp, tp, cpus)
        else:
            assert all(set(c) == os.sched_getaffinity(0) for c in cpus), (numerics, pp, tp, cpus)


def test_an_executor_built_inside_a_ray_task_leaves_its_devices_unpinned(ray_cluster):
    """A Ray user's sweep fanned out over tasks: each task's process counts its replicas' CPUs from
    the first, so pinned, every task's devices would share the node's first CPU while the others idle."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def build() -> list:
        ex = make_executor(CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="off"),
                           "ray")
        try:
            return ray.get([a.cpus.remote() for a in ex.actors.values()])
        finally:
            ex.shutdown()

    cpus = ray.get(build.remote(), timeout=600)
    assert all(set(c) == os.sched_getaffinity(0) for c in cpus), cpus


class _Plant:
    """Unpickling this runs code: it creates a file (what an attacker's payload would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_no_listener_trusts_a_link_without_the_runs_secret(auto_executor, tmp_path):
    """Connections to the switch's and a device's listeners (TCP and Unix socket) without the
    secret, sending a payload whose unpickling would create a file: nothing runs, each
    connection is refused and counted, rounds go on."""
    import pickle
    import socket
    import struct
    import time

    import ray

    _, ex = auto_executor
    device = ex.actors[1]
    targets = {"switch": ex.fabric, "device": device}
    planted = tmp_path / "pwned"
    blob = pickle.dumps(("device", 0, _Plant(str(planted))))
    for name, actor in targets.items():
        addr = ray.get(actor.address.remote())
        assert addr.host == "127.0.0.1"  # one node: TCP on loopback only
        ends = [(socket.AF_INET, addr.tcp)] + ([(socket.AF_UNIX, addr.unix)] if addr.unix else [])
        for family, where in ends:
            for payload in (struct.pack("<Q", len(blob)) + blob, blob, b"\x00" * 64):
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(10)
                    s.connect(where)
                    s.sendall(payload)
                    try:
                        while s.recv(4096):  # the listener closes the connection
                            pass
                    except (ConnectionError, socket.timeout):
                        pass
        deadline = time.monotonic() + 60
        while ray.get(actor.refused.remote()) < 3 * len(ends):
            assert time.monotonic() < deadline, f"the {name} did not refuse the connections"
            time.sleep(0.1)
    assert not planted.exists()
    out = ex.run(RoundPlan(Layout((0,), (((90, 3),),)), np.zeros(1), 5, {90: 0}, (), np.array([1, 5, 6]),
                           np.ones(1, bool)))
    assert out.ready_s[0] > 0  # the round still runs on the authenticated links


def test_the_local_ray_runs_its_workers_at_normal_priority(ray_cluster):
    """Ray's default niceness of 15 would let any busy process on the machine starve the emulated
    devices (seen: a test took minutes beside two CPU-bound loops); the local Ray runs them at 0."""
    import os

    @ray_cluster.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray_cluster.get(niceness.remote(), timeout=60) == os.nice(0)


def test_numerics_auto_is_resolved_once_on_the_driver_for_every_actor(auto_executor):
    """`auto` looks at the checkpoint's files; an actor on a node without them would resolve it to
    timing-only beside a driver computing full numerics. The actors get the driver's answer."""
    cfg, ex = auto_executor
    assert cfg.numerics == "auto" and cfg.resolved_numerics == "full"
    assert ex.cfg.numerics == "full"  # the config the device and fabric actors were built with
    assert ex.cfg.resolved_numerics == "full" and cfg.numerics == "auto"  # the caller's is left as given


def test_placement_replica_picks_a_node_no_other_replica_holds_while_one_fits():
    from cent_serve.executor.ray_executor import replica_hosts
    units = {"a": 8, "b": 4, "c": 2}
    assert replica_hosts(units, 4, {}) == (["a", "b"], False)  # c cannot hold 4 devices
    assert replica_hosts(units, 4, {"a": 1}) == (["b"], False)
    assert replica_hosts(units, 4, {"a": 1, "b": 0}) == (["b"], False)  # b's replica was shut down
    assert replica_hosts(units, 4, {"a": 1, "b": 2}) == (["a", "b"], True)  # every fitting node holds one: share
    assert replica_hosts(units, 16, {}) == ([], False)  # no node fits: the caller refuses


def test_startup_wait_logs_progress_and_raises_early(ray_cluster, caplog):
    """Actors that take long to start are counted in the log while the executor waits; one that
    fails to start raises without waiting for the others."""
    import logging
    import time

    import ray

    from cent_serve.executor.ray_executor import await_started

    @ray.remote(num_cpus=0)
    def answer(x, delay):
        time.sleep(delay)
        if x < 0:
            raise ValueError("no start")
        return x

    with caplog.at_level(logging.INFO, logger="cent_serve.executor.ray_executor"):
        assert await_started([answer.remote(1, 0.0), answer.remote(2, 0.6)], 60.0, every_s=0.1) == [1, 2]
    assert any("of 2 up after" in r.getMessage() for r in caplog.records)
    slow = answer.remote(3, 300.0)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="no start"):
        # the failure answers in milliseconds; a wait that only looked at each progress tick
        # (every 100 s here) would raise after 100 s: 50 s is the margin for a loaded machine
        await_started([slow, answer.remote(-1, 0.0)], 600.0, every_s=100.0)
    assert time.monotonic() - t0 < 50.0
    ray.cancel(slow, force=True)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        await_started([answer.remote(4, 5.0)], 0.3, every_s=0.1)


def test_a_local_ray_started_for_the_user_leaves_their_environment_as_it_was(monkeypatch):
    """The settings a fresh local Ray is started with (its workers' niceness, their start-up
    concurrency) are the raylet's, read when `ray.init` starts it: a Ray the user starts later in the
    same process (after `ray.shutdown()`) gets Ray's defaults, not ours, unless they set them."""
    import os

    from cent_serve.executor import ray_cluster as rx

    names = (rx.WORKER_NICENESS_ENV, rx.STARTUP_CONCURRENCY_ENV)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = {}
    monkeypatch.setattr(rx.ray, "init", lambda **kw: seen.update({n: os.environ.get(n) for n in names}))
    assert rx._start_or_join(None, 1) == "started a local Ray"
    assert seen == {rx.WORKER_NICENESS_ENV: "0", rx.STARTUP_CONCURRENCY_ENV: str(rx.STARTUP_CONCURRENCY)}
    assert [os.environ.get(n) for n in names] == [None, None]
    monkeypatch.setenv(rx.WORKER_NICENESS_ENV, "15")  # the user's own setting is theirs, kept
    rx._start_or_join(None, 1)
    assert seen[rx.WORKER_NICENESS_ENV] == "15" and os.environ[rx.WORKER_NICENESS_ENV] == "15"


def test_joining_auto_names_the_cluster_it_found(monkeypatch):
    """`--ray-address auto` may find any cluster on the machine: the start-up line names its GCS."""
    import socket

    import ray

    from cent_serve.executor import ray_cluster as rx

    class Conn:  # a GCS: it answers HTTP/2's preface with a SETTINGS frame
        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def sendall(self, data):
            pass

        def recv(self, n):
            return b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    monkeypatch.setattr(rx, "_gcs_address", lambda address: "10.1.2.3:6390" if address == "auto" else address)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: Conn())
    assert rx.ensure_ray("auto") == "joined the Ray cluster at auto: 10.1.2.3:6390 (1 node)"
    assert rx.ensure_ray("10.1.2.3:6390") == "joined the Ray cluster at 10.1.2.3:6390 (1 node)"


def test_the_engine_tells_each_ray_executor_how_many_replicas_it_builds(monkeypatch):
    """The engine builds every replica, so each executor's placement checks the cluster for all of
    them; a re-created replica (after a fault) asks for its own devices alone, as the others hold
    theirs and a cluster that lost a node may still hold it; `cent simulate --emulate` builds one
    executor of a many-replica mapping and checks for one. The engine asks the cluster for them all
    once before it builds any (`join_cluster`), so a refusal comes before any replica's start-up line."""
    import time

    from cent_serve.engine import Engine
    from cent_serve.executor import executor_factory
    from cent_serve.executor import ray_executor as rx

    made, checked = [], []

    def recorder(cfg, replicas=1, **kwargs):  # a working executor in this process, its count recorded
        made.append(replicas)
        return LocalExecutor(cfg)

    monkeypatch.setattr(rx, "RayExecutor", recorder)
    monkeypatch.setattr(rx, "join_cluster", lambda cfg, replicas=None: checked.append((replicas, len(made))))
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(16, 8, 1), numerics="off", executor="ray")
    eng = Engine(cfg)
    assert made == [2, 2] and checked == [(2, 0)]  # both replicas asked for, before the first was built
    eng.replicas.fail(0, RuntimeError("a device died"))
    deadline = time.monotonic() + 60  # a hang guard: the re-creation runs on a thread
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.replicas.shutdown()
    assert made == [2, 2, 1]
    make_executor(cfg)
    executor_factory(cfg)()
    assert made == [2, 2, 1, 1, 1] and checked == [(2, 0), (1, 4)]


@pytest.mark.parametrize("answer, says", [
    (b"HTTP/1.0 400 Bad request version\r\nServer: x\r\n", "HTTP/1.0 400 Bad request version"),
    (b"-ERR unknown command 'PRI'\r\n", "-ERR unknown command 'PRI'"),
    (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00", None),  # gRPC's SETTINGS: a GCS (what Ray 2's answers)
    (b"\x15\x03\x03\x00\x02\x02\x46", None),  # a TLS alert: a TLS GCS, which this process was not told of
    (b"", None),  # closed without a word: no telling
    (None, None),  # silent: no telling (the probe's timeout)
])
def test_a_port_that_answers_but_not_as_a_ray_gcs_is_told_apart(monkeypatch, answer, says):
    """`--ray-address` at a port something else listens on (a web server) passed the connect probe,
    and ray.init then retried it for minutes with Ray's core logging each attempt (first-hour audit)."""
    import socket

    from cent_serve.executor import ray_cluster as rx

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    if answer is None:  # the silent case waits the probe's timeout out: short here (the others answer at once,
        monkeypatch.setattr(rx, "JOIN_PROBE_TIMEOUT_S", 0.5)  # within the default 5 s on a busy machine)

    def serve():
        conn, _ = srv.accept()
        conn.recv(64)
        if answer is not None:
            conn.sendall(answer)
            conn.close()
        else:
            done.wait(10)
            conn.close()

    import threading

    done = threading.Event()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert rx._not_a_gcs("127.0.0.1", srv.getsockname()[1]) == says
    finally:
        done.set()
        t.join(10)
        srv.close()


def _replica_cfg() -> CentConfig:
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(12, 6, 1), numerics="off", executor="ray")
    cfg.server.placement = "replica"
    return cfg


def test_replica_placement_is_refused_up_front_when_the_hosts_cannot_each_hold_a_whole_replica(monkeypatch):
    """12 units as 8 + 4 for 2 replicas of 6: the units added up, so replica 0 started, the second was
    warned it would share a host (none had room) and its placement timed out 30 s later. The hosts'
    room in whole replicas is counted before anything starts; one host holding both still passes."""
    from cent_serve.executor import ray_placement as rx

    monkeypatch.setattr(rx, "_cluster_units", lambda cfg: ({"a": 8, "b": 4}, "A: 8, B: 4"))
    with pytest.raises(rx.PlacementError, match=r"the hosts hold 1 of the 2 replicas \(A: 8, B: 4\).*use --devices 6"):
        rx.check_cluster_holds(_replica_cfg(), 6, replicas=2)
    for units in ({"a": 6, "b": 6}, {"a": 12, "b": 0}):
        monkeypatch.setattr(rx, "_cluster_units", lambda cfg, units=units: (units, "..."))
        rx.check_cluster_holds(_replica_cfg(), 6, replicas=2)


@pytest.mark.parametrize("lost", ["", "10.0.0.2 (0badc0de): 2"])
def test_a_cluster_without_device_units_is_refused_when_several_nodes_or_lost_nodes_had_units(monkeypatch, lost):
    """Two nodes started without --resources: the devices were placed where Ray liked, alternating
    nodes along the pipeline, and --placement replica was silently not applied: refused. One node
    without units is a plain Ray (a local one, joined or not, a `ray.remote` task's), served as
    before, unless nodes of the cluster that advertised units are gone (`_lost_units`): a head kept
    free of devices whose worker with the units was lost had the worker's replica re-created on the
    head, silently. Then it is refused naming the lost nodes, at a re-creation too, which asks again
    (`place_devices`)."""
    from cent_serve.executor import ray_placement as rx

    monkeypatch.setattr(rx, "_lost_units", lambda cfg: lost)
    monkeypatch.setattr(rx, "_cluster_units", lambda cfg: ({"a": 0, "b": 0}, "A: 0, B: 0"))
    with pytest.raises(rx.PlacementError, match=r"the cluster's 2 nodes advertise no cent_device units.*"
                                                r"placement='replica'.*ray start --resources='\{\"cent_device\": N\}'"
                       if not lost else r"^the node\(s\) that advertised cent_device units are gone: 10\.0\.0\.2 "):
        rx.check_cluster_holds(_replica_cfg(), 6, replicas=2)
    monkeypatch.setattr(rx, "_cluster_units", lambda cfg: ({"a": 0}, "A: 0"))
    if not lost:
        assert rx.check_cluster_holds(_replica_cfg(), 6, replicas=2) == ({"a": 0}, "A: 0")
        assert rx.place_devices(_replica_cfg(), 6) is None
        return
    for ask in (lambda: rx.check_cluster_holds(_replica_cfg(), 6, replicas=2),
                lambda: rx.place_devices(_replica_cfg(), 6)):
        with pytest.raises(rx.PlacementError) as e:
            ask()
        assert str(e.value) == ("the node(s) that advertised cent_device units are gone: 10.0.0.2 (0badc0de): 2, and "
                                "the live node(s) advertise none (A: 0); start a node with units: ray start "
                                "--resources='{\"cent_device\": N}' (deploy/README.md)"), e.value


def test_a_local_ray_without_units_has_no_lost_units_even_after_a_group_that_was_never_granted(ray_cluster):
    """The session's local Ray advertises no units: nothing was lost, so its devices are placed anywhere.
    A group of cent_device bundles it could never grant (pending, then removed) stays in the cluster's
    placement group table; it is no sign that units were there."""
    import os

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cent_serve.executor import ray_placement as rx

    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="off", executor="ray")
    assert not ray.cluster_resources().get(cfg.server.device_resource)
    pg = placement_group([{cfg.server.device_resource: 1}], name=f"never-granted-{os.getpid()}")
    remove_placement_group(pg)
    assert rx._lost_units(cfg) == ""
    units, _ = rx.check_cluster_holds(cfg, 2)
    assert len(units) == 1 and rx.place_devices(cfg, 2) is None


def test_an_empty_device_resource_is_refused_naming_the_field(capsys):
    """server.device_resource='' was taken: a cluster of several nodes was then refused for advertising no
    '' units, the fix told ray start --resources='{"": N}'."""
    from cent_serve.cli import main

    assert main(["info", "--model", "tiny", "--set", "server.device_resource="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "server.device_resource='' is invalid: name the Ray resource" in err, err


@pytest.mark.parametrize("granted, held", [(True, {"a": 1, "b": 1}), (False, {"a": 1, "b": 1}), (True, {"a": 1})])
def test_a_replica_shares_a_host_warning_only_once_its_group_is_granted(monkeypatch, caplog, granted, held):
    """Both hosts hold a replica each and the third's host is lost: re-creating it warned 'so this
    one shares a host' every 40 s (each attempt) while no host had room and none was shared, beside
    the placement error; now the warning comes when a shared host is granted."""
    import importlib

    import ray

    from cent_serve.executor import ray_placement as rx

    rpg = importlib.import_module("ray.util.placement_group")  # the module: ray.util's attribute is its function

    monkeypatch.setattr(rx, "_cluster_units", lambda cfg: ({"a": 4, "b": 4}, "A: 4, B: 4"))
    monkeypatch.setattr(rx, "_replica_hosts", dict(held))  # one host free ({"a": 1}): nothing is shared
    monkeypatch.setattr(rpg, "placement_group", lambda *a, **k: types.SimpleNamespace(ready=lambda: None))
    monkeypatch.setattr(rpg, "remove_placement_group", lambda pg: None)
    monkeypatch.setattr(rx.ray, "available_resources", lambda: {"cent_device": 0})

    def await_granted(pg, timeout_s):
        if not granted:
            raise ray.exceptions.GetTimeoutError("not granted")

    monkeypatch.setattr(rx, "_await_granted", await_granted)
    cfg = _replica_cfg()
    with caplog.at_level("WARNING", logger=rx.log.name):
        if granted:
            assert rx.place_devices(cfg, 4) is not None
        else:
            with pytest.raises(rx.PlacementError, match="did not grant 4 cent_device bundles"):
                rx.place_devices(cfg, 4)
    assert ("so this one shares a host" in caplog.text) == (granted and len(held) == 2), caplog.text


def test_a_placement_wait_is_given_up_when_the_start_up_is_cancelled(monkeypatch):
    """A replica re-created while the server gives its cluster up (a lost raylet) waited in
    ray.get(pg.ready(), timeout=placement_timeout_s), deaf to the stop: Ray shut down under it, and
    the moment it returned Ray ended the process before the server's last line (its error). The wait
    now asks `check_start` between short waits: cancelled, it removes its group and raises
    StartCancelled at the first check; a group never granted still times out as a PlacementError."""
    import importlib

    import ray

    from cent_serve.executor import ray_placement as rx
    from cent_serve.executor.base import StartCancelled, cancellable_start

    rpg = importlib.import_module("ray.util.placement_group")
    removed, waits = [], []
    monkeypatch.setattr(rx, "_cluster_units", lambda cfg: ({"a": 4}, "A: 4"))
    monkeypatch.setattr(rpg, "placement_group", lambda *a, **k: types.SimpleNamespace(ready=lambda: "ref"))
    monkeypatch.setattr(rpg, "remove_placement_group", removed.append)
    monkeypatch.setattr(rx.ray, "available_resources", lambda: {"cent_device": 0})
    monkeypatch.setattr(rx.ray, "wait", lambda refs, timeout=None: (waits.append(timeout), ([], refs))[1])

    def get(ref, timeout=None):  # what a group never granted gives the old wait after its timeout
        raise ray.exceptions.GetTimeoutError("not granted")

    monkeypatch.setattr(rx.ray, "get", get)
    cfg = _replica_cfg()
    cfg.server.placement_timeout_s = 1e6  # never reached when cancelled
    with cancellable_start(lambda: True), pytest.raises(StartCancelled):
        rx.place_devices(cfg, 4)
    assert len(waits) == 1 and waits[0] <= rx.PLACEMENT_CHECK_S and len(removed) == 1
    cfg.server.placement_timeout_s = 0.05
    with cancellable_start(lambda: False), pytest.raises(rx.PlacementError, match="did not grant 4"):
        rx.place_devices(cfg, 4)
    assert len(removed) == 2


def test_shutting_an_executor_down_tells_its_first_devices_the_chain_stops():
    """`RayExecutor.shutdown` sends the stop on every host input link before closing them (the devices
    end quietly, `HostEnd.stop`), and goes on past a link whose device is gone already."""
    import socket

    from cent_serve.executor.ray_executor import RayExecutor
    from fabric.link import Link, LinkClosed

    pairs = [tuple(map(Link, socket.socketpair())) for _ in range(3)]
    pairs[1][1].close()  # that device is gone
    ex = RayExecutor.__new__(RayExecutor)
    ex.inputs, ex.output, ex.switch_link = [host for host, _ in pairs], None, None
    ex.actors, ex.fabric, ex.pg = {}, None, None
    ex.shutdown()
    assert ex.inputs == [] and all(host.sock.fileno() == -1 for host, _ in pairs)
    for i in (0, 2):
        device = pairs[i][1]
        assert device.recv(30.0) == {"kind": "stop"}
        with pytest.raises(LinkClosed):
            device.recv(30.0)


def test_the_local_ray_gets_the_settings_its_raylet_needs_and_the_driver_keeps_none(ray_cluster):
    """The local Ray cent starts reads its start-up settings when `ray.init` starts its raylet (its
    workers inherit them); this process's environment keeps only what the user set."""
    import os

    from cent_serve.executor import ray_cluster as rx

    ours = {rx.WORKER_NICENESS_ENV: "0", rx.STARTUP_CONCURRENCY_ENV: str(rx.STARTUP_CONCURRENCY)}

    @ray_cluster.remote(num_cpus=0)
    def settings() -> dict:
        return {name: os.environ.get(name) for name in ours}

    assert ray_cluster.get(settings.remote(), timeout=60) == {n: os.environ.get(n, v) for n, v in ours.items()}
