"""Every device and the switch in this process: the same classes as on Ray."""
from __future__ import annotations

from cent_serve.config import CentConfig
from cent_serve.executor.base import Done, Executor, done
from cent_serve.messages import RoundPlan
from cent_serve.timing import SystemTimer
from device_worker.worker import DeviceWorker
from fabric.rounds import Lockstep, Rendezvous, execution_units, run_round
from fabric.switch import Fabric


class LocalExecutor(Executor):
    """Runs rounds through in-process `DeviceWorker`s and one `Fabric`; a round is done when
    `submit` returns."""

    def __init__(self, cfg: CentConfig, weights=None) -> None:
        self.cfg = cfg
        self.timer = SystemTimer.from_config(cfg)
        self.units = execution_units(self.timer.mapping)
        if cfg.resolved_numerics == "full" and weights is None:
            from cent_serve.model.weights import load_weights
            weights = load_weights(cfg.model)
        self.workers = {d: DeviceWorker(cfg, d, self.timer, weights) for u in self.units for d in u.device_ids}
        self.fabric = Fabric(cfg)
        self.relays = [Rendezvous(self.fabric, len(u.device_ids)) for u in self.units]
        locksteps = [Lockstep([self.workers[d] for d in u.device_ids]) for u in self.units]
        self.locksteps = locksteps if any(ls.on for ls in locksteps) else None
        """Each unit's `Lockstep`; None when no unit has twin ranks (no tensor parallelism, or numerics)."""

    def submit(self, plan: RoundPlan) -> Done:
        return done(run_round(plan, self.units, self.workers, self.fabric, self.timer, self.relays,
                              self.locksteps))

    def stats(self) -> dict:
        return dict(devices=[w.stats() for w in self.workers.values()], fabric=self.fabric.stats())
