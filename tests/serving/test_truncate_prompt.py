"""vLLM's truncate_prompt_tokens: each prompt keeps its last k tokens (a text prompt its BOS too) before anything else sees it (the
context check, the scheduler, the usage, prompt_token_ids); -1 is the context less the output tokens asked
for, and 0, below -1 or past that is a 400 naming it (vllm/renderers/params.py `TokenizeParams`)."""
from __future__ import annotations

import httpx
import openai
import pytest

from api.server import Server
from tests.serving.utils import server_cfg

CONTEXT = server_cfg().model.max_seq_len
PROMPT = [1] + [10 + i % 50 for i in range(30)]


@pytest.fixture(scope="module")
def off():
    with Server(server_cfg(), "local") as s:
        yield s


def _complete(url: str, **body) -> dict:
    r = httpx.post(url + "/v1/completions", json=dict(dict(model="tiny", max_tokens=6, ignore_eos=True, temperature=0,
                                                           return_token_ids=True), **body), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_prompt_keeps_its_last_tokens(off):
    """Greedy timing-only draws depend on the prompt alone: the truncated request's are those of its
    last 5 tokens sent as the prompt, and its usage and prompt_token_ids count 5."""
    cut = _complete(off.url, prompt=PROMPT, truncate_prompt_tokens=5)
    alone = _complete(off.url, prompt=PROMPT[-5:])
    whole = _complete(off.url, prompt=PROMPT)
    c = cut["choices"][0]
    assert c["prompt_token_ids"] == PROMPT[-5:] and cut["usage"]["prompt_tokens"] == 5
    assert c["token_ids"] == alone["choices"][0]["token_ids"] != whole["choices"][0]["token_ids"]
    for k in (-1, len(PROMPT), CONTEXT - 6):  # the room max_tokens=6 leaves (or more than the prompt): whole
        got = _complete(off.url, prompt=PROMPT, truncate_prompt_tokens=k)
        assert got["usage"]["prompt_tokens"] == len(PROMPT) and got["choices"][0]["token_ids"] == \
            whole["choices"][0]["token_ids"]
    batch = _complete(off.url, prompt=[PROMPT, PROMPT[:3]], truncate_prompt_tokens=4)  # each prompt of a batch
    assert [c["prompt_token_ids"] for c in batch["choices"]] == [PROMPT[-4:], PROMPT[:3]]


def test_a_prompt_past_the_context_is_served_truncated(off):
    long = [1] + [10] * (CONTEXT + 5)
    assert _complete(off.url, prompt=long, truncate_prompt_tokens=8)["usage"]["prompt_tokens"] == 8
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt=long, max_tokens=2), timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"  # without it: refused


def test_minus_one_keeps_the_context_less_the_output_tokens_asked_as_vllm():
    """vLLM's -1 is `TokenizeParams.max_input_tokens`, max_model_len less the output tokens the request asks
    for (vllm/renderers/params.py; completions' max_tokens, 16 when absent or null, its field default; chat's
    max_completion_tokens, else max_tokens, else 0), and a k past it is refused. -1 kept the whole
    context, so a long prompt filled it and the request was refused for its max_tokens."""
    from api.checks import ApiError
    from api.protocol import ChatCompletionRequest, CompletionRequest

    def keep(cls, **body):
        return cls(model="tiny", **body).prompt_truncation(CONTEXT)

    assert keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=-1, max_tokens=6) == CONTEXT - 6
    assert keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=-1) == CONTEXT - 16
    # an explicit null is the field default too, since vLLM PR 45491 (completion/protocol.py
    # `normalize_null_max_tokens`); it counted 0, so -1 kept the whole context and the reply's 16 tokens had no room
    assert keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=-1, max_tokens=None) == CONTEXT - 16
    chat = dict(messages=[{"role": "user", "content": "hi"}], truncate_prompt_tokens=-1)
    assert keep(ChatCompletionRequest, **chat) == CONTEXT
    assert keep(ChatCompletionRequest, **chat, max_tokens=7) == CONTEXT - 7
    assert keep(ChatCompletionRequest, **chat, max_tokens=7, max_completion_tokens=9) == CONTEXT - 9
    assert keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=CONTEXT - 6, max_tokens=6) == CONTEXT - 6
    with pytest.raises(ApiError, match=rf"truncate_prompt_tokens={CONTEXT - 5} is invalid: use 1..{CONTEXT - 6} "):
        keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=CONTEXT - 5, max_tokens=6)
    # a limit that fills the context leaves no room to truncate to: the limit's own 400 says so later
    for k in (-1, 5):
        assert keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=k, max_tokens=CONTEXT) is None
    for k, limit in ((0, CONTEXT), (-2, CONTEXT + 5)):  # an invalid k there: no "use 1..0" (or 1..-5) range
        with pytest.raises(ApiError) as err:
            keep(CompletionRequest, prompt="hi", truncate_prompt_tokens=k, max_tokens=limit)
        assert err.value.param == "truncate_prompt_tokens" and "1.." not in str(err.value), err.value
        assert f"the {limit} output tokens asked for fill the model's context ({CONTEXT})" in str(err.value)


