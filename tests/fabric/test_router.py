"""The switch's Router over real links, with the devices on threads instead of Ray actors:
the same tokens and simulated times as the local executor, and errors come back cleanly."""
from __future__ import annotations

import socket
import threading

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import MicroBatch, SeqStep, Wave
from device_worker.port import serve
from device_worker.worker import DeviceWorker
from fabric.link import Link
from fabric.router import Router
from fabric.switch import Fabric


class ThreadedSwitch:
    """An executor whose devices serve their links on threads of this process."""

    def __init__(self, cfg: CentConfig) -> None:
        local = LocalExecutor(cfg)  # for its timer, units and one load of the weights
        self.timer, self.units = local.timer, local.units
        self.router = Router(Fabric(cfg), [u.device_ids for u in self.units])
        for d, worker in local.workers.items():
            a, b = socket.socketpair()
            self.router.attach(d, Link(a))
            threading.Thread(target=serve, args=(worker, Link(b), threading.Lock()), daemon=True).start()
        a, b = socket.socketpair()
        self.link = Link(a)
        threading.Thread(target=self.router.serve_host, args=(Link(b),), daemon=True).start()

    def execute(self, mbs: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()) -> list[MicroBatch]:
        self.link.send(("round", Wave.from_micro_batches(mbs), free_seq_ids))
        kind, payload = self.link.recv(60.0)
        if kind == "error":
            raise payload
        return payload.to_micro_batches()


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


def test_a_device_error_reaches_the_host_and_the_links_stay_in_step():
    sw = ThreadedSwitch(_cfg(8, 2, 4))
    bad = [MicroBatch(0, [SeqStep(0, 0, 2, [1, 10_000])], 0.0)]  # id outside the vocabulary
    with pytest.raises(ValueError, match="vocabulary"):
        sw.execute(bad)
    out = sw.execute([MicroBatch(1, [SeqStep(1, 0, 2, [1, 5])], 0.0)])
    assert out[0].logits.shape == (1, 259) and out[0].ready_s > 0
