"""The Ray executor runs the same workers: identical tokens and identical simulated times."""
from __future__ import annotations

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor, make_executor
from cent_serve.executor.generate import generate_batch

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (4, 2, 2)])
def test_ray_equals_local_executor(ray_cluster, devices, pp, tp):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
    prompts = [[1, 9, 8, 7], [1, 50]]
    local = generate_batch(LocalExecutor(cfg), prompts, 12)
    ex = make_executor(cfg, "ray")
    try:
        remote = generate_batch(ex, prompts, 12)
        stats = ex.stats()
    finally:
        ex.shutdown()
    assert remote.token_ids == local.token_ids
    assert remote.token_times_s == local.token_times_s  # bit-identical simulated time
    assert len(stats["devices"]) == devices
    assert sum(d["tokens"] for d in stats["devices"]) > 0
    if devices == 8:  # pipeline: activations crossed the switch between all 8 devices
        assert stats["fabric"]["wire_bytes"] > 0 and len(stats["fabric"]["ports"]) == 8
