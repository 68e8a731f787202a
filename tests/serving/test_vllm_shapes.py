"""The response shapes clients of vLLM's OpenAI server read, as vLLM 0.33 sends them (read in its
wheel: vllm/entrypoints/serve/engine/protocol.py, vllm/entrypoints/openai/chat_completion/protocol.py
and serving.py, vllm/entrypoints/openai/completion/serving.py, vllm/v1/engine/output_processor.py):
the error `code` is the HTTP status, usage and chat messages carry vLLM's default keys, and the
request fields vLLM acts on are honoured or refused, not ignored."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from api.generate import failure
from api.server import Server
from tests.serving.utils import body, server_cfg

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": True}
CONTEXT = server_cfg().model.max_seq_len


@pytest.fixture(scope="module")
def server():
    with Server(server_cfg(), "local") as s:
        yield s


def _post(server, path: str, sent: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=sent, timeout=60)


def _events(r: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("path, sent, status, reason", [
    ("/v1/completions", body(model="other"), 404, "model_not_found"),
    ("/v1/completions", body(max_tokens=CONTEXT), 400, "context_length_exceeded"),
    ("/v1/completions", body(n=0), 400, None),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "x" * CONTEXT}]), 400,
     "context_length_exceeded"),
])
def test_error_code_is_the_http_status_and_the_reason_stays(server, path, sent, status, reason):
    r = _post(server, path, sent)
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["cent"]) == (status, status, {"code": reason}), err
    assert set(err) == {"message", "type", "param", "code", "cent"}, err


def test_a_streams_error_event_carries_the_status_as_its_code():
    fault, gone = failure("the emulated devices of replica 0 failed", None).body(), failure("none", 9.5).body()
    assert (fault["error"]["code"], fault["error"]["cent"]["code"]) == (500, "device_fault")
    assert (gone["error"]["code"], gone["error"]["cent"]["code"]) == (503, "no_replica")


def test_the_openai_client_reads_the_integer_code(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="hi", max_tokens=CONTEXT)
    assert caught.value.code == "400" and caught.value.body["cent"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="other", prompt="hi", max_tokens=2)
    assert caught.value.code == "404" and caught.value.param == "model"


USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
def test_usage_carries_vllms_null_details_when_not_streamed(server, path, sent):
    """No prefix cache here, so no cached tokens to count: null, as vLLM without
    --enable-prompt-tokens-details (and without a reasoning parser) sends both details."""
    usage = _post(server, path, sent).json()["usage"]
    assert set(usage) == USAGE_KEYS | {"prompt_tokens_details", "completion_tokens_details"}, usage
    assert usage["prompt_tokens_details"] is None and usage["completion_tokens_details"] is None
    streamed = _events(_post(server, path, dict(sent, stream=True, stream_options={"include_usage": True})))
    assert set(streamed[-1]["usage"]) == USAGE_KEYS, streamed[-1]  # vLLM's usage chunk leaves the nulls out


def test_chat_message_has_vllms_default_keys(server):
    message = _post(server, "/v1/chat/completions", CHAT).json()["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    # vLLM 0.33 drops an empty tool_calls list from the message (its ChatMessage serializer)
    assert rest == dict.fromkeys(("refusal", "annotations", "audio", "function_call", "reasoning")), message


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
def test_priority_is_an_int64_taken_as_vllm_takes_it_without_priority_scheduling(server, path, sent):
    assert _post(server, path, dict(sent, priority=-5)).status_code == 200
    for bad in ("high", 2 ** 63, 1.5):
        r = _post(server, path, dict(sent, priority=bad))
        assert (r.status_code, r.json()["error"]["param"]) == (400, "priority"), (bad, r.text)


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
def test_skip_special_tokens_false_is_taken(server, path, sent):
    """Honoured (tests/serving/test_skip_special_tokens.py); the stand-in sampler here makes no special
    token, so the text is the default's. A non-boolean is refused naming it."""
    sent = dict(sent, seed=3, temperature=1.0)
    choices = [_post(server, path, dict(sent, skip_special_tokens=v)).json()["choices"][0] for v in (False, True, None)]
    texts = [c["text"] if "text" in c else c["message"]["content"] for c in choices]
    assert texts[0] == texts[1] == texts[2], texts
    r = _post(server, path, dict(sent, skip_special_tokens="no"))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "skip_special_tokens"), r.text


