"""Mixtures of experts: the router's math, experts spread over devices, checkpoints in both layouts.

Equality with transformers' own tokens is in test_families.py (the `mixtral` and `qwen3_moe`
fixtures, also sharded over 4 devices as pp 2 x tp 2); here the pieces and the edge cases.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cent_serve.config import CentConfig, ModelConfig, ParallelConfig
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.model import LlamaModel, load_weights, model_config_from_hf
from cent_serve.model.generate import generate
from cent_serve.model.layers import route, softmax
from cent_serve.model.weights import random_weights, save_hf_checkpoint
from cent_serve.sharding import experts_of
from tests.factories import tiny_model_config

F32 = np.float32


def moe_config(**overrides) -> ModelConfig:
    fields = dict(model_type="mixtral", num_experts=6, num_experts_per_tok=2)
    fields.update(overrides)
    return tiny_model_config(**fields)


def test_router_takes_the_top_k_and_renormalizes_as_asked():
    rng = np.random.default_rng(0)
    h, router = rng.standard_normal((5, 8), dtype=F32), rng.standard_normal((6, 8), dtype=F32)
    experts, weights = route(h, router, 3, normalize=False)
    probs = softmax(h @ router.T)
    for t in range(5):
        want = sorted(range(6), key=lambda e: -probs[t, e])[:3]  # by hand: the three most probable
        assert experts[t].tolist() == want
        assert np.allclose(weights[t], probs[t, want])
    _, normed = route(h, router, 3, normalize=True)
    assert np.allclose(normed.sum(axis=1), 1.0) and np.allclose(normed, weights / weights.sum(axis=1, keepdims=True))


def test_a_moe_block_is_the_weighted_sum_of_its_tokens_experts():
    """The reference block's MLP against a plain loop over tokens: each token's k experts' SwiGLU
    outputs times its router weights."""
    from cent_serve.model.reference import mlp

    cfg = moe_config()
    w = random_weights(cfg).layers[0]
    h = np.random.default_rng(1).standard_normal((4, cfg.hidden_size), dtype=F32)
    experts, weights = route(h, w.router, 2, True)
    want = np.zeros_like(h)
    for t in range(4):
        for e, p in zip(experts[t], weights[t]):
            x = h[t]
            gate = x @ w.experts_gate[e].T
            want[t] += p * ((gate / (1 + np.exp(-gate)) * (x @ w.experts_up[e].T)) @ w.experts_down[e].T)
    assert np.allclose(mlp(cfg, w, h), want, atol=1e-5)


def test_experts_spread_round_robin_and_ranks_may_hold_none():
    cfg = moe_config(num_experts=6)
    assert [experts_of(cfg, r, 4) for r in range(4)] == [(0, 4), (1, 5), (2,), (3,)]
    assert [experts_of(cfg, r, 8)[:1] for r in range(8)] == [(0,), (1,), (2,), (3,), (4,), (5,), (), ()]


@pytest.mark.parametrize("devices, pp, tp", [(4, 1, 4), (2, 0, 1), (4, 2, 2)])
def test_sharded_moe_gives_the_reference_tokens(devices, pp, tp):
    """Experts on the devices of a stage (3 experts on tp 4: one rank holds none), the combine adding
    them in expert order: the reference's tokens, and its logits to float32 rounding (the devices
    multiply a round's sequences together, the reference one sequence at a time)."""
    cfg_m = moe_config(num_experts=3, num_experts_per_tok=2)
    weights = load_weights(cfg_m)
    ref = LlamaModel(cfg_m, weights)
    prompts = [[1, 5, 9, 20, 31], [1, 44, 2, 7]]
    want = [generate(ref, p, 6, ignore_eos=True) for p in prompts]
    cfg = CentConfig(model=cfg_m, parallel=ParallelConfig(devices, pp, tp), numerics="full")
    got = generate_batch(LocalExecutor(cfg, weights=weights), prompts, 6)
    for q in range(len(prompts)):
        assert got.token_ids[q] == want[q].token_ids
    cache = ref.new_cache()
    want_logits = ref.forward(prompts[0], cache)[-1]
    assert np.max(np.abs(got.logits[0][0] - want_logits)) < 1e-5 * np.max(np.abs(want_logits))


