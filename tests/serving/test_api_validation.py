"""The API's validation of prompts and lengths is the engine's (`Engine.check_request`): every
choice is checked before any is queued, and a refusal becomes a 400 naming the client's own field
(chat: `messages`, `max_completion_tokens`) with OpenAI's code for the context."""
from __future__ import annotations

import httpx
import pytest

from api.context import FieldNames, refusal
from api.server import Server
from cent_serve.request import RequestRefused
from tests.serving.utils import body, server_cfg, status

CONTEXT = server_cfg().model.max_seq_len
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ignore_eos": True}


@pytest.fixture(scope="module")
def server():
    with Server(server_cfg(), "local") as s:
        yield s


def _error(server, path: str, sent: dict) -> tuple[int, dict]:
    r = httpx.post(server.url + path, json=sent, timeout=60)
    return r.status_code, r.json().get("error")


def test_refusals_name_the_clients_field():
    refused = RequestRefused("context_exceeded", "max_tokens=9 does not fit: lower max_tokens", "max_tokens")
    err = refusal(refused, FieldNames("messages", "max_completion_tokens"))
    assert (err.status, err.param, err.code) == (400, "max_completion_tokens", "context_length_exceeded")
    assert err.message == "max_completion_tokens=9 does not fit: lower max_completion_tokens"
    err = refusal(RequestRefused("invalid_prompt", "prompt token id 999 is outside"), FieldNames("messages"))
    assert (err.param, err.code, err.message) == ("messages", "invalid_prompt", "prompt token id 999 is outside")
    assert refusal(refused, FieldNames()).message == str(refused)


@pytest.mark.parametrize("path, sent, param, code", [
    ("/v1/completions", body(max_tokens=CONTEXT), "max_tokens", "context_length_exceeded"),
    ("/v1/completions", body(prompt=[1] * CONTEXT), "prompt", "context_length_exceeded"),
    ("/v1/completions", body(prompt=[1, 10 ** 6]), "prompt", "invalid_prompt"),
    ("/v1/completions", body(prompt=[[1, 5], []]), "prompt", "invalid_prompt"),
    # an empty string in a list is no token without the BOS (vLLM's engine refuses an empty prompt too)
    ("/v1/completions", body(prompt=["a", ""], add_special_tokens=False), "prompt", "invalid_prompt"),
    ("/v1/completions", body(prompt=""), "prompt", "invalid_prompt"),
    ("/v1/chat/completions", dict(CHAT, max_tokens=CONTEXT), "max_tokens", "context_length_exceeded"),
    ("/v1/chat/completions", dict(CHAT, max_tokens=None, max_completion_tokens=CONTEXT), "max_completion_tokens",
     "context_length_exceeded"),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "x" * CONTEXT}]), "messages",
     "context_length_exceeded"),
])
def test_engine_refusals_are_400s_naming_the_field(server, path, sent, param, code):
    got, err = _error(server, path, {k: v for k, v in sent.items() if v is not None})
    assert (got, err["param"], err["cent"]["code"]) == (400, param, code), err
    assert param in err["message"] or param in ("prompt", "messages"), err


def test_a_refused_choice_queues_none_of_its_siblings(server):
    before = status(server.url)
    got, err = _error(server, "/v1/completions", body(prompt=[[1, 5, 6], [1, 10 ** 6]], n=2))
    assert (got, err["param"]) == (400, "prompt"), err
    assert err["message"].startswith("the prompt at index 1 of 2: prompt token id 1000000 is outside"), err  # which one
    after = status(server.url)
    for key in ("num_finished", "num_aborted", "num_failed", "num_waiting", "num_running"):
        assert after[key] == before[key], key  # the good prompt's choices never reached the engine


