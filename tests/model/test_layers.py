"""The reference model's layer functions (cent_serve.model.layers) on their own."""
from __future__ import annotations

import tracemalloc

import numpy as np

from cent_serve.model.layers import SWAPPED_MAX_ROWS, linear, softmax


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
    """`linear` multiplies a few rows as (w @ x.T).T, a faster route through OpenBLAS: the same floats as x @ w.T
    for the shapes the models' projections take (the tiny preset's 256 / 688 / 259 wide, the fixtures' 64 / 176,
    a head's 16 or 32, a router's 4, a shared expert's gate's 1), from one row to past SWAPPED_MAX_ROWS, and as
    x @ w.T a C-contiguous result."""
    rng = np.random.default_rng(0)
    rows = list(range(1, SWAPPED_MAX_ROWS + 3)) + [64, 300]
    for out_dim, in_dim in [(688, 256), (256, 688), (256, 256), (64, 256), (259, 256), (176, 64), (64, 176),
                            (32, 64), (16, 64), (4, 64), (1, 64), (97, 64)]:
        w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        for n in rows:
            x = rng.standard_normal((n, in_dim)).astype(np.float32)
            got = linear(x, w)
            assert got.flags.c_contiguous and np.array_equal(got, x @ w.T), (out_dim, in_dim, n)
    x = rng.standard_normal((in_dim, 4)).astype(np.float32).T  # rows not contiguous: x @ w.T as it is
    assert np.array_equal(linear(x, w), x @ w.T)

