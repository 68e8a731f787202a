"""Phi-3 (`model_type: phi3`: Phi-3-mini/medium, Phi-3.5-mini, Phi-4-mini): a Mistral block whose
checkpoints fuse q/k/v (`self_attn.qkv_proj`) and gate/up (`mlp.gate_up_proj`), with a partial rotary
embedding in Phi-4-mini and longrope scaling in the 128k variants.

transformers' own tokens and logits for a tiny Phi-3 are tests/data/hf_families/phi3 (test_families.py);
here: the published configs' shapes, the split of the fused tensors, the equality with the same weights
as an unfused Mistral checkpoint, and the timing, which is the Mistral's of the same sizes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig, model_preset
from cent_serve.model import LlamaModel, load_weights, model_config_from_hf
from cent_serve.model.hf_checkpoint import iter_checkpoint_tensors, save_hf_checkpoint, split_fused
from cent_serve.model.weights import random_weights
from cent_serve.preflight import check_runnable
from tests.factories import tiny_model_config

ROOT = Path(__file__).resolve().parent.parent / "data" / "hf_families"

PHI3_MINI_4K = {  # microsoft/Phi-3-mini-4k-instruct config.json (the keys that shape the model)
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
    "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "sliding_window": 2047,
    "rope_theta": 10000.0, "rope_scaling": None, "rms_norm_eps": 1e-05, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
    "torch_dtype": "bfloat16"}
LONGROPE = {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.5] * 48}
"""A 128k variant's rope_scaling (48 factors: half of a 96-wide head); the values do not matter here."""
PHI3_MINI_128K = {**PHI3_MINI_4K, "max_position_embeddings": 131072, "sliding_window": 262144, "rope_scaling": LONGROPE}
PHI4_MINI = {**PHI3_MINI_4K, "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064,
             "max_position_embeddings": 131072, "partial_rotary_factor": 0.75, "sliding_window": 262144,
             "tie_word_embeddings": True, "eos_token_id": 199999, "bos_token_id": 199999, "pad_token_id": 199999,
             "rope_scaling": {**LONGROPE, "short_factor": [1.0] * 48, "long_factor": [1.5] * 48}}
"""microsoft/Phi-4-mini-instruct: 24 query / 8 KV heads of 128, rotary on 96 of them, tied embeddings."""


