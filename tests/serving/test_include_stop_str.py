"""vLLM's include_stop_str_in_output: the stop string (or stop token) that ended the output stays in its
text, streamed or not (vllm/v1/engine/detokenizer.py: truncate after the stop string, decode the stop
token, hold nothing back in a stream)."""
from __future__ import annotations

import json

import httpx
import pytest

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.model.sampling import SamplingParams
from cent_serve.request import RequestParams
from tests.serving.utils import server_cfg


def _engine() -> Engine:
    return Engine(CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off"))


def _finish(eng: Engine, **params):
    req = eng.add_request([1, 72, 73], RequestParams(max_tokens=12, ignore_eos=True, sampling=SamplingParams(seed=4),
                                                     **params))
    while eng.has_work():
        eng.step()
    return req, eng.text(req)


@pytest.mark.parametrize("include", [False, True])
def test_the_stop_string_or_stop_id_is_kept_in_the_text_when_asked(include):
    eng = _engine()
    plain = _finish(eng)[1]
    stop = plain[4:6]
    req, text = _finish(eng, stop=(stop,), include_stop_str_in_output=include)
    cut = plain.index(stop)
    assert (req.finish_reason, req.stop_reason) == ("stop", stop)
    assert text == (plain[:cut + 2] if include else plain[:cut])
    plain_req = _finish(eng)[0]  # the same seed, the same draws
    stop_id = plain_req.output_ids[3]
    req, text = _finish(eng, stop_token_ids=(stop_id,), include_stop_str_in_output=include)
    n = plain_req.output_ids.index(stop_id) + 1
    assert req.stop_reason == stop_id and len(req.output_ids) == n
    assert text == (plain[:n] if include else plain[:n - 1])  # one character a token (byte stand-in ids)
    # with a stop string too, the stop id's text follows the same rule (text kept for the stop strings)
    req, text = _finish(eng, stop=("\x01",), stop_token_ids=(stop_id,), include_stop_str_in_output=include)
    assert text == (plain[:n] if include else plain[:n - 1])


@pytest.fixture(scope="module")
def off():
    with Server(server_cfg(), "local") as s:
        yield s


def _events(url: str, **body) -> list[dict]:
    with httpx.stream("POST", url + "/v1/completions", json=dict(body, stream=True), timeout=60) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    return [json.loads(x)["choices"][0] for x in lines[:-1]]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_api_keeps_the_stop_string_and_streams_every_token_s_text_at_once(off, path):
    """Not streamed: the text ends with the stop string. Streamed: the same text, each token's character
    in its own chunk, none held back for a possible stop string (vLLM's stop_buffer_length is 0 then)."""
    base = dict(model="tiny", max_tokens=12, seed=3, ignore_eos=True)
    base.update(prompt="hello") if path == "/v1/completions" else base.update(
        messages=[{"role": "user", "content": "hello"}])

    def text(reply: dict) -> str:
        c = reply["choices"][0]
        return c["text"] if "text" in c else c["message"]["content"]

    plain = text(httpx.post(off.url + path, json=base, timeout=60).json())
    stop = plain[5:9]  # four characters: without the flag, a stream holds back what may start it
    req = dict(base, stop=[stop], include_stop_str_in_output=True)
    whole = text(httpx.post(off.url + path, json=req, timeout=60).json())
    assert whole == plain[:plain.index(stop) + 4]
    assert text(httpx.post(off.url + path, json=dict(req, include_stop_str_in_output=None),
                           timeout=60).json()) == plain[:plain.index(stop)]  # null is off
    if path == "/v1/completions":
        chunks = _events(off.url, **req)
        assert "".join(c["text"] for c in chunks) == whole
        assert [len(c["text"]) for c in chunks] == [1] * len(whole)  # every token's text in its own chunk
        assert chunks[-1]["finish_reason"] == "stop" and chunks[-1]["stop_reason"] == stop


def test_a_value_that_is_not_a_boolean_is_a_400_naming_it(off):
    r = httpx.post(off.url + "/v1/completions", json=dict(model="tiny", prompt="hi", include_stop_str_in_output=1),
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "include_stop_str_in_output"
