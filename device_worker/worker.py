"""A CENT device: its stages' weight shard, a paged KV cache, busy-until clocks, counters.

Plain Python (the Ray actor in `actor.py` only wraps it). One call per round,
`run(plan, x)`, pushes every lane of the round through all the stages resident on
this device and returns a `RoundOutput` stamped with the time each lane leaves it.
The device keeps each sequence's position across rounds (plans name a sequence's
start once, when it is new).

Two passes, kept apart so timing-only and full numerics charge identical time:

1. **Time** (always): one compiled call (`cent_serve.timing.clock.device_round`). Each
   lane's block step is the timer's block costs for its tokens (PIM + accelerator x tb + the
   in-block tensor-parallel exchanges); lanes go in order of `ready_s`; each block of each stage
   starts at max(its channel group's busy-until clock, the input's ready time); a block's output
   moves to the next block on the device through the DMA engine (one hop), or leaves the device
   for the switch. Blocks resident on one device run in lockstep in CENT, sharing the DMA and the
   near-memory accelerator, as the artifact accounts for it (the tb factors): their busy time is
   counted, not queued. The same call moves the sequences' positions on and says which need a
   new KV block.
2. **Numerics** (`numerics="full"`): the reference math on this device's shard of
   the weights (`cent_serve.sharding`). With tp > 1 the block yields at its
   exchange points: `run` is a generator that yields `("all_gather", tag, local_slice)`
   and expects the concatenation back; the switch relays them (`fabric.rounds`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Generator

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.kv_room import seq_blocks
from cent_serve.messages import RoundOutput, RoundPlan
from cent_serve.model.layers import embed_rows, linear, model_norm, out_norm, softcap
from cent_serve.sharding import LayerShard, ShardKV, shard_layer, shard_vocab
from cent_serve.timing import SystemTimer
from cent_serve.timing.clock import I_CALLS, DeviceClock, device_round
from cent_serve.timing.energy import TERMS, head_energy_j, head_energy_terms_j
from cent_serve.timing.mapping import Stage, device_block_kinds, device_num_kv_blocks, device_weight_bytes
from device_worker.kv_cache import PagedKVCache
from device_worker.seqs import FOREVER, SeqTable

Exchange = tuple[str, str, np.ndarray]
_NONE_CROSSED = np.zeros(0, dtype=np.int64)


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
        self._blocks = tuple(b for s in self.stages for b in s.blocks)
        self.numerics = cfg.resolved_numerics == "full"
        group_order = [s.channel_group for s in self.stages]
        assert len(set(group_order)) == len(self.stages), f"stages share a channel group: {self.stages}"
        self._busy_names = ["embedding", "lm_head", "accelerator", "dma", *(f"group{g}" for g in group_order)]
        # per stage (channel group), per block: whether the block's output leaves the device
        leaves = [[b == self.last_block and not self.has_lm_head for b in s.blocks] for s in self.stages]
        self._local_hops = sum(not x for flags in leaves for x in flags)
        """Block outputs the DMA engine moves per token (each hidden_size values of device.bytes_per_element)."""
        self.clock = DeviceClock([len(flags) for flags in leaves], [x for flags in leaves for x in flags],
                                 mp.tb, cfg.scheduler.kv_block_tokens, (self.has_embedding, self.timer.embed_lookup_s),
                                 (self.has_lm_head, self.timer.lm_head_s, head_energy_j(self.timer) / self.tp,
                                  mp.lm_head == "last_stage"),
                                 self.timer.host_s, block_windows=[self.timer.table_windows[b] for b in self._blocks],
                                 head_terms=head_energy_terms_j(self.timer) / self.tp if self.has_lm_head else None)
        """Busy-until clocks in simulated seconds, busy seconds, joules, counters (`device_round`)."""
        full, windowed = device_block_kinds(cfg.model, mp, device_id)
        cap = cfg.kv_tokens_cap if windowed else None
        self.kv_kinds = (full, windowed, None if cap is None else -(-cap // cfg.scheduler.kv_block_tokens))
        """(full-attention blocks, windowed blocks, the KV blocks a windowed one keeps at most) held
        here: a sequence's KV blocks, as the scheduler reserves them (`cent_serve.kv_room.seq_blocks`)."""
        self.seqs = SeqTable(cfg.scheduler.kv_block_tokens, None if full else cap)
        """Each sequence's position (its KV stops growing at the window's cap when every block here has one)."""
        self.weight_bytes = device_weight_bytes(cfg.model, mp, device_id, cfg.device.bytes_per_element)
        block = cfg.scheduler.kv_block_tokens
        self.kv = PagedKVCache(device_num_kv_blocks(cfg.model, mp, cfg.device, device_id, block), block)
        """Its blocks counted as the scheduler's room and the preflight count them (`device_kv_blocks`)."""
        self.shards: dict[int, LayerShard] = {}
        self.seq_kv: dict[int, ShardKV] = {}
        if self.numerics:
            self._load_shard(weights)

    # ------------------------------------------------------------------ weights

    def _load_shard(self, weights) -> None:
        """Slice this device's layers (and embedding / LM head) out of the model's weights."""
        from cent_serve.model.hf_checkpoint import load_weights

        w = weights if weights is not None else load_weights(self.cfg.model)
        for stage in self.stages:
            for b in stage.blocks:
                # copies, so the full model can be dropped once every device has its shard
                sh = shard_layer(self.cfg.model, w.layers[b], self.rank, self.tp)
                self.shards[b] = replace(sh, **{k: np.ascontiguousarray(getattr(sh, k)) for k in (
                    "input_norm", "wq", "wk", "wv", "wo", "post_norm", "w_gate", "w_up", "w_down", "router",
                    "experts_gate", "experts_up", "experts_down", "shared_gate", "shared_up", "shared_down",
                    "shared_expert_gate", "attn_out_norm", "mlp_out_norm") if getattr(sh, k) is not None})
        self.embed = np.ascontiguousarray(w.embed) if self.has_embedding else None
        if self.has_lm_head:
            self.final_norm = np.ascontiguousarray(w.final_norm)
            self.lm_head = np.ascontiguousarray(shard_vocab(w.lm_head, self.rank, self.tp))
        self._local_layer = {b: i for i, b in enumerate(sorted(self.shards))}

    # ------------------------------------------------------------------ the call

    def run(self, plan: RoundPlan, x: RoundOutput) -> Generator[Exchange, np.ndarray, RoundOutput]:
        """Run every lane of `plan` through this device's stages, its input `x` (the previous
        unit's output, or `RoundOutput.start(plan)`). Returns this device's output: when each
        lane leaves it, the energy it charged each sequence, and with numerics the activations
        or logits. A generator: with tp > 1 and numerics it yields at exchange points."""
        if not self._take(plan):
            return RoundOutput(x.ready_s, np.zeros(0))
        starts = self.seqs.state[0].tolist() if self.numerics else None  # the round moves them on
        done, own, crossed, n_crossed = self._time_pass(x.ready_s, plan.layout)
        if n_crossed:
            self.grow_kv(crossed[:n_crossed])
        out = RoundOutput(done, own)
        if self.numerics:
            yield from self._compute(plan, x, starts, out)
        return out

    def run_time(self, plan: RoundPlan, x: RoundOutput) -> tuple[RoundOutput, np.ndarray, int]:
        """`run` of a device without numerics (which never yields), but for the KV growth, left
        to the caller (`grow_kv` of the first `n_crossed` of `crossed`, after the tensor-parallel
        twins have copied the positions: `fabric.rounds.Lockstep`). Returns (the output,
        crossed, n_crossed)."""
        if not self._take(plan):
            return RoundOutput(x.ready_s, np.zeros(0)), _NONE_CROSSED, 0
        done, own, crossed, n_crossed = self._time_pass(x.ready_s, plan.layout)
        return RoundOutput(done, own), crossed, n_crossed

    def _take(self, plan: RoundPlan) -> bool:
        """Forget the plan's finished sequences and take in its new ones; False for a round with no
        lanes here (counted as a call, nothing to run)."""
        for sid in plan.finished:
            self.free(sid)
        self.seqs.update(plan)
        if len(plan.layout):
            return True
        self.clock.i[I_CALLS] += 1
        return False

    def follow(self, lead: "DeviceWorker", plan: RoundPlan) -> None:
        """`run_time` of `plan` on a twin of `lead` (`is_twin`) that `lead` has just run: the
        same compiled time pass over equal clocks, positions and inputs gives equal ones, so
        they are copied, not computed again. This copies the positions (after forgetting the
        finished sequences and taking in the new); the clocks are the caller's to copy
        (`fabric.rounds.Lockstep` copies every twin's at once), and so is the KV growth."""
        for sid in plan.finished:
            self.free(sid)
        self.seqs.update(plan)
        self.seqs.state[:] = lead.seqs.state

    def is_twin(self, other: "DeviceWorker") -> bool:
        """Whether this device's time pass is `other`'s, round after round: both timing-only on
        one timer, the same blocks, equal clocks and positions (the ranks of a tensor-parallel
        stage, as built). Their KV caches are not compared: each grows its own."""
        return (not self.numerics and not other.numerics and self.timer is other.timer
                and self._blocks == other._blocks
                and np.array_equal(self.clock.f, other.clock.f) and np.array_equal(self.clock.i, other.clock.i)
                and (self.seqs.block_tokens, self.seqs.kv_tokens_cap, self.seqs.layout, self.seqs.pos)
                == (other.seqs.block_tokens, other.seqs.kv_tokens_cap, other.seqs.layout, other.seqs.pos)
                and np.array_equal(self.seqs.state, other.seqs.state))

    def free(self, seq_id: int) -> None:
        """Forget a finished or aborted sequence: KV blocks and values, at once."""
        self.kv.free(seq_id)
        self.seq_kv.pop(seq_id, None)

    # ------------------------------------------------------------------ time

    def _time_pass(self, ready: np.ndarray, layout) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The round's time pass (`cent_serve.timing.clock.device_round`): when each lane's output
        exists (its last block's end, or the LM head's), the joules charged to each sequence, and
        the sequences that cross into a new KV block (their indexes in the first `n_crossed`
        entries, n_crossed; a view of the positions' third row, kept until the next round): the
        caller gives them it (`grow_kv`; KVCacheFull fails the round)."""
        timer, seqs, clock = self.timer, self.seqs, self.clock
        if timer.moe_per_round:  # this round's routing: each lane's block steps wait for its busiest device
            lp = timer.moe_lane_plan(layout, seqs.state[0], self._blocks)
        else:
            lp = timer.lane_plan(layout)
        while True:
            table, filled = timer.context_table()
            done, own, n_crossed, need = device_round(ready, table, filled, seqs.state, lp.ints, lp.floats,
                                                      clock.f, clock.i)
            if not need:
                break
            self.fill_table(lp)
        return done, own, seqs.state[2], n_crossed

    def fill_table(self, lp) -> None:
        """Fill the timer's context table for every context the current layout's round reaches."""
        seqs, n = self.seqs, len(self.seqs.layout)
        tokens = lp.ints[n + 1:n + 1 + self.seqs.state.shape[1]].tolist()
        self.timer.fill_contexts(np.concatenate([np.arange(a + 1, a + t + 1) for a, t in
                                                 zip(seqs.state[0].tolist(), tokens)]))

    def kv_wanted(self, crossed: np.ndarray) -> list[tuple[int, int]]:
        """(sequence, tokens its KV blocks must hold) of each crossing sequence (`grow_kv`)."""
        ids, starts = self.seqs.layout.seq_ids, self.seqs.state[0].tolist()  # Python ints, read once
        full, windowed, cap_blocks = self.kv_kinds
        if not windowed:
            return [(ids[k], starts[k]) for k in crossed.tolist()]
        bt = self.seqs.block_tokens
        return [(ids[k], bt * seq_blocks(-(-starts[k] // bt), full, windowed, cap_blocks)) for k in crossed.tolist()]

    def grow_kv(self, crossed: np.ndarray, wanted: list[tuple[int, int]] | None = None) -> None:
        """A new KV block for each sequence that crossed into one (`crossed`: their indexes in
        layout order; `wanted`: their `kv_wanted`, when a twin has it already); KVCacheFull fails
        the round."""
        self.kv.grow_all(self.kv_wanted(crossed) if wanted is None else wanted)
        cap = self.seqs.kv_tokens_cap
        if cap is None:
            return
        starts = self.seqs.state[0]
        for k in crossed.tolist():  # a sliding window's ring is complete: its blocks are reused from here on
            if starts[k] >= cap:
                self.seqs.state[1, k] = FOREVER

    # ------------------------------------------------------------------ numerics

    def _gather(self, tag: str, local: np.ndarray) -> Generator[Exchange, np.ndarray, np.ndarray]:
        if self.tp == 1:
            return local
        full = yield ("all_gather", tag, local)
        return full

    def _compute(self, plan: RoundPlan, x: RoundOutput, starts: list[int],
                 out: RoundOutput) -> Generator[Exchange, np.ndarray, None]:
        """Numerics of all lanes together, block by block (one exchange per point); sets `out`'s
        activations or, after the LM head, the logits of the sequences that want them."""
        m, layout = self.cfg.model, plan.layout
        if self.has_embedding:
            ids = np.asarray(plan.token_ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= m.vocab_size):
                raise ValueError(f"token id outside the vocabulary [0, {m.vocab_size})")
            h = embed_rows(m, self.embed, ids)  # (tokens, D)
        else:
            h = np.concatenate(x.hidden)  # (tokens, D)
        seqs = list(zip(layout.seq_ids, starts, layout.seq_tokens))
        for sid, _, _ in seqs:
            if sid not in self.seq_kv:
                any_shard = next(iter(self.shards.values()))
                self.seq_kv[sid] = ShardKV(len(self.shards), any_shard.num_kv_heads, m.head_dim)
        bounds = np.cumsum([0] + layout.seq_tokens)
        for stage in self.stages:
            for b in stage.blocks:
                h = yield from self._block(b, h, seqs, bounds)
        if self.has_lm_head:
            # each sequence's last `wants_logits` positions (counts; a bool array counts 1 or 0)
            rows = np.asarray(plan.wants_logits, dtype=np.int64)
            last = np.concatenate([np.arange(end - k, end) for end, k in zip(bounds[1:], rows) if k]
                                  or [np.zeros(0, np.int64)])
            if last.size:
                normed = model_norm(m, h[last], self.final_norm)
                logits = yield from self._gather("logits", linear(normed, self.lm_head))  # (wanted, vocab)
                out.logits = softcap(logits, m.final_logit_softcapping)  # elementwise: on the gathered logits
            else:
                out.logits = np.zeros((0, m.vocab_size), np.float32)
        else:
            edges = np.cumsum([0] + layout.lane_tokens)
            out.hidden = [h[a:b] for a, b in zip(edges[:-1], edges[1:])]

    def _block(self, b: int, x: np.ndarray, seqs, bounds) -> Generator[Exchange, np.ndarray, np.ndarray]:
        """One block for all sequences: shared projections, per-sequence attention. A round of one token a
        sequence (decode, or prompts token by token) projects and rotates them all in one call, the same floats
        (`project_qkv_rows`): a call each took 140 us for the tiny model's 3 sequences, one 35 us."""
        from cent_serve.model.layers import gated, project_qkv_rows
        from cent_serve.sharding import moe_finish, moe_local, shard_attend, shard_attention, shared_act

        cfg, sh, layer = self.cfg.model, self.shards[b], self._local_layer[b]
        h = model_norm(cfg, x, sh.input_norm)
        window, local_rope = cfg.block_window(b), cfg.is_local_rope(b)
        if 1 < len(seqs) == len(h):
            q, k, v = project_qkv_rows(cfg, h, sh.wq, sh.wk, sh.wv, [s[1] for s in seqs], sh.qkv_bias, sh.qk_norms,
                                       local_rope)  # (nq | nkv, sequences, hd)
            parts = [shard_attend(cfg, sh, q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], s[1], self.seq_kv[s[0]],
                                  layer, window) for i, s in enumerate(seqs)]
        else:
            parts = [shard_attention(cfg, sh, h[bounds[i]:bounds[i + 1]], s[1], self.seq_kv[s[0]], layer, window,
                                     local_rope) for i, s in enumerate(seqs)]
        attn = yield from self._gather("attn", np.concatenate(parts))
        o = yield from self._gather("o_proj", linear(attn, sh.wo))
        x = x + out_norm(cfg, o, sh.attn_out_norm)
        h = model_norm(cfg, x, sh.post_norm)
        if cfg.is_moe:
            act = shared_act(cfg, sh, h)  # a shared expert's slice, gathered before its down
            if act is not None:
                act = yield from self._gather("shared_act", act)
            local, experts = moe_local(cfg, sh, h, act)
            outputs = yield from self._gather("experts", local)
            return x + moe_finish(cfg, sh, outputs, experts, h)
        act = yield from self._gather("act", gated(h, sh.w_gate, sh.w_up, cfg.hidden_act))
        down = yield from self._gather("down", linear(act, sh.w_down))
        return x + out_norm(cfg, down, sh.mlp_out_norm)

    # ------------------------------------------------------------------ reporting

    def energy_terms_j(self) -> dict[str, float]:
        """The joules this device charged by term (`energy.TERMS`): charged where `stats`' `energy_j`
        is, they add up to it."""
        return dict(zip(TERMS, self.clock.terms.tolist()))

    def stats(self) -> dict:
        c = self.clock.counters()
        return dict(device_id=self.device_id, stages=[s.index for s in self.stages], rank=self.rank,
                    busy_s=dict(zip(self._busy_names, self.clock.busy.tolist())), energy_j=self.clock.joules,
                    block_steps=c["block_steps"], tokens=c["tokens"], calls=c["calls"],
                    hop_bytes_local=(self._local_hops * self.cfg.device.bytes_per_element * self.cfg.model.hidden_size
                                     * c["tokens"]),
                    kv_usage=self.kv.usage,
                    kv_blocks=self.kv.num_blocks, weight_bytes=self.weight_bytes,
                    clock_s=self.clock.clock_s)
