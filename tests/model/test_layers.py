"""The reference model's layer functions (cent_serve.model.layers, cent_serve.model.rope) on their own."""
from __future__ import annotations

import tracemalloc

import numpy as np

from cent_serve.model.layers import (SWAPPED_MAX_ROWS, linear, linear_rows, project_qkv, project_qkv_rows,
                                     rms_norm, softmax)
from cent_serve.model.rope import ROPE_TABLES, ROPE_TABLES_KEPT, _tables, rope_inv_freq, rope_tables
from tests.factories import tiny_model_config


def test_softmax_makes_only_its_result_and_the_textbook_floats():
    """exp(x - max) / sum, the float32 scores of a sequence's attention (masked keys at -inf) and a router's
    logits, over the last axis or another: equal bit for bit, x unchanged, and no temporary as large as x
    beside the result (three such arrays before: the shift, the exp and the quotient)."""
    rng = np.random.default_rng(0)
    for shape, axis in [((2, 4, 1, 1501), -1), ((2, 4, 7, 30), -1), ((5, 8), -1), ((6, 3, 9), 1)]:
        x = (rng.standard_normal(shape) * 8).astype(np.float32)
        x[..., ::3] = -np.inf if axis == -1 else x[..., ::3]
        before = x.copy()
        shifted = x - np.max(x, axis=axis, keepdims=True)
        want = np.exp(shifted) / np.sum(np.exp(shifted), axis=axis, keepdims=True)
        got = softmax(x, axis=axis)
        assert got.dtype == np.float32 and np.array_equal(got, want), (shape, axis)
        assert np.array_equal(x, before)
    x = rng.standard_normal((8, 1, 1 << 15)).astype(np.float32)  # 1 MiB of scores
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        softmax(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert x.nbytes <= peak < 1.5 * x.nbytes, peak / x.nbytes


def test_linear_is_x_at_w_transposed_bit_for_bit():
    """`linear` multiplies a few rows as (w @ x.T).T, a faster route through OpenBLAS: x @ w.T for the shapes the
    models' projections take (the tiny preset's 256 / 688 / 259 wide, the fixtures' 64 / 176, a head's 16 or 32,
    a router's 4, a shared expert's gate's 1), from one row to past SWAPPED_MAX_ROWS, and as x @ w.T a
    C-contiguous result. OpenBLAS 0.3.31's SkylakeX kernels give the same floats (5,888 shapes checked when it
    was written; benchmarks/numerics_speed.py compares outputs at every run); held here to float32 rounding,
    as a BLAS whose kernels sum in another order on other CPUs may differ in the last bit."""
    rng = np.random.default_rng(0)
    rows = list(range(1, SWAPPED_MAX_ROWS + 3)) + [64, 300]
    for out_dim, in_dim in [(688, 256), (256, 688), (256, 256), (64, 256), (259, 256), (176, 64), (64, 176),
                            (32, 64), (16, 64), (4, 64), (1, 64), (97, 64)]:
        w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        for n in rows:
            x = rng.standard_normal((n, in_dim)).astype(np.float32)
            got = linear(x, w)
            assert got.flags.c_contiguous, (out_dim, in_dim, n)
            np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5 * np.sqrt(in_dim), err_msg=str((out_dim, n)))
    x = rng.standard_normal((in_dim, 4)).astype(np.float32).T  # rows not contiguous: x @ w.T as it is
    assert np.array_equal(linear(x, w), x @ w.T)


