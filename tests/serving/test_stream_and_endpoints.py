"""What benchmark clients read: the stream's shape as vLLM's (one chunk per token, its text empty
while held back, the finish_reason on the last token's chunk, per-chunk usage), the endpoints
they call (/tokenize, /detokenize, /version, /ping, /v1/models/{id}, HEAD), and the schema."""
from __future__ import annotations

import json

import httpx
import pytest

from api.server import Server
from tests.serving.utils import server_cfg, templated_tiny_llama_cfg

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def off():
    with Server(server_cfg("off"), "local") as s:
        yield s


@pytest.fixture(scope="module")
def full():
    with Server(server_cfg("full"), "local") as s:
        yield s


def events(url: str, path: str, **body) -> list[dict]:
    with httpx.stream("POST", url + path, json=dict(model="tiny", stream=True, **body), timeout=60) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_timing_only_streams_one_visible_token_per_chunk_with_the_finish_on_the_last(off):
    chunks = events(off.url, "/v1/completions", prompt="hello", max_tokens=12, ignore_eos=True,
                    return_token_ids=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    choice_chunks = [c for c in chunks if c["choices"]]
    assert len(choice_chunks) == 12  # one per token: the finish_reason rides on the last
    for k, c in enumerate(choice_chunks, start=1):
        ch = c["choices"][0]
        assert len(ch["token_ids"]) == 1 and len(ch["text"]) == 1 and not ch["text"].isspace()
        assert ch["finish_reason"] == ("length" if k == 12 else None)
        assert c["usage"]["completion_tokens"] == k and c["usage"]["prompt_tokens"] == 6
    assert choice_chunks[0]["choices"][0]["prompt_token_ids"] == [1, 107, 104, 111, 111, 114]
    assert "ttft_s" in choice_chunks[-1]["choices"][0]["cent"]  # the timing rides on the last chunk too
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


def test_random_weights_stream_every_token_as_its_own_chunk_as_vllm_does(full):
    """Full numerics over random bytes: a token whose text is held back (an incomplete character)
    still goes out as its own chunk, with empty content (vLLM's stream), and its text with a later
    chunk; a client timing chunks (vLLM's bench) sees each token. The texts add up to the reply's."""
    held = 0
    for seed in range(4):
        chunks = events(full.url, "/v1/chat/completions", messages=CHAT, max_tokens=24, ignore_eos=True,
                        seed=seed, return_token_ids=True)
        deltas = [c["choices"][0] for c in chunks]
        assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
        body = deltas[1:]
        assert [len(d["token_ids"]) for d in body] == [1] * 24
        assert body[-1]["finish_reason"] == "length" and all(d["finish_reason"] is None for d in body[:-1])
        whole = httpx.post(full.url + "/v1/chat/completions", json=dict(
            model="tiny", messages=CHAT, max_tokens=24, ignore_eos=True, seed=seed), timeout=60).json()
        assert "".join(d["delta"].get("content", "") for d in body) == whole["choices"][0]["message"]["content"]
        held += sum(1 for d in body[:-1] if d["delta"]["content"] == "")
    assert held > 0  # some character was incomplete: the case this test is about did occur


def test_stop_reason_names_the_stop_string_or_id(off):
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=3, ignore_eos=True,
                                                          seed=1, return_token_ids=True)).json()
    first = r["choices"][0]["token_ids"][0]
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=3, ignore_eos=True,
                                                          seed=1, stop_token_ids=[first])).json()
    assert r["choices"][0]["stop_reason"] == first and r["choices"][0]["finish_reason"] == "stop"
    text = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=3,
                                                             ignore_eos=True, seed=1)).json()["choices"][0]["text"]
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=3, ignore_eos=True,
                                                          seed=1, stop=[text[1]])).json()
    assert r["choices"][0]["stop_reason"] == text[1] and r["choices"][0]["text"] == text[:text.index(text[1])]


