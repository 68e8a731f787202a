"""Checkpoints in Hugging Face layout, tokenizers, sampling and generation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.model import (ByteTokenizer, LlamaModel, SamplingParams, load_tokenizer,
                              load_weights, make_generator, model_config_from_hf, random_weights,
                              sample, save_hf_checkpoint)
from cent_serve.model.generate import generate
from cent_serve.model.hf_checkpoint import hf_tensor_names
from tests.factories import tiny_model_config


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("shard", [None, 40_000])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, dtype, shard):
    cfg = tiny_model_config(weight_dtype=dtype)
    weights = random_weights(cfg)
    out = save_hf_checkpoint(cfg, weights, tmp_path / "ckpt", max_shard_bytes=shard)
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 2
        assert set(index["weight_map"]) == set(hf_tensor_names(cfg))
    from safetensors import safe_open
    files = sorted(out.glob("*.safetensors"))
    with safe_open(str(files[0]), "numpy") as f:  # tensors carry Hugging Face names
        assert all(k.startswith(("model.", "lm_head")) for k in f.keys())
    loaded_cfg = model_config_from_hf(out)
    assert (loaded_cfg.num_kv_heads, loaded_cfg.rope_theta, loaded_cfg.weight_dtype) == (2, 10000.0, dtype)
    ids = [1, 4, 9, 16, 25]
    a = LlamaModel(cfg, weights).forward(ids, LlamaModel(cfg, weights).new_cache())
    m = LlamaModel(loaded_cfg, load_weights(loaded_cfg))
    assert np.array_equal(a, m.forward(ids, m.new_cache()))


def test_missing_tensor_and_shape_mismatch_are_named(tmp_path):
    cfg = tiny_model_config()
    out = save_hf_checkpoint(cfg, random_weights(cfg), tmp_path / "ok")
    conf = json.loads((out / "config.json").read_text())
    conf["num_hidden_layers"] = 3
    (out / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="model.layers.2"):
        load_weights(model_config_from_hf(out))
    conf["num_hidden_layers"], conf["intermediate_size"] = 2, 128
    (out / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"mlp\.(gate|up|down)_proj\.weight has shape"):
        load_weights(model_config_from_hf(out))
    with pytest.raises(ValueError, match="nowhere' does not exist: point it at"):  # not "has no config.json"
        model_config_from_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty' has no config.json"):
        model_config_from_hf(tmp_path / "empty")
    # its config.json stands for the directory (name and checkpoint as from the directory); another file is refused
    assert model_config_from_hf(out / "config.json") == model_config_from_hf(out)
    (tmp_path / "mistral_config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"mistral_config.json' is a file: point --model at a checkpoint directory"):
        model_config_from_hf(tmp_path / "mistral_config.json")


def test_a_directory_that_is_not_a_checkpoint_names_every_family_read(tmp_path):
    """The messages of a missing directory and of one without config.json listed the families without
    Gemma 3, which the reader takes: they name each family `ARCHITECTURES` holds."""
    from cent_serve.config.hf_config import ARCHITECTURES, FAMILY_NAMES

    assert set(FAMILY_NAMES) == set(ARCHITECTURES)
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "nowhere", tmp_path / "empty"):
        with pytest.raises(ValueError) as err:
            model_config_from_hf(where)
        assert "Gemma 3" in str(err.value) and all(name in str(err.value) for name in FAMILY_NAMES.values())


def test_a_shape_the_model_refuses_names_the_config_json_keys(tmp_path):
    """A hand-written config.json's 41 heads over 8 KV heads was refused in ModelConfig's names only
    (model.num_kv_heads, model.num_heads): the message names the file's keys too."""
    shape = dict(model_type="llama", hidden_size=5248, intermediate_size=11008, num_hidden_layers=2,
                 num_attention_heads=41, num_key_value_heads=8, vocab_size=32000)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(shape))
    with pytest.raises(ValueError) as err:
        model_config_from_hf(tmp_path / "m")
    assert str(err.value).endswith("model.num_kv_heads=8 is invalid: it must divide model.num_heads=41 "
                                   "(config.json's num_key_value_heads and num_attention_heads)"), err.value
    shape.update(num_attention_heads=32, num_key_value_heads=8)  # a refusal naming neither: no keys added
    (tmp_path / "m" / "config.json").write_text(json.dumps(shape))
    with pytest.raises(ValueError) as err:
        model_config_from_hf(tmp_path / "m", max_seq_len=-1)
    assert "config.json's" not in str(err.value) and "model.max_seq_len=-1" in str(err.value), err.value


