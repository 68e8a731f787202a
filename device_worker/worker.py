"""A CENT device: its stages' weight shard, a paged KV cache, busy-until clocks, counters.

Plain Python (the Ray actor in `actor.py` only wraps it). One call,
`run_wave(wave)` (or `run(micro_batches)`), pushes every micro-batch of a round
through all the stages resident on this device and returns them stamped with
`ready_s`.

Two passes, kept apart so timing-only and full numerics charge identical time:

1. **Time** (always): micro-batches in order of `ready_s`; each block of each
   stage starts at max(its channel group's busy-until clock, the input's
   ready_s) and lasts sum over its tokens of PIM(L) + ACC(L) x tb (+ the
   in-block tensor-parallel exchanges); the block's output hop (tokens x D
   over the switch) follows it. Blocks resident on one device run in
   lockstep in CENT, sharing the DMA (the tb factors of the PIM formulas)
   and the near-memory accelerator (ACC x tb), as the artifact accounts
   for it. The accelerator and DMA clocks record that shared work (the DMA
   engine moves each block's output to the next block on the device); they
   do not delay the data, because the lockstep cost already includes it and
   micro-batches are charged one after the other through all blocks.
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
from cent_serve.messages import MicroBatch, Wave
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
        self._cost_cache = self.timer.block_costs  # shared: every device of a mapping costs a context alike
        assert len(self.group_free_s) == len(self.stages), f"stages share a channel group: {self.stages}"
        # per stage: its channel group and, per block, whether the block's output leaves the device
        self._block_plan = [(s.channel_group, tuple(b == self.last_block and not self.has_lm_head
                                                    for b in s.blocks)) for s in self.stages]
        self._groups = [(j, flags, len(flags)) for j, (_, flags) in enumerate(self._block_plan)]
        self._blocks_per_call = sum(len(s.blocks) for s in self.stages)
        self._local_hops = sum(not x for _, flags in self._block_plan for x in flags)
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
        """`run_wave` on MicroBatches (returned with the caller's own SeqStep lists)."""
        out = yield from self.run_wave(Wave.from_micro_batches(micro_batches), free_seq_ids)
        return out.to_micro_batches({mb.mb_id: mb.seqs for mb in micro_batches})

    def run_wave(self, wave: Wave, free_seq_ids: tuple[int, ...] = ()
                 ) -> Generator[Exchange, np.ndarray, Wave]:
        """Run every micro-batch through this device's stages; see the module docstring.
        Returns the wave in mb_id order, stamped with the time each left this device."""
        self.counters.calls += 1
        for sid in free_seq_ids:
            self.free(sid)
        grow, held = self.kv.grow, self.kv.capacity
        for seqs in wave.seqs:
            for s in seqs:
                if s[1] + s[2] > held.get(s[0], 0):  # crosses into a new block (or a new sequence)
                    grow(s[0], s[1] + s[2])
        done_s = self._charge_time(wave)
        order = wave.id_order()
        out = wave.take(order, done_s, hidden=None if wave.hidden is None else [wave.hidden[i] for i in order])
        if self.numerics:
            yield from self._compute(out)
        return out

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

    def _column_costs(self, w: Wave) -> list[tuple]:
        """Per column: (PIM s, own accelerator s, energy J of one block, the block's step s,
        block-to-block hop s, tokens, sequences), the same for every device of the mapping."""
        timer, cache, token_cost = self.timer, self._cost_cache, self._token_cost
        tb, coll1, hop1 = timer.mapping.tb, timer.collectives_s(1), timer.hop_s(1)  # cached by the timer
        out = []
        for seqs, n_tok in zip(w.seqs, w.tokens):
            if n_tok == 1 and len(seqs) == 1:  # one sequence, one token: the usual column
                L = seqs[0][1] + 1
                pim, acc, energy = cache.get(L) or token_cost(L)  # == 0.0 + each, bit for bit
                out.append((pim, acc, energy, pim + acc * tb + coll1, hop1, 1, 1))
                continue
            pim = acc = energy = 0.0
            for s in seqs:
                for L in range(s[1] + 1, s[1] + s[2] + 1):
                    p, a, e = cache.get(L) or token_cost(L)
                    pim, acc, energy = pim + p, acc + a, energy + e
            out.append((pim, acc, energy, pim + acc * tb + timer.collectives_s(n_tok), timer.hop_s(n_tok), n_tok,
                        len(seqs)))
        return out

    def _charge_time(self, w: Wave) -> list[float]:
        """Push the wave's columns, in arrival order, through this device's busy-until clocks;
        returns the time each column's output exists (its last block's end, or the LM head's).

        One pass with the clocks in locals: every float operation is the one a per-micro-batch
        version would do, in the same order, so the results are bit for bit the same. The
        columns' costs come with the wave when another device of this process computed them."""
        c, busy = self.counters, self.busy
        embed_s, head_s, head_e = self.timer.embed_lookup_s, self.timer.lm_head_s, self._head_energy_j
        has_embedding, has_head, blocks = self.has_embedding, self.has_lm_head, self._blocks_per_call
        plan = self._block_plan
        groups = self._groups
        gfree = [self.group_free_s[g] for g, _ in plan]
        gbusy = [busy[self._group_names[g]] for g, _ in plan]
        embed_free, head_free, acc_free, dma_free = self.embed_free_s, self.head_free_s, self.acc_free_s, self.dma_free_s
        b_embed, b_head, b_acc, b_dma = busy["embedding"], busy["lm_head"], busy["accelerator"], busy["dma"]
        energy_j, ready = c.energy_j, w.ready_s
        done = [0.0] * len(ready)
        if w.costs is None or w.costs[0] is not self._cost_cache:
            w.costs = (self._cost_cache, self._column_costs(w))
        costs = w.costs[1]
        for i in w.arrival_order():
            pim, acc, energy, cost, hop, n_tok, n_heads = costs[i]
            t = ready[i]
            if has_embedding:
                start = t if t > embed_free else embed_free
                t = embed_free = start + embed_s * n_tok
                b_embed += t - start
            for j, to_fabric, n_blocks in groups:
                free = gfree[j]
                for is_last in to_fabric:
                    start = free if free > t else t
                    free = start + cost
                    # shared accelerator: its own work, serialized (lockstep folds the waiting into cost)
                    x = start + pim
                    acc_free = (x if x > acc_free else acc_free) + acc
                    if is_last:
                        t = free  # the fabric carries this hop to the next device
                    else:  # next block (or the LM head) on this device: the DMA engine moves it
                        t = free + hop
                        # recorded like the accelerator, not a constraint: micro-batches are charged
                        # one after the other through all blocks, so a shared clock would make a later
                        # one wait for an earlier one's last block (lockstep folds DMA waits into cost)
                        dma_free = (free if free > dma_free else dma_free) + hop
                        b_dma += hop
                gfree[j] = free
                gbusy[j] += cost * n_blocks
            b_acc += acc * blocks
            energy_j += energy * blocks
            if has_head:
                start = t if t > head_free else head_free
                t = head_free = start + head_s * n_heads
                b_head += t - start
                energy_j += head_e * n_heads
            done[i] = t
        for (g, _), free, b in zip(plan, gfree, gbusy):
            self.group_free_s[g] = free
            busy[self._group_names[g]] = b
        self.embed_free_s, self.head_free_s, self.acc_free_s, self.dma_free_s = embed_free, head_free, acc_free, dma_free
        busy["embedding"], busy["lm_head"], busy["accelerator"], busy["dma"] = b_embed, b_head, b_acc, b_dma
        c.energy_j = energy_j
        tokens = sum(w.tokens)
        c.tokens += tokens
        c.block_steps += blocks * len(ready)
        c.hop_bytes_local += self._local_hops * 2 * tokens * self.cfg.model.hidden_size
        return done

    # ------------------------------------------------------------------ numerics

    def _gather(self, tag: str, local: np.ndarray) -> Generator[Exchange, np.ndarray, np.ndarray]:
        if self.tp == 1:
            return local
        full = yield ("all_gather", tag, local)
        return full

    def _compute(self, w: Wave) -> Generator[Exchange, np.ndarray, None]:
        """Numerics of all micro-batches together, block by block (one exchange per point);
        sets the wave's hidden (or, after the LM head, logits)."""
        m = self.cfg.model
        seqs = [s for ss in w.seqs for s in ss]  # (seq_id, start, num_tokens, token_ids, _)
        if self.has_embedding:
            ids = np.concatenate([np.asarray(s[3], dtype=np.int64) for s in seqs])
            if ids.size and (ids.min() < 0 or ids.max() >= m.vocab_size):
                raise ValueError(f"token id outside the vocabulary [0, {m.vocab_size})")
            x = self.embed[ids].astype(np.float32)  # (tokens, D)
        else:
            x = np.concatenate(w.hidden)  # (tokens, D)
        for sid in {s[0] for s in seqs}:
            if sid not in self.seq_kv:
                any_shard = next(iter(self.shards.values()))
                self.seq_kv[sid] = ShardKV(len(self.shards), any_shard.num_kv_heads, m.head_dim)
        bounds = np.cumsum([0] + [s[2] for s in seqs])
        for stage in self.stages:
            for b in stage.blocks:
                x = yield from self._block(b, x, seqs, bounds)
        if self.has_lm_head:
            last = [bounds[i + 1] - 1 for i, s in enumerate(seqs)]
            h = rms_norm(x[last], self.final_norm, m.rms_norm_eps)
            logits = yield from self._gather("logits", h @ self.lm_head.T)  # (seqs, vocab)
            w.hidden, w.logits = None, []
            for ss in w.seqs:
                n = len(ss)
                part, logits = logits[:n], logits[n:]
                w.logits.append(part)
        else:
            w.hidden = []
            for i in range(len(w)):
                k = w.tokens[i]
                part, x = x[:k], x[k:]
                w.hidden.append(part)

    def _block(self, b: int, x: np.ndarray, seqs, bounds) -> Generator[Exchange, np.ndarray, np.ndarray]:
        """One block for all sequences: shared projections, per-sequence attention."""
        from cent_serve.model.layers import silu
        from cent_serve.sharding import shard_attention

        cfg, sh, layer = self.cfg.model, self.shards[b], self._local_layer[b]
        h = rms_norm(x, sh.input_norm, cfg.rms_norm_eps)
        parts = [shard_attention(cfg, sh, h[bounds[i]:bounds[i + 1]], s[1], self.seq_kv[s[0]], layer)
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
