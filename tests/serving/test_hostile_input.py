"""Hostile request bodies against a real server: every refusal is OpenAI's error JSON with a
4xx that names the parameter, never a 5xx or a hang, and the server keeps serving.

The property tests are derandomized (the same examples on every run) and bounded."""
from __future__ import annotations

import json
import math
import os

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.checks import MAX_N, MAX_STOP_CHARS, UNSUPPORTED
from api.server import Server
from cent_serve.config import model_preset
from tests.serving.utils import body, server_cfg

REQUEST_TIMEOUT_S = 30.0
"""A response (streamed ones read to the end) must come within this: no hangs."""
VOCAB = 259
MAX_SEQ_LEN = 512
"""The fuzzed server's context (shorter than the preset's, so fuzzed prompts cross it)."""
FUZZ_EXAMPLES = int(os.environ.get("CENT_FUZZ_EXAMPLES", "60"))
"""Examples per property; raise it for a long local hunt (`CENT_FUZZ_EXAMPLES=2000`)."""
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=FUZZ_EXAMPLES <= 60, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server():
    cfg = server_cfg(numerics="full")  # the real sampler sees the fuzzed sampling options
    cfg.model = model_preset("tiny", max_seq_len=MAX_SEQ_LEN)
    cfg.scheduler.prefill_chunk_tokens = 64  # long fuzzed prompts prefill in a few rounds
    cfg.server.max_tokens_default = 4  # a fuzzed chat without max_tokens must not run to the context's end
    with Server(cfg, "local") as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as h:
        yield h


def _post(http: httpx.Client, path: str, content: bytes) -> tuple[int, dict | None, str]:
    """(status, error object or None, streamed text); a streamed body is read to its end."""
    with http.stream("POST", path, content=content, headers={"content-type": "application/json"}) as r:
        text = r.read().decode()
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert text.endswith("data: [DONE]\n\n"), text[-200:]
        else:
            assert json.loads(text)["choices"]
        return 200, None, text
    err = json.loads(text)["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"] and "param" in err, err
    return r.status_code, err, text


def _assert_still_serving(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json=body(max_tokens=2))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text


# ---------------------------------------------------------------------- strategies

surrogate = st.integers(0xD800, 0xDFFF).map(chr)
hostile_text = st.text(st.one_of(st.characters(), surrogate), max_size=12)
fine_text = st.text(max_size=12)
huge = st.integers(-2 ** 80, 2 ** 80)
junk = st.one_of(st.none(), st.booleans(), huge, st.floats(allow_nan=True, allow_infinity=True), hostile_text,
                 st.lists(st.integers(), max_size=3), st.dictionaries(hostile_text, st.integers(), max_size=2))
vocab_ids = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)
any_ids = st.lists(st.one_of(st.integers(-3, VOCAB + 3), huge), max_size=40)

