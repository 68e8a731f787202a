"""The Ray actor of a CENT device: a thin wrapper of `DeviceWorker`.

At a tensor-parallel exchange point the worker's generator yields a slice;
the actor hands it to the fabric actor and blocks (with a named timeout)
until every rank of the stage has contributed.
"""
from __future__ import annotations

import ray

from cent_serve.config import CentConfig
from cent_serve.messages import MicroBatch
from device_worker.worker import DeviceWorker

EXCHANGE_TIMEOUT_S = 120.0
"""Longest wait for the other ranks of a tensor-parallel exchange."""


@ray.remote(num_cpus=0)
class DeviceActor:
    def __init__(self, cfg: CentConfig, device_id: int, fabric, group: tuple[int, ...]) -> None:
        self.worker = DeviceWorker(cfg, device_id)
        self.fabric = fabric
        self.group = group
        self.exchanges = 0

    def ready(self) -> int:
        return self.worker.device_id

    def run(self, mbs: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()) -> list[MicroBatch]:
        gen = self.worker.run(mbs, free_seq_ids)
        try:
            msg = next(gen)
            while True:
                _, tag, local = msg
                self.exchanges += 1
                ref = self.fabric.all_gather.remote(self.group, self.exchanges, self.worker.rank, local)
                msg = gen.send(ray.get(ref, timeout=EXCHANGE_TIMEOUT_S))
        except StopIteration as stop:
            return stop.value

    def free(self, seq_ids: tuple[int, ...]) -> None:
        for sid in seq_ids:
            self.worker.free(sid)

    def stats(self) -> dict:
        return self.worker.stats()
