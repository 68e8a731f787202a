"""`cent tokenizer export DIR --model M`: the server's tokenizer as files a client loads.

A benchmark client counts prompt tokens with its own tokenizer (vLLM's `vllm bench serve
--tokenizer DIR`, guidellm's `--tokenizer kind=hf_auto,model=DIR`,
`transformers.AutoTokenizer.from_pretrained(DIR)`),
so it must count exactly as the server does. For a preset that is the byte-level tokenizer
(cent_serve/model/tokenizer.py), written as a Hugging Face `tokenizer.json`:

- a BPE model without merges over GPT-2's byte alphabet (the `ByteLevel` pre-tokenizer, no regex
  split, no prefix space), so each UTF-8 byte b is one token, id b + 3, as `ByteTokenizer` counts;
- `<unk>` as id 0, `<s>` and `</s>` at the model's BOS and EOS ids (1 and 2, or e.g. Llama 3's
  128000 and 128001; `</s>` alone when BOS is EOS), all special tokens (text that spells them is them, as the server parses
  it); the other ids from 259 up (and 1, 2 when unused) as `<extra_ID>` pieces no text encodes to;
- a post-processor that puts `<s>` first, as `ByteTokenizer.encode` does (none when it stands in for
  a tokenizer that adds no BOS, Qwen's: `tokenizer.stand_in_adds_bos`);
- a `tokenizer_config.json` naming the special tokens and carrying the server's chat template;
- the model's `config.json` (its shape, no weights), which vLLM reads beside a tokenizer (without it
  its benchmark logs an ERROR per attempt, "Unrecognized model ... Should have a model_type key").

For a checkpoint the files are its own (copied, config.json too), with the chat template the server
uses added when the checkpoint has none.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from cent_serve.config import ModelConfig
from cent_serve.model.tokenizer import ByteTokenizer, byte_alphabet, load_tokenizer
from cent_serve.model.hf_config_writer import hf_config_dict

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "config.json")


def special_names(tok: ByteTokenizer) -> dict[int, str]:
    """The special tokens' ids and names, as the server's tokenizer has them: `<unk>` 0, `<s>` and
    `</s>` at the model's BOS and EOS ids (1 and 2 for Llama 2 presets, 128000 and 128001 for
    Llama 3's; `</s>` alone when a model's BOS is its EOS, as Qwen 2.5's is). ValueError when an
    id collides with a byte's or lies outside the vocabulary."""
    for name, i in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id)):
        if not (i in (1, 2) or ByteTokenizer.OFFSET + 256 <= i < tok.vocab_size):
            raise ValueError(f"model.{name}_token_id={i} cannot be written: the byte-level tokenizer's bytes are ids "
                             f"{ByteTokenizer.OFFSET}..{ByteTokenizer.OFFSET + 255} and the vocabulary ends at "
                             f"{tok.vocab_size - 1}; use 1 or 2, or an id from {ByteTokenizer.OFFSET + 256}, or give "
                             "the checkpoint its tokenizer.json")
    return dict(tok.special_names)


def byte_tokenizer_json(tok: ByteTokenizer) -> str:
    """`tok` as a Hugging Face `tokenizer.json` (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    specials = special_names(tok)
    unused_low = [i for i in range(1, ByteTokenizer.OFFSET) if i not in specials]  # 1, 2 when BOS / EOS are elsewhere
    vocab = {name: i for i, name in specials.items()}
    vocab.update({ch: b + ByteTokenizer.OFFSET for b, ch in byte_alphabet().items()})
    vocab.update({f"<extra_{i}>": i for i in unused_low})
    vocab.update({f"<extra_{i}>": i for i in range(ByteTokenizer.OFFSET + 256, tok.vocab_size) if i not in specials})
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    # the unused low ids decode to nothing on the server, so they are special here (skipped in decoding)
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False)
                           for name in [*specials.values(), *(f"<extra_{i}>" for i in unused_low)]])
    if tok.add_bos_token:  # a stand-in for a tokenizer that adds none (Qwen's) has no post-processor
        bos = specials[tok.bos_token_id]
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1",
                                                          special_tokens=[(bos, tok.bos_token_id)])
    return hf.to_str(pretty=True)


def tokenizer_config(tok, max_len: int) -> dict:
    """What `transformers` reads beside `tokenizer.json`."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "unk_token": "<unk>", "pad_token": None, "add_bos_token": tok.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": max_len,
            "chat_template": tok.chat_template}


def export_tokenizer(cfg: ModelConfig, out: str | Path) -> list[Path]:
    """Write the tokenizer of `cfg` into `out` (created); returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(cfg)
    if isinstance(tok, ByteTokenizer):
        (out / "tokenizer.json").write_text(byte_tokenizer_json(tok))
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, cfg.max_seq_len), indent=2))
        written = [out / "tokenizer.json", out / "tokenizer_config.json"]
        if not cfg.checkpoint:  # a preset's shape (a checkpoint without tokenizer.json: its own, copied below)
            try:
                (out / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
                written.append(out / "config.json")
            except ValueError:  # a variation no Hugging Face config says: the tokenizer is what the files are for
                pass
        else:
            written += _copy(Path(cfg.checkpoint), out, ("config.json",))
        return written
    written = _copy(Path(cfg.checkpoint), out, FILES)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else None
    if config is not None and config.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5's name for a tokenizer.json tokenizer; 4.x (which vLLM's benchmark pins) knows it
        # as PreTrainedTokenizerFast, which 5 also reads as the same class
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2))
    if not tok.has_own_chat_template:  # the server's default template, so a client renders chats as it does
        config = config or {}
        config["chat_template"] = tok.chat_template
        path.write_text(json.dumps(config, indent=2))
        written = sorted(set(written) | {path})
    return written


def _copy(src: Path, out: Path, names) -> list[Path]:
    """The files `names` of `src` that exist, copied into `out` (unless they are already there)."""
    written = []
    for name in names:
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            shutil.copyfile(src / name, out / name)
        if (out / name).is_file():
            written.append(out / name)
    return written


def register(sub) -> None:
    from cent_serve.config import resolve_model

    p = sub.add_parser("tokenizer", help="the server's tokenizer as files a client can load")
    what = p.add_subparsers(dest="action", required=True)
    e = what.add_parser("export", help="write tokenizer.json, tokenizer_config.json and config.json for --model",
                        description="Write the tokenizer the server uses for --model into DIR, as Hugging Face "
                                    "files that the tokenizers and transformers packages load and that count "
                                    "tokens exactly as the server does (vLLM's bench: --tokenizer DIR; guidellm: "
                                    "--tokenizer kind=hf_auto,model=DIR).")
    e.add_argument("dir", help="directory to write into (created if missing)")
    e.add_argument("--model", default="tiny", help="preset name or Hugging Face checkpoint directory (default: tiny)")

    def run(args) -> int:
        cfg = resolve_model(args.model)
        for path in export_tokenizer(cfg, args.dir):
            print(path)
        if cfg.checkpoint and not (Path(cfg.checkpoint) / "tokenizer.json").is_file():
            print(f"note: {cfg.checkpoint} has no tokenizer.json: these files are the byte-level tokenizer the "
                  "server stands in with (one token a byte), not the model's own", file=sys.stderr)
        return 0

    e.set_defaults(func=run)
