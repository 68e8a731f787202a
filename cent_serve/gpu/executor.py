"""GPUs behind the executor interface: a replica's rounds timed by `GpuTimer`.

A round's lanes are the pipeline's micro-batches (one lane with pp = 1, vLLM's single batch): each
lane goes through the stages in turn, a stage starting when the lane's input exists and the
stage has finished the lane before it. The executor keeps every sequence's cached tokens (set
from `RoundPlan.new_seqs`, dropped with `finished`), as the devices do. With full numerics the
reference model computes the logits, one KV cache per sequence, so GPU runs give the same tokens
as CENT runs of the same model.
"""
from __future__ import annotations

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.executor.base import Done, Executor
from cent_serve.gpu.timing import GpuTimer
from cent_serve.messages import RoundOutput, RoundPlan


class GpuExecutor(Executor):
    """One data-parallel replica of `cfg.gpu` GPUs, in this process."""

    def __init__(self, cfg: CentConfig, weights=None) -> None:
        self.cfg = cfg
        self.timer = GpuTimer(cfg)
        self.timer.check_fits()
        self.cached: dict[int, int] = {}
        self.stage_free = np.zeros(self.timer.pp)
        self.busy_s = np.zeros(self.timer.pp)
        self.energy_j = np.zeros(self.timer.pp)
        self.tokens = 0
        self.steps = 0
        self.allreduce_bytes = 0.0
        self.model = None
        self.caches: dict[int, object] = {}
        if cfg.resolved_numerics == "full":
            from cent_serve.model.reference import LlamaModel
            self.model = LlamaModel(cfg.model, weights)

    def submit(self, plan: RoundPlan) -> Done:
        for sid in plan.finished:
            self.cached.pop(sid, None)
            self.caches.pop(sid, None)
        for sid, pos in plan.new_seqs.items():
            self.cached[sid] = pos
            if self.model is not None:
                self.caches[sid] = self.model.new_cache()
        t = self.timer
        lay = plan.layout
        ready = plan.ready_s.copy()
        energy = np.zeros(len(lay.seq_ids))
        k = 0
        for li, lane in enumerate(lay.seqs):
            new = np.array([n for _, n in lane], dtype=np.float64)
            cached = np.array([self.cached[sid] for sid, _ in lane], dtype=np.float64)
            logit_rows = len(lane)  # the LM head at each sequence's last position, mid-prompt too (vLLM's)
            clock = ready[li]
            lane_j = 0.0
            for s in range(t.pp):
                start = max(clock, self.stage_free[s])
                dur = float(t.step_s(s, new, cached, logit_rows))
                self.stage_free[s] = clock = start + dur
                self.busy_s[s] += dur
                j = t.step_energy_j(dur)
                self.energy_j[s] += j
                lane_j += j
                if s < t.pp - 1:
                    clock += t.hop_s(int(new.sum()))
            ready[li] = clock
            energy[k:k + len(lane)] = lane_j * new / max(new.sum(), 1.0)
            for sid, n in lane:
                self.cached[sid] += n
            self.tokens += int(new.sum())
            if t.tp > 1:
                self.allreduce_bytes += 2 * self.cfg.model.num_layers * new.sum() * self.cfg.model.hidden_size * 2
            k += len(lane)
        self.steps += 1
        return Done(RoundOutput(ready, energy, logits=self._logits(plan), sampled_s=ready.copy()))

    def _logits(self, plan: RoundPlan):
        if self.model is None or plan.token_ids is None:
            return None
        out, off = [], 0
        for k, (sid, n) in enumerate((s for lane in plan.layout.seqs for s in lane)):
            logits = self.model.forward(plan.token_ids[off:off + n], self.caches[sid])
            off += n
            want = int(plan.wants_logits[k]) if plan.wants_logits is not None else 1
            if want:
                out.append(logits[-want:])
        vocab = self.cfg.model.vocab_size
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, vocab), np.float32)

    def stats(self) -> dict:
        t = self.timer
        devices = []
        for s in range(t.pp):
            for r in range(t.tp):
                devices.append(dict(device_id=s * t.tp + r, stages=[s], rank=r, kind=t.kind.name,
                                    busy_s=dict(gpu=float(self.busy_s[s])), energy_j=float(self.energy_j[s] / t.tp),
                                    tokens=self.tokens, calls=self.steps, kv_usage=None,
                                    clock_s=float(self.stage_free[s])))
        return dict(devices=devices, fabric=dict(wire_bytes=int(self.allreduce_bytes), framed_bytes=0, ports={}))
