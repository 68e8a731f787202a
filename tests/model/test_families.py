"""The model families people serve now, against Hugging Face transformers' own output.

tests/data/hf_families/<family>/ were written by tests/data/make_hf_family_fixtures.py with real
transformers: each a small random checkpoint saved by `save_pretrained` with the family's special
features on (Llama 3 rope scaling and tied embeddings, linear / dynamic / yarn rope, Mistral's
sliding window shorter than the prompts, Qwen 2.5's q/k/v biases, Qwen 3's q/k norms and a head
size that is not hidden / heads, Mixtral's and Qwen 3 MoE's experts, Qwen 2 MoE's gated shared expert, Qwen 2's
sliding window on some blocks only: qwen2_window), and
transformers' greedy tokens and logits for two prompts.
CI has no torch, so these files are the reference; the `hf` test rebuilds them live.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.model import LlamaModel, load_weights, model_config_from_hf
from cent_serve.model.generate import generate

DATA = Path(__file__).resolve().parent.parent / "data"
ROOT = DATA / "hf_families"
FAMILIES = sorted(p.name for p in ROOT.iterdir())
FEATURES = {  # family: (what its config.json must turn on, the same feature switched off)
    "llama3": (dict(model_type="llama", rope_type="llama3", rope_factor=8.0, rope_original_max_position=32,
                    tie_word_embeddings=True), dict(rope_type="default")),
    "llama_linear": (dict(rope_type="linear", rope_factor=4.0), dict(rope_type="default")),
    "llama_dynamic": (dict(rope_type="dynamic", rope_factor=4.0, rope_original_max_position=16, max_seq_len=64),
                      dict(rope_type="default")),
    "llama_yarn": (dict(rope_type="yarn", rope_factor=4.0, rope_original_max_position=16), dict(rope_type="default")),
    "mistral": (dict(model_type="mistral", sliding_window=8), dict(sliding_window=0)),
    "qwen2": (dict(model_type="qwen2", attention_bias=True, tie_word_embeddings=True), None),
    "qwen3": (dict(model_type="qwen3", qk_norm=True, head_dim=32, hidden_size=64, num_heads=4), None),
    # a window of 8 on blocks 1 and 2 of 3 (use_sliding_window, max_window_layers 1): off, on every block
    "qwen2_window": (dict(model_type="qwen2", sliding_window=8,
                          layer_types=("full_attention", "sliding_attention", "sliding_attention")),
                     dict(layer_types=())),
    # the experts are the feature: routed to the top k with renormalized weights, or (Qwen 3 MoE's
    # fixture) with the raw softmax probabilities
    "mixtral": (dict(model_type="mixtral", num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
                dict(norm_topk_prob=False)),
    "qwen3_moe": (dict(model_type="qwen3_moe", num_experts=6, num_experts_per_tok=3, moe_intermediate_size=48,
                       norm_topk_prob=False, qk_norm=True), dict(norm_topk_prob=True)),
    # Qwen 2 MoE's: a shared expert beside the routed ones (its own test drops it), q/k/v biases
    "qwen2_moe": (dict(model_type="qwen2_moe", num_experts=6, num_experts_per_tok=3, moe_intermediate_size=48,
                       shared_expert_intermediate_size=80, norm_topk_prob=False, attention_bias=True),
                  dict(norm_topk_prob=True)),
    # fused qkv_proj / gate_up_proj split on load, a window of 8, rotary on 12 of 16 dimensions a head
    "phi3": (dict(model_type="phi3", sliding_window=8, partial_rotary_factor=0.75, tie_word_embeddings=True),
             dict(partial_rotary_factor=1.0)),
    # longrope on 12 of 16 dimensions a head: one prompt past the original 16 positions from its prefill,
    # the other crossing it while it generates; the short factors alone (no long ones) are wrong
    "phi3_longrope": (dict(model_type="phi3", rope_type="longrope", rope_original_max_position=16, rope_factor=4.0,
                           partial_rotary_factor=0.75, rope_short_factor=(1.0, 1.2, 1.5, 1.9, 2.4, 3.0),
                           rope_long_factor=(1.0, 1.8, 3.5, 6.0, 10.0, 16.0)),
                      dict(rope_long_factor=(1.0, 1.2, 1.5, 1.9, 2.4, 3.0))),
    # GeGLU, embeddings times sqrt(64), norms weighting by 1 + w; head_dim 32, not hidden / heads = 16
    "gemma": (dict(model_type="gemma", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
                   head_dim=32, tie_word_embeddings=True), dict(hidden_act="silu")),
    # Gemma's, and soft-capped scores (2.0) and logits (3.0), the scale 24^-0.5, norms after attention and
    # around the MLP; its window (256, on alternate blocks) is the whole context: full attention
    "gemma2": (dict(model_type="gemma2", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0, query_pre_attn_scalar=24,
                    sandwich_norms=True, sliding_window=0, head_dim=32), dict(attn_logit_softcapping=0.0)),
    # Gemma 2's window (8, shorter than the prompts) on the blocks Gemma2Config windows: 0 and 2 of 3
    "gemma2_window": (dict(model_type="gemma2", attn_logit_softcapping=2.0, sandwich_norms=True, sliding_window=8,
                           layer_types=("sliding_attention", "full_attention", "sliding_attention")),
                      dict(layer_types=())),
    # Gemma 2's block without soft-capping, q/k norms by 1 + w; a window of 8 on blocks 0-4 of 6 (the
    # default layer_types), whose rope base is 100 unscaled, block 5's 10,000 with a linear scaling of 4
    "gemma3_text": (dict(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", scale_embeddings=True,
                         norm_offset=1.0, qk_norm=True, sandwich_norms=True, query_pre_attn_scalar=24,
                         attn_logit_softcapping=0.0, final_logit_softcapping=0.0, head_dim=32, sliding_window=8,
                         layer_types=("sliding_attention",) * 5 + ("full_attention",), rope_theta=10000.0,
                         rope_local_theta=100.0, rope_type="linear", rope_factor=4.0, max_seq_len=256),
                    dict(rope_local_theta=0.0)),
}
# the multimodal Gemma 3 (Gemma3ForConditionalGeneration, a tiny vision tower) around gemma3_text's model:
# its language model runs, read from text_config and the language_model.model.* tensors
FEATURES["gemma3"] = FEATURES["gemma3_text"]


def expected(family: str) -> list[dict]:
    return json.loads((ROOT / family / "expected.json").read_text())["cases"]


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def test_every_family_has_a_fixture_and_its_features():
    assert FAMILIES == sorted(FEATURES)
    for family, (on, _) in FEATURES.items():
        cfg = model_config_from_hf(ROOT / family)
        assert {k: getattr(cfg, k) for k in on} == on, family
        assert cfg.num_kv_heads < cfg.num_heads  # GQA everywhere


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_model_gives_transformers_tokens_and_logits(family):
    cfg = model_config_from_hf(ROOT / family)
    model = LlamaModel(cfg, load_weights(cfg))
    for case in expected(family):
        assert rel(model.forward(case["prompt_ids"], model.new_cache())[-1], case["last_logits"]) < 1e-4
        assert generate(model, case["prompt_ids"], len(case["greedy_ids"]), ignore_eos=True).token_ids == \
            case["greedy_ids"]


def test_a_longrope_sequence_passing_its_original_context_keeps_the_keys_it_has():
    """Phi-3's longrope at the step a generation first passes the original context: transformers'
    `generate` drops its cache and prefills the whole sequence again on the long factors; the reference
    model keeps the keys turned with the short factors, as transformers' forward over a kept cache does
    (docs/serving.md says so). Both recorded by the fixture; they part at the third token."""
    cfg = model_config_from_hf(ROOT / "phi3_longrope")
    model = LlamaModel(cfg, load_weights(cfg))
    case = json.loads((ROOT / "phi3_longrope" / "expected.json").read_text())["crossing"]
    ours = generate(model, case["prompt_ids"], len(case["kept_cache_ids"]), ignore_eos=True).token_ids
    assert ours == case["kept_cache_ids"]
    assert ours[:3] == case["generate_ids"][:3] and ours[3] != case["generate_ids"][3]


@pytest.mark.parametrize("family", [f for f in FAMILIES if FEATURES[f][1]])
def test_the_feature_is_what_makes_the_tokens_right(family):
    """Switched off, the family's feature changes the logits: the fixture exercises it."""
    cfg = model_config_from_hf(ROOT / family)
    off = dataclasses.replace(cfg, **FEATURES[family][1])
    weights = load_weights(cfg)
    case = expected(family)[0]
    logits = LlamaModel(off, weights).forward(case["prompt_ids"], LlamaModel(off, weights).new_cache())[-1]
    assert rel(logits, case["last_logits"]) > 1e-3


