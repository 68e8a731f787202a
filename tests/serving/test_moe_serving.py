"""Mixtures of experts behind the API and in trace replays: per-expert load in /v1/cent/status,
/metrics and the bench plots; the big presets replay a trace timing-only."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from api.server import Server
from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig
from tests.factories import tiny_model_config
from tests.serving.utils import metric, status


def test_a_moe_model_serves_with_per_expert_load_in_status_and_metrics():
    """A tiny Mixtral with real numerics on 4 devices (pp 2 x tp 2: the experts spread over each
    stage's two devices): completions answer, and the experts' token counts add up to every
    token the devices ran x blocks x k."""
    model = tiny_model_config(model_type="mixtral", num_experts=4, num_experts_per_tok=2, vocab_size=259, name="moe")
    cfg = CentConfig(model=model, parallel=ParallelConfig(4, 2, 2), numerics="full")
    cfg.server.port = 0
    with Server(cfg, "local") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        done = [client.completions.create(model="moe", prompt=p, max_tokens=5, temperature=0,
                                          extra_body={"ignore_eos": True}) for p in ("experts", "a mixture")]
        assert all(r.usage.completion_tokens == 5 for r in done)
        ran = sum(r.usage.prompt_tokens + r.usage.completion_tokens - 1 for r in done)  # the last token is not fed back
        ex = status(s.url)["experts"]
        assert ex["num_experts"] == 4 and ex["top_k"] == 2
        assert sum(ex["tokens"]) == ran * model.num_layers * 2
        assert all(0 < f < 1 for f in ex["busy_fraction"])
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "cent:expert_tokens", model_name="moe", expert="2") == ex["tokens"][2]
        assert metric(text, "cent:expert_busy_fraction", model_name="moe", expert="0") == \
            pytest.approx(ex["busy_fraction"][0], rel=1e-6)


def test_the_engines_expert_counts_are_its_tokens_through_the_router():
    """Recount by hand: every request's fed positions (its prompt and all but its last token, under
    its sequence id) through the time model's router, per expert; the engine's counts are these."""
    import numpy as np

    from cent_serve.engine import Engine
    from cent_serve.request import RequestParams
    from cent_serve.timing.experts import RoutingTable

    model = tiny_model_config(model_type="qwen3_moe", qk_norm=True, num_experts=8, num_experts_per_tok=3,
                              moe_intermediate_size=32, vocab_size=259, expert_skew=0.5)
    cfg = CentConfig(model=model, parallel=ParallelConfig(4, 2, 2), numerics="off")
    cfg.scheduler.prefill_chunk_tokens = 7  # prompts in several chunks: starts past 0
    engine = Engine(cfg)
    reqs = [engine.add_request(list(range(1, 1 + n)), RequestParams(max_tokens=m, ignore_eos=True))
            for n, m in ((20, 6), (9, 11), (33, 4))]
    seq_ids = {}
    while engine.has_work():
        engine.step()
        seq_ids.update({r.request_id: r.seq_id for r in reqs if r.seq_id >= 0})
    routing, want = RoutingTable(model), np.zeros(8, dtype=np.int64)
    for r in reqs:
        fed = len(r.prompt_ids) + len(r.output_ids) - 1
        chosen = routing.experts([seq_ids[r.request_id]], [0], [fed], range(model.num_layers))
        want += np.bincount(chosen.ravel(), minlength=8)
    assert engine.scheduler.num_preemptions == 0
    assert engine.expert_load.tokens.tolist() == want.tolist()


def test_mixtral_replays_a_trace_timing_only_with_an_experts_plot(tmp_path):
    """`cent bench run --model mixtral-8x7b --devices 32` on 200 requests of the shipped conversation
    sample (lengths capped to keep the suite short): every request completes, the experts' load is
    in the summary's status and drawn in experts.png."""
    out = tmp_path / "mx"
    assert main(["bench", "run", "--model", "mixtral-8x7b", "--devices", "32", "--num-requests", "200",
                 "--max-prompt-tokens", "256", "--max-output-tokens", "32", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["completed"] == 200 and s["failed"] == 0
    assert (out / "experts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cent_simulate_runs_a_qwen2_moe_config_json_on_cent_and_gpus(tmp_path, capsys):
    """A Qwen1.5-MoE-A2.7B-shaped config.json (no weights: timing only) through `cent simulate`: on CENT
    the shared expert is a per-token share of each block beside the router and experts; on 4 A100s the
    GPU model's phases."""
    from tests.timing.test_moe_timing import QWEN15_MOE

    hf = dict(model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
              num_attention_heads=16, num_key_value_heads=16, vocab_size=151936, max_position_embeddings=8192,
              rope_theta=1e6, rms_norm_eps=1e-6, num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
              shared_expert_intermediate_size=5632, norm_topk_prob=False, bos_token_id=151643, eos_token_id=151643)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert main(["simulate", "--model", str(tmp_path), "--numerics", "off", "--devices", "24", "--seqlen", "1024",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out["config"]["model"][k] for k in QWEN15_MOE} == QWEN15_MOE
    fig = out["moe"]
    assert (fig["num_experts"], fig["top_k"], fig["combine_ms"]) == (60, 4, 0)
    assert fig["shared_expert_ms"] == pytest.approx(19945.4 / 2e9 * 1e3, rel=1e-12)  # test_moe_timing's hand sum
    assert out["breakdown_cycles"]["shared"] == pytest.approx(19945.4, rel=1e-12)
    assert fig["shared_expert_mj"] > 0
    assert main(["simulate", "--model", str(tmp_path), "--numerics", "off", "--hardware", "gpu:a100-80gb:4",
                 "--prompt", "512", "--decode", "512", "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert gpu["mapping"] == "4 x a100-80gb: pp 1 x tp 4"
    assert all(gpu[phase]["throughput_tok_s"] > 0 for phase in ("prefill", "decoding", "end2end"))
    assert main(["simulate", "--model", str(tmp_path), "--numerics", "off", "--devices", "24", "--seqlen",
                 "1024"]) == 0
    assert "shared expert, every token: 9.97 us" in capsys.readouterr().out


def test_cent_simulate_runs_mixtral_on_32_devices(capsys):
    assert main(["simulate", "--model", "mixtral-8x7b", "--devices", "32", "--seqlen", "2048", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)["moe"]
    assert fig["top_k"] == 2 and fig["combine_ms"] == 0  # one device per block: nothing to combine
    assert fig["experts_mj"] > 10 * fig["router_mj"] > 0
    # tp 8 with 8 experts: one expert a device, a token's two experts always on two devices
    assert main(["simulate", "--model", "mixtral-8x7b", "--devices", "32", "--pp", "4", "--tp", "8", "--seqlen",
                 "2048", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)["moe"]
    assert fig["expected_busiest_load"] == 1.0 and fig["experts_ms"] == fig["one_expert_ms"]
    assert fig["combine_ms"] > 0
