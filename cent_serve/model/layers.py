"""Pure numpy building blocks of a Llama decoder, in float32.

These functions know nothing of devices: the single-process reference model
calls them on whole weights, and a device shard calls the same functions on
its slice of the weights, which is why sharded and reference results agree.
"""
from __future__ import annotations

import math

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.model.rope import apply_rope, rope_tables

F32 = np.float32


SWAPPED_MAX_ROWS = 32
"""Rows up to which `linear` multiplies as (w @ x.T).T: measured on the project's 2-core host (OpenBLAS 0.3.31,
its SkylakeX kernels), the tiny model's gate (688 x 256) took 180-210 us for 2 to 8 rows as x @ w.T and 40-120 us
so, 4x sooner at 16 rows, even at 48 to 64, slower from 256 rows (and the same at 1: both are a gemv)."""


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (seq, in) @ w.T (seq, out), w a weight in (out, in) layout: every projection of the model. Up to
    `SWAPPED_MAX_ROWS` rows (a decode round's few sequences) it computes (w @ x.T).T, which OpenBLAS runs as
    the same sgemm with its two operands swapped: each output the same products summed in the same order,
    the same floats on the OpenBLAS measured (benchmarks/numerics_speed.py compares outputs), several times
    sooner.
    Returns a C-contiguous array, as x @ w.T, so whatever reads it next (a matmul, a reduction) sees the
    layout it always saw."""
    if 1 < x.shape[0] <= SWAPPED_MAX_ROWS and x.flags.c_contiguous and w.flags.c_contiguous:
        return np.ascontiguousarray((w @ x.T).T)
    return x @ w.T


def linear_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (n, in) @ w.T (n, out), each row multiplied as `linear` multiplies a one-row x (a gemv: numpy's matmul
    runs one a row of the stack (n, 1, in)), in one call: the same floats as n calls, where `linear` of the n
    rows (a gemm) sums in another order on the OpenBLAS measured (0.3.31), moving last bits."""
    return (x[:, None, :] @ w.T)[:, 0]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, offset: float = 0.0) -> np.ndarray:
    """Llama RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight; with `offset` 1, Gemma's
    x / sqrt(mean(x^2) + eps) * (1 + weight), the sum taken in float32 at each call as transformers'
    GemmaRMSNorm and Gemma2RMSNorm take it (`output * (1.0 + self.weight.float())`, modeling_gemma.py).
    x float32: every block runs this twice a round, where np.mean's Python wrapper and three temporaries as
    large as x cost more than the arithmetic. The result is the one array made (the squares, then the
    quotient, then the product in it); the mean is np.mean's own sum (np.add.reduce) divided by the count in
    float32, where np.mean divides in float64 and rounds: the same float (a float64 quotient of two float32s
    rounds to the float32 one, 53 >= 2 x 24 + 2 bits). Returns float32 whatever x's dtype: another x is taken
    as its float32 values first (a float32 x is used as it is, not copied)."""
    x = x.astype(F32, copy=False)  # (..., D)
    out = np.square(x)
    var = np.add.reduce(out, axis=-1, keepdims=True)  # (..., 1)
    var /= F32(x.shape[-1])
    var += F32(eps)
    np.divide(x, np.sqrt(var, out=var), out=out)
    out *= (F32(offset) + weight).astype(F32) if offset else weight
    return out


