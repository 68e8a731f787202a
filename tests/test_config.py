"""The config tree: presets, YAML, overrides and errors that name field, value and fix."""
from __future__ import annotations

import json

import pytest

from cent_serve.cli import main
from cent_serve.config import (CentConfig, ModelConfig, ParallelConfig, apply_overrides,
                               config_to_dict, load_config, model_preset)


def test_presets_have_the_paper_dimensions():
    m = model_preset("llama2-70b")
    assert (m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.num_layers, m.head_dim) == \
        (8192, 28672, 64, 8, 80, 128)
    assert m.num_rep == 8
    # Llama2-7B has 6.74e9 parameters (Touvron et al. 2023, the released checkpoint)
    assert abs(model_preset("llama2-7b").param_count() - 6.738e9) / 6.738e9 < 0.001
    assert abs(m.param_count() - 68.98e9) / 68.98e9 < 0.002


def test_tiny_is_small_gqa():
    m = model_preset("tiny")
    assert m.num_kv_heads < m.num_heads and m.param_count() < 10_000_000


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_heads=8, num_kv_heads=3), "model.num_kv_heads=3"),
    (dict(hidden_size=100, num_heads=8), "model.hidden_size=100"),
    (dict(weight_dtype="fp8"), "model.weight_dtype='fp8'"),
    (dict(eos_token_id=999), "model.eos_token_id=999"),
])
def test_model_errors_name_field_value_and_fix(kwargs, field):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert field in str(err.value) and ":" in str(err.value)


def test_cross_field_mapping_errors():
    with pytest.raises(ValueError, match="pp x tp = 16 exceeds parallel.num_devices=8"):
        CentConfig(parallel=ParallelConfig(num_devices=8, pp=4, tp=4))
    with pytest.raises(ValueError, match="parallel.pp=9"):
        CentConfig(parallel=ParallelConfig(num_devices=8, pp=9))
    with pytest.raises(ValueError, match="parallel.tp=9"):
        ParallelConfig(num_devices=8, tp=9)


def test_yaml_config_with_preset_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: llama2-7b}\nparallel: {num_devices: 8, pp: 2, tp: 4}\n"
                    "device: {clock_hz: 1.0e9, energy: {rd_mw: 500.0}}\nnumerics: 'off'\n")
    cfg = load_config(path)
    assert cfg.model.hidden_size == 4096 and cfg.parallel.tp == 4 and cfg.device.energy.rd_mw == 500.0
    cfg = apply_overrides(cfg, ["scheduler.max_seqs_per_stage=4", "fabric.multicast=false"])
    assert cfg.scheduler.max_seqs_per_stage == 4 and cfg.fabric.multicast is False
    json.dumps(config_to_dict(cfg))
    with pytest.raises(ValueError, match="device.bogus is not a field"):
        path.write_text("device: {bogus: 1}\n")
        load_config(path)
    with pytest.raises(ValueError, match="scheduler.max_waiting='many' is invalid: expected an integer"):
        apply_overrides(cfg, ["scheduler.max_waiting=many"])


def test_cli_info_and_generate(capsys):
    assert main(["info", "--model", "llama2-13b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["model"]["hidden_size"] == 5120 and info["numerics"] == "off"
    assert info["weight_bytes"] == info["param_count"] * 2
    assert main(["generate", "--prompt-ids", "1,5,9", "--max-tokens", "5", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["generate", "--prompt-ids", "1,5,9", "--max-tokens", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first and len(first["token_ids"]) == 5
    assert main(["generate", "--prompt-ids", "1,x"]) == 2
    assert "--prompt-ids" in capsys.readouterr().err
    assert main(["info", "--model", "no-such-model"]) == 2
    assert "neither a preset" in capsys.readouterr().err