def test_a_prompt_past_the_context_with_minus_one_is_served_in_the_room_its_max_tokens_leave(off):
    long = [1] + [10] * (CONTEXT + 5)
    got = _complete(off.url, prompt=long, truncate_prompt_tokens=-1)  # max_tokens=6
    assert got["usage"]["prompt_tokens"] == CONTEXT - 6 and got["usage"]["completion_tokens"] == 6, got["usage"]
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt=PROMPT, max_tokens=6,
                                                          truncate_prompt_tokens=CONTEXT - 5), timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens", r.text


def test_chat_and_the_openai_client_truncate_too_and_get_400s_naming_it(off):
    client = openai.OpenAI(base_url=off.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hello there, a chat prompt of some length"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                       extra_body=dict(truncate_prompt_tokens=7))
    assert r.usage.prompt_tokens == 7
    for k in (0, -2, CONTEXT - 1, CONTEXT + 1):  # CONTEXT - 1: past the room max_tokens=2 leaves
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2,
                                      extra_body=dict(truncate_prompt_tokens=k))
        e = err.value.body
        assert e["param"] == "truncate_prompt_tokens" and e["message"].startswith(f"truncate_prompt_tokens={k} "), e


def test_a_text_prompt_keeps_its_bos_and_its_last_text_tokens(off):
    """vLLM encodes a text prompt with transformers' truncation (max_length=k, truncation_side left:
    vllm/renderers/params.py, vllm/tokenizers/registry.py): the BOS the tokenizer adds stays and counts
    towards k, the text keeps its last k - 1 tokens. Without add_special_tokens: the last k."""
    text = "the quick brown fox"
    plain = _complete(off.url, prompt=text)["choices"][0]["prompt_token_ids"]
    bos = plain[0]
    cut = _complete(off.url, prompt=text, truncate_prompt_tokens=5)
    assert cut["choices"][0]["prompt_token_ids"] == [bos] + plain[-4:] and cut["usage"]["prompt_tokens"] == 5
    bare = _complete(off.url, prompt=text, truncate_prompt_tokens=5, add_special_tokens=False)
    assert bare["choices"][0]["prompt_token_ids"] == plain[-5:]


def test_truncation_side_right_keeps_the_first_tokens_as_current_vllm(off):
    """Current vLLM's completions and chat take `truncation_side` (vllm-project/vllm pull request 43260,
    vllm/renderers/params.py `TokenizeParams.truncation_side`): "right" keeps the first k tokens (a text
    prompt's BOS and its first text tokens), "left" the last; given, a text prompt is encoded whole and cut as
    token ids are, so "left" drops its BOS where unset keeps it. It was ignored: "right" kept the last, and then
    "left" kept the BOS."""
    ids = _complete(off.url, prompt=PROMPT, truncate_prompt_tokens=5, truncation_side="right")
    assert ids["choices"][0]["prompt_token_ids"] == PROMPT[:5] and ids["usage"]["prompt_tokens"] == 5
    left = _complete(off.url, prompt=PROMPT, truncate_prompt_tokens=5, truncation_side="left")
    assert left["choices"][0]["prompt_token_ids"] == PROMPT[-5:]
    text = "the quick brown fox"
    plain = _complete(off.url, prompt=text)["choices"][0]["prompt_token_ids"]
    cut = _complete(off.url, prompt=text, truncate_prompt_tokens=5, truncation_side="right")
    assert cut["choices"][0]["prompt_token_ids"] == plain[:5]  # the BOS, then the text's first 4
    # "left" given is not unset: vLLM cuts the whole encoding's ids (get_encode_kwargs, _token_truncation),
    # so the BOS goes; unset, the tokenizer's truncation keeps it before the text's last 4
    given = _complete(off.url, prompt=text, truncate_prompt_tokens=5, truncation_side="left")
    assert given["choices"][0]["prompt_token_ids"] == plain[-5:] and plain[-5] != plain[0]
    unset = _complete(off.url, prompt=text, truncate_prompt_tokens=5)
    assert unset["choices"][0]["prompt_token_ids"] == plain[:1] + plain[-4:]
    whole = _complete(off.url, prompt=PROMPT, truncation_side="right")  # read only with truncate_prompt_tokens
    assert whole["choices"][0]["prompt_token_ids"] == PROMPT
    chat = dict(model="tiny", messages=[{"role": "user", "content": "hello there, a chat prompt"}], max_tokens=1,
                return_token_ids=True)
    whole = httpx.post(off.url + "/v1/chat/completions", json=chat, timeout=60).json()["prompt_token_ids"]
    first = httpx.post(off.url + "/v1/chat/completions", json=dict(chat, truncate_prompt_tokens=6,
                                                                     truncation_side="right"), timeout=60).json()
    assert first["prompt_token_ids"] == whole[:6], first
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", truncation_side="middle"),
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncation_side", r.text


