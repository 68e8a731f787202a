"""Sharding: pure functions from the reference model's weights to device shards.

Like gpt-fast's `apply_tp` and nano-vllm's per-rank loader, this module only
slices weights; the math of a shard is the reference math in
`cent_serve.model.layers`. CENT's tensor parallelism splits every GEMV by its
outputs over the tp devices of a stage (each device streams its slice of the
matrix from its own banks), then gathers the slices and broadcasts the whole
vector over the CXL switch. Attention heads are split the same way, so
score x V stays inside one device (docs/hardware_model.md section 3).

A tensor-parallel block therefore has four exchange points, each an
all-gather of output slices:

    attn heads (H*hd) -> o_proj slice (D) -> silu(gate)*up slice (F) -> down slice (D)

A mixture of experts is spread by experts instead (expert parallelism): each of a stage's tp
devices holds whole experts, expert e on rank e mod tp (round robin by id; which experts a skewed
router favours is a seeded order, `cent_serve.timing.experts.hot_order`), and every device holds the router. The normed input is
already on every device (the o_proj all-gather broadcast it), so nothing is dispatched; each
device runs its experts for the tokens routed to them, and the combine gathers their weighted
outputs (only the rows of the tokens that chose each expert: every rank knows the routing) and
adds them in expert order (the reference model's order: the same floats):

    attn heads (H*hd) -> o_proj slice (D) -> experts' outputs (their tokens x D) -> sum

A shared expert (Qwen 2 MoE: a SwiGLU every token runs, scaled by a sigmoid gate) is split over the
stage like a dense MLP: each device holds the F_s / tp rows of its gate and up and the D / tp rows of
its down (`split_bounds`, uneven widths as the dense MLP's), runs them on the normed input it already
holds, and the silu(gate)*up slices are all-gathered before the down; each device's down slice then
rides in the combine's all-gather beside its experts' outputs, and every device adds the gathered
shared output, scaled by its sigmoid gate, after the routed sum. The gate (1 x D, one output) stays
whole on every device with the router (the time model counts its one output in the router's GEMV:
`cent_serve.timing.pim.router_outputs`):

    ... o_proj slice (D) -> shared silu(gate)*up slice (F_s) -> experts' outputs + shared down slice -> sum

`tp_block_forward` runs the block for one rank given an `all_gather`
callable; the tests pass a local concatenation, the device actors pass the
fabric.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.model.layers import (attention_scale, combine, expert_outputs, expert_rows, gated, hidden_keys, hides_any,
                                     linear, model_norm, out_norm, project_qkv, route, shared_gate_scale, softcap,
                                     softmax)
from cent_serve.model.weights import LayerWeights

F32 = np.float32

AllGather = Callable[[str, np.ndarray], np.ndarray]
"""all_gather(tag, local_slice (seq, n)) -> the concatenation over ranks (seq, sum n)."""


def split_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous near-equal ranges (numpy.array_split's rule): the first ones one longer."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@dataclass
class LayerShard:
    """One rank's slice of a block. Matrices in (out, in) layout."""

    rank: int
    tp: int
    q_heads: tuple[int, int]  # query heads [a, b)
    kv_heads: tuple[int, int]  # the KV heads those query heads read [a, b)
    num_rep: int  # the model's query heads per KV head (ModelConfig.num_rep)
    input_norm: np.ndarray  # (D,)
    wq: np.ndarray  # (nq*hd, D)
    wk: np.ndarray  # (nkv*hd, D)
    wv: np.ndarray  # (nkv*hd, D)
    wo: np.ndarray  # (D_r, H*hd): this rank's output rows of o_proj
    post_norm: np.ndarray  # (D,)
    w_gate: np.ndarray  # (F_r, D)
    w_up: np.ndarray  # (F_r, D)
    w_down: np.ndarray  # (D_r, F)
    qkv_bias: tuple | None = None  # this rank's slices of the q, k, v biases (Qwen 2.5)
    qk_norms: tuple | None = None  # the per-head q and k norm weights, on every rank (Qwen 3)
    experts: tuple[int, ...] = ()  # the experts this rank holds (a mixture of experts), ascending
    router: np.ndarray | None = None  # (E, D), on every rank
    experts_gate: np.ndarray | None = None  # (n_local, F_e, D) this rank's experts, stacked
    experts_up: np.ndarray | None = None  # (n_local, F_e, D)
    experts_down: np.ndarray | None = None  # (n_local, D, F_e)
    shared_gate: np.ndarray | None = None  # (F_s_r, D) this rank's rows of the shared expert (Qwen 2 MoE)
    shared_up: np.ndarray | None = None  # (F_s_r, D)
    shared_down: np.ndarray | None = None  # (D_r, F_s): its output rows of the down
    shared_expert_gate: np.ndarray | None = None  # (1, D) the shared expert's gate, whole on every rank
    attn_out_norm: np.ndarray | None = None  # (D,) Gemma 2's norms of the attention's and the MLP's outputs,
    mlp_out_norm: np.ndarray | None = None  # (D,) on every rank (each applies them after the all-gather)

    @property
    def num_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @cached_property
    def query_groups(self) -> tuple[int, np.ndarray | None]:
        """How `shard_attention` pairs the shard's query heads with its KV heads: (r, None) when each of
        its KV heads serves r of its (consecutive) query heads, the usual split; else (1, the KV head of
        each query head, (nq,)), an uneven split (12 heads on 3 KV heads over tp 2: 4 and 2 on rank 0).
        Computed once per shard: every attention call of every round reads it."""
        (qa, qb), (ka, kb), rep = self.q_heads, self.kv_heads, self.num_rep
        counts = {min(qb, (g + 1) * rep) - max(qa, g * rep) for g in range(ka, kb)}
        if len(counts) == 1:
            return counts.pop(), None
        return 1, np.arange(qa, qb) // rep - ka

    def nbytes(self, bytes_per_element: int = 2) -> int:
        """Weight bytes this rank stores (bf16 on a CENT device)."""
        mats = (self.input_norm, self.wq, self.wk, self.wv, self.wo, self.post_norm,
                self.w_gate, self.w_up, self.w_down, *(self.qkv_bias or ()), *(self.qk_norms or ()),
                self.router, self.experts_gate, self.experts_up, self.experts_down, self.shared_gate, self.shared_up,
                self.shared_down, self.shared_expert_gate, self.attn_out_norm, self.mlp_out_norm)
        return sum(m.size for m in mats if m is not None) * bytes_per_element