def test_qwen2_moe_shared_expert_is_what_makes_the_tokens_right():
    """Without its shared expert (its down projection zeroed) or with its sigmoid gate flat (weights
    zeroed: 0.5 for every token), the Qwen 2 MoE fixture's logits move away from transformers'."""
    cfg = model_config_from_hf(ROOT / "qwen2_moe")
    case = expected("qwen2_moe")[0]
    for part in ("shared_down", "shared_expert_gate"):
        weights = load_weights(cfg)
        for layer in weights.layers:  # the expert's output dropped; the gate's sigmoid a flat 0.5
            setattr(layer, part, np.zeros_like(getattr(layer, part)))
        model = LlamaModel(cfg, weights)
        assert rel(model.forward(case["prompt_ids"], model.new_cache())[-1], case["last_logits"]) > 1e-3, part


def test_qwen_features_change_the_tokens_too():
    """Biases and q/k norms dropped from the weights change the logits."""
    for family, fields in (("qwen2", ("bq", "bk", "bv")), ("qwen3", ("q_norm", "k_norm"))):
        cfg = model_config_from_hf(ROOT / family)
        weights = load_weights(cfg)
        for layer in weights.layers:
            for f in fields:
                setattr(layer, f, None)
        flat = dataclasses.replace(cfg, attention_bias=False, qk_norm=False)
        case = expected(family)[0]
        model = LlamaModel(flat, weights)
        assert rel(model.forward(case["prompt_ids"], model.new_cache())[-1], case["last_logits"]) > 1e-3, family


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("devices, pp, tp", [(4, 2, 2), (2, 0, 1), (2, 1, 2)])
def test_sharded_over_devices_gives_transformers_tokens(family, devices, pp, tp):
    """Pipeline, tensor and hybrid (pp 2 x tp 2 on 4 devices) through the device workers and the switch."""
    model = model_config_from_hf(ROOT / family)
    cases = expected(family)
    cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, tp), numerics="full")
    got = generate_batch(LocalExecutor(cfg, weights=load_weights(model)), [c["prompt_ids"] for c in cases],
                         len(cases[0]["greedy_ids"]))
    for q, case in enumerate(cases):
        assert got.token_ids[q] == case["greedy_ids"]
        assert rel(got.logits[q][0], case["last_logits"]) < 1e-4


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen3"])
def test_cli_generate_gives_transformers_tokens(family, capsys):
    case = expected(family)[1]
    assert main(["generate", "--model", str(ROOT / family), "--prompt-ids", ",".join(map(str, case["prompt_ids"])),
                 "--max-tokens", str(len(case["greedy_ids"])), "--temperature", "0", "--ignore-eos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == case["greedy_ids"]


def test_unsupported_checkpoints_are_refused_by_name(tmp_path):
    base = json.loads((ROOT / "qwen3" / "config.json").read_text())
    for change, message in (
            (dict(model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2, decoder_sparse_step=2),
             r"decoder_sparse_step=2 is not supported: 1 of its 2 blocks \(0\) would run a dense MLP"),
            (dict(model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1]),
             r"mlp_only_layers=\[1\] is not supported: 1 of its 2 blocks \(1\) would run a dense MLP"),
            (dict(model_type="gemma", hidden_act="silu"), "hidden_act='silu' is not supported: the MLP is GeGLU"),
            (dict(quantization_config={"quant_method": "awq"}), "quantization_config='awq' is not supported: cent "
             "runs unquantized weights; use the checkpoint's bf16 / fp16 / fp32 weights"),
            (dict(attention_bias=True), "attention_bias=True is not supported: an o_proj bias"),
            (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
            (dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5 is not supported"),
            (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25}),
             "partial_rotary_factor=0.25 is not supported")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        with pytest.raises(ValueError, match=message) as caught:
            model_config_from_hf(tmp_path)
        assert str(caught.value).count("not supported") == 1, caught.value  # said once, not "...: ... not supported"


@pytest.mark.parametrize("model_type, keys, says", [
    ("deepseek_v3", {}, r"multi-head latent attention \(MLA.*shared experts \(n_shared_experts\)"),
    ("deepseek_v2", {}, r"multi-head latent attention \(MLA.*shared experts"),
    # DeepSeekMoE 16B: no MLA; it said "not modelled: shared experts" (its n_shared_experts), which Qwen 2 MoE models
    ("deepseek", dict(n_shared_experts=2, first_k_dense_replace=1), r"not modelled: dense first blocks "
     r"\(first_k_dense_replace\).*Qwen 2 MoE's gated one is modelled: a qwen2_moe config.json"),
    ("qwen3_next", {}, r"Gated DeltaNet linear-attention layers, gated attention and a shared expert"),
    ("gpt_oss", {}, r"attention sinks, sliding-window attention in alternate blocks"),
    ("olmoe", {}, r"q/k norms over the whole projection \(not per head"),
    ("phimoe", {}, r"not modelled: LayerNorm.* instead of RMSNorm, the sparsemixer router"),  # Phi-3.5-MoE
    ("my_moe", dict(kv_lora_rank=512, n_shared_experts=2), r"not modelled: multi-head latent attention \(MLA\), "
     r"shared experts; supported"),  # an unknown family: what its keys announce
    ("my_model", {}, r"model_type='my_model' is not supported: supported families: llama, mistral.*, gemma3_text, "
                     r"gemma3 \(its language model\)$")])
def test_a_refused_family_names_what_is_not_modelled(tmp_path, capsys, model_type, keys, says):
    """A researcher bringing their own model learns which feature is missing, in one line, from
    `cent info` as from `cent serve` (exit 2, no traceback), not only the families that run."""
    base = json.loads((ROOT / "qwen3" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "model_type": model_type, **keys}))
    with pytest.raises(ValueError, match=says):
        model_config_from_hf(tmp_path)
    errs = []
    for command in ("info", "serve"):
        assert main([command, "--model", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and f"model_type='{model_type}'" in err
        errs.append(err.split(": error: ", 1)[1])
    assert errs[0] == errs[1]


def test_a_qwen_sliding_window_runs_on_the_blocks_transformers_windows(tmp_path):
    """transformers windows a Qwen block only with use_sliding_window: Qwen 2 and 3 from
    max_window_layers on (or where layer_types says), Qwen 2 MoE the even blocks below it, Qwen 3 MoE
    every block. A window past the context, or on no block, is full attention; one that hides keys
    windows those blocks (`model.layer_types` when not every block: it was refused before)."""
    base = json.loads((ROOT / "qwen3" / "config.json").read_text())
    del base["layer_types"]
    for change in (dict(use_sliding_window=False, sliding_window=8, max_window_layers=0),
                   dict(use_sliding_window=True, sliding_window=8),  # max_window_layers 28: no block of 2
                   dict(use_sliding_window=True, sliding_window=256, max_window_layers=0),  # = the context
                   dict(use_sliding_window=True, sliding_window=8, max_window_layers=0,
                        layer_types=["full_attention"] * 2)):
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        assert model_config_from_hf(tmp_path).sliding_window == 0, change
    moe = dict(num_experts=4, num_experts_per_tok=2)
    for change, windows in ((dict(max_window_layers=1), (0, 8)),
                            (dict(max_window_layers=0), (8, 8)),
                            (dict(max_window_layers=0, layer_types=["sliding_attention", "full_attention"]), (8, 0)),
                            (dict(model_type="qwen3_moe", max_window_layers=1, **moe), (8, 8)),
                            (dict(model_type="qwen2_moe", max_window_layers=28, **moe), (8, 0)),
                            (dict(model_type="qwen2_moe", max_window_layers=0, **moe), (0, 0))):
        (tmp_path / "config.json").write_text(json.dumps({**base, "use_sliding_window": True, "sliding_window": 8,
                                                          **change}))
        cfg = model_config_from_hf(tmp_path)
        assert cfg.block_windows == windows, change
        assert cfg.layer_types == (() if len(set(windows)) == 1 else
                                   tuple("sliding_attention" if w else "full_attention" for w in windows)), change
    # a window of the whole max_position_embeddings hides keys in the longer context a yarn rope serves
    long = {**base, "use_sliding_window": True, "sliding_window": 256, "max_window_layers": 1}
    (tmp_path / "config.json").write_text(json.dumps(long))
    assert model_config_from_hf(tmp_path).block_windows == (0, 0)
    (tmp_path / "config.json").write_text(json.dumps({**long, "rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn",
                                                                              "factor": 2.0}}))
    assert model_config_from_hf(tmp_path).block_windows == (0, 256)
    assert model_config_from_hf(tmp_path, max_seq_len=256).block_windows == (0, 0)  # served within the window


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "qwen2_moe"])
def test_a_qwen_layer_types_is_checked_as_mistral_s_and_gemma_2_s(tmp_path, model_type):
    """Qwen 2, 3 and 2 MoE read layer_types for their windowed blocks; it was taken unchecked: a list of
    two for three blocks windowed block 1 only (transformers refuses the config: one entry a block), a
    chunked_attention block ran as full attention, and a bare string fell back to max_window_layers.
    Refused now in one line, as a Mistral's or a Gemma 2's is; a list of one entry a block still runs."""
    base = json.loads((ROOT / "qwen2_window" / "config.json").read_text())
    if model_type == "qwen2_moe":
        base.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)
    base["model_type"] = model_type
    for types, says in ((["full_attention", "sliding_attention"], "layer_types names 2 blocks, not num_hidden_layers=3"),
                        (["full_attention", "chunked_attention", "sliding_attention"],
                         "layer_types='chunked_attention' is not supported"),
                        ("sliding_attention", "layer_types='sliding_attention' is not supported")):
        (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": types}))
        with pytest.raises(ValueError, match=says) as caught:
            model_config_from_hf(tmp_path)
        assert "\n" not in str(caught.value)
    (tmp_path / "config.json").write_text(json.dumps(base))
    assert model_config_from_hf(tmp_path).block_windows == (0, 8, 8)


@pytest.mark.parametrize("family", ["mistral", "mixtral", "llama3"])
def test_layer_types_mixing_full_and_sliding_attention_window_some_blocks_or_are_said_not_read(
        tmp_path, capsys, caplog, family):
    """A Mistral config.json with layer_types mixing full and sliding attention (transformers reads it
    as Ministral's: a window on the sliding blocks only) windows those blocks (`model.layer_types`).
    Llama's and Mixtral's transformers classes ignore the list: theirs runs as transformers runs it,
    with a warning that the list is not read. A uniform list, or a window past the context, runs."""
    base = json.loads((ROOT / family / "config.json").read_text())
    mixed = {**base, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}
    (tmp_path / "config.json").write_text(json.dumps(mixed))
    window = 8 if family != "llama3" else 0  # a Llama has no window; Mixtral's applies to every block
    if family == "mistral":  # read as Ministral's: the window on block 1 only (it was refused before)
        cfg = model_config_from_hf(tmp_path)
        assert (cfg.sliding_window, cfg.layer_types) == (8, ("full_attention", "sliding_attention"))
        assert main(["info", "--model", str(tmp_path)]) == 0
        capsys.readouterr()
    else:  # transformers' class ignores the list: runs as it runs, the list not read, said
        with caplog.at_level(logging.WARNING, logger="cent"):
            assert model_config_from_hf(tmp_path).sliding_window == window
        assert "layer_types (1 sliding_attention, 1 full_attention) is not read: " in caplog.text
    for types, expect in ((["sliding_attention"] * 2, window), (["full_attention"] * 2, window if family != "mistral" else 0)):
        (tmp_path / "config.json").write_text(json.dumps({**mixed, "layer_types": types}))
        assert model_config_from_hf(tmp_path).sliding_window == expect, types
    (tmp_path / "config.json").write_text(json.dumps({**mixed, "sliding_window": 256}))  # past the context: runs
    assert model_config_from_hf(tmp_path).max_seq_len <= 256
    (tmp_path / "config.json").write_text(json.dumps({**mixed, "layer_types": ["full_attention", "chunked_attention"]}))
    with pytest.raises(ValueError, match="layer_types='chunked_attention' is not supported"):
        model_config_from_hf(tmp_path)


def test_cent_info_says_what_cent_serve_would_of_a_config_it_refuses_or_runs(tmp_path, capsys):
    """`cent info --model DIR` refuses what `cent serve` refuses, in the same line and exit code 2,
    and says "runs yes" of a window that hides no key and of one on some blocks (serve starts on them:
    not run here)."""
    base = json.loads((ROOT / "qwen3" / "config.json").read_text())
    del base["layer_types"]
    (tmp_path / "config.json").write_text(json.dumps({**base, "hidden_act": "gelu"}))
    lines = []
    for command in ("info", "serve"):
        assert main([command, "--model", str(tmp_path)]) == 2
        lines.append(capsys.readouterr().err.split(": error: ", 1)[1])
    assert lines[0] == lines[1] and "hidden_act='gelu'" in lines[0]
    for keys in (dict(use_sliding_window=True, sliding_window=8), dict(use_sliding_window=True, sliding_window=8,
                                                                      max_window_layers=1)):
        (tmp_path / "config.json").write_text(json.dumps({**base, **keys}))
        assert main(["info", "--model", str(tmp_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["runnable"] is True


@pytest.mark.hf
@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2", "qwen2_window", "qwen3", "llama_yarn", "mixtral",
                                    "qwen3_moe", "qwen2_moe", "phi3", "gemma", "gemma2", "gemma2_window", "gemma3_text",
                                    "gemma3"])
def test_live_against_transformers(family, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("fam", DATA / "make_hf_family_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = mod.write(family, tmp_path / family, seed=11)["cases"]
    assert cases[0]["greedy_ids"] != expected(family)[0]["greedy_ids"]  # a fresh model, not the fixture
    cfg = model_config_from_hf(tmp_path / family)
    model = LlamaModel(cfg, load_weights(cfg))
    for case in cases:
        assert generate(model, case["prompt_ids"], len(case["greedy_ids"]), ignore_eos=True).token_ids == \
            case["greedy_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_served_on_four_devices_as_pp2_tp2_gives_transformers_tokens(family):
    """The checkpoint behind the OpenAI API (`cent serve --model PATH --devices 4 --pp 2 --tp 2`,
    in-process), one prompt after the other: the greedy tokens are transformers'. Prompts in one
    step (`scheduler.prefill_chunk_tokens` 64), as transformers' `generate` runs them: a dynamic
    rope's frequencies follow the positions each pass reaches, so a prompt fed in smaller chunks
    is rotated as transformers would rotate it fed the same way (docs/serving.md)."""
    import httpx

    from api.server import Server

    model = model_config_from_hf(ROOT / family)
    cfg = CentConfig(model=model, parallel=ParallelConfig(4, 2, 2), numerics="full")
    cfg.server.port = 0
    cfg.scheduler.prefill_chunk_tokens = 64
    with Server(cfg, "local") as s:
        with httpx.Client(base_url=s.url, timeout=60) as client:
            for case in expected(family):
                r = client.post("/v1/completions", json=dict(
                    model=model.name, prompt=case["prompt_ids"], max_tokens=len(case["greedy_ids"]), temperature=0,
                    ignore_eos=True, return_token_ids=True))
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["token_ids"] == case["greedy_ids"]


@pytest.mark.parametrize("fields", [
    dict(), dict(rope_type="llama3", rope_factor=8.0, rope_original_max_position=32),
    # linear, dynamic and yarn serve their original context factor times (vLLM's rule): 128 = 32 x 4 = 64 x 2
    dict(rope_type="linear", rope_factor=4.0, rope_original_max_position=32),
    dict(rope_type="dynamic", rope_factor=2.0, rope_original_max_position=64),
    dict(rope_type="yarn", rope_factor=4.0, rope_original_max_position=32, rope_truncate=False),
    dict(rope_type="yarn", rope_factor=4.0, rope_original_max_position=32, rope_mscale=1.0, rope_mscale_all_dim=0.5),
    dict(model_type="mistral", sliding_window=8), dict(model_type="qwen2", attention_bias=True),
    dict(model_type="qwen3", qk_norm=True, head_dim=32),
    dict(model_type="gemma", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0, head_dim=64),
    dict(model_type="gemma2", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0, head_dim=64,
         sandwich_norms=True, query_pre_attn_scalar=48, attn_logit_softcapping=2.0, final_logit_softcapping=0.0),
    dict(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
         head_dim=64, qk_norm=True, sandwich_norms=True, query_pre_attn_scalar=48, final_logit_softcapping=5.0,
         sliding_window=8, rope_local_theta=100.0, rope_type="linear", rope_factor=8.0),
    # Gemma 3 with a dynamic rope: its original context is max_position_embeddings, as every family's
    dict(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
         head_dim=64, qk_norm=True, sandwich_norms=True, query_pre_attn_scalar=48, sliding_window=8,
         rope_local_theta=100.0, rope_type="dynamic", rope_factor=2.0, rope_original_max_position=64)],
    ids=str)
def test_a_saved_checkpoint_reloads_with_every_variation(fields, tmp_path):
    from cent_serve.model.hf_checkpoint import save_hf_checkpoint
    from cent_serve.model.weights import random_weights
    from tests.factories import tiny_model_config

    cfg = tiny_model_config(**fields)
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    back = model_config_from_hf(tmp_path)
    names = ["model_type", "attention_bias", "qk_norm", "sliding_window", "head_dim", "max_seq_len", "hidden_act",
             "scale_embeddings", "norm_offset", "sandwich_norms", "query_pre_attn_scalar", "attn_logit_softcapping",
             "final_logit_softcapping", "layer_types",
             *(f.name for f in dataclasses.fields(cfg) if f.name.startswith("rope_"))]
    assert {k: getattr(back, k) for k in names} == {k: getattr(cfg, k) for k in names}


def test_variations_a_family_cannot_say_are_refused(tmp_path):
    """A bias on a Llama, a q/k norm on a Mistral: not saved, and such tensors in a checkpoint whose
    config.json does not announce them are refused instead of ignored."""
    from cent_serve.model.hf_checkpoint import save_hf_checkpoint
    from cent_serve.model.weights import random_weights
    from tests.factories import tiny_model_config

    for fields in (dict(attention_bias=True), dict(model_type="mistral", qk_norm=True)):
        with pytest.raises(ValueError, match="cannot be saved as a model_type="):
            save_hf_checkpoint(tiny_model_config(**fields), random_weights(tiny_model_config(**fields)), tmp_path)
    qwen = tiny_model_config(model_type="qwen2", attention_bias=True)
    save_hf_checkpoint(qwen, random_weights(qwen), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"self_attn\.[qkv]_proj\.bias is not part of a model_type=.llama. config"):
        load_weights(model_config_from_hf(tmp_path))


@pytest.mark.parametrize("rope, max_position, context", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 40960, 131072),  # Qwen3's
    ({"type": "yarn", "factor": 2.0}, 4096, 8192),  # no original: max_position_embeddings, as transformers
    ({"rope_type": "linear", "factor": 2.0}, 4096, 8192),
    ({"rope_type": "dynamic", "factor": 2.0}, 4096, 8192),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, 131072, 131072),  # llama3's is the context already
], ids=["yarn", "yarn_no_original", "linear", "dynamic", "llama3"])
def test_a_scaled_rope_serves_the_context_vllm_derives(tmp_path, rope, max_position, context):
    """vLLM's max_model_len for a scaled rope: the original context times the factor (yarn's original is
    its own key); a Qwen3 config with Qwen's yarn 4x served 40,960 tokens here, 131,072 in vLLM."""
    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=max_position, rope_scaling=rope)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = model_config_from_hf(tmp_path)
    assert model.max_seq_len == context
    assert model.rope_original_max_position == rope.get("original_max_position_embeddings", max_position)
    assert model_config_from_hf(tmp_path, max_seq_len=2048).max_seq_len == 2048  # --set model.max_seq_len


@pytest.mark.parametrize("change, says", [
    (dict(tie_word_embeddings="false"), r"tie_word_embeddings='false' is invalid: use true or false"),
    (dict(model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2, norm_topk_prob="false"),
     r"norm_topk_prob='false' is invalid: use true or false"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": "4", "original_max_position_embeddings": 32768}),
     r"rope_scaling.factor='4' is invalid: use a positive number"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": "32768"}),
     r"rope_scaling.original_max_position_embeddings='32768' is invalid"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0}), r"rope_scaling.factor=0 is invalid"),
])
def test_a_value_of_the_wrong_json_type_is_refused_not_taken(tmp_path, capsys, change, says):
    """"false" in quotes was true (a tied LM head dropped: 525 M parameters of Llama 3.1 8B), a factor in
    quotes a traceback; transformers refuses both."""
    base = json.loads((ROOT / "qwen3" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
    with pytest.raises(ValueError, match=says):
        model_config_from_hf(tmp_path)
    assert main(["info", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_config_without_model_type_is_refused_not_run_as_a_llama(tmp_path):
    """A Mixtral config less its model_type ran as a dense 7.2 B Llama (its experts ignored)."""
    base = json.loads((ROOT / "mixtral" / "config.json").read_text())
    del base["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"model_type is missing: .*add it \(e.g. \"model_type\": \"llama\""):
        model_config_from_hf(tmp_path)


def test_a_qwen3_moe_without_its_expert_width_takes_transformers_default(tmp_path):
    base = json.loads((ROOT / "qwen3_moe" / "config.json").read_text())
    del base["moe_intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(base))
    assert model_config_from_hf(tmp_path).moe_intermediate_size == 768  # Qwen3MoeConfig's default
    (tmp_path / "config.json").write_text(json.dumps(dict(base, moe_intermediate_size=None)))  # JSON null: the same
    assert model_config_from_hf(tmp_path).moe_intermediate_size == 768


@pytest.mark.parametrize("family, left_out, read", [
    ("mixtral", ("rope_theta", "rms_norm_eps", "num_key_value_heads", "max_position_embeddings"),
     dict(rope_theta=1e6, rms_norm_eps=1e-5, num_kv_heads=8, max_seq_len=131072)),
    ("mistral", ("sliding_window", "num_key_value_heads"), dict(sliding_window=4096, num_kv_heads=8)),
    ("qwen3_moe", ("num_key_value_heads", "max_position_embeddings"), dict(num_kv_heads=4, max_seq_len=32768)),
    ("qwen2", ("num_key_value_heads", "max_position_embeddings"), dict(num_kv_heads=32, max_seq_len=32768)),
    ("llama3", ("max_position_embeddings", "rope_scaling"), dict(max_seq_len=2048)),
])
def test_a_key_a_config_leaves_out_takes_its_family_s_transformers_default(tmp_path, family, left_out, read):
    """MixtralConfig's rope_theta is 1e6 and rms_norm_eps 1e-5, MistralConfig's sliding_window 4096,
    their KV heads 8 (Qwen3MoeConfig's 4, Qwen2Config's 32), each family's context its own: a
    config.json without them was read with Llama's (and a context of 4096)."""
    base = json.loads((ROOT / family / "config.json").read_text())
    base.update(num_attention_heads=64, head_dim=base.get("head_dim") or base["hidden_size"] // base["num_attention_heads"])
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in base.items() if k not in left_out}))
    m = model_config_from_hf(tmp_path)
    assert {k: getattr(m, k) for k in read} == read
    if "sliding_window" in left_out:  # null is no window, as transformers reads it
        (tmp_path / "config.json").write_text(json.dumps(dict(base, sliding_window=None)))
        assert model_config_from_hf(tmp_path).sliding_window == 0


@pytest.mark.parametrize("family, keys", [("mixtral", dict(n_shared_experts=2)),
                                          ("llama3", dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
                                          ("qwen3", dict(shared_expert_intermediate_size=5632))])
def test_a_supported_familys_config_with_a_feature_its_class_does_not_read_is_warned_of(tmp_path, caplog, family,
                                                                                      keys):
    """A Mixtral config.json with DeepSeek's n_shared_experts, or a Llama's with Gemma's soft-capping,
    gave the plain family's figures with no word (a user reading them as the model with shared experts):
    transformers' class of that model_type does not read the key either, so the model runs as it
    runs, and a warning names the key, the feature and what it means for the figures."""
    base = json.loads((ROOT / family / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, **keys}))
    with caplog.at_level(logging.WARNING, logger="cent"):
        got = model_config_from_hf(tmp_path)
    plain = model_config_from_hf(ROOT / family)
    assert dataclasses.replace(got, name=plain.name, checkpoint=plain.checkpoint) == plain  # the same figures
    arch = base["model_type"]
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("model.checkpoint: " + ", ".join(
        f"{k} ({'logit soft-capping' if 'softcapping' in k else 'shared experts'})" for k in keys)), said
    assert said[0].endswith(f"if the checkpoint needs it, its model_type is not {arch}"), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cent"):
        model_config_from_hf(ROOT / family)
    assert "not read" not in caplog.text  # the family's own config: no word


def test_a_config_without_max_position_embeddings_says_which_context_it_took_once(tmp_path, caplog):
    """A hand-written Llama config.json without max_position_embeddings is served LlamaConfig's 2,048
    tokens: one warning names the key, the context taken and the fix, once a checkpoint however often it
    is read (cent info, simulate, serve read it more than once); none when the key or the context is given."""
    base = json.loads((DATA / "hf_tiny_llama" / "config.json").read_text())
    for sub, keys in (("bare", {}), ("given", dict(max_position_embeddings=256)), ("set", {}), ("cli", {})):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(
            {**{k: v for k, v in base.items() if k != "max_position_embeddings"}, **keys}))
    with caplog.at_level(logging.WARNING, logger="cent"):
        assert model_config_from_hf(tmp_path / "bare").max_seq_len == 2048
        model_config_from_hf(tmp_path / "bare")
        model_config_from_hf(tmp_path / "given")
        assert model_config_from_hf(tmp_path / "set", max_seq_len=512).max_seq_len == 512  # --set model.max_seq_len
    said = [r.getMessage() for r in caplog.records if "max_position_embeddings" in r.getMessage()]
    assert said == [f"{tmp_path / 'bare' / 'config.json'}: max_position_embeddings is missing: the model's context "
                    "is transformers' llama default, 2,048 tokens; add \"max_position_embeddings\": N (the model's "
                    "context) to config.json, or give --set model.max_seq_len=N"], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cent"):
        assert main(["info", "--model", str(tmp_path / "cli")]) == 0
        assert main(["simulate", "--model", str(tmp_path / "cli"), "--devices", "2", "--seqlen", "64"]) == 0
    assert [r.getMessage() for r in caplog.records].count(said[0].replace("bare", "cli")) == 1


def test_a_config_whose_max_position_embeddings_is_null_is_refused_by_its_key(tmp_path, capsys):
    """`"max_position_embeddings": null` was refused as 'model.max_seq_len=None is invalid': cent's field, not
    the key the file holds. The refusal names the file, the key, its null and the two fixes, in one line; with
    --set model.max_seq_len=N the context is given and the file is read."""
    base = json.loads((DATA / "hf_tiny_llama" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(base, max_position_embeddings=None)))
    says = (f"{tmp_path / 'config.json'}: max_position_embeddings=null is invalid: the model's context is a "
            "positive integer; set \"max_position_embeddings\": N (the context the model was trained for) in "
            "config.json, or give --set model.max_seq_len=N")
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(tmp_path)
    assert str(refused.value) == says
    assert main(["simulate", "--model", str(tmp_path), "--devices", "2", "--seqlen", "64"]) == 2
    assert capsys.readouterr().err == f"cent simulate: error: {says}\n"
    assert model_config_from_hf(tmp_path, max_seq_len=512).max_seq_len == 512  # --set model.max_seq_len


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0}, {"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "dynamic", "factor": 2.0}])
def test_a_null_max_position_embeddings_under_a_scaled_rope_is_refused_in_one_line(tmp_path, rope):
    """yarn (without its own original_max_position_embeddings), linear and dynamic scale the original context,
    which is max_position_embeddings: a null there raised TypeError (None * factor) from the rope block, with a
    traceback, even with --set model.max_seq_len. The refusal names the file, the key and both fixes."""
    base = json.loads((DATA / "hf_tiny_llama" / "config.json").read_text())
    base = {k: v for k, v in base.items() if k != "rope_parameters"}
    (tmp_path / "config.json").write_text(json.dumps(dict(base, max_position_embeddings=None, rope_scaling=rope)))
    for given in ({}, {"max_seq_len": 512}):
        with pytest.raises(ValueError, match=r"config\.json: max_position_embeddings=null is invalid: rope_scaling's "
                           + rope["rope_type"]) as refused:
            model_config_from_hf(tmp_path, **given)
        assert ("original_max_position_embeddings" in str(refused.value)) == (rope["rope_type"] == "yarn")
    (tmp_path / "config.json").write_text(json.dumps(dict(
        base, max_position_embeddings=None, rope_scaling=dict(rope, original_max_position_embeddings=256))))
    if rope["rope_type"] == "yarn":  # its own original: the context is given by --set, the rope by its key
        assert model_config_from_hf(tmp_path, max_seq_len=512).max_seq_len == 512


def test_qwen2_moe_reads_its_shared_expert_key_without_a_warning(tmp_path, caplog):
    """shared_expert_intermediate_size announces a feature cent does not model for other families (a
    warning for a Qwen 3's config.json above; a refusal for Mixtral's and Qwen 3 MoE's); Qwen 2 MoE's
    class reads it and cent models it: no warning, the width in the config."""
    with caplog.at_level(logging.WARNING, logger="cent"):
        cfg = model_config_from_hf(ROOT / "qwen2_moe")
    assert cfg.shared_expert_intermediate_size == 80 and "not read" not in caplog.text
    base = json.loads((ROOT / "mixtral" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "shared_expert_intermediate_size": 5632}))
    with pytest.raises(ValueError, match="shared_expert_intermediate_size=5632 is not supported: shared experts"):
        model_config_from_hf(tmp_path)


WINDOW_MIXES = {  # model_type: its fields beside a window of 8 on block 1 of 3 (of 2: Qwen 2 MoE's even blocks)
    "qwen2": dict(attention_bias=True),
    "qwen3": dict(qk_norm=True),
    "mistral": dict(),
    "qwen2_moe": dict(attention_bias=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=32),
    "gemma3_text": dict(hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0, qk_norm=True,
                        sandwich_norms=True, rope_local_theta=100.0),
}


def window_mix(model_type: str):
    from tests.factories import tiny_model_config

    types = ("full_attention", "sliding_attention", "full_attention")
    return tiny_model_config(model_type=model_type, num_layers=3, sliding_window=8, layer_types=types,
                             **WINDOW_MIXES[model_type])


@pytest.mark.parametrize("model_type", sorted(WINDOW_MIXES))
def test_a_window_on_some_blocks_is_saved_as_transformers_reads_it_and_read_back(model_type, tmp_path):
    """The checkpoint writer names every block's attention in layer_types (with use_sliding_window for
    the Qwen families), so cent reads back the same windows (a Qwen 2 MoE's windows on block 1 only:
    not its default even blocks); a family whose transformers class windows every block or none
    (Phi-3, Qwen 3 MoE) cannot say it and is refused by name."""
    from cent_serve.model.hf_config_writer import hf_config_dict
    from cent_serve.model.hf_checkpoint import save_hf_checkpoint
    from cent_serve.model.weights import random_weights

    cfg = window_mix(model_type)
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    back = model_config_from_hf(tmp_path)
    assert (back.sliding_window, back.layer_types, back.block_windows) == (8, cfg.layer_types, (0, 8, 0))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["layer_types"] == list(cfg.layer_types)
    from tests.factories import tiny_model_config

    for other, fields in (("phi3", {}), ("qwen3_moe", dict(qk_norm=True, num_experts=4, num_experts_per_tok=2))):
        one = tiny_model_config(model_type=other, num_layers=3, sliding_window=8, layer_types=cfg.layer_types, **fields)
        with pytest.raises(ValueError, match=rf"model.layer_types \(a window on some blocks\) cannot be saved as a "
                                             rf"model_type='{other}' checkpoint"):
            hf_config_dict(one)


@pytest.mark.hf
@pytest.mark.parametrize("model_type", sorted(WINDOW_MIXES))
def test_transformers_windows_the_blocks_the_writer_names(model_type, tmp_path):
    transformers = pytest.importorskip("transformers")
    from cent_serve.model.hf_config_writer import hf_config_dict

    cfg = window_mix(model_type)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf.layer_types == list(cfg.layer_types) and hf.sliding_window == 8


def drift(family: str, dropped: tuple[str, ...] = (), **fields) -> float:
    """How far a fixture's first last-position logits move from transformers' with `fields` changed in
    its config and the block weights `dropped` left out."""
    cfg = model_config_from_hf(ROOT / family)
    weights, case = load_weights(cfg), expected(family)[0]
    for layer in weights.layers:
        for name in dropped:
            setattr(layer, name, None)
    model = LlamaModel(dataclasses.replace(cfg, **fields), weights)
    return rel(model.forward(case["prompt_ids"], model.new_cache())[-1], case["last_logits"])


@pytest.mark.parametrize("family, dropped, off", [
    ("gemma", (), dict(hidden_act="silu")), ("gemma", (), dict(scale_embeddings=False)),
    ("gemma", (), dict(norm_offset=0.0)),
    ("gemma2", (), dict(final_logit_softcapping=0.0)), ("gemma2", (), dict(query_pre_attn_scalar=0)),
    ("gemma2", (), dict(scale_embeddings=False)), ("gemma2", ("attn_out_norm", "mlp_out_norm"), {}),
    ("gemma3_text", (), dict(layer_types=())), ("gemma3_text", (), dict(rope_type="default")),
    ("gemma3_text", (), dict(query_pre_attn_scalar=0)), ("gemma3_text", ("q_norm", "k_norm"), {})], ids=str)
def test_each_gemma_feature_is_what_makes_its_tokens_right(family, dropped, off):
    """Each feature of a Gemma moves its fixture's logits away from transformers' when undone, so each is
    exercised: Gemma's GeGLU, sqrt(D) embedding scale and 1 + w norms (its norm weights are drawn around
    0: without the offset they scale by about 0); Gemma 2's logit soft-cap, its query_pre_attn_scalar
    scale (24^-0.5, not head_dim 32's), its embedding scale and the norms of the attention's and the MLP's
    outputs; Gemma 3's window on five blocks of six (not every block), its full block's linear rope
    scaling, its scale and its q/k norms (its sliding blocks' own rope base and Gemma 2's attention
    soft-cap: `FEATURES`)."""
    assert drift(family, dropped, **off) > 1e-3


def test_a_gemma_config_of_the_first_releases_reads_as_transformers_reads_it(tmp_path):
    """google/gemma-7b's config.json says hidden_act "gelu", which transformers' GemmaConfig reads as
    gelu_pytorch_tanh (configuration_gemma.py); one without head_dim or tie_word_embeddings takes
    GemmaConfig's 256 and true."""
    base = json.loads((ROOT / "gemma" / "config.json").read_text())
    base.update(hidden_act="gelu", num_attention_heads=2)
    del base["head_dim"], base["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(base))
    m = model_config_from_hf(tmp_path)
    assert (m.hidden_act, m.head_dim, m.tie_word_embeddings, m.norm_offset) == ("gelu_pytorch_tanh", 256, True, 1.0)


def test_a_gemma2_window_falls_on_the_blocks_its_layer_types_name(tmp_path):
    """Gemma2Config windows the blocks its layer_types name sliding_attention (by default every other
    one from block 0) by sliding_window (default 4096): read so, with one entry a block of the two kinds
    (else refused in one line); a window at least the context (or null, or on no block) hides no key
    and runs as full attention."""
    base = json.loads((ROOT / "gemma2" / "config.json").read_text())
    for change in (dict(sliding_window=256), dict(sliding_window=None), dict(sliding_window=8, max_position_embeddings=8),
                   dict(sliding_window=8, layer_types=["full_attention"] * 2)):
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        assert model_config_from_hf(tmp_path).block_windows == (0, 0), change
    for change, windows in ((dict(sliding_window=8), (8, 0)), ({"sliding_window": 8, "layer_types": None}, (8, 0)),
                            (dict(sliding_window=8, layer_types=["full_attention", "sliding_attention"]), (0, 8)),
                            (dict(sliding_window=100, layer_types=["sliding_attention"] * 2), (100, 100))):
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        assert model_config_from_hf(tmp_path).block_windows == windows, change
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in base.items() if k != "sliding_window"}))
    assert model_config_from_hf(tmp_path, max_seq_len=8192).block_windows == (4096, 0)  # Gemma2Config's default
    for types, what in ((["global", "full_attention"], "layer_types='global' is not supported"),
                        (["full_attention"] * 3, "layer_types names 3 blocks, not num_hidden_layers=2")):
        (tmp_path / "config.json").write_text(json.dumps({**base, "sliding_window": 8, "layer_types": types}))
        with pytest.raises(ValueError, match=what) as err:
            model_config_from_hf(tmp_path)
        assert "\n" not in str(err.value)


