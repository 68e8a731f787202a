"""Llama weights: the `LlamaWeights` structure and seeded random weights for presets.

Weights live in `LlamaWeights` under Hugging Face's tensor names' structure,
as float32 compute arrays whose values are exactly representable in the
storage dtype (bf16 by default, CENT's data type). A Hugging Face safetensors
checkpoint's are read (and saved) by `hf_checkpoint`, whose `load_weights` takes a
checkpoint's when one is set, else `random_weights`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cent_serve.config import ModelConfig

F32 = np.float32


@dataclass
class LayerWeights:
    """One transformer block; matrices in (out, in) layout like torch.nn.Linear."""

    input_norm: np.ndarray  # (D,)
    wq: np.ndarray  # (H*hd, D)
    wk: np.ndarray  # (Hkv*hd, D)
    wv: np.ndarray  # (Hkv*hd, D)
    wo: np.ndarray  # (D, H*hd)
    post_norm: np.ndarray  # (D,)
    w_gate: np.ndarray | None  # (F, D); None in a mixture of experts
    w_up: np.ndarray | None  # (F, D)
    w_down: np.ndarray | None  # (D, F)
    bq: np.ndarray | None = None  # (H*hd,) q/k/v biases (model.attention_bias)
    bk: np.ndarray | None = None  # (Hkv*hd,)
    bv: np.ndarray | None = None  # (Hkv*hd,)
    q_norm: np.ndarray | None = None  # (hd,) per-head RMSNorm weights of q and k (model.qk_norm)
    k_norm: np.ndarray | None = None  # (hd,)
    router: np.ndarray | None = None  # (E, D) a mixture of experts' router (model.num_experts)
    experts_gate: np.ndarray | None = None  # (E, F_e, D) every expert's gate, up and down, stacked
    experts_up: np.ndarray | None = None  # (E, F_e, D)
    experts_down: np.ndarray | None = None  # (E, D, F_e)
    shared_gate: np.ndarray | None = None  # (F_s, D) the shared expert's gate, up and down (Qwen 2 MoE)
    shared_up: np.ndarray | None = None  # (F_s, D)
    shared_down: np.ndarray | None = None  # (D, F_s)
    shared_expert_gate: np.ndarray | None = None  # (1, D) its output's sigmoid gate
    attn_out_norm: np.ndarray | None = None  # (D,) norms of the attention's and the MLP's outputs (Gemma 2:
    mlp_out_norm: np.ndarray | None = None  # (D,) model.sandwich_norms)

    @property
    def qkv_bias(self) -> tuple | None:
        return None if self.bq is None else (self.bq, self.bk, self.bv)

    @property
    def qk_norms(self) -> tuple | None:
        return None if self.q_norm is None else (self.q_norm, self.k_norm)


@dataclass
class LlamaWeights:
    """All weights of a Llama model (float32 compute copies)."""

    embed: np.ndarray  # (vocab, D)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (D,)
    lm_head: np.ndarray  # (vocab, D); the embedding itself when tied
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def bf16() -> type:
    """ml_dtypes.bfloat16, imported on first use: the import costs ~0.6 CPU-s in every process
    (each device actor), and only bfloat16 checkpoints need it (random weights round with
    `round_to_bfloat16`)."""
    import ml_dtypes

    return ml_dtypes.bfloat16


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even; a NaN to the quiet NaN of its
    sign) and given back as float32: bit for bit `x.astype(ml_dtypes.bfloat16).astype(float32)`
    (every one of the 2^32 float32 patterns was compared), without importing ml_dtypes, which
    costs a device actor's start-up ~0.6 CPU-s when it only rounds its random weights. Other dtypes
    than float32 go through ml_dtypes (float64 rounded once, not twice)."""
    if x.dtype != F32:
        return x.astype(bf16()).astype(F32)
    u = np.ascontiguousarray(x).view(np.uint32)
    r = u >> np.uint32(16)
    r &= np.uint32(1)  # the lowest bit kept: a tie rounds to make it 0
    r += np.uint32(0x7FFF)
    r += u  # a carry out of the low half rounds up (to inf past the largest finite value)
    r &= np.uint32(0xFFFF0000)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = (u[nan] & np.uint32(0x80000000)) | np.uint32(0x7FC00000)
    return r.view(F32)


def _to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to the storage dtype and back to float32 compute values."""
    if dtype == "bfloat16":
        return round_to_bfloat16(x)
    return x.astype(F32)


def random_weights(cfg: ModelConfig) -> LlamaWeights:
    """Seeded random weights: same cfg.seed, same weights, on any machine.

    Uses numpy's PCG64 generator (platform-independent stream); matrices are
    N(0, 1/fan_in) so activations stay O(1) through many layers, norms are 1.
    """
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim

    def mat(out_dim: int, in_dim: int) -> np.ndarray:
        w = rng.standard_normal((out_dim, in_dim), dtype=F32) * F32(1.0 / np.sqrt(in_dim))
        return _to_storage(w, cfg.weight_dtype)

    def norm(n: int = d) -> np.ndarray:  # an effective weight near 1 (Gemma's norms add 1 to theirs)
        return _to_storage((1.0 - cfg.norm_offset) + 0.1 * rng.standard_normal(n, dtype=F32), cfg.weight_dtype)

    def bias(n: int) -> np.ndarray:
        return _to_storage(0.1 * rng.standard_normal(n, dtype=F32), cfg.weight_dtype)

    embed = _to_storage(rng.standard_normal((cfg.vocab_size, d), dtype=F32), cfg.weight_dtype)
    layers = []
    for _ in range(cfg.num_layers):
        attn = dict(input_norm=norm(), wq=mat(cfg.num_heads * hd, d), wk=mat(cfg.num_kv_heads * hd, d),
                    wv=mat(cfg.num_kv_heads * hd, d), wo=mat(d, cfg.num_heads * hd), post_norm=norm())
        if cfg.is_moe:
            fe, n = cfg.expert_size, cfg.num_experts
            layers.append(LayerWeights(
                **attn, w_gate=None, w_up=None, w_down=None, router=mat(n, d),
                experts_gate=np.stack([mat(fe, d) for _ in range(n)]),
                experts_up=np.stack([mat(fe, d) for _ in range(n)]),
                experts_down=np.stack([mat(d, fe) for _ in range(n)])))
            if cfg.shared_expert_intermediate_size:
                fs = cfg.shared_expert_intermediate_size
                layers[-1].shared_gate, layers[-1].shared_up, layers[-1].shared_down = mat(fs, d), mat(fs, d), mat(d, fs)
                layers[-1].shared_expert_gate = mat(1, d)
        else:
            layers.append(LayerWeights(**attn, w_gate=mat(f, d), w_up=mat(f, d), w_down=mat(d, f)))
        if cfg.attention_bias:
            layers[-1].bq, layers[-1].bk, layers[-1].bv = (bias(cfg.q_size), bias(cfg.kv_size), bias(cfg.kv_size))
        if cfg.qk_norm:
            layers[-1].q_norm, layers[-1].k_norm = norm(hd), norm(hd)
        if cfg.sandwich_norms:
            layers[-1].attn_out_norm, layers[-1].mlp_out_norm = norm(), norm()
    final_norm = norm()
    lm_head = embed if cfg.tie_word_embeddings else mat(cfg.vocab_size, d)
    return LlamaWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)
