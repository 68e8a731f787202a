"""Sharded blocks (pure functions, one process) equal the reference model."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.model import LlamaModel
from cent_serve.model.layers import rms_norm
from cent_serve.sharding import ShardKV, head_ranges, shard_layer, split_bounds, tp_block_forward
from tests.factories import tiny_model_config


def run_tp(model, tp, ids_steps):
    """Run the whole model with every block split over tp ranks; returns logits per step."""
    cfg, w = model.cfg, model.weights
    shards = [[shard_layer(cfg, layer, r, tp) for layer in w.layers] for r in range(tp)]
    kvs = [ShardKV(cfg.num_layers, shards[r][0].num_kv_heads, cfg.head_dim) for r in range(tp)]
    out, pos = [], 0
    for ids in ids_steps:
        x = w.embed[np.asarray(ids)]
        for li in range(cfg.num_layers):
            # lockstep ranks: run each rank up to an exchange point, then concatenate
            import threading
            results, slots = [None] * tp, {}
            barrier = threading.Barrier(tp)

            def gather(tag, local, rank):
                slots[(tag, rank)] = local
                barrier.wait()
                full = np.concatenate([slots[(tag, r)] for r in range(tp)], axis=-1)
                barrier.wait()
                return full

            def work(r):
                results[r] = tp_block_forward(cfg, shards[r][li], x, pos, kvs[r], li,
                                              lambda tag, a: gather(tag, a, r))
            threads = [threading.Thread(target=work, args=(r,)) for r in range(tp)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            for r in range(1, tp):
                assert np.array_equal(results[0], results[r])
            x = results[0]
        out.append(rms_norm(x, w.final_norm, cfg.rms_norm_eps) @ w.lm_head.T)
        pos += len(ids)
    return out


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tp_sharded_logits_equal_reference(tp):
    cfg = tiny_model_config(num_heads=4, num_kv_heads=2, intermediate_size=150)  # uneven F split
    model = LlamaModel(cfg)
    steps = [[1, 7, 9, 30], [12], [44], [5]]
    sharded = run_tp(model, tp, steps)
    cache = model.new_cache()
    for ids, got in zip(steps, sharded):
        ref = model.forward(ids, cache)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5


def test_kv_heads_replicate_when_tp_exceeds_them():
    cfg = tiny_model_config(num_heads=8, num_kv_heads=2, hidden_size=64)
    assert [head_ranges(cfg, r, 8) for r in (0, 3, 4, 7)] == [((0, 1), (0, 1)), ((3, 4), (0, 1)),
                                                             ((4, 5), (1, 2)), ((7, 8), (1, 2))]
    assert head_ranges(cfg, 1, 2) == ((4, 8), (1, 2))
    with pytest.raises(ValueError, match="parallel.tp=3 does not divide model.num_heads=8"):
        head_ranges(cfg, 0, 3)
    assert split_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_tp8_on_gqa_matches_reference():
    cfg = tiny_model_config(num_heads=8, num_kv_heads=2, hidden_size=64)
    model = LlamaModel(cfg)
    got = run_tp(model, 8, [[1, 2, 3], [4]])
    cache = model.new_cache()
    model.forward([1, 2, 3], cache)
    ref = model.forward([4], cache)
    assert np.max(np.abs(got[1] - ref)) / np.max(np.abs(ref)) < 1e-5
