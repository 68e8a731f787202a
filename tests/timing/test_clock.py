"""The compiled clock kernels give the floats their plain Python gives (`.py_func`), bit for bit,
on random rounds: ties, queues and gaps, several sequences and tokens per lane, several blocks per
group, embedding and LM head, KV blocks crossed, a hop or the host's time after it; a tick is
its parts one after the other; and a round whose contexts the table lacks changes nothing."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cent_serve.timing.clock import F_BUSY, F_EMBED, DeviceClock, device_round, tick, transfer


def _ready(rng, n: int, tie_every: int) -> np.ndarray:
    ready = np.cumsum(rng.choice([0.0, 1e-4, 2e-5, 3e-4], n)) + (np.arange(n) % tie_every == 0) * 1e-12
    rng.shuffle(ready)
    return ready


def _round(seed: int, n: int, tie_every: int, groups: list[int], with_ends: bool, route: bool = False):
    """Arguments of one `tick` call (fresh arrays each time): x, table, filled, seq, lanes_i,
    lanes_f, f, i, ports, counts; `device_round` takes the first n of x and the next seven."""
    rng = np.random.default_rng(seed)
    per_lane = rng.integers(1, 4, n) * (rng.random(n) < 0.3) + (rng.random(n) >= 0.3)
    offsets = np.concatenate([[0], np.cumsum(per_lane)]).astype(np.int64)
    seqs = int(offsets[-1])
    seq_tokens = np.where(rng.random(seqs) < 0.3, rng.integers(1, 20, seqs), 1).astype(np.int64)
    starts = rng.integers(0, 200, seqs).astype(np.int64)
    held = -(-starts // 16) * 16 * (rng.random(seqs) < 0.8)
    table = rng.choice([1e-4, 1.5e-4, 1e-4 + 1e-19, 3e-5], (3, 256))
    last = [False] * (sum(groups) - 1) + [True]
    clock = DeviceClock(groups, last, len(groups), 16, (with_ends, 3e-6), (with_ends, 5e-6, 0.25), 1.5e-4,
                        (1, (2, 3), 1.8e-7, 256) if route else None)
    clock.f[F_BUSY:] = 0.5
    clock.group_free[:] = 1e-4
    clock.f[F_EMBED + 2] = 2e-4
    lanes_i = np.concatenate([offsets, seq_tokens, rng.integers(1, 50, n)]).astype(np.int64)
    lanes_f = np.concatenate([rng.random((2, n)) * 1e-6, rng.choice([1e-6, 2e-6], (1, n))])
    x = np.concatenate([_ready(rng, n, tie_every), rng.random(seqs)])
    return (x, table, np.ones(256, dtype=np.bool_), np.stack([starts, held]), lanes_i, lanes_f, clock.f, clock.i,
            np.full((3, 5), 1e-5), np.zeros((5, 5), dtype=np.int64))


def _flat(out, args) -> list:
    return [x.tolist() if isinstance(x, np.ndarray) else x for x in out] + [a.tolist() for a in args]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 90), st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1,
                                                                          max_size=3), st.booleans())
def test_device_round_is_its_python(seed, n, tie_every, groups, with_ends):
    def run(fn):
        x, *rest = _round(seed, n, tie_every, groups, with_ends)
        args = [x[:n], *rest[:7]]
        out = list(fn(*args))
        out[2] = out[2][:out[3]]  # the crossed indexes that count
        return _flat(out, args)

    assert run(device_round) == run(device_round.py_func)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 90), st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1,
                                                                          max_size=3), st.booleans(), st.booleans())
def test_tick_is_its_python(seed, n, tie_every, groups, with_ends, route):
    def run(fn):
        args = _round(seed, n, tie_every, groups, with_ends, route)
        out = list(fn(*args))
        out[1] = out[1][:out[2]]
        return _flat(out, args)

    assert run(tick) == run(tick.py_func)


def test_a_tick_is_device_round_then_the_energy_then_the_hop():
    """`tick`'s composition equals its parts called one after the other: `device_round`, the
    joules added, `transfer` from the device's port (or, after the last unit, the host's time)."""
    for route in (False, True):
        args = _round(3, 20, 3, [2, 1], True, route)
        got, *_ = tick(*args)
        x, *rest = _round(3, 20, 3, [2, 1], True, route)
        done, own, *_ = device_round(x[:20], *rest[:7])
        energy = x[20:] + own
        if route:
            ports, counts = rest[7], rest[8]
            want = transfer(1, np.array([2, 3]), rest[3][-20:], rest[4][2], done, 1.8e-7, 256, ports, counts)
            assert got.tolist() == [*want.tolist(), *energy.tolist()]
            assert ports.tolist() == args[8].tolist() and counts.tolist() == args[9].tolist()
        else:
            assert got.tolist() == [*done.tolist(), *energy.tolist(), *(done + 1.5e-4).tolist()]


def test_a_round_past_the_table_changes_nothing_and_names_the_context():
    x, *rest = _round(1, 8, 2, [2, 1], True)
    args = [x[:8], rest[0], np.ones(150, dtype=np.bool_), *rest[2:7]]  # the table holds contexts < 150
    before = [a.copy() for a in args]
    out = device_round(*args)
    assert out[4] == int((args[3][0] + args[4][9:9 + args[3].shape[1]]).max()) and out[3] == 0
    assert all(np.array_equal(a, b) for a, b in zip(args, before))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 90), st.integers(1, 5), st.floats(0.0, 1e-3),
       st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True))
def test_transfer_is_its_python(seed, n, tie_every, free, dsts):
    rng = np.random.default_rng(seed)
    ready, ser = _ready(rng, n, tie_every), rng.choice([1e-6, 2e-6, 1e-6 + 1e-22], n)
    flits = rng.integers(1, 50, n).astype(np.int64)

    def run(fn):
        ports = np.stack([np.full(8, free), rng_state.copy(), np.full(8, 0.125)])
        counts = np.zeros((8, 5), dtype=np.int64)
        arrival = fn(0, np.array(dsts, dtype=np.int64), flits, ser, ready, 1.8e-7, 256, ports, counts)
        return [arrival.tolist(), ports.tolist(), counts.tolist()]

    rng_state = rng.random(8) * 1e-3
    assert run(transfer) == run(transfer.py_func)
