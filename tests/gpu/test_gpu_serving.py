"""GPUs through the engine: vLLM's batching, the same lifecycle, and times from `GpuTimer`."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from cent_serve.bench.report import summarize
from cent_serve.bench.runner import run_in_process
from cent_serve.bench.request import Request as TraceRequest
from cent_serve.config import CentConfig, GpuConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.gpu.timing import GpuTimer
from cent_serve.model import load_weights
from cent_serve.model.sampling import SamplingParams
from cent_serve.request import RequestParams

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)
GREEDY = SamplingParams(temperature=0.0)


def _gpu_cfg(model=TINY, count=1, numerics="full", **gpu) -> CentConfig:
    return CentConfig(model=model, numerics=numerics, gpu=GpuConfig(kind="a100-80gb", count=count, **gpu))


def _run(eng: Engine) -> None:
    while eng.has_work():
        eng.step()


def test_greedy_tokens_equal_on_cent_and_on_gpus():
    """Full numerics: the GPU side runs the reference model, so both serve the same tokens."""
    prompts = [list(range(3, 3 + n)) for n in (5, 40, 17)]
    outs = []
    for cfg in (CentConfig(model=TINY, parallel=ParallelConfig(8, 2, 4), numerics="full"), _gpu_cfg(count=2)):
        eng = Engine(cfg, weights=WEIGHTS)
        reqs = [eng.add_request(p, RequestParams(max_tokens=6, ignore_eos=True, sampling=GREEDY)) for p in prompts]
        _run(eng)
        outs.append([r.output_ids for r in reqs])
    assert outs[0] == outs[1]


def test_one_request_times_are_the_timer_steps():
    """A lone request: the prefill is one step of the whole prompt (under the token budget), each
    decode one step of one token; TTFT and TPOT are those steps' times exactly."""
    cfg = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off")
    eng = Engine(cfg)
    P, n = 300, 5
    req = eng.add_request(list(range(3, 3 + P)), RequestParams(max_tokens=n, ignore_eos=True))
    _run(eng)
    t = eng.timer
    prefill = t.step_s(0, [P], [0], 1)
    decodes = [t.step_s(0, [1], [P + i], 1) for i in range(n - 1)]
    assert req.first_token_s - req.arrival_s == pytest.approx(prefill, rel=1e-12)
    assert req.finish_s - req.first_token_s == pytest.approx(sum(decodes), rel=1e-12)
    assert req.energy_j == pytest.approx(t.power_w * (prefill + sum(decodes)), rel=1e-9)


@pytest.mark.parametrize("gpu", [True, False])
def test_a_request_sent_after_a_reply_arrives_after_it_and_waits_for_nothing(gpu):
    """A client that waits for each reply: the next request (no arrival given, as a live server adds
    it) arrives at or after the last finish, and an idle system gives it the first one's TTFT (it
    arrived at the last round's start: a GPU, busy to that round's end, charged it that step)."""
    cfg = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off") if gpu else \
        CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    eng = Engine(cfg)
    reqs = []
    for _ in range(3):
        reqs.append(eng.add_request(list(range(3, 40)), RequestParams(max_tokens=4, ignore_eos=True)))
        _run(eng)
    for before, after in zip(reqs, reqs[1:]):
        assert after.arrival_s >= before.finish_s
        assert after.first_token_s - after.arrival_s == pytest.approx(reqs[0].first_token_s - reqs[0].arrival_s,
                                                                      rel=1e-12)


def test_token_budget_chunks_prefills_and_keeps_decodes():
    """max_num_batched_tokens: decodes first, then prompt chunks in what is left; no step exceeds it."""
    cfg = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off", max_num_batched_tokens=64, max_num_seqs=8)
    eng = Engine(cfg)
    first = eng.add_request(list(range(3, 13)), RequestParams(max_tokens=40, ignore_eos=True))
    eng.step()  # its 10-token prefill
    late = [eng.add_request(list(range(3, 3 + 100)), RequestParams(max_tokens=3, ignore_eos=True)) for _ in range(2)]
    sizes = []
    while eng.has_work():
        out = eng.scheduler.schedule(eng.now_s)
        steps = [n for rr in out.rounds for _, n in rr.steps]
        sizes.append(sum(steps))
        assert sum(steps) <= 64
        if not first.is_finished:
            assert any(q is first and n == 1 for rr in out.rounds for q, n in rr.steps)  # never starved
        eng._update(out, eng._run(out))
    assert max(sizes) == 64  # the budget was used up by chunks
    assert all(len(r.output_ids) == 3 for r in late) and len(first.output_ids) == 40


