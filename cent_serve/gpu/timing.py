"""The GPU timing model: a step's time from a roofline of its bytes and FLOPs (docs/gpu_model.md).

A step runs a batch of sequences, each with `n` new tokens on top of `c` it has cached, through
a pipeline stage of `layers` blocks on `tp` GPUs. Per GPU of the stage:

- bytes: the stage's weights once (bf16, split over tp), every sequence's KV read once per
  attention pass (`c + n` tokens; once per query head with `attention_reads = query_heads`), the
  new tokens' KV written;
- a mixture of experts: the attention and router weights once (and a shared expert's, which every
  token runs: Qwen 2 MoE), and of the experts only those
  the step's tokens chose (expected distinct experts of `tokens` draws of the time model's
  router: sum over e of 1 - (1 - pi_e)^tokens, pi_e the chance a token picks expert e);
- FLOPs: 2 per weight per token (a MoE's: the ones a token uses), 4 x head_dim x heads per (token, attended
  position) for q.K^T and p.V, the LM head's 2 V D per sampled row on the last stage;
- time: max(bytes / (HBM x mem_efficiency), FLOPs / (peak x compute_efficiency)) + the host's
  per-layer overhead + with tp > 1 two all-reduces a layer (ring: 2 (tp-1)/tp of the
  activations over the link, plus a fixed latency); between stages the activations cross the
  link once.

Energy: every GPU of the stage at its serving power (`board_power_w x power_fraction`) for the
step's time. The one place GPU time and energy are computed: the executor, `cent simulate
--hardware gpu:...` and the validation against the artifact's measurements all call it.
"""
from __future__ import annotations

import collections

from dataclasses import dataclass

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.kv_room import KVRoom

BYTES = 2  # bf16 weights, activations and KV


@dataclass(frozen=True)
class GpuMapping:
    """The GPUs' layout, with the fields the engine and the status read from a CENT `Mapping`."""

    kind: str
    num_devices: int
    pp: int
    tp: int
    replicas: int
    stage_layers: tuple[int, ...]
    mode: str = "gpu"

    @property
    def lanes(self) -> int:
        """Micro-batches in flight: one per pipeline stage."""
        return self.pp

    @property
    def devices_used(self) -> int:
        """GPUs of one replica."""
        return self.pp * self.tp

    @property
    def parallelism(self) -> str:
        """pipeline, tensor, hybrid or one device, as a CENT mapping's."""
        from cent_serve.timing.mapping import parallelism
        return parallelism(self.pp, self.tp)

    def describe(self) -> str:
        dp = f" x {self.replicas} replicas" if self.replicas > 1 else ""
        return f"{self.num_devices} x {self.kind}: pp {self.pp} x tp {self.tp}{dp}"


@dataclass
class StepParts:
    """One stage's step on one of its GPUs, seconds."""

    memory_s: float
    compute_s: float
    overhead_s: float
    allreduce_s: float

    @property
    def total_s(self):
        return np.maximum(self.memory_s, self.compute_s) + self.overhead_s + self.allreduce_s


HARDWARE_FLAG = "--hardware gpu:"
"""How the commands but `cent bench compare` (`--gpu `) name the GPUs before `KIND:N`, in the fixes
their refusals give (`GpuTimer`'s and `preflight.check_runnable`'s `gpu_flag`)."""