def model_norm(cfg: ModelConfig, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The model's RMSNorm (its eps and weight offset) of x over the last axis: every block norm and the
    final norm of the reference model, a tensor-parallel rank and the device worker."""
    return rms_norm(x, weight, cfg.rms_norm_eps, cfg.norm_offset)


def out_norm(cfg: ModelConfig, y: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """y (seq, D), the attention's or the MLP's output, through its own norm before the residual add
    (Gemma 2's post_attention_layernorm and post_feedforward_layernorm: `ModelConfig.sandwich_norms`,
    Gemma2DecoderLayer in modeling_gemma2.py); y as it is without one. A tensor-parallel rank and the
    device worker apply it after the all-gather that makes y whole."""
    return y if weight is None else model_norm(cfg, y, weight)


def embed_rows(cfg: ModelConfig, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The embedding rows (seq, D) float32 of token `ids`, times sqrt(D) for Gemma. transformers'
    GemmaTextScaledWordEmbedding multiplies by its normalizer `hidden_size ** 0.5` cast to the weights'
    dtype (modeling_gemma.py): the compute dtype, float32 here (a bfloat16 run of transformers rounds
    sqrt(3072) = 55.43 to 55.5; the fixtures run float32, as this model computes)."""
    rows = table[ids].astype(F32)
    return rows * F32(cfg.hidden_size ** 0.5) if cfg.scale_embeddings else rows


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum over `axis` of float x, in x's dtype: a new array (x is left as it is), the
    only one made: the shift, exp and division work in it. Every sequence's attention runs this on its
    (heads, seq, context) scores every round, where each temporary was an allocation and a pass more;
    each step is the same ufunc on the same dtypes, so the same floats."""
    e = np.subtract(x, np.max(x, axis=axis, keepdims=True))
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def attention_scale(cfg: ModelConfig) -> np.float32:
    """What q.K^T is multiplied by: head_dim^-0.5, or Gemma 2's query_pre_attn_scalar^-0.5 (transformers'
    Gemma2Attention `self.scaling = config.query_pre_attn_scalar**-0.5`, modeling_gemma2.py)."""
    if cfg.query_pre_attn_scalar:
        return F32(cfg.query_pre_attn_scalar ** -0.5)
    return F32(1.0 / np.sqrt(cfg.head_dim))


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Gemma 2's soft-capping tanh(x / cap) * cap in float32 (transformers' eager_attention_forward for
    the scores, Gemma2ForCausalLM for the logits, modeling_gemma2.py); x unchanged for cap 0."""
    if not cap:
        return x
    return np.tanh(x / F32(cap)) * F32(cap)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_start: int, window: int = 0,
              scale: np.float32 | None = None, cap: float = 0.0) -> np.ndarray:
    """Causal grouped-query attention for one sequence.

    q: (heads, seq_q, head_dim) at positions q_start .. q_start + seq_q - 1;
    k, v: (kv_heads, seq_k, head_dim) for positions 0 .. seq_k - 1, where
    heads is a multiple of kv_heads (each KV head serves heads/kv_heads
    consecutive query heads, as Hugging Face's repeat_kv does). With `window`,
    a query sees only keys less than `window` positions behind it (Mistral's
    sliding window). `scale` multiplies the scores (head_dim^-0.5 by default: `attention_scale`),
    `cap` soft-caps them before the mask (Gemma 2). Returns (heads, seq_q, head_dim).
    """
    heads, seq_q, head_dim = q.shape
    kv_heads, seq_k, _ = k.shape
    rep = heads // kv_heads
    qg = q.reshape(kv_heads, rep * seq_q, head_dim)  # (kv_heads, rep*seq_q, head_dim)
    scale = F32(1.0 / np.sqrt(head_dim)) if scale is None else scale
    scores = softcap(qg @ k.transpose(0, 2, 1) * scale, cap)  # (kv_heads, rep*seq_q, seq_k)
    scores = scores.reshape(kv_heads, rep, seq_q, seq_k)
    scores = np.where(hidden_keys(q_start, seq_q, seq_k, window), F32(-np.inf), scores)
    probs = softmax(scores, axis=-1).astype(F32, copy=False).reshape(kv_heads, rep * seq_q, seq_k)
    out = probs @ v  # (kv_heads, rep*seq_q, head_dim)
    return out.reshape(heads, seq_q, head_dim)


