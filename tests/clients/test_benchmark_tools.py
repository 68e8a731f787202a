"""vLLM's `vllm bench serve`, guidellm and NVIDIA's AIPerf, unchanged, against a paced server with
the tokenizer `cent tokenizer export` writes. They are large (vLLM and guidellm bring PyTorch) and
live in their own environments: the tests run them when `CENT_TEST_VLLM` / `CENT_TEST_GUIDELLM` /
`CENT_TEST_AIPERF` name their executables (or they are on PATH) and are skipped otherwise, never
failed for their absence. `benchmarks/clients.py` runs the full-size comparison (16 prompts, three
servers)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from cent_serve.config import model_preset
from cent_serve.model.tokenizer_export import export_tokenizer
from tests.clients.utils import assert_close, executable, paced_server, server_means

pytestmark = pytest.mark.serial  # wall clock against simulated time: no other test beside it
PROMPTS, INPUT, OUTPUT = 4, 16, 6
TOOL_TIMEOUT_S = 600  # a hang guard: a run takes ~30-60 s here (tool start-up ~10 s, then paced tokens)


def _run(cmd: list[str], log, offline: bool = True) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1") if offline else {k: v for k, v in os.environ.items()
                                                               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT_S, env=env)
    assert code == 0, open(log).read()[-3000:]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    export_tokenizer(model_preset("tiny"), out)
    return out


@pytest.mark.slow
def test_vllm_bench_serve(tokenizer_dir, tmp_path):
    vllm = executable("vllm", "CENT_TEST_VLLM")
    if vllm is None:
        pytest.skip("vllm is not installed (set CENT_TEST_VLLM to its executable)")
    with paced_server() as s:
        _run([vllm, "bench", "serve", "--backend", "openai", "--base-url", s.url, "--model", "tiny",
              "--tokenizer", str(tokenizer_dir), "--dataset-name", "random", "--random-input-len", str(INPUT),
              "--random-output-len", str(OUTPUT), "--num-prompts", str(PROMPTS), "--max-concurrency", "2",
              "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"],
             tmp_path / "vllm.log")
        srv = server_means(s)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["completed"] == PROMPTS == srv.requests and r.get("failed", 0) == 0
    # the prompt tokens vLLM counted are the ones the server served (vLLM's random prompts can miss the
    # asked length by a token when random bytes do not re-encode to themselves: it warns, and counts it)
    assert r["total_input_tokens"] == srv.prompt_tokens
    assert_close(r["mean_ttft_ms"] / 1e3, srv.ttft, "vllm mean TTFT")
    assert_close(r["mean_tpot_ms"] / 1e3, srv.tpot, "vllm mean TPOT")


@pytest.mark.slow
def test_guidellm(tokenizer_dir, tmp_path):
    guidellm = executable("guidellm", "CENT_TEST_GUIDELLM")
    if guidellm is None:
        pytest.skip("guidellm is not installed (set CENT_TEST_GUIDELLM to its executable)")
    with paced_server() as s:
        _run([guidellm, "run", "--backend", f"kind=openai_http,target={s.url},model=tiny,"
              "request_format=/v1/completions", "--tokenizer", f"kind=hf_auto,model={tokenizer_dir}",
              "--data", f"kind=synthetic_text,prompt_tokens={INPUT},output_tokens={OUTPUT}",
              "--profile", "kind=concurrent,streams=2", "--constraint", f"kind=max_requests,count={PROMPTS}",
              "--output", f"kind=json,path={tmp_path / 'g.json'}", "--disable-console-interactive"],
             tmp_path / "guidellm.log")
        srv = server_means(s)
    m = json.loads((tmp_path / "g.json").read_text())["benchmarks"][0]["metrics"]
    assert m["request_totals"]["successful"] == PROMPTS == srv.requests and m["request_totals"]["errored"] == 0
    assert m["prompt_token_count"]["successful"]["total_sum"] == srv.prompt_tokens == INPUT * PROMPTS  # asked = served
    assert_close(m["time_to_first_token_ms"]["successful"]["mean"] / 1e3, srv.ttft, "guidellm mean TTFT")
    # guidellm's ITL: the mean gap between tokens after the first (equal lengths here: the mean per-request TPOT);
    # its own "TPOT" divides all the latency by the tokens
    assert_close(m["inter_token_latency_ms"]["successful"]["mean"] / 1e3, srv.tpot, "guidellm mean ITL (TPOT)")


@pytest.mark.slow
def test_aiperf(tokenizer_dir, tmp_path):
    """NVIDIA's AIPerf (the successor of genai-perf), streaming completions with the exported
    tokenizer: every request succeeds, the server's usage is the prompt it asked, and its mean TTFT and
    ITL are the server's simulated ones once the pace is divided out."""
    aiperf = executable("aiperf", "CENT_TEST_AIPERF")
    if aiperf is None:
        pytest.skip("aiperf is not installed (set CENT_TEST_AIPERF to its executable)")
    with paced_server() as s:
        _run([aiperf, "profile", "--model", "tiny", "--url", s.url, "--endpoint-type", "completions",
              "--streaming", "--tokenizer", str(tokenizer_dir), "--synthetic-input-tokens-mean", str(INPUT),
              "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(OUTPUT),
              "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
              "--concurrency", "2",
              "--request-count", str(PROMPTS), "--random-seed", "0", "--ui-type", "none",
              "--output-artifact-dir", str(tmp_path / "aiperf")], tmp_path / "aiperf.log",
             # AIPerf 0.13 in HF offline mode looks a tokenizer up in the hub cache even when it is a local
             # directory, and fails; online it loads the directory as is (no download: it is a path)
             offline=False)
        srv = server_means(s)
    m = json.loads(next((tmp_path / "aiperf").rglob("profile_export_aiperf.json")).read_text())
    assert m["request_count"]["avg"] == PROMPTS == srv.requests and not m["error_summary"]  # successful, no errors
    # asked = served (AIPerf writes prompts of INPUT - 1 tokens of text; the server's BOS makes INPUT), and the
    # usage it read back is what the server counted
    assert m["total_usage_prompt_tokens"]["avg"] == srv.prompt_tokens == INPUT * PROMPTS
    assert m["output_sequence_length"]["avg"] == OUTPUT
    assert_close(m["time_to_first_token"]["avg"] / 1e3, srv.ttft, "aiperf mean TTFT")
    # AIPerf's ITL: (latency - TTFT) / (tokens - 1) per request, i.e. the server's TPOT
    assert_close(m["inter_token_latency"]["avg"] / 1e3, srv.tpot, "aiperf mean ITL (TPOT)")