def test_a_derived_head_dim_the_model_refuses_says_where_it_came_from(tmp_path):
    """A config.json without head_dim whose hidden_size over its heads is odd (4000 / 32 = 125) was
    refused as 'model.head_dim=125 is invalid', a key the file does not have: the message says the size
    is hidden_size // num_attention_heads. With head_dim in the file, the message is the field's alone."""
    shape = dict(model_type="llama", hidden_size=4000, intermediate_size=11008, num_hidden_layers=2,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(shape))
    with pytest.raises(ValueError) as err:
        model_config_from_hf(tmp_path / "m")
    assert "model.head_dim=125 is invalid" in str(err.value), err.value
    assert str(err.value).endswith("(config.json has no head_dim: hidden_size 4000 // num_attention_heads 32)"), \
        err.value
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(shape, head_dim=125)))
    with pytest.raises(ValueError) as err:
        model_config_from_hf(tmp_path / "m")
    assert "model.head_dim=125 is invalid" in str(err.value) and "no head_dim" not in str(err.value), err.value


@pytest.mark.parametrize("name, rows", [("model.norm.weight", None), ("model.embed_tokens.weight", 7),
                                         ("lm_head.weight", 7)])
def test_top_level_tensors_whose_shape_disagrees_with_config_are_named(tmp_path, name, rows):
    """The final norm, embedding and LM head are checked as the blocks' tensors are: a mismatch was
    loaded, and every request then failed with numpy's broadcast error as a device fault."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    cfg = tiny_model_config(weight_dtype="float32")
    out = save_hf_checkpoint(cfg, random_weights(cfg), tmp_path / "ckpt")
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name] = tensors[name][: cfg.hidden_size // 2] if rows is None else \
        np.concatenate([tensors[name], tensors[name][:rows]])
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"{name.replace('.', chr(92) + '.')} has shape .* expected"):
        load_weights(model_config_from_hf(out))


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    text = "CENT: PIM 近存计算 ✓ — ok"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and all(3 <= i < 259 for i in ids[1:])
    assert tok.decode(ids) == text
    assert tok.decode([tok.eos_token_id, 300]) == ""
    assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=False) == f"<s>{text}</s>"


def test_hf_tokenizer_json_round_trips(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    corpus = ["the cent device computes in dram banks", "pim is all you need", "cxl switch"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = tiny_model_config(vocab_size=tok.get_vocab_size())
    ckpt = save_hf_checkpoint(cfg, random_weights(cfg), tmp_path / "c")
    tok.save(str(ckpt / "tokenizer.json"))
    loaded = load_tokenizer(model_config_from_hf(ckpt))
    ids = loaded.encode("the cent device is all you need")
    assert ids[0] != 1 and len(ids) < 20  # no post-processor, no BOS (Qwen's way); merges were learnt
    assert loaded.decode(ids) == "the cent device is all you need"
    assert loaded.decode([1, *ids, 2], skip_special_tokens=False) == "<s>the cent device is all you need</s>"
    from transformers import PreTrainedTokenizerFast
    text = "pim is all you need"
    for post, settings in ((False, {}), (True, {}), (False, {"add_bos_token": True})):
        if post:  # Llama's: a BOS before every sequence
            tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok.save(str(ckpt / "tokenizer.json"))
        (ckpt / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", **settings}))
        ours = load_tokenizer(model_config_from_hf(ckpt))
        theirs = PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"), bos_token="<s>")
        want = theirs(text).input_ids if not settings else [1, *theirs(text, add_special_tokens=False).input_ids]
        assert ours.encode(text) == want, (post, settings)
        assert ours.encode(text, add_bos=False) == theirs(text, add_special_tokens=False).input_ids
        assert (ours.encode(text)[0] == 1) == (post or bool(settings))
        assert ours.start_ids == ([1] if post or settings else [])  # what a trace's prompt of ids starts with
    # add_bos_token false over a BOS-adding post-processor (transformers' Llama tokenizers drop it), the
    # text's own <s> kept
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "add_bos_token": False}))
    ours = load_tokenizer(model_config_from_hf(ckpt))
    assert ours.encode(text) == ours.encode(text, add_bos=False) and ours.encode(text)[0] != 1
    assert ours.encode("<s>" + text)[0] == 1
    # a chat with add_special_tokens: the tokenizer's own special tokens, none for a tokenizer adding none
    from cent_serve.model.tokenizer import encode_chat
    chat = [{"role": "user", "content": text}]
    for post in (True, False):
        if not post:
            tok.post_processor = None
        tok.save(str(ckpt / "tokenizer.json"))
        (ckpt / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
        ours = load_tokenizer(model_config_from_hf(ckpt))
        plain = encode_chat(ours, chat)
        assert encode_chat(ours, chat, add_special_tokens=True) == ([1, *plain] if post else plain)


def test_sampling_greedy_topk_topp_and_seeds():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0])
    assert sample(logits, SamplingParams(temperature=0.0), make_generator(0)) == 1
    draws = lambda p, seed: [sample(logits, p, make_generator(seed * 1000 + i)) for i in range(300)]
    top2 = draws(SamplingParams(temperature=1.0, top_k=2), 1)
    assert set(top2) == {1, 2}
    # softmax: p(1) = 0.474, p(2) = 0.429; nucleus 0.4 keeps {1}, 0.5 needs {1, 2}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.4), 2)) == {1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5), 3)) == {1, 2}
    free = draws(SamplingParams(temperature=1.0), 4)
    assert abs(free.count(1) / 300 - 0.474) < 0.08 and {0, 4} <= set(free)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=3.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_generation_is_reproducible_for_a_seed():
    cfg = tiny_model_config()
    model = LlamaModel(cfg)
    p = SamplingParams(temperature=0.9, top_p=0.95, seed=123)
    a = generate(model, [1, 5, 6], 12, p, ignore_eos=True)
    b = generate(model, [1, 5, 6], 12, p, ignore_eos=True)
    c = generate(model, [1, 5, 6], 12, SamplingParams(temperature=0.9, top_p=0.95, seed=124), ignore_eos=True)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
    assert a.token_ids != c.token_ids
    greedy = generate(model, [1, 5, 6], 6)
    full = model.forward([1, 5, 6] + greedy.token_ids[:-1], model.new_cache())
    assert greedy.token_ids == [int(t) for t in np.argmax(full[2:], axis=-1)]


def test_a_config_without_weights_points_at_timing_only(tmp_path, capsys):
    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama" / "config.json", tmp_path)
    with pytest.raises(ValueError, match="has neither model.safetensors .* or run its shape timing-only with "
                                         "--numerics off"):
        load_weights(model_config_from_hf(tmp_path))
    assert main(["simulate", "--model", str(tmp_path), "--devices", "2", "--numerics", "off", "--seqlen", "64",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seqlen"] == 64
    # numerics auto (the default) times a config.json alone rather than promising full numerics it cannot
    # load (`cent info` said "runs yes" where `cent serve` then refused)
    from cent_serve.config import CentConfig, ModelConfig
    assert CentConfig(model=model_config_from_hf(tmp_path)).resolved_numerics == "off"
    # cent generate is the real math: it says the weights are missing, not to turn numerics off
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "has no weights" in err and "cent simulate or cent serve" in err and "--numerics off" not in err
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")  # weights in a format that does not load: refused
    assert CentConfig(model=model_config_from_hf(tmp_path)).resolved_numerics == "full"  # by name, not timed
    with pytest.raises(ValueError, match="has neither model.safetensors"):
        load_weights(model_config_from_hf(tmp_path))
    assert CentConfig(model=ModelConfig(**{**vars(model_config_from_hf(tmp_path)), "checkpoint": None})
                      ).resolved_numerics == "full"  # the same shape as a seeded preset: full


@pytest.mark.parametrize("damage", ["drop", "reshape"])
def test_a_bad_checkpoint_is_refused_from_its_headers_before_any_device_starts(tmp_path, damage):
    """Full numerics: the preflight reads the safetensors headers (no weights) and names a missing or
    misshapen tensor, as loading would; on Ray the device actors load the weights, and their failure
    came back after start-up as a 60-line traceback."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cent_serve.config import CentConfig, ParallelConfig
    from cent_serve.model import hf_checkpoint
    from cent_serve.preflight import check_runnable
    mcfg = tiny_model_config(weight_dtype="float32")
    out = save_hf_checkpoint(mcfg, random_weights(mcfg), tmp_path / "ckpt")
    name = "model.layers.1.mlp.up_proj.weight"
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if damage == "drop":
        del tensors[name]
    else:
        tensors[name] = tensors[name][:-1]
    save_file(tensors, str(out / "model.safetensors"))
    cfg = CentConfig(model=model_config_from_hf(out), parallel=ParallelConfig(2, 2, 1), executor="ray")
    calls = []
    real = hf_checkpoint.iter_checkpoint_tensors
    hf_checkpoint.iter_checkpoint_tensors = lambda ckpt, shapes_only=False: calls.append(shapes_only) or \
        real(ckpt, shapes_only)
    try:
        with pytest.raises(ValueError, match=(rf"lacks tensors \['{name}'\]" if damage == "drop" else
                                              rf"{name.replace('.', chr(92) + '.')} has shape \(\d+, 64\), expected")):
            check_runnable(cfg)
    finally:
        hf_checkpoint.iter_checkpoint_tensors = real
    assert calls == [True]  # from the headers: no weight was read


