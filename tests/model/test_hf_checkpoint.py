"""A checkpoint saved by Hugging Face transformers loads and reproduces transformers' output.

tests/data/hf_tiny_llama/ was written by tests/data/make_hf_fixture.py with real
transformers (versions in expected.json): its greedy tokens and logits are
transformers' own, not ours. The live test re-runs the comparison when torch
and transformers are installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.model import LlamaModel, load_tokenizer, load_weights, model_config_from_hf, save_hf_checkpoint
from cent_serve.model.generate import generate

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def check_against(ckpt: Path, expected: dict) -> None:
    cfg = model_config_from_hf(ckpt)
    model = LlamaModel(cfg, load_weights(cfg))
    for case in expected["cases"]:
        logits = model.forward(case["prompt_ids"], model.new_cache())[-1]
        assert rel(logits, case["last_logits"]) < 1e-4
        gen = generate(model, case["prompt_ids"], len(case["greedy_ids"]), ignore_eos=True)
        assert gen.token_ids == case["greedy_ids"]


def test_config_fields_from_transformers_5():
    cfg = model_config_from_hf(FIXTURE)
    assert (cfg.num_kv_heads, cfg.num_heads, cfg.rope_theta, cfg.tie_word_embeddings, cfg.weight_dtype) == \
        (2, 4, 500000.0, False, "bfloat16")


def test_greedy_tokens_and_logits_equal_transformers():
    check_against(FIXTURE, EXPECTED)


def test_cli_generate_gives_transformers_tokens(capsys):
    case = EXPECTED["cases"][0]
    ids = ",".join(map(str, case["prompt_ids"]))
    assert main(["generate", "--model", str(FIXTURE), "--prompt-ids", ids, "--max-tokens",
                 str(len(case["greedy_ids"])), "--temperature", "0", "--ignore-eos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == case["greedy_ids"]


def test_resharded_checkpoint_gives_identical_logits(tmp_path):
    cfg = model_config_from_hf(FIXTURE)
    weights = load_weights(cfg)
    out = save_hf_checkpoint(cfg, weights, tmp_path / "sharded", max_shard_bytes=64 * 1024)
    assert (out / "model.safetensors.index.json").is_file()
    cfg2 = model_config_from_hf(out)
    ids = EXPECTED["cases"][1]["prompt_ids"]
    a = LlamaModel(cfg, weights).forward(ids, LlamaModel(cfg, weights).new_cache())
    m2 = LlamaModel(cfg2, load_weights(cfg2))
    assert np.array_equal(a, m2.forward(ids, m2.new_cache()))


def test_tokenizer_json_matches_transformers_encoding():
    tok = load_tokenizer(model_config_from_hf(FIXTURE))
    for text, ids in zip(EXPECTED["texts"], EXPECTED["encodings"]):
        assert tok.encode(text) == [1, *ids]
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.hf
def test_live_against_transformers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("make_hf_fixture", FIXTURE.parent / "make_hf_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    expected = mod.write_fixture(tmp_path / "live", seed=7)
    check_against(tmp_path / "live", expected)
