"""Pure numpy building blocks of a Llama decoder, in float32.

These functions know nothing of devices: the single-process reference model
calls them on whole weights, and a device shard calls the same functions on
its slice of the weights, which is why sharded and reference results agree.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Llama RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)  # (..., 1)
    return (x / np.sqrt(var + F32(eps))).astype(F32) * weight


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables as Hugging Face's LlamaRotaryEmbedding builds them.

    inv_freq = 1 / theta^(2i / head_dim); emb = concat(freqs, freqs), so the two
    halves of a head share frequencies (the rotate-half layout).
    Returns two (seq, head_dim) float32 arrays.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / head_dim))
    freqs = positions.astype(F32)[:, None] * inv_freq[None, :].astype(F32)  # (seq, head_dim/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (seq, head_dim)
    return np.cos(emb).astype(F32), np.sin(emb).astype(F32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding: x * cos + rotate_half(x) * sin.

    x: (heads, seq, head_dim); cos, sin: (seq, head_dim).
    """
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # (heads, seq, head_dim)
    return x * cos[None] + rotated * sin[None]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_start: int) -> np.ndarray:
    """Causal grouped-query attention for one sequence.

    q: (heads, seq_q, head_dim) at positions q_start .. q_start + seq_q - 1;
    k, v: (kv_heads, seq_k, head_dim) for positions 0 .. seq_k - 1, where
    heads is a multiple of kv_heads (each KV head serves heads/kv_heads
    consecutive query heads, as Hugging Face's repeat_kv does).
    Returns (heads, seq_q, head_dim).
    """
    heads, seq_q, head_dim = q.shape
    kv_heads, seq_k, _ = k.shape
    rep = heads // kv_heads
    qg = q.reshape(kv_heads, rep * seq_q, head_dim)  # (kv_heads, rep*seq_q, head_dim)
    scores = qg @ k.transpose(0, 2, 1) * F32(1.0 / np.sqrt(head_dim))  # (kv_heads, rep*seq_q, seq_k)
    scores = scores.reshape(kv_heads, rep, seq_q, seq_k)
    q_pos = q_start + np.arange(seq_q)[:, None]
    mask = np.arange(seq_k)[None, :] > q_pos  # (seq_q, seq_k): future keys
    scores = np.where(mask, F32(-np.inf), scores)
    probs = softmax(scores, axis=-1).astype(F32).reshape(kv_heads, rep * seq_q, seq_k)
    out = probs @ v  # (kv_heads, rep*seq_q, head_dim)
    return out.reshape(heads, seq_q, head_dim)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1.0) + np.exp(-x))


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """Llama MLP: down(silu(gate(x)) * up(x)); weights in (out, in) layout."""
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T
