"""A checkpoint's JSON files as transformers reads them: any of its files of fields (`json_object`), and
the special tokens its tokenizer files name (tokenizer_config.json, special_tokens_map.json, tokenizer.json).
Read by the config.json reader (`hf_config`: a model's ids its config.json leaves out) and by the tokenizers
(`cent_serve.model.tokenizer`); nothing of cent's config is needed to read them."""
from __future__ import annotations

import json
from pathlib import Path


def json_object(file: Path, field: str, alternative: str) -> dict:
    """A checkpoint's JSON file of fields: ValueError naming the file, what is wrong and the fix
    (fix the file, `alternative`)."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): fix the "
                         f"file, {alternative}") from None
    except UnicodeDecodeError as exc:  # cut inside a character, or not text at all
        raise ValueError(f"{file}: not UTF-8 text (byte {exc.start}): fix the file, {alternative}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object of fields (\"{field}\": ..., ...), not a "
                         f"{type(data).__name__}: fix the file, {alternative}")
    return data


def read_tokenizer_json(path: Path):
    """(the `tokenizers` library's Tokenizer, the file's text) of a tokenizer.json: a file it cannot read is a
    ValueError naming the file and the fix."""
    from tokenizers import Tokenizer as _Tok

    raw = path.read_bytes()  # read once: the library parses the text, callers read more of it
    try:
        text = raw.decode()
        return _Tok.from_str(text), text
    except Exception as exc:  # the library's parse errors are bare Exceptions ("EOF while parsing ...")
        raise ValueError(f"{path}: not a tokenizer the tokenizers library reads ({str(exc).splitlines()[0]}): "
                         "damaged or cut short (a download that did not finish?); download it again") from None


def tokenizer_special_id(ckpt: Path, key: str) -> int | None:
    """The id of a checkpoint's tokenizer's special token `key` (`bos_token`, `eos_token`): its
    tokenizer_config.json's text of it looked up in its tokenizer.json (vocabulary and added tokens);
    None when either file, the token or its id is missing. For config.json without the model's ids."""
    config, vocab = ckpt / "tokenizer_config.json", ckpt / "tokenizer.json"
    if not vocab.is_file():
        return None
    settings = json_object(config, key, "or download it again") if config.is_file() else {}
    text = special_token_text(special_tokens(ckpt, settings), key)
    return read_tokenizer_json(vocab)[0].token_to_id(text) if text else None


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token")


def special_tokens(ckpt: Path, settings: dict) -> dict:
    """The `bos_token` and `eos_token` of a checkpoint as transformers reads them: tokenizer_config.json's
    (`settings`), with special_tokens_map.json's, an older checkpoint's home for them, taking precedence
    (as `from_pretrained` merges the two)."""
    found = {key: settings[key] for key in SPECIAL_TOKEN_KEYS if key in settings}
    mapping = ckpt / "special_tokens_map.json"
    if mapping.is_file():
        extra = json_object(mapping, "eos_token", "or download it again")
        found.update({key: extra[key] for key in SPECIAL_TOKEN_KEYS if key in extra})
    return found


def special_token_text(settings: dict, key: str) -> str | None:
    """A special token (`bos_token`, `eos_token`) of a tokenizer_config.json's `settings`: its text, given
    as a string or as transformers' {"content": ...}; "" when the file sets it null (none, as Qwen 2.5's
    bos_token), None when the file does not say."""
    if key not in settings:
        return None
    value = settings[key]
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else ""
