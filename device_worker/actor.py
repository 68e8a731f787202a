"""The Ray actor of a CENT device: a thin wrapper of `DeviceWorker`.

Rounds arrive on the device's authenticated link to the switch (`device_worker.port`, on a
thread); Ray calls are for control: readiness, stats.
"""
from __future__ import annotations

import threading

import ray

from cent_serve.config import CentConfig
from cent_serve.timing.clock import warm
from device_worker.port import serve
from device_worker.worker import DeviceWorker
from fabric.link import Link


@ray.remote(num_cpus=0)
class DeviceActor:
    def __init__(self, cfg: CentConfig, device_id: int, switch_address: tuple[str, int], secret: bytes) -> None:
        warm()  # compile or load the clock kernels now, not in the first round
        self.worker = DeviceWorker(cfg, device_id)
        self.lock = threading.Lock()  # the link's rounds and the Ray calls share the worker
        self.link = Link.connect(tuple(switch_address), {"role": "device", "device_id": device_id}, secret)
        threading.Thread(target=serve, args=(self.worker, self.link, self.lock), daemon=True,
                         name=f"device{device_id}-port").start()

    def ready(self) -> int:
        return self.worker.device_id

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict:
        with self.lock:
            return self.worker.stats()