def test_an_empty_string_in_a_prompt_list_is_a_lone_bos_as_vllm_encodes_it(off):
    """vLLM's completions refuse `prompt: ""` alone (vllm/entrypoints/openai/completion/protocol.py
    `validate_prompt_and_prompt_embeds`) but encode `[""]` like any text: a lone BOS where the tokenizer
    adds one, served; no token without it, refused by its engine ("The decoder prompt cannot be empty",
    vllm/v1/engine/input_processor.py). `[""]` was a 400 here."""
    bos = _complete(off.url, prompt="a")["choices"][0]["prompt_token_ids"][0]
    got = _complete(off.url, prompt=["", "a"])
    assert [c["prompt_token_ids"] for c in got["choices"]][0] == [bos] and got["usage"]["prompt_tokens"] == 3
    for sent in (dict(prompt=""), dict(prompt=[""], add_special_tokens=False)):
        r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", max_tokens=2, **sent), timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", (sent, r.text)


class _Tok:
    """A tokenizer that adds a BOS (1) and an eos (2) around one id per character."""

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [10 + ord(c) % 50 for c in text]
        return [1, *ids, 2] if add_bos else ids


def test_encode_truncated_keeps_every_added_token_as_the_tokenizers_library_does():
    from cent_serve.model.tokenizer import encode_truncated

    tok, text = _Tok(), "abcdef"
    body = tok.encode(text, add_bos=False)
    assert encode_truncated(tok, text, True, 5) == [1, *body[-3:], 2]
    assert encode_truncated(tok, text, True, 2) == [1, 2]  # no room for the text: the added tokens alone
    assert encode_truncated(tok, text, False, 4) == body[-4:]
    assert encode_truncated(tok, text, True, 100) == encode_truncated(tok, text, True, None) == tok.encode(text)
    # a truncation_side given: vLLM encodes the whole text and cuts the ids (no library truncation)
    assert encode_truncated(tok, text, True, 5, "right") == [1, *body[:4]]
    assert encode_truncated(tok, text, True, 5, "left") == [*body[-4:], 2]
    assert encode_truncated(tok, text, False, 4, "right") == body[:4]
    assert encode_truncated(tok, text, False, 4, "left") == body[-4:]


class _LibTok:
    """A tokenizers-library tokenizer of one id a character, whose post-processor adds `template`'s
    special tokens (<s> 1, </s> 2), behind our `Tokenizer.encode`."""

    def __init__(self, template: str):
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: 10 + i for i, c in enumerate("abcdefgh")}}
        self.lib = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        self.lib.pre_tokenizer = pre_tokenizers.Split("", "isolated")
        if template:
            self.lib.post_processor = processors.TemplateProcessing(single=template,
                                                                    special_tokens=[("<s>", 1), ("</s>", 2)])

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return self.lib.encode(text, add_special_tokens=add_bos).ids


@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("template", ["<s> $A </s>", "<s> $A", ""])
def test_encode_truncated_is_what_vllm_makes_of_the_tokenizers_librarys_truncation(template, side):
    """vLLM encodes with the tokenizers library's left truncation to k, then cuts the ids to their last k
    (vllm/renderers/params.py `TokenizeParams._token_truncation`, run after the encode). When k is below
    the number of tokens the post-processor adds (1 with a BOS and an eos) the library does not truncate
    at all, so the cut leaves the last k ids ([eos]); encode_truncated kept the BOS and the eos, two
    tokens for k = 1. With `truncation_side` given (current vLLM, "left" or "right") it does not truncate
    in the library at all (`get_encode_kwargs`: the tokenizer's side may not be the one asked for) and the
    cut keeps the last or the first k ids of the whole encoding: "left" drops the BOS, "right" the eos."""
    from cent_serve.model.tokenizer import encode_truncated

    tok, text = _LibTok(template), "abcdef"
    for add in (True, False):
        for k in range(1, 10):
            if side is None:  # the tokenizer's own side for generation, left
                tok.lib.enable_truncation(k, direction="left")
            got = tok.lib.encode(text, add_special_tokens=add).ids
            want = got[:k] if side == "right" else got[-k:]
            tok.lib.no_truncation()
            assert encode_truncated(tok, text, add, k, side) == want, (add, k)