def test_gemma2_reads_its_soft_capping_keys_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cent"):
        assert model_config_from_hf(ROOT / "gemma2").attn_logit_softcapping == 2.0
    assert "not read" not in caplog.text


def test_a_gemma2_window_is_read_within_the_context_set_model_max_seq_len_serves(tmp_path, capsys):
    """`--set model.max_seq_len` reaches the config.json's reading: served within its window of 8 the
    checkpoint has no window (it hides no key), past it block 0 has it, in `cent info` as in build_config."""
    from cent_serve.config import build_config

    base = json.loads((ROOT / "gemma2" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "sliding_window": 8}))
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert build_config(str(tmp_path), overrides=["model.max_seq_len=8"]).model.block_windows == (0, 0)
    assert build_config(str(tmp_path), overrides=["model.max_seq_len=9"]).model.block_windows == (8, 0)
    assert main(["info", "--model", str(tmp_path), "--set", "model.max_seq_len=8"]) == 0


def test_a_saved_gemma2_config_says_what_transformers_strict_gemma2config_takes(tmp_path):
    """transformers 5's Gemma2Config is a strict dataclass: query_pre_attn_scalar an int (48.0 was refused
    on load), hidden_activation, the soft-caps, and without a window one of the whole context (every block
    attends to every key, as the reference model's do); no mlp_bias or hidden_act keys it does not have."""
    from cent_serve.model.hf_config_writer import hf_config_dict
    from tests.factories import tiny_model_config

    cfg = tiny_model_config(model_type="gemma2", hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0,
                            sandwich_norms=True, query_pre_attn_scalar=48, attn_logit_softcapping=2.0, max_seq_len=64)
    out = json.loads(json.dumps(hf_config_dict(cfg)))
    assert type(out["query_pre_attn_scalar"]) is int and out["query_pre_attn_scalar"] == 48
    assert (out["hidden_activation"], out["attn_logit_softcapping"], out["final_logit_softcapping"],
            out["sliding_window"]) == ("gelu_pytorch_tanh", 2.0, None, 64)
    assert "hidden_act" not in out and "mlp_bias" not in out
    with pytest.raises(ValueError, match="model.query_pre_attn_scalar=48.0 is invalid: expected an integer"):
        tiny_model_config(model_type="gemma2", query_pre_attn_scalar=48.0)


