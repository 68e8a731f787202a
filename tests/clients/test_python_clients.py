"""The Python clients serving engineers use, unchanged, against a paced server: the official
`openai` client (per request, against the `cent` timing the server returns), LangChain's
`ChatOpenAI` and LiteLLM (their means against the server's /metrics; LiteLLM is skipped when it is
not installed). Every request must succeed, stream one visible token per chunk, and measure the
server's simulated TTFT and TPOT within 5% (the openai client: the median request, each within 50%;
tests/clients/utils.py says why that holds under load)."""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai
import pytest

from tests.clients.utils import (HF_TINY, assert_close, assert_requests_close, paced_server, rebase,
                                 server_means, stream_timing)

pytestmark = pytest.mark.serial  # wall clock against simulated time: no other test beside it
TOKENS = 6
CONCURRENCY = 3


@pytest.fixture(scope="module")
def tiny_server():
    """One paced `cent serve` of the tiny preset for the file's tests of it (a server's start is most
    of such a test's cost, and it runs alone); each test measures from its own start (`rebase`)."""
    with paced_server() as s:
        yield s


@contextmanager
def _server(model: str, request):
    """The shared tiny server, or a paced server of `model` for this test alone."""
    if model == "tiny":
        s = request.getfixturevalue("tiny_server")
        rebase(s)
        yield s
    else:
        with paced_server(model) as s:
            yield s


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", str(HF_TINY)], ids=["byte-preset", "hf-checkpoint"])
def test_openai_client_measures_the_simulated_ttft_and_tpot_of_each_request(model, request):
    with _server(model, request) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        name = client.models.list().data[0].id

        def one(i: int):
            t0 = time.perf_counter()
            stream = client.completions.create(model=name, prompt=f"hi {i}", max_tokens=TOKENS,
                                               stream=True, stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True})
            chunks = []
            timing, texts = stream_timing(t0, (chunks.append(c) or c for c in stream),
                                          lambda c: c.choices and c.choices[0].text)
            return timing, len(texts), texts[-1].choices[0].model_extra["cent"], chunks[-1].usage

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, range(CONCURRENCY)))
    for timing, with_text, cent, use in results:
        assert with_text == TOKENS and use.completion_tokens == TOKENS  # one chunk per token, all with text
    assert_requests_close([(timing.ttft, cent["ttft_s"]) for timing, _, cent, _ in results], "TTFT")
    assert_requests_close([(timing.tpot, cent["tpot_s"]) for timing, _, cent, _ in results], "TPOT")


def _check_means(server, timings, n: int) -> None:
    srv = server_means(server)
    assert srv.requests == n
    assert_close(statistics.mean(t.ttft for t in timings), srv.ttft, "mean TTFT")
    assert_close(statistics.mean(t.tpot for t in timings), srv.tpot, "mean TPOT")


@pytest.mark.slow
def test_langchain_chat_openai_streams_every_token(request):
    langchain_openai = pytest.importorskip("langchain_openai")
    with _server("tiny", request) as s:
        llm = langchain_openai.ChatOpenAI(base_url=s.url + "/v1", api_key="unused", model="tiny",
                                          max_tokens=TOKENS, max_retries=0, extra_body={"ignore_eos": True})

        def one(i: int):
            t0 = time.perf_counter()
            timing, texts = stream_timing(t0, llm.stream(f"hi {i}"), lambda c: bool(c.content))
            assert len(texts) == TOKENS
            return timing

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            timings = list(pool.map(one, range(CONCURRENCY)))
        _check_means(s, timings, CONCURRENCY)


@pytest.mark.slow
def test_litellm_streams_every_token(request):
    litellm = pytest.importorskip("litellm")
    with _server("tiny", request) as s:
        def one(i: int):
            t0 = time.perf_counter()
            stream = litellm.completion(model="openai/tiny", api_base=s.url + "/v1", api_key="unused",
                                        messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=TOKENS,
                                        stream=True, extra_body={"ignore_eos": True})
            timing, texts = stream_timing(t0, stream, lambda c: c.choices and c.choices[0].delta.content)
            assert len(texts) == TOKENS
            return timing

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            timings = list(pool.map(one, range(CONCURRENCY)))
        _check_means(s, timings, CONCURRENCY)
