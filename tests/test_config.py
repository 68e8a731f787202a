"""The config tree: presets, YAML, overrides and errors that name field, value and fix."""
from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from cent_serve.cli import main
from cent_serve.config import (CentConfig, ModelConfig, ParallelConfig, apply_overrides, build_config,
                               config_to_dict, load_config, model_label, model_preset)


def test_presets_have_the_paper_dimensions():
    m = model_preset("llama2-70b")
    assert (m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.num_layers, m.head_dim) == \
        (8192, 28672, 64, 8, 80, 128)
    assert m.num_rep == 8
    # Llama2-7B has 6.74e9 parameters (Touvron et al. 2023, the released checkpoint)
    assert abs(model_preset("llama2-7b").param_count() - 6.738e9) / 6.738e9 < 0.001
    assert abs(m.param_count() - 68.98e9) / 68.98e9 < 0.002


GEMMA_PARAMS = {"gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896, "gemma-2-9b": 9_241_705_984,
                "gemma-2-27b": 27_227_128_320}
"""The parameters of google/gemma-2b and gemma-7b (their safetensors, as the Hugging Face hub counts them;
the embedding tied to the LM head, counted once)."""


@pytest.mark.parametrize("name", sorted(GEMMA_PARAMS))
def test_gemma_presets_have_the_published_parameter_counts(name):
    m = model_preset(name)
    assert m.param_count() == GEMMA_PARAMS[name]
    assert (m.model_type in ("gemma", "gemma2"), m.hidden_act, m.scale_embeddings, m.norm_offset,
            m.tie_word_embeddings) == (True, "gelu_pytorch_tanh", True, 1.0, True)
    assert m.sandwich_norms == (m.model_type == "gemma2")  # two more norms a block: 2 D counted (9B: 301,056)


GEMMA3_PARAMS = {"gemma-3-1b": 999_885_952, "gemma-3-4b": 3_880_263_168, "gemma-3-12b": 11_766_034_176,
                 "gemma-3-27b": 27_009_346_304}
"""Gemma 3's text models: google/gemma-3-1b-pt's parameters (the hub's 1.0 B), and the language models of
gemma-3-4b-pt, 12b-pt and 27b-pt (the hub's 4.3 B, 12.2 B and 27.4 B with the 0.4 B SigLIP vision tower)."""


@pytest.mark.parametrize("name", sorted(GEMMA3_PARAMS))
def test_gemma3_presets_have_their_text_models_parameter_counts(name, tmp_path):
    """A Gemma 3 preset's parameters: Gemma 2's block (four norms of D) with q/k norms (2 head_dim) and
    no soft-capping, counted by hand for the 1B (D 1152, H 4, Hkv 1, hd 256, F 6912, 26 blocks, 262,144
    tokens); its window on five blocks of six, the full ones' rope scaled; saved as a config.json, it reads
    back as itself."""
    import dataclasses

    from cent_serve.config.hf_config import model_config_from_hf
    from cent_serve.model.hf_config_writer import hf_config_dict

    m = model_preset(name)
    assert m.param_count() == GEMMA3_PARAMS[name]
    block = 1152 * 1024 * 2 + 2 * 1152 * 256 + 2 * 256 + 4 * 1152 + 3 * 1152 * 6912
    assert GEMMA3_PARAMS["gemma-3-1b"] == 26 * block + 262144 * 1152 + 1152
    assert (m.attn_logit_softcapping, m.final_logit_softcapping, m.qk_norm, m.sandwich_norms) == (0.0, 0.0, True, True)
    assert [b for b, w in enumerate(m.block_windows) if not w] == list(range(5, m.num_layers, 6))
    assert (m.rope_type, m.rope_theta, m.rope_local_theta) == ("default" if name == "gemma-3-1b" else "linear", 1e6, 1e4)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(m)))
    assert dataclasses.replace(model_config_from_hf(tmp_path), name=name, checkpoint=None, weight_dtype=m.weight_dtype) == m