def test_tokenize_and_detokenize_as_vllm(off):
    r = httpx.post(off.url + "/tokenize", json={"model": "tiny", "prompt": "hé <s>", "return_token_strs": True})
    assert r.json() == {"count": 6, "max_model_len": 8192, "tokens": [1, 107, 198, 172, 35, 1],
                        "token_strs": ["<s>", "h", "\ufffd", "\ufffd", " ", "<s>"]}
    r = httpx.post(off.url + "/tokenize", json={"prompt": "hi", "add_special_tokens": False}).json()
    assert r["tokens"] == [107, 108] and r["token_strs"] is None
    chat = httpx.post(off.url + "/tokenize", json={"model": "tiny", "messages": CHAT}).json()
    usage = httpx.post(off.url + "/v1/chat/completions", json=dict(model="tiny", messages=CHAT, max_tokens=1)).json()
    assert chat["count"] == usage["usage"]["prompt_tokens"] and chat["tokens"][0] == 1
    # special tokens kept, as vLLM's /detokenize keeps them: the text tokenizes back to the same ids
    assert httpx.post(off.url + "/detokenize", json={"model": "tiny", "tokens": [1, 107, 198, 172, 35, 1, 2]}).json() == {
        "prompt": "<s>hé <s></s>"}
    back = httpx.post(off.url + "/tokenize", json={"prompt": "<s>hé <s></s>", "add_special_tokens": False}).json()
    assert back["tokens"] == [1, 107, 198, 172, 35, 1, 2]
    bad = httpx.post(off.url + "/detokenize", json={"tokens": [259]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(off.url + "/tokenize", json={"model": "other", "prompt": "x"}).status_code == 404
    assert httpx.post(off.url + "/tokenize", json={}).status_code == 400


def test_detokenize_takes_lax_integer_ids_as_vllm(off):
    """vLLM 0.33's DetokenizeRequest.tokens is a list of ints, validated lax (serve/tokenize/protocol.py):
    "104" and 105.0 are ids; a fraction or a word is a 400 naming the element."""
    def detok(tokens) -> httpx.Response:
        return httpx.post(off.url + "/detokenize", json={"model": "tiny", "tokens": tokens})

    exact = detok([104, 105, 1])
    assert exact.status_code == 200 and detok(["104", 105.0, True]).json() == exact.json(), exact.text
    for tokens in ([104, 105.5], [104, "x"]):
        r = detok(tokens)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "tokens.1"), r.text


def test_version_ping_model_card_and_head(off):
    assert httpx.get(off.url + "/version").json()["version"]
    for method in ("GET", "POST", "HEAD"):
        assert httpx.request(method, off.url + "/ping").status_code == 200
    card = httpx.get(off.url + "/v1/models/tiny").json()
    assert card["id"] == "tiny" and card["root"] == "tiny" and "cent tokenizer export" in card["cent"]["tokenizer"]
    assert card["cent"]["tokenizer_kind"] == "byte"
    assert httpx.get(off.url + "/v1/models/nope").status_code == 404
    for path in ("/v1/models", "/v1/models/tiny", "/health", "/metrics", "/version", "/v1/cent/status"):
        head = httpx.head(off.url + path)
        assert head.status_code == 200 and head.content == b"", path


def test_new_endpoints_need_the_key_but_ping():
    with Server(server_cfg("off", api_key="k"), "local") as s:
        for method, path in (("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/version"),
                             ("GET", "/v1/models/tiny"), ("HEAD", "/metrics")):
            assert httpx.request(method, s.url + path, json={}).status_code == 401, path
        assert httpx.get(s.url + "/ping").status_code == 200
        ok = httpx.post(s.url + "/tokenize", json={"prompt": "a"}, headers={"Authorization": "Bearer k"})
        assert ok.json()["count"] == 2


def test_openapi_declares_the_real_error_codes(off):
    spec = httpx.get(off.url + "/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert {"200", "400", "401", "404", "413", "429"} <= set(paths[path]["post"]["responses"]), path
    # a schema error is answered 400 (as OpenAI and vLLM answer it), so no route documents FastAPI's 422
    assert not [p for p, ops in paths.items() for op in ops.values() if "422" in op.get("responses", {})]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert {"/tokenize", "/detokenize", "/version", "/ping", "/v1/models/{model}"} <= set(paths)
    assert "head" in paths["/metrics"] and "head" in paths["/v1/models"]
    error = paths["/v1/completions"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/ErrorResponse")


def test_chat_s_top_logprobs_on_completions_and_empty_messages_are_400(off):
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=1, top_logprobs=2))
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = httpx.post(off.url + "/tokenize", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


BEGUN = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hello there, "}]


def _tokens_text(url: str, **body) -> str:
    r = httpx.post(url + "/tokenize", json=dict(messages=BEGUN, return_token_strs=True, **body))
    assert r.status_code == 200, r.text
    return "".join(r.json()["token_strs"])


def test_continue_final_message_ends_the_prompt_inside_the_last_message(off):
    """vLLM's (and transformers') continue_final_message: the prompt stops where the assistant's
    begun reply stops, without its end of turn; the chat runs on that prompt."""
    closed = _tokens_text(off.url, add_generation_prompt=False)
    open_ = _tokens_text(off.url, add_generation_prompt=False, continue_final_message=True)
    assert closed.endswith("Hello there, \n") and open_ == closed[:-1]  # the template's end of turn is gone
    r = httpx.post(off.url + "/v1/chat/completions", json=dict(model="tiny", messages=BEGUN, max_tokens=2,
                                                              add_generation_prompt=False, continue_final_message=True))
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(open_) - 2  # <s> is one token, 3 chars
    for body in (dict(continue_final_message=True), dict(continue_final_message=True, add_generation_prompt=True)):
        r = httpx.post(off.url + "/v1/chat/completions", json=dict(model="tiny", messages=BEGUN, **body))
        assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message", r.text
        assert '"add_generation_prompt": false' in r.json()["error"]["message"]
    empty = [BEGUN[0], {"role": "assistant", "content": "  "}]
    r = httpx.post(off.url + "/v1/chat/completions", json=dict(model="tiny", messages=empty, add_generation_prompt=False,
                                                              continue_final_message=True))
    assert r.status_code == 400 and "needs text in the last message" in r.json()["error"]["message"]


def test_chat_echo_puts_the_last_message_of_the_reply_s_role_first(off):
    """vLLM's chat echo: the reply starts with the last message's text when that message has the
    reply's role (the assistant's, or without the generation prompt the last message's own)."""
    def reply(**body):
        r = httpx.post(off.url + "/v1/chat/completions", json=dict(model="tiny", max_tokens=3, seed=7, **body))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]

    plain = reply(messages=BEGUN)["content"]
    echoed = reply(messages=BEGUN, echo=True)
    assert (echoed["role"], echoed["content"]) == ("assistant", "Hello there, " + plain), echoed
    assert reply(messages=CHAT, echo=True)["content"] == reply(messages=CHAT)["content"]  # a user's last: no echo
    as_user = reply(messages=CHAT, echo=True, add_generation_prompt=False)
    assert as_user["role"] == "user" and as_user["content"].startswith("hi")  # vLLM's role rule
    chunks = events(off.url, "/v1/chat/completions", messages=BEGUN, max_tokens=3, n=2, echo=True,
                    add_generation_prompt=False, continue_final_message=True)
    opening = [c["choices"][0] for c in chunks[:4]]
    assert [(o["index"], o["delta"]) for o in opening] == [
        (0, {"role": "assistant", "content": ""}), (1, {"role": "assistant", "content": ""}),
        (0, {"content": "Hello there, "}), (1, {"content": "Hello there, "})]


@pytest.mark.parametrize("logprobs", [None, 2])
def test_a_streamed_completion_echo_starts_with_the_prompt_as_the_response_does(off, logprobs):
    """vLLM's streamed echo: each choice's first chunk starts with the prompt's text (and its
    tokens' logprobs); the chunks add up to the non-streamed choice, logprobs and offsets too.
    Timing-only (one visible character per token), so text offsets count alike both ways."""
    req = dict(model="tiny", prompt=["hello", "CENT"], n=2, max_tokens=6, seed=11, ignore_eos=True,
               echo=True, logprobs=logprobs)
    whole = httpx.post(off.url + "/v1/completions", json=req, timeout=60).json()["choices"]
    streamed = {}
    for c in events(off.url, "/v1/completions", **{k: v for k, v in req.items() if k != "model"}):
        ch = c["choices"][0]
        s = streamed.setdefault(ch["index"], {"text": "", "tokens": [], "token_logprobs": [], "top_logprobs": [],
                                              "text_offset": []})
        if not s["text"]:
            assert ch["text"].startswith(["hello", "CENT"][ch["index"] // 2]), ch
        s["text"] += ch["text"]
        for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            s[k] += (ch["logprobs"] or {}).get(k, [])
    assert len(whole) == len(streamed) == 4
    for w in whole:
        s = streamed[w["index"]]
        assert s["text"] == w["text"] and w["text"].startswith(["hello", "CENT"][w["index"] // 2])
        if logprobs is not None:
            assert {k: s[k] for k in w["logprobs"]} == w["logprobs"]
            assert w["logprobs"]["tokens"][0] == "<s>"  # the prompt's tokens first (BOS with no logprob)


def test_chat_s_role_chunk_comes_with_the_first_token_on_the_paced_clock():
    """vLLM sends the role chunk with the first output, and `vllm bench serve`'s chat client takes
    its TTFT from the first chunk with choices: sent before the prefill, the role chunk made that
    client report ~0 TTFT and fold the prefill into its first inter-token gap."""
    import time
    with Server(server_cfg("off", clock="paced", pace_factor=100.0), "local") as s:
        body = dict(model="tiny", stream=True, messages=[{"role": "user", "content": "x" * 40}],
                    max_completion_tokens=2, ignore_eos=True)
        t0, seen = time.monotonic(), []  # from the send: the headers' own delay must not eat the margin
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen.append((time.monotonic() - t0, json.loads(line[6:])))
        (t_role, role), (t_first, first) = seen[0], seen[1]
        assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert first["choices"][0]["delta"]["content"]
        ttft_wall = seen[-1][1]["choices"][0]["cent"]["ttft_s"] * 100  # the last chunk carries the timing
        assert ttft_wall > 0.5  # the prefill takes a measurable wall time at this pace
        # the paced clock never releases the first token early, so the role chunk beside it comes after
        # half the paced TTFT (sent at the start, it came ~0 s in); no upper bound a busy machine can miss
        assert t_role > 0.5 * ttft_wall and t_first >= t_role


def test_a_held_back_token_s_streamed_text_offsets_are_the_response_s(off):
    """A token held back by a possible stop string goes out with empty text, its text later: the
    streamed text_offset must still count it, as the non-streamed response does (it counted only
    the text sent, so the next token repeated the held one's offset)."""
    base = dict(model="tiny", prompt="hello", max_tokens=8, seed=3, ignore_eos=True, logprobs=1)
    text = httpx.post(off.url + "/v1/completions", json=base, timeout=60).json()["choices"][0]["text"]
    req = dict(base, stop=[text[2] + "\x01"])  # the third character starts it, so it is held back a token
    whole = httpx.post(off.url + "/v1/completions", json=req, timeout=60).json()["choices"][0]
    chunks = [c["choices"][0] for c in events(off.url, "/v1/completions", **{k: v for k, v in req.items()
                                                                               if k != "model"})]
    assert any(c["text"] == "" and c["finish_reason"] is None for c in chunks)  # the held-back case occurred
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert sum((c["logprobs"]["text_offset"] for c in chunks if c["logprobs"]), []) == whole["logprobs"]["text_offset"]


def test_completions_add_special_tokens_false_sends_the_text_without_its_bos_as_vllm(off):
    def prompt_ids(**extra):
        sent = dict(dict(model="tiny", prompt="hi", max_tokens=1, return_token_ids=True), **extra)
        r = httpx.post(off.url + "/v1/completions", json=sent, timeout=60).json()
        return r["choices"][0]["prompt_token_ids"], r["usage"]["prompt_tokens"]
    assert prompt_ids() == ([1, 107, 108], 3)
    assert prompt_ids(add_special_tokens=False) == ([107, 108], 2)  # as /tokenize's add_special_tokens
    assert prompt_ids(prompt=[1, 107], add_special_tokens=False)[0] == [1, 107]  # ids are sent as given


THINKING = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% if enable_thinking is defined and not enable_thinking %}"
            "<think></think>\n{% endif %}{% else %}{{ eos_token }}{% endif %}")
"""A chat template with Qwen 3's switch: `enable_thinking` false opens the reply with an empty think; without
the generation prompt it closes with the eos."""


def test_chat_template_kwargs_reach_the_template_as_vllm_passes_them(tmp_path, caplog):
    """vLLM's `chat_template_kwargs` (Qwen 3's `{"enable_thinking": false}`) are the template's variables
    (they were ignored: the same prompt either way); chat's `add_special_tokens` puts a BOS first; a
    request's own template, in its field or its kwargs, is a 400 naming it."""

    cfg = templated_tiny_llama_cfg(tmp_path / "m", THINKING)
    model = cfg.model
    with Server(cfg, "local") as s:
        def tokens(**body) -> list[int]:
            r = httpx.post(s.url + "/tokenize", json=dict(messages=CHAT, **body))
            assert r.status_code == 200, r.text
            return r.json()["tokens"]

        def chat(**body) -> httpx.Response:
            return httpx.post(s.url + "/v1/chat/completions", json=dict(model=model.name, messages=CHAT,
                                                                        max_tokens=1, **body), timeout=60)

        plain, thinking = tokens(), tokens(chat_template_kwargs={"enable_thinking": True})
        quiet = tokens(chat_template_kwargs={"enable_thinking": False})
        assert plain == thinking and len(quiet) > len(plain) and quiet[:len(plain)] == plain
        assert chat(chat_template_kwargs={"enable_thinking": False}).json()["usage"]["prompt_tokens"] == len(quiet)
        assert chat().json()["usage"]["prompt_tokens"] == len(plain)
        with_bos = chat(add_special_tokens=True, return_token_ids=True).json()
        assert with_bos["prompt_token_ids"] == [model.bos_token_id, *plain]
        assert "has no chat template" not in caplog.text  # it has its own
        for body, param in ((dict(chat_template="{{ messages }}"), "chat_template"),
                            (dict(chat_template_kwargs={"chat_template": "x"}), "chat_template_kwargs.chat_template")):
            r = chat(**body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_chat_template_kwargs_of_the_server_s_own_variables_are_taken_as_vllm_takes_them(tmp_path):
    """vLLM merges a request's `chat_template_kwargs` under its own fields (vllm/entrypoints/openai/
    chat_completion/protocol.py `build_chat_params`, vllm/renderers/params.py `merge_kwargs`), so the request's
    `add_generation_prompt` and `continue_final_message` win over the kwargs'; transformers' apply_chat_template
    lets kwargs replace the tokenizer's `bos_token` and `eos_token`; a kwargs' `tokenize` makes it encode the text
    with no special tokens added (vllm/renderers/hf.py `safe_apply_chat_template`). All were a 400. Still a 400
    as in vLLM: `messages` (the template is given two) and a template (`chat_template`, even "auto")."""
    cfg = templated_tiny_llama_cfg(tmp_path / "m", THINKING)
    with Server(cfg, "local") as s:
        def tokens(**body) -> list[int]:
            r = httpx.post(s.url + "/tokenize", json=dict(messages=CHAT, **body), timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["tokens"]

        def text(**body) -> str:
            ids = tokens(**body)
            return httpx.post(s.url + "/detokenize", json={"tokens": ids}, timeout=60).json()["prompt"]

        def chat(**body) -> httpx.Response:
            return httpx.post(s.url + "/v1/chat/completions", json=dict(model=cfg.model.name, messages=CHAT,
                                                                        max_tokens=1, **body), timeout=60)

        plain, closed = text(), text(add_generation_prompt=False)
        assert plain == "<s><|user|>\nhi\n<|assistant|>\n" and closed == "<s><|user|>\nhi\n</s>"
        assert text(chat_template_kwargs={"add_generation_prompt": False, "continue_final_message": True}) == plain
        assert text(add_generation_prompt=False, chat_template_kwargs={"add_generation_prompt": True}) == closed
        assert text(add_generation_prompt=False,
                    chat_template_kwargs={"bos_token": "[", "eos_token": "]"}) == "[<|user|>\nhi\n]"
        quiet = chat(chat_template_kwargs={"bos_token": ""}, return_token_ids=True).json()
        assert quiet["prompt_token_ids"] == tokens()[1:]  # "" for the BOS: the template writes none
        assert tokens(add_special_tokens=True) == [cfg.model.bos_token_id, *tokens()]  # the template's and one more
        assert tokens(add_special_tokens=True, chat_template_kwargs={"tokenize": True}) == tokens()
        assert tokens(add_special_tokens=True, chat_template_kwargs={"tokenize": False}) == [cfg.model.bos_token_id,
                                                                                          *tokens()]  # as unset
        with_bos = chat(add_special_tokens=True, chat_template_kwargs={"tokenize": True}, return_token_ids=True)
        assert with_bos.json()["prompt_token_ids"] == tokens()
        for kwargs in ({"messages": []}, {"messages": CHAT}, {"chat_template": "auto"}, {"chat_template": ""}):
            for r in (chat(chat_template_kwargs=kwargs),
                      httpx.post(s.url + "/tokenize", json=dict(messages=CHAT, chat_template_kwargs=kwargs))):
                name = next(iter(kwargs))
                assert r.status_code == 400 and r.json()["error"]["param"] == f"chat_template_kwargs.{name}", r.text
                assert f"chat_template_kwargs.{name}" in r.json()["error"]["message"]
        assert text(chat_template_kwargs={"messages": None, "chat_template": None}) == plain  # null: unset


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_stream_options_given_empty_asks_for_no_usage_chunk_as_in_vllm(off, path):
    """vLLM 0.33's StreamOptions defaults include_usage to false (vllm/entrypoints/generate/base/protocol.py;
    older vLLMs defaulted it to true, which this server followed): `{}` gets no usage chunk, and neither
    does null or no stream_options; `{"include_usage": true}` does. continuous_usage_stats alone is off
    too, as vLLM's should_include_usage needs include_usage for it."""
    def usage_chunks(**extra) -> int:
        sent = dict(prompt="hi") if path == "/v1/completions" else dict(messages=[{"role": "user", "content": "hi"}])
        chunks = events(off.url, path, max_tokens=2, **sent, **extra)
        return sum("usage" in c for c in chunks)

    assert usage_chunks(stream_options={"include_usage": True}) == 1
    assert usage_chunks(stream_options={}) == 0 and usage_chunks() == 0
    assert usage_chunks(stream_options={"include_usage": None}) == usage_chunks(stream_options={"include_usage": False}) == 0
    assert usage_chunks(stream_options={"continuous_usage_stats": True}) == 0


def test_a_checkpoint_s_generation_config_sets_the_sampling_a_request_leaves_out(tmp_path, caplog):
    """vLLM's default `--generation-config auto`: generation_config.json's temperature, top_p, top_k,
    repetition_penalty and min_p are a request's defaults (a request's own values win); what this server
    cannot apply (max_new_tokens) is named at start. Full numerics, so the sampling shows in the tokens: a
    checkpoint that says temperature 0 is greedy for a request that does not say."""
    import logging
    import shutil
    from pathlib import Path

    from cent_serve.config import CentConfig, ParallelConfig
    from cent_serve.model import model_config_from_hf
    from cent_serve.model.sampling import checkpoint_sampling_defaults

    ckpt = tmp_path / "m"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "hf_tiny_llama", ckpt)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps(dict(gen, temperature=0.0, top_p=0.8, top_k=0,
                                                                 repetition_penalty=1.05, min_p=1.0,
                                                                 max_new_tokens=5)))
    assert checkpoint_sampling_defaults(str(ckpt)) == (dict(temperature=0.0, top_p=0.8, top_k=-1,
                                                            repetition_penalty=1.05, min_p=1.0),
                                                       ["max_new_tokens=5 (not supported here)"])
    odd = tmp_path / "odd"  # JSON's other types: a float top_k failed every round that sampled with it
    odd.mkdir()
    (odd / "generation_config.json").write_text(json.dumps(dict(top_k=20.0, temperature=True, top_p="0.8")))
    assert checkpoint_sampling_defaults(str(odd)) == (dict(top_k=20), ["temperature=True (not a number)",
                                                                       "top_p='0.8' (not a number)"])
    model = model_config_from_hf(ckpt)
    cfg = CentConfig(model=model, parallel=ParallelConfig(1, 1, 1), numerics="full")
    cfg.server.port = 0
    caplog.set_level(logging.INFO, logger="cent.server")
    with Server(cfg, "local") as s:
        def ids(**body) -> list[int]:
            r = httpx.post(s.url + "/v1/completions", json=dict(model=model.name, prompt="Hello", max_tokens=8,
                                                                 ignore_eos=True, return_token_ids=True, **body),
                           timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["token_ids"]

        greedy = ids(temperature=0)
        assert ids() == ids(seed=1) == ids(seed=2) == greedy  # the checkpoint's temperature 0
        # the checkpoint's min_p 1 keeps the most likely token alone: a seeded draw is the greedy one
        assert ids(temperature=1.0, seed=3) == greedy
        assert len({tuple(ids(temperature=1.0, seed=k, min_p=0)) for k in range(4)}) > 1  # the request's own win
    assert ("generation_config.json: temperature=0.0, top_p=0.8, top_k=-1, repetition_penalty=1.05, min_p=1.0"
            in caplog.text)
    assert "max_new_tokens=5 (not supported here): not applied" in caplog.text
    assert "has no chat template" in caplog.text  # the fixture has none: chat falls back to the plain default


def test_health_calls_a_round_stalled_only_past_the_round_timeout_the_user_raised():
    """A user whose rounds take minutes raises server.round_timeout_s; /health said degraded once a round
    had run 120 s whatever the timeout, so a liveness probe could restart the server in a round the user
    expects. Now a round is stalled past the timeout (and STALLED_ROUND_S): the round start is faked while
    the engine thread is held in a call, which leaves it alone."""
    import asyncio
    import threading
    import time

    import api.routes as routes
    from tests.serving.utils import HANG_GUARD_S

    with Server(server_cfg("off", round_timeout_s=600.0), "local") as s:
        entered, release = threading.Event(), threading.Event()

        def hold(_engine) -> None:
            entered.set()
            release.wait(HANG_GUARD_S)

        holder = threading.Thread(target=lambda: asyncio.run(s.loop.call(hold)))
        holder.start()
        try:
            assert entered.wait(HANG_GUARD_S)
            for running_s, code in ((routes.STALLED_ROUND_S + 1, 200), (500.0, 200), (601.0, 503)):
                s.loop.round_started = time.monotonic() - running_s
                health = httpx.get(s.url + "/health", timeout=60)
                assert health.status_code == code, (running_s, health.text)
            assert "past server.round_timeout_s=600:" in health.json()["reason"], health.text
        finally:
            s.loop.round_started = None
            release.set()
            holder.join(HANG_GUARD_S)
    assert routes.stalled_round_s(10.0) == routes.STALLED_ROUND_S  # a short timeout keeps the floor

def test_status_and_metrics_answer_while_the_engine_thread_is_held(monkeypatch):
    """A device that stops mid-round held /metrics and /v1/cent/status until the round's timeout (5
    minutes; a Prometheus scrape gives up after 10 s): past SNAPSHOT_WAIT_S they serve the last
    snapshot, saying its age (503 when there is none yet); /health says a long round is degraded."""
    import threading
    import time

    import api.routes as routes

    monkeypatch.setattr(routes, "SNAPSHOT_WAIT_S", 0.2)
    with Server(server_cfg("off"), "local") as s:
        eng, release = s.loop.engine, threading.Event()
        real, reads = eng.stats_now, []  # what a snapshot reads on the engine thread

        def held(**kw) -> tuple:  # the engine thread, kept as a stopped device keeps it
            reads.append(kw)
            release.wait(60)
            return real(**kw)

        monkeypatch.setattr(eng, "stats_now", held)
        first = httpx.get(s.url + "/metrics", timeout=60)
        assert first.status_code == 503 and first.json()["error"]["cent"]["code"] == "engine_busy", first.text
        release.set()
        deadline = time.monotonic() + 60
        while httpx.get(s.url + "/v1/cent/status", timeout=60).status_code != 200:
            assert time.monotonic() < deadline
        release.clear()
        time.sleep(0.3)  # the reading ages
        stale = httpx.get(s.url + "/v1/cent/status", timeout=60)
        assert stale.status_code == 200 and stale.json()["snapshot_age_s"] > 0, stale.text
        scrape = httpx.get(s.url + "/metrics", timeout=60)
        age = [line for line in scrape.text.splitlines() if line.startswith("cent:snapshot_age_seconds{")]
        assert scrape.status_code == 200 and len(age) == 1 and float(age[0].split()[-1]) > 0, age
        assert httpx.get(s.url + "/health", timeout=60).status_code == 200
        stalled_s = routes.stalled_round_s(s.cfg.server.round_timeout_s)
        s.loop.round_started = time.monotonic() - stalled_s - 1  # a round that has run past it
        health = httpx.get(s.url + "/health", timeout=60)
        assert health.status_code == 503 and "a round has run" in health.json()["reason"], health.text
        s.loop.round_started = None
        release.set()
        # a read of the API's: slow devices give their last figures, it does not wait a round's timeout for them
        assert reads and all(kw == {"scrape": True} for kw in reads), reads
        deadline = time.monotonic() + 60
        while (fresh := httpx.get(s.url + "/v1/cent/status", timeout=60).json()).get("snapshot_age_s") != 0.0:
            assert time.monotonic() < deadline, fresh  # a fresh reading says 0


def test_metrics_and_status_say_how_old_the_devices_figures_are():
    """A read while Ray devices are slow to answer serves their last figures (`RayExecutor.stats_and_terms`):
    `snapshot_age_s` (cent:snapshot_age_seconds) is their age, not 0, so stale device figures are labelled."""
    import types

    import api.routes as routes

    figures = [{"device_id": 0, "busy_s": {}}]
    slow = types.SimpleNamespace(figures_age_s=12.5)
    engine = types.SimpleNamespace(stats_now=lambda scrape: (figures, [], None), executors=[None, slow])
    loop = types.SimpleNamespace(status=lambda: {"clock_s": 1.0})
    st, devices, _ = routes._read_snapshot(loop, engine)
    assert st["snapshot_age_s"] == 12.5 and devices == figures
    slow.figures_age_s = 0.0
    assert routes._read_snapshot(loop, engine)[0]["snapshot_age_s"] == 0.0
    engine.executors = [object()]  # an executor that never serves older figures (local, GPU)
    assert routes._read_snapshot(loop, engine)[0]["snapshot_age_s"] == 0.0
