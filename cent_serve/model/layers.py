"""Pure numpy building blocks of a Llama decoder, in float32.

These functions know nothing of devices: the single-process reference model
calls them on whole weights, and a device shard calls the same functions on
its slice of the weights, which is why sharded and reference results agree.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import threading
from collections import OrderedDict

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.config.model import rope_numerics_refusal

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


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, offset: float = 0.0) -> np.ndarray:
    """Llama RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight; with `offset` 1, Gemma's
    x / sqrt(mean(x^2) + eps) * (1 + weight), the sum taken in float32 at each call as transformers'
    GemmaRMSNorm and Gemma2RMSNorm take it (`output * (1.0 + self.weight.float())`, modeling_gemma.py)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)  # (..., 1)
    scale = (F32(offset) + weight).astype(F32) if offset else weight
    return (x / np.sqrt(var + F32(eps))).astype(F32) * scale


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


def _tables(positions: np.ndarray, inv_freq: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin as Hugging Face's rotary embedding builds them: freqs = positions x inv_freq,
    emb = concat(freqs, freqs) (the two halves of a head share frequencies: the rotate-half
    layout), both scaled by the attention factor. Returns two (seq, rotary_dim) float32 arrays."""
    freqs = positions.astype(F32)[:, None] * inv_freq[None, :]  # (seq, rotary_dim/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (seq, rotary_dim)
    cos, sin = np.cos(emb).astype(F32), np.sin(emb).astype(F32)
    if scale != 1.0:
        cos, sin = cos * F32(scale), sin * F32(scale)
    return cos, sin


def rope_inv_freq(cfg: ModelConfig, seq_len: int, local: bool = False) -> tuple[np.ndarray, float]:
    """(inverse frequencies (rotary_dim/2,) float32, attention factor) of the model's rotary
    embedding for a forward pass reaching `seq_len` positions (rotary_dim: head_dim, or its share
    `partial_rotary_factor`, whose dimensions every scaling divides, as transformers'). The scalings, as transformers
    defines them (`modeling_rope_utils`): `linear` divides every frequency by the factor;
    `dynamic` (NTK) raises the base once the context passes the original one; `yarn` blends
    interpolated and original frequencies over a ramp of dimensions and scales cos / sin;
    `llama3` divides the low frequencies by the factor, keeps the high ones and blends between;
    `longrope` (Phi-3's) divides each by a short or a long factor of its own (`_longrope`). With `local`, a
    Gemma 3 sliding block's: base `rope_local_theta`, unscaled (transformers' Gemma3RotaryEmbedding builds
    one table a layer type, the sliding_attention one from rope_parameters["sliding_attention"], its
    rope_type default: configuration_gemma3.py `convert_rope_params_to_dict`, modeling_gemma3.py)."""
    if local:
        return _inv_freq(cfg.rotary_dim, cfg.rope_local_theta)[1], 1.0
    why = rope_numerics_refusal(cfg)
    if why:
        raise ValueError(why)
    dim, base, kind, factor = cfg.rotary_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor
    original = cfg.rope_original_max_position or cfg.max_seq_len
    if kind == "dynamic":
        seq_len = max(seq_len, original)
        base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    powers, inv_freq = _inv_freq(dim, base)  # (dim/2,) each
    if kind in ("default", "dynamic"):
        return inv_freq, 1.0
    if kind == "longrope":
        return _longrope(cfg, seq_len, powers, original)
    if kind == "linear":
        return (inv_freq / F32(factor)).astype(F32), 1.0
    if kind == "llama3":
        low_wavelen = original / cfg.rope_low_freq_factor
        high_wavelen = original / cfg.rope_high_freq_factor
        wavelen = (F32(2 * math.pi) / inv_freq).astype(F32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / F32(factor), inv_freq).astype(F32)
        smooth = ((F32(original) / wavelen - F32(cfg.rope_low_freq_factor))
                  / F32(cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)).astype(F32)
        smoothed = ((F32(1) - smooth) * scaled / F32(factor) + smooth * scaled).astype(F32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(F32), 1.0
    # yarn
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = cfg.rope_attention_factor or (
        mscale(factor, cfg.rope_mscale) / mscale(factor, cfg.rope_mscale_all_dim)
        if cfg.rope_mscale and cfg.rope_mscale_all_dim else mscale(factor))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
    keep = (F32(1) - ramp).astype(F32)  # the share of the original (extrapolated) frequency
    interpolated = (F32(1.0) / (F32(factor) * powers)).astype(F32)
    return (interpolated * (F32(1) - keep) + inv_freq * keep).astype(F32), float(attention)


def _inv_freq(dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """(base^(2i/dim), its inverse) (dim/2,) float32 each: the unscaled rotary frequencies."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)
    powers = (base ** exponents).astype(F32)  # (dim/2,)
    return powers, (F32(1.0) / powers).astype(F32)


def _longrope(cfg: ModelConfig, seq_len: int, powers: np.ndarray, original: int) -> tuple[np.ndarray, float]:
    """Phi-3's longrope, as transformers computes it (`_compute_longrope_parameters` and Phi3's
    `longrope_frequency_update`): every frequency divided by its short factor while the pass reaches no
    further than the original context, by its long factor once it does (the whole pass: positions
    cached before keep the factors they were turned with); cos / sin scaled by the attention factor,
    sqrt(1 + ln(factor) / ln(original)) for a factor over 1 unless the config gives it."""
    factors = cfg.rope_long_factor if seq_len > original else cfg.rope_short_factor
    inv_freq = (F32(1.0) / (np.asarray(factors, dtype=F32) * powers)).astype(F32)  # (dim/2,)
    factor = cfg.rope_factor
    attention = cfg.rope_attention_factor or (
        1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original)))
    return inv_freq, float(attention)