def test_a_gemma3_config_of_the_first_releases_reads_as_transformers_5_writes_it(tmp_path):
    """google/gemma-3-* config.json files say the rope at the top level (rope_theta the full blocks',
    rope_local_base_freq the sliding ones', rope_scaling the full ones' scaling) and the windowed blocks by
    sliding_window_pattern; transformers 5.25's Gemma3TextConfig reads them into the rope_parameters per
    layer type and layer_types the fixture has: the same ModelConfig."""
    new = json.loads((ROOT / "gemma3_text" / "config.json").read_text())
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "layer_types", "_sliding_window_pattern")}
    old.update(rope_theta=10000.0, rope_local_base_freq=100.0, sliding_window_pattern=6,
               rope_scaling=dict(rope_type="linear", factor=4.0))
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert model_config_from_hf(tmp_path) == dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"),
                                                                 name=tmp_path.name, checkpoint=str(tmp_path))
    del old["rope_theta"], old["rope_local_base_freq"], old["rope_scaling"]  # Gemma3TextConfig's default bases
    (tmp_path / "config.json").write_text(json.dumps(old))
    m = model_config_from_hf(tmp_path)
    assert (m.rope_theta, m.rope_local_theta, m.rope_type) == (1e6, 1e4, "default")


@pytest.mark.parametrize("change, says", [
    (dict(rope_parameters=dict(rope_type="linear", factor=8.0)), r"rope_parameters=.* keys it by layer type"),
    (dict(rope_parameters=dict(sliding_attention=dict(rope_type="linear", factor=2.0, rope_theta=1e4))),
     r"rope_parameters.sliding_attention.rope_type='linear' is not supported: .*; set it to 'default' \(Gemma 3's\)"),
    (dict(sliding_window=None), r"sliding_window=None is not supported: 5 blocks are sliding_attention"),
    (dict(use_bidirectional_attention=True), r"use_bidirectional_attention=True is not supported: .*; serve a "
     r"causal Gemma 3 checkpoint \(the key false or absent\)")])
