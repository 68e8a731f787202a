"""The Ray executor runs the same workers: identical tokens and identical simulated times."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor, make_executor
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import Layout, RoundPlan

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (4, 2, 2)])
def test_ray_equals_local_executor(ray_cluster, devices, pp, tp):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
    prompts = [[1, 9, 8, 7], [1, 50]]
    local = generate_batch(LocalExecutor(cfg), prompts, 12)
    ex = make_executor(cfg, "ray")
    try:
        remote = generate_batch(ex, prompts, 12)
        stats = ex.stats()
    finally:
        ex.shutdown()
    assert remote.token_ids == local.token_ids
    assert remote.token_times_s == local.token_times_s  # bit-identical simulated time
    assert len(stats["devices"]) == devices
    assert sum(d["tokens"] for d in stats["devices"]) > 0
    if devices == 8:  # pipeline: activations crossed the switch between all 8 devices
        assert stats["fabric"]["wire_bytes"] > 0 and len(stats["fabric"]["ports"]) == 8


def _round(r: int) -> RoundPlan:
    """Two sequences per lane, a prefill chunk then decode steps, lanes not ready in order."""
    seqs = tuple(tuple((10 * m + j, 3 if r == 0 else 1) for j in range(2)) for m in (0, 1))
    ids = [5 + m + j for m in (0, 1) for j in range(2) for _ in range(3 if r == 0 else 1)]
    return RoundPlan(Layout((0, 1), seqs), np.array([1e-4 * r * m for m in (0, 1)]), r,
                     {10 * m + j: 0 for m in (0, 1) for j in range(2)} if r == 0 else {}, (),
                     np.array(ids, dtype=np.int64), np.ones(4, bool))


def test_ray_rounds_in_flight_and_errors(ray_cluster):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="full")
    local = LocalExecutor(cfg)
    want = [local.run(_round(r)) for r in range(3)]
    ex = make_executor(cfg, "ray")
    try:
        futures = [ex.submit(_round(r)) for r in range(3)]  # all sent before any is awaited
        got = [f.result() for f in reversed(futures)][::-1]
        bad = RoundPlan(Layout((7,), (((70, 1),),)), np.zeros(1), 3, {70: 0}, (), np.array([10_000]),
                        np.ones(1, bool))
        with pytest.raises(ValueError, match="vocabulary"):
            ex.run(bad)
        after = ex.run(RoundPlan(Layout((8,), (((80, 1),),)), np.zeros(1), 4, {80: 0}, (), np.array([4]),
                                 np.ones(1, bool)))
    finally:
        ex.shutdown()
    for g, w in zip(got, want):
        assert g.ready_s.tolist() == w.ready_s.tolist()
        assert (g.logits.argmax(-1) == w.logits.argmax(-1)).all()
    assert after.logits.shape == (1, cfg.model.vocab_size)


class _Plant:
    """Unpickling this runs code: it creates a file (what an attacker's payload would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_switch_trusts_no_link_without_the_runs_secret(ray_cluster, tmp_path):
    """A connection to the switch's port without the secret, sending a payload whose unpickling
    would create a file: nothing runs, the connection is refused and counted, rounds go on."""
    import pickle
    import socket
    import struct
    import time

    import ray

    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="off")
    ex = make_executor(cfg, "ray")
    try:
        host, port = ray.get(ex.fabric.address.remote())
        assert host == "127.0.0.1"  # one node: the switch listens on loopback only
        planted = tmp_path / "pwned"
        blob = pickle.dumps(("device", 0, _Plant(str(planted))))
        for payload in (struct.pack("<Q", len(blob)) + blob, blob, b"\x00" * 64):
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(payload)
                s.settimeout(10)
                try:
                    while s.recv(4096):  # the switch closes the connection
                        pass
                except (ConnectionError, socket.timeout):
                    pass
        deadline = time.monotonic() + 60
        while ray.get(ex.fabric.refused.remote()) < 3:
            assert time.monotonic() < deadline, "the switch did not refuse the connections"
            time.sleep(0.1)
        assert not planted.exists()
        out = ex.run(RoundPlan(Layout((0,), (((1, 3),),)), np.zeros(1), 0, {1: 0}))
        assert out.ready_s[0] > 0  # the round still runs on the authenticated links
    finally:
        ex.shutdown()


def test_the_local_ray_runs_its_workers_at_normal_priority(ray_cluster):
    """Ray's default niceness of 15 would let any busy process on the machine starve the emulated
    devices (seen: a test took minutes beside two CPU-bound loops); the local Ray runs them at 0."""
    import os

    @ray_cluster.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray_cluster.get(niceness.remote(), timeout=60) == os.nice(0)
