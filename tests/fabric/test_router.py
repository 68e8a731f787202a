"""The switch's Router over real links, with the devices on threads instead of Ray actors:
the same tokens and simulated times as the local executor, and errors come back cleanly."""
from __future__ import annotations

import itertools
import socket
import threading

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.base import Executor, done
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import Layout, RoundOutput, RoundPlan
from device_worker.port import serve
from fabric.link import Link, remote_error
from fabric.router import Router
from fabric.switch import Fabric

SECRET = b"s" * 32


def _pair() -> tuple[Link, Link]:
    """Two authenticated ends of a socket pair (the handshake of a real link)."""
    a, b = socket.socketpair()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("server", Link.accept(b, SECRET)))
    t.start()
    client = Link.connect_socket(a, {"role": "test"}, SECRET)
    t.join()
    return client, box["server"][0]


class ThreadedSwitch(Executor):
    """An executor whose devices serve their links on threads of this process."""

    def __init__(self, cfg: CentConfig) -> None:
        local = LocalExecutor(cfg)  # for its timer, units and one load of the weights
        self.timer, self.units = local.timer, local.units
        self.router = Router(Fabric(cfg), [u.device_ids for u in self.units], self.timer)
        for d, worker in local.workers.items():
            worker.seqs = type(worker.seqs)(cfg.scheduler.kv_block_tokens)  # each device its own, as an actor
            device_end, switch_end = _pair()
            self.router.attach(d, switch_end)
            threading.Thread(target=serve, args=(worker, device_end, threading.Lock()), daemon=True).start()
        self.link, host_end = _pair()
        threading.Thread(target=self.router.serve_host, args=(host_end,), daemon=True).start()
        self._last = None

    def submit(self, plan: RoundPlan):
        self.link.send(plan.to_wire(self._last))
        self._last = plan.layout
        msg = self.link.recv(60.0)
        if msg["kind"] == "error":
            raise remote_error(msg["error"])
        return done(RoundOutput.from_wire(msg))

    def stats(self) -> dict:
        return {"devices": [], "fabric": {}}


def _cfg(devices: int, pp: int, tp: int) -> CentConfig:
    return CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (8, 2, 4)])
def test_links_equal_the_local_executor(devices, pp, tp):
    cfg = _cfg(devices, pp, tp)
    prompts = [[1, 9, 8, 7], [1, 50], [3, 4, 5]]
    want = generate_batch(LocalExecutor(cfg), prompts, 6, prefill_chunk=2)
    got = generate_batch(ThreadedSwitch(cfg), prompts, 6, prefill_chunk=2)
    assert got.token_ids == want.token_ids
    assert got.token_times_s == want.token_times_s  # bit-identical simulated time


def _plan(lane: int, seq: int, ids: list[int], round_id: int) -> RoundPlan:
    return RoundPlan(Layout((lane,), (((seq, len(ids)),),)), np.zeros(1), round_id, {seq: 0}, (),
                     np.array(ids, dtype=np.int64), np.array([True]))


def test_a_device_error_reaches_the_host_and_the_links_stay_in_step():
    sw = ThreadedSwitch(_cfg(8, 2, 4))
    rounds = itertools.count()
    with pytest.raises(ValueError, match="vocabulary"):
        sw.run(_plan(0, 0, [1, 10_000], next(rounds)))  # id outside the vocabulary
    out = sw.run(_plan(1, 1, [1, 5], next(rounds)))
    assert out.logits.shape == (1, 259) and out.ready_s[0] > 0