def test_the_engines_validator_decides(server, monkeypatch):
    engine = server.loop.engine
    real = engine.check_request

    def check(prompt_ids, max_tokens):
        if prompt_ids[:3] == [1, 200, 201]:
            raise RequestRefused("kv_capacity", "the prompt needs more KV blocks than a replica holds")
        real(prompt_ids, max_tokens)

    monkeypatch.setattr(engine, "check_request", check)
    got, err = _error(server, "/v1/completions", body(prompt=[1, 200, 201]))
    assert (got, err["param"], err["cent"]["code"]) == (400, "prompt", "kv_capacity"), err
    got, err = _error(server, "/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "hi"}]))
    assert got == 200, err  # the real validator still passes what fits


def test_a_prompt_that_leaves_one_token_gets_it_by_default(server):
    r = httpx.post(server.url + "/v1/completions", json=body(prompt=[1] * (CONTEXT - 1), max_tokens=None),
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


def test_a_checkpoint_is_served_by_its_id_and_by_the_directory_as_vllm_names_it(tmp_path, monkeypatch):
    """vLLM serves a model by the path it was given, so `vllm bench serve --model DIR` sends DIR:
    the directory as given, with a trailing slash or as an absolute path, names the checkpoint too;
    anything else is 404 model_not_found."""
    from types import SimpleNamespace

    from api.context import ApiContext
    from api.errors import ApiError
    ckpt = tmp_path / "my_llama"
    ckpt.mkdir()
    monkeypatch.chdir(tmp_path)
    ctx = SimpleNamespace(model_name="my_llama", cfg=SimpleNamespace(model=SimpleNamespace(checkpoint="my_llama")))
    for name in ("my_llama", "my_llama/", "./my_llama", str(ckpt)):
        ApiContext.check_model(ctx, name)
    for name in ("llama", "", "/", str(tmp_path), "my_llama\0"):
        with pytest.raises(ApiError) as err:
            ApiContext.check_model(ctx, name)
        assert err.value.status == 404
    preset = SimpleNamespace(model_name="tiny", cfg=SimpleNamespace(model=SimpleNamespace(checkpoint=None)))
    ApiContext.check_model(preset, "tiny")
    with pytest.raises(ApiError):
        ApiContext.check_model(preset, "config.json")
    with pytest.raises(ApiError):
        ApiContext.check_model(preset, str(tmp_path))


def test_a_checkpoint_given_as_its_config_json_is_served_by_that_path_too(tmp_path, monkeypatch):
    """`cent serve --model my_llama/config.json` serves the directory (hf_config loads a config.json as
    its directory); a client given the same string (`vllm bench serve --model my_llama/config.json`)
    got 404 model_not_found. The file's path, as given or absolute, names the checkpoint; another file
    in it does not."""
    from types import SimpleNamespace

    from api.context import ApiContext
    from api.errors import ApiError
    ckpt = tmp_path / "my_llama"
    ckpt.mkdir()
    monkeypatch.chdir(tmp_path)
    ctx = SimpleNamespace(model_name="my_llama", cfg=SimpleNamespace(model=SimpleNamespace(checkpoint=str(ckpt))))
    for name in ("my_llama/config.json", "./my_llama/config.json", str(ckpt / "config.json")):
        ApiContext.check_model(ctx, name)
    for name in ("my_llama/tokenizer.json", "my_llama/config.json/", "config.json", "other/config.json"):
        with pytest.raises(ApiError) as err:
            ApiContext.check_model(ctx, name)
        assert err.value.status == 404


def test_a_model_name_is_compared_as_a_string_never_resolved_on_the_filesystem(tmp_path, monkeypatch):
    """The model name is the client's: matching it to the checkpoint's directory must not walk the
    filesystem (a name of 300,000 components held the event loop for seconds, and a symlink loop
    raised RuntimeError, a 500)."""
    import time
    from types import SimpleNamespace

    from api.context import ApiContext
    from api.errors import ApiError
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    ctx = SimpleNamespace(model_name="my_llama", cfg=SimpleNamespace(model=SimpleNamespace(checkpoint="my_llama")))
    for name in (str(tmp_path / "loop" / "x"), "a/" * 300_000):
        t0 = time.process_time()
        with pytest.raises(ApiError) as err:
            ApiContext.check_model(ctx, name)
        assert err.value.status == 404
        assert time.process_time() - t0 < 1.0  # ~10 CPU seconds when resolved component by component


@pytest.mark.parametrize("prompt, param, says", [
    ([1.5], "prompt.0", "a prompt list starts with a string, a token id or a list of token ids (got 1.5)"),
    ([1, "a"], "prompt.1", "a token id is an integer (got 'a')"),
    ([[1, 2], [1, "x"]], "prompt.1.1", "a token id is an integer (got 'x')"),
    (["a", 2], "prompt.1", "a list of strings holds strings only (got 2)"),
    ([[1], 3], "prompt.1", "a list of token-id lists holds lists only (got 3)"),
    (5, "prompt", "prompt must be a string, a list of strings, a list of token ids"),
])
def test_a_prompt_of_no_shape_names_the_element_that_breaks_it(server, prompt, param, says):
    """A prompt fits none of the union's shapes: the first branch's error read "prompt: Input should be
    a valid string (got [1.5])" for a list of token ids; the element at fault is named (as docs/serving.md
    says: `param` is the field's path, e.g. `prompt.0`)."""
    status, err = _error(server, "/v1/completions", body(prompt=prompt))
    assert (status, err["param"]) == (400, param), err
    assert says in err["message"] and "valid string" not in err["message"], err


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("stop, param, says", [
    (5, "stop", "stop must be a string or a list of strings (got 5)"),
    ({"a": 1}, "stop", "stop must be a string or a list of strings"),
    ([1], "stop.0", "stop.0: a list of stop strings holds strings only (got 1)"),
    (["end", None], "stop.1", "stop.1: a list of stop strings holds strings only (got None)"),
])
def test_a_stop_of_no_shape_says_both_shapes(server, path, stop, param, says):
    """`stop` is a string or a list of strings: the union's first branch answered "stop: Input should be a
    valid string (got [1])", as if a list were wrong."""
    sent = body(stop=stop) if path == "/v1/completions" else dict(CHAT, stop=stop)
    status, err = _error(server, path, sent)
    assert (status, err["param"]) == (400, param), err
    assert says in err["message"] and "valid string" not in err["message"], err


def test_a_snapshot_of_the_hugging_face_cache_is_served_by_its_repository_id_too(tmp_path):
    """cent serve --model hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/COMMIT answered a client
    naming the model as vLLM serves it from the Hub, meta-llama/Llama-3.1-8B-Instruct, with 404
    model_not_found. The repository id names a cache snapshot; another checkpoint keeps its names."""
    from types import SimpleNamespace

    from api.context import ApiContext
    from api.errors import ApiError
    snap = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / "0e9e39f2"
    ctx = SimpleNamespace(model_name="Llama-3.1-8B-Instruct",
                          cfg=SimpleNamespace(model=SimpleNamespace(checkpoint=str(snap))))
    for name in ("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", str(snap)):
        ApiContext.check_model(ctx, name)
    other = SimpleNamespace(model_name="Llama-3.1-8B-Instruct",
                            cfg=SimpleNamespace(model=SimpleNamespace(checkpoint=str(tmp_path / "Llama-3.1-8B-Instruct"))))
    for ctx, name in ((ctx, "meta-llama/Llama-3.1-8B"), (ctx, "other/Llama-3.1-8B-Instruct"),
                      (other, "meta-llama/Llama-3.1-8B-Instruct")):
        with pytest.raises(ApiError) as err:
            ApiContext.check_model(ctx, name)
        assert err.value.status == 404


@pytest.mark.parametrize("path, sent", [("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                                        ("/v1/chat/completions", {k: v for k, v in CHAT.items() if k != "model"})])
def test_a_request_without_model_is_told_the_served_model(server, path, sent):
    """A body without "model" got `model: Field required (got {'prompt': 'Hi', 'max_tokens': 2})`: the
    field, but not the value to give. It now names the model this server serves."""
    got, err = _error(server, path, sent)
    assert (got, err["param"]) == (400, "model"), err
    assert err["message"] == "model is required: name the model this server serves, 'tiny' (GET /v1/models lists it)"


def test_a_model_of_another_type_is_not_told_it_is_missing(server):
    got, err = _error(server, "/v1/completions", {"model": 5, "prompt": "Hi", "max_tokens": 2})
    assert (got, err["param"]) == (400, "model") and "required" not in err["message"], err
