"""Mixtures of experts: the router's math, experts spread over devices, checkpoints in both layouts.

Equality with transformers' own tokens is in test_families.py (the `mixtral`, `qwen3_moe` and
`qwen2_moe` fixtures, also sharded over 4 devices as pp 2 x tp 2); here the pieces and the edge cases.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cent_serve.config import CentConfig, ModelConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.model import LlamaModel, load_weights, model_config_from_hf
from cent_serve.model.generate import generate
from cent_serve.model.layers import route, softmax
from cent_serve.model.reference import mlp
from cent_serve.model.hf_checkpoint import hf_tensor_names, save_hf_checkpoint
from cent_serve.model.weights import random_weights
from cent_serve.sharding import experts_of, shard_layer
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
                                                 norm_topk_prob=False, head_dim=32),
                                    dict(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=False),
                                    # qkv_bias false is written (Qwen2MoeConfig's default is true)
                                    dict(model_type="qwen2_moe", attention_bias=False, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=True)],
                         ids=["mixtral", "qwen3_moe", "qwen2_moe", "qwen2_moe-no-bias"])
def test_a_saved_moe_checkpoint_reloads_with_the_same_tokens(fields, tmp_path):
    cfg = moe_config(**fields)
    weights = random_weights(cfg)
    save_hf_checkpoint(cfg, weights, tmp_path)
    back = model_config_from_hf(tmp_path)
    for key in ("model_type", "num_experts", "num_experts_per_tok", "expert_size", "norm_topk_prob", "qk_norm",
                "attention_bias", "shared_expert_intermediate_size"):
        assert getattr(back, key) == getattr(cfg, key), key
    a = generate(LlamaModel(cfg, weights), [1, 5, 9], 8, ignore_eos=True).token_ids
    assert generate(LlamaModel(back, load_weights(back)), [1, 5, 9], 8, ignore_eos=True).token_ids == a


def test_a_qwen2_moe_checkpoint_holds_its_shared_expert_and_needs_it(tmp_path):
    """Qwen 2 MoE's shared expert and its gate are saved under transformers' names, read back to the
    same arrays, and a checkpoint without them is refused by name."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    cfg = moe_config(**dict(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=False))
    weights = random_weights(cfg)
    save_hf_checkpoint(cfg, weights, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    shapes = {"mlp.shared_expert.gate_proj.weight": (56, 64), "mlp.shared_expert.up_proj.weight": (56, 64),
              "mlp.shared_expert.down_proj.weight": (64, 56), "mlp.shared_expert_gate.weight": (1, 64)}
    for i in range(cfg.num_layers):
        for suffix, shape in shapes.items():
            assert tensors[f"model.layers.{i}.{suffix}"].shape == shape
    assert set(tensors) == set(hf_tensor_names(cfg))
    back = load_weights(model_config_from_hf(tmp_path))
    for mine, theirs in zip(weights.layers, back.layers):
        for key in ("shared_gate", "shared_up", "shared_down", "shared_expert_gate"):
            assert np.array_equal(getattr(mine, key), getattr(theirs, key)), key
    del tensors["model.layers.1.mlp.shared_expert_gate.weight"]
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensors \['model.layers.1.mlp.shared_expert_gate.weight'\]"):
        load_weights(model_config_from_hf(tmp_path))


def test_a_qwen2_moe_block_is_routed_experts_plus_the_gated_shared_expert():
    """One block's MLP against a token-by-token numpy computation written from transformers' Qwen 2
    MoE sparse block: softmax over the 6 router logits, the top 2 probabilities as they are
    (norm_topk_prob false), each expert SwiGLU(x) times its probability, plus the shared expert's
    SwiGLU(x) times sigmoid(gate . x)."""
    cfg = moe_config(**dict(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=False))
    w = random_weights(cfg).layers[0]
    h = np.random.default_rng(3).standard_normal((5, 64)).astype(F32)

    def swiglu(x, gate, up, down):
        a = x @ gate.T
        return (a / (1 + np.exp(-a)) * (x @ up.T)) @ down.T

    want, shared = np.zeros((5, 64)), np.zeros((5, 64))
    for t, x in enumerate(h.astype(np.float64)):
        logits = w.router @ x
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        for e in np.argsort(-p)[:2]:
            want[t] += p[e] * swiglu(x, w.experts_gate[e], w.experts_up[e], w.experts_down[e])
        shared[t] = swiglu(x, w.shared_gate, w.shared_up, w.shared_down) / (1 + np.exp(-(w.shared_expert_gate[0] @ x)))
    want += shared
    got = mlp(cfg, w, h)
    assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))
    routed = mlp(moe_config(norm_topk_prob=False), w, h)  # the same weights without the shared expert
    assert np.max(np.abs(got - routed - shared)) < 1e-4 * np.max(np.abs(shared))  # what the shared expert adds
    assert np.max(np.abs(shared)) > 0.1 * np.max(np.abs(want))  # and it is no rounding error