@pytest.mark.parametrize("name", ["gemma-2-9b", "gemma-2-27b"])
def test_gemma2_presets_window_every_other_block_and_save_as_transformers_reads_them(name, tmp_path):
    """A Gemma 2 preset serves the published 8192 tokens with its 4096-token window on blocks 0, 2, 4,
    ... (Gemma2Config's default layer_types); saved as a checkpoint it reads back the same, and so does
    its config.json without layer_types (the default pattern) or with the window left out (4096)."""
    import dataclasses

    from cent_serve.config.hf_config import model_config_from_hf
    from cent_serve.model.hf_config_writer import hf_config_dict

    m = model_preset(name)
    assert (m.max_seq_len, m.sliding_window) == (8192, 4096)
    assert m.block_windows == tuple(4096 if b % 2 == 0 else 0 for b in range(m.num_layers))
    written = hf_config_dict(m)
    assert written["layer_types"][:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    for change in ({}, dict(layer_types=None), dict(sliding_window=None)):
        cfg = {k: v for k, v in {**written, **change}.items() if v is not None}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        back = model_config_from_hf(tmp_path)
        assert dataclasses.replace(back, name=name, checkpoint=None, weight_dtype=m.weight_dtype) == m, change


@pytest.mark.parametrize("kwargs, field", [
    (dict(hidden_act="gelu"), "model.hidden_act='gelu'"),
    (dict(model_type="mixtral", num_experts=4, num_experts_per_tok=2, hidden_act="gelu_pytorch_tanh"),
     "model.hidden_act='gelu_pytorch_tanh'"),
    (dict(norm_offset=0.5), "model.norm_offset=0.5"),
])
def test_gemma_fields_are_checked_in_one_line(kwargs, field):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_a_local_rope_base_is_refused_on_a_family_that_has_none(capsys):
    """model.rope_local_theta is Gemma 3's (its sliding blocks' rope_local_base_freq); on another family the
    numerics turned its windowed blocks by it all the same, a model no transformers config can say."""
    for model in ("llama2-7b", "mistral-7b", "gemma-2-9b"):
        assert main(["info", "--model", model, "--numerics", "off", "--set", "model.rope_local_theta=1e4"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "model.rope_local_theta=10000.0 is invalid: use 0" in err, err
        assert "the sliding blocks' own base is gemma3_text's" in err, err
    assert main(["info", "--model", "gemma-3-1b", "--numerics", "off", "--set", "model.rope_local_theta=2e4"]) == 0
    capsys.readouterr()


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
    assert info["config"]["executor"] == "local"  # the config given (it printed "ray", serve's, used for its check)
    assert main(["generate", "--prompt-ids", "1,5,9", "--max-tokens", "5", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["generate", "--prompt-ids", "1,5,9", "--max-tokens", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first and len(first["token_ids"]) == 5
    assert main(["generate", "--prompt-ids", "1,x"]) == 2
    assert "--prompt-ids" in capsys.readouterr().err
    assert main(["info", "--model", "no-such-model"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_a_hub_id_as_model_says_how_to_bring_the_model_without_a_download(capsys):
    """`cent info --model meta-llama/Llama-3.1-8B-Instruct` (a Hub id, as vLLM takes it) said only
    "neither a preset nor an existing checkpoint directory": a user without the weights did not learn
    that nothing is downloaded and that the model's config.json in a directory is enough to time it."""
    assert main(["info", "--model", "meta-llama/Llama-3.1-8B-Instruct"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'meta-llama/Llama-3.1-8B-Instruct' is neither a preset" in err
    assert "nothing is downloaded" in err and "config.json" in err and "enough to time it" in err
    # cent generate has no --numerics flag and runs the real math: the hint names no flag and says so
    assert main(["generate", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--prompt-ids", "1"]) == 2
    err = capsys.readouterr().err
    assert "nothing is downloaded" in err and "--numerics" not in err and "cent generate" in err, err


def test_cli_info_says_whether_the_paper_batch_fits_beside_whether_serve_runs(capsys):
    """llama2-7b on 4 devices: cent serve runs (one sequence fits), cent simulate refuses its 32 queries
    of 4,096 tokens; info said only "runs yes" (research audit)."""
    assert main(["info", "--model", "llama2-7b", "--devices", "4"]) == 0
    out = capsys.readouterr().out
    assert "runs         yes (cent serve: the weights and one sequence of the whole context fit)" in out
    assert ("paper batch  32 queries of 4096 tokens (cent simulate's): do not fit: device 0: weights 3.26 GiB"
            in out and "the largest batch at context 4096 is 25" in out)
    # its shorter context is cent simulate's --seqlen: model.max_seq_len does not move the 4096 tokens
    line = next(line for line in out.splitlines() if line.startswith("paper batch"))
    assert "a shorter context with cent simulate --seqlen N" in line and "model.max_seq_len" not in line
    assert main(["info", "--model", "llama2-7b", "--devices", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["paper_batch"] == dict(batch=32, context=4096, fits=True, why=None)


def test_cli_info_says_the_kv_room_the_scheduler_admits_against(capsys):
    """The KV room was visible only in a capacity error or as a share on timeline.png (architecture
    audit). By hand, 70B on 32 devices: device 0 holds 5.27 GiB of weights and 3 blocks' KV, 3 x 4 KiB
    a token; (its capacity - its weights) / (16 tokens x 12 KiB) blocks (docs/hardware_model.md: 58,602)."""
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing.mapping import device_weight_bytes, resolve_mapping

    assert main(["info", "--model", "llama2-70b", "--devices", "32", "--pp", "80", "--json"]) == 0
    room = json.loads(capsys.readouterr().out)["kv_room"]
    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(32, 80, 1))
    weights = device_weight_bytes(cfg.model, resolve_mapping(cfg.model, cfg.parallel, cfg.device), 0, 2)
    assert room == dict(blocks=(cfg.device.capacity_bytes - weights) // (16 * 12 * 2**10), block_tokens=16,
                        tokens=16 * room["blocks"], replicas=1) and room["blocks"] == 58602
    assert main(["info", "--model", "llama2-7b", "--devices", "16", "--pp", "8"]) == 0
    out = capsys.readouterr().out
    assert "pp=8 tp=1; KV room 233,424 tokens a replica (14,589 blocks of 16), 2 replicas; numerics" in out


def test_cli_info_kv_per_token_counts_the_kv_heads_tp_replicates(capsys):
    """tiny has 2 KV heads: at tp=4 each is held by 2 devices, as the KV room counts them, but the
    per-token line said 2,048 bytes "on the devices", the model's figure (by hand: 2 x 8 blocks x 2
    heads x 32 x 2 B = 2,048; stored 2 x 8 blocks x 4 heads x 32 x 2 B = 4,096)."""
    assert main(["info", "--model", "tiny", "--devices", "8", "--pp", "2", "--tp", "4"]) == 0
    out = capsys.readouterr().out
    assert ("kv cache     2,048 bytes per token of the model, 4,096 stored on the devices (tp=4 over 2 KV heads: "
            "each held by 2 devices)") in out
    assert main(["info", "--model", "tiny", "--devices", "8", "--pp", "2", "--tp", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kv_bytes_per_token"], info["kv_stored_bytes_per_token"]) == (2048, 4096)
    assert main(["info", "--model", "tiny", "--devices", "8", "--pp", "4", "--tp", "2"]) == 0  # no replica
    assert "kv cache     2,048 bytes per token on the devices\n" in capsys.readouterr().out


def test_cli_info_on_gpus_shows_the_gpus_not_a_cent_mapping(capsys):
    assert main(["info", "--model", "llama2-70b", "--hardware", "gpu:a100-80gb:8", "--set", "gpu.tp=4"]) == 0
    out = capsys.readouterr().out
    assert "hardware     8 x a100-80gb: pp 1 x tp 4 x 2 replicas; KV room" in out and "\nmapping " not in out
    assert main(["info", "--model", "llama2-70b", "--hardware", "gpu:a100-80gb:1"]) == 2
    out, err = capsys.readouterr()
    assert "hardware     1 x a100-80gb: pp 1 x tp 1; numerics" in out and "does not fit on 1 x a100-80gb" in err
    assert err.rstrip().endswith("use more GPUs (--hardware gpu:KIND:N)")  # one GPU: no larger tp to suggest
    assert main(["info", "--model", "llama2-70b", "--hardware", "gpu:a100-80gb:4", "--set", "gpu.tp=1"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("over more of the 4 (a larger gpu.tp or gpu.pp)")


def _numeric_paths(positive: bool | None = None) -> list[str]:
    """Every numeric field of the tree (`section.field`), or those that must be > 0 (positive=True)
    or may be 0 (positive=False)."""
    from cent_serve.config.checks import _numeric_fields
    from cent_serve.config_doc import sections

    return [f"{prefix}{f.name}" for prefix, cls, plain in sections() for f in plain if f.name in _numeric_fields(cls)
            and (positive is None or (f.name in getattr(cls, "_positive", ())) == positive)]


def test_the_rule_for_numbers_covers_the_fields_the_audit_found():
    paths = set(_numeric_paths())
    assert {"device.host_sample_s", "device.gemv_af_group_size", "device.softmax_dma_passes", "device.unit_cost_usd",
            "device.energy.rd_mw", "fabric.cxl_port_latency_ns", "fabric.num_cxl_ports", "gpu.tco_per_gpu"} <= paths
    assert {"device.clock_hz", "device.gemv_af_group_size", "fabric.lane_gbps", "gpu.tco_per_gpu"} <= \
        set(_numeric_paths(positive=True))


@pytest.mark.parametrize("path", _numeric_paths())
def test_every_number_refuses_nan_inf_and_negatives(path):
    for bad in ("nan", "inf", "-inf", "-1"):
        with pytest.raises(ValueError, match=re.escape(path) + "=.* is invalid: ") as err:
            apply_overrides(CentConfig(), [f"{path}={bad}"])
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("path", _numeric_paths(positive=True))
def test_counts_clocks_and_divisors_refuse_zero(path):
    with pytest.raises(ValueError, match=re.escape(path) + "=0(.0)? is invalid: use a "):
        apply_overrides(CentConfig(), [f"{path}=0"])


def test_a_replica_retry_of_zero_is_refused_from_a_file_and_by_set(tmp_path):
    """0 s between re-creations would ask the cluster for a replica's units again on every pass of the
    engine loop while none can be granted; a file and `--set` reach the field, and refuse 0 by its name."""
    (tmp_path / "c.yaml").write_text("server: {replica_retry_s: 2.5}\n")
    assert load_config(tmp_path / "c.yaml").server.replica_retry_s == 2.5
    assert apply_overrides(CentConfig(), ["server.replica_retry_s=0.5"]).server.replica_retry_s == 0.5
    with pytest.raises(ValueError, match=r"server\.replica_retry_s=0(\.0)? is invalid: use a finite positive"):
        apply_overrides(CentConfig(), ["server.replica_retry_s=0"])


@pytest.mark.parametrize("path", _numeric_paths(positive=False))
def test_other_numbers_take_zero(path):
    assert apply_overrides(CentConfig(), [f"{path}=0"]) is not None


@pytest.mark.parametrize("text, field", [
    ("device: {host_sample_s: .nan}", "device.host_sample_s"), ("fabric: {lane_gbps: .inf}", "fabric.lane_gbps"),
    ("device: {energy: {rd_mw: .inf}}", "device.energy.rd_mw"), ("gpu: {tco_per_gpu: 0}", "gpu.tco_per_gpu"),
])
def test_yaml_nan_inf_and_zero_divisors_are_refused(tmp_path, text, field):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ValueError, match=r"c\.yaml: " + re.escape(field) + "=.* is invalid: use a "):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("word", ["none", " Null ", "NONE", ""])
def test_an_optional_field_is_unset_the_same_way_in_a_file_and_by_set(tmp_path, word):
    (tmp_path / "c.yaml").write_text(f"gpu: {{tco_per_gpu: '{word}'}}\nserver: {{max_tokens_default: '{word}'}}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.gpu.tco_per_gpu is None and cfg.server.max_tokens_default is None
    cfg = apply_overrides(cfg, ["gpu.tco_per_gpu=2.5", "server.max_tokens_default=64"])
    assert (cfg.gpu.tco_per_gpu, cfg.server.max_tokens_default) == (2.5, 64)
    cfg = apply_overrides(cfg, [f"gpu.tco_per_gpu={word}", f"server.max_tokens_default={word}"])
    assert cfg.gpu.tco_per_gpu is None and cfg.server.max_tokens_default is None


@pytest.mark.parametrize("override", ["device.energy.rd_mw=1e308", "device.energy.access_clock_hz=1e-300",
                                      "device.energy.pcie_pj_per_bit=1e16", "device.rows_per_bank=10000000000000000"])
def test_numbers_whose_products_overflow_are_refused(override):
    """An energy of 1e308 mW made the figures NaN and --json print NaN (not JSON)."""
    with pytest.raises(ValueError, match=re.escape(override.split("=")[0]) + "=.* is invalid: use a value from 1e-15"):
        apply_overrides(CentConfig(), [override])


def test_an_integer_may_be_written_as_a_float_and_a_bad_one_gets_an_example(tmp_path):
    cfg = apply_overrides(CentConfig(), ["device.rows_per_bank=1.6e4", "scheduler.max_waiting=64.0"])
    assert (cfg.device.rows_per_bank, cfg.scheduler.max_waiting) == (16000, 64)
    (tmp_path / "c.yaml").write_text("device: {rows_per_bank: 1.6e4}\nscheduler: {max_waiting: 1e4}\n"
                                     "server: {max_tokens_default: 1.0e3}\n")  # PyYAML reads these as strings
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.device.rows_per_bank, cfg.scheduler.max_waiting, cfg.server.max_tokens_default) == (16000, 10000, 1000)
    for text in ("1.5", "inf", "many"):
        with pytest.raises(ValueError, match=f"device.rows_per_bank='{text}' is invalid: expected an integer, e.g."):
            apply_overrides(cfg, [f"device.rows_per_bank={text}"])


def test_a_redacted_api_key_reads_back_as_none(tmp_path, caplog):
    cfg = apply_overrides(CentConfig(), ["server.api_key=secret"])
    (tmp_path / "c.json").write_text(json.dumps(config_to_dict(cfg)))
    assert "secret" not in (tmp_path / "c.json").read_text()
    assert load_config(tmp_path / "c.json").server.api_key is None
    assert "server.api_key was redacted" in caplog.text


@pytest.mark.parametrize("text, ids", [("128009", (128009,)), ("[128008, 128009]", (128008, 128009)),
                                       ("'128008,128009'", (128008, 128009)), ("[]", ()), ("none", ())])
def test_extra_eos_ids_in_a_file_take_one_id_a_list_or_text(tmp_path, text, ids):
    (tmp_path / "c.yaml").write_text(f"model: {{name: llama3.1-8b, extra_eos_token_ids: {text}}}\n")
    assert load_config(tmp_path / "c.yaml").model.extra_eos_token_ids == ids


def test_extra_eos_ids_are_refused_by_name_in_a_file_and_unset_by_set(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {name: tiny, extra_eos_token_ids: [1, x]}\n")
    with pytest.raises(ValueError, match=r"model.extra_eos_token_ids=\[1, 'x'\] is invalid: expected integers"):
        load_config(tmp_path / "c.yaml")
    cfg = apply_overrides(CentConfig(), ["model.extra_eos_token_ids=5,9"])
    assert apply_overrides(cfg, ["model.extra_eos_token_ids=none"]).model.extra_eos_token_ids == ()


@pytest.mark.parametrize("hint, text, typed", [(tuple[float, ...], "1,1.5", (1.0, 1.5)),
                                                (tuple[int, ...], "5,9", (5, 9)),
                                                (tuple[str, ...], "full_attention,sliding_attention",
                                                 ("full_attention", "sliding_attention"))])
def test_a_tuple_field_is_read_by_its_element_type(hint, text, typed):
    """Words and ids went by the field's type hint, factors by a list of names (FACTOR_LISTS), so a
    `tuple[float, ...]` field under another name was read as ids and refused "1.5" as no integer."""
    from cent_serve.config.fields import _typed

    assert _typed(text, hint, "model.some_new_list") == typed


def test_a_seed_may_be_any_size():
    """A seed names a stream of random numbers; the range rule is for magnitudes."""
    cfg = apply_overrides(CentConfig(), ["model.seed=12345678901234567", "scheduler.seed=98765432109876543"])
    assert (cfg.model.seed, cfg.scheduler.seed) == (12345678901234567, 98765432109876543)


def test_legitimate_values_pass():
    from cent_serve.config import MODEL_PRESETS

    for name in MODEL_PRESETS:
        CentConfig(model=model_preset(name))
    cfg = apply_overrides(CentConfig(), ["gpu.tco_per_gpu=0.5", "gpu.tco_per_gpu=none", "device.host_sample_s=0",
                                         "fabric.cxl_port_latency_ns=0", "device.clock_hz=1e9"])
    assert cfg.gpu.tco_per_gpu is None and cfg.device.host_sample_s == 0 and cfg.device.clock_hz == 1e9


@pytest.mark.parametrize("override, field", [("device=5", "device"), ("device.energy=3", "device.energy"),
                                             ("gpu=1", "gpu")])
def test_a_section_set_to_a_value_is_refused(override, field):
    with pytest.raises(ValueError, match=re.escape(f"{field}=") + ".* is a section of fields"):
        apply_overrides(CentConfig(), [override])


@pytest.mark.parametrize("text, field", [("device: {energy: 5}", "device.energy"), ("gpu: 5", "gpu"),
                                         ("model: {name: nosuch}", "model.name")])
def test_yaml_refuses_a_section_given_a_value_and_a_model_name_that_is_no_preset(tmp_path, text, field):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{field}=") + ".* is invalid: "):
        load_config(tmp_path / "c.yaml")


def test_a_model_of_ones_own_or_a_saved_config_loads_under_its_own_name(tmp_path):
    import yaml
    own = dataclasses.replace(model_preset("tiny"), name="my-2layer", num_layers=2, hidden_size=128, num_heads=4,
                              num_kv_heads=4, intermediate_size=256)
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(config_to_dict(CentConfig(model=own))))
    assert load_config(tmp_path / "saved.yaml").model == own


def test_a_model_of_ones_own_missing_part_of_its_shape_is_refused_naming_the_fields(tmp_path):
    # Llama-2-7B's shape without num_kv_heads and vocab_size: not tiny's 2 KV heads and 259 tokens in silence
    (tmp_path / "own.yaml").write_text("model: {name: mine, hidden_size: 4096, intermediate_size: 11008, "
                                       "num_layers: 32, num_heads: 32}\n")
    with pytest.raises(ValueError, match=r"model\.name='mine' is invalid: .*add model\.num_kv_heads, model\.vocab_size"):
        load_config(tmp_path / "own.yaml")
    (tmp_path / "own.yaml").write_text("model: {name: mine, hidden_size: 4096, intermediate_size: 11008, "
                                       "num_layers: 32, num_heads: 32, num_kv_heads: 32, vocab_size: 32000}\n")
    m = load_config(tmp_path / "own.yaml").model
    assert (m.name, m.num_kv_heads, m.vocab_size) == ("mine", 32, 32000)


@pytest.mark.parametrize("override", ["model.name=llama2-70b", "model.checkpoint=/nonexistent"])
def test_the_model_is_not_relabelled_by_set(override):
    with pytest.raises(ValueError, match=re.escape(override.split("=")[0]) + "=.* use --model NAME_OR_DIR"):
        apply_overrides(CentConfig(), [override])
    assert apply_overrides(CentConfig(), ["model.checkpoint=none"]).model.name == "tiny"


def test_a_yaml_checkpoint_loads_its_model_as_model_does(tmp_path):
    from cent_serve.config.hf_config import model_config_from_hf

    ckpt = Path(__file__).parent / "data" / "hf_tiny_llama"
    (tmp_path / "c.yaml").write_text(f"model: {{checkpoint: {ckpt}, max_seq_len: 128}}\n")
    assert load_config(tmp_path / "c.yaml").model == model_config_from_hf(ckpt, max_seq_len=128)
    (tmp_path / "c.yaml").write_text(f"model: {{checkpoint: {ckpt}, name: llama2-70b}}\n")
    with pytest.raises(ValueError, match="model.name='llama2-70b' is invalid: .*drop model.name"):
        load_config(tmp_path / "c.yaml")


def test_a_relative_yaml_checkpoint_is_the_config_files_directorys(tmp_path, monkeypatch):
    """`checkpoint: models/m` in /x/c.yaml is /x/models/m whatever the current directory (it was
    the current directory's, and a missing one said it had no config.json)."""
    import shutil

    from cent_serve.config.hf_config import model_config_from_hf

    here = tmp_path / "x"
    shutil.copytree(Path(__file__).parent / "data" / "hf_tiny_llama", here / "models" / "m")
    (here / "c.yaml").write_text("model: {checkpoint: models/m}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(here / "c.yaml")
    assert cfg.model == model_config_from_hf(here / "models" / "m", checkpoint=str(here / "models" / "m"))
    assert load_config("x/c.yaml").model == cfg.model  # the config's path itself is the current directory's
    (here / "c.yaml").write_text("model: {checkpoint: models/absent}\n")
    with pytest.raises(ValueError, match=re.escape(f"model.checkpoint='models/absent': {here / 'models' / 'absent'}"
                                                   " does not exist: give")):
        load_config(here / "c.yaml")


def test_a_written_config_names_its_checkpoint_absolute_and_reads_back_from_anywhere(tmp_path, monkeypatch):
    """A results' config.json records `--model DIR` (the current directory's) absolute, so reading it
    back (a relative path is the file's directory's) finds the same checkpoint."""
    import shutil

    from cent_serve.config import resolve_model

    shutil.copytree(Path(__file__).parent / "data" / "hf_tiny_llama", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    cfg = CentConfig(model=resolve_model("m"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    assert config_to_dict(cfg)["model"]["checkpoint"] == str(tmp_path / "m")
    assert load_config("results/config.json").model.name == "m"


def test_a_relative_checkpoint_in_a_config_from_stdin_or_an_older_results_file_is_found(tmp_path, monkeypatch,
                                                                                           caplog):
    """A config read from a pipe (`--config /dev/stdin`, `--config <(...)`) has no directory of its
    own: its relative checkpoint is the current directory's, as before (it was looked for under /dev).
    A results' config.json an older cent wrote records `--model DIR` as given (the current
    directory's): where the file's directory has no such path, the current directory's is read, and
    said so."""
    import os
    import shutil

    shutil.copytree(Path(__file__).parent / "data" / "hf_tiny_llama", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    read, write = os.pipe()
    os.write(write, b"model: {checkpoint: m}\n")
    os.close(write)
    try:
        assert load_config(f"/dev/fd/{read}").model.checkpoint == str(tmp_path / "m")
    finally:
        os.close(read)
    (tmp_path / "results").mkdir()  # as cent bench run --model m --out results wrote it before
    (tmp_path / "results" / "config.json").write_text(json.dumps({"model": {"checkpoint": "m"}}))
    assert load_config("results/config.json").model.checkpoint == str(tmp_path / "m")
    assert "model.checkpoint='m' is not in the config file's directory" in caplog.text
    (tmp_path / "results" / "m").mkdir()  # the file's directory's, when it has one, comes first
    with pytest.raises(ValueError, match="results/m' has no config.json"):
        load_config("results/config.json")


def test_llama3_rope_needs_a_high_frequency_factor_above_the_low_one():
    with pytest.raises(ValueError, match=r"model.rope_high_freq_factor=1.0 is invalid: use more than "
                                         r"model.rope_low_freq_factor=1.0"):
        model_preset("llama3.1-8b", rope_high_freq_factor=1.0)


@pytest.mark.parametrize("name, total, active", [
    ("mixtral-8x7b", 46.7e9, 12.9e9),  # Mistral AI's announcement: 46.7 B total, 12.9 B used per token
    ("qwen3-30b-a3b", 30.5e9, 3.3e9),  # Qwen3's model card: 30.5 B total, 3.3 B activated
    ("llama2-7b", 6.74e9, 6.74e9),     # dense: every parameter is active
    ("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9),  # Qwen1.5-MoE's model card: 14.3 B in total, 2.7 B activated
    ("phi3-mini-4k", 3_821_079_552, 3_821_079_552),  # keras-hub's Phi-3 presets: 3,821,079,552 parameters
])
def test_active_parameters_are_the_published_ones(name, total, active):
    m = model_preset(name)
    assert m.param_count() == pytest.approx(total, rel=0.01)
    assert m.param_count(active=True) == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize("override, meant", [
    ("device.num_chanels=3", "device.num_channels"),  # a typo
    ("devices.num_channels=3", "device.num_channels"),  # a typo in the section
    ("device.t_ccd_ns=2", "device.energy.t_ccd_ns"),  # the right name in another section
    ("fabric.lane_gbs=4", "fabric.lane_gbps"),
])
def test_a_mistyped_field_names_the_one_it_likely_meant(override, meant):
    with pytest.raises(ValueError) as err:
        apply_overrides(CentConfig(), [override])
    assert f"did you mean {meant}?" in str(err.value) and "known fields" not in str(err.value)


def test_a_mistyped_field_in_a_file_names_the_one_it_likely_meant(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("device:\n  num_chanels: 3\n")
    with pytest.raises(ValueError, match="did you mean device.num_channels"):
        load_config(f)


def test_a_field_nothing_is_close_to_lists_its_sections_fields():
    with pytest.raises(ValueError, match=r"known fields of scheduler are [a-z_, ]*max_seqs_per_stage, max_waiting, "):
        apply_overrides(CentConfig(), ["scheduler.zzzz=1"])


@pytest.mark.parametrize("override, meant, flag", [("devices=16", "parallel.num_devices", "--devices"),
                                                   ("pp=4", "parallel.pp", "--pp")])
def test_a_flag_set_as_a_field_names_the_field_it_sets(override, meant, flag):
    """`--set devices=16` (the name `cent sweep --vary` takes) listed the config's sections as a
    Python list (first-hour audit)."""
    with pytest.raises(ValueError) as err:
        apply_overrides(CentConfig(), [override])
    assert f"did you mean {meant} (which {flag} sets)?" in str(err.value)


def test_a_row_of_part_bursts_names_both_fields():
    with pytest.raises(ValueError, match=r"device.row_elements=1024 is invalid: it is not a multiple of device.burst_elements=24"):
        apply_overrides(CentConfig(), ["device.burst_elements=24"])


def test_a_fractional_element_size_says_what_sizes_there_are():
    with pytest.raises(ValueError, match=r"bytes_per_element='0.5' is invalid: .*2 \(bfloat16\).*4-bit are not "):
        apply_overrides(CentConfig(), ["device.bytes_per_element=0.5"])


def test_cent_info_sizes_the_weights_at_the_devices_element_size(capsys):
    """What the devices hold follows device.bytes_per_element (as the capacity check does), not
    model.weight_dtype; full numerics' host copy is float32 arrays whatever the stored dtype (it said
    "0.011 GiB as bfloat16" for the same 0.021 GiB)."""
    assert main(["info", "--model", "llama2-13b", "--set", "device.bytes_per_element=1"]) == 0
    out = capsys.readouterr().out
    assert "(12.122 GiB on the devices at device.bytes_per_element=1)" in out
    assert "409,600 bytes per token on the devices" in out
    assert main(["info", "--model", "tiny", "--set", "model.weight_dtype=float32"]) == 0
    out = capsys.readouterr().out
    assert "0.011 GiB on the devices at device.bytes_per_element=2; full numerics' host copy 0.021 GiB of float32" in out
    assert main(["info", "--model", "tiny"]) == 0  # bfloat16 values, held as float32 all the same
    assert "full numerics' host copy 0.021 GiB of float32" in capsys.readouterr().out


def test_a_device_made_small_says_its_size_not_0_gib(capsys):
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--set", "device.rows_per_bank=1"]) == 2
    err = capsys.readouterr().err
    assert "needs 1.75 GiB of the device's 1 MiB" in err and "rows_per_bank" in err


@pytest.mark.parametrize("argv, says", [
    (["simulate", "--model", "llama2-7b", "--devices", "8", "--set", "scheduler.max_seqs_per_stage=4"],
     "--set scheduler.max_seqs_per_stage: the closed form does not read it"),
    (["sweep", "--model", "llama2-7b", "--devices", "8", "--vary", "model.weight_dtype=bfloat16,float32",
      "--no-plots"], "--vary model.weight_dtype: the closed form does not read it"),
    (["simulate", "--model", "llama2-7b", "--devices", "8", "--set", "model.model_type=phi3", "--set",
      "model.partial_rotary_factor=0.75"], "--set model.partial_rotary_factor: the closed form does not read it"),
    # the flag sets the same field as --set model.seed, which was warned of while --seed went unread in silence
    (["simulate", "--model", "llama2-7b", "--devices", "8", "--seed", "3"],
     "--seed model.seed: the closed form does not read it"),
    (["sweep", "--model", "llama2-7b", "--seed", "3", "--vary", "devices=8", "--no-plots"],
     "--seed model.seed: the closed form does not read it"),
])
def test_a_field_the_closed_form_does_not_read_is_warned_about(argv, says, caplog, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "sweep" else [])) == 0
    capsys.readouterr()
    assert [r.getMessage() for r in caplog.records if says in r.getMessage()]


def test_numerics_asked_of_the_closed_form_is_said_to_be_computed_by_none(caplog, capsys, tmp_path):
    """`cent simulate --numerics full` on a directory holding only config.json said nothing, so a user could
    believe the weights were used: the closed form (simulate, sweep without --trace) computes no numerics,
    as --set numerics=full and --seed already said. --numerics off, what it runs anyway, is not warned of."""
    (tmp_path / "m").mkdir()
    shutil.copy(Path(__file__).resolve().parent / "data" / "hf_tiny_llama" / "config.json", tmp_path / "m")
    says = ("--numerics numerics: the closed form does not read it (it sets the numerics of a served model; the "
            "closed form computes none and reads no weights), so its figures are the same for every value")
    model = ["--model", str(tmp_path / "m")]
    for argv in (["simulate", *model, "--devices", "2", "--seqlen", "64"],
                 ["sweep", *model, "--prompt", "32", "--decode", "32", "--vary", "devices=2", "--no-plots", "--out",
                  str(tmp_path / "sweep")]):
        for numerics, warned in (("full", 1), ("off", 0)):
            caplog.clear()
            assert main([*argv, "--numerics", numerics]) == 0
            capsys.readouterr()
            assert sum(r.getMessage().startswith(says) for r in caplog.records) == warned, (argv, numerics)
    # a sweep's replay runs every point timing only too (its config says numerics off): said, not taken in silence
    replay = ["sweep", *model, "--vary", "devices=2", "--trace", "sample_conv", "--num-requests", "2",
              "--max-prompt-tokens", "64", "--max-output-tokens", "8", "--no-plots",
              "--out", str(tmp_path / "replay")]
    for numerics, warned in (("full", 1), ("off", 0)):
        caplog.clear()
        assert main([*replay, "--numerics", numerics]) == 0
        capsys.readouterr()
        assert sum(r.getMessage().startswith("--numerics full: cent sweep --trace replays every point timing only")
                   for r in caplog.records) == warned, numerics


GEMMA_NUMERICS_ONLY = {"model.hidden_act": "gelu_pytorch_tanh", "model.scale_embeddings": "true",
                       "model.norm_offset": "1", "model.final_logit_softcapping": "30",
                       "model.query_pre_attn_scalar": "64"}
"""Gemma's fields the CENT timing charges nothing for (docs/hardware_model.md section 4): each a value."""


def test_gemma_numerics_fields_leave_the_closed_form_unmoved_and_say_so(caplog, capsys):
    """GeGLU, the embedding scale, 1 + w norms, the final soft-cap and Gemma 2's attention scale are
    numerics only: `cent simulate --set` of each gave the same figures in silence, as rms_norm_eps's warns.
    Soft-capping the scores and the sandwich norms are priced: not warned of."""
    import json

    def run(*extra: str) -> dict:
        assert main(["simulate", "--model", "llama2-7b", "--devices", "8", *extra, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        return {k: out[k] for k in ("throughput_tok_s", "token_energy_mj", "token_latency_ms")}

    base = run()
    for field, value in GEMMA_NUMERICS_ONLY.items():
        caplog.clear()
        assert run("--set", f"{field}={value}") == base, field
        says = [r.getMessage() for r in caplog.records if f"--set {field}: the closed form does not read it"
                in r.getMessage()]
        assert len(says) == 1 and "\n" not in says[0], (field, says)
    for field, value in (("model.attn_logit_softcapping", "50"), ("model.sandwich_norms", "true")):
        caplog.clear()
        assert run("--set", f"{field}={value}") != base, field
        assert not [r for r in caplog.records if "closed form does not read" in r.getMessage()], field


def test_rows_per_bank_moves_only_which_closed_form_points_fit_and_says_so(caplog, capsys, tmp_path):
    """The closed form reads device.rows_per_bank only for capacity (one query a lane at the whole context):
    a sweep over it gave the same time and energy for every point that fit, in silence. It warns now, in
    one line, that only fit moves and that a replay filling the KV cache moves time."""
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8", "--vary", "device.rows_per_bank=64,16384,65536",
                 "--no-plots", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    rows = {int(r["device.rows_per_bank"]): r for r in csv.DictReader(open(tmp_path / "sweep.csv"))}
    assert "does not fit" in rows[64]["error"] and not rows[16384]["error"]
    for figure in ("throughput_tok_s", "energy_per_token_mj", "token_latency_ms"):
        assert rows[16384][figure] == rows[65536][figure], figure  # what the warning claims
    says = [r.getMessage() for r in caplog.records if "--vary device.rows_per_bank: the closed form reads it only "
            "for capacity" in r.getMessage()]
    assert len(says) == 1 and "\n" not in says[0] and "cent sweep --trace" in says[0], says
    caplog.clear()
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--set", "device.rows_per_bank=32768"]) == 0
    capsys.readouterr()
    assert [r for r in caplog.records if "--set device.rows_per_bank: the closed form reads it only for capacity"
            in r.getMessage()]


def test_kv_block_tokens_is_said_to_be_read_for_capacity_on_cent_not_unread(caplog, capsys):
    """CENT's closed form checks capacity in whole KV blocks of scheduler.kv_block_tokens (`check_capacity`):
    65,536-token blocks refuse llama2-70b on 32 devices. It warned that it did not read the field at all;
    it says now that it reads it for capacity only, and the figures of a value that fits do not move."""
    def run(block: int) -> tuple[int, str]:
        caplog.clear()
        code = main(["simulate", "--model", "llama2-7b", "--devices", "8", "--set",
                     f"scheduler.kv_block_tokens={block}", "--json"])
        return code, capsys.readouterr().out

    (code16, out16), (code1k, out1k) = run(16), run(1024)
    assert code16 == code1k == 0
    figures = ("token_latency_ms", "throughput_tok_s", "token_energy_mj")
    assert [json.loads(out16)[f] for f in figures] == [json.loads(out1k)[f] for f in figures]
    says = [r.getMessage() for r in caplog.records if "kv_block_tokens" in r.getMessage()]
    assert len(says) == 1 and "--set scheduler.kv_block_tokens: the closed form reads it only for capacity" in says[0]
    assert "does not read" not in says[0]
    assert main(["simulate", "--model", "llama2-70b", "--devices", "32", "--set",
                 "scheduler.kv_block_tokens=65536"]) == 2  # what it reads it for
    assert "blocks of 65536 tokens" in capsys.readouterr().err


def test_a_field_the_closed_form_reads_is_not_warned_about(caplog, capsys):
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--set", "device.clock_hz=4e9"]) == 0
    capsys.readouterr()
    assert not [r for r in caplog.records if "closed form does not read" in r.getMessage()]


def test_model_seed_moves_a_mixture_of_experts_closed_form_so_it_is_not_called_unread(caplog, capsys, tmp_path):
    """A mixture of experts' time model routes tokens by a draw from model.seed (timing/experts.py), so
    on tensor-parallel stages the closed form's figures move with the seed (qwen3-30b-a3b, pp 4 x tp 2:
    3.454354 against 3.452367 ms a token for seeds 1 and 2): no warning may call the seed unread there,
    and the header names it; a dense model's figures stay the same for every seed, and say so."""
    moe = ["simulate", "--model", "qwen3-30b-a3b", "--devices", "8", "--pp", "4", "--tp", "2",
           "--prompt", "512", "--decode", "3584", "--json"]
    figures = []
    for seed in (1, 2):
        assert main(moe + ["--set", f"model.seed={seed}"]) == 0
        figures.append(json.loads(capsys.readouterr().out)["end2end"]["token_latency_ms"])
    assert figures[0] != figures[1]
    assert main(moe + ["--seed", "2"]) == 0  # the flag sets the same field
    assert json.loads(capsys.readouterr().out)["end2end"]["token_latency_ms"] == figures[1]
    assert not [r for r in caplog.records if "closed form does not read" in r.getMessage()]
    assert main(["sweep", "--model", "qwen3-30b-a3b", "--devices", "8", "--pp", "4", "--tp", "2",
                 "--vary", "model.seed=1,2", "--no-plots", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert not [r for r in caplog.records if "closed form does not read" in r.getMessage()]
    assert model_label(model_preset("qwen3-30b-a3b", seed=2)) == "qwen3-30b-a3b (model.seed=2)"
    assert model_label(model_preset("llama2-7b", seed=2)) == "llama2-7b"
    dense = ["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584", "--json"]
    assert main(dense + ["--set", "model.seed=1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(dense + ["--set", "model.seed=2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert one["end2end"] == two["end2end"]
    assert [r for r in caplog.records if "--set model.seed: the closed form does not read it" in r.getMessage()]


def test_a_field_given_twice_in_a_file_is_refused_not_the_last_kept(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("device:\n  num_channels: 16\n  clock_hz: 1.0e9\n  num_channels: 64\n")
    with pytest.raises(ValueError, match=r"c.yaml at line 4, column 3: num_channels is given twice in one section"):
        load_config(f)
    f.write_text("device:\n  num_channels: 16\nparallel:\n  num_devices: 8\n")  # the same field in two sections: fine
    assert load_config(f).device.num_channels == 16


def test_yaml_merge_keys_still_load_and_an_unhashable_key_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("device:\n  energy:\n    <<: {act_mw: 60.0, rd_mw: 1.0}\n    rd_mw: 400.0\n")  # overrides the merge
    energy = load_config(f).device.energy
    assert (energy.act_mw, energy.rd_mw) == (60.0, 400.0)
    f.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ValueError, match=r"not valid YAML at line 1.*unhashable"):
        load_config(f)


@pytest.mark.parametrize("text, value", [("0", False), ('"no"', False), ("off", False), ("1", True), ('"Yes"', True)])
def test_a_yaml_boolean_reads_as_set_reads_it(tmp_path, text, value):
    """--set fabric.multicast=0 (or no) was taken and the same in YAML refused: both read 1/0, yes/no, on/off."""
    path = tmp_path / "c.yaml"
    path.write_text(f"fabric: {{multicast: {text}}}\n")
    assert load_config(path).fabric.multicast is value
    assert apply_overrides(CentConfig(), [f"fabric.multicast={text.strip(chr(34))}"]).fabric.multicast is value


def test_an_unquoted_off_in_yaml_is_explained(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("numerics: off\n")
    with pytest.raises(ValueError, match=r'numerics=False is invalid: expected a string: YAML reads an unquoted off, '
                                         r'no or false as false, so quote the word \(numerics: "off"\)'):
        load_config(path)


@pytest.mark.parametrize("item, message", [
    ("device.column_cycles=0", "device.column_cycles=0.0 is invalid"),
    ("device.bytes_per_element=3", "device.bytes_per_element=3 is invalid: use 1 (int8), 2 (bfloat16) or 4"),
    ("device.accumulator_registers=1", "device.accumulator_registers=1 is invalid: an activation GEMV group's "
                                       "device.gemv_af_group_size=16 outputs"),
    ("device.gemv_af_group_size=64", "device.gemv_af_group_size=64 is invalid: a group's outputs sit in the "
                                     "accumulator registers: use at most device.accumulator_registers=32"),
])
def test_device_values_no_device_has_are_refused_naming_the_field_set(item, message):
    with pytest.raises(ValueError) as info:
        apply_overrides(CentConfig(), [item])
    assert message in str(info.value)


@pytest.mark.parametrize("item", ["=3", " =3", "noequals"])
def test_an_override_without_a_field_says_how_to_write_one(item):
    """`--set =3` said " is not a field", naming nothing."""
    with pytest.raises(ValueError, match=r"is invalid: write section.field=value, e.g. device.clock_hz=1e9"):
        apply_overrides(CentConfig(), [item])


def test_auto_numerics_says_why_it_chose(tmp_path):
    """The start-up line names why a server runs timing-only (it said `numerics off` alone, and a
    checkpoint over 1B parameters then answered stand-in text with 200 OK)."""
    import shutil

    from cent_serve.model import model_config_from_hf

    big = CentConfig(model=model_preset("llama2-7b"))
    assert big.numerics_why[0] == "off" and "25.10 GiB of float32 random weights, over the 1 GiB" in big.numerics_why[1]
    assert CentConfig(model=model_preset("tiny")).numerics_why == \
        ("full", "auto: 21.6 MiB of float32 random weights, at most the 1 GiB auto computes")
    assert CentConfig(model=model_preset("llama2-7b"), numerics="full").numerics_why == ("full", "as set")
    ckpt = tmp_path / "shape_only"
    ckpt.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "hf_tiny_llama" / "config.json", ckpt)
    assert CentConfig(model=model_config_from_hf(ckpt)).numerics_why == ("off", "auto: the checkpoint has no weight files")


def test_auto_numerics_goes_by_the_float32_bytes_the_host_holds(tmp_path):
    """`numerics: auto` ran full up to 1e9 parameters: gemma-3-1b (999,885,952) built 3.7 GiB of float32
    random weights, once more in each of cent serve's device actors (29.8 GiB on 7, refused here). A preset's
    line is 1 GiB of float32 weights (AUTO_FULL_BYTES): tiny runs full, gemma-3-1b times; a checkpoint's own
    weights, whose text is the model's, keep the 1B-parameter line (AUTO_FULL_PARAMS)."""
    from cent_serve.config.tree import AUTO_FULL_BYTES

    assert AUTO_FULL_BYTES == 2**30
    one_b = CentConfig(model=model_preset("gemma-3-1b"), executor="ray")
    assert one_b.numerics_why == ("off", "auto: 3.72 GiB of float32 random weights, over the 1 GiB auto computes, "
                                         "as each device actor holds a copy; the text is a stand-in, the times are "
                                         "the model's; --numerics full computes it")
    # in one process (cent serve --local, modelled GPUs) the devices read the host's copy: no actor holds one
    for one_process in (CentConfig(model=model_preset("gemma-3-1b")),
                        build_config("gemma-3-1b", hardware="gpu:a100-80gb:1", overrides=["executor=ray"])):
        assert one_process.numerics_why == ("off", "auto: 3.72 GiB of float32 random weights, over the 1 GiB auto "
                                                   "computes; the text is a stand-in, the times are the model's; "
                                                   "--numerics full computes it")
    assert CentConfig(model=model_preset("gemma-3-1b"), numerics="full").resolved_numerics == "full"
    # a checkpoint's own weights give the model's text: auto computes them up to 1B parameters
    (tmp_path / "model.safetensors").write_bytes(b"")  # weights there (checkpoint_has_weights)
    for preset, says in (("gemma-3-1b", ("full", "auto: a checkpoint's weights of 1B parameters or fewer")),
                         ("llama3.2-1b", ("off", "auto: a checkpoint's weights of 1.2B parameters, over the 1B auto "
                                                 "computes; the text is a stand-in, the times are the model's; "
                                                 "--numerics full computes it"))):
        real = dataclasses.replace(model_preset(preset), checkpoint=str(tmp_path))
        assert CentConfig(model=real).numerics_why == says, preset
    from cent_serve.model import model_config_from_hf
    for ckpt in ("hf_tiny_llama", *(f"hf_families/{f.name}" for f in (Path(__file__).parent / "data" /
                                                                       "hf_families").iterdir() if f.is_dir())):
        assert CentConfig(model=model_config_from_hf(Path(__file__).parent / "data" / ckpt)).resolved_numerics == \
            "full", ckpt


def test_a_changed_preset_is_labelled_with_its_changes(capsys):
    """A preset with fields set apart is named with them in a run's headers and plot titles (it was
    printed as the published model: architecture audit)."""
    from cent_serve.config import model_label, model_preset

    assert model_label(model_preset("llama2-7b")) == "llama2-7b"
    assert model_label(model_preset("llama2-7b", seed=3, weight_dtype="float32")) == "llama2-7b"
    assert model_label(model_preset("llama3.1-8b", extra_eos_token_ids=(128008, 128009))) == "llama3.1-8b"  # Instruct's
    assert model_label(model_preset("llama2-7b", num_layers=16)) == "llama2-7b (model.num_layers=16)"
    # a derived field (head_dim = hidden_size / heads) counts as set apart too
    assert model_label(model_preset("llama2-7b", num_layers=16, hidden_size=2048, vocab_size=128256)) == \
        "llama2-7b (model.hidden_size=2048, model.num_layers=16 and 2 more)"
    assert main(["simulate", "--model", "llama2-7b", "--set", "model.num_layers=16"]) == 0
    assert capsys.readouterr().out.startswith("llama2-7b (model.num_layers=16) on 8 devices")


def test_layer_types_set_each_blocks_window_and_are_checked_in_one_line():
    cfg = apply_overrides(CentConfig(), ["model.sliding_window=16",
                                         "model.layer_types=" + ",".join(["full_attention"] + ["sliding_attention"] * 7)])
    assert cfg.model.block_windows == (0,) + (16,) * 7
    # what the windowed blocks keep of a sequence (block 0 keeps every key: `cent_serve.kv_room`)
    assert cfg.kv_tokens_cap == 16 + cfg.scheduler.prefill_chunk_tokens + cfg.scheduler.kv_block_tokens
    every = apply_overrides(cfg, ["model.layer_types=" + ",".join(["sliding_attention"] * 8)])
    assert every.kv_tokens_cap == cfg.kv_tokens_cap
    assert apply_overrides(cfg, ["model.layer_types=" + ",".join(["full_attention"] * 8)]).kv_tokens_cap is None
    assert apply_overrides(cfg, ["model.layer_types=none"]).model.block_windows == (16,) * 8  # today's rule
    for bad, message in [("model.layer_types=full_attention", r"model.layer_types='1 entry' is invalid: give one "
                          r"entry a block, 8 \(model.num_layers\), or none"),
                         ("model.layer_types=" + ",".join(["global"] * 8), r"model.layer_types='global' is invalid: use "
                          "full_attention or sliding_attention for each block")]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(cfg, [bad])
    with pytest.raises(ValueError, match=r"model.sliding_window=0 is invalid: model.layer_types names sliding_attention"):
        apply_overrides(cfg, ["model.sliding_window=0"])


def test_layer_types_in_a_file_take_a_list(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {name: tiny, num_layers: 2, sliding_window: 4, "
                                     "layer_types: [sliding_attention, full_attention]}\n")
    assert load_config(tmp_path / "c.yaml").model.block_windows == (4, 0)
    (tmp_path / "c.yaml").write_text("model: {name: tiny, num_layers: 2, sliding_window: 4, layer_types: [1, 2]}\n")
    with pytest.raises(ValueError, match=r"model.layer_types=\[1, 2\] is invalid: expected words"):
        load_config(tmp_path / "c.yaml")


def test_layer_types_help_names_every_family_whose_config_json_windows_some_blocks():
    """model.layer_types' help named Qwen 2 and 3 and Ministral; a Qwen 2 MoE's, a Gemma 2's and a Gemma 3's
    config.json are read into it too (hf_config_writer._PER_BLOCK_WINDOWS), their presets by default."""
    from cent_serve.config_doc import field_docs
    from cent_serve.model.hf_config_writer import _PER_BLOCK_WINDOWS

    said = " ".join(field_docs(ModelConfig)["layer_types"].split())
    names = {"mistral": "Ministral", "qwen2": "Qwen 2", "qwen3": "Qwen 3", "qwen2_moe": "Qwen 2 MoE", "gemma2": "Gemma 2",
             "gemma3_text": "Gemma 3"}
    assert set(names) == set(_PER_BLOCK_WINDOWS)
    assert all(name in said for name in names.values()), said


@pytest.mark.parametrize("field, value", [("model.expert_skew", "2"), ("model.num_experts_per_tok", "2"),
                                          ("model.moe_intermediate_size", "1024")])
def test_a_mixture_of_experts_field_on_a_dense_model_is_warned_about(field, value, caplog, capsys):
    """--set model.expert_skew=2 on llama2-7b gave the same figures in silence (audit), its header naming
    'llama2-7b (model.expert_skew=2.0)' as if it had been read: a dense model has no experts nor router.
    A mixture of experts reads it: no warning there."""
    import json

    def run(model: str, *extra: str) -> tuple[dict, list[str]]:
        caplog.clear()
        assert main(["simulate", "--model", model, "--devices", "32", "--pp", "4", "--tp", "8", *extra,
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        said = [r.getMessage() for r in caplog.records
                if f"--set {field}: no model here has experts" in r.getMessage()]
        return {k: out[k] for k in ("throughput_tok_s", "token_energy_mj")}, said

    base, _ = run("llama2-7b")
    figures, said = run("llama2-7b", "--set", f"{field}={value}")
    assert figures == base and len(said) == 1 and "mixture of experts" in said[0], said
    _, said = run("mixtral-8x7b", "--set", f"{field}={value}")
    assert said == []


def test_a_mixture_of_experts_field_on_a_dense_model_is_warned_about_in_a_replay_too(tmp_path, caplog, capsys):
    """cent simulate and cent sweep warned of --set model.expert_skew on a dense model; cent bench run (and
    serve, compare, a sweep's --trace replay) took it in silence, titled 'tiny (model.expert_skew=2.0)' as if
    read: nothing reads it, replay or closed form, so every command that builds the config warns, once."""
    assert main(["bench", "run", "--model", "tiny", "--numerics", "off", "--set", "model.expert_skew=2",
                 "--synthetic", "poisson", "--rate", "10", "--num-requests", "2", "--in-process", "--no-plots",
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    said = [r.getMessage() for r in caplog.records if "model.expert_skew" in r.getMessage()]
    assert len(said) == 1 and "no model here has experts, so nothing reads it" in said[0], said
    caplog.clear()
    assert main(["simulate", "--model", "llama2-7b", "--set", "model.expert_skew=2"]) == 0
    capsys.readouterr()
    assert len([r for r in caplog.records if "model.expert_skew" in r.getMessage()]) == 1


def test_a_grouped_query_attention_field_on_a_model_without_it_is_warned_about(tmp_path, caplog, capsys):
    """--set device.score_rep_head_cycles=140 on llama2-7b (32 query heads, 32 KV heads) gave the same figures in
    silence: it prices the query heads of a KV head's group after the first, and there each group has one.
    cent simulate, cent bench run (and a --config file's) warn once; llama2-70b (8 query heads a KV head) reads it:
    its figures move and nothing is said."""
    import json

    def run(model: str, *extra: str) -> tuple[dict, list[str]]:
        caplog.clear()
        assert main(["simulate", "--model", model, *extra, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        said = [r.getMessage() for r in caplog.records if "device.score_rep_head_cycles" in r.getMessage()]
        return {k: out[k] for k in ("throughput_tok_s", "token_energy_mj")}, said

    field = "device.score_rep_head_cycles=140"
    base, _ = run("llama2-7b")
    figures, said = run("llama2-7b", "--set", field)
    assert figures == base, (figures, base)
    assert said == ["--set device.score_rep_head_cycles: no model here has grouped-query attention (each query head "
                    "has its own KV head), so nothing reads it (it prices q.K^T for each further query head of a KV "
                    "head's group; a group's first is device.score_head_cycles); to see it, run a model with fewer "
                    "KV heads than query heads (e.g. --model llama2-70b)"], said
    base, _ = run("llama2-70b")
    figures, said = run("llama2-70b", "--set", field)
    assert figures != base and said == [], (figures, base, said)
    config = tmp_path / "f.yaml"
    config.write_text("model: {name: llama2-7b}\ndevice: {score_rep_head_cycles: 140}\n")
    _, said = run("llama2-7b", "--config", str(config))
    assert [m.split(":")[0] for m in said] == [f"--config {config} device.score_rep_head_cycles"], said
    caplog.clear()
    assert main(["bench", "run", "--model", "tiny", "--set", "model.num_kv_heads=8", "--set", field, "--numerics",
                 "off", "--synthetic", "poisson", "--rate", "10", "--num-requests", "2", "--in-process",
                 "--no-plots", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    said = [r.getMessage() for r in caplog.records if "device.score_rep_head_cycles" in r.getMessage()]
    assert len(said) == 1 and "no model here has grouped-query attention" in said[0], said


def test_a_mixture_of_experts_field_of_a_config_file_on_a_dense_model_is_warned_about(tmp_path, caplog, capsys):
    """--set model.expert_skew=2 on a dense model was warned of; the same field in a --config file was taken in
    silence (cent simulate --config f.yaml with `model: {name: llama2-7b, expert_skew: 2}`). The file's is warned
    of too, naming it; once when --set sets it as well; not when the file's model has experts, nor for a
    config.json a dense run wrote (every field there, the experts' at their defaults)."""
    def said(*argv: str) -> list[str]:
        caplog.clear()
        assert main(list(argv)) == 0
        capsys.readouterr()
        return [r.getMessage() for r in caplog.records if "no model here has experts" in r.getMessage()]

    dense = tmp_path / "dense.yaml"
    dense.write_text("model: {name: llama2-7b, expert_skew: 2, norm_topk_prob: false}\n")
    for argv in (["simulate"], ["bench", "run", "--numerics", "off", "--synthetic", "poisson", "--rate", "10",
                                "--num-requests", "2", "--in-process", "--no-plots", "--out", str(tmp_path / "run")]):
        got = said(*argv, "--config", str(dense), "--devices", "32")
        assert sorted(got) == [f"--config {dense} model.{f}: no model here has experts, so nothing reads it (it sets a "
                               "mixture of experts' experts or router); to see it, run a mixture of experts (e.g. "
                               "--model mixtral-8x7b)" for f in ("expert_skew", "norm_topk_prob")], got
    got = said("simulate", "--config", str(dense), "--devices", "32", "--set", "model.expert_skew=3")
    assert [m.split(":")[0] for m in got] == ["--set model.expert_skew", f"--config {dense} model.norm_topk_prob"], got
    moe = tmp_path / "moe.yaml"
    moe.write_text("model: {name: mixtral-8x7b, expert_skew: 2}\n")
    assert said("simulate", "--config", str(moe), "--devices", "32") == []
    from cent_serve.config import config_to_dict
    written = config_to_dict(build_config("llama2-7b"))  # a dense run's config.json, read back
    assert {"expert_skew", "norm_topk_prob"} <= set(written["model"])
    (tmp_path / "written.json").write_text(json.dumps(written))
    assert said("simulate", "--config", str(tmp_path / "written.json"), "--devices", "32") == []
    got = said("sweep", "--config", str(dense), "--devices", "32", "--vary", "device.clock_hz=1e9,2e9",
               "--out", str(tmp_path / "sweep"))
    assert len(got) == 2 and all(m.startswith(f"--config {dense} model.") for m in got), got


def test_a_field_the_closed_form_does_not_read_is_warned_about_in_a_config_file_too(tmp_path, caplog, capsys):
    """--set model.rms_norm_eps (or scheduler.max_seqs_per_stage) on cent simulate or cent sweep was warned of as
    unread by the closed form; the same fields in a --config file were taken in silence. The file's are warned of
    the same way, naming the file, when it moves them off their defaults (a model field off the preset it names,
    `numerics` off what auto resolves to): not a config.json a run wrote, nor docs/examples/paper-70b.yaml (its
    numerics 'off' is auto's for 70B); a field a --set gives is named once, as the --set's; under --vary model the
    file's model fields are not read at all, and said so elsewhere (test_sweep)."""
    def said(*argv: str) -> list[str]:
        caplog.clear()
        assert main(list(argv)) == 0
        capsys.readouterr()
        return sorted(r.getMessage().split(":")[0] for r in caplog.records  # (a replaced model section's: test_sweep)
                      if "the closed form does not read it" in r.getMessage()
                      and "replaces the file's model section" not in r.getMessage())

    f = tmp_path / "f.yaml"
    f.write_text("model: {name: llama2-7b, rms_norm_eps: 1.0e-6}\nscheduler: {max_seqs_per_stage: 4}\n"
                 "server: {port: 8000}\nnumerics: 'off'\n")
    both = [f"--config {f} model.rms_norm_eps", f"--config {f} scheduler.max_seqs_per_stage"]
    assert said("simulate", "--config", str(f), "--devices", "8") == both
    sweep = ["sweep", "--config", str(f), "--devices", "8", "--no-plots", "--out", str(tmp_path / "s")]
    assert said(*sweep, "--vary", "device.clock_hz=1e9,2e9") == both
    assert said("simulate", "--config", str(f), "--devices", "8", "--set", "scheduler.max_seqs_per_stage=2") == [
        f"--config {f} model.rms_norm_eps", "--set scheduler.max_seqs_per_stage"]
    assert said(*sweep, "--vary", "model=llama2-7b,llama2-13b") == [f"--config {f} scheduler.max_seqs_per_stage"]
    assert said(*sweep, "--vary", "scheduler.max_seqs_per_stage=1,2") == [
        f"--config {f} model.rms_norm_eps", "--vary scheduler.max_seqs_per_stage"]
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model: {name: tiny}\nnumerics: 'off'\n")  # auto is full for tiny
    assert said("simulate", "--config", str(tiny)) == [f"--config {tiny} numerics"]
    from cent_serve.config import config_to_dict
    written = tmp_path / "written.json"
    written.write_text(json.dumps(config_to_dict(build_config("gemma-2b", devices=8))))  # Gemma's own numerics fields
    assert said("simulate", "--config", str(written)) == []
    assert said("simulate", "--config", str(Path(__file__).parents[1] / "docs" / "examples" / "paper-70b.yaml")) == []


def test_fields_a_config_file_sets_for_one_reason_share_one_warning(tmp_path, caplog, capsys):
    """A config file kept for cent serve too (docs/examples/serve-70b.yaml) sets several server fields: cent
    simulate warned of each on its own line. Fields the closed form leaves unread for one reason now share a
    line, naming each; another reason keeps its own line."""
    f = tmp_path / "serve.yaml"
    f.write_text("model: {name: llama2-7b}\nserver: {port: 8001, max_tokens_default: 64}\n"
                 "scheduler: {max_waiting: 9}\n")
    caplog.clear()
    assert main(["simulate", "--config", str(f), "--devices", "8"]) == 0
    capsys.readouterr()
    said = [r.getMessage() for r in caplog.records if "the closed form does not read" in r.getMessage()]
    assert len(said) == 2, said
    server = next(m for m in said if "server." in m)
    assert server.startswith(f"--config {f} server.port, server.max_tokens_default: the closed form does not "
                             "read them (they set the HTTP server)")
    assert "scheduler.max_waiting: the closed form does not read it (it sets" in next(m for m in said if m != server)


@pytest.mark.parametrize("text, why", [
    ("gpu:h100:8", "no GPU kind 'h100': "),
    ("gpu:h100-80gb:0", "N='0' is not a whole number >= 1: "),
    ("gpu:h100-80gb:x", "N='x' is not a whole number >= 1: "),
    ("gpu:h100-80gb", ""),
])
def test_a_bad_hardware_says_which_part_is_wrong(text, why):
    """`--hardware gpu:h100:8` and `gpu:h100-80gb:0` got the same line listing the kinds "and N GPUs", which
    left a user to find which part was wrong (0 GPUs read as allowed). It says the part, then the form."""
    from cent_serve.config import parse_hardware

    with pytest.raises(ValueError) as info:
        parse_hardware(text)
    assert str(info.value) == (f"--hardware {text!r} is invalid: {why}use 'cent' or gpu:KIND:N with KIND one of "
                               "a100-80gb, a100-80gb-pcie, h100-80gb, or a kind of one's own described in gpu.custom "
                               "(docs/gpu_model.md) and N >= 1 GPUs, e.g. gpu:a100-80gb:4")


def test_compare_s_bad_gpu_says_which_part_is_wrong(capsys):
    assert main(["bench", "compare", "--numerics", "off", "--gpu", "h100-80gb:0"]) == 2
    assert ("--gpu 'h100-80gb:0' is invalid: N='0' is not a whole number >= 1: use KIND:N with KIND one of a100-80gb, "
            "a100-80gb-pcie, h100-80gb, or a kind of one's own described in gpu.custom (docs/gpu_model.md) and N >= 1 "
            "GPUs, e.g. --gpu a100-80gb:4") in capsys.readouterr().err