# Each field: values a well-behaved client sends, and hostile ones (wrong types, out of range,
# NaN, huge, invalid Unicode). A body is a valid one with 0-2 fields made hostile.
VALID = {
    "max_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, VOCAB + 3),
    "n": st.integers(1, 3),
    "seed": st.integers(-2 ** 63, 2 ** 63 - 1),
    "stop": st.one_of(st.text(min_size=1, max_size=3), st.lists(st.text(min_size=1, max_size=3), max_size=4)),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=5),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 1),
    "return_token_ids": st.booleans(),
    "presence_penalty": st.just(0.0),
    "logprobs": st.sampled_from([None, False]),
    "user": fine_text,
}
HOSTILE = {
    "model": st.one_of(junk, st.sampled_from(["tiny ", "gpt-4", ""])),
    "max_tokens": st.one_of(junk, st.integers(-2, 0), st.integers(MAX_SEQ_LEN, 2 ** 70)),
    "temperature": st.one_of(junk, st.sampled_from([-0.1, 2.1, math.nan, math.inf, -math.inf])),
    "top_p": st.one_of(junk, st.sampled_from([0.0, -1.0, 1.5, math.nan])),
    "top_k": st.one_of(junk, st.integers(-2 ** 70, -2)),
    "n": st.one_of(junk, st.integers(-5, 0), st.integers(MAX_N + 1, 2 ** 70)),
    "seed": st.one_of(junk, st.integers(2 ** 63, 2 ** 70), st.integers(-2 ** 70, -2 ** 63 - 1)),
    "stop": st.one_of(junk, hostile_text, st.lists(hostile_text, max_size=6), st.just("s" * (MAX_STOP_CHARS + 1))),
    "stop_token_ids": st.one_of(junk, any_ids),
    "stream": junk,
    "stream_options": st.one_of(junk, st.fixed_dictionaries({"include_usage": junk})),
    "ignore_eos": junk,
    "min_tokens": st.one_of(junk, st.integers(-2 ** 70, -1), st.integers(5, 2 ** 70)),
    "return_token_ids": junk,
    "presence_penalty": junk,
    "logprobs": junk,
    "user": junk,
    # replay extensions: never a valid hold, which pauses the virtual clock for every client
    # until the replayer's next request or HOLD_EXPIRY_S (by design: one trusted replayer)
    "arrival_s": st.one_of(junk, st.sampled_from([-1.0, math.nan, math.inf, 1e300])),
    "hold_until_s": st.one_of(junk.filter(lambda v: not isinstance(v, (int, float)) or isinstance(v, bool)
                                          or not 0 <= v < math.inf), st.sampled_from([-1.0, math.nan, -math.inf])),
    **{name: junk for name in UNSUPPORTED},
    # served since they were refused (and fuzzed as junk with UNSUPPORTED's names): fuzzed the same
    **{name: junk for name in ("frequency_penalty", "repetition_penalty", "min_p", "logit_bias", "allowed_token_ids",
                               "include_stop_str_in_output", "truncate_prompt_tokens", "bad_words")},
}
valid_prompt = st.one_of(st.text(min_size=1, max_size=600), vocab_ids, st.lists(st.text(min_size=1, max_size=20),
                         min_size=1, max_size=3), st.lists(vocab_ids, min_size=1, max_size=2))
hostile_prompt = st.one_of(junk, hostile_text, any_ids, st.lists(hostile_text, max_size=4),
                           st.lists(any_ids, max_size=3), st.text(min_size=600, max_size=2000))
valid_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": st.one_of(
    st.text(max_size=40), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": fine_text}), max_size=2))})
hostile_message = st.fixed_dictionaries({"role": st.one_of(junk, st.just("robot")), "content": st.one_of(
    junk, st.lists(st.fixed_dictionaries({"type": st.one_of(junk, st.just("image_url")), "text": junk}), max_size=2))})


def _bodies(required: dict, hostile: dict):
    """A valid body (required fields, some optional ones), then 0-2 fields made hostile or
    dropped, then 0-2 unknown fields (which must be ignored)."""
    base = st.fixed_dictionaries(required, optional=VALID)
    names = st.lists(st.sampled_from(sorted(hostile)), max_size=2, unique=True)
    bad = names.flatmap(lambda ns: st.fixed_dictionaries({n: st.one_of(hostile[n], st.just(DROP)) for n in ns}))
    unknown = st.dictionaries(hostile_text.filter(lambda k: k not in hostile and k not in required), junk,
                              max_size=2)
    return st.tuples(base, bad, unknown).map(
        lambda t: {k: v for k, v in {**t[2], **t[0], **t[1]}.items() if v is not DROP})


DROP = object()
completion_bodies = _bodies({"model": st.just("tiny"), "prompt": valid_prompt},
                            dict(HOSTILE, prompt=hostile_prompt, echo=junk))
chat_bodies = _bodies({"model": st.just("tiny"), "messages": st.lists(valid_message, min_size=1, max_size=3)},
                      dict(HOSTILE, messages=st.one_of(junk, st.lists(st.one_of(valid_message, hostile_message),
                                                                      max_size=3)), max_completion_tokens=junk))


def _check_error_names_a_field(status: int, err: dict | None, sent) -> None:
    event(f"status {status}")  # --hypothesis-show-statistics shows how many were served
    assert status < 500, err
    if status in (400, 404) and isinstance(sent, dict):
        keys_ok = all(k.encode("utf-8", "surrogatepass") == k.encode("utf-8", "replace") for k in sent)
        if keys_ok:  # the param names a field the client sent (or a required one it left out)
            param = err["param"]
            assert param is not None, err
            assert param.split(".")[0] in set(sent) | {"model", "prompt", "messages"}, err


# ---------------------------------------------------------------------- properties