GEMMA3 = tiny_model_config(model_type="gemma3_text", rope_theta=1e6, rope_local_theta=100.0)  # two rope bases
ROPE_KINDS = {
    "default": (tiny_model_config(), False),
    "linear": (tiny_model_config(rope_type="linear", rope_factor=2.0), False),
    "linear x4": (tiny_model_config(rope_type="linear", rope_factor=4.0), False),  # a factor alone moves the key
    "dynamic": (tiny_model_config(rope_type="dynamic", rope_factor=2.0, rope_original_max_position=32), False),
    "yarn": (tiny_model_config(rope_type="yarn", rope_factor=4.0, rope_original_max_position=32), False),
    "llama3": (tiny_model_config(rope_type="llama3", rope_factor=8.0, rope_original_max_position=32), False),
    "longrope": (tiny_model_config(rope_type="longrope", rope_factor=4.0, rope_original_max_position=32,
                                   rope_short_factor=tuple(1.0 + i / 8 for i in range(8)),
                                   rope_long_factor=tuple(2.0 + i for i in range(8))), False),
    "partial": (tiny_model_config(model_type="phi3", partial_rotary_factor=0.5), False),
    "local": (GEMMA3, True),  # Gemma 3's sliding blocks'
    "global beside local": (GEMMA3, False),
}
"""One model per rotary embedding (tiny: head_dim 16, max_seq_len 128), the scalings' original context 32."""


