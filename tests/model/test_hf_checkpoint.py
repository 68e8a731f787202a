"""A checkpoint saved by Hugging Face transformers loads and reproduces transformers' output.

tests/data/hf_tiny_llama/ (and its sharded twin) were written by
tests/data/make_hf_fixture.py with real transformers (versions and the exact
method in expected.json): the greedy tokens, logits and tokenizer encodings in
it are transformers' own, not ours. CI has no torch, so it checks against those
files; the `hf` test re-runs the whole comparison live where torch and
transformers are installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.model import LlamaModel, load_tokenizer, load_weights, model_config_from_hf
from cent_serve.model.generate import generate

DATA = Path(__file__).resolve().parent.parent / "data"
FIXTURE = DATA / "hf_tiny_llama"
SHARDED = DATA / "hf_tiny_llama_sharded"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
CASES = EXPECTED["cases"]


def rel(a, b) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def load(ckpt: Path) -> LlamaModel:
    cfg = model_config_from_hf(ckpt)
    return LlamaModel(cfg, load_weights(cfg))


def check_against(ckpt: Path, expected: dict) -> None:
    """Our last-position logits and greedy tokens equal transformers' for every recorded prompt."""
    model = load(ckpt)
    for case in expected["cases"]:
        logits = model.forward(case["prompt_ids"], model.new_cache())[-1]
        assert rel(logits, case["last_logits"]) < 1e-4, case["prompt_ids"]
        gen = generate(model, case["prompt_ids"], len(case["greedy_ids"]), ignore_eos=True)
        assert gen.token_ids == case["greedy_ids"], case["prompt_ids"]


def test_fixture_is_what_the_acceptance_asks_for():
    raw = json.loads((FIXTURE / "config.json").read_text())
    cfg = model_config_from_hf(FIXTURE)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 2, 16, 512)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.tie_word_embeddings, cfg.weight_dtype) == \
        (500000.0, 1e-5, False, "bfloat16")
    if int(EXPECTED["generated_by"]["transformers"].split(".")[0]) >= 5:
        # transformers 5 moved rope_theta into rope_parameters and renamed torch_dtype to dtype
        assert "rope_theta" not in raw and raw["rope_parameters"]["rope_theta"] == 500000.0
        assert raw["dtype"] == "bfloat16"
    assert "lm_head.weight" in json.dumps(sorted(json.loads(
        (SHARDED / "model.safetensors.index.json").read_text())["weight_map"]))


def test_greedy_tokens_and_logits_equal_transformers():
    check_against(FIXTURE, EXPECTED)


