"""Deterministic random cases of the clock kernels and their results (floats as hex), for
test_clock.py: run here compiled, and in a subprocess with NUMBA_DISABLE_JIT=1, where every kernel
and every helper it calls is plain Python.

    NUMBA_DISABLE_JIT=1 python -m tests.timing.clock_cases   # prints the results as JSON
"""
from __future__ import annotations

import json

import numpy as np

from cent_serve.timing.clock import F_BUSY, F_EMBED, DeviceClock, device_round, hand_on_tick, tick, transfer


def _ready(rng, n: int, tie_every: int) -> np.ndarray:
    ready = np.cumsum(rng.choice([0.0, 1e-4, 2e-5, 3e-4], n)) + (np.arange(n) % tie_every == 0) * 1e-12
    rng.shuffle(ready)
    return ready


def round_args(seed: int, route: bool = False, crossing: bool = True) -> tuple:
    """`tick`'s arguments (fresh arrays): x, table, filled, seq, lanes_i, lanes_f, f, i, ports,
    counts; `device_round` takes x's first lanes entries and the next seven."""
    rng = np.random.default_rng(seed)
    n, tie_every = int(rng.integers(1, 90)), int(rng.integers(1, 5))
    groups = [int(g) for g in rng.integers(1, 5, int(rng.integers(1, 4)))]
    with_ends = bool(rng.integers(0, 2))
    per_lane = rng.integers(1, 4, n) * (rng.random(n) < 0.3) + (rng.random(n) >= 0.3)
    offsets = np.concatenate([[0], np.cumsum(per_lane)]).astype(np.int64)
    seqs = int(offsets[-1])
    seq_tokens = np.where(rng.random(seqs) < 0.3, rng.integers(1, 20, seqs), 1).astype(np.int64)
    starts = rng.integers(0, 200, seqs).astype(np.int64)
    held = -(-starts // 16) * 16 * (rng.random(seqs) < 0.8) if crossing else np.full(seqs, 10**6)
    table = rng.choice([1e-4, 1.5e-4, 1e-4 + 1e-19, 3e-5], (3, 256))
    last = [False] * (sum(groups) - 1) + [True]
    shared_head = seed % 4 == 1  # the LM head on the last group's channels (parallel.lm_head: last_stage)
    clock = DeviceClock(groups, last, len(groups), 16, (with_ends, 3e-6), (with_ends, 5e-6, 0.25, shared_head), 1.5e-4,
                        (1, (2, 3), 1.8e-7, 256) if route else None)
    clock.f[F_BUSY:] = 0.5
    clock.group_free[:] = 1e-4
    clock.f[F_EMBED + 2] = 2e-4
    lanes_i = np.concatenate([offsets, seq_tokens, rng.integers(1, 50, n)]).astype(np.int64)
    lanes_f = np.concatenate([rng.random((2, n)) * 1e-6, rng.choice([1e-6, 2e-6], (1, n))])
    x = np.concatenate([_ready(rng, n, tie_every), rng.random(seqs)])
    return (x, table, np.ones(256, dtype=np.bool_), np.stack([starts, held, np.zeros_like(starts)]), lanes_i, lanes_f, clock.f, clock.i,
            np.full((3, 5), 1e-5), np.zeros((5, 5), dtype=np.int64))


def _hex(v):
    if isinstance(v, np.ndarray):
        return [_hex(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_hex(x) for x in v]
    if isinstance(v, float):
        return v.hex()
    return v


def results() -> dict:
    out = {}
    for seed in range(40):
        args = round_args(seed)
        n = args[5].shape[1]
        res = list(device_round(args[0][:n], *args[1:8]))
        res.append(args[3][2, :res[2]])  # the sequences crossed
        out[f"device_round-{seed}"] = _hex([res, list(args)])
    for seed in range(40, 80):
        args = round_args(seed, route=seed % 2 == 0, crossing=seed % 3 == 0)
        res = list(tick(*args))
        res.append(args[3][2, :res[1]])  # the sequences crossed
        if res[1]:  # stopped before the hand-on: hand on as the device does after its KV blocks
            res[0] = hand_on_tick(res[0], *args[4:])
        out[f"tick-{seed}"] = _hex([res, list(args)])
    for seed in range(80, 120):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 90))
        ready, ser = _ready(rng, n, int(rng.integers(1, 5))), rng.choice([1e-6, 2e-6, 1e-6 + 1e-22], n)
        ports, counts = np.stack([np.full(8, 1e-4), rng.random(8) * 1e-3, np.full(8, 0.125)]), np.zeros((8, 5),
                                                                                                         dtype=np.int64)
        dsts = np.array(sorted(set(rng.integers(1, 7, 3).tolist())), dtype=np.int64)
        arrival = transfer(0, dsts, rng.integers(1, 50, n).astype(np.int64), ser, ready, 1.8e-7, 256, ports, counts)
        out[f"transfer-{seed}"] = _hex([arrival, ports, counts])
    return out


if __name__ == "__main__":
    print(json.dumps(results()))