def test_what_a_gemma3_config_says_that_is_not_modelled_is_refused_in_one_line(tmp_path, change, says):
    base = json.loads((ROOT / "gemma3_text" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
    with pytest.raises(ValueError, match=says) as err:
        model_config_from_hf(tmp_path)
    assert "\n" not in str(err.value)


def test_gemma3_attention_soft_cap_is_warned_as_not_read_and_its_final_one_read(tmp_path, caplog):
    """Gemma3Attention never passes attn_logit_softcapping to its attention (modeling_gemma3.py): a
    config.json that sets it is warned of and runs without it; final_logit_softcapping is applied."""
    base = json.loads((ROOT / "gemma3_text" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "attn_logit_softcapping": 50.0,
                                                      "final_logit_softcapping": 30.0}))
    with caplog.at_level(logging.WARNING, logger="cent"):
        m = model_config_from_hf(tmp_path)
    assert (m.attn_logit_softcapping, m.final_logit_softcapping) == (0.0, 30.0)
    assert "attn_logit_softcapping (logit soft-capping) is not read" in caplog.text
    assert "final_logit_softcapping" not in caplog.text


def test_a_multimodal_gemma3_serves_its_language_model_and_warns_once_of_its_vision_tower(caplog, tmp_path):
    """Gemma3ForConditionalGeneration's config.json (model_type gemma3) is read as its text_config with the
    top level's ids and dtype; its vision tower's and projector's 34 tensors are ignored with one warning
    naming them; the language model's, saved as language_model.model.* by transformers 5.25 and loaded by it
    as model.language_model.*, read under either name."""
    import shutil

    from cent_serve.model.hf_checkpoint import text_model_name

    shutil.copytree(ROOT / "gemma3", tmp_path / "gemma3")  # a path of its own: warned once a checkpoint path
    with caplog.at_level(logging.WARNING, logger="cent"):
        cfg = model_config_from_hf(tmp_path / "gemma3")
        load_weights(cfg)
        load_weights(cfg)
    assert dataclasses.replace(cfg, name="gemma3_text", checkpoint=None) == \
        dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"), checkpoint=None)
    assert caplog.text.count("holds 34 tensors its config.json does not use") == 1
    assert "ignored: multi_modal_projector.mm_input_projection_weight" in caplog.text
    assert "its vision tower is not modelled: the language model runs on text alone" in caplog.text
    assert [text_model_name(n) for n in ("language_model.model.norm.weight", "model.language_model.layers.0.x",
                                         "language_model.lm_head.weight", "model.vision_tower.a", "model.norm.weight")] \
        == ["model.norm.weight", "model.layers.0.x", "lm_head.weight", "model.vision_tower.a", "model.norm.weight"]
    base = json.loads((ROOT / "gemma3" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "text_config": "gemma3_text"}))
    with pytest.raises(ValueError, match=r"text_config='gemma3_text' is invalid: a gemma3 config.json gives its "
                                         r"language model's keys as a JSON object"):
        model_config_from_hf(tmp_path)