def _tokens_per_chunk(events: list[dict]) -> list[int]:
    return [len(c["token_ids"]) for e in events for c in e.get("choices", []) if "token_ids" in c]


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
@pytest.mark.parametrize("max_tokens, interval, chunks", [(7, 3, [1, 3, 3]), (6, 3, [1, 3, 2]), (4, 1, [1, 1, 1, 1]),
                                                          (4, 9, [1, 3])])
def test_stream_interval_batches_tokens_as_vllm(server, path, sent, max_tokens, interval, chunks):
    """vLLM's rule: the first output goes out at once, then one chunk per `stream_interval` tokens,
    and the rest with the finish."""
    sent = dict(sent, max_tokens=max_tokens, stream=True, stream_interval=interval, return_token_ids=True)
    events = _events(_post(server, path, sent))
    assert _tokens_per_chunk(events) == chunks, events
    whole = _post(server, path, dict(sent, stream=False, seed=1)).json()["choices"][0]
    again = _events(_post(server, path, dict(sent, seed=1)))
    text = "".join(c.get("text", c.get("delta", {}).get("content", "")) or "" for e in again for c in e["choices"])
    assert text == whole.get("text", (whole.get("message") or {}).get("content"))


@pytest.mark.parametrize("bad", [0, -1, "2.5", 1.5])
def test_stream_interval_out_of_range_is_refused(server, bad):
    r = _post(server, "/v1/completions", body(stream=True, stream_interval=bad))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "stream_interval"), r.text


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
def test_whole_responses_carry_vllms_null_service_tier_and_fingerprint(server, path, sent):
    """vLLM 0.33 (completion/protocol.py, chat_completion/protocol.py) sends both, null without a
    fingerprint (--fingerprint-mode none); its stream chunks then carry neither."""
    whole = _post(server, path, sent).json()
    assert whole["service_tier"] is None and whole["system_fingerprint"] is None, whole
    assert list(whole)[list(whole).index("choices") + 1:][:3] == ["service_tier", "system_fingerprint", "usage"]
    for options in ({"include_usage": True}, {"include_usage": False}):
        events = _events(_post(server, path, dict(sent, stream=True, stream_options=options)))
        assert events and not any({"service_tier", "system_fingerprint"} & set(e) for e in events), events


LAX_INTS = [("max_tokens", "2", 2.0), ("n", "2", 2.0), ("seed", " 7 ", 7.0), ("priority", "5", True),
            ("min_tokens", "+1", 1.0), ("top_k", "3", 3.0), ("stream_interval", "2", 2.0), ("prompt_logprobs", "1", True)]


@pytest.mark.parametrize("path, sent", [("/v1/completions", body()), ("/v1/chat/completions", CHAT)])
@pytest.mark.parametrize("name, text, number", LAX_INTS)
def test_int_fields_take_what_vllms_lax_pydantic_takes(server, path, sent, name, text, number):
    """vLLM 0.33's request models validate in pydantic's lax mode: a numeric string, a float without a
    fraction and a boolean are integers; a fraction, an exponent or an empty string are refused, and
    here with the one-line 400 naming the field."""
    sent = dict(sent, max_tokens=3, stream=name == "stream_interval")
    for value in (text, number):
        r = _post(server, path, dict(sent, **{name: value}))
        assert r.status_code == 200, (name, value, r.text)
    for value in ("2.5", 2.5, "1e3", ""):
        r = _post(server, path, dict(sent, **{name: value}))
        err = r.json()["error"]
        assert (r.status_code, err["param"]) == (400, name), (name, value, r.text)
        assert "\n" not in err["message"], err