def test_tensors_the_config_does_not_use_are_warned_about_once_by_count_and_example(tmp_path, caplog):
    """Blocks past num_hidden_layers, a vision tower or an MTP head were dropped silently: one warning
    a checkpoint names how many and a few of them, from the header preflight or the load, whichever
    comes first in the process; what transformers ignores too (old rotary inv_freq buffers, a tied
    model's LM head) is not warned about."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cent_serve.config import CentConfig, ParallelConfig
    from cent_serve.preflight import check_runnable
    mcfg = tiny_model_config(num_layers=3, tie_word_embeddings=True)
    out = save_hf_checkpoint(mcfg, random_weights(mcfg), tmp_path / "ckpt")
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    zeros = np.zeros(4, np.float32)
    tensors.update({"model.layers.0.self_attn.rotary_emb.inv_freq": zeros, "lm_head.weight": tensors[
        "model.embed_tokens.weight"], "vision_tower.blocks.0.attn.weight": zeros, "mtp.0.proj.weight": zeros,
        "model.layers.1.mlp.shared_expert.up_proj.weight": zeros})
    save_file(tensors, str(out / "model.safetensors"))
    conf = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**conf, "num_hidden_layers": 2}))
    cfg = CentConfig(model=model_config_from_hf(out), parallel=ParallelConfig(2, 2, 1), numerics="full")
    with caplog.at_level("WARNING", logger="cent_serve.model.hf_checkpoint"):
        check_runnable(cfg)  # the preflight (headers), then the local executor's load: one warning
        load_weights(cfg.model)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert "\n" not in line and "holds 12 tensors its config.json does not use (model_type='llama', " \
        "num_hidden_layers=2), ignored: " in line and "and 9 more; " in line and "fix config.json" in line
    for example in ("model.layers.1.mlp.shared_expert.up_proj.weight", "mtp.0.proj.weight",
                    "vision_tower.blocks.0.attn.weight"):
        assert example in line  # one of each kind, not three blocks' tensors
    assert "inv_freq" not in line and "lm_head" not in line
    caplog.clear()
    fine = save_hf_checkpoint(mcfg, random_weights(mcfg), tmp_path / "fine")  # every tensor used: no warning
    with caplog.at_level("WARNING", logger="cent_serve.model.hf_checkpoint"):
        load_weights(model_config_from_hf(fine))
    assert not caplog.records


def test_a_checkpoint_without_tokenizer_json_warns_once_when_text_is_counted_a_byte_a_token(tmp_path, caplog):
    from cent_serve.model import tokenizer as tok_mod
    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama" / "config.json", tmp_path)
    cfg = model_config_from_hf(tmp_path)
    with caplog.at_level("WARNING", logger=tok_mod.__name__):
        tok = load_tokenizer(cfg)
        assert isinstance(tok, ByteTokenizer) and not caplog.records  # no text yet (a trace of counts): no word
        tok.encode("hello")
        load_tokenizer(cfg).encode("again")
    warned = [r.getMessage() for r in caplog.records if "tokenizer.json" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path) in warned[0] and "one token a byte" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger=tok_mod.__name__):  # a checkpoint with its own: no word
        load_tokenizer(model_config_from_hf(Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama")
                       ).encode("hello")
    assert not caplog.records


@pytest.mark.parametrize("family, adds_bos", [("qwen2", False), ("qwen3", False), ("qwen2_moe", False),
                                              ("qwen3_moe", False), ("llama3", True), ("mistral", True),
                                              ("mixtral", True)])
def test_a_config_only_stand_in_adds_a_bos_as_the_family_s_own_tokenizer_does(tmp_path, family, adds_bos):
    """A directory with only a Qwen config.json got a stand-in that put a BOS first, where Qwen's own
    tokenizer (transformers' Qwen2Tokenizer: bos_token None) puts none: every prompt one token longer
    than the user's tokenizer counts it. Llama's, Mistral's and Mixtral's put one."""
    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "hf_families" / family / "config.json", tmp_path)
    tok = load_tokenizer(model_config_from_hf(tmp_path))
    assert isinstance(tok, ByteTokenizer)
    bos = [tok.bos_token_id] if adds_bos else []
    assert tok.encode("hi") == bos + [ord("h") + 3, ord("i") + 3] and tok.start_ids == bos
    assert tok.encode("hi", add_bos=False) == [ord("h") + 3, ord("i") + 3]


@pytest.mark.parametrize("family, settings, adds_bos", [
    ("qwen2", {"add_bos_token": True}, True),           # the file says: it wins over the family
    ("llama3", {"add_bos_token": False}, False),
    ("llama3", {"bos_token": None}, False),             # no BOS token at all (Qwen 2.5's null)
    ("qwen3", {"eos_token": "<|im_end|>"}, False),      # the file says nothing of it: the family's
])
def test_a_stand_in_follows_tokenizer_config_s_add_bos_token(tmp_path, capsys, family, settings, adds_bos):
    import tokenizers

    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "hf_families" / family / "config.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    tok = load_tokenizer(model_config_from_hf(tmp_path))
    assert isinstance(tok, ByteTokenizer) and (tok.encode("hi")[0] == tok.bos_token_id) == adds_bos
    # the exported files count as the server does, BOS or none (a client loads them)
    assert main(["tokenizer", "export", str(tmp_path / "out"), "--model", str(tmp_path)]) == 0
    capsys.readouterr()
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).encode("hi").ids == tok.encode("hi")
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["add_bos_token"] is adds_bos


def test_the_model_card_and_the_export_say_when_the_tokenizer_stands_in(tmp_path, capsys):
    """/v1/models names a checkpoint's own tokenizer.json by its directory, and a byte-level stand-in
    by the command that writes it (the directory would not load in a client); export says so too."""
    from types import SimpleNamespace

    from api.routes import model_card
    from cent_serve.config import CentConfig

    data = Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama"
    shutil.copy(data / "config.json", tmp_path)
    cards = {}
    for name, path in (("bare", tmp_path), ("own", data)):
        cfg = CentConfig(model=model_config_from_hf(path))
        ctx = SimpleNamespace(cfg=cfg, tokenizer=load_tokenizer(cfg.model), model_name=name, created=0)
        cards[name] = model_card(ctx)["cent"]
    assert cards["bare"]["tokenizer"] == f"cent tokenizer export DIR --model {tmp_path}"
    assert cards["bare"]["tokenizer_kind"] == "byte_stand_in"
    assert cards["own"] == dict(tokenizer=str(data), tokenizer_kind="checkpoint",
                                vocab_size=cards["own"]["vocab_size"])
    assert main(["tokenizer", "export", str(tmp_path / "out"), "--model", str(tmp_path)]) == 0
    assert "has no tokenizer.json: these files are the byte-level tokenizer" in capsys.readouterr().err
    assert main(["tokenizer", "export", str(tmp_path / "out2"), "--model", str(data)]) == 0
    assert "note:" not in capsys.readouterr().err


def test_the_status_names_the_numerics_the_engine_runs_without_looking_at_the_checkpoint_again(tmp_path):
    """numerics auto is resolved once, at start-up: the status (read on every /metrics scrape) reports what the
    engine computes, with no glob of the checkpoint directory, even if its weight files go away meanwhile."""
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    shutil.copytree(Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama", tmp_path / "m")
    cfg = CentConfig(model=model_config_from_hf(tmp_path / "m"), executor="local")
    cfg.scheduler.max_seqs_per_stage = 2
    assert cfg.numerics == "auto"
    engine = Engine(cfg)
    assert engine.full and engine.status()["numerics"] == "full"
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    assert cfg.resolved_numerics == "off" and engine.status()["numerics"] == "full"


DATA = Path(__file__).resolve().parent.parent / "data"
CHECKPOINT_TOKENIZERS = sorted(p.relative_to(DATA).as_posix() for p in [DATA / "hf_tiny_llama", *(DATA / "hf_families").iterdir()]
                               if (p / "tokenizer.json").is_file())


def _sentencepiece_tokenizer(tmp_path: Path):
    """A tokenizer.json as Llama 2's and Mistral's are: SentencePiece pieces (a space is U+2581), byte
    fallback, and a decoder that strips the text's first space (so a piece decoded alone loses its
    space: what the window in `IncrementalText` is for). The checkpoints here are byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    from cent_serve.model.tokenizer import HFTokenizer
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["\u2581", "\u2581Hello", "\u2581world", "\u2581again", ",", "!", "a", "b", "\u2581the", "\u2581.", "."]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])  # as Llama 2's: left out of a decode (skip_special_tokens)
    tok.save(str(tmp_path / "tokenizer.json"))
    return HFTokenizer(tmp_path / "tokenizer.json", 1, 2)