def test_a_stage_s_ranks_split_the_shared_expert_and_each_holds_its_gate():
    """Sharded over a stage's 4 devices, the routed experts spread round robin, the shared expert is split
    by outputs as a dense MLP (its gate and up by rows of F_s, its down by rows of D: put side by side they
    are the whole) and its D -> 1 gate sits whole on every rank, as the router does."""
    cfg = moe_config(**dict(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=False))
    w = random_weights(cfg).layers[0]
    shards = [shard_layer(cfg, w, r, 4) for r in range(4)]
    assert [s.experts for s in shards] == [(0, 4), (1, 5), (2,), (3,)]
    assert [s.shared_gate.shape for s in shards] == [(14, 64)] * 4 and [s.shared_down.shape for s in shards] == [(16, 56)] * 4
    for key in ("shared_gate", "shared_up", "shared_down"):
        assert np.array_equal(np.concatenate([getattr(s, key) for s in shards]), getattr(w, key)), key
    assert all(np.array_equal(s.shared_expert_gate, w.shared_expert_gate) for s in shards)
    held = 2 * (3 * 64 * 56 // 4 + 64)  # a quarter of the shared expert and its whole gate in bf16
    plain = [shard_layer(moe_config(model_type="qwen3_moe", attention_bias=True, moe_intermediate_size=40),
                         w, r, 4).nbytes() for r in range(4)]
    assert [s.nbytes() - p for s, p in zip(shards, plain)] == [held] * 4


def test_a_qwen1_5_moe_config_json_reads_as_published(tmp_path):
    """Qwen1.5-MoE-A2.7B's config.json (Hugging Face hub, Qwen/Qwen1.5-MoE-A2.7B) reads to its shape;
    its parameters are the published 14.3 B in total and 2.7 B activated (Qwen's blog, "Qwen1.5-MoE")."""
    hf = dict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632,
              num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, vocab_size=151936,
              max_position_embeddings=8192, rope_theta=1000000.0, rms_norm_eps=1e-6, num_experts=60,
              num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
              norm_topk_prob=False, decoder_sparse_step=1, use_sliding_window=False, sliding_window=32768,
              max_window_layers=21, tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643,
              torch_dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    m = model_config_from_hf(tmp_path)
    assert (m.model_type, m.num_experts, m.num_experts_per_tok, m.expert_size, m.shared_expert_intermediate_size,
            m.norm_topk_prob, m.attention_bias, m.qk_norm, m.sliding_window, m.head_dim) == \
        ("qwen2_moe", 60, 4, 1408, 5632, False, True, False, 0, 128)
    assert round(m.param_count() / 1e9, 1) == 14.3 and round(m.param_count(active=True) / 1e9, 1) == 2.7
    assert dataclasses.replace(m, name="qwen1.5-moe-a2.7b", checkpoint=None) == model_preset("qwen1.5-moe-a2.7b")  # the preset is it
    # what transformers' Qwen2MoeConfig takes for keys left out: 1408-wide experts, a 5632-wide shared
    # expert, weights not renormalised, q/k/v biases (qkv_bias); qkv_bias false drops them
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob"):
        del hf[key]
    (tmp_path / "config.json").write_text(json.dumps({**hf, "qkv_bias": False}))
    bare = model_config_from_hf(tmp_path)
    assert (bare.expert_size, bare.shared_expert_intermediate_size, bare.norm_topk_prob, bare.attention_bias) == \
        (1408, 5632, False, False)


@pytest.mark.parametrize("change, message", [
    (dict(decoder_sparse_step=2), r"decoder_sparse_step=2 is not supported: 1 of its 2 blocks \(0\) would run a "
     r"dense MLP of width intermediate_size=\d+ among the mixture-of-experts blocks .* use decoder_sparse_step 1 "
     r"and mlp_only_layers \[\]"),
    (dict(mlp_only_layers=[1]), r"mlp_only_layers=\[1\] is not supported: 1 of its 2 blocks \(1\) would run a dense"),
    (dict(decoder_sparse_step=2, mlp_only_layers=[1]), r"decoder_sparse_step=2 and mlp_only_layers=\[1\] are not "
     r"supported: 2 of its 2 blocks \(0, 1\)"),
    (dict(decoder_sparse_step=0), r"decoder_sparse_step=0 is invalid: use a positive integer"),
    (dict(mlp_only_layers=[-1]), r"mlp_only_layers=\[-1\] is invalid: use a list of block indices"),
    (dict(shared_expert_intermediate_size=0), "shared_expert_intermediate_size=0 is invalid: use a positive integer")])
def test_what_a_qwen2_moe_config_cannot_run_is_refused_in_one_line(tmp_path, change, message):
    """Dense blocks among the sparse ones (decoder_sparse_step, mlp_only_layers) are not modelled
    (every block is a mixture of experts): the refusal names the key, the blocks transformers would make
    dense and the fix."""
    cfg = moe_config(**dict(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                                                 shared_expert_intermediate_size=56, norm_topk_prob=False))
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**{k: v for k, v in raw.items() if k not in change}, **change}))
    with pytest.raises(ValueError, match=message) as err:
        model_config_from_hf(tmp_path)
    assert "\n" not in str(err.value)


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
    (dict(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2),
     "model.shared_expert_intermediate_size=0 is invalid: model_type='qwen2_moe' has a shared expert"),
    (dict(model_type="mixtral", num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=64),
     "model.shared_expert_intermediate_size=64 is invalid: only model_type='qwen2_moe' has a shared expert"),
])
def test_bad_moe_fields_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_model_config(**fields)


