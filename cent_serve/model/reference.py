"""The single-process Llama reference model (numpy, float32 math).

This is the ground truth that sharded execution over emulated devices must
reproduce. It knows nothing of devices or time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.model.hf_checkpoint import load_weights
from cent_serve.model.layers import (attention, attention_scale, embed_rows, linear, model_norm, moe, out_norm,
                                     project_qkv, shared_expert, softcap, swiglu)
from cent_serve.model.weights import LayerWeights, LlamaWeights

F32 = np.float32


@dataclass
class KVCache:
    """Per-layer keys and values of one sequence, grown as tokens arrive.

    Arrays are (kv_heads, capacity, head_dim); `length` tokens are valid.
    Capacity doubles when full, so appends are amortised O(1).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    length: int = 0
    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            shape = (self.num_kv_heads, 16, self.head_dim)
            self.keys = [np.zeros(shape, F32) for _ in range(self.num_layers)]
            self.values = [np.zeros(shape, F32) for _ in range(self.num_layers)]

    @classmethod
    def for_model(cls, cfg: ModelConfig, num_layers: int | None = None) -> "KVCache":
        return cls(num_layers if num_layers is not None else cfg.num_layers, cfg.num_kv_heads,
                   cfg.head_dim)

    def append(self, layer: int, k: np.ndarray, v: np.ndarray, start: int) -> None:
        """Store k, v (kv_heads, seq, head_dim) at positions start .. start+seq-1."""
        end = start + k.shape[1]
        cap = self.keys[layer].shape[1]
        if end > cap:
            new_cap = max(end, 2 * cap)
            for store in (self.keys, self.values):
                grown = np.zeros((self.num_kv_heads, new_cap, self.head_dim), F32)
                grown[:, :cap] = store[layer]
                store[layer] = grown
        self.keys[layer][:, start:end] = k
        self.values[layer][:, start:end] = v

    def view(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def truncate(self, length: int) -> None:
        assert 0 <= length <= self.length, (length, self.length)
        self.length = length


def block_forward(cfg: ModelConfig, w: LayerWeights, x: np.ndarray, start: int,
                  cache: KVCache, layer: int) -> np.ndarray:
    """One decoder block on x (seq, D) at positions start.. (no sequence-length change).

    The attention half works on whatever heads `w` holds (a tensor-parallel
    shard holds a slice of heads), so shards call this same math.
    """
    seq = x.shape[0]
    hd = cfg.head_dim
    h = model_norm(cfg, x, w.input_norm)  # (seq, D)
    attn = attention_part(cfg, w, h, start, cache, layer)  # (seq, D)
    x = x + out_norm(cfg, attn, w.attn_out_norm)
    h = model_norm(cfg, x, w.post_norm)
    assert h.shape == (seq, cfg.hidden_size) and hd > 0
    return x + out_norm(cfg, mlp(cfg, w, h), w.mlp_out_norm)


def mlp(cfg: ModelConfig, w: LayerWeights, h: np.ndarray) -> np.ndarray:
    """The block's MLP on normed input h (seq, D): SwiGLU (Gemma's GeGLU: `ModelConfig.hidden_act`), or a
    mixture of SwiGLU experts (plus a gated shared expert, Qwen 2 MoE: the routed experts' sum, then the
    shared expert's output added)."""
    if cfg.is_moe:
        out = moe(h, w.router, cfg.num_experts_per_tok, cfg.norm_topk_prob, w.experts_gate, w.experts_up,
                  w.experts_down)
        if cfg.shared_expert_intermediate_size:
            out = out + shared_expert(h, w.shared_gate, w.shared_up, w.shared_down, w.shared_expert_gate)
        return out
    return swiglu(h, w.w_gate, w.w_up, w.w_down, cfg.hidden_act)


def attention_part(cfg: ModelConfig, w: LayerWeights, h: np.ndarray, start: int,
                   cache: KVCache, layer: int) -> np.ndarray:
    """Attention of normed input h (seq, D) using the heads present in w; returns h @ Wo^T. `layer` is
    the model's block index: it sets the block's window (`ModelConfig.block_window`) and rotary table
    (`ModelConfig.is_local_rope`)."""
    seq = h.shape[0]
    q, k, v = project_qkv(cfg, h, w.wq, w.wk, w.wv, start, w.qkv_bias, w.qk_norms,
                          cfg.is_local_rope(layer))  # (heads | kv_heads, seq, hd)
    cache.append(layer, k, v, start)
    keys, values = cache.view(layer, start + seq)
    out = attention(q, keys, values, start, cfg.block_window(layer), attention_scale(cfg),
                    cfg.attn_logit_softcapping)  # (heads, seq, hd)
    return linear(out.transpose(1, 0, 2).reshape(seq, -1), w.wo)


class LlamaModel:
    """Llama forward for prefill and decode with a KV cache.

    `forward(ids, cache)` runs the tokens at positions cache.length.. and
    returns their logits (seq, vocab); the cache grows by len(ids).
    """

    def __init__(self, cfg: ModelConfig, weights: LlamaWeights | None = None) -> None:
        self.cfg = cfg
        self.weights = weights if weights is not None else load_weights(cfg)

    def new_cache(self) -> KVCache:
        return KVCache.for_model(self.cfg)

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise ValueError(f"token id {int(ids.max() if ids.max() >= self.cfg.vocab_size else ids.min())} "
                             f"is outside the vocabulary [0, {self.cfg.vocab_size})")
        return embed_rows(self.cfg, self.weights.embed, ids)  # (seq, D)

    def head(self, x: np.ndarray) -> np.ndarray:
        h = model_norm(self.cfg, x, self.weights.final_norm)
        return softcap(linear(h, self.weights.lm_head), self.cfg.final_logit_softcapping)  # (seq, vocab)

    def forward(self, token_ids, cache: KVCache) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        start = cache.length
        if start + ids.size > self.cfg.max_seq_len:
            raise ValueError(f"context of {start + ids.size} tokens exceeds model.max_seq_len="
                             f"{self.cfg.max_seq_len}: shorten the prompt or max_tokens")
        x = self.embed(ids)
        for i, layer in enumerate(self.weights.layers):
            x = block_forward(self.cfg, layer, x, start, cache, i)
        cache.length = start + ids.size
        return self.head(x)