def hidden_keys(q_start: int, seq_q: int, seq_k: int, window: int = 0) -> np.ndarray:
    """(seq_q, seq_k) bool: the keys a query may not see: future ones, and with `window` those
    `window` or more positions behind it."""
    q_pos = q_start + np.arange(seq_q)[:, None]
    k_pos = np.arange(seq_k)[None, :]
    hidden = k_pos > q_pos
    if window:
        hidden |= q_pos - k_pos >= window
    return hidden


def hides_any(q_start: int, seq_q: int, seq_k: int, window: int = 0) -> bool:
    """Whether `hidden_keys` hides any key: not for one query at the last key within the window
    (a decode step, or a prompt token by token), whose mask a caller may skip."""
    return seq_k > q_start + 1 or bool(window) and q_start + seq_q - 1 >= window


def project_qkv(cfg: ModelConfig, h: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, start: int,
                bias: tuple | None = None, qk_norm: tuple | None = None,
                local_rope: bool = False) -> tuple[np.ndarray, ...]:
    """q (heads, seq, hd), k and v (kv_heads, seq, hd) of normed input h (seq, D) for whatever heads
    the weights hold, at positions start..: the projections (+ biases, Qwen 2.5), a per-head RMSNorm
    of q and k (Qwen 3; Gemma 3's weighting by 1 + w, the model's norm offset: Gemma3RMSNorm q_norm and
    k_norm, modeling_gemma3.py), then the rotary embedding of q and k (`local_rope`: the block's own,
    `ModelConfig.is_local_rope`). The reference model and every tensor-parallel shard call this."""
    cos, sin = rope_tables(cfg, start, h.shape[0], local_rope)
    return _heads(cfg, (linear(h, wq), linear(h, wk), linear(h, wv)), bias, qk_norm, cos, sin)


def project_qkv_rows(cfg: ModelConfig, h: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray,
                     starts: list[int], bias: tuple | None = None, qk_norm: tuple | None = None,
                     local_rope: bool = False) -> tuple[np.ndarray, ...]:
    """`project_qkv` of each row of h (n, D) as a sequence's one token at its position in `starts` (a decode
    round's, or prompts token by token): q (heads, n, hd), k and v, row i what project_qkv(h[i:i + 1], ...,
    starts[i], ...) gives, the same floats, in one call where a device's block made one a sequence (each
    rotated by its own pass's rows: a dynamic rope's table is its reach's)."""
    cos, sin = (np.concatenate(t) for t in zip(*(rope_tables(cfg, p, 1, local_rope) for p in starts)))
    return _heads(cfg, (linear_rows(h, wq), linear_rows(h, wk), linear_rows(h, wv)), bias, qk_norm, cos, sin)


def _heads(cfg: ModelConfig, qkv: tuple[np.ndarray, ...], bias: tuple | None, qk_norm: tuple | None,
           cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, ...]:
    """`project_qkv` after its projections q, k, v (seq, heads x hd): biases, heads, norms, rotation."""
    q, k, v = qkv
    seq, hd = q.shape[0], cfg.head_dim
    if bias is not None:
        q, k, v = q + bias[0], k + bias[1], v + bias[2]
    q = q.reshape(seq, -1, hd).transpose(1, 0, 2)
    k = k.reshape(seq, -1, hd).transpose(1, 0, 2)
    v = v.reshape(seq, -1, hd).transpose(1, 0, 2)
    if qk_norm is not None:
        q, k = model_norm(cfg, q, qk_norm[0]), model_norm(cfg, k, qk_norm[1])
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1.0) + np.exp(-x))


_GELU_TANH_C = F32(math.sqrt(2.0 / math.pi))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, transformers' `gelu_pytorch_tanh` (torch's gelu(approximate="tanh"),
    activations.py): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in float32."""
    inner = _GELU_TANH_C * (x + F32(0.044715) * x * x * x)
    return F32(0.5) * x * (F32(1.0) + np.tanh(inner))


ACTIVATION_FNS = {"silu": silu, "gelu_pytorch_tanh": gelu_tanh}
"""`ModelConfig.hidden_act` -> the function: transformers' ACT2FN of the same name."""