@FUZZ
@given(sent=completion_bodies)
def test_fuzzed_completion_bodies_never_get_a_5xx(server, http, sent):
    status, err, _ = _post(http, "/v1/completions", json.dumps(sent).encode())
    _check_error_names_a_field(status, err, sent)


@FUZZ
@given(sent=chat_bodies)
def test_fuzzed_chat_bodies_never_get_a_5xx(server, http, sent):
    status, err, _ = _post(http, "/v1/chat/completions", json.dumps(sent).encode())
    _check_error_names_a_field(status, err, sent)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=64), hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.recursive(junk, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner,
                                  max_size=3), max_leaves=8).map(lambda v: json.dumps(v).encode())),
       path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_arbitrary_bytes_never_get_a_5xx(server, http, raw, path):
    status, err, _ = _post(http, path, raw)
    assert 400 <= status < 500 or status == 200, (status, err)


@FUZZ
@given(ids=st.lists(st.one_of(st.integers(0, VOCAB - 1), st.integers(-2 ** 64, 2 ** 64)), min_size=0, max_size=600))
def test_token_id_prompts_are_served_exactly_when_they_fit_the_vocabulary_and_context(server, http, ids):
    status, err, _ = _post(http, "/v1/completions", json.dumps(body(prompt=ids, max_tokens=1)).encode())
    fits = bool(ids) and all(0 <= t < VOCAB for t in ids) and len(ids) < MAX_SEQ_LEN
    assert status == (200 if fits else 400), (status, err)
    if not fits:
        assert err["param"] == "prompt"


def test_the_server_still_serves_after_the_fuzzing(server, http):
    _assert_still_serving(http)
    assert http.get("/health").json() == {"status": "ok"}


# ---------------------------------------------------------------------- named cases

