"""Speed-ups of the device and fabric workers must not move a simulated timestamp.

`tests/data/sim_golden.json` holds the simulated times, energy and device/fabric stats
of a few emulated runs (history in `tests/data/make_sim_golden.py`); the current code
must reproduce them
bit for bit (the closed-form agreement is checked in test_emulate.py).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("make_sim_golden", DATA / "make_sim_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_simulated_results_are_the_recorded_ones_bit_for_bit():
    want = json.loads((DATA / "sim_golden.json").read_text())
    got = json.loads(json.dumps(_generator().golden(), sort_keys=True))
    assert set(got) == set(want)
    for name in want:
        for key in want[name]:
            assert got[name][key] == want[name][key], (name, key)