def test_qwen2_moe_s_config_has_no_attention_bias_key(tmp_path):
    """Qwen2MoeAttention reads qkv_bias, never attention_bias (its o_proj has no bias): a config.json that
    says attention_bias true runs in transformers as without it, so it loads (as Qwen 2.5's does); cent
    writes qkv_bias alone."""
    from tests.model.test_families import ROOT
    raw = json.loads((ROOT / "qwen2_moe" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "attention_bias": True}))
    assert model_config_from_hf(tmp_path).attention_bias is True  # from qkv_bias
    cfg = moe_config(model_type="qwen2_moe", attention_bias=True, moe_intermediate_size=40,
                     shared_expert_intermediate_size=56, norm_topk_prob=False)
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["qkv_bias"] is True and "attention_bias" not in saved


@pytest.mark.parametrize("model_type, change", [
    ("qwen2_moe", dict(mlp_only_layers=[2, 7])),  # blocks past num_hidden_layers=2: none dense
    ("qwen3_moe", dict(mlp_only_layers=[5], decoder_sparse_step=1)),
    ("mixtral", dict(decoder_sparse_step=2, mlp_only_layers=[0]))])  # keys MixtralConfig does not have
def test_dense_block_keys_that_leave_every_block_sparse_are_read(tmp_path, model_type, change):
    """transformers' Qwen MoE decoder layer puts experts in block i unless i is in mlp_only_layers or
    (i + 1) % decoder_sparse_step != 0 (modeling_qwen2_moe.py): a list of blocks the model does not have
    makes none dense, so the config runs as it is (it was refused); Mixtral's class never reads either key."""
    extra = dict(attention_bias=True, shared_expert_intermediate_size=56, norm_topk_prob=False) \
        if model_type == "qwen2_moe" else dict(qk_norm=True) if model_type == "qwen3_moe" else {}
    cfg = moe_config(model_type=model_type, **({"moe_intermediate_size": 40} if model_type != "mixtral" else {}), **extra)
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **change}))
    got = model_config_from_hf(tmp_path)
    assert (got.num_layers, got.num_experts, got.param_count()) == (2, cfg.num_experts, cfg.param_count())
