"""A CENT device: its stages' weight shard, a paged KV cache, busy-until clocks, counters.

Plain Python (the Ray actor in `actor.py` only wraps it). One call,
`run(micro_batches)`, pushes every micro-batch of a round through all the
stages resident on this device and returns them stamped with `ready_s`.

Two passes, kept apart so timing-only and full numerics charge identical time:

1. **Time** (always): micro-batches in order of `ready_s`; each block of each
   stage starts at max(its channel group's busy-until clock, the input's
   ready_s) and lasts sum over its tokens of PIM(L) + ACC(L) x tb (+ the
   in-block tensor-parallel exchanges); the block's output hop (tokens x D
   over the switch) follows it. Blocks resident on one device run in
   lockstep in CENT, sharing the DMA (the tb factors of the PIM formulas)
   and the near-memory accelerator (ACC x tb), as the artifact accounts
   for it. The accelerator clock records that shared work; the DMA clock
   serializes the on-device hops from one block to the next.
2. **Numerics** (`numerics="full"`): the reference math on this device's
   shard of the weights (`cent_serve.sharding`). With tp > 1 the block
   yields at its four exchange points: `run` is a generator that yields
   `("all_gather", tag, local_slice)` and expects the concatenation back;
   the executor routes these through the fabric.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Generator

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.messages import MicroBatch
from cent_serve.model.layers import rms_norm
from cent_serve.sharding import LayerShard, ShardKV, shard_layer, shard_vocab
from cent_serve.timing import SystemTimer
from cent_serve.timing.energy import block_energy_j, head_energy_j
from cent_serve.timing.mapping import Stage, device_kv_bytes_per_token, device_weight_bytes
from device_worker.kv_cache import PagedKVCache

Exchange = tuple[str, str, np.ndarray]


@dataclass
class DeviceCounters:
    """What a device reports: busy seconds per resource, energy, traffic, work done."""

    busy_s: dict[str, float] = field(default_factory=dict)
    energy_j: float = 0.0
    block_steps: int = 0
    tokens: int = 0
    hop_bytes_local: int = 0
    calls: int = 0


class DeviceWorker:
    """One emulated CENT device (see the module docstring for the contract of `run`)."""

    def __init__(self, cfg: CentConfig, device_id: int, timer: SystemTimer | None = None,
                 weights=None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.timer = timer or SystemTimer.from_config(cfg)
        mp = self.timer.mapping
        self.stages: list[Stage] = mp.stages_on_device(device_id)
        assert self.stages, f"device {device_id} holds no stage of {mp.describe()}"
        self.tp = mp.tp
        self.rank = self.stages[0].device_ids.index(device_id)
        self.has_embedding = self.stages[0].index == 0
        self.has_lm_head = self.stages[-1].index == mp.pp - 1
        self.last_block = self.stages[-1].blocks[-1]
        self.numerics = cfg.resolved_numerics == "full"
        # busy-until clocks in simulated seconds
        self.group_free_s = {s.channel_group: 0.0 for s in self.stages}
        self.embed_free_s = 0.0
        self.head_free_s = 0.0
        self.acc_free_s = 0.0
        self.dma_free_s = 0.0
        self.counters = DeviceCounters()
        self.busy = self.counters.busy_s  # resource -> busy simulated seconds
        for name in ("embedding", "lm_head", "accelerator", "dma", *(f"group{g}" for g in self.group_free_s)):
            self.busy[name] = 0.0
        self._group_names = {g: f"group{g}" for g in self.group_free_s}
        self._cost_cache: dict[int, tuple[float, float, float]] = {}
        self._head_energy_j = head_energy_j(self.timer) / self.tp
        m = cfg.model
        self.weight_bytes = device_weight_bytes(m, mp, device_id)
        self.kv = PagedKVCache(capacity_bytes=cfg.device.capacity_bytes - self.weight_bytes,
                               bytes_per_token=device_kv_bytes_per_token(m, mp, device_id))
        self.shards: dict[int, LayerShard] = {}
        self.seq_kv: dict[int, ShardKV] = {}
        if self.numerics:
            self._load_shard(weights)

    # ------------------------------------------------------------------ weights

    def _load_shard(self, weights) -> None:
        """Slice this device's layers (and embedding / LM head) out of the model's weights."""
        from cent_serve.model.weights import load_weights

        w = weights if weights is not None else load_weights(self.cfg.model)
        for stage in self.stages:
            for b in stage.blocks:
                # copies, so the full model can be dropped once every device has its shard
                sh = shard_layer(self.cfg.model, w.layers[b], self.rank, self.tp)
                self.shards[b] = replace(sh, **{k: np.ascontiguousarray(getattr(sh, k)) for k in (
                    "input_norm", "wq", "wk", "wv", "wo", "post_norm", "w_gate", "w_up", "w_down")})
        self.embed = np.ascontiguousarray(w.embed) if self.has_embedding else None
        if self.has_lm_head:
            self.final_norm = np.ascontiguousarray(w.final_norm)
            self.lm_head = np.ascontiguousarray(shard_vocab(w.lm_head, self.rank, self.tp))
        self._local_layer = {b: i for i, b in enumerate(sorted(self.shards))}

    # ------------------------------------------------------------------ the call

    def run(self, micro_batches: list[MicroBatch], free_seq_ids: tuple[int, ...] = ()
            ) -> Generator[Exchange, np.ndarray, list[MicroBatch]]:
        """Run every micro-batch through this device's stages; see the module docstring."""
        self.counters.calls += 1
        for sid in free_seq_ids:
            self.free(sid)
        for mb in micro_batches:
            for s in mb.seqs:
                self.kv.grow(s.seq_id, s.end)
        outs = [self._charge_time(mb) for mb in sorted(micro_batches, key=lambda b: (b.ready_s, b.mb_id))]
        outs.sort(key=lambda b: b.mb_id)
        if self.numerics:
            yield from self._compute(outs)
        return outs

    def free(self, seq_id: int) -> None:
        """Forget a finished or aborted sequence: KV blocks and values, at once."""
        self.kv.free(seq_id)
        self.seq_kv.pop(seq_id, None)

    # ------------------------------------------------------------------ time

    def _token_cost(self, context: int) -> tuple[float, float, float]:
        """(PIM s, own accelerator s, energy J on this device) of one block for one token."""
        hit = self._cost_cache.get(context)
        if hit is None:
            t = self.timer
            hit = self._cost_cache[context] = (t.block_pim_s(context), t.block_acc_s(context),
                                               block_energy_j(t, context) / self.tp)
        return hit

    def _charge_time(self, mb: MicroBatch) -> MicroBatch:
        timer, tb, c = self.timer, self.timer.mapping.tb, self.counters
        n_tok = sum(s.num_tokens for s in mb.seqs)
        pim = acc = energy = 0.0
        for s in mb.seqs:
            for L in range(s.start + 1, s.end + 1):
                p, a, e = self._token_cost(L)
                pim, acc, energy = pim + p, acc + a, energy + e
        cost = pim + acc * tb + timer.collectives_s(n_tok)
        hop = timer.hop_s(n_tok)
        t = mb.ready_s
        if self.has_embedding:
            start = max(self.embed_free_s, t)
            t = self.embed_free_s = start + timer.embed_lookup_s * n_tok
            self.busy["embedding"] += t - start
        blocks = 0
        for stage in self.stages:
            g = stage.channel_group
            free = self.group_free_s[g]
            for b in stage.blocks:
                start = free if free > t else t
                free = start + cost
                # shared accelerator: its own work, serialized (lockstep folds the waiting into cost)
                self.acc_free_s = max(self.acc_free_s, start + pim) + acc
                if b == self.last_block and not self.has_lm_head:
                    t = free  # the fabric carries this hop to the next device
                else:  # next block (or the LM head) on this device: the DMA engine moves it
                    start = free if free > self.dma_free_s else self.dma_free_s
                    t = self.dma_free_s = start + hop
                    self.busy["dma"] += hop
                    c.hop_bytes_local += 2 * n_tok * self.cfg.model.hidden_size
            self.group_free_s[g] = free
            self.busy[self._group_names[g]] += cost * len(stage.blocks)
            blocks += len(stage.blocks)
        self.busy["accelerator"] += acc * blocks
        c.energy_j += energy * blocks
        c.block_steps += blocks
        if self.has_lm_head:
            n_heads = len(mb.seqs)
            start = max(self.head_free_s, t)
            t = self.head_free_s = start + timer.lm_head_s * n_heads
            self.busy["lm_head"] += t - start
            c.energy_j += self._head_energy_j * n_heads
        c.tokens += n_tok
        return MicroBatch(mb_id=mb.mb_id, seqs=mb.seqs, ready_s=t, hidden=mb.hidden)

    # ------------------------------------------------------------------ numerics

    def _gather(self, tag: str, local: np.ndarray) -> Generator[Exchange, np.ndarray, np.ndarray]:
        if self.tp == 1:
            return local
        full = yield ("all_gather", tag, local)
        return full

    def _compute(self, mbs: list[MicroBatch]) -> Generator[Exchange, np.ndarray, None]:
        """Numerics of all micro-batches together, block by block (one exchange per point)."""
        m = self.cfg.model
        seqs = [s for mb in mbs for s in mb.seqs]
        if self.has_embedding:
            ids = np.concatenate([np.asarray(s.token_ids, dtype=np.int64) for s in seqs])
            if ids.size and (ids.min() < 0 or ids.max() >= m.vocab_size):
                raise ValueError(f"token id outside the vocabulary [0, {m.vocab_size})")
            x = self.embed[ids].astype(np.float32)  # (tokens, D)
        else:
            x = np.concatenate([mb.hidden for mb in mbs])  # (tokens, D)
        for sid in {s.seq_id for s in seqs}:
            if sid not in self.seq_kv:
                any_shard = next(iter(self.shards.values()))
                self.seq_kv[sid] = ShardKV(len(self.shards), any_shard.num_kv_heads, m.head_dim)
        bounds = np.cumsum([0] + [s.num_tokens for s in seqs])
        for stage in self.stages:
            for b in stage.blocks:
                x = yield from self._block(b, x, seqs, bounds)
        if self.has_lm_head:
            last = [bounds[i + 1] - 1 for i, s in enumerate(seqs)]
            h = rms_norm(x[last], self.final_norm, m.rms_norm_eps)
            logits = yield from self._gather("logits", h @ self.lm_head.T)  # (seqs, vocab)
        for mb in mbs:
            n = len(mb.seqs)
            if self.has_lm_head:
                mb.logits, logits = logits[:n], logits[n:]
                mb.hidden = None
            else:
                k = mb.num_tokens
                mb.hidden, x = x[:k], x[k:]

    def _block(self, b: int, x: np.ndarray, seqs, bounds) -> Generator[Exchange, np.ndarray, np.ndarray]:
        """One block for all sequences: shared projections, per-sequence attention."""
        from cent_serve.model.layers import silu
        from cent_serve.sharding import shard_attention

        cfg, sh, layer = self.cfg.model, self.shards[b], self._local_layer[b]
        h = rms_norm(x, sh.input_norm, cfg.rms_norm_eps)
        parts = [shard_attention(cfg, sh, h[bounds[i]:bounds[i + 1]], s.start, self.seq_kv[s.seq_id], layer)
                 for i, s in enumerate(seqs)]
        attn = yield from self._gather("attn", np.concatenate(parts))
        o = yield from self._gather("o_proj", attn @ sh.wo.T)
        x = x + o
        h = rms_norm(x, sh.post_norm, cfg.rms_norm_eps)
        act = yield from self._gather("act", silu(h @ sh.w_gate.T) * (h @ sh.w_up.T))
        down = yield from self._gather("down", act @ sh.w_down.T)
        return x + down

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict:
        c = self.counters
        return dict(device_id=self.device_id, stages=[s.index for s in self.stages], rank=self.rank,
                    busy_s=dict(c.busy_s), energy_j=c.energy_j, block_steps=c.block_steps, tokens=c.tokens,
                    calls=c.calls, hop_bytes_local=c.hop_bytes_local, kv_usage=self.kv.usage,
                    kv_blocks=self.kv.num_blocks, weight_bytes=self.weight_bytes,
                    clock_s=max([*self.group_free_s.values(), self.embed_free_s, self.head_free_s]))