HOSTILE = [
    ({"seed": 2 ** 63}, 400, "seed"),
    ({"seed": -2 ** 63 - 1}, 400, "seed"),
    ({"top_k": -7}, 400, "top_k"),
    ({"n": 10 ** 30}, 400, "n"),
    ({"max_tokens": "5.5"}, 400, "max_tokens"),  # "5" is 5, as vLLM's lax pydantic reads it
    ({"max_tokens": 5.5}, 400, "max_tokens"),
    ({"stream": 1}, 400, "stream"),
    ({"stop": ["x" * (MAX_STOP_CHARS + 1)]}, 400, "stop"),
    ({"stop_token_ids": [VOCAB]}, 400, "stop_token_ids"),
    ({"stop_token_ids": [-1]}, 400, "stop_token_ids"),
    ({"prompt": "\ud800"}, 400, "prompt"),
    ({"prompt": [1, "a"]}, 400, "prompt.1"),  # the element at fault (docs/serving.md: `param` is its path)
    ({"prompt": "x" * 20000}, 400, "prompt"),
    ({"prompt": [[1]] * 2000}, 400, "prompt"),
    ({"arrival_s": -1.0}, 400, "arrival_s"),
    ({"hold_until_s": -1.0}, 400, "hold_until_s"),
    ({"hold_until_s": 1.0}, 400, "hold_until_s"),  # a hold needs its arrival_s
    ({"arrival_s": 2.0, "hold_until_s": 1.0}, 400, "hold_until_s"),
    ({"best_of": 3}, 400, "best_of"),
    ({"logit_bias": {str(VOCAB): 10}}, 400, "logit_bias"),  # an id outside the vocabulary, as vLLM refuses it
    ({"logit_bias": {"x": 10}}, 400, "logit_bias"),
    ({"allowed_token_ids": []}, 400, "allowed_token_ids"),
    ({"allowed_token_ids": [VOCAB]}, 400, "allowed_token_ids"),
    ({"truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),  # an empty prompt
    ({"truncate_prompt_tokens": -2}, 400, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": MAX_SEQ_LEN + 1}, 400, "truncate_prompt_tokens"),  # past the context, as vLLM
    ({"repetition_penalty": 0.0}, 400, "repetition_penalty"),  # the penalties' and min_p's ranges are vLLM's
    ({"min_p": 1.1}, 400, "min_p"),
    ({"presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"frequency_penalty": -2.01}, 400, "frequency_penalty"),
    ({"repetition_penalty": True}, 400, "repetition_penalty"),  # true is not a number
    ({"stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),  # without stream, as vLLM refuses it
]


@pytest.mark.parametrize("fields, status, param", HOSTILE)
def test_hostile_values_name_their_param(server, http, fields, status, param):
    got, err, _ = _post(http, "/v1/completions", json.dumps(body(**fields)).encode())
    assert (got, err["param"]) == (status, param), err


@pytest.mark.parametrize("sent", [dict(hold_until_s=-4513.0, arrival_s=1.0), dict(hold_until_s=-1.0),
                                  dict(hold_until_s=5.0, arrival_s=math.nan), dict(hold_until_s=0.5, temperature=-1)])
def test_a_refused_request_moves_the_replay_hold_only_to_a_valid_one(server, http, sent):
    """A refused replay request moves the replayer's hold on (the next arrival), but never to a hold the
    request itself got refused for or that has no arrival before it: a negative one stopped the clock
    for every client until the hold expired (30 s), found by the fuzzer."""
    got, err, _ = _post(http, "/v1/completions", json.dumps(body(**sent), allow_nan=True).encode())
    assert got == 400, err
    assert server.loop.hold_until_s is None


@pytest.mark.parametrize("raw", [json.dumps(body(temperature=v)) for v in (math.nan, math.inf, -math.inf)])
def test_non_finite_temperatures_are_refused(server, http, raw):
    got, err, _ = _post(http, "/v1/completions", raw.encode())
    assert (got, err["param"]) == (400, "temperature")


def test_unknown_fields_are_ignored_and_neutral_unsupported_ones_accepted(server, http):
    assert _post(http, "/v1/completions", json.dumps(body(stream_options={})).encode())[0] == 200  # as vLLM
    got, _, _ = _post(http, "/v1/completions", json.dumps(body(some_vendor_extension={"x": 1}, best_of=1,
                                                               logit_bias={}, response_format={"type": "text"},
                                                               repetition_penalty=1.0, min_p=0.0)).encode())
    assert got == 200  # vllm bench serve sends repetition_penalty 1.0


@pytest.mark.parametrize("field, value, neutral", [
    ("guided_choice", ["yes", "no"], None),  # vLLM's structured outputs, as response_format's json is refused
    ("guided_json", {"type": "object"}, None),
    ("guided_regex", "[ab]+", None),
    ("guided_grammar", "root ::= 'a'", None),
    ("structured_outputs", {"choice": ["yes", "no"]}, None),
    ("return_tokens_as_token_ids", True, False),  # the logprobs' tokens as "token_id:N": not written here
    # vLLM 0.33 (vllm/entrypoints/openai/completion/protocol.py): the logprobs of these ids in place of the
    # top ones (an empty list is unset there), and an early stop on repeated n-grams
    ("logprob_token_ids", [5, 6], []),
    ("repetition_detection", {"max_pattern_size": 2, "min_count": 2}, None),
])
def test_vllm_extensions_that_would_change_the_answer_are_refused(server, http, field, value, neutral):
    for path, sent in (("/v1/completions", body()), ("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})):
        got, err, _ = _post(http, path, json.dumps(dict(sent, **{field: value})).encode())
        assert (got, err["param"]) == (400, field), err
        assert "not supported" in err["message"], err
        got, err, _ = _post(http, path, json.dumps(dict(sent, **{field: neutral})).encode())
        assert got == 200, err  # the value that means "off" (or null) passes


# vLLM 0.33's repetition_detection (vllm/sampling_params.py, RepetitionDetectionParams): a missing or null
# field is 0, max_pattern_size 0 detects nothing; negative sizes and min_pattern_size > max_pattern_size are
# refused there too; its fields are ints validated lax (a dataclass in a pydantic model): "0" and 0.0 are 0
REPETITION_OFF = [{}, {"max_pattern_size": 0}, {"max_pattern_size": None, "min_count": 3},
                  {"max_pattern_size": 0, "min_pattern_size": 0, "min_count": 0}, {"min_count": 2, "other": 1},
                  {"max_pattern_size": "0"}, {"max_pattern_size": 0.0, "min_pattern_size": " 0 ", "min_count": "3"}]
REPETITION_REFUSED = [({"max_pattern_size": 2, "min_count": 2}, "repetition_detection", "not supported"),
                      ({"max_pattern_size": 1}, "repetition_detection", "not supported"),
                      ({"max_pattern_size": -1}, "repetition_detection.max_pattern_size", "integer >= 0"),
                      ({"max_pattern_size": "2"}, "repetition_detection", "not supported"),
                      ({"max_pattern_size": True}, "repetition_detection", "not supported"),
                      ({"max_pattern_size": "x"}, "repetition_detection.max_pattern_size", "integer >= 0"),
                      ({"max_pattern_size": "-1"}, "repetition_detection.max_pattern_size", "integer >= 0"),
                      ({"min_pattern_size": 1}, "repetition_detection.min_pattern_size", "max_pattern_size"),
                      ({"min_count": 1.5}, "repetition_detection.min_count", "integer"),
                      ([1], "repetition_detection", "an object")]


def test_repetition_detection_that_asks_for_nothing_passes(server, http):
    for value in REPETITION_OFF:
        got, err, _ = _post(http, "/v1/completions", json.dumps(body(repetition_detection=value)).encode())
        assert got == 200, (value, err)
    for value, param, says in REPETITION_REFUSED:
        got, err, _ = _post(http, "/v1/completions", json.dumps(body(repetition_detection=value)).encode())
        assert (got, err["param"]) == (400, param) and says in err["message"], (value, err)


NULLABLE = {"/v1/completions": ("n", "stream", "echo", "presence_penalty", "frequency_penalty"),
            "/v1/chat/completions": ("n", "stream", "presence_penalty", "frequency_penalty")}
"""Fields OpenAI's API declares nullable (and vLLM's `Optional`), which clients send as an explicit null."""


@pytest.mark.parametrize("path, field", [(p, f) for p, fields in NULLABLE.items() for f in fields])
def test_an_explicit_null_of_a_nullable_openai_field_is_its_default(server, http, path, field):
    sent = body(**{field: None}) if path == "/v1/completions" else {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: None}
    got, err, text = _post(http, path, json.dumps(sent).encode())
    assert got == 200, err
    assert len(json.loads(text)["choices"]) == 1  # not streamed, one choice: the defaults
    usage = {"include_usage": None, "continuous_usage_stats": None}
    got, err, text = _post(http, path, json.dumps(dict(sent, stream=True, stream_options=usage)).encode())
    assert got == 200 and '"usage"' not in text, err  # vLLM's Optional[bool]s: null is off


def test_chat_content_parts_must_be_text(server, http):
    image = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    got, err, _ = _post(http, "/v1/chat/completions", json.dumps(image).encode())
    assert got == 400 and err["param"].startswith("messages.0.content")
    assert "part 0 is of type 'image_url': the models served here take text only" in err["message"]
    for content, says in (([{"type": "text"}], "part 0 has no string 'text'"), ([5], "part 0 is not a text part"),
                          ([{"type": "refusal"}], "part 0 has no string 'refusal'"),
                          (5, "should be a string or a list of text parts")):
        sent = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
        got, err, _ = _post(http, "/v1/chat/completions", json.dumps(sent).encode())
        assert got == 400 and err["param"] == "messages.0.content" and says in err["message"], err
    text_parts = {"model": "tiny", "max_tokens": 2,
                  "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert _post(http, "/v1/chat/completions", json.dumps(text_parts).encode())[0] == 200
    # the parts vLLM reads as text reach the template one per line, as vLLM joins them (not run
    # together), the empty ones left out
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": ""}, "there",
                                          {"type": "input_text", "text": "a", "cache_control": {}}]},
             {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}, {"type": "output_text", "text": "b"}]},
             {"role": "user", "content": [{"type": "thinking", "thinking": "c"}]}]
    whole = [{"role": "user", "content": "hi\nthere\na"}, {"role": "assistant", "content": "no\nb"},
             {"role": "user", "content": "c"}]
    ids = [http.post("/tokenize", json={"model": "tiny", "messages": m}).json()["tokens"] for m in (parts, whole)]
    assert ids[0] == ids[1]


@pytest.mark.parametrize("content, headers, says", [
    (json.dumps(body()).encode(), {"content-type": "application/x-www-form-urlencoded"},
     "sent as application/x-www-form-urlencoded: send a JSON object"),
    (b"", {"content-type": "application/json"}, "the request has no body: send a JSON object"),
    (b"null", {"content-type": "application/json"}, "the body is null, not a JSON object"),
    (b'"hi"', {"content-type": "application/json"}, "the body is a string, not a JSON object"),
    (b"[1]", {"content-type": "application/json"}, "the body is an array, not a JSON object"),
    (b'{"model": "tiny",, "prompt": "hi"}', {"content-type": "application/json"}, "at character 17"),  # 0-based, as json says
])
def test_a_body_that_is_not_json_is_a_400_that_says_what_to_send(server, http, content, headers, says):
    r = http.post("/v1/completions", content=content, headers=headers)
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    _assert_still_serving(http)


def test_invalid_utf8_is_a_400(server, http):
    got, err, _ = _post(http, "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe"}')
    assert got == 400 and "UTF-8" in err["message"]


# ---------------------------------------------------------------------- body size

LIMIT_BYTES = 4096


@pytest.fixture(scope="module")
def small_server():
    with Server(server_cfg(max_body_bytes=LIMIT_BYTES), "local") as s:
        yield s


def test_a_body_over_the_limit_is_a_413_by_content_length(small_server):
    big = json.dumps(body(prompt="x" * LIMIT_BYTES)).encode()
    r = httpx.post(small_server.url + "/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["cent"]["code"] == "request_too_large"
    assert "server.max_body_bytes" in r.json()["error"]["message"]


def test_a_streamed_body_over_the_limit_is_a_413(small_server):
    def chunks():  # no Content-Length: chunked transfer encoding
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(LIMIT_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'
    r = httpx.post(small_server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_body_at_the_limit_is_served(small_server):
    sent = body()
    pad = LIMIT_BYTES - len(json.dumps(dict(sent, user="")).encode())
    raw = json.dumps(dict(sent, user="u" * pad)).encode()
    assert len(raw) == LIMIT_BYTES
    r = httpx.post(small_server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert httpx.get(small_server.url + "/health").status_code == 200


def test_an_unknown_path_or_method_says_which_and_where_the_api_is(server, http):
    r = http.get("/v1/completion")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert r.json()["error"]["message"].startswith("GET /v1/completion is not a path of this server: the OpenAI API")
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"] == "GET is not allowed on /v1/completions: use POST"
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("path, allow", [("/v1/models", "GET, HEAD"), ("/health", "GET, HEAD"),
                                         ("/metrics", "GET, HEAD"), ("/ping", "GET, HEAD, POST"),
                                         ("/tokenize", "POST")])
def test_a_405_names_every_method_the_path_answers_and_sends_allow(server, http, path, allow):
    """A path whose GET and HEAD are two routes told a DELETE "use HEAD" (Starlette names the first
    route that matches the path alone) and the 405 carried no Allow header, which RFC 9110 requires."""
    r = http.delete(path)
    assert r.status_code == 405 and r.json()["error"]["message"] == f"DELETE is not allowed on {path}: use {allow}"
    assert r.headers["allow"] == allow
    assert all(http.request(m, path).status_code != 405 for m in allow.split(", ") if m != "POST")


def test_an_arrival_the_engine_has_passed_is_taken_as_the_last_round_s_start(server, http):
    """A replay's `arrival_s` before a round the engine began (other clients' rounds, a lapsed hold or a
    client's mistake) is taken as arriving when that round began, counted and warned: accepted as
    sent, one request at 0 after the clock had moved put ~1e9 s into the mean TTFT for good."""
    from tests.serving.utils import metric, status, wait_idle

    assert http.post("/v1/completions", json=body(max_tokens=3)).status_code == 200  # rounds run past 0
    wait_idle(server.url)
    start, late = server.loop.engine.round_start_s, status(server.url)["num_late_arrivals"]
    assert start > 0
    text = http.get("/metrics").text
    ttft = [metric(text, f"vllm:time_to_first_token_seconds_{k}") for k in ("sum", "count")]
    r = http.post("/v1/completions", json=body(arrival_s=start / 2, max_tokens=2))
    assert r.status_code == 200, r.text
    cent = r.json()["cent"]
    assert cent["arrival_s"] == start and cent["ttft_s"] < 1.0
    text = http.get("/metrics").text
    assert metric(text, "vllm:time_to_first_token_seconds_count") == ttft[1] + 1
    assert metric(text, "vllm:time_to_first_token_seconds_sum") - ttft[0] < 1.0
    assert status(server.url)["num_late_arrivals"] == late + 1
    r = http.post("/v1/completions", json=body(arrival_s=server.loop.engine.now_s + 1.0))
    assert r.status_code == 200 and r.json()["cent"]["arrival_s"] > start  # ahead of the clock: kept
