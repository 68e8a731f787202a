"""Synthetic prompts: exact token counts for the byte tokenizer, seeded."""
from __future__ import annotations

import pytest

from cent_serve.bench import synthetic_prompt
from cent_serve.bench.prompts import PRINTABLE_FIRST, PRINTABLE_LAST
from cent_serve.model.tokenizer import ByteTokenizer


@pytest.mark.parametrize("num_tokens", [1, 2, 17, 1000])
@pytest.mark.parametrize("add_bos", [True, False])
def test_exact_length_and_text_encodes_to_the_ids(num_tokens, add_bos):
    tok = ByteTokenizer()
    prompt = synthetic_prompt(num_tokens, seed=3, add_bos=add_bos)
    assert len(prompt.token_ids) == num_tokens
    assert tok.encode(prompt.text, add_bos=add_bos) == prompt.token_ids
    assert tok.decode(prompt.token_ids) == prompt.text
    body = prompt.token_ids[1:] if add_bos else prompt.token_ids
    assert all(PRINTABLE_FIRST + 3 <= i <= PRINTABLE_LAST + 3 for i in body)
    assert prompt.text.isprintable()


def test_seeded():
    a = synthetic_prompt(64, seed=(0, 5))
    assert a == synthetic_prompt(64, seed=(0, 5))
    assert a.token_ids != synthetic_prompt(64, seed=(0, 6)).token_ids
    assert a.token_ids != synthetic_prompt(64, seed=0).token_ids
    # All 95 printable bytes are drawn, not a narrower range.
    assert len(set(synthetic_prompt(5000, seed=1, add_bos=False).text)) == 95


def test_bos_only_and_refusals():
    assert synthetic_prompt(1, seed=0) == synthetic_prompt(1, seed=9)
    assert synthetic_prompt(1, seed=0).token_ids == [1] and synthetic_prompt(1, seed=0).text == ""
    assert synthetic_prompt(0, seed=0, add_bos=False).token_ids == []
    with pytest.raises(ValueError, match="num_tokens=0"):
        synthetic_prompt(0, seed=0)


@pytest.mark.parametrize("start", [[1], [128000], []], ids=["llama2", "llama3", "qwen"])
def test_a_replay_s_prompt_starts_with_what_the_tokenizer_puts_first(start):
    """In process as over --url (`POST /tokenize`): the tokenizer's own start, none for Qwen's
    (a replay gave every model the BOS id, Qwen's its eos stand-in)."""
    from types import SimpleNamespace

    from cent_serve.bench import Request
    from cent_serve.bench.runner import _prompt_ids

    engine = SimpleNamespace(tokenizer=SimpleNamespace(start_ids=start, bos_token_id=7))
    for n in (1, 9):
        ids = _prompt_ids(Request("r", 0.0, n, 2), engine, 0, 0)
        assert len(ids) == n and ids[:len(start)] == start and 7 not in ids
        body = ids[len(start):]  # the seeded text's bytes after the start (Qwen: every id)
        assert len(body) == n - len(start) and all(PRINTABLE_FIRST + 3 <= i <= PRINTABLE_LAST + 3 for i in body)


def test_what_a_tokenizer_puts_first_leaves_an_eos_after_the_text_out():
    """`start_ids` is the prefix an encoding with the special tokens has before the text's own ids:
    `encode("")` took a tokenizer's appended eos for a start (review)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from cent_serve.model.tokenizer import HFTokenizer, leading_special_ids

    assert leading_special_ids([1, 50, 51, 2], [50, 51]) == [1]
    assert leading_special_ids([50, 2], [50]) == [] and leading_special_ids([9], [9]) == []
    assert leading_special_ids([1, 9], [5]) is None and leading_special_ids([1], []) is None  # the caller falls back
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "x": 3, "y": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        tok.save(str(Path(d) / "tokenizer.json"))
        hf = HFTokenizer(Path(d) / "tokenizer.json", 1, 2)
        assert hf.encode("") == [1, 2] and hf.start_ids == [1]
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
        tok.save(str(Path(d) / "tokenizer.json"))
        assert HFTokenizer(Path(d) / "tokenizer.json", 1, 2).start_ids == []


def test_a_start_of_several_ids_is_kept_whole_and_one_id_gives_the_old_prompt():
    from cent_serve.bench.prompts import prompt_ids

    assert prompt_ids(9, (0, 3), [1]) == synthetic_prompt(9, (0, 3), bos_token_id=1).token_ids
    # no start (Qwen's tokenizer): all 9 are the seeded bytes (`[:0] == []` held whatever came first)
    assert prompt_ids(9, (0, 3), []) == synthetic_prompt(9, (0, 3), add_bos=False).token_ids
    two = prompt_ids(9, (0, 3), [128000, 128006])
    assert two[:2] == [128000, 128006] and len(two) == 9 and prompt_ids(1, 0, [5, 6]) == [5]
