"""Every device and the switch in this process: the same classes as on Ray."""
from __future__ import annotations

from cent_serve.config import CentConfig
from cent_serve.executor.base import Done, Executor, sum_terms
from cent_serve.messages import RoundPlan
from cent_serve.timing import SystemTimer
from device_worker.worker import DeviceWorker
from fabric.rounds import Lockstep, Rendezvous, execution_units, is_tick, run_round, tick_round
from fabric.switch import Fabric


class LocalExecutor(Executor):
    """Runs rounds through in-process `DeviceWorker`s and one `Fabric`; a round is done when
    `submit` returns."""

    def __init__(self, cfg: CentConfig, weights=None) -> None:
        self.cfg = cfg
        self.timer = SystemTimer.from_config(cfg)
        self.units = execution_units(self.timer.mapping)
        if cfg.resolved_numerics == "full" and weights is None:
            from cent_serve.model.hf_checkpoint import load_weights
            weights = load_weights(cfg.model)
        self.workers = {d: DeviceWorker(cfg, d, self.timer, weights) for u in self.units for d in u.device_ids}
        self.fabric = Fabric(cfg)
        self.relays = [Rendezvous(self.fabric, len(u.device_ids)) for u in self.units]
        locksteps = [Lockstep([self.workers[d] for d in u.device_ids]) for u in self.units]
        self.locksteps = locksteps if any(ls.on for ls in locksteps) else None
        """Each unit's `Lockstep`; None when no unit has twin ranks (no tensor parallelism, or numerics)."""
        self.chain = None
        """Timing-only units of one device each (a pure pipeline): their devices in stage order, each
        routed to the next, so a tick runs as on Ray, one compiled call per device (`tick_round`)."""
        if cfg.resolved_numerics != "full" and all(len(u.device_ids) == 1 for u in self.units):
            self.chain = [self.workers[u.device_ids[0]] for u in self.units]
            port = self.fabric.port
            for w, nxt in zip(self.chain, self.chain[1:]):
                w.clock.set_route(w.device_id, (nxt.device_id,), port.latency_s, port.flit_bytes)

    def submit(self, plan: RoundPlan) -> Done:
        if self.chain is not None and is_tick(plan):
            out = tick_round(plan, self.chain, self.fabric, self.timer, self.relays)
            if out is not None:
                return Done(out)
        return Done(run_round(plan, self.units, self.workers, self.fabric, self.timer, self.relays,
                              self.locksteps))

    def energy_terms_j(self) -> dict[str, float]:
        return sum_terms(w.energy_terms_j() for w in self.workers.values())

    def stats(self) -> dict:
        return dict(devices=[w.stats() for w in self.workers.values()], fabric=self.fabric.stats())