@pytest.mark.parametrize("case", CASES, ids=[f"prompt{i}" for i in range(len(CASES))])
def test_cli_generate_gives_transformers_tokens(case, capsys):
    ids = ",".join(map(str, case["prompt_ids"]))
    assert main(["generate", "--model", str(FIXTURE), "--prompt-ids", ids, "--max-tokens",
                 str(len(case["greedy_ids"])), "--temperature", "0", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == case["greedy_ids"]
    assert out["text"] == case["decoded"]  # transformers' decode(..., skip_special_tokens=True)


def test_checkpoint_sharded_by_transformers_gives_identical_logits():
    index = json.loads((SHARDED / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert not (SHARDED / "model.safetensors").exists()
    single, sharded = load(FIXTURE), load(SHARDED)
    for case in CASES:
        a = single.forward(case["prompt_ids"], single.new_cache())
        b = sharded.forward(case["prompt_ids"], sharded.new_cache())
        assert np.array_equal(a, b)
    check_against(SHARDED, EXPECTED)


def test_tokenizer_json_matches_transformers_encoding_and_decoding():
    tok = load_tokenizer(model_config_from_hf(FIXTURE))
    assert tok.vocab_size == 512 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    for text, ids in zip(EXPECTED["texts"], EXPECTED["encodings"]):
        assert ids[0] == 1 and tok.encode(text) == ids  # transformers' tokenizer(text).input_ids
        assert tok.encode(text, add_bos=False) == ids[1:]
        assert tok.decode(tok.encode(text)) == text
    for case in CASES:
        assert tok.decode(case["greedy_ids"]) == case["decoded"]


def test_scaled_rope_from_transformers_5_config_is_read_and_unknown_kinds_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    raw = json.loads((ckpt / "config.json").read_text())
    raw.pop("rope_theta", None)
    raw["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}
    (ckpt / "config.json").write_text(json.dumps(raw))
    cfg = model_config_from_hf(ckpt)
    assert (cfg.rope_type, cfg.rope_theta, cfg.rope_factor, cfg.rope_original_max_position) == \
        ("llama3", 500000.0, 8.0, 8192)
    raw["rope_parameters"]["rope_type"] = "longrope"
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="rope_parameters.rope_type='longrope' is not supported: supported: default"):
        model_config_from_hf(ckpt)
    del raw["rope_parameters"]  # transformers < 5 (Phi-3's file): the error names the key the file has
    raw["rope_scaling"] = {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"model.checkpoint: rope_scaling.type='longrope' is not supported"):
        model_config_from_hf(ckpt)


@pytest.mark.hf
def test_live_against_transformers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("make_hf_fixture", DATA / "make_hf_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    expected = mod.write_fixture(tmp_path / "live", seed=7, sharded_dir=tmp_path / "live_sharded")
    assert expected["cases"][0]["greedy_ids"] != CASES[0]["greedy_ids"]  # a fresh model, not the fixture
    check_against(tmp_path / "live", expected)
    check_against(tmp_path / "live_sharded", expected)
    tok = load_tokenizer(model_config_from_hf(tmp_path / "live"))
    assert [tok.encode(t) for t in expected["texts"]] == expected["encodings"]


def test_every_eos_id_of_the_checkpoint_ends_a_generation(tmp_path, capsys):
    """A config's eos_token_id list (Llama 3 Instruct: [128001, 128008, 128009]) and
    generation_config.json's ids all end a generation, as in vLLM; --ignore-eos runs past them."""
    case = CASES[0]  # greedy: 27, 113, 166, 473, 150, 114, 161, ...
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    gen = json.loads((ckpt / "generation_config.json").read_text())
    ids = ",".join(map(str, case["prompt_ids"]))

    def run(*extra) -> dict:
        assert main(["generate", "--model", str(ckpt), "--prompt-ids", ids, "--max-tokens", "12",
                     "--temperature", "0", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    (ckpt / "config.json").write_text(json.dumps(dict(config, eos_token_id=[2, 161])))
    assert model_config_from_hf(ckpt).extra_eos_token_ids == (161,)
    out = run()
    assert out["token_ids"] == case["greedy_ids"][:7] and out["finish_reason"] == "stop"
    from cent_serve.model.tokenizer import load_tokenizer
    tok = load_tokenizer(model_config_from_hf(ckpt))  # the eos that ended it (an ordinary token) is not text,
    assert out["text"] == tok.decode(case["greedy_ids"][:6]) != tok.decode(case["greedy_ids"][:7])  # as served
    assert run("--ignore-eos")["token_ids"] == case["greedy_ids"][:12]
    (ckpt / "generation_config.json").write_text(json.dumps(dict(gen, eos_token_id=[2, 473, 161])))
    assert model_config_from_hf(ckpt).extra_eos_token_ids == (161, 473)
    assert run()["token_ids"] == case["greedy_ids"][:4]
    (ckpt / "generation_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"generation_config.json: not valid JSON .*: fix the file"):
        model_config_from_hf(ckpt)
    for bad in (["3"], [-1], [100000]):  # refused naming the file they are in
        (ckpt / "generation_config.json").write_text(json.dumps(dict(gen, eos_token_id=bad)))
        with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id=.* is invalid: use a token id"):
            model_config_from_hf(ckpt)
    (ckpt / "generation_config.json").write_text("[2]")
    with pytest.raises(ValueError, match=r"generation_config.json: expected a JSON object"):
        model_config_from_hf(ckpt)
    (ckpt / "generation_config.json").write_text(json.dumps(dict(gen, eos_token_id=None)))
    (ckpt / "config.json").write_text(json.dumps(dict(config, eos_token_id=[2.0, 161.0])))  # floats that are ids
    assert model_config_from_hf(ckpt).extra_eos_token_ids == (161,)


@pytest.mark.parametrize("eos", ["<unk>", {"content": "<unk>", "special": True, "lstrip": False}])
def test_a_chat_template_s_eos_token_is_the_tokenizer_s(tmp_path, eos):
    """transformers' apply_chat_template passes the tokenizer's special tokens (Llama 3.1 Instruct's
    eos_token <|eot_id|>), not config.json's first eos id's (<|end_of_text|>): `eos_token` came from
    config.json while `bos_token` came from tokenizer_config.json. Stopping still follows the model's ids."""
    from cent_serve.model.chat_template import render_chat

    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    settings = json.loads((ckpt / "tokenizer_config.json").read_text())
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(dict(settings, eos_token=eos, chat_template=template)))
    cfg = model_config_from_hf(ckpt)
    tok = load_tokenizer(cfg)
    assert render_chat(tok, [dict(role="user", content="hi")], add_generation_prompt=False) == "<s>hi<unk>"
    assert tok.eos_token_id == cfg.eos_token_id == 2
    settings.pop("eos_token")  # the file does not say: the model's eos, as before
    (ckpt / "tokenizer_config.json").write_text(json.dumps(dict(settings, chat_template=template)))
    assert render_chat(load_tokenizer(cfg), [dict(role="user", content="hi")], add_generation_prompt=False) == \
        "<s>hi</s>"


def test_a_config_without_bos_or_eos_ids_takes_them_from_generation_config_then_the_tokenizer(tmp_path):
    """config.json without eos_token_id / bos_token_id made up ids 2 and 1, ordinary tokens of a real
    vocabulary (a BOS before every prompt, an eos that cuts replies short): they come from
    generation_config.json, else the tokenizer's eos_token / bos_token (as vLLM falls back to the
    tokenizer's eos), else the checkpoint is refused naming the key (a bos: the eos); with no tokenizer.json the byte-level
    stand-in's own <s> and </s> (1, 2), as before."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    gen = json.loads((ckpt / "generation_config.json").read_text())
    settings = json.loads((ckpt / "tokenizer_config.json").read_text())
    for d in (config, gen):
        del d["bos_token_id"], d["eos_token_id"]
    (ckpt / "config.json").write_text(json.dumps(config))

    def ids(generation: dict, tokenizer: dict) -> tuple:
        (ckpt / "generation_config.json").write_text(json.dumps(generation))
        (ckpt / "tokenizer_config.json").write_text(json.dumps(tokenizer))
        cfg = model_config_from_hf(ckpt)
        tok = load_tokenizer(cfg)
        assert (tok.bos_token_id, tok.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)
        return cfg.bos_token_id, cfg.eos_token_id, cfg.extra_eos_token_ids

    assert ids(dict(gen, bos_token_id=4, eos_token_id=[7, 9]), settings) == (4, 7, (9,))
    # the tokenizer's, as a string or transformers' {"content": ...}: "#" is id 5, "!" id 3
    assert ids(gen, dict(settings, bos_token="#", eos_token={"content": "!", "special": True})) == (5, 3, ())
    with pytest.raises(ValueError, match=r"config.json: eos_token_id is missing, and neither generation_config.json "
                                         r"nor the tokenizer's eos_token .* gives it: add it \("):
        ids(gen, dict(settings, eos_token=None))
    # a tokenizer without a BOS (Qwen's bos_token null) is served, as vLLM serves it: the bos is the eos
    assert ids(gen, dict(settings, bos_token=None, eos_token="!")) == (3, 3, ())
    with pytest.raises(ValueError, match="eos_token_id is missing"):  # a token not in the vocabulary: none
        ids(gen, dict(settings, eos_token="<|eot_id|>"))
    # special_tokens_map.json, an older checkpoint's home for them, over tokenizer_config.json's (as
    # transformers' from_pretrained merges them); it was not read, and such a checkpoint was refused
    (ckpt / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "!"}, "bos_token": "#"}))
    bare = {k: v for k, v in settings.items() if k not in ("bos_token", "eos_token")}
    assert ids(gen, bare) == (5, 3, ())
    assert ids(gen, dict(settings, bos_token="!", eos_token="#")) == (5, 3, ())
    (ckpt / "special_tokens_map.json").write_text("{")
    with pytest.raises(ValueError, match=r"special_tokens_map.json: not valid JSON .*download it again"):
        ids(gen, bare)
    (ckpt / "special_tokens_map.json").unlink()
    (ckpt / "tokenizer.json").unlink()  # the byte-level stand-in's own ids
    assert ids(gen, dict(settings, bos_token=None, eos_token=None)) == (1, 2, ())


def test_the_chat_template_s_special_tokens_are_read_as_transformers_reads_them(tmp_path):
    """bos_token / eos_token: tokenizer_config.json's, special_tokens_map.json's over them (a chat
    template's `eos_token` was tokenizer_config.json's alone)."""
    transformers = pytest.importorskip("transformers")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    settings = json.loads((ckpt / "tokenizer_config.json").read_text())
    bare = {k: v for k, v in settings.items() if k != "eos_token"}
    for tokenizer_config, special_map in ((bare, {"eos_token": "!"}), (dict(settings, eos_token="#"), {"eos_token": "!"}),
                                          (dict(settings, eos_token="#"), {"bos_token": "!"})):
        (ckpt / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        (ckpt / "special_tokens_map.json").write_text(json.dumps(special_map))
        ours = load_tokenizer(model_config_from_hf(ckpt))
        theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(ckpt))
        assert (ours.bos_token, ours.eos_token) == (theirs.bos_token, theirs.eos_token), special_map


def test_a_checkpoint_in_the_hugging_face_cache_is_named_by_its_repository(tmp_path, capsys, monkeypatch):
    """`huggingface-cli download` keeps a model in hub/models--ORG--NAME/snapshots/COMMIT/: cent bench
    run --model that directory headed its table, plots and served model id with the commit hash, and
    `--model .` with an empty name. A snapshot is named by its repository's NAME; any other directory
    by itself, as given or as `.`."""
    snap = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / ("0e9e39f2" * 5)
    shutil.copytree(FIXTURE, snap)
    assert model_config_from_hf(snap).name == "Llama-3.1-8B-Instruct"
    assert model_config_from_hf(snap / "config.json").name == "Llama-3.1-8B-Instruct"
    assert model_config_from_hf(FIXTURE).name == "hf_tiny_llama"
    other = tmp_path / "snapshots" / "mine"  # not in a cache's layout: its own name
    shutil.copytree(FIXTURE, other)
    assert model_config_from_hf(other).name == "mine"
    assert main(["info", "--model", str(snap), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["model"]["name"] == "Llama-3.1-8B-Instruct"
    monkeypatch.chdir(other)
    assert model_config_from_hf(".").name == model_config_from_hf("config.json").name == "mine"
    monkeypatch.chdir(snap)
    assert model_config_from_hf(".").name == "Llama-3.1-8B-Instruct"


def test_a_hugging_face_cache_entry_is_refused_naming_its_snapshot(tmp_path, capsys):
    """--model hub/models--ORG--NAME (the cache's folder of a repository, not a checkpoint) was refused
    as having no config.json, with no word of the snapshots/COMMIT directory beside it that has one."""
    repo = tmp_path / "models--meta-llama--Llama-3.1-8B-Instruct"
    shutil.copytree(FIXTURE, repo / "snapshots" / "abc123")
    assert main(["info", "--model", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--model {repo / 'snapshots' / 'abc123'}" in err


def test_a_cache_entry_hint_names_the_snapshot_refs_main_points_at(tmp_path, capsys):
    """The hint named the snapshot whose config.json was modified last, whatever the cache's refs/main (the
    commit of the branch main last downloaded: huggingface.co/docs/hub/local-cache) says: a snapshot touched
    later (an older revision fetched or edited after) was offered in place of main's. refs/main names the
    snapshot when it holds one; the newest by mtime is the fall-back."""
    repo = tmp_path / "models--meta-llama--Llama-3.1-8B-Instruct"
    main_commit, old_commit = "a" * 40, "b" * 40
    for commit, mtime in ((main_commit, 1_000_000), (old_commit, 2_000_000)):
        shutil.copytree(FIXTURE, repo / "snapshots" / commit)
        os.utime(repo / "snapshots" / commit / "config.json", (mtime, mtime))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main_commit)  # huggingface_hub writes the hash with no newline

    def hint() -> str:
        assert main(["info", "--model", str(repo)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert f"--model {repo / 'snapshots' / main_commit}\n" in hint()
    (repo / "refs" / "main").write_text("c" * 40 + "\n")  # a commit with no snapshot here: by mtime
    assert f"--model {repo / 'snapshots' / old_commit}\n" in hint()
    (repo / "refs" / "main").unlink()
    assert f"--model {repo / 'snapshots' / old_commit}\n" in hint()


def test_a_config_written_when_a_snapshot_was_named_by_its_commit_still_loads(tmp_path, capsys):
    """A config.json that cent wrote for a snapshot of the Hugging Face cache before snapshots were named
    by their repository holds the commit hash as model.name: cent simulate --config run/config.json refused
    it ('a checkpoint's model is named after its directory ('Llama-3.1-8B-Instruct')'). The directory's own
    name still loads, as the repository's; another name is still refused."""
    from cent_serve.config import load_config

    commit = "0e9e39f2" * 5
    snap = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / commit
    shutil.copytree(FIXTURE, snap)
    written = tmp_path / "config.json"
    written.write_text(json.dumps({"model": {"name": commit, "checkpoint": str(snap)}}))
    assert load_config(written).model.name == "Llama-3.1-8B-Instruct"
    assert main(["info", "--config", str(written), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["model"]["name"] == "Llama-3.1-8B-Instruct"
    written.write_text(json.dumps({"model": {"name": "snapshots", "checkpoint": str(snap)}}))
    with pytest.raises(ValueError, match="model.name='snapshots' is invalid: .*drop model.name"):
        load_config(written)