def test_gemma3_defaults_are_transformers_gemma3textconfig_s(tmp_path):
    """The Gemma3TextConfig defaults a config.json may leave out, kept together in gemma3.py, are transformers'
    (5.25's Gemma3TextConfig()); a multimodal config.json whose text_config says nothing reads as that default."""
    transformers = pytest.importorskip("transformers")
    from cent_serve.config import gemma3

    ref = transformers.Gemma3TextConfig()
    assert gemma3.SIZE_DEFAULTS == {k: getattr(ref, k) for k in gemma3.SIZE_DEFAULTS}
    assert (gemma3.DEFAULT_WINDOW, gemma3.DEFAULT_QUERY_PRE_ATTN_SCALAR) == (ref.sliding_window,
                                                                            ref.query_pre_attn_scalar)
    assert gemma3.DEFAULT_THETA == {k: ref.rope_parameters[k]["rope_theta"] for k in gemma3.KINDS}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {}}))
    m = model_config_from_hf(tmp_path)
    assert (m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim,
            m.max_seq_len, m.query_pre_attn_scalar, m.sliding_window, m.rope_theta, m.rope_local_theta) == \
        (ref.vocab_size, ref.hidden_size, ref.intermediate_size, ref.num_hidden_layers, ref.num_attention_heads,
         ref.num_key_value_heads, ref.head_dim, ref.max_position_embeddings, ref.query_pre_attn_scalar,
         ref.sliding_window, *(ref.rope_parameters[k]["rope_theta"] for k in gemma3.KINDS[::-1]))


