"""The reference model against an independent float64 Llama written plainly here."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import model_preset
from cent_serve.model import LlamaModel, random_weights
from tests.factories import tiny_model_config


def plain_llama_logits(cfg, w, ids):
    """Full causal forward, float64, loops instead of vectorised tricks; no shared code."""
    hd, H, Hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    f64 = lambda a: np.asarray(a, dtype=np.float64)
    T = len(ids)
    x = f64(w.embed)[ids]  # (T, D)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg.rms_norm_eps) * f64(g)

    def rope(v, pos):  # v: (hd,), HF rotate-half convention
        out = np.empty_like(v)
        half = hd // 2
        for i in range(half):
            ang = pos / (cfg.rope_theta ** (2 * i / hd))
            c, s = np.cos(ang), np.sin(ang)
            out[i] = v[i] * c - v[i + half] * s
            out[i + half] = v[i + half] * c + v[i] * s
        return out

    for L in w.layers:
        h = norm(x, L.input_norm)
        q = h @ f64(L.wq).T
        k = h @ f64(L.wk).T
        v = h @ f64(L.wv).T
        attn = np.zeros((T, H * hd))
        for t in range(T):
            for head in range(H):
                g = head // (H // Hkv)
                qv = rope(q[t, head * hd:(head + 1) * hd], t)
                scores = np.array([rope(k[s, g * hd:(g + 1) * hd], s) @ qv / np.sqrt(hd) for s in range(t + 1)])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                attn[t, head * hd:(head + 1) * hd] = sum(p[s] * v[s, g * hd:(g + 1) * hd] for s in range(t + 1))
        x = x + attn @ f64(L.wo).T
        h = norm(x, L.post_norm)
        gate = h @ f64(L.w_gate).T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ f64(L.w_up).T)) @ f64(L.w_down).T
    return norm(x, w.final_norm) @ f64(w.lm_head).T


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("tied", [False, True])
def test_full_forward_matches_float64_reference(tied):
    cfg = tiny_model_config(tie_word_embeddings=tied, rope_theta=500.0)
    model = LlamaModel(cfg)
    ids = [1, 5, 17, 42, 3, 88, 60, 7, 9]
    logits = model.forward(ids, model.new_cache())
    expected = plain_llama_logits(cfg, model.weights, ids)
    assert logits.shape == (len(ids), cfg.vocab_size)
    assert rel_err(logits, expected) < 1e-5


def test_incremental_decode_equals_full_forward():
    cfg = tiny_model_config()
    model = LlamaModel(cfg)
    ids = [1, 11, 23, 5, 77, 2, 40, 41, 13, 9, 66, 30]
    full = model.forward(ids, model.new_cache())
    cache = model.new_cache()
    steps = [model.forward(ids[:5], cache)]  # chunked prefill, then one token at a time
    for t in ids[5:]:
        steps.append(model.forward([t], cache))
    incremental = np.concatenate(steps)
    assert cache.length == len(ids)
    assert rel_err(incremental, full) < 1e-5
    assert rel_err(incremental, plain_llama_logits(cfg, model.weights, ids)) < 1e-5


def test_cache_grows_past_initial_capacity():
    cfg = tiny_model_config(num_layers=1)
    model = LlamaModel(cfg)
    ids = list(range(1, 41))  # > the initial capacity of 16
    cache = model.new_cache()
    for t in ids:
        last = model.forward([t], cache)
    assert rel_err(last, model.forward(ids, model.new_cache())[-1:]) < 1e-5


def test_bf16_weights_are_bf16_representable():
    import ml_dtypes
    cfg = model_preset("tiny")
    w = random_weights(cfg)
    wq = w.layers[0].wq
    assert np.array_equal(wq, wq.astype(ml_dtypes.bfloat16).astype(np.float32))
    # float32 storage keeps values that bf16 would round away
    w32 = random_weights(tiny_model_config(weight_dtype="float32"))
    assert not np.array_equal(w32.layers[0].wq, w32.layers[0].wq.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_bf16_rounding_is_ml_dtypes_bit_for_bit():
    """`round_to_bfloat16` (no ml_dtypes import: a device actor's start-up) equals ml_dtypes'
    float32 -> bfloat16 -> float32 on the edge cases and on a million random bit patterns (all 2^32
    were compared once, in about a minute)."""
    import ml_dtypes

    from cent_serve.model.weights import round_to_bfloat16

    edges = np.array([0, 0x80000000, 1, 0x8000, 0x8001, 0x7FFF, 0x18000, 0x17FFF, 0x28000, 0x807FFFFF,
                      0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7FFFFF,
                      0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFF810000, 0xFFFFFFFF],
                     dtype=np.uint32)  # zeros, subnormals, ties to even and odd, overflow to inf, infs, NaNs
    bits = np.concatenate([edges, np.random.default_rng(0).integers(0, 2**32, 2**20, dtype=np.uint32)])
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert round_to_bfloat16(x).view(np.uint32).tolist() == want.view(np.uint32).tolist()
    wide = np.array([1.0 + 2.0 ** -8 + 2.0 ** -30, np.pi])  # float64: rounded once, as ml_dtypes does
    assert round_to_bfloat16(wide).tolist() == wide.astype(ml_dtypes.bfloat16).astype(np.float32).tolist()


def test_random_weights_are_seeded():
    a = random_weights(tiny_model_config(seed=5))
    b = random_weights(tiny_model_config(seed=5))
    c = random_weights(tiny_model_config(seed=6))
    assert np.array_equal(a.layers[1].w_down, b.layers[1].w_down)
    assert not np.array_equal(a.layers[1].w_down, c.layers[1].w_down)
    # a pinned value: PCG64's stream is platform-independent, so this holds on any machine
    assert a.embed.shape == (97, 64)
    np.testing.assert_allclose(a.embed[0, :3], np.random.Generator(np.random.PCG64(5)).standard_normal(
        (97, 64), dtype=np.float32)[0, :3])


def test_context_overflow_and_bad_ids_are_clear_errors():
    cfg = tiny_model_config(max_seq_len=8)
    model = LlamaModel(cfg)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model.forward(list(range(1, 10)), model.new_cache())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward([1, 97], model.new_cache())