class GpuTimer:
    """Step times, energy, memory and cost of `cfg.gpu` GPUs serving `cfg.model`."""

    def __init__(self, cfg: CentConfig, gpu_flag: str = HARDWARE_FLAG) -> None:
        """`gpu_flag`: how the command the user ran names the GPUs, before `KIND:N`, for the fixes
        its refusals give (`cent bench compare`: `--gpu `)."""
        g, m = cfg.gpu, cfg.model
        self.cfg, self.model, self.kind = cfg, m, g.spec
        self.gpu, self.gpu_flag = g, gpu_flag
        self.tp, self.pp = g.group_tp, g.pp
        if self.pp > m.num_layers:
            raise ValueError(f"gpu.pp={self.pp} exceeds the model's {m.num_layers} layers: use fewer stages")
        # what vLLM's tensor parallelism splits: the query heads, the KV heads (or copies them to
        # the GPUs that share one: tp a multiple of them), the MLP's width (each expert's for a MoE,
        # and a shared expert's)
        width, shared = m.expert_size, m.shared_expert_intermediate_size
        for splits, what in ((m.num_heads % self.tp, f"the model's {m.num_heads} attention heads"),
                             (m.num_kv_heads % self.tp and self.tp % m.num_kv_heads,
                              f"the model's {m.num_kv_heads} KV heads, nor is it a multiple of them"),
                             (width % self.tp, f"the MLP's width of {width}"),
                             (shared % self.tp, f"the shared expert's width of {shared}")):
            if splits:
                def fits(t: int) -> bool:
                    return (not m.num_heads % t and not width % t and not shared % t
                            and (not m.num_kv_heads % t or not t % m.num_kv_heads))
                below = max(t for t in range(1, self.tp) if fits(t))
                origin = ""
                if g.tp:  # the user's tp
                    fix = (f"use a tp such as {below}, e.g. --set gpu.tp={below} with gpu.count a multiple of "
                           f"tp x pp = {below * self.pp}")
                else:  # tp is the count over the stages: the count is what to change
                    above = next((t for t in range(self.tp + 1, m.num_heads + 1) if fits(t)), None)
                    counts = " or :".join(str(t * self.pp) for t in (below, above) if t is not None)
                    stages = f" over gpu.pp={self.pp} stages" if self.pp > 1 else ""
                    origin = f" (the GPUs of {gpu_flag}{g.kind}:{g.count}{stages})"
                    fix = f"use {gpu_flag}{g.kind}:{counts}"
                    # the GPUs given, as data-parallel replicas of the largest tp > 1 that fits and divides them
                    # (6 GPUs, 32 heads: tp 2 x 3, where `below`, 4, would leave 2 idle)
                    keep = max((t for t in range(2, self.tp) if fits(t) and g.count % (t * self.pp) == 0), default=None)
                    if keep:
                        fix += (f", or --set gpu.tp={keep} to run the {g.count} GPUs as "
                                f"{g.count // (keep * self.pp)} data-parallel replicas")
                raise ValueError(f"gpu.tp={self.tp}{origin} does not divide {what} (a tensor-parallel group splits "
                                 f"them, as vLLM does): {fix}")
        base, extra = divmod(m.num_layers, self.pp)
        layers = tuple(base + (i < extra) for i in range(self.pp))
        self.mapping = GpuMapping(g.kind, g.count, self.pp, self.tp, g.replicas, layers)
        h = m.head_dim
        self.block_params = m.active_block_param_count()  # per layer and token: every weight is a matmul's
        self.block_weight_bytes = m.block_param_count() * BYTES  # held (a MoE: every expert)
        self.expert_pick = None
        """A mixture of experts: (E,) each expert's chance to be among a token's k (the time model's
        router, `cent_serve.timing.experts`)."""
        if m.is_moe:
            from cent_serve.timing.experts import RoutingTable
            patterns = RoutingTable(m).patterns
            self.expert_pick = np.bincount(patterns.ravel(), minlength=m.num_experts) / patterns.shape[0]
        self.embed_bytes = m.vocab_size * m.hidden_size * BYTES
        # K and V of one token in one layer on one GPU: its share of the KV heads, each kept whole
        # (with tp > KV heads a head is copied to the GPUs that share it, as vLLM does)
        self.kv_layer_bytes = 2 * -(-m.num_kv_heads // self.tp) * m.head_dim * BYTES
        first = np.cumsum((0,) + layers)
        self.stage_windows = tuple(tuple(collections.Counter(m.block_windows[first[s]:first[s + 1]]).items())
                                   for s in range(self.pp))
        """Per stage, (window, its blocks) of each kind of block it holds (window 0: full attention)."""
        # what attention reads of a cached token in a layer on one GPU: its KV heads once each, or
        # (transformers' eager repeat_kv) K and V once for each of its query heads
        heads_read = m.num_heads // self.tp if g.attention_reads == "query_heads" else -(-m.num_kv_heads // self.tp)
        self.kv_read_bytes = 2 * heads_read * m.head_dim * BYTES
        self.attn_flops = 4 * m.num_heads * h  # per (token, attended position) per layer
        self.power_w = self.kind.board_power_w * self.kind.power_fraction
        """One GPU's power while it serves."""

    # ------------------------------------------------------------------ one step

    def stage_weight_bytes(self, stage: int) -> float:
        """Weights one GPU of `stage` holds and reads each step."""
        b = self.mapping.stage_layers[stage] * self.block_weight_bytes
        if stage == 0:
            b += self.embed_bytes  # the embedding's rows are looked up, but it is held
        if stage == self.pp - 1 and (not self.model.tie_word_embeddings or self.pp > 1):
            b += self.embed_bytes  # the LM head (a tied one is copied to the last stage)
        return b / self.tp

    def step(self, stage: int, new, cached, logit_rows: int = 0) -> StepParts:
        """Stage `stage`'s step for sequences with `new` tokens on top of `cached` ones."""
        new = np.asarray(new, dtype=np.float64)
        return self.parts(stage, float(new.sum()), *self.stage_reads(stage, new, cached), logit_rows)

    def stage_reads(self, stage: int, new, cached) -> tuple[float, float]:
        """(context, attended) a block of `stage` reads and scores in a step of sequences with `new` tokens
        on top of `cached` ones, summed over the sequences: the KV positions attention reads and the
        (token, position) pairs it scores, each block within its own window, as a mean over the stage's
        blocks (what `step` hands `parts`, which charges them per block)."""
        new = np.asarray(new, dtype=np.float64)
        cached = np.asarray(cached, dtype=np.float64)
        kinds = self.stage_windows[stage]
        if len(kinds) == 1:
            return self._reads(new, cached, kinds[0][0])
        layers = self.mapping.stage_layers[stage]  # a window on some of the stage's blocks: each block's own
        each = [(n, self._reads(new, cached, w)) for w, n in kinds]
        return sum(n * c for n, (c, _) in each) / layers, sum(n * a for n, (_, a) in each) / layers

    @staticmethod
    def _reads_each(new: np.ndarray, cached: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(the KV positions a block reads, the (token, position) pairs it scores) for each sequence
        with `new` tokens on top of `cached`, the block's `window` (0: none) bounding both."""
        # the i-th new token (i = 1..new) attends to cached + i positions: new x cached + new (new + 1) / 2
        attended = new * cached + new * (new + 1) / 2
        if window:  # a sliding window: the KV kept and the positions attended stop at it
            w, first = window, cached + 1  # the i-th new token sees min(cached + i, w) keys
            below = np.clip(w - first + 1, 0, new)  # the tokens that see at most w keys (their own count)
            attended = (first + first + below - 1) * below / 2 + (new - below) * w
            cached = np.minimum(cached, w)
        return cached + new, attended

    @classmethod
    def _reads(cls, new: np.ndarray, cached: np.ndarray, window: int) -> tuple[float, float]:
        """`_reads_each` summed over the sequences."""
        context, attended = cls._reads_each(new, cached, window)
        return float(context.sum()), float(attended.sum())

    def parts(self, stage: int, tokens, context, attended, logit_rows: int = 0) -> StepParts:
        """A step from its sums: `tokens` new, `context` = the sequences' cached + new tokens
        (the KV attention reads), `attended` = (token, position) pairs attention scores (causal
        within the new tokens). Elementwise over arrays of steps."""
        m, k = self.model, self.kind
        layers = self.mapping.stage_layers[stage]
        bytes_ = layers * (self.read_weight_bytes(tokens) / self.tp + context * self.kv_read_bytes
                           + tokens * self.kv_layer_bytes)
        flops = layers * (2 * self.block_params * tokens + self.attn_flops * attended) / self.tp
        if stage == self.pp - 1 and logit_rows:
            bytes_ = bytes_ + self.embed_bytes / self.tp
            flops = flops + 2 * m.vocab_size * m.hidden_size * logit_rows / self.tp
        allreduce = 0.0
        if self.tp > 1:
            ring = 2 * (self.tp - 1) / self.tp * tokens * m.hidden_size * BYTES / k.link_bytes_per_s
            allreduce = 2 * layers * (self.gpu.allreduce_latency_s + ring)
        return StepParts(bytes_ / (k.hbm_bytes_per_s * k.mem_efficiency),
                         flops / (k.peak_flops * k.compute_efficiency),
                         layers * self.gpu.layer_overhead_s, allreduce)

    def read_weight_bytes(self, tokens):
        """A block's weight bytes a step of `tokens` tokens reads (all of them; a mixture of experts'
        attention and router, a shared expert and its gate, and the experts its tokens chose, expected).
        Elementwise."""
        if self.expert_pick is None:
            return self.block_weight_bytes
        m = self.model
        tokens = np.asarray(tokens, dtype=np.float64)
        hit = (1.0 - (1.0 - self.expert_pick[:, None]) ** tokens.reshape(1, -1)).sum(axis=0).reshape(tokens.shape)
        out = (m.attention_param_count() + m.num_experts * m.hidden_size + m.shared_expert_param_count()
               + hit * m.expert_param_count()) * BYTES
        return out if out.shape else float(out)

    def step_s(self, stage: int, new, cached, logit_rows: int = 0) -> float:
        return self.step(stage, new, cached, logit_rows).total_s

    def hop_s(self, tokens: int) -> float:
        """Activations of `tokens` from one stage to the next over the link."""
        return self.gpu.allreduce_latency_s + tokens * self.model.hidden_size * BYTES / self.kind.link_bytes_per_s

    def step_energy_j(self, seconds: float) -> float:
        """A stage's tp GPUs at serving power for `seconds`."""
        return self.tp * self.power_w * seconds

    # ------------------------------------------------------------------ memory

    def kv_bytes_per_token(self, stage: int) -> float:
        """KV one GPU of `stage` keeps per token."""
        return self.mapping.stage_layers[stage] * self.kv_layer_bytes

    def stage_kv_tokens(self, stage: int) -> int:
        """Tokens of every layer's KV a GPU of `stage` holds: its room after the weights, in the share
        `gpu.memory_utilization` of its memory."""
        room = self.kind.memory_bytes * self.gpu.memory_utilization
        return int((room - self.stage_weight_bytes(stage)) // self.kv_bytes_per_token(stage))

    def kv_tokens(self) -> int:
        """Tokens of KV a replica holds: the tightest stage's (`stage_kv_tokens`)."""
        return min(self.stage_kv_tokens(s) for s in range(self.pp))

    def kv_room(self, block_tokens: int) -> KVRoom:
        """What a replica's stages hold of KV, in blocks of `block_tokens` tokens of every layer a GPU of
        the stage holds, a windowed layer keeping `CentConfig.kv_tokens_cap` tokens of a sequence (vLLM's
        hybrid KV cache manager, `cent_serve.kv_room`): what the scheduler admits against, every stage."""
        stages = []
        for s in range(self.pp):
            windowed = sum(n for window, n in self.stage_windows[s] if window)
            stages.append((self.mapping.stage_layers[s] - windowed, windowed, self.stage_kv_tokens(s) // block_tokens))
        return KVRoom.of(block_tokens, self.cfg.kv_tokens_cap, stages)

    def check_fits(self) -> None:
        """ValueError naming the fix when the weights alone do not fit."""
        if self.kv_tokens() < 1:
            s = max(range(self.pp), key=self.stage_weight_bytes)
            raise ValueError(
                f"{self.model.name} does not fit on {self.mapping.describe()}: a GPU of stage {s} holds "
                f"{self.stage_weight_bytes(s) / 1e9:.1f} GB of weights in {self.kind.memory_bytes / 1e9:.0f} GB x "
                f"gpu.memory_utilization={self.gpu.memory_utilization}: use more GPUs ({self.gpu_flag}KIND:N)" + (
                    f" or spread a replica over more of the {self.mapping.num_devices} (a larger gpu.tp or gpu.pp)"
                    if self.mapping.devices_used < self.mapping.num_devices else ""))

    def max_batch(self, seq_tokens: int) -> int:
        """Sequences of `seq_tokens` whose KV fits in a replica at once, counted as the scheduler admits
        them and `preflight.check_gpus_hold` checks them (`kv_room`, capped by
        `scheduler.num_kv_blocks_override`): whole blocks of `scheduler.kv_block_tokens` on every stage,
        a windowed layer keeping min(seq_tokens, `CentConfig.kv_tokens_cap`) of a sequence."""
        sc = self.cfg.scheduler
        return self.kv_room(sc.kv_block_tokens).capped(sc.num_kv_blocks_override).most_sequences(seq_tokens)

    # ------------------------------------------------------------------ cost

    @property
    def tco_per_gpu(self) -> float | None:
        return self.gpu.tco_per_gpu if self.gpu.tco_per_gpu is not None else self.kind.tco_per_gpu

    def tco(self) -> float | None:
        """The GPUs' cost in the artifact's TCO units (docs/hardware_model.md section 9)."""
        t = self.tco_per_gpu
        return None if t is None else t * self.mapping.num_devices

    # ------------------------------------------------------------------ the artifact's workload

    def static_batch(self, batch: int, prompt: int, decode: int) -> dict:
        """A static batch as transformers' `generate` runs it (the artifact's measurements): the
        whole batch's prompts in one step, then `decode` steps of one token each. Returns seconds
        and joules per phase. Each block reads and scores within its own window, as `step` charges."""
        p_s, p_busy = self._pipelined(batch * prompt, self._batch_reads(batch, prompt, 0.0), batch)
        cached = prompt + np.arange(decode, dtype=np.float64)  # every sequence's cache before each step
        d_s, d_busy = self._pipelined(batch, self._batch_reads(batch, 1.0, cached), batch)
        # energy as the executor charges it: each stage's tp GPUs while that stage computes
        return dict(prefill_s=float(p_s), decode_s=float(d_s.sum()),
                    prefill_j=float(self.step_energy_j(p_busy)), decode_j=float(self.step_energy_j(d_busy.sum())))

    def _batch_reads(self, batch: int, new, cached):
        """Per stage, (KV positions read, pairs scored) of `batch` equal sequences with `new` tokens on
        `cached` (arrays: one entry a step), each block within its window, as a block's mean (`step`)."""
        out = []
        for s, kinds in enumerate(self.stage_windows):
            each = [(n, self._reads_each(new, cached, w)) for w, n in kinds]
            if len(each) == 1:
                out.append((batch * each[0][1][0], batch * each[0][1][1]))
            else:
                layers = self.mapping.stage_layers[s]
                out.append((batch * sum(n * c for n, (c, _) in each) / layers,
                            batch * sum(n * a for n, (_, a) in each) / layers))
        return out

    def _pipelined(self, tokens, reads, rows: int):
        """One batch through every stage in turn (one micro-batch: the stages wait for each other),
        `reads` each stage's (context, attended): its time, and the stages' busy time summed."""
        busy = sum(self.parts(s, tokens, *reads[s], rows).total_s for s in range(self.pp))
        return busy + (self.pp - 1) * self.hop_s(tokens), busy

    def phase_figures(self, batch: int, prompt: int, decode: int) -> dict:
        """Throughput, power and tokens per joule per phase of a static batch (the artifact's
        definitions: prefill = the prompts' tokens over the prefill time, decoding = the
        generated tokens over the decode time, end2end = all tokens over both)."""
        r = self.static_batch(batch, prompt, decode)
        out = {}
        for phase, tokens, s, j in (("prefill", batch * prompt, r["prefill_s"], r["prefill_j"]),
                                    ("decoding", batch * decode, r["decode_s"], r["decode_j"]),
                                    ("end2end", batch * (prompt + decode), r["prefill_s"] + r["decode_s"],
                                     r["prefill_j"] + r["decode_j"])):
            if not tokens:  # --decode 0: no decoding phase, end2end is the prefill
                continue
            out[phase] = dict(latency_s=s, throughput_tok_s=tokens / s, power_w=j / s, avg_power_w=j / s,
                              tokens_per_joule=tokens / j, energy_per_token_mj=j / tokens * 1e3)
        out["batch"] = batch
        return out