def _write(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_tiny_phi3_config_reads_as_the_model_transformers_builds():
    m = model_config_from_hf(ROOT / "phi3")
    assert (m.model_type, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim,
            m.vocab_size, m.max_seq_len, m.sliding_window, m.partial_rotary_factor, m.rotary_dim,
            m.tie_word_embeddings, m.rope_type) == ("phi3", 64, 176, 2, 4, 2, 16, 512, 256, 8, 0.75, 12, True, "default")


def test_phi3_mini_4k_reads_as_published(tmp_path):
    m = model_config_from_hf(_write(tmp_path / "phi3-mini-4k", PHI3_MINI_4K))
    assert (m.model_type, m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size,
            m.vocab_size, m.max_seq_len, m.sliding_window, m.rope_type, m.rotary_dim) == (
        "phi3", 3072, 32, 32, 32, 96, 8192, 32064, 4096, 2047, "default", 96)
    assert round(m.param_count() / 1e9, 2) == 3.82  # "3.8B parameters" (the model card)
    assert dataclasses.replace(m, name="phi3-mini-4k", checkpoint=None) == model_preset("phi3-mini-4k")  # the preset is it


def test_the_128k_variants_read_with_longrope_and_phi4_mini_with_its_partial_rotary(tmp_path):
    m = model_config_from_hf(_write(tmp_path / "a", PHI3_MINI_128K))
    assert (m.rope_type, m.max_seq_len, m.rope_original_max_position, m.rope_factor) == ("longrope", 131072, 4096, 32.0)
    old = {**PHI3_MINI_128K, "rope_scaling": {**LONGROPE, "type": "su"}}  # Phi3Config's older name of it
    assert model_config_from_hf(_write(tmp_path / "b", old)).rope_type == "longrope"
    p = model_config_from_hf(_write(tmp_path / "c", PHI4_MINI))
    assert (p.num_heads, p.num_kv_heads, p.head_dim, p.rotary_dim, p.tie_word_embeddings, p.vocab_size,
            p.rope_type) == (24, 8, 128, 96, True, 200064, "longrope")
    assert round(p.param_count() / 1e9, 2) == 3.84  # Phi-4-mini: "3.8B parameters"


def test_the_fused_tensors_split_into_exactly_their_parts():
    cfg = tiny_model_config(model_type="phi3", num_heads=4, num_kv_heads=2)
    rng = np.random.default_rng(0)
    d, q, kv, f = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    wq, wk, wv = (rng.standard_normal((n, d)).astype(np.float32) for n in (q, kv, kv))
    gate, up = (rng.standard_normal((f, d)).astype(np.float32) for _ in range(2))
    parts = split_fused(cfg, "self_attn.qkv_proj.weight", np.concatenate([wq, wk, wv]))
    assert list(parts) == ["wq", "wk", "wv"]
    assert all(np.array_equal(parts[k], w) for k, w in zip(parts, (wq, wk, wv)))
    parts = split_fused(cfg, "mlp.gate_up_proj.weight", np.concatenate([gate, up]))
    assert np.array_equal(parts["w_gate"], gate) and np.array_equal(parts["w_up"], up)
    with pytest.raises(ValueError, match=r"gate_up_proj.weight has shape .* expected \(.*\) \(.* \+ .* rows\)"):
        split_fused(cfg, "mlp.gate_up_proj.weight", gate)


def test_a_phi3_checkpoint_is_saved_fused_and_runs_as_the_same_weights_unfused_in_a_mistral(tmp_path):
    """Full numerics: the phi3 checkpoint (fused, as transformers writes it) and the same weights
    saved unfused as a Mistral give the same logits, bit for bit (the same float32 arrays in the same
    math: the split is row slices of the fused tensors)."""
    phi3 = tiny_model_config(model_type="phi3", sliding_window=8, num_heads=4, num_kv_heads=2)
    weights = random_weights(phi3)
    save_hf_checkpoint(phi3, weights, tmp_path / "phi3")
    names = {name for name, _ in iter_checkpoint_tensors(tmp_path / "phi3", shapes_only=True)}
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.0.mlp.gate_up_proj.weight" in names
    assert not any(n.endswith((".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".gate_proj.weight", ".up_proj.weight"))
                   for n in names)
    mistral = dataclasses.replace(phi3, model_type="mistral")
    save_hf_checkpoint(mistral, weights, tmp_path / "mistral")
    a, b = model_config_from_hf(tmp_path / "phi3"), model_config_from_hf(tmp_path / "mistral")
    assert (a.model_type, a.sliding_window) == ("phi3", 8) and b.model_type == "mistral"
    ids = [1, 5, 9, 20, 7, 43, 88, 30, 12, 51, 64, 3, 25, 17]  # past the window of 8
    ma, mb = LlamaModel(a, load_weights(a)), LlamaModel(b, load_weights(b))
    ca, cb = ma.new_cache(), mb.new_cache()
    assert np.array_equal(ma.forward(ids, ca), mb.forward(ids, cb))
    assert np.array_equal(ma.forward([7], ca), mb.forward([7], cb))  # a decode step from the cache


def test_a_phi3_checkpoint_holding_unfused_tensors_is_refused_by_name(tmp_path):
    mistral = tiny_model_config(model_type="mistral", num_heads=4, num_kv_heads=2)
    save_hf_checkpoint(mistral, random_weights(mistral), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "phi3"}))
    with pytest.raises(ValueError, match=r"(q|k|v|gate|up)_proj\.weight is not part of a model_type='phi3' config.*"
                                         r"phi3 holds q/k/v and gate/up fused"):
        load_weights(model_config_from_hf(tmp_path))


def test_longrope_is_computed_and_without_its_factors_refused_by_full_numerics_in_one_line(tmp_path, capsys):
    """longrope was timed only. Its numerics are tests/data/hf_families/phi3_longrope's (test_families.py);
    here: a 128k variant's config.json runs full numerics; a longrope without its factor lists (a config.json
    that leaves them out, `--set model.rope_type=longrope`) is timed, and full numerics refuses it in one line;
    a list of the wrong length is refused naming the field and the count."""
    small = {**PHI3_MINI_128K, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "eos_token_id": 2,
             "pad_token_id": 0, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}}
    model = model_config_from_hf(_write(tmp_path / "phi3-128k-small", small))
    assert (model.rope_short_factor, model.rope_long_factor) == ((1.0,) * 8, (2.0,) * 8)
    check_runnable(CentConfig(model=dataclasses.replace(model, checkpoint=None), numerics="full"))
    bare = _write(tmp_path / "no-factors", {**small, "rope_scaling": {"type": "longrope"}})
    with pytest.raises(ValueError, match=r"model.rope_type='longrope' without model.rope_short_factor cannot be "
                                         r"computed.*--numerics off"):
        check_runnable(CentConfig(model=dataclasses.replace(model_config_from_hf(bare), checkpoint=None),
                                  numerics="full"))
    for command in (["info"], ["serve", "--port", "0"]):  # port 0: a server on 8000 changes nothing
        assert main([*command, "--model", str(bare), "--numerics", "full"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "rope_scaling" in err and "--numerics off" in err, err
    assert main(["info", "--model", str(bare), "--numerics", "off"]) == 0
    capsys.readouterr()
    weighted = tmp_path / "with-weights"
    tiny = tiny_model_config(model_type="phi3", eos_token_id=2)
    save_hf_checkpoint(tiny, random_weights(tiny), weighted)
    raw = json.loads((weighted / "config.json").read_text())
    _write(weighted, {**raw, "rope_scaling": {"type": "longrope"}, "original_max_position_embeddings": 32})
    auto = CentConfig(model=model_config_from_hf(weighted))  # numerics auto: small, weights there, no factors
    assert auto.numerics_why == ("off", "auto: model.rope_type='longrope' without its factors is timed, not computed; "
                                        "the text is a stand-in, the times are the model's")
    (weighted / "model.safetensors").write_bytes(b"not read")  # cent generate: refused before its weights load
    assert main(["generate", "--model", str(weighted), "--prompt-ids", "1,2,3", "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rope_scaling" in err and "--numerics off" in err, err
    assert main(["simulate", "--model", str(bare), "--numerics", "off", "--seqlen", "64", "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"model.rope_short_factor=\(1.0, 1.0\) is invalid: give one factor per "
                                         r"pair of rotated dimensions: 8"):
        dataclasses.replace(model, rope_short_factor=(1.0, 1.0))
    longs = dataclasses.replace(model, rope_long_factor="1,2,3,4,5,6,7,8").rope_long_factor  # --set's text
    assert longs == tuple(map(float, range(1, 9)))
    assert main(["info", "--model", "tiny", "--set", "model.rope_short_factor=1,x"]) == 2  # --set's text, one line
    assert "model.rope_short_factor='1,x' is invalid: expected positive numbers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="longrope' cannot be saved"):
        save_hf_checkpoint(model, random_weights(dataclasses.replace(model, rope_type="default")), tmp_path / "out")


@pytest.mark.parametrize("kind, extra", [("yarn", dict(rope_factor=2.0, rope_original_max_position=64)),
                                         ("linear", dict(rope_factor=2.0)), ("dynamic", dict(rope_factor=2.0))])
def test_a_phi3_with_a_scaling_phi3config_refuses_is_neither_saved_nor_read(tmp_path, kind, extra):
    """transformers' Phi3Config takes default and longrope only (yarn and su are read as longrope):
    a phi3 saved with yarn read back as longrope, and one with linear or
    dynamic scaling was a config.json transformers refuses to load."""
    cfg = tiny_model_config(model_type="phi3", rope_type=kind, **extra)
    with pytest.raises(ValueError, match=rf"model.rope_type='{kind}' cannot be saved as a model_type='phi3'"):
        save_hf_checkpoint(cfg, random_weights(cfg), tmp_path / "out")
    raw = {**PHI3_MINI_4K, "rope_scaling": {"rope_type": kind, "factor": 2.0}}
    if kind == "yarn":  # Phi3Config's older name of longrope, as transformers reads it
        raw["rope_scaling"].update(short_factor=[1.0] * 48, long_factor=[1.5] * 48)
        assert model_config_from_hf(_write(tmp_path / "in", raw)).rope_type == "longrope"
        return
    with pytest.raises(ValueError, match=rf"rope_scaling.rope_type='{kind}' is not supported: supported: default, "
                                         r"longrope \(transformers' Phi3Config takes no other scaling\)"):
        model_config_from_hf(_write(tmp_path / "in", raw))


def test_a_phi3_config_json_leaving_keys_out_reads_as_phi3config_fills_them(tmp_path):
    """Phi3Config's defaults, not the general ones: RMSNorm's eps 1e-5 (LlamaConfig's is 1e-6), a
    4,096-token context, no window, as many KV heads as query heads."""
    sparse = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512, "bos_token_id": 1,
              "eos_token_id": 2}
    m = model_config_from_hf(_write(tmp_path, sparse))
    assert (m.rms_norm_eps, m.max_seq_len, m.sliding_window, m.num_kv_heads, m.rope_theta) == (1e-5, 4096, 0, 4, 1e4)


def test_partial_rotary_factor_is_rope_parameters_one_when_the_config_says_two(tmp_path):
    """transformers 5 writes the factor at the top level and in rope_parameters, and reads the latter
    (Phi3Config: `rope_parameters.setdefault(...)`); a config whose two disagree rotates what it says."""
    raw = json.loads((ROOT / "phi3" / "config.json").read_text())
    assert model_config_from_hf(_write(tmp_path / "a", {**raw, "partial_rotary_factor": 0.5})).rotary_dim == 12
    alone = {k: v for k, v in raw.items() if k != "rope_parameters"}  # transformers 4's: the top level only
    assert model_config_from_hf(_write(tmp_path / "b", {**alone, "partial_rotary_factor": 0.5})).rotary_dim == 8