def gated(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, act: str = "silu") -> np.ndarray:
    """A gated MLP's activation act(gate(x)) * up(x) (seq, F), before its down: SwiGLU's silu, or
    Gemma's GeGLU's gelu_pytorch_tanh (`ModelConfig.hidden_act`); weights in (out, in) layout. A
    tensor-parallel rank runs it on its rows of gate and up, and gathers the slices."""
    return ACTIVATION_FNS[act](linear(x, w_gate)) * linear(x, w_up)


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, act: str = "silu") -> np.ndarray:
    """Llama MLP: down(silu(gate(x)) * up(x)), or with `act` Gemma's GeGLU; weights in (out, in) layout."""
    return linear(gated(x, w_gate, w_up, act), w_down)


def shared_expert(h: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray,
                  gate: np.ndarray) -> np.ndarray:
    """Qwen 2 MoE's shared expert on normed input h (seq, D), as transformers' sparse block runs it beside
    the routed experts: a SwiGLU every token goes through, scaled by sigmoid(h @ gate^T), gate (1, D)."""
    return shared_gate_scale(h, gate) * swiglu(h, w_gate, w_up, w_down)  # (seq, D)


def shared_gate_scale(h: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """A shared expert's scale sigmoid(h @ gate^T) (seq, 1) on normed input h (seq, D), gate (1, D): the
    reference model and a tensor-parallel stage's ranks (which gather the SwiGLU's slices) apply it."""
    return F32(1.0) / (F32(1.0) + np.exp(-linear(h, gate)))


def route(h: np.ndarray, router: np.ndarray, k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """A mixture of experts' router on normed input h (seq, D), as transformers' Mixtral and Qwen 3
    MoE routers do it: softmax over the router's logits (seq, E), the k largest probabilities
    (ties to the lower expert), divided by their sum when `normalize`. Returns (experts (seq, k)
    int64, weights (seq, k) float32)."""
    probs = softmax(linear(h, router), axis=-1).astype(F32, copy=False)  # (seq, E)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # (seq, k)
    weights = np.take_along_axis(probs, top, axis=-1)
    if normalize:
        weights = (weights / weights.sum(axis=-1, keepdims=True)).astype(F32)
    return top, weights


def expert_rows(experts: np.ndarray, e: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, slots): the tokens that chose expert e, ascending, and where in their top k."""
    return np.nonzero(experts == e)


def expert_outputs(h: np.ndarray, experts: np.ndarray, weights: np.ndarray, expert_ids,
                   gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The weighted outputs of the experts `expert_ids` (ascending; their stacked weights gate, up
    (n, F_e, D) and down (n, D, F_e)) for the tokens routed to them: [(expert, rows, (len(rows), D))],
    an expert no token chose left out. Each expert runs only its tokens."""
    out = []
    for j, e in enumerate(expert_ids):
        rows, slot = expert_rows(experts, e)
        if rows.size:
            x = h[rows]
            y = swiglu(x, gate[j], up[j], down[j])  # (tokens, D)
            out.append((e, rows, y * weights[rows, slot][:, None]))
    return out


def combine(shape: tuple[int, int], outputs: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Add the experts' outputs into a (seq, D) sum in expert order, one expert after the other, each
    into its tokens' rows (transformers adds them the same way): the same floats however the experts
    were spread."""
    total = np.zeros(shape, F32)
    for _, rows, y in sorted(outputs, key=lambda part: part[0]):
        total[rows] += y
    return total


def moe(h: np.ndarray, router: np.ndarray, k: int, normalize: bool, gate: np.ndarray, up: np.ndarray,
        down: np.ndarray) -> np.ndarray:
    """A mixture-of-experts MLP on normed input h (seq, D): route, run each token's k experts, add
    their weighted outputs."""
    experts, weights = route(h, router, k, normalize)
    return combine(h.shape, expert_outputs(h, experts, weights, range(gate.shape[0]), gate, up, down))