def experts_of(cfg: ModelConfig, rank: int, tp: int) -> tuple[int, ...]:
    """The experts `rank` of a stage's `tp` devices holds: e with e mod tp == rank."""
    return tuple(range(rank, cfg.num_experts, tp))


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """Tensor parallelism needs whole query heads per device."""
    if cfg.num_heads % tp:
        raise ValueError(f"parallel.tp={tp} does not divide model.num_heads={cfg.num_heads} (full numerics split a "
                         f"block's heads over its devices): use a divisor of {cfg.num_heads} for tp, or --numerics off")


def head_ranges(cfg: ModelConfig, rank: int, tp: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(query heads, KV heads) of `rank`: query heads split evenly; the KV heads they read.

    With more ranks than KV heads (70B: 8 KV heads on tp 32) a KV head is
    replicated on every rank whose query heads use it.
    """
    check_tp(cfg, tp)
    per = cfg.num_heads // tp
    qa, qb = rank * per, (rank + 1) * per
    rep = cfg.num_rep
    return (qa, qb), (qa // rep, (qb - 1) // rep + 1)


def shard_layer(cfg: ModelConfig, w: LayerWeights, rank: int, tp: int) -> LayerShard:
    """Slice one block's weights for `rank` of `tp` (pure: views of w, no copies)."""
    hd = cfg.head_dim
    (qa, qb), (ka, kb) = head_ranges(cfg, rank, tp)
    da, db = split_bounds(cfg.hidden_size, tp)[rank]
    fa, fb = split_bounds(cfg.intermediate_size, tp)[rank]
    q_rows, kv_rows = slice(qa * hd, qb * hd), slice(ka * hd, kb * hd)
    bias = w.qkv_bias
    mlp: dict = dict(w_gate=None, w_up=None, w_down=None)
    if cfg.is_moe:  # whole experts on each rank, the router on all (the stacks are copies)
        mine = experts_of(cfg, rank, tp)
        mlp.update(experts=mine, router=w.router, experts_gate=w.experts_gate[list(mine)],
                   experts_up=w.experts_up[list(mine)], experts_down=w.experts_down[list(mine)])
        if cfg.shared_expert_intermediate_size:  # split by outputs as a dense MLP; its gate whole, as the router
            sa, sb = split_bounds(cfg.shared_expert_intermediate_size, tp)[rank]
            mlp.update(shared_gate=w.shared_gate[sa:sb], shared_up=w.shared_up[sa:sb], shared_down=w.shared_down[da:db],
                       shared_expert_gate=w.shared_expert_gate)
    else:
        mlp.update(w_gate=w.w_gate[fa:fb], w_up=w.w_up[fa:fb], w_down=w.w_down[da:db])
    return LayerShard(
        rank=rank, tp=tp, q_heads=(qa, qb), kv_heads=(ka, kb), num_rep=cfg.num_rep, input_norm=w.input_norm,
        wq=w.wq[q_rows], wk=w.wk[kv_rows], wv=w.wv[kv_rows],
        wo=w.wo[da:db], post_norm=w.post_norm, qk_norms=w.qk_norms, attn_out_norm=w.attn_out_norm,
        mlp_out_norm=w.mlp_out_norm,
        qkv_bias=None if bias is None else (bias[0][q_rows], bias[1][kv_rows], bias[2][kv_rows]), **mlp)


def shard_vocab(table: np.ndarray, rank: int, tp: int) -> np.ndarray:
    """Rows of an embedding / LM head table for `rank` (the LM head is split by outputs too)."""
    a, b = split_bounds(table.shape[0], tp)[rank]
    return table[a:b]


class ShardKV:
    """The K/V of one sequence for the KV heads a shard holds, one entry per resident layer.

    The paged accounting (block tables, capacity) lives in the device worker;
    this holds the values, grown by doubling.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        shape = (num_kv_heads, 16, head_dim)
        self.keys = [np.zeros(shape, F32) for _ in range(num_layers)]
        self.values = [np.zeros(shape, F32) for _ in range(num_layers)]

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v (kv, seq, hd) at start..; return all keys/values up to the end."""
        end = start + k.shape[1]
        cap = self.keys[layer].shape[1]
        if end > cap:
            new_cap = max(end, 2 * cap)
            for store in (self.keys, self.values):
                grown = np.zeros((store[layer].shape[0], new_cap, store[layer].shape[2]), F32)
                grown[:, :cap] = store[layer]
                store[layer] = grown
        self.keys[layer][:, start:end] = k
        self.values[layer][:, start:end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]


def shard_attention(cfg: ModelConfig, s: LayerShard, h: np.ndarray, start: int, kv: ShardKV,
                    layer: int, window: int, local_rope: bool = False) -> np.ndarray:
    """This rank's attention heads for normed input h (seq, D); returns (seq, nq*hd). `layer` indexes
    `kv` (the blocks resident here); `window` is the block's own (`ModelConfig.block_window`; 0: none),
    and so is `local_rope` (`ModelConfig.is_local_rope`: Gemma 3's sliding blocks' rotary table)."""
    q, k, v = project_qkv(cfg, h, s.wq, s.wk, s.wv, start, s.qkv_bias, s.qk_norms, local_rope)  # (nq | nkv, seq, hd)
    return shard_attend(cfg, s, q, k, v, start, kv, layer, window)


def shard_attend(cfg: ModelConfig, s: LayerShard, q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int,
                 kv: ShardKV, layer: int, window: int) -> np.ndarray:
    """`shard_attention` of one sequence's q (nq, seq, hd), k and v (nkv, seq, hd), projected and rotated
    (`project_qkv`, or a round's single tokens at once: `project_qkv_rows`): store k, v; attend."""
    seq, hd = q.shape[1], cfg.head_dim
    keys, values = kv.write(layer, k, v, start)  # (nkv, L, hd)
    r, kv_of_q = s.query_groups
    if kv_of_q is not None:
        keys, values = keys[kv_of_q], values[kv_of_q]  # (nq, L, hd): a copy per query head
    # a group's r query heads read its KV head in place, broadcast (copying the KV per query head
    # was a third of a long context's round); each head's matmul is the one a copy would get
    q = q.reshape(-1, r, seq, hd)  # (groups, r, seq, hd)
    scores = softcap(q @ keys[:, None].transpose(0, 1, 3, 2) * attention_scale(cfg),
                     cfg.attn_logit_softcapping)  # (groups, r, seq, L)
    if hides_any(start, seq, keys.shape[1], window):
        scores = np.where(hidden_keys(start, seq, keys.shape[1], window), F32(-np.inf), scores)
    out = softmax(scores, axis=-1).astype(F32, copy=False) @ values[:, None]  # (groups, r, seq, hd)
    return out.reshape(-1, seq, hd).transpose(1, 0, 2).reshape(seq, s.num_q_heads * hd)


def tp_block_forward(cfg: ModelConfig, s: LayerShard, x: np.ndarray, start: int, kv: ShardKV,
                     layer: int, all_gather: AllGather) -> np.ndarray:
    """One block on rank s.rank; x (seq, D) is replicated on every rank, and so is the result.
    `layer` is the model's block index: it indexes `kv` and sets the block's window and rope."""
    h = model_norm(cfg, x, s.input_norm)
    attn = all_gather("attn", shard_attention(cfg, s, h, start, kv, layer, cfg.block_window(layer),
                                              cfg.is_local_rope(layer)))  # (seq, H*hd)
    x = x + out_norm(cfg, all_gather("o_proj", linear(attn, s.wo)), s.attn_out_norm)  # (seq, D)
    h = model_norm(cfg, x, s.post_norm)
    if cfg.is_moe:
        act = shared_act(cfg, s, h)
        if act is not None:
            act = all_gather("shared_act", act)  # (seq, F_s)
        local, experts = moe_local(cfg, s, h, act)
        return x + moe_finish(cfg, s, all_gather("experts", local), experts, h)
    act = gated(h, s.w_gate, s.w_up, cfg.hidden_act)  # (seq, F_r)
    act = all_gather("act", act)  # (seq, F)
    return x + out_norm(cfg, all_gather("down", linear(act, s.w_down)), s.mlp_out_norm)  # (seq, D)


def shared_act(cfg: ModelConfig, s: LayerShard, h: np.ndarray) -> np.ndarray | None:
    """This rank's silu(gate) * up slice of a shared expert on normed input h (seq, D): (seq, F_s_r),
    all-gathered before the down; None when the model has no shared expert."""
    if not cfg.shared_expert_intermediate_size:
        return None
    return gated(h, s.shared_gate, s.shared_up)


def moe_local(cfg: ModelConfig, s: LayerShard, h: np.ndarray,
              act: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """This rank's experts on normed input h (seq, D): route every token (the router is on every
    rank, h the same on each), run the experts held here for their tokens, and with a shared expert
    its down slice on the gathered silu(gate) * up `act` (seq, F_s). Returns (their weighted outputs
    flat, expert after expert, then the shared down slice (seq x D_r), as a (1, n) row for the
    combine's all-gather; every token's experts (seq, k))."""
    experts, weights = route(h, s.router, cfg.num_experts_per_tok, cfg.norm_topk_prob)
    parts = expert_outputs(h, experts, weights, s.experts, s.experts_gate, s.experts_up, s.experts_down)
    flat = [y.ravel() for _, _, y in parts]
    if act is not None:
        flat.append(linear(act, s.shared_down).ravel())  # (seq, D_r)
    flat = np.concatenate(flat) if flat else np.zeros(0, np.float32)
    return flat.reshape(1, -1), experts


def moe_combine(cfg: ModelConfig, tp: int, gathered: np.ndarray,
                experts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Every rank's `moe_local` rows side by side, rank after rank (1, total): each rank's experts'
    outputs cut out again (every rank knows the routing, so how many rows each expert sent), then
    added in expert order (seq, D); and a shared expert's down slices put side by side, its output
    before the gate (seq, D), or None without one."""
    d, at, parts = cfg.hidden_size, 0, []
    seq, flat = experts.shape[0], gathered.reshape(-1)
    has_shared = bool(cfg.shared_expert_intermediate_size)
    shared = np.zeros((seq, d), np.float32) if has_shared else None
    for r in range(tp):
        for e in experts_of(cfg, r, tp):
            rows, _ = expert_rows(experts, e)
            n = rows.size * d
            if n:
                parts.append((e, rows, flat[at:at + n].reshape(rows.size, d)))
                at += n
        if has_shared:
            da, db = split_bounds(d, tp)[r]
            shared[:, da:db] = flat[at:at + seq * (db - da)].reshape(seq, db - da)
            at += seq * (db - da)
    assert at == flat.size, (at, flat.size)
    return combine((seq, d), parts), shared


def moe_finish(cfg: ModelConfig, s: LayerShard, gathered: np.ndarray, experts: np.ndarray, h: np.ndarray) -> np.ndarray:
    """A rank's MoE output (seq, D) after the experts' all-gather: the routed experts' combined sum, plus
    a shared expert's gathered output scaled by sigmoid(h @ gate^T) (the gate is on every rank), added
    after the routed sum as the reference model adds it (`cent_serve.model.layers.shared_expert`)."""
    out, shared = moe_combine(cfg, s.tp, gathered, experts)
    if shared is not None:
        out = out + shared_gate_scale(h, s.shared_expert_gate) * shared
    return out
