"""Every device and the switch in this process: the same classes as on Ray."""
from __future__ import annotations

from cent_serve.config import CentConfig
from cent_serve.executor.plan import drive_lockstep, execution_units
from cent_serve.messages import MicroBatch, Wave
from cent_serve.timing import SystemTimer
from device_worker.worker import DeviceWorker
from fabric.switch import Fabric


class LocalExecutor:
    """Runs rounds through in-process `DeviceWorker`s and one `Fabric`."""

    def __init__(self, cfg: CentConfig, weights=None) -> None:
        self.cfg = cfg
        self.timer = SystemTimer.from_config(cfg)
        self.units = execution_units(self.timer.mapping)
        if cfg.resolved_numerics == "full" and weights is None:
            from cent_serve.model.weights import load_weights
            weights = load_weights(cfg.model)
        self.workers = {d: DeviceWorker(cfg, d, self.timer, weights)
                        for u in self.units for d in u.device_ids}
        self.fabric = Fabric(cfg)

    def execute(self, mbs: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()) -> list[MicroBatch]:
        """One round: every micro-batch through every stage; returns the last stage's outputs."""
        out = self.execute_wave(Wave.from_micro_batches(mbs), free_seq_ids)
        return out.to_micro_batches({mb.mb_id: mb.seqs for mb in mbs})

    def execute_wave(self, wave: Wave, free_seq_ids: tuple[int, ...] = ()) -> Wave:
        """`execute` on the columnar form (what the devices and the fabric compute on)."""
        x = wave
        for k, unit in enumerate(self.units):
            gens = [self.workers[d].run_wave(x, free_seq_ids) for d in unit.device_ids]
            outs = drive_lockstep(gens, self.fabric.exchange)
            assert all(o.ready_s == outs[0].ready_s for o in outs), "tensor-parallel ranks disagree on time"
            x = outs[0]
            if k + 1 < len(self.units):
                x = self.fabric.transfer_wave(unit.device_ids, self.units[k + 1].device_ids, x)
        return x

    def free(self, seq_ids: tuple[int, ...]) -> None:
        for w in self.workers.values():
            for sid in seq_ids:
                w.free(sid)

    def stats(self) -> dict:
        return dict(devices=[w.stats() for w in self.workers.values()], fabric=self.fabric.stats())

    def shutdown(self) -> None:
        pass
