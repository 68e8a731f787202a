"""Tokenizers: byte-level for random-weight presets, `tokenizer.json` for checkpoints.

Both behave as a Hugging Face fast tokenizer does, so a client that loads the same files counts
tokens exactly as the server does (`cent tokenizer export`, cent_serve/model/tokenizer_export.py):
special tokens written in text (`<s>`) are the special ids, and `encode(text)` adds the special
tokens the tokenizer adds (the byte tokenizer's BOS; a checkpoint's post-processor's). The chat
template both render with, and how a chat becomes ids, are `chat_template`'s.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.config.hf_files import (SPECIAL_TOKEN_KEYS, json_object, read_tokenizer_json, special_token_text,
                                        special_tokens)
from cent_serve.model.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTokenizer, check_chat_template, render_chat

log = logging.getLogger(__name__)
_WARNED_NO_TOKENIZER: set[str] = set()
"""Checkpoints whose missing tokenizer.json was warned about (once each, per process)."""


class Tokenizer(ChatTokenizer, Protocol):
    bos_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """The ids of `text`, with the special ids the tokenizer adds before it (`start_ids`) unless
        `add_bos` is false."""
        ...

    @property
    def start_ids(self) -> list[int]:
        """The special ids `encode` puts before a text's own (the BOS for most; none for Qwen's; not an
        eos appended after it), which a prompt of token ids built for a trace starts with."""
        ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens (`<s>`, `</s>`) left out unless `skip_special_tokens`
        is false (as transformers' `decode` takes it)."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token: its own text, `<s>`)."""
        ...

    def stand_in_ids(self) -> np.ndarray:
        """The ids timing-only runs draw from (uniformly): each decodes alone to visible text."""
        ...

    def partial_tail(self, ids: list[int]) -> bool:
        """Whether `ids` end inside a character that more tokens may complete (a stream holds its
        last U+FFFD back then, and only then)."""
        ...

    def text_cuts_after(self, token_id: int) -> bool:
        """Whether the text of ids ending with this token is final whatever tokens follow it (given
        it ends no character half made): where `IncrementalText` may keep a text."""
        ...

    decode_context: int
    """Tokens before a cut that `IncrementalText` decodes again with the ones after it
    (DECODE_WINDOW; 0 when the text of ids after a cut does not depend on the ones before it)."""


DECODE_WINDOW = 8
"""Tokens before the cut that `IncrementalText` decodes again with the new ones: their context
(a SentencePiece decoder drops the space of a text's first token, byte tokens join into one
character, cleanup rules look at neighbours) is then what a whole decode gives them."""


class IncrementalText:
    """A sequence's text as its tokens grow, equal to `tokenizer.decode(ids)` at every length
    without decoding every token again each time (that was O(n^2): a server decoding 8 streams of
    4,000 tokens spent 70% of its engine thread there). Keeps the text of `ids[:done]`, a cut that
    ends no character half made (no U+FFFD last) and that later tokens cannot change
    (`text_cuts_after`), and decodes `ids[done - tok.decode_context:]`, taking
    what follows the window's own text (vLLM's incremental detokenization does the same with a
    prefix and a read offset). Where the window's text is not a prefix of the longer decode, or is
    empty, or the ids are fewer than those seen, it decodes the whole sequence. The ids must grow
    by appending (one sequence's output)."""

    __slots__ = ("done", "text")

    def __init__(self) -> None:
        self.done, self.text = 0, ""

    def decode(self, tok: "Tokenizer", ids: list[int], skip_special_tokens: bool = True) -> str:
        """`tok.decode(ids, skip_special_tokens)`; a sequence decodes with one `skip_special_tokens` always."""
        skip = skip_special_tokens
        done = self.done if self.done <= len(ids) else 0
        if done and not tok.decode_context:  # the text after the cut is its own (the byte tokenizer's)
            text = self.text + tok.decode(ids[done:], skip)
        else:
            start = max(0, done - tok.decode_context)
            head = tok.decode(ids[start:done], skip) if done > start else ""
            tail = tok.decode(ids[start:], skip)
            # a window of tokens without text (special ones, left out) would let a decoder strip the
            # space of the first token after it, which the whole text keeps: decode all then
            fits = done and (head or start == 0) and tail.startswith(head)
            text = self.text + tail[len(head):] if fits else tok.decode(ids, skip) if done else tail
        if not text.endswith("\ufffd") and (not ids or tok.text_cuts_after(ids[-1])):
            self.done, self.text = len(ids), text
        return text


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (what a `ByteLevel` pre-tokenizer maps
    bytes to, and its decoder maps back)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_FROM_ALPHABET = {ch: b for b, ch in byte_alphabet().items()}
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


