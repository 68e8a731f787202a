"""A device's counters in `stats()` count what the hardware model moves."""
from __future__ import annotations

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, apply_overrides, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.messages import Layout, RoundPlan


def test_a_device_s_local_hop_bytes_are_its_storage_width():
    """`hop_bytes_local` counted 2 bytes a value whatever `device.bytes_per_element` (review): a block's
    output staying on its device moves at the device's width, as `SystemTimer.local_hop_s` times it."""
    plan = RoundPlan(Layout((0,), (((1, 3),),)), np.zeros(1), 0, {1: 0})
    got = {}
    for width in (2, 1):
        cfg = apply_overrides(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8), numerics="off"),
                              [f"device.bytes_per_element={width}"])
        ex = LocalExecutor(cfg)
        ex.run(plan)
        got[width] = [d["hop_bytes_local"] for d in ex.stats()["devices"]]
    assert got[2][0] == 3 * 4096 * 3 * 2  # device 0: 4 blocks, 3 outputs stay, 3 tokens of 4096 values
    assert got[1] == [b // 2 for b in got[2]]
