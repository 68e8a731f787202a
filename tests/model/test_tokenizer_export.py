"""`cent tokenizer export`: the files a client loads count and decode exactly as the server's
tokenizer does (through the `tokenizers` library; through `transformers` too when installed), and
carry the chat template the server renders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from cent_serve.cli import main
from cent_serve.config import model_preset
from cent_serve.model.tokenizer import ByteTokenizer, encode_chat, load_tokenizer
from cent_serve.model.tokenizer_export import export_tokenizer
from cent_serve.config.hf_config import model_config_from_hf

HF_TINY = Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama"
CHATS = [[{"role": "user", "content": "hi"}],
         [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo <s>"},
          {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again\n"}]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok70")
    export_tokenizer(model_preset("llama2-70b"), out)
    return out


@pytest.fixture(scope="module")
def exported_tokenizer(exported):
    """The exported tokenizer.json loaded once (a 32,000-token vocabulary: loading it took most of each
    of the 200 examples below); encoding and decoding leave it as it was."""
    return Tokenizer.from_file(str(exported / "tokenizer.json"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40) | st.sampled_from(["<s>", "a</s>b", "<unk><s>", "<extra_300>", "é😀"]))
def test_exported_tokenizer_counts_and_decodes_as_the_server(exported_tokenizer, text):
    server = ByteTokenizer(32000)
    hf = exported_tokenizer
    assert hf.encode(text).ids == server.encode(text)  # the BOS first, as the server counts prompts
    assert hf.encode(text, add_special_tokens=False).ids == server.encode(text, add_bos=False)
    ids = server.encode(text)
    assert hf.decode(ids, skip_special_tokens=True) == server.decode(ids)


def test_exported_vocabulary_and_extra_ids(exported):
    hf = Tokenizer.from_file(str(exported / "tokenizer.json"))
    assert hf.get_vocab_size() == 32000
    assert hf.decode([300, 31999]) == ByteTokenizer(32000).decode([300, 31999]) == "<extra_300><extra_31999>"


def test_exported_chat_template_renders_the_server_s_prompt(exported):
    """Rendered as `transformers` renders templates, then encoded without another BOS."""
    config = json.loads((exported / "tokenizer_config.json").read_text())
    hf = Tokenizer.from_file(str(exported / "tokenizer.json"))
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
    server = ByteTokenizer(32000)
    for chat in CHATS:
        text = template.render(messages=chat, add_generation_prompt=True, bos_token=config["bos_token"])
        assert hf.encode(text, add_special_tokens=False).ids == encode_chat(server, chat)
    assert encode_chat(server, CHATS[0]) == server.encode("<|user|>\nhi\n<|assistant|>\n")


def test_transformers_loads_it_and_agrees(exported):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    server = ByteTokenizer(32000)
    for text in ("hello", "héllo wörld 😀 <s> x</s>", "  two  spaces\n\ttab"):
        assert tok(text).input_ids == server.encode(text)
    for chat in CHATS:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert list(ids) == encode_chat(server, chat)


def test_a_checkpoint_exports_its_own_files_with_the_server_s_template(tmp_path):
    cfg = model_config_from_hf(HF_TINY)
    written = export_tokenizer(cfg, tmp_path)
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json", "config.json"}
    assert (tmp_path / "config.json").read_bytes() == (HF_TINY / "config.json").read_bytes()
    assert (tmp_path / "tokenizer.json").read_bytes() == (HF_TINY / "tokenizer.json").read_bytes()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == load_tokenizer(cfg).chat_template and config["bos_token"] == "<s>"


@pytest.mark.parametrize("own_template", [False, True])
def test_a_transformers_5_tokenizer_class_exports_as_the_one_every_version_loads(tmp_path, own_template):
    """transformers 5 saves `TokenizersBackend`, which 4.x (vLLM's benchmark pins it) cannot load; the
    export names PreTrainedTokenizerFast, the same class in 5. The shipped fixtures name it too."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (ckpt / name).write_bytes((HF_TINY / name).read_bytes())
    config = dict(json.loads((HF_TINY / "tokenizer_config.json").read_text()), tokenizer_class="TokenizersBackend")
    if own_template:
        config["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    export_tokenizer(model_config_from_hf(ckpt), out)
    exported = json.loads((out / "tokenizer_config.json").read_text())
    assert exported["tokenizer_class"] == "PreTrainedTokenizerFast"
    served = load_tokenizer(model_config_from_hf(ckpt)).chat_template
    assert exported["chat_template"] == config.get("chat_template", served)
    shipped = sorted(HF_TINY.parent.glob("hf_*/tokenizer_config.json")) + sorted(
        HF_TINY.parent.glob("hf_families/*/tokenizer_config.json"))
    assert shipped and all(json.loads(p.read_text())["tokenizer_class"] == "PreTrainedTokenizerFast" for p in shipped)


def test_a_checkpoint_s_own_chat_template_is_the_one_served(tmp_path):
    for name in ("config.json", "tokenizer.json", "model.safetensors", "generation_config.json"):
        (tmp_path / name).write_bytes((HF_TINY / name).read_bytes())
    config = json.loads((HF_TINY / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(model_config_from_hf(tmp_path))
    assert tok.has_own_chat_template
    assert encode_chat(tok, CHATS[0]) == [1] + tok.encode("[user] hi", add_bos=False)


def test_cli_writes_the_files(tmp_path, capsys):
    assert main(["tokenizer", "export", str(tmp_path / "t"), "--model", "tiny"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["config.json", "tokenizer.json",
                                                                   "tokenizer_config.json"]
    assert str(tmp_path / "t" / "tokenizer.json") in capsys.readouterr().out


def _byte_fallback_checkpoint(tmp_path, chat_template: str | None = None) -> Path:
    """A SentencePiece-style checkpoint: a few pieces, every byte as <0xNN>, byte fallback."""
    from tokenizers import AddedToken, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁a": 3, "▁b": 4, "a": 5, "b": 6, "▁": 7}
    vocab.update({f"<0x{b:02X}>": 8 + b for b in range(256)})
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a"), ("▁", "b")], unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / name).write_bytes((HF_TINY / name).read_bytes())
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_byte_fallback_pieces_have_their_real_bytes_and_hold_back_whole_characters(tmp_path):
    from cent_serve.serving import _stable

    tok = load_tokenizer(model_config_from_hf(_byte_fallback_checkpoint(tmp_path)))
    ids = tok.encode("a €", add_bos=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == " a €".encode()  # the SentencePiece space marker too
    euro = ids[-3:]
    assert [tok.token_bytes(i) for i in euro] == [b"\xe2", b"\x82", b"\xac"]
    assert [tok.partial_tail(ids[:k]) for k in range(len(ids) - 2, len(ids) + 1)] == [True, True, False]
    # two of the euro's three bytes decode to two U+FFFD: both are held back, so no "\ufffd" is ever sent
    text = tok.decode(ids[:-1])
    assert text.endswith("\ufffd\ufffd") and _stable(text, (), tok.partial_tail(ids[:-1])) == tok.decode(ids[:-3])
    # an eos between them (ignore_eos) is left out of the decode, which joins the bytes around it: still
    # a character half made
    eos = tok.eos_token_id
    assert tok.decode([*euro[:2], eos, euro[2]]) == "\u20ac"
    assert tok.partial_tail([*euro[:2], eos]) and tok.partial_tail([*euro[:2], eos, eos])


def test_chat_templates_render_as_transformers_renders_them(tmp_path):
    template = ("{{ bos_token }}{% if tools is not none %}TOOLS{% endif %}{% for m in messages %}"
                "{% if loop.index > 2 %}{% break %}{% endif %}{{ m['content'] | tojson }}{% endfor %}"
                "{% if add_generation_prompt %}>{% endif %}")
    tok = load_tokenizer(model_config_from_hf(_byte_fallback_checkpoint(tmp_path, template)))
    from cent_serve.model.chat_template import render_chat
    chat = [{"role": "user", "content": "é"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "never"}]
    assert render_chat(tok, chat) == '<s>"é""b">'  # no tools, loop controls, tojson without ASCII escapes


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TRIMMING = ("{{ bos_token }}{% for m in messages %}{{ '<|start|>' + m['role'] + '<|end|>\\n\\n' + m['content'] | trim "
            "+ '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant<|end|>\\n\\n' }}{% endif %}")


@pytest.mark.parametrize("template", [None, CHATML, TRIMMING], ids=["default", "chatml", "trimming"])
def test_continue_final_message_cuts_where_transformers_cuts(tmp_path, template):
    """The prompt of a begun reply ends where transformers' apply_chat_template(continue_final_message=True)
    ends it, with the content's own trailing space or, under a template that trims it, without."""
    transformers = pytest.importorskip("transformers")
    from cent_serve.model.chat_template import render_chat

    if template is None:  # the server's default template, as `cent tokenizer export` writes it
        export_tokenizer(model_preset("tiny"), tmp_path)
        tok = load_tokenizer(model_preset("tiny"))
    else:
        tok = load_tokenizer(model_config_from_hf(_byte_fallback_checkpoint(tmp_path, template)))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    chats = [[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello there, "}],
             [{"role": "user", "content": "  padded  "}],
             [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}],
             # text that also stands in the template's closing tokens ("<|im_end|>", "<|end|>", "<|eot|>")
             [{"role": "user", "content": "x"}, {"role": "assistant", "content": "end"}],
             [{"role": "user", "content": "x"}, {"role": "assistant", "content": "im"}],
             [{"role": "user", "content": "x"}, {"role": "assistant", "content": "eot "}]]
    for chat in chats:
        want = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=False, continue_final_message=True)
        assert render_chat(tok, chat, False, True) == want, chat


def test_a_chat_template_that_does_not_compile_stops_the_load(tmp_path):
    path = _byte_fallback_checkpoint(tmp_path, "{% for m in messages %}")
    with pytest.raises(ValueError, match="does not compile.*chat_template"):
        load_tokenizer(model_config_from_hf(path))


@pytest.mark.parametrize("preset", ["llama3.1-8b", "qwen2.5-7b", "qwen3-8b"])
def test_presets_with_their_own_bos_and_eos_ids_export_and_count_as_the_server(preset, tmp_path):
    """Llama 3 (128000 / 128001), Qwen 2.5 (BOS = EOS = 151643: one `</s>`), Qwen 3 (151643 / 151645)."""
    cfg = model_preset(preset)
    assert main(["tokenizer", "export", str(tmp_path), "--model", preset]) == 0
    hf, server = Tokenizer.from_file(str(tmp_path / "tokenizer.json")), load_tokenizer(cfg)
    assert hf.get_vocab_size() == cfg.vocab_size
    for text in ["hi", "<s>x</s>", "a</s>b<unk>", "é😀 <extra_300>"]:
        assert hf.encode(text).ids == server.encode(text), text
        ids = server.encode(text) + [1, 2, cfg.vocab_size - 1]  # 1, 2 unused: nothing, as on the server
        assert hf.decode(ids, skip_special_tokens=True) == server.decode(ids), text
    assert hf.encode("").ids == [cfg.bos_token_id] and hf.token_to_id(server.eos_token) == cfg.eos_token_id
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
    for chat in CHATS:
        text = template.render(messages=chat, add_generation_prompt=True, bos_token=config["bos_token"])
        assert hf.encode(text, add_special_tokens=False).ids == encode_chat(server, chat)


def test_the_export_has_the_model_s_config_json_that_vllm_reads_beside_a_tokenizer(tmp_path):
    """vLLM's benchmark reads config.json beside the tokenizer it is given (its model_type): without one
    it logged "ERROR ... Unrecognized model ... Should have a model_type key" per attempt (clients audit)."""
    transformers = pytest.importorskip("transformers")
    assert main(["tokenizer", "export", str(tmp_path / "t"), "--model", "llama2-70b"]) == 0
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "t"))
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("llama", 80, 32000)
    served = model_config_from_hf(tmp_path / "t")  # the same model's shape, read back
    assert (served.hidden_size, served.num_kv_heads, served.bos_token_id) == (8192, 8, 1)
