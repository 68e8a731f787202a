"""The Ray executor runs the same workers: identical tokens and identical simulated times."""
from __future__ import annotations

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor, make_executor
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import MicroBatch, SeqStep

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


def _round(r: int) -> list[MicroBatch]:
    """Two sequences per micro-batch, a prefill chunk then decode steps, out of mb_id order."""
    return [MicroBatch(m, [SeqStep(10 * m + j, 0 if r == 0 else 3 + r - 1, 3 if r == 0 else 1,
                                   [5 + m + j] * (3 if r == 0 else 1)) for j in range(2)], 1e-4 * r * m)
            for m in (1, 0)]


def test_ray_rounds_in_flight_and_errors(ray_cluster):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="full")
    local = LocalExecutor(cfg)
    want = [local.execute(_round(r)) for r in range(3)]
    ex = make_executor(cfg, "ray")
    try:
        handles = [ex.submit(_round(r)) for r in range(3)]  # all sent before any is awaited
        got = [h.result() for h in reversed(handles)][::-1]
        with pytest.raises(ValueError, match="vocabulary"):
            ex.execute([MicroBatch(7, [SeqStep(70, 0, 1, [10_000])], 0.0)])
        after = ex.execute([MicroBatch(8, [SeqStep(80, 0, 1, [4])], 0.0)])
    finally:
        ex.shutdown()
    for g, w in zip(got, want):
        assert [b.mb_id for b in g] == [b.mb_id for b in w] == [0, 1]
        assert [b.ready_s for b in g] == [b.ready_s for b in w]
        for gb, wb in zip(g, w):
            assert (gb.logits.argmax(-1) == wb.logits.argmax(-1)).all()
    assert after[0].logits.shape == (1, cfg.model.vocab_size)