TAIL_SCAN = 64
"""How far back `partial_tail` looks for the bytes of a last character: special tokens between them
(an eos under ignore_eos, which a decode leaves out) are passed over, up to this many ids in all."""


def ends_inside_a_character(data: bytes) -> bool:
    """Whether UTF-8 `data` ends with a lead byte still waiting for its continuation bytes."""
    for back, b in enumerate(reversed(data[-4:]), start=1):
        if 0x80 <= b < 0xC0:
            continue  # a continuation byte: its lead is further back
        need = 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
        return need > back
    return False


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 <unk>, byte b is id b + 3, `<s>` and `</s>` the model's BOS and
    EOS ids (1 and 2 for Llama 2 presets; `</s>` alone when BOS is EOS).

    Ids past the byte range (a preset with a larger vocabulary, 32000 for Llama 2) are pieces no
    text encodes to: each decodes to `<extra_ID>`. The stand-in sampler never draws them
    (`stand_in_ids`). The special tokens' text in a prompt encodes to their ids, as in a Hugging
    Face tokenizer.
    """

    OFFSET = 3
    decode_context = 0
    """The text after a cut (`text_cuts_after`: every token; `IncrementalText` keeps a text only
    where it ends no character half made) is the decode of the ids after it: a byte run is decoded
    as Python's "replace" decodes, whose state starts afresh after a whole character, and a special
    token decodes alone."""
    SPECIALS = ("<unk>", "<s>", "</s>")
    """The special tokens' names: `<unk>` is id 0; the model config's `bos_token_id` and
    `eos_token_id` say which ids `<s>` and `</s>` are (1 and 2 for Llama 2 presets, 128000 and
    128001 for Llama 3's)."""
    VISIBLE_BYTES = (0x21, 0x7E)
    """The stand-in sampler's bytes: printable ASCII without space, so every generated token is
    one visible character (`!` .. `~`)."""

    def __init__(self, vocab_size: int = 259, bos_token_id: int = 1, eos_token_id: int = 2,
                 add_bos_token: bool = True) -> None:
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.add_bos_token = add_bos_token  # `encode` puts the BOS first: as the tokenizer it stands in for
        # does (`stand_in_adds_bos`; Qwen's puts none), transformers' name for it
        self.eos_token_id = eos_token_id
        # one name per id: a model whose BOS is its EOS (Qwen 2.5) has `</s>` for both, no `<s>`
        self.bos_token = self.SPECIALS[1] if bos_token_id != eos_token_id else self.SPECIALS[2]
        self.eos_token = self.SPECIALS[2]
        self.chat_template = DEFAULT_CHAT_TEMPLATE
        self.special_ids = {"<unk>": 0, self.bos_token: bos_token_id, self.eos_token: eos_token_id}
        self.special_names = {i: name for name, i in self.special_ids.items()}
        self._names = self.special_names
        self._special_re = re.compile("|".join(map(re.escape, self.special_ids)))

    def _is_byte(self, i: int) -> bool:
        return self.OFFSET <= i < self.OFFSET + 256 and i not in self._names

    stands_in_for: str | None = None
    """The checkpoint directory whose missing tokenizer.json this one replaces, if any."""

    def warn_stand_in(self) -> None:
        """Log, once a checkpoint, that this tokenizer stands in for its missing tokenizer.json
        (`cent serve` at start; anything else when it first encodes text)."""
        if self.stands_in_for and self.stands_in_for not in _WARNED_NO_TOKENIZER:
            _WARNED_NO_TOKENIZER.add(self.stands_in_for)
            log.warning("%s has no tokenizer.json: text is counted one token a byte (often ~4x the model's own "
                        "tokenizer, and prefill times with it); copy the checkpoint's tokenizer.json beside its "
                        "config.json, or send token ids", self.stands_in_for)

    @property
    def start_ids(self) -> list[int]:
        return [self.bos_token_id] if self.add_bos_token else []

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        self.warn_stand_in()
        ids = [self.bos_token_id] if add_bos and self.add_bos_token else []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += [b + self.OFFSET for b in text[pos:m.start()].encode("utf-8")]
            ids.append(self.special_ids[m.group()])
            pos = m.end()
        ids += [b + self.OFFSET for b in text[pos:].encode("utf-8")]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out, run = [], bytearray()
        for i in ids:
            if self._is_byte(i):
                run.append(i - self.OFFSET)
                continue
            if i in self._names:
                name = None if skip_special_tokens else self._names[i]
            else:
                name = f"<extra_{i}>" if self.OFFSET + 256 <= i < self.vocab_size else None
            if name is not None:
                out += [run.decode("utf-8", errors="replace"), name]
                run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._names:
            return self._names[token_id].encode()
        if self._is_byte(token_id):
            return bytes([token_id - self.OFFSET])
        if self.OFFSET + 256 <= token_id < self.vocab_size:
            return f"<extra_{token_id}>".encode()
        return b""

    def text_cuts_after(self, token_id: int) -> bool:
        return True  # a run of bytes decodes as Python's "replace" does: a character at a time

    def partial_tail(self, ids: list[int]) -> bool:
        tail = bytearray()  # the trailing byte tokens: an extra id ends any character, a special is left
        for i in reversed(ids[-TAIL_SCAN:]):  # out of the text (`decode` joins the bytes around it)
            if i in self._names:
                continue
            if not self._is_byte(i) or len(tail) == 4:
                break
            tail.insert(0, i - self.OFFSET)
        return ends_inside_a_character(bytes(tail))

    def stand_in_ids(self) -> np.ndarray:
        """The ids the stand-in sampler draws from: `VISIBLE_BYTES` (every byte id, if the
        vocabulary is too small to hold them)."""
        lo, hi = (b + self.OFFSET for b in self.VISIBLE_BYTES)
        if self.vocab_size <= hi:
            return np.array([i for i in range(self.OFFSET, self.vocab_size) if self._is_byte(i)])
        return np.arange(lo, hi + 1)


START_PROBE = "x"
"""A text whose encoding with and without the special tokens shows what a tokenizer puts first."""


def leading_special_ids(with_special: list[int], without: list[int]) -> list[int] | None:
    """What an encoding with the special tokens has before the text's own ids (the BOS for most;
    none for Qwen's; not an EOS a tokenizer adds after the text); None when the text's own ids are
    not found in it (or there are none), so the caller falls back."""
    n = len(without)
    for k in range(len(with_special) - n + 1) if n else ():
        if with_special[k:k + n] == without:
            return list(with_special[:k])
    return None


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library, with the checkpoint's
    `tokenizer_config.json` (its chat template) when there is one."""

    decode_context = DECODE_WINDOW  # a decoder may strip a text's first space, join byte tokens, clean up

    def __init__(self, path: str | Path, bos_token_id: int, eos_token_id: int) -> None:
        path = Path(path)
        self._tok, text = read_tokenizer_json(path)  # its decoder's kind is read from the text below
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.bos_token = self._tok.id_to_token(bos_token_id) or ""
        self.eos_token = self._tok.id_to_token(eos_token_id) or ""
        self._specials = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        decoder = json.dumps(json.loads(text).get("decoder"), ensure_ascii=False)
        self._byte_level = '"ByteLevel"' in decoder  # token strings are GPT-2 byte characters
        self._metaspace = '"Metaspace"' in decoder or "\u2581" in decoder  # SentencePiece's word marker
        self._byte_pieces: frozenset[int] = frozenset(  # byte fallback's <0xNN>, decoded a run at a time
            i for piece, i in self._tok.get_vocab(with_added_tokens=False).items() if _BYTE_FALLBACK.fullmatch(piece)
        ) if '"ByteFallback"' in decoder else frozenset()
        self.chat_template = DEFAULT_CHAT_TEMPLATE
        self.has_own_chat_template = False
        self._add_bos: bool | None = None
        self._start_ids: list[int] | None = None  # `start_ids`, encoded once asked for
        config = path.parent / "tokenizer_config.json"
        settings = json_object(config, "chat_template", "or download it again") if config.is_file() else {}
        named = special_tokens(path.parent, settings)
        for key in SPECIAL_TOKEN_KEYS:  # a chat template's `bos_token` and `eos_token`, as transformers passes
            # the tokenizer's (Llama 3.1 Instruct's eos_token <|eot_id|>: config.json's first eos id is
            # <|end_of_text|>); the model's eos ids still say when a generation stops
            special = special_token_text(named, key)
            if special is not None:
                setattr(self, key, special)
        if settings:
            if isinstance(settings.get("add_bos_token"), bool):  # transformers' Llama tokenizers obey it
                self._add_bos = settings["add_bos_token"]
            template = settings.get("chat_template")
            if isinstance(template, list):  # several named templates: the default one
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
            if isinstance(template, str):
                self.chat_template, self.has_own_chat_template = template, True
        jinja = path.parent / "chat_template.jinja"  # transformers' newer home for it
        if not self.has_own_chat_template and jinja.is_file():
            self.chat_template, self.has_own_chat_template = jinja.read_text(), True
        check_chat_template(self.chat_template, path.parent)
        self._stand_in: np.ndarray | None = None

    @property
    def start_ids(self) -> list[int]:
        if self._start_ids is None:
            start = leading_special_ids(self.encode(START_PROBE), self.encode(START_PROBE, add_bos=False))
            self._start_ids = start if start is not None else self.encode("")[:1]
        return list(self._start_ids)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """`add_bos` (the API's `add_special_tokens`): the special tokens the tokenizer itself adds, as
        transformers and vLLM add them: its post-processor's (Llama's BOS; none for Qwen's), then
        `add_bos_token` of tokenizer_config.json where it says otherwise."""
        if not add_bos:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        ids = list(self._tok.encode(text, add_special_tokens=True).ids)
        if self._add_bos and self.bos_token and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        elif self._add_bos is False and ids[:1] == [self.bos_token_id] \
                and self._tok.encode(text, add_special_tokens=False).ids[:1] != [self.bos_token_id]:
            del ids[0]  # the post-processor's, not the text's own <s>
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def text_cuts_after(self, token_id: int) -> bool:
        """Byte fallback decodes a run of byte tokens as one: all its bytes are U+FFFD when any is not
        UTF-8, so the text before a byte token may still change; and the run goes on across special
        tokens, which are left out before the decoder sees the pieces."""
        return token_id not in self._byte_pieces and token_id not in self._specials

    def token_bytes(self, token_id: int) -> bytes:
        """The token's own bytes: a byte-fallback token `<0xNN>` is byte NN, a byte-level token's
        characters map back to their bytes, so a fragment of a character is its real bytes."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._specials:
            return piece.encode()
        if m := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        if self._byte_level and all(ch in _FROM_ALPHABET for ch in piece):
            return bytes(_FROM_ALPHABET[ch] for ch in piece)
        if self._metaspace:
            return piece.replace("\u2581", " ").encode()
        return self._tok.decode([token_id], skip_special_tokens=False).encode()

    def partial_tail(self, ids: list[int]) -> bool:
        # the last four tokens that are not special: a decode leaves the specials out and joins the
        # byte tokens around them
        tail = [self.token_bytes(i) for i in reversed(ids[-TAIL_SCAN:]) if i not in self._specials][:4]
        return ends_inside_a_character(b"".join(reversed(tail)))

    def stand_in_ids(self) -> np.ndarray:
        """Every id that decodes alone to text with a visible character and no U+FFFD (a
        fragment of a character), special and added tokens excluded."""
        if self._stand_in is None:
            added = set(self._tok.get_added_tokens_decoder())
            pieces = self._tok.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=True)
            self._stand_in = np.array([i for i, p in enumerate(pieces) if p.strip() and "\ufffd" not in p
                                       and i not in added], dtype=np.int64)
        return self._stand_in


def encode_chat(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                continue_final_message: bool = False, variables: dict | None = None,
                add_special_tokens: bool = False, keep: int | None = None, side: str | None = None,
                tools: list[dict] | None = None, documents: list[dict] | None = None) -> list[int]:
    """The token ids of a chat: the rendered template (`render_chat`, given `tools` and `documents`), with no
    special tokens added
    (the template writes the BOS), or with `add_special_tokens` (vLLM's option) those the tokenizer
    adds to any text (`encode`); at most `keep` of them as `encode_truncated` keeps them (None: all), from
    `side` (vLLM's `truncation_side`; None: unset)."""
    text = render_chat(tok, messages, add_generation_prompt, continue_final_message, variables, tools, documents)
    return encode_truncated(tok, text, add_special_tokens, keep, side)


def cut_ids(ids: list[int], keep: int | None, side: str | None = None) -> list[int]:
    """Token ids cut to `keep` (None: all): their last ones (`side` "left" or None, the tokenizer's side
    for generation), or their first with `side` "right" (vLLM's `truncation_side`)."""
    if keep is None or len(ids) <= keep:
        return ids
    return ids[:keep] if side == "right" else ids[-keep:]


def encode_truncated(tok: Tokenizer, text: str, add_bos: bool = True, keep: int | None = None,
                     side: str | None = None) -> list[int]:
    """`tok.encode(text, add_bos)` cut to `keep` tokens (None: all) as vLLM's `truncate_prompt_tokens`
    cuts a text prompt: it encodes with transformers' truncation=True, max_length=keep and its generate
    tokenizers' truncation_side "left" (vllm/renderers/params.py `TokenizeParams.get_encode_kwargs`,
    vllm/tokenizers/registry.py), so the special tokens the tokenizer adds (a BOS) stay and count towards
    `keep`, and the text's own tokens keep their last ones. Without `add_bos` nothing is added: the
    last `keep` ids. With more tokens added than `keep` (keep 1, a BOS and an eos) the tokenizers
    library does not truncate, and vLLM's cut of the ids that follows (`TokenizeParams._token_truncation`)
    keeps their last `keep` (the eos). A `side` given (vLLM's request field `truncation_side`, "left" or
    "right", in current vLLM's completions and chat, vllm-project/vllm pull request 43260) is another
    path there: `TokenizeParams.get_encode_kwargs` encodes the whole text (no library truncation, as the
    tokenizer's side may not be the one asked for) and `_token_truncation` keeps the last `keep` ids
    ("left": a BOS the text is longer than goes) or the first ("right": an eos after the text goes)."""
    ids = tok.encode(text, add_bos=add_bos)
    if keep is None or len(ids) <= keep:
        return ids
    if side is not None:  # an explicit side: the whole encoding cut as token ids are
        return cut_ids(ids, keep, side)
    plain = tok.encode(text, add_bos=False) if add_bos else ids
    lead = next((p for p in range(len(ids) - len(plain) + 1) if ids[p:p + len(plain)] == plain), None)
    room = keep - (len(ids) - len(plain))
    if lead is None or room < 0:  # no telling what was added, or more than `keep`: the last `keep` ids
        return ids[-keep:]
    return ids[:lead] + plain[len(plain) - room:] + ids[lead + len(plain):]


FAMILIES_WITHOUT_BOS = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
"""Families (`model.model_type`) whose own tokenizer puts no BOS first: Qwen 2, 2.5, 3 and their MoE
share transformers' Qwen2Tokenizer, whose bos_token is None and whose tokenizer.json's post-processor
adds nothing. Llama's (LlamaTokenizer's add_bos_token defaults to true; Llama 3's post-processor puts
<|begin_of_text|> first), Mistral's and Mixtral's put one."""


def stand_in_adds_bos(ckpt: Path, model_type: str) -> bool:
    """Whether the byte-level stand-in for `ckpt`'s missing tokenizer.json puts a BOS first, as its own
    tokenizer would, so a prompt is no token longer than the user's tokenizer makes it: its
    tokenizer_config.json's add_bos_token when that says (a null bos_token: none), else the family's
    (`FAMILIES_WITHOUT_BOS`)."""
    config = ckpt / "tokenizer_config.json"
    settings = json_object(config, "add_bos_token", "or download it again") if config.is_file() else {}
    if isinstance(settings.get("add_bos_token"), bool):
        return settings["add_bos_token"]
    if special_token_text(special_tokens(ckpt, settings), "bos_token") == "":
        return False
    return model_type not in FAMILIES_WITHOUT_BOS


def load_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The checkpoint's tokenizer.json when present, else the byte-level tokenizer (standing in for
    a checkpoint's missing one, with its BOS or none as the checkpoint's would (`stand_in_adds_bos`),
    it warns when it first encodes text: `ByteTokenizer.encode`)."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint) / "tokenizer.json"
        if path.is_file():
            return HFTokenizer(path, cfg.bos_token_id, cfg.eos_token_id)
        tok = ByteTokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id,
                            add_bos_token=stand_in_adds_bos(Path(cfg.checkpoint), cfg.model_type))
        tok.stands_in_for = cfg.checkpoint
        return tok
    return ByteTokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