def test_completions_logprobs_is_a_lax_int_too(server):
    """Completions' `logprobs` is an integer in vLLM 0.33 (completion/protocol.py `logprobs: int | None`),
    so "2" and 2.0 are 2 alternatives there; here they were refused as "not a valid boolean" (the union
    with chat's boolean). true stays refused and false off (tests/serving/test_logprobs.py)."""
    for value in ("2", 2.0, " 2 "):
        r = _post(server, "/v1/completions", body(max_tokens=2, logprobs=value))
        assert r.status_code == 200, (value, r.text)
        tops = r.json()["choices"][0]["logprobs"]["top_logprobs"]  # the 2 likeliest and the sampled token
        assert len(tops) == 2 and all(len(t) in (2, 3) for t in tops), r.text
    for value in ("2.5", 2.5, "1e3", "", "x"):
        r = _post(server, "/v1/completions", body(max_tokens=2, logprobs=value))
        err = r.json()["error"]
        assert (r.status_code, err["param"]) == (400, "logprobs"), (value, r.text)
        assert "valid integer" in err["message"] and "boolean" not in err["message"], err


def test_token_id_prompts_are_lax_ints_too(server):
    """vLLM 0.33's completions prompt is `list[int] | list[list[int]] | str | list[str]`, validated lax:
    [1.0, 2.0] and ["104", 105] are token ids, ["104", "105"] stays two text prompts (a string list
    matches exactly), a fraction or a word among ids is refused naming its element."""
    def ids(prompt) -> list:
        r = _post(server, "/v1/completions", body(prompt=prompt, max_tokens=1, return_token_ids=True))
        assert r.status_code == 200, (prompt, r.text)
        return [c["prompt_token_ids"] for c in r.json()["choices"]]

    assert ids([104.0, 105]) == ids(["104", 105.0]) == ids([104, 105]) and len(ids([104, 105])) == 1
    assert ids([[104.0, "105"], [106]]) == ids([[104, 105], [106]])
    assert len(ids(["104", "105"])) == 2  # two text prompts
    for prompt, param in (([104, 105.5], "prompt.1"), ([104, "105", "x"], "prompt.2"), ([[104], [105, "1e3"]], "prompt.1.1")):
        r = _post(server, "/v1/completions", body(prompt=prompt))
        assert (r.status_code, r.json()["error"]["param"]) == (400, param), (prompt, r.text)


def test_lax_ints_mean_the_number(server):
    """The string is read as its number, not ignored: "2" tokens are two, and the stream batches by "2"."""
    r = _post(server, "/v1/completions", body(max_tokens="2", ignore_eos=True, stop_token_ids=["1", 2.0]))
    assert r.json()["usage"]["completion_tokens"] == 2, r.text
    sent = body(max_tokens=5, ignore_eos=True, stream=True, stream_interval="2", return_token_ids=True)
    assert _tokens_per_chunk(_events(_post(server, "/v1/completions", sent))) == [1, 2, 2]


@pytest.mark.parametrize("name, value", [("temperature", "0.5"), ("top_p", "1"), ("ignore_eos", "true"),
                                         ("stream", 1), ("echo", "false")])
def test_floats_and_bools_stay_strict(server, name, value):
    r = _post(server, "/v1/completions", body(**{name: value}))
    assert (r.status_code, r.json()["error"]["param"]) == (400, name), r.text


@pytest.mark.parametrize("path, sent, details", [("/v1/completions", body(), False),
                                                 ("/v1/chat/completions", CHAT, True)])
def test_continuous_usage_carries_chats_null_completion_tokens_details(server, path, sent, details):
    """vLLM 0.33's chat serving sets `completion_tokens_details` (null without a reasoning parser) on
    every chunk's continuous usage, the role chunk's too; its completion serving sets the counts alone.
    The last usage chunk leaves the null out in both (serialized without nulls)."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = _events(_post(server, path, dict(sent, stream=True, stream_options=options)))
    counted = [e["usage"] for e in events if e["choices"]]
    assert counted and all(u.get("completion_tokens_details", "absent") is (None if details else "absent")
                           for u in counted), counted
    assert set(events[-1]["usage"]) == USAGE_KEYS, events[-1]


@pytest.mark.parametrize("header", ["7", "-3", "high"])
def test_vllms_priority_header_is_taken_as_the_body_priority_is(server, header):
    """vLLM 0.33 reads X-Vllm-Priority over the body's priority, ignoring one that is not an integer
    (vllm/entrypoints/generate/base/serving.py, _get_priority): accepted here, not acted on (FCFS)."""
    r = httpx.post(server.url + "/v1/completions", json=body(), headers={"X-Vllm-Priority": header}, timeout=60)
    assert r.status_code == 200, r.text