def test_many_sequences_per_step_and_kv_admission():
    """vLLM batches: one step holds many sequences; admission stops where the GPU's KV room ends."""
    cfg = _gpu_cfg(model=model_preset("llama2-70b"), count=4, numerics="off")
    eng = Engine(cfg)
    room = eng.timer.kv_tokens()
    per = room // 3001 + 5  # more 3000-token prompts than fit at once
    reqs = [eng.add_request(list(range(3, 3 + 3000)), RequestParams(max_tokens=1000, ignore_eos=True))
            for _ in range(per)]
    most = 0
    while eng.has_work():
        eng.step()
        most = max(most, eng.scheduler.num_running)
        used = sum(eng.scheduler._held.values()) * cfg.scheduler.kv_block_tokens
        assert used <= room
    assert 1 < most < per and all(len(r.output_ids) == 1000 for r in reqs)


def test_replay_metrics_and_status():
    cfg = _gpu_cfg(model=model_preset("llama2-70b"), count=8, numerics="off", tp=4)  # two replicas of tp 4
    trace = [TraceRequest(str(i), 0.05 * i, 200 + 7 * i, 50 + i) for i in range(40)]
    result = run_in_process(cfg, trace, progress=False)
    s = summarize(result)
    assert s["completed"] == 40 and s["failed"] == 0
    assert result.status["hardware"] == "gpu:a100-80gb:8"
    assert result.status["mapping"]["replicas"] == 2 and result.status["mapping"]["mode"] == "gpu"
    assert {d["replica"] for d in result.devices} == {0, 1} and len(result.devices) == 8
    assert s["energy_j"] > 0 and s["output_throughput"] > 0


def test_refused_before_start_when_the_model_does_not_fit():
    from cent_serve.preflight import check_runnable
    with pytest.raises(ValueError, match="does not fit.*more GPUs"):
        check_runnable(_gpu_cfg(model=model_preset("llama2-70b"), count=1, numerics="off"))


