"""Sharded blocks (pure functions, one process) equal the reference model."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.model import LlamaModel
from cent_serve.model.layers import embed_rows, hidden_keys, hides_any, model_norm, project_qkv, softcap, softmax
from cent_serve.model.weights import random_weights
from cent_serve.sharding import ShardKV, head_ranges, shard_attention, shard_layer, split_bounds, tp_block_forward
from tests.factories import tiny_model_config


def run_tp(model, tp, ids_steps, tags: set | None = None):
    """Run the whole model with every block split over tp ranks; returns logits per step (and puts
    the exchanges' tags in `tags` when given)."""
    cfg, w = model.cfg, model.weights
    shards = [[shard_layer(cfg, layer, r, tp) for layer in w.layers] for r in range(tp)]
    kvs = [ShardKV(cfg.num_layers, shards[r][0].num_kv_heads, cfg.head_dim) for r in range(tp)]
    out, pos = [], 0
    for ids in ids_steps:
        x = embed_rows(cfg, w.embed, np.asarray(ids))
        for li in range(cfg.num_layers):
            # lockstep ranks: run each rank up to an exchange point, then concatenate
            import threading
            results, slots = [None] * tp, {}
            barrier = threading.Barrier(tp)

            def gather(tag, local, rank):
                if tags is not None:
                    tags.add(tag)
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
        out.append(softcap(model_norm(cfg, x, w.final_norm) @ w.lm_head.T, cfg.final_logit_softcapping))
        pos += len(ids)
    return out


GEMMA2 = dict(model_type="gemma2", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
              sandwich_norms=True, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, query_pre_attn_scalar=24)
"""Every Gemma 2 variation on, soft-caps small enough to bite."""


@pytest.mark.parametrize("tp, fields", [(1, {}), (2, {}), (4, {}), (2, GEMMA2), (4, GEMMA2)])
def test_tp_sharded_logits_equal_reference(tp, fields):
    """Gemma 2's norms of the attention's and MLP's outputs are applied to the gathered outputs, its
    soft-capping and scale in each rank's heads: the same logits as the reference model's."""
    cfg = tiny_model_config(num_heads=4, num_kv_heads=2, intermediate_size=150, **fields)  # uneven F split
    model = LlamaModel(cfg)
    steps = [[1, 7, 9, 30], [12], [44], [5]]
    sharded = run_tp(model, tp, steps)
    cache = model.new_cache()
    for ids, got in zip(steps, sharded):
        ref = model.forward(ids, cache)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5


@pytest.mark.parametrize("tp", [2, 4])
def test_a_shared_expert_split_over_tp_equals_reference(tp):
    """Qwen 2 MoE's shared expert split as a dense MLP (each rank its rows of gate and up, uneven: 58 over
    4 is 15, 15, 14, 14, and of the down; its D -> 1 gate whole): its silu(gate) x up slices are
    all-gathered, its down slices ride in the combine, and the logits are the reference model's."""
    cfg = tiny_model_config(model_type="qwen2_moe", num_experts=6, num_experts_per_tok=2, moe_intermediate_size=40,
                            shared_expert_intermediate_size=58, norm_topk_prob=False, attention_bias=True)
    model = LlamaModel(cfg)
    w = model.weights.layers[1]
    shards = [shard_layer(cfg, w, r, tp) for r in range(tp)]
    for r, sh in enumerate(shards):
        (fa, fb), (da, db) = split_bounds(58, tp)[r], split_bounds(64, tp)[r]
        assert np.array_equal(sh.shared_gate, w.shared_gate[fa:fb]) and np.array_equal(sh.shared_up, w.shared_up[fa:fb])
        assert np.array_equal(sh.shared_down, w.shared_down[da:db])
        assert np.array_equal(sh.shared_expert_gate, w.shared_expert_gate)
    plain = tiny_model_config(model_type="qwen3_moe", num_experts=6, num_experts_per_tok=2, moe_intermediate_size=40,
                              attention_bias=True)
    held = sum(sh.nbytes() - shard_layer(plain, w, r, tp).nbytes() for r, sh in enumerate(shards))
    assert held == 2 * (3 * 64 * 58 + tp * 64)  # the stage holds the shared expert once, its gate on every rank
    steps, tags = [[1, 7, 9, 30], [12], [44]], set()
    sharded = run_tp(model, tp, steps, tags)
    assert tags == {"attn", "o_proj", "shared_act", "experts"}
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


def test_tp_sharded_logits_equal_reference_with_a_window_on_some_blocks():
    """A model windowing blocks 1 and 2 of 3 only (Qwen 2's layer_types): each rank masks a block by its
    own window, as the reference model does; the window (4) is shorter than the context (9), so a
    block that took the model's window for its own would give other logits."""
    types = ("full_attention", "sliding_attention", "sliding_attention")
    cfg = tiny_model_config(num_layers=3, num_heads=4, num_kv_heads=2, sliding_window=4, layer_types=types)
    model = LlamaModel(cfg)
    steps = [[1, 7, 9, 30, 2, 8], [12], [44], [5]]
    sharded = run_tp(model, 2, steps)
    cache = model.new_cache()
    for ids, got in zip(steps, sharded):
        ref = model.forward(ids, cache)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5
    everywhere = LlamaModel(tiny_model_config(num_layers=3, num_heads=4, num_kv_heads=2, sliding_window=4),
                            model.weights)
    cache = everywhere.new_cache()
    for ids in steps:
        other = everywhere.forward(ids, cache)
    assert np.max(np.abs(other - ref)) / np.max(np.abs(ref)) > 1e-3  # the windows matter at this context


def attention_head_by_head(cfg, s, h, start, kv, layer):
    """`shard_attention` with every query head's keys and values copied out for it, the mask always
    applied: the floats the in-place read must give, bit for bit."""
    seq, hd = h.shape[0], cfg.head_dim
    q, k, v = project_qkv(cfg, h, s.wq, s.wk, s.wv, start, s.qkv_bias, s.qk_norms)
    keys, values = kv.write(layer, k, v, start)
    kv_of_q = np.arange(s.q_heads[0], s.q_heads[1]) // cfg.num_rep - s.kv_heads[0]
    scores = q @ keys[kv_of_q].transpose(0, 2, 1) * np.float32(1.0 / np.sqrt(hd))
    scores = np.where(hidden_keys(start, seq, keys.shape[1], cfg.sliding_window), np.float32(-np.inf), scores)
    out = softmax(scores, axis=-1).astype(np.float32) @ values[kv_of_q]
    return out.transpose(1, 0, 2).reshape(seq, s.num_q_heads * hd)


@pytest.mark.parametrize("heads, kv_heads, tp, window", [
    (8, 2, 1, 0), (8, 2, 2, 0), (8, 2, 8, 0), (12, 3, 2, 0), (12, 3, 4, 0), (4, 4, 2, 0), (4, 1, 1, 0), (8, 2, 1, 5)])
def test_shard_attention_reads_kv_heads_in_place_with_the_same_floats(heads, kv_heads, tp, window):
    cfg = tiny_model_config(hidden_size=96, num_heads=heads, num_kv_heads=kv_heads, head_dim=8, sliding_window=window)
    w = random_weights(cfg)
    rng = np.random.default_rng(0)
    for rank in range(tp):
        s = shard_layer(cfg, w.layers[0], rank, tp)
        kv, kv_ref = (ShardKV(1, s.num_kv_heads, cfg.head_dim) for _ in range(2))
        start = 0
        for seq in (7, 1, 1, 3, 1, 16, 1):  # a prompt, decode steps, chunks; past the window and a KV regrowth
            h = rng.standard_normal((seq, cfg.hidden_size)).astype(np.float32)
            got = shard_attention(cfg, s, h, start, kv, 0, cfg.sliding_window)
            assert np.array_equal(got, attention_head_by_head(cfg, s, h, start, kv_ref, 0)), (rank, start, seq)
            start += seq


def test_query_groups_of_even_and_uneven_splits_are_computed_once_per_shard():
    tiny = tiny_model_config(num_heads=8, num_kv_heads=2)
    assert shard_layer(tiny, random_weights(tiny).layers[0], 0, 1).query_groups == (4, None)
    assert shard_layer(tiny, random_weights(tiny).layers[0], 3, 8).query_groups == (1, None)
    cfg = tiny_model_config(hidden_size=96, num_heads=12, num_kv_heads=3, head_dim=8)  # 4 query heads a KV head
    s = shard_layer(cfg, random_weights(cfg).layers[0], 0, 2)  # heads 0-5: 4 + 2
    r, kv_of_q = s.query_groups
    assert (r, kv_of_q.tolist()) == (1, [0, 0, 0, 0, 1, 1])
    assert s.query_groups[1] is kv_of_q  # kept, not rebuilt at every attention call


def test_hides_any_says_whether_the_mask_hides_a_key():
    for start in range(6):
        for seq in range(1, 4):
            for extra in (0, 2):  # keys up to the last query's, or more
                for window in (0, 1, 3, 5):
                    n = start + seq + extra
                    assert hides_any(start, seq, n, window) == bool(hidden_keys(start, seq, n, window).any()), \
                        (start, seq, n, window)