ROPE_TABLES_KEPT = 16
"""Rotary tables `rope_tables` keeps, the least recently used dropped first: a model needs one or two (Gemma 3's
global and local, a longrope's short and long; a dynamic rope one a pass once past its original context)."""
ROPE_MIN_ROWS = 256
"""Positions a new table covers at least (within model.max_seq_len): decode grows it by doubling, not a row a step."""


class RopeTables:
    """A bounded LRU of rotary tables: `_rope_key` -> (first position, cos, sin), read-only (n, rotary_dim)
    rows of positions first.. first + n - 1. Locked: the API's engine thread and another may share it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tables: OrderedDict[tuple, tuple[int, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, key: tuple) -> tuple[int, np.ndarray, np.ndarray] | None:
        with self._lock:
            entry = self._tables.get(key)
            if entry is not None:
                self._tables.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[int, np.ndarray, np.ndarray]) -> None:
        with self._lock:
            self._tables[key] = entry
            self._tables.move_to_end(key)
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)


ROPE_TABLES = RopeTables(ROPE_TABLES_KEPT)
"""The process's rotary tables: every block, shard and device worker in it cuts its rows from them."""


_rope_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(ModelConfig) if f.name.startswith("rope_")))
"""cfg -> the tuple of its model.rope_* fields (every one, by name: read at each pass, so one getter)."""


def _rope_key(cfg: ModelConfig, reach: int, local: bool) -> tuple[tuple, bool]:
    """(key, whether the table is the pass's own) of the rotary table of a pass reaching `reach` positions.
    The key holds every input of `rope_inv_freq`: for a Gemma 3 sliding block its dimensions and local base;
    else the dimensions, the original context, every model.rope_* field (type, base, factors, longrope's
    lists; a field added later joins by its name) and of the reach what the scaling reads of it: longrope
    whether it passes the original context (its long factors, or its short), dynamic the context its base is
    raised for (the original one; past it the reach, which makes the table the pass's own)."""
    if local:
        return ("local", cfg.rotary_dim, cfg.rope_local_theta), False
    original = cfg.rope_original_max_position or cfg.max_seq_len
    kind = cfg.rope_type
    reach_read = max(reach, original) if kind == "dynamic" else reach > original if kind == "longrope" else None
    return ("global", cfg.rotary_dim, original, reach_read, _rope_fields(cfg)), kind == "dynamic" and reach > original


def rope_tables(cfg: ModelConfig, start: int, seq: int, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (seq, rotary_dim) of the model's rotary embedding at positions start .. start + seq - 1 (one
    forward pass: a dynamic scaling sees the pass's reach, as transformers' does); `local`: a Gemma 3 sliding
    block's (`ModelConfig.is_local_rope`). Read-only rows of a table in ROPE_TABLES: positions 0 .. n - 1, built
    anew twice as long (within model.max_seq_len) when a pass reaches past it; a dynamic rope's past its
    original context, the pass's own, its pass's rows. Every element is cos / sin of its position times its
    frequency (times the attention factor) alone, so a row is the same floats whichever table it is cut from.
    Every block of every device built its pass's table before: 8 us a call for the tiny model, 2 us now."""
    reach = start + seq
    key, own = _rope_key(cfg, reach, local)
    entry = ROPE_TABLES.get(key)
    if entry is None or start < entry[0] or reach > entry[0] + len(entry[1]):
        held = 0 if entry is None or own else len(entry[1])
        first, end = (start, reach) if own else (0, max(reach, min(max(2 * held, ROPE_MIN_ROWS), cfg.max_seq_len)))
        cos, sin = _tables(np.arange(first, end), *rope_inv_freq(cfg, reach, local))  # (end - first, rotary_dim)
        cos.setflags(write=False)
        sin.setflags(write=False)
        entry = (first, cos, sin)
        ROPE_TABLES.put(key, entry)
    first, cos, sin = entry
    return cos[start - first:reach - first], sin[start - first:reach - first]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding: x * cos + rotate_half(x) * sin on the first rotary_dim
    dimensions of each head, the rest passed unchanged (a partial rotary embedding, Phi-4-mini's).

    x: (heads, seq, head_dim); cos, sin: (seq, rotary_dim), rotary_dim <= head_dim.
    """
    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        return np.concatenate([apply_rope(x[..., :dim], cos, sin), x[..., dim:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # (heads, seq, head_dim)
    return x * cos[None] + rotated * sin[None]


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
    seq, hd = h.shape[0], cfg.head_dim
    q, k, v = linear(h, wq), linear(h, wk), linear(h, wv)
    if bias is not None:
        q, k, v = q + bias[0], k + bias[1], v + bias[2]
    q = q.reshape(seq, -1, hd).transpose(1, 0, 2)
    k = k.reshape(seq, -1, hd).transpose(1, 0, 2)
    v = v.reshape(seq, -1, hd).transpose(1, 0, 2)
    if qk_norm is not None:
        q, k = model_norm(cfg, q, qk_norm[0]), model_norm(cfg, k, qk_norm[1])
    cos, sin = rope_tables(cfg, start, seq, local_rope)
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