def test_a_multimodal_gemma3_ties_its_head_by_its_own_flag(tmp_path):
    """Gemma3ForConditionalGeneration ties its LM head by Gemma3Config.tie_word_embeddings (default true),
    not by text_config's (transformers 5.25: a config.json whose text_config says false and whose top
    level says nothing is tied): read so, and an explicit top-level false unties it."""
    base = json.loads((ROOT / "gemma3" / "config.json").read_text())
    del base["tie_word_embeddings"]
    base["text_config"]["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(base))
    assert model_config_from_hf(tmp_path).tie_word_embeddings is True
    (tmp_path / "config.json").write_text(json.dumps({**base, "tie_word_embeddings": False}))
    assert model_config_from_hf(tmp_path).tie_word_embeddings is False


def test_a_gemma3_whose_windowed_blocks_would_take_the_rope_scaling_is_not_saved():
    """With rope_local_theta 0 the windowed blocks turn by rope_theta and the scaling, which a gemma3_text
    config.json cannot say (its sliding_attention rope is unscaled): refused in one line naming the fix."""
    from cent_serve.model.hf_config_writer import hf_config_dict

    cfg = dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"), rope_local_theta=0.0)
    with pytest.raises(ValueError, match=r"^model.rope_local_theta=0 cannot be saved as a model_type='gemma3_text' "
                                         r"checkpoint with model.rope_type='linear'.*set model.rope_local_theta"):
        hf_config_dict(cfg)
    assert hf_config_dict(dataclasses.replace(cfg, rope_type="default"))["rope_parameters"]["sliding_attention"] == \
        dict(rope_type="default", rope_theta=10000.0)


@pytest.mark.parametrize("types, says", [
    (["global"] * 6, r"layer_types='global' is not supported: a list of full_attention and sliding_attention blocks"),
    (["full_attention"] * 3, r"layer_types names 3 blocks, not num_hidden_layers=6: give one entry a block"),
    ("sliding_attention", r"layer_types='sliding_attention' is not supported: a list of")])
def test_a_gemma3_layer_types_is_checked_as_every_family_s(tmp_path, types, says):
    """A gemma3_text config.json's layer_types is refused by the one check every family's goes through
    (`hf_config._check_layer_types`), in the same words as Gemma 2's and Qwen's, in one line."""
    base = json.loads((ROOT / "gemma3_text" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**base, "layer_types": types}))
    with pytest.raises(ValueError, match=says) as err:
        model_config_from_hf(tmp_path)
    assert "\n" not in str(err.value)


def test_a_gemma3_without_layer_types_windows_by_sliding_window_pattern_alone(tmp_path):
    """Without layer_types, Gemma3TextConfig windows all but every sliding_window_pattern-th block (default
    6); the _sliding_window_pattern transformers 5 writes beside layer_types is not read for it (checked in
    transformers 5.25: a config of 6 blocks with _sliding_window_pattern 3 windows blocks 0-4). A pattern
    that is not a positive integer (transformers divides by it) is refused in one line."""
    base = {k: v for k, v in json.loads((ROOT / "gemma3_text" / "config.json").read_text()).items()
            if k not in ("layer_types", "_sliding_window_pattern")}
    for change, windows in ((dict(_sliding_window_pattern=3), (8,) * 5 + (0,)),
                            (dict(sliding_window_pattern=3), (8, 8, 0, 8, 8, 0))):
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        assert model_config_from_hf(tmp_path).block_windows == windows, change
    for pattern in (None, 0, "6", 2.5):
        (tmp_path / "config.json").write_text(json.dumps({**base, "sliding_window_pattern": pattern}))
        with pytest.raises(ValueError, match=rf"sliding_window_pattern={pattern!r} is not supported: give a "
                                             "positive integer") as err:
            model_config_from_hf(tmp_path)
        assert "\n" not in str(err.value)


def test_a_gemma3_without_q_k_norms_is_not_saved_as_one():
    """Gemma3Attention always has q_norm and k_norm (modeling_gemma3.py): a gemma3_text checkpoint saved
    without them would load in transformers with fresh norms (1 + 0: q and k still RMS-normalised) and run
    other numbers than cent's; refused as Qwen 3's is, naming the fix."""
    from cent_serve.model.hf_config_writer import hf_config_dict

    cfg = dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"), qk_norm=False)
    with pytest.raises(ValueError, match=r"^model.model_type='gemma3_text' has q/k norms: set model.qk_norm=true"):
        hf_config_dict(cfg)


