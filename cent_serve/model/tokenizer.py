"""Tokenizers: byte-level for random-weight presets, `tokenizer.json` for checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cent_serve.config import ModelConfig


class Tokenizer(Protocol):
    bos_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 <unk>, 1 <s>, 2 </s>, then byte b is id b + 3.

    Ids past the byte range (a preset with a larger vocabulary) decode to nothing.
    """

    OFFSET = 3

    def __init__(self, vocab_size: int = 259, bos_token_id: int = 1, eos_token_id: int = 2) -> None:
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [b + self.OFFSET for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        raw = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.OFFSET + 256)
        return raw.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library."""

    def __init__(self, path: str | Path, bos_token_id: int, eos_token_id: int) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if add_bos else list(ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The checkpoint's tokenizer.json when present, else the byte-level tokenizer."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint) / "tokenizer.json"
        if path.is_file():
            return HFTokenizer(path, cfg.bos_token_id, cfg.eos_token_id)
    return ByteTokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
