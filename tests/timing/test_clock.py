"""The compiled clock kernels give the floats of their plain Python, bit for bit: the same
random rounds run compiled here and in a subprocess with numba's compiler off, where every
kernel and helper is Python (ties, queues and gaps, several sequences and tokens per lane,
several blocks per group, embedding and LM head, KV blocks crossed, a hop or the host's time
after it). A tick is its parts one after the other; a round whose contexts the table lacks
changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cent_serve.timing.clock import device_round, hand_on_tick, tick, transfer
from tests.timing.clock_cases import results, round_args

ROOT = Path(__file__).resolve().parents[2]


def test_the_compiled_kernels_are_their_python_bit_for_bit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.timing.clock_cases"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=True)
    python = json.loads(proc.stdout)
    compiled = results()
    assert set(compiled) == set(python) and len(compiled) == 120
    for name in compiled:
        assert compiled[name] == python[name], name


def test_a_tick_is_device_round_then_the_energy_then_the_hop():
    """`tick`'s composition equals its parts called one after the other: `device_round`, the
    joules added, `transfer` from the device's port (or, after the last unit, the host's time)."""
    for route in (False, True):
        args = round_args(3, route, crossing=False)
        got, *_ = tick(*args)
        x, *rest = round_args(3, route, crossing=False)
        n = rest[4].shape[1]
        done, own, *_ = device_round(x[:n], *rest[:7])
        energy = x[n:] + own
        if route:
            ports, counts = rest[7], rest[8]
            want = transfer(1, np.array([2, 3]), rest[3][-n:], rest[4][2], done, 1.8e-7, 256, ports, counts)
            assert got.tolist() == [*want.tolist(), *energy.tolist()]
            assert ports.tolist() == args[8].tolist() and counts.tolist() == args[9].tolist()
        else:
            assert got.tolist() == [*done.tolist(), *energy.tolist(), *(done + 1.5e-4).tolist()]


def test_a_tick_whose_sequences_cross_into_new_blocks_stops_before_the_hop():
    """The device grows their KV cache first (which may fail the round): until then no port moved.
    What it returns then is the device's output, its joules added, which `hand_on_tick` hands on;
    the sequences crossed are listed in the positions' third row."""
    args = round_args(5, route=True, crossing=True)
    ports_before = args[8].copy()
    x, *rest = round_args(5, route=True, crossing=True)
    n = rest[4].shape[1]
    done, own, want_crossed, _ = device_round(x[:n], *rest[:7])
    y, n_crossed, need = tick(*args)
    assert n_crossed == want_crossed > 0 and need == 0
    assert args[3][2, :n_crossed].tolist() == rest[2][2, :n_crossed].tolist()
    assert y.tolist() == [*done.tolist(), *(x[n:] + own).tolist()]
    assert args[8].tolist() == ports_before.tolist()
    full = hand_on_tick(y, *args[4:])
    assert full.shape == (args[5].shape[1] + args[3].shape[1],) and args[8].tolist() != ports_before.tolist()


def test_a_round_past_the_table_changes_nothing_and_names_the_context():
    x, *rest = round_args(1)
    n = rest[4].shape[1]
    args = [x[:n], rest[0], np.ones(150, dtype=np.bool_), *rest[2:7]]  # the table holds contexts < 150
    seq_tokens = args[4][n + 1:n + 1 + args[3].shape[1]]
    if int((args[3][0] + seq_tokens).max()) < 150:
        args[3][0] += 150  # make the round reach past the table
    before = [a.copy() for a in args]
    out = device_round(*args)
    assert out[3] == int((args[3][0] + seq_tokens).max()) and out[2] == 0
    assert all(np.array_equal(a, b) for a, b in zip(args, before))