def test_weights_hold_every_expert():
    cfg = moe_config(num_experts=6, hidden_size=64, intermediate_size=160, moe_intermediate_size=40)
    w = random_weights(cfg)
    assert w.layers[0].experts_gate.shape == (6, 40, 64) and w.layers[0].experts_down.shape == (6, 64, 40)
    params = sum(a.size for layer in w.layers for a in vars(layer).values() if a is not None)
    params += w.embed.size + w.lm_head.size + w.final_norm.size
    assert params == cfg.param_count()
    assert cfg.active_block_param_count() == cfg.block_param_count() - 4 * 3 * 64 * 40  # 2 of 6 experts read


@pytest.mark.parametrize("fields", [dict(), dict(model_type="qwen3_moe", qk_norm=True, moe_intermediate_size=40,
                                                 norm_topk_prob=False, head_dim=32)], ids=["mixtral", "qwen3_moe"])
def test_a_saved_moe_checkpoint_reloads_with_the_same_tokens(fields, tmp_path):
    cfg = moe_config(**fields)
    weights = random_weights(cfg)
    save_hf_checkpoint(cfg, weights, tmp_path)
    back = model_config_from_hf(tmp_path)
    for key in ("model_type", "num_experts", "num_experts_per_tok", "expert_size", "norm_topk_prob", "qk_norm"):
        assert getattr(back, key) == getattr(cfg, key), key
    a = generate(LlamaModel(cfg, weights), [1, 5, 9], 8, ignore_eos=True).token_ids
    assert generate(LlamaModel(back, load_weights(back)), [1, 5, 9], 8, ignore_eos=True).token_ids == a


@pytest.mark.parametrize("fields", [dict(), dict(model_type="qwen3_moe", qk_norm=True, moe_intermediate_size=40,
                                                 head_dim=32)], ids=["mixtral", "qwen3_moe"])
def test_fused_expert_tensors_are_read_too(fields, tmp_path):
    """transformers 5 holds a layer's experts as (E, 2 F_e, D) gate-then-up and (E, D, F_e) stacks
    under `mlp.experts`, and Mixtral's router as `mlp.gate`; a checkpoint written in that form loads
    to the same weights."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    cfg = moe_config(**fields)
    weights = random_weights(cfg)
    save_hf_checkpoint(cfg, weights, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        tensors = {k.replace("block_sparse_moe.gate", "mlp.gate"): f.get_tensor(k) for k in f.keys()}
    fused = {k: v for k, v in tensors.items() if ".experts." not in k}
    for i, layer in enumerate(weights.layers):
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = np.concatenate([layer.experts_gate, layer.experts_up], 1)
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = layer.experts_down
    save_file({k: np.ascontiguousarray(v.astype(F32)) for k, v in fused.items()}, str(tmp_path / "model.safetensors"))
    back = load_weights(model_config_from_hf(tmp_path))
    for mine, theirs in zip(weights.layers, back.layers):
        for key in ("router", "experts_gate", "experts_up", "experts_down"):
            assert np.array_equal(getattr(mine, key), getattr(theirs, key)), key


def test_a_checkpoint_whose_experts_disagree_with_its_config_is_refused(tmp_path):
    cfg = moe_config()
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "num_local_experts": 8}))
    with pytest.raises(ValueError, match=r"gate.weight has shape \(6, 64\), expected \(8, 64\) from config.json"):
        load_weights(model_config_from_hf(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**raw, "num_experts_per_tok": None}))
    with pytest.raises(ValueError, match="num_experts_per_tok=None is not supported"):
        model_config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "mistral", "num_local_experts": None,
                                                      "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ValueError, match="is an expert's or a router's, but model.num_experts=0"):
        load_weights(model_config_from_hf(tmp_path))


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="mixtral", num_experts=0), "model.num_experts=0 is invalid.*is a mixture of experts"),
    (dict(model_type="llama", num_experts=4, num_experts_per_tok=2), "model.num_experts=4 is invalid.*is dense"),
    (dict(model_type="mixtral", num_experts=4, num_experts_per_tok=5), "model.num_experts_per_tok=5 is invalid"),
    (dict(model_type="mixtral", num_experts=4, num_experts_per_tok=2, expert_skew=-1), "model.expert_skew=-1"),
])
def test_bad_moe_fields_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_model_config(**fields)
