"""The compiled clock kernels give the floats their plain Python gives (`.py_func`), bit for bit,
on random lanes: ties, queues and gaps, several blocks per group, embedding and LM head."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cent_serve.timing.clock import device_lanes, port_lanes


def _lanes(draw_seed: int, n: int, tie_every: int):
    rng = np.random.default_rng(draw_seed)
    step = rng.choice([1e-4, 1.5e-4, 1e-4 + 1e-19], n)
    ready = np.cumsum(rng.choice([0.0, 1e-4, 2e-5, 3e-4], n)) + (np.arange(n) % tie_every == 0) * 1e-12
    rng.shuffle(ready)
    return ready, step, rng.random(n) * 1e-6, rng.random(n) * 1e-5, rng.random(n) * 1e-3


def _device(fn, ready, step, hop, acc, energy, groups, with_ends):
    n = ready.shape[0]
    tokens, seqs = np.arange(n, dtype=np.int64) % 3 + 1, np.arange(n, dtype=np.int64) % 2 + 1
    blocks = np.array(groups, dtype=np.int64)
    last = np.zeros(int(blocks.sum()), dtype=np.bool_)
    last[-1] = True
    clocks, busy = np.full(len(groups), 1e-4), np.full(4 + len(groups), 0.5)
    embed, head = np.array([with_ends, 3e-6, 2e-4]), np.array([with_ends, 5e-6, 0.0, 0.25])
    done, joules = fn(ready, step, hop, acc, energy, tokens, seqs, clocks, blocks, last, embed, head, busy,
                      int(blocks.sum()), 1.0)
    return done.tolist(), joules, clocks.tolist(), busy.tolist(), embed.tolist(), head.tolist()


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 90), st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1,
                                                                          max_size=3), st.booleans())
def test_device_lanes_is_its_python(seed, n, tie_every, groups, with_ends):
    args = _lanes(seed, n, tie_every)
    assert _device(device_lanes, *args, groups, with_ends) == _device(device_lanes.py_func, *args, groups, with_ends)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 90), st.integers(1, 5), st.floats(0.0, 1e-3))
def test_port_lanes_is_its_python(seed, n, tie_every, free):
    ready, ser, *_ = _lanes(seed, n, tie_every)
    got = port_lanes(free, ready, ser, 1.8e-7, 0.125)
    want = port_lanes.py_func(free, ready, ser, 1.8e-7, 0.125)
    assert got[0].tolist() == want[0].tolist() and got[1:] == want[1:]