def test_cli_hardware_flag_and_compare(tmp_path):
    """`cent bench run --hardware gpu:...` and `cent bench compare` from the command line."""
    run = subprocess.run([sys.executable, "-m", "cent_serve.cli", "bench", "run", "--model", "llama2-7b",
                          "--hardware", "gpu:h100-80gb:1", "--synthetic", "poisson", "--rate", "4",
                          "--num-requests", "12", "--out", str(tmp_path / "run"), "--no-plots"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["gpu"]["kind"] == "h100-80gb"
    cmp = subprocess.run([sys.executable, "-m", "cent_serve.cli", "bench", "compare", "--model", "llama2-7b",
                          "--devices", "8", "--pp", "32", "--gpu", "a100-80gb:1", "--synthetic", "poisson",
                          "--rate", "2", "--num-requests", "10", "--rates", "1,4", "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, timeout=300)
    assert cmp.returncode == 0, cmp.stderr
    out = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert out["cent"]["completed"] == out["gpu"]["completed"] == 10
    assert {r["metric"] for r in out["table"]} >= {"TTFT p50", "TPOT p99", "E2E p99", "energy per token"}
    for png in ("compare_cdfs.png", "compare_sweep.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "cent_serve.cli", "bench", "run", "--hardware", "gpu:v100:2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--hardware 'gpu:v100:2' is invalid" in bad.stderr
    assert "Traceback" not in bad.stderr


def _times(cfg: CentConfig) -> list[tuple]:
    eng = Engine(cfg, weights=WEIGHTS if cfg.resolved_numerics == "full" else None)
    reqs = [eng.add_request(list(range(3, 3 + n)), RequestParams(max_tokens=7, ignore_eos=True), arrival_s=0.001 * i)
            for i, n in enumerate((60, 5, 33, 90, 12))]
    _run(eng)
    return [(r.first_token_s, r.finish_s, r.energy_j) for r in reqs]


def test_timing_does_not_depend_on_the_numerics():
    """The same trace on GPUs with full numerics and timing only: identical times and energy."""
    cfg = dict(count=2, max_num_batched_tokens=48, max_num_seqs=4)
    assert _times(_gpu_cfg(numerics="full", **cfg)) == _times(_gpu_cfg(numerics="off", **cfg))


def test_pipeline_parallel_gpus():
    """pp 2 x tp 1: a lone request's TTFT is stage 0, the hop, stage 1; two lanes, each with its own
    token budget; full numerics still gives the CENT tokens."""
    cfg = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off", count=2, pp=2)
    eng = Engine(cfg)
    assert eng.scheduler.lanes_per_replica == 2 and eng.timer.mapping.stage_layers == (16, 16)
    req = eng.add_request(list(range(3, 103)), RequestParams(max_tokens=2, ignore_eos=True))
    _run(eng)
    t = eng.timer
    hop = 30e-6 + 100 * 4096 * 2 / 300e9  # the link's latency, then 100 tokens' bf16 activations over NVLink 3
    assert t.hop_s(100) == pytest.approx(hop, rel=1e-12)
    want = t.step_s(0, [100], [0], 1) + hop + t.step_s(1, [100], [0], 1)
    assert req.first_token_s == pytest.approx(want, rel=1e-12)
    budget = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off", count=2, pp=2, max_num_batched_tokens=64,
                      max_num_seqs=8)
    eng = Engine(budget)
    for _ in range(4):
        eng.add_request(list(range(3, 203)), RequestParams(max_tokens=2, ignore_eos=True))
    out = eng.scheduler.schedule(0.0)
    per_lane = [sum(n for _, n in lane) for rr in out.rounds for lane in rr.plan.layout.seqs]
    assert per_lane == [64, 64]  # each micro-batch fills its own budget


@pytest.mark.parametrize("kind, seqs, tokens", [("a100-80gb", 256, 2048), ("a100-80gb-pcie", 256, 2048),
                                                  ("h100-80gb", 1024, 8192)])
def test_batching_defaults_are_vllm_s_for_the_kind(kind, seqs, tokens):
    """vLLM's OpenAI server picks its batch by GPU (A100s and GPUs under 70 GiB: 256 sequences and
    2,048 tokens a step; H100s: 1,024 and 8,192); a value set is kept, and the budget must hold a
    decode of every sequence it allows."""
    eng = Engine(CentConfig(model=TINY, numerics="off", gpu=GpuConfig(kind=kind, count=1)))
    assert (eng.scheduler.seqs_per_lane, eng.scheduler.max_batched_tokens) == (seqs, tokens)
    g = GpuConfig(kind=kind, count=1, max_num_seqs=8, max_num_batched_tokens=64)
    assert (g.num_seqs, g.num_batched_tokens) == (8, 64)
    with pytest.raises(ValueError, match="gpu.max_num_batched_tokens=512 is invalid: use at least 600 tokens"):
        GpuConfig(kind=kind, count=1, max_num_seqs=600, max_num_batched_tokens=512)
    if seqs > 512:  # the kind's own sequences count too
        with pytest.raises(ValueError, match=f"gpu.max_num_batched_tokens=512 is invalid: use at least {seqs} tokens"):
            GpuConfig(kind=kind, count=1, max_num_batched_tokens=512)
    with pytest.raises(ValueError, match=f"gpu.max_num_seqs=9000 is invalid: use at most {tokens}, {kind}'s default"):
        GpuConfig(kind=kind, count=1, max_num_seqs=9000)  # it named gpu.max_num_batched_tokens=0, a field not set


def test_sliding_window_on_gpus():
    """A windowed model: a decode step past the window costs what one at the window costs, and the
    KV a sequence reserves stops at the window + a step's budget + a block."""
    m = dataclasses.replace(model_preset("mistral-7b"))
    cfg = _gpu_cfg(model=m, numerics="off")
    t = GpuTimer(cfg)
    w = m.sliding_window
    assert t.step_s(0, [1], [w], 1) == t.step_s(0, [1], [4 * w], 1) > t.step_s(0, [1], [w // 2], 1)
    assert cfg.kv_tokens_cap == w + 2048 + cfg.scheduler.kv_block_tokens
    # the (token, position) pairs attention scores, counted one token at a time: the i-th new token of a
    # sequence with c cached sees its c + i positions, at most w (the reference model's mask, `hidden_keys`,
    # agrees); a prompt chunk past the window was charged w + new (new + 1) / 2 a token's worth, and a decode
    # step there w + 1
    from cent_serve.model.layers import hidden_keys

    for new, cached in (([1], [w]), ([1], [5 * w]), ([2048], [w + 100]), ([2048], [3000]), ([300, 1, 7], [0, w - 1, w - 3])):
        pairs = sum(min(c + i, w) for n, c in zip(new, cached) for i in range(1, n + 1))
        assert pairs == sum(int((~hidden_keys(c, n, c + n, w)).sum()) for n, c in zip(new, cached))
        want = t.parts(0, sum(new), sum(min(c, w) + n for n, c in zip(new, cached)), pairs)
        assert t.step(0, new, cached) == want, (new, cached)


@pytest.mark.parametrize("name, pp", [("mistral-7b", 1), ("gemma-2-9b", 1), ("gemma-2-9b", 2)])
def test_a_windowed_static_batch_is_its_steps_each_block_in_its_window(name, pp):
    """`cent simulate --hardware gpu:...` on a windowed model whose prompt + decode passes the window
    (Mistral's on every block, Gemma 2's on every other one) was refused ("the static batch assumes
    every position is attended"); the batch is now the engine's steps: its prefill one step of the
    prompts, its decode one step a token, each stage's time `step` charges for the batch, the stages in
    turn with a hop between them."""
    m = model_preset(name)
    cfg = _gpu_cfg(model=m, numerics="off", count=pp, pp=pp)
    t = GpuTimer(cfg)
    batch, prompt, decode = 3, m.sliding_window - 40, 100  # the decode passes the window
    r = t.static_batch(batch, prompt, decode)

    def trip(new: int, cached: int) -> float:  # one batch through every stage
        return sum(t.step(s, [new] * batch, [cached] * batch, batch).total_s
                   for s in range(pp)) + (pp - 1) * t.hop_s(batch * new)

    assert r["prefill_s"] == pytest.approx(trip(prompt, 0), rel=1e-12)
    assert r["decode_s"] == pytest.approx(sum(trip(1, prompt + i) for i in range(decode)), rel=1e-12)
    whole = GpuTimer(_gpu_cfg(model=dataclasses.replace(m, sliding_window=0, layer_types=()), numerics="off",
                              count=pp, pp=pp)).static_batch(batch, prompt, decode)
    assert r["prefill_s"] == whole["prefill_s"] and r["decode_s"] < whole["decode_s"]  # the window bites late


def test_compare_refuses_a_gpu_cent_side_and_names_a_bad_gpu(tmp_path, capsys):
    """In this process (a traceback would be raised here): `cent bench compare` as a user runs it is
    test_cli_hardware_flag_and_compare's, a subprocess."""
    from cent_serve.cli import main

    for extra, msg in ((["--set", "gpu.count=2"], "gpu.count=2 makes the CENT side GPUs"),
                       (["--gpu", "v100:2"], "--gpu 'v100:2' is invalid"),
                       (["--gpu", "a100-80gb:4", "--set", "gpu.kind=h100-80gb"],  # it ran the A100s without a word
                        "gpu.kind='h100-80gb' is invalid with --gpu a100-80gb:4")):
        capsys.readouterr()
        try:
            code = main(["bench", "compare", "--numerics", "off", "--num-requests", "2", "--out", str(tmp_path), *extra])
        except SystemExit as exc:  # argparse's own errors exit from inside the parser
            code = exc.code
        err = capsys.readouterr().err
        assert code != 0 and msg in err and "Traceback" not in err, err


def test_cent_flags_on_gpus_are_named_not_checked_against_the_model(caplog):
    """On GPUs the CENT mapping, devices and Ray flags are not read: a run says which it ignores (they
    ran without a word) and does not refuse them against the model (`--pp 80` on a 32-layer model
    was refused as a CENT mapping)."""
    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--devices", "32", "--pp", "80",
                 "--set", "device.clock_hz=1e9", "--set", "gpu.memory_utilization=0.9"]) == 0
    warned = [r.getMessage() for r in caplog.records if "CENT's, not read on" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("--devices 32, --pp 80, --set device.clock_hz=1e9: CENT's")
    caplog.clear()
    for hw in (["--hardware", "gpu:a100-80gb:1"], ["--set", "gpu.count=1"]):  # the paper's 8 devices: not given
        assert main(["simulate", "--model", "llama2-7b", *hw]) == 0
        assert "CENT's, not read" not in caplog.text


@pytest.mark.parametrize("model, tp, says", [
    ("qwen2.5-7b", 7, "gpu.tp=7 does not divide the model's 4 KV heads, nor is it a multiple of them"),
    ("qwen2.5-7b", 3, "gpu.tp=3 does not divide the model's 28 attention heads"),
    ("tiny", 16, "gpu.tp=16 does not divide the model's 8 attention heads"),
])
def test_gpu_tensor_parallel_splits_what_vllm_splits(model, tp, says):
    """vLLM's tensor parallelism needs tp to divide the query heads, the MLP's width, and the KV heads
    or be a multiple of them; only the query heads were checked (qwen2.5-7b ran at tp 7)."""
    with pytest.raises(ValueError, match=says.replace(" does", rf" \(the GPUs of --hardware gpu:a100-80gb:{tp}\) does")
                       + r".*use --hardware gpu:a100-80gb:\d+"):
        GpuTimer(_gpu_cfg(model=model_preset(model), count=tp, numerics="off"))
    with pytest.raises(ValueError, match=says + r".*use a tp such as \d+"):
        GpuTimer(_gpu_cfg(model=model_preset(model), count=tp, tp=tp, numerics="off"))
    m = dataclasses.replace(model_preset("tiny"), intermediate_size=690)  # heads divide by 4, the width does not
    with pytest.raises(ValueError, match="does not divide the MLP's width of 690.*--hardware gpu:a100-80gb:2, or "
                       "--set gpu.tp=2 to run the 4 GPUs as 2 data-parallel replicas$"):
        GpuTimer(_gpu_cfg(model=m, count=4, numerics="off"))
    assert GpuTimer(_gpu_cfg(model=model_preset("tiny"), count=4, numerics="off")).tp == 4  # 2 KV heads, copied


def test_a_tp_the_heads_refuse_names_the_replicas_that_keep_every_gpu():
    """Qwen2.5-0.5B's 14 heads on gpu:a100-80gb:4 (tp 4 from the count): the fix offered only 2 GPUs
    (:2); a serving engineer with 4 runs them as 2 replicas of tp 2, which `gpu.tp` gives (vLLM's data
    parallelism). Named for the largest such tp > 1 that divides the count (6 GPUs on 32 heads: tp 2, not 4);
    3 GPUs (tp 2 would leave one idle) get the counts alone."""
    m = dataclasses.replace(model_preset("tiny"), num_heads=14, num_kv_heads=2, hidden_size=14 * 16,
                            head_dim=16, intermediate_size=4864)
    with pytest.raises(ValueError) as info:
        GpuTimer(_gpu_cfg(model=m, count=4, numerics="off"))
    assert str(info.value).endswith("does not divide the model's 14 attention heads (a tensor-parallel group splits "
                                    "them, as vLLM does): use --hardware gpu:a100-80gb:2, or --set gpu.tp=2 to run "
                                    "the 4 GPUs as 2 data-parallel replicas"), info.value
    assert GpuTimer(_gpu_cfg(model=m, count=4, tp=2, numerics="off")).mapping.replicas == 2  # the fix runs
    with pytest.raises(ValueError) as info:
        GpuTimer(_gpu_cfg(model=m, count=3, numerics="off"))
    assert str(info.value).endswith("use --hardware gpu:a100-80gb:2"), info.value
    # 6 GPUs on 32 heads: tp 4 (the nearest below) would leave 2 idle, tp 2 keeps all 6 as 3 replicas
    with pytest.raises(ValueError) as info:
        GpuTimer(_gpu_cfg(model=model_preset("llama3.2-1b"), count=6, numerics="off"))
    assert str(info.value).endswith("use --hardware gpu:a100-80gb:4 or :8, or --set gpu.tp=2 to run the 6 GPUs as 3 "
                                    "data-parallel replicas"), info.value
    assert GpuTimer(_gpu_cfg(model=model_preset("llama3.2-1b"), count=6, tp=2, numerics="off")).mapping.replicas == 3


@pytest.mark.parametrize("args, says", [
    # tp from --hardware's count: the nearest counts that fit, as the flag takes them
    (["simulate", "--hardware", "gpu:a100-80gb:3"], "gpu.tp=3 (the GPUs of --hardware gpu:a100-80gb:3) does not "
     "divide the model's 64 attention heads (a tensor-parallel group splits them, as vLLM does): use --hardware "
     "gpu:a100-80gb:2 or :4"),
    (["simulate", "--hardware", "gpu:a100-80gb:6", "--set", "gpu.pp=2"], "gpu.tp=3 (the GPUs of --hardware "
     "gpu:a100-80gb:6 over gpu.pp=2 stages) does not divide the model's 64 attention heads (a tensor-parallel group "
     "splits them, as vLLM does): use --hardware gpu:a100-80gb:4 or :8"),
    (["bench", "compare", "--devices", "32", "--gpu", "a100-80gb:3"], "gpu.tp=3 (the GPUs of --gpu a100-80gb:3) "
     "does not divide the model's 64 attention heads (a tensor-parallel group splits them, as vLLM does): use --gpu "
     "a100-80gb:2 or :4"),
    # the user's own tp: another tp, and the counts it takes
    (["simulate", "--hardware", "gpu:a100-80gb:6", "--set", "gpu.tp=6"], "gpu.tp=6 does not divide the model's 64 "
     "attention heads (a tensor-parallel group splits them, as vLLM does): use a tp such as 4, e.g. --set gpu.tp=4 "
     "with gpu.count a multiple of tp x pp = 4"),
    # GPUs too few for the weights or the KV: compare's flag (was "--gpu KIND:N, or --gpu KIND:N with
    # compare" and "gpu:KIND:N", a reworded --hardware message)
    (["bench", "compare", "--devices", "32", "--gpu", "a100-80gb:1"], "llama2-70b does not fit on 1 x a100-80gb: pp 1 "
     "x tp 1: a GPU of stage 0 holds 138.0 GB of weights in 80 GB x gpu.memory_utilization=0.9: use more GPUs (--gpu "
     "KIND:N)"),
    (["simulate", "--hardware", "gpu:a100-80gb:1"], "llama2-70b does not fit on 1 x a100-80gb: pp 1 x tp 1: a GPU of "
     "stage 0 holds 138.0 GB of weights in 80 GB x gpu.memory_utilization=0.9: use more GPUs (--hardware gpu:KIND:N)"),
    (["bench", "compare", "--devices", "32", "--gpu", "a100-80gb:2", "--set", "gpu.memory_utilization=0.865"],
     "llama2-70b on 2 x a100-80gb: pp 1 x tp 2 does not fit: the KV of 1 x 4096 tokens needs 256 blocks of 16 tokens, "
     "the GPUs hold 85 after the weights in gpu.memory_utilization=0.865 of their memory: use more GPUs (--gpu "
     "KIND:N), a larger --set gpu.memory_utilization=F, or a shorter context with --set model.max_seq_len=N (at most "
     "1360 tokens at 1 sequence)"),
])
def test_a_gpu_refusal_names_the_flag_that_set_the_gpus(args, says, capsys, tmp_path):
    """A tp taken from --hardware gpu:KIND:N's count was fixed with --set gpu.tp, which the user never gave,
    "with a multiple of it GPUs"; the fix is the nearest counts that fit. Each fix names the GPUs as the
    command the user ran does (`cent bench compare`: --gpu KIND:N)."""
    from cent_serve.cli import main
    assert main([*args, "--model", "llama2-70b", "--numerics", "off"]
                + (["--out", str(tmp_path / "out")] if args[0] == "bench" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.split("error: ", 1)[1].strip() == says, err


def test_simulate_says_where_its_batch_came_from(capsys):
    """`cent simulate --hardware gpu:...` prints the static batch it ran and why: the largest that
    fits when --batch is not given, --batch when it is; the figures are the timer's at that batch."""
    from cent_serve.cli import main
    from cent_serve.gpu.timing import GpuTimer

    assert main(["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1"]) == 0
    t = GpuTimer(_gpu_cfg(model=model_preset("llama2-7b"), numerics="off", count=1))
    fits = t.max_batch(512 + 3584)
    assert f"a static batch of {fits} (the largest that fits" in capsys.readouterr().out
    assert main(["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--batch", "8"]) == 0
    assert "a static batch of 8 (--batch)" in capsys.readouterr().out
    assert main(["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--batch", "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["end2end"]["throughput_tok_s"]
    assert got == pytest.approx(t.phase_figures(8, 512, 3584)["end2end"]["throughput_tok_s"], rel=1e-12)


def test_simulate_on_gpus_refuses_cent_closed_form_flags(capsys):
    """--convention and --seqlen-gap shape CENT's closed form only; the GPU model ran with them unread."""
    from cent_serve.cli import main

    gpu = ["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1"]
    for extra, said in ((["--convention", "artifact"], "--convention artifact is how CENT's closed form paces"),
                        (["--seqlen-gap", "256"], "--seqlen-gap 256 spaces the contexts CENT's closed form averages")):
        assert main(gpu + extra) == 2, extra
        err = capsys.readouterr().err
        assert said in err and "drop --" in err and len(err.strip().splitlines()) == 1, err
    assert main(["simulate", "--model", "llama2-7b", "--prompt", "512", "--decode", "3584", "--seqlen-gap", "256",
                 "--json"]) == 0  # CENT reads both
    assert json.loads(capsys.readouterr().out)["workload"]["seqlen_gap"] == 256


def test_a_gpu_busy_to_the_end_reads_busy_1_not_more():
    """The engine clock is the last round's start; a GPU busy from 0 to its last step's end has
    more busy time than that clock, and its busy fraction is taken to the step's end."""
    from cent_serve.executor.base import busy_fraction
    eng = Engine(_gpu_cfg(model=model_preset("llama2-7b"), numerics="off"))
    for _ in range(4):
        eng.add_request(list(range(3, 203)), RequestParams(max_tokens=8, ignore_eos=True), arrival_s=0.0)
    _run(eng)
    (dev,) = eng.device_stats()
    assert dev["busy_s"]["gpu"] > eng.now_s  # the case: the naive busy / clock is over 1
    assert busy_fraction(dev, eng.now_s) == pytest.approx(1.0, rel=1e-12)


def test_plot_titles_count_gpus_and_devices_in_words():
    """"1 GPUs used" read wrong: the count agrees with its noun."""
    from cent_serve.bench.report import mapping_text

    one = dict(mode="gpu", pp=1, tp=1, devices_used=1, replicas=1)
    assert mapping_text({"mapping": one}) == "gpu pp 1 x tp 1, 1 GPU used"
    assert mapping_text({"mapping": dict(one, tp=4, devices_used=4)}).endswith(", 4 GPUs used")
    assert mapping_text({"mapping": dict(mode="pipeline", pp=8, tp=1, devices_used=8)}).endswith(", 8 devices used")


def test_a_gpu_round_charges_its_lane_and_splits_it_by_tokens():
    """One round of a lane holding a 2,000-token prompt chunk and a decode on a tp 2 pair (a step bound
    by compute): the lane ends after one step with the LM head at both sequences' last positions (vLLM's,
    mid-prompt too); its energy, both GPUs at serving power for the step, goes to the sequences by their
    tokens (2000 : 1); each GPU's stats hold its half; the fabric counts two all-reduces a layer of the
    round's tokens' bf16 activations. (The engine's tests run one sequence a lane or compare runs with
    each other: an equal split, the lane's energy on each GPU, one LM-head row, half the all-reduce
    bytes all kept them green.)"""
    import numpy as np

    from cent_serve.gpu.executor import GpuExecutor
    from cent_serve.messages import Layout, RoundPlan

    cfg = _gpu_cfg(model=model_preset("llama2-7b"), numerics="off", count=2)
    ex = GpuExecutor(cfg)
    t = ex.timer
    assert (t.tp, t.pp) == (2, 1)
    ex.run(RoundPlan(Layout((0,), (((7, 20),),)), np.zeros(1), 0, {7: 0}))  # sequence 7: 20 tokens cached
    before = [d["energy_j"] for d in ex.stats()["devices"]]
    out = ex.run(RoundPlan(Layout((0,), (((3, 2000), (7, 1)),)), np.array([1.0]), 1, {3: 0}))
    step = t.step_s(0, [2000, 1], [0, 20], 2)
    assert step > t.step_s(0, [2000, 1], [0, 20], 1)  # compute-bound: each LM-head row costs time
    assert out.ready_s.tolist() == [pytest.approx(1.0 + step, rel=1e-12)]
    lane_j = 2 * t.power_w * step
    assert out.energy_j.tolist() == pytest.approx([lane_j * 2000 / 2001, lane_j / 2001], rel=1e-12)
    devices = ex.stats()["devices"]
    assert [d["energy_j"] - b for d, b in zip(devices, before)] == pytest.approx([lane_j / 2] * 2, rel=1e-9)
    assert ex.stats()["fabric"]["wire_bytes"] == 2 * 32 * (20 + 2001) * 4096 * 2  # both rounds' tokens


def test_a_context_the_gpus_cannot_hold_names_the_longest_they_can():
    """A long-context config.json (Mistral-Nemo's 1,024,000 tokens on one A100) was refused with "a shorter
    context with --set model.max_seq_len=N" and no N; vLLM's refusal names the tokens its KV cache holds.
    The N named is the longest that fits: it runs, one token more is refused again."""
    import re

    from cent_serve.config import apply_overrides, build_config
    from cent_serve.preflight import check_gpus_hold
    cfg = build_config("llama3.1-8b", hardware="gpu:a100-80gb:1", numerics="off",
                       overrides=["gpu.memory_utilization=0.3"])  # 24 GB: 16 of weights, ~60k tokens of KV
    with pytest.raises(ValueError) as info:
        check_gpus_hold(cfg)
    largest = int(re.search(r"--set model.max_seq_len=N \(at most (\d+) tokens at 1 sequence\)$", str(info.value)).group(1))
    assert largest % cfg.scheduler.kv_block_tokens == 0 and 50_000 < largest < 131_072
    check_gpus_hold(apply_overrides(cfg, [f"model.max_seq_len={largest}"]))
    with pytest.raises(ValueError, match=f"at most {largest} tokens at 1 sequence"):
        check_gpus_hold(apply_overrides(cfg, [f"model.max_seq_len={largest + 1}"]))
    # cent simulate's context is --prompt + --decode, which model.max_seq_len does not move: named so
    from cent_serve.paper import closed_form
    with pytest.raises(ValueError) as info:
        closed_form(build_config("llama3.1-8b", hardware="gpu:a100-80gb:1", numerics="off"), 100_000, 30_000, batch=64)
    assert str(info.value).endswith("or a shorter context with a smaller --prompt or --decode (at most 6656 tokens at "
                                    "64 sequences)"), info.value
    # more sequences than blocks: no context fits them, so no shorter context is offered
    with pytest.raises(ValueError) as info:
        check_gpus_hold(cfg, 1024, batch=100_000, batch_flag="--batch")
    assert str(info.value).endswith("use more GPUs (--hardware gpu:KIND:N), --batch 59 (the most of 1024 tokens that "
                                    "fit), or a larger --set gpu.memory_utilization=F"), info.value
    assert "shorter context with" not in str(info.value)


def test_a_batch_the_gpus_cannot_hold_names_the_flag_and_the_batch_that_fits(capsys):
    """The refusal said "(12 such sequences)" and "fewer sequences", not the flag the user passes: cent
    simulate's --batch. The batch it names runs; one more is refused again."""
    import re

    from cent_serve.cli import main

    gpu = ["simulate", "--model", "llama3.1-8b", "--hardware", "gpu:a100-80gb:1", "--numerics", "off",
           "--prompt", "2048", "--decode", "2048", "--set", "gpu.memory_utilization=0.3", "--json"]
    assert main([*gpu, "--batch", "64"]) == 2
    err = capsys.readouterr().err
    assert "such sequences" not in err and "fewer sequences" not in err and len(err.strip().splitlines()) == 1, err
    fits = int(re.search(r"use more GPUs \(--hardware gpu:KIND:N\), --batch (\d+) \(the most of 4096 tokens that "
                         r"fit\), a larger --set gpu.memory_utilization=F, or a shorter context", err).group(1))
    assert 1 < fits < 64
    assert main([*gpu, "--batch", str(fits)]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == fits
    assert main([*gpu, "--batch", str(fits + 1)]) == 2
    assert f"--batch {fits} (the most" in capsys.readouterr().err
    # a KV-block override caps what a replay's scheduler admits (check_gpus_hold, as check_runnable asks it): the
    # batch it holds is named too, and the context by the flags given
    from cent_serve.config import build_config
    from cent_serve.preflight import check_gpus_hold

    def capped(blocks: int):
        return build_config("llama3.1-8b", hardware="gpu:a100-80gb:1", numerics="off",
                            overrides=["gpu.memory_utilization=0.3", f"scheduler.num_kv_blocks_override={blocks}"])

    with pytest.raises(ValueError) as info:
        check_gpus_hold(capped(2000), 4096, 14, context_flag="a smaller --prompt or --decode", batch_flag="--batch")
    assert ("raise it to 3584 or more, or remove it, or use --batch 7 (the most of 4096 tokens that fit), or a shorter "
            "context with a smaller --prompt or --decode") in str(info.value)
    # an override that caps them below one sequence, on GPUs that do not hold the batch either: removing it and
    # a smaller --batch fits too (before the merge with the --batch wording 'or use fewer sequences' said so)
    with pytest.raises(ValueError) as info:
        check_gpus_hold(capped(100), 4096, 64, batch_flag="--batch")
    assert (f"raise or remove it and use more GPUs (--hardware gpu:KIND:N) or --batch {fits} (the most of 4096 tokens "
            "the GPUs hold)") in str(info.value), info.value
    # cent simulate's static batch meets no scheduler: the override is not read (as on CENT), the batch the
    # GPUs hold runs under it and the default is theirs (it took the override's 7)
    assert main([*gpu, "--batch", str(fits), "--set", "scheduler.num_kv_blocks_override=2000"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == fits
    assert main([*gpu, "--set", "scheduler.num_kv_blocks_override=2000"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == fits


def test_a_window_on_some_blocks_on_gpus_reads_each_blocks_own_keys():
    """Mistral 7B windowing alternate blocks (`model.layer_types`): a decode step at 5 windows of
    context reads, in its 16 windowed blocks, w + 1 positions' KV, not c + 1: 16 (c - w) positions
    fewer than full attention on every block; within the window the same bytes. On two stages (16
    blocks each) the same saving, each stage its own blocks'."""
    types = tuple("sliding_attention" if b % 2 else "full_attention" for b in range(32))
    m = dataclasses.replace(model_preset("mistral-7b"), layer_types=types)
    full = dataclasses.replace(m, sliding_window=0, layer_types=())
    w, c = m.sliding_window, 5 * m.sliding_window
    for pp in (1, 2):
        mixed_t, full_t = (GpuTimer(_gpu_cfg(model=x, count=pp, numerics="off", pp=pp)) for x in (m, full))
        k = mixed_t.kind

        def read(t, stage, cached):
            return t.step(0 if stage is None else stage, [1], [cached]).memory_s * k.hbm_bytes_per_s * k.mem_efficiency

        for stage in range(pp):
            windowed = sum(types[b] == "sliding_attention" for b in range(32) if b // (32 // pp) == stage)
            saved = read(full_t, stage, c) - read(mixed_t, stage, c)
            assert saved == pytest.approx(windowed * (c - w) * mixed_t.kv_read_bytes, rel=1e-9)
            assert read(mixed_t, stage, w - 1) == pytest.approx(read(full_t, stage, w - 1), rel=1e-12)