@pytest.mark.parametrize("name", ["byte", "sentencepiece", *CHECKPOINT_TOKENIZERS])
def test_incremental_text_equals_a_whole_decode_at_every_length(name, tmp_path):
    """The text a server sends as tokens come (`IncrementalText`) is the whole decode's at every
    length, for the byte tokenizer, a SentencePiece one with byte fallback (whose decode turns a
    whole run of byte tokens into U+FFFDs when one byte is not UTF-8), and every checkpoint
    tokenizer here (byte-level BPE): ids drawn at random, byte and special tokens included, and a
    text of real words encoded; then a shorter list of ids (a new sequence) decodes whole again.
    With a `decode_context` of 0 the SentencePiece text loses its spaces; the byte tokenizer's is 0."""
    from cent_serve.model.tokenizer import HFTokenizer, IncrementalText
    if name == "byte":
        tok = ByteTokenizer(300, 1, 2)
    elif name == "sentencepiece":
        tok = _sentencepiece_tokenizer(tmp_path)
    else:
        cfg = json.loads((DATA / name / "config.json").read_text())
        tok = HFTokenizer(DATA / name / "tokenizer.json", cfg.get("bos_token_id"), cfg.get("eos_token_id"))
    rng = np.random.default_rng(7)
    vocab = tok.vocab_size if isinstance(tok, ByteTokenizer) else tok._tok.get_vocab_size()
    specials = [i for i in (tok.bos_token_id, tok.eos_token_id) if i is not None]
    words = tok.encode("Hello, world! \u00dcn\u00efc\u00f6d\u00e9 caf\u00e9 \u6771\u4eac \U0001f642 isn't it?  Yes .  the",
                       add_bos=False)
    eos, letter = specials[-1], words[-1]
    byte = (tok.encode("\u00e9", add_bos=False) or [letter])[0]
    for ids in ([int(i) for i in rng.integers(0, vocab, 300)],
                [int(rng.choice(specials)) if rng.random() < 0.05 else int(i)
                 for i in rng.integers(0, min(vocab, 600), 300)],
                words * 3,
                # runs of special tokens longer than the window (a model may emit the eos on and on
                # under ignore_eos or min_tokens): the text around them, and a byte run across them
                [*words[:4], *[eos] * 9, *words[4:8], *[eos] * 12, byte, *[eos] * 10, letter],
                [int(rng.choice(specials)) if rng.random() < 0.5 else int(i)
                 for i in rng.integers(0, min(vocab, 600), 400)]):
        inc = IncrementalText()
        for n in range(len(ids) + 1):
            assert inc.decode(tok, ids[:n]) == tok.decode(ids[:n]), (name, n)
        assert inc.decode(tok, ids[:5]) == tok.decode(ids[:5])


def test_full_numerics_of_a_config_without_weights_says_no_weights_before_too_big(tmp_path, monkeypatch):
    """`cent serve --model DIR --numerics full` with a config.json alone: the missing weights are the
    cause, not "needs about 59.8 GiB of memory" (the memory check ran first; a new user's 8B config)."""
    from cent_serve import preflight
    from cent_serve.config import CentConfig

    shutil.copy(Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama" / "config.json", tmp_path)
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 1)  # any model is too big for it
    cfg = CentConfig(model=model_config_from_hf(tmp_path), numerics="full")
    with pytest.raises(ValueError, match="has neither model.safetensors .* --numerics off"):
        preflight.check_runnable(cfg)