def _fresh_rope(cfg, start: int, seq: int, local: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pass's own table, as rope_tables built it at every call before it kept them."""
    return _tables(np.arange(start, start + seq), *rope_inv_freq(cfg, start + seq, local))


def test_a_kept_rope_table_is_a_fresh_one_for_every_rope_kind():
    """The rows rope_tables cuts from its kept tables are the pass's own table bit for bit, for every kind (and
    its factors, Phi-3's short and long lists by reach, Gemma 3's local base), the kinds taking turns so that a
    kept table of one would show in another's; and they are kept: two decode steps read one table (a dynamic
    rope past its original context: one pass's, read by every block)."""
    passes = [(0, 20), (20, 1), (21, 1), (22, 15), (37, 1), (38, 1), (0, 40), (90, 3), (127, 1), (5, 2)]
    for start, seq in passes:  # across the original context (32) both ways, up to max_seq_len
        for name, (cfg, local) in ROPE_KINDS.items():
            got, want = rope_tables(cfg, start, seq, local), _fresh_rope(cfg, start, seq, local)
            for g, w in zip(got, want):
                assert g.dtype == np.float32 and g.shape == (seq, cfg.rotary_dim), (name, start, seq)
                assert np.array_equal(g, w), (name, start, seq)
    for name, (cfg, local) in ROPE_KINDS.items():
        one, two = rope_tables(cfg, 40, 1, local)[0], rope_tables(cfg, 41, 1, local)[0]
        assert (one.base is two.base) == (name != "dynamic"), name  # one table (dynamic at 41: a base of its own)
        assert np.shares_memory(one, rope_tables(cfg, 40, 1, local)[0]), name
        assert not one.flags.writeable, name


def test_the_rope_tables_kept_stay_bounded():
    """ROPE_TABLES keeps ROPE_TABLES_KEPT tables however many models ask, dropping the least recently used, and
    a table no longer than model.max_seq_len."""
    cfgs = [tiny_model_config(rope_theta=1000.0 + i) for i in range(3 * ROPE_TABLES_KEPT)]
    first = [rope_tables(cfg, 3, 1)[0] for cfg in cfgs]
    assert len(ROPE_TABLES) == ROPE_TABLES_KEPT
    assert np.shares_memory(first[-1], rope_tables(cfgs[-1], 3, 1)[0])  # kept
    assert not np.shares_memory(first[0], rope_tables(cfgs[0], 3, 1)[0])  # dropped, built again
    assert len(ROPE_TABLES) == ROPE_TABLES_KEPT
    cfg = cfgs[0]
    assert rope_tables(cfg, 127, 1)[0].base.shape[0] == cfg.max_seq_len == 128  # ROPE_MIN_ROWS is 256


def test_rms_norm_makes_only_its_result_and_the_textbook_floats():
    """x / sqrt(mean(x^2) + eps) * weight (Gemma's 1 + weight) over the last axis, as np.mean takes it, bit for
    bit: a round's rows, a head's (Qwen 3's q and k norms, on a transposed view), a 3072-wide one, the squares
    large and small; and no temporary as large as x beside the result (two such arrays before: the quotient
    and its float32 copy)."""
    rng = np.random.default_rng(0)
    for shape, transposed in [((3, 256), False), ((1, 256), False), ((300, 256), False), ((7, 3072), False),
                              ((5, 8, 32), True), ((4, 1, 16), True)]:
        for scale in (1e-3, 1.0, 1e3):
            x = (rng.standard_normal(shape) * scale).astype(np.float32)
            x = x.transpose(1, 0, 2) if transposed else x
            weight = rng.standard_normal(shape[-1]).astype(np.float32)
            for offset in (0.0, 1.0):
                w = (np.float32(offset) + weight).astype(np.float32) if offset else weight
                want = (x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(1e-6))).astype(
                    np.float32) * w
                got = rms_norm(x, weight, 1e-6, offset)
                assert got.dtype == np.float32 and np.array_equal(got, want), (shape, scale, offset)
    # the float32 its docstring promises for any x (a float64 or float16 x returned its own dtype): x's float32
    # values normed, bit for bit the float32 call's
    x, weight = rng.standard_normal((3, 256)), rng.standard_normal(256).astype(np.float32)
    for dtype in (np.float64, np.float16):
        for offset in (0.0, 1.0):
            got = rms_norm(x.astype(dtype), weight, 1e-6, offset)
            want = rms_norm(x.astype(dtype).astype(np.float32), weight, 1e-6, offset)
            assert got.dtype == np.float32 and np.array_equal(got, want), (dtype, offset)
    x, weight = rng.standard_normal((64, 4096)).astype(np.float32), rng.standard_normal(4096).astype(np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        rms_norm(x, weight, 1e-6)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert x.nbytes <= peak < 1.5 * x.nbytes, peak / x.nbytes


def test_project_qkv_rows_is_project_qkv_a_row_at_a_time_bit_for_bit():
    """Rows of a round's sequences, one token each, projected and rotated at once are what project_qkv gives a
    row at a time, bit for bit: every rope kind (a dynamic one's rows at positions either side of its original
    context, each its own reach's table; a partial one; Gemma 3's local), Qwen 2.5's biases and Qwen 3's q and k
    norms (Gemma 3's with their offset), one row or several; and linear_rows is linear a row at a time."""
    rng = np.random.default_rng(0)
    qwen = {"qwen2 biases": (tiny_model_config(attention_bias=True), False),
            "qwen3 norms": (tiny_model_config(qk_norm=True), False),
            "gemma3 norms": (tiny_model_config(model_type="gemma3_text", qk_norm=True, norm_offset=1.0,
                                               rope_theta=1e6, rope_local_theta=100.0), True)}
    for name, (cfg, local) in {**ROPE_KINDS, **qwen}.items():
        d, hd, nq, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        wq, wk, wv = (rng.standard_normal((n * hd, d)).astype(np.float32) for n in (nq, nkv, nkv))
        bias = tuple(rng.standard_normal(n * hd).astype(np.float32) for n in (nq, nkv, nkv))
        norms = tuple(rng.standard_normal(hd).astype(np.float32) for _ in range(2))
        extra = (bias if cfg.attention_bias else None, norms if cfg.qk_norm else None, local)
        for starts in ([5], [0, 31, 32, 90], [127, 3, 40]):
            h = rng.standard_normal((len(starts), d)).astype(np.float32)
            got = project_qkv_rows(cfg, h, wq, wk, wv, starts, *extra)
            for i, p in enumerate(starts):
                want = project_qkv(cfg, h[i:i + 1], wq, wk, wv, p, *extra)
                for g, w in zip(got, want):
                    assert g.dtype == np.float32 and np.array_equal(g[:, i:i + 1], w), (name, starts, i)
    for out_dim, in_dim in [(688, 256), (256, 688), (64, 256), (176, 64), (1, 64)]:
        w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        x = rng.standard_normal((7, in_dim)).astype(np.float32)
        assert np.array_equal(linear_rows(x, w), np.concatenate([linear(x[i:i + 1], w) for i in range(7)]))