@pytest.mark.parametrize("change, says", [
    (dict(attn_logit_softcapping=50.0), r"^model.attn_logit_softcapping=50.0 cannot be saved as a "
     r"model_type='gemma3_text' checkpoint: .*set model.attn_logit_softcapping=0.0, or model.model_type='gemma2'"),
    (dict(sandwich_norms=False), r"^model.sandwich_norms=False cannot be saved as a model_type='gemma3_text' "
     r"checkpoint: gemma2 and gemma3_text have the extra norms")])
def test_what_a_gemma3_checkpoint_cannot_say_is_refused_by_its_own_field(change, says):
    """A gemma3_text model that caps its attention logits (Gemma3Attention does not) is refused naming
    attn_logit_softcapping, not sandwich_norms; one without the extra norms says gemma3_text has them."""
    from cent_serve.model.hf_config_writer import hf_config_dict

    cfg = dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"), **change)
    with pytest.raises(ValueError, match=says) as err:
        hf_config_dict(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.hf
@pytest.mark.parametrize("change", [dict(sliding_window=0, layer_types=()),
                                    dict(rope_type="dynamic", rope_factor=2.0, rope_original_max_position=8)],
                         ids=["no window", "dynamic rope"])
def test_transformers_runs_a_saved_gemma3_as_the_reference_model(change, tmp_path):
    """The gemma3_text fixture's weights saved under a config with no window, or with a dynamic rope past
    its original 8 positions: transformers 5.25 loads the checkpoint and its logits are the reference
    model's (it refused the null window the writer gave the first, and ran the second's rope unscaled)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from cent_serve.model.hf_checkpoint import save_hf_checkpoint

    cfg = dataclasses.replace(model_config_from_hf(ROOT / "gemma3_text"), **change)
    weights, ids = load_weights(cfg), expected("gemma3_text")[0]["prompt_ids"]
    save_hf_checkpoint(cfg, weights, tmp_path)
    model = LlamaModel(cfg, weights)
    ours = model.forward(ids, model.new_cache())[-1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0, -1].numpy()
    assert len(ids) > 8 and rel(ours, theirs) < 1e-5


def test_a_gemma3_without_a_window_is_saved_with_one_of_the_whole_context(tmp_path):
    """transformers 5.25's Gemma3TextModel builds its sliding_attention mask whatever layer_types say, and
    create_sliding_window_causal_mask refuses a null window: a gemma3_text model with no windowed block
    is saved with a window of the whole context (it hides no key, as Gemma 2's writer does), and reads
    back with none."""
    from cent_serve.model.hf_config_writer import hf_config_dict
    from cent_serve.model.hf_checkpoint import save_hf_checkpoint
    from cent_serve.model.weights import random_weights
    from tests.factories import tiny_model_config

    cfg = tiny_model_config(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", scale_embeddings=True,
                            norm_offset=1.0, qk_norm=True, sandwich_norms=True, query_pre_attn_scalar=48)
    out = hf_config_dict(cfg)
    assert (out["sliding_window"], out["layer_types"]) == (cfg.max_seq_len, ["full_attention"] * cfg.num_layers)
    save_hf_checkpoint(cfg, random_weights(cfg), tmp_path)
    assert model_config_from_hf(tmp_path).block_windows == (0,) * cfg.num_layers


GEMMA3_27B_CONFIG = {  # google/gemma-3-27b-it's config.json (transformers 4.50), the vision tower's keys cut short
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3", "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                    "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "model_type": "siglip_vision_model", "patch_size": 14}}


GEMMA3_1B_CONFIG = {  # google/gemma-3-1b-pt's config.json (transformers 4.50): a gemma3_text of its own
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 262144}


@pytest.mark.parametrize("name, config", [("gemma-3-27b", GEMMA3_27B_CONFIG), ("gemma-3-1b", GEMMA3_1B_CONFIG)])
def test_the_published_gemma3_configs_read_as_their_presets(tmp_path, name, config):
    """Gemma 3 27B's config.json gives its text_config's sizes, window and rope scaling only; the rest is
    Gemma3TextConfig's defaults (no soft-capping, rope bases 1e6 and 1e4, 131,072 positions, 262,208 tokens,
    layer_types from sliding_window_pattern 6), as transformers 5.25 reads it; 1B's is a text model's with the
    older rope keys: each reads as its preset."""
    from cent_serve.config import model_preset

    (tmp_path / "config.json").write_text(json.dumps(config))
    m, preset = model_config_from_hf(tmp_path), model_preset(name)
    assert dataclasses.replace(m, name=preset.name, checkpoint=None, bos_token_id=preset.bos_token_id) == preset


def test_a_config_file_s_max_seq_len_reads_a_checkpoint_window_as_set_model_max_seq_len_does(tmp_path):
    """A Qwen 2 window of 8 on blocks 1 and 2 in a config.json whose own context is 8 hides nothing there,
    so the window is read as none; served at 64 it hides keys. `--model DIR --set model.max_seq_len=64`
    read the config.json within 64 and windowed the blocks, but a config file's `model: {checkpoint: DIR,
    max_seq_len: 64}` (and `--config` with that --set) read it within 8 and served 64 tokens on full
    attention: another model than transformers'. Every way of naming the context now reads the same."""
    from cent_serve.config import build_config, load_config

    ckpt = tmp_path / "q"
    ckpt.mkdir()
    hf = json.loads((ROOT / "qwen2_window" / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**hf, "max_position_embeddings": 8}))
    assert model_config_from_hf(ckpt).block_windows == (0, 0, 0)  # within 8: no key hidden
    (tmp_path / "served.yaml").write_text(f"model:\n  checkpoint: {ckpt}\n  max_seq_len: 64\n")
    (tmp_path / "plain.yaml").write_text(f"model:\n  checkpoint: {ckpt}\n")
    for model in (build_config(str(ckpt), overrides=["model.max_seq_len=64"]).model,
                  load_config(tmp_path / "served.yaml").model,
                  build_config(config=tmp_path / "plain.yaml", overrides=["model.max_seq_len=64"]).model,
                  build_config(config=tmp_path / "served.yaml", overrides=["model.max_seq_len=64"]).model):
        assert (model.max_seq_len, model.block_windows) == (64, (0, 8, 8))
    assert build_config(config=tmp_path / "served.yaml", overrides=["model.max_seq_len=8"]).model.block_windows == \
        (0, 0, 0)  # the --set context is the one served
    # written as --set takes any integer (6.4e1, 64.0: `_int_text`), the same context, the same windows
    for text in ("6.4e1", "64.0", " 64 "):
        model = build_config(str(ckpt), overrides=[f"model.max_seq_len={text}"]).model
        assert (model.max_seq_len, model.block_windows) == (64, (0, 8, 8)), text
        (tmp_path / "text.yaml").write_text(f"model:\n  checkpoint: {ckpt}\n  max_seq_len: {text.strip()}\n")
        model = load_config(tmp_path / "text.yaml").model  # PyYAML reads 6.4e1 as text, as --set gives it
        assert (model.max_seq_len, model.block_windows) == (64, (0, 8, 8)), text


def test_a_swept_checkpoint_is_read_within_the_context_the_sweep_sets(tmp_path):
    """`cent sweep --vary model=DIR --set model.max_seq_len=64` resolved each varied checkpoint at its
    config.json's own context (8: the window of blocks 1 and 2 hides nothing there, read as none) and then
    served 64 tokens on full attention, where `cent simulate --model DIR --set model.max_seq_len=64`
    windows them: a point is read within the context its sets give, as build_config reads it."""
    from cent_serve.config import build_config
    from cent_serve.sweep import point_config

    ckpt = tmp_path / "q"
    ckpt.mkdir()
    hf = json.loads((ROOT / "qwen2_window" / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**hf, "max_position_embeddings": 8}))
    base = build_config("tiny", numerics="off")
    for sets, point in ((["model.max_seq_len=64"], {"model": str(ckpt)}),
                        ([], {"model": str(ckpt), "model.max_seq_len": "64"})):
        model = point_config(base, point, sets).model
        assert (model.max_seq_len, model.block_windows) == (64, (0, 8, 8)), (sets, point)
    assert point_config(base, {"model": str(ckpt)}).model.block_windows == (0, 0, 0)  # its own 8
