"""Devices as Ray actors, the switch as a fabric actor.

A round is sent as one chain of calls: each unit's devices get the previous
hop's ObjectRef, the fabric actor moves activations to the next unit, and
the driver waits once, on the last unit's output. Activations go device ->
fabric -> device through Ray's object store, never through the driver.
"""
from __future__ import annotations

import ray

from cent_serve.config import CentConfig
from cent_serve.executor.plan import execution_units
from cent_serve.messages import MicroBatch
from cent_serve.timing import SystemTimer

ROUND_TIMEOUT_S = 300.0
"""Longest wait for one round's last output."""
STARTUP_TIMEOUT_S = 300.0
"""Longest wait for every actor to come up (weights loaded)."""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), or start a quiet local Ray if none is running."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


class RayExecutor:
    """Same contract as `LocalExecutor`; one Ray actor per device used."""

    def __init__(self, cfg: CentConfig, address: str | None = None) -> None:
        from device_worker.actor import DeviceActor
        from fabric.actor import FabricActor

        ensure_ray(address or cfg.server.ray_address)
        self.cfg = cfg
        self.timer = SystemTimer.from_config(cfg)
        self.units = execution_units(self.timer.mapping)
        self.fabric = FabricActor.remote(cfg)
        self.actors = {}
        for unit in self.units:
            for d in unit.device_ids:
                self.actors[d] = DeviceActor.options(name=None).remote(cfg, d, self.fabric, unit.device_ids)
        ray.get([a.ready.remote() for a in self.actors.values()] + [self.fabric.ready.remote()],
                timeout=STARTUP_TIMEOUT_S)

    def submit(self, mbs: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()):
        """Send a whole round without waiting; returns the ref of the last unit's output."""
        x = mbs
        for k, unit in enumerate(self.units):
            refs = [self.actors[d].run.remote(x, free_seq_ids) for d in unit.device_ids]
            x = refs[0]
            if k + 1 < len(self.units):
                x = self.fabric.transfer.remote(unit.device_ids, self.units[k + 1].device_ids, x)
        return x

    def execute(self, mbs: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()) -> list[MicroBatch]:
        return ray.get(self.submit(mbs, free_seq_ids), timeout=ROUND_TIMEOUT_S)

    def free(self, seq_ids: tuple[int, ...]) -> None:
        ray.get([a.free.remote(seq_ids) for a in self.actors.values()], timeout=ROUND_TIMEOUT_S)

    def stats(self) -> dict:
        devices = ray.get([a.stats.remote() for a in self.actors.values()], timeout=ROUND_TIMEOUT_S)
        return dict(devices=devices, fabric=ray.get(self.fabric.stats.remote(), timeout=ROUND_TIMEOUT_S))

    def shutdown(self) -> None:
        for a in [*self.actors.values(), self.fabric]:
            ray.kill(a)
        self.actors = {}
