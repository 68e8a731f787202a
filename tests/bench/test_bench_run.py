"""`cent bench run` in-process: figures against the timing model, determinism, saturation, outputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cent_serve.bench import FixedLengths, Request, synthetic_trace
from cent_serve.bench.report import summarize
from cent_serve.bench.runner import run_in_process
from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig, load_config, model_preset
from cent_serve.engine import Engine


def _cfg(model="tiny", devices=8, pp=0, tp=1) -> CentConfig:
    return CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp), numerics="off")


def test_one_request_trace_gives_the_timing_models_prefill_and_decode():
    cfg = _cfg("llama2-7b", 32, 32)
    P, n = 128, 33
    result = run_in_process(cfg, [Request("0", 2.5, P, n)], progress=False)
    s = summarize(result)
    timer = Engine(cfg).timer
    assert s["completed"] == 1 and s["failed"] == 0
    assert s["mean_ttft_ms"] == pytest.approx(1e3 * sum(timer.token_s(L) for L in range(1, P + 1)), rel=1e-9)
    assert s["mean_tpot_ms"] == pytest.approx(1e3 * sum(timer.token_s(L) for L in range(P + 1, P + n)) / (n - 1),
                                              rel=1e-9)
    assert s["total_output_tokens"] == n


def test_results_are_deterministic():
    def once():
        reqs = synthetic_trace(40, rate=200.0, burstiness=0.5, lengths=FixedLengths(24, 12), seed=3)
        s = summarize(run_in_process(_cfg(), reqs, progress=False), {"ttft": 5.0})
        s.pop("wall_s")
        return s
    assert once() == once()


def test_saturation_queues_in_ttft_while_tpot_stays_bounded_by_the_pipeline():
    cfg = _cfg()
    timer = Engine(cfg).timer
    light = summarize(run_in_process(cfg, synthetic_trace(30, rate=2.0, lengths=FixedLengths(32, 16), seed=1),
                                     progress=False))
    heavy = summarize(run_in_process(cfg, synthetic_trace(120, rate=1e5, lengths=FixedLengths(32, 16), seed=1),
                                     progress=False))
    single_ttft_ms = 1e3 * sum(timer.token_s(L) for L in range(1, 33))
    assert light["p99_ttft_ms"] == pytest.approx(single_ttft_ms, rel=1e-6)  # nobody waited
    assert heavy["p99_ttft_ms"] > 5 * single_ttft_ms  # 120 requests on 8 lanes: queueing
    bound_ms = 1e3 * timer.token_s(48)
    assert heavy["p99_tpot_ms"] <= bound_ms * 1.01 and light["p99_tpot_ms"] <= bound_ms * 1.01


def test_cli_writes_summary_requests_config_and_plots(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["bench", "run", "--numerics", "off", "--num-requests", "20", "--max-prompt-tokens", "64",
                 "--max-output-tokens", "16", "--goodput", "ttft:50", "tpot:1", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("completed", "failed", "request_throughput", "output_throughput", "total_token_throughput",
                "mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms",
                "mean_e2el_ms", "request_goodput", "energy_per_token_mj", "device_busy_fraction"):
        assert key in s, key
    assert s["completed"] == 20 and len(s["device_busy_fraction"]) == 8
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and all(r["finish_reason"] == "length" for r in rows)
    assert all(int(r["num_prompt_tokens"]) <= 64 and int(r["num_output_tokens"]) <= 16 for r in rows)
    assert b"\r" not in (out / "requests.csv").read_bytes()  # \n lines, not csv's default \r\n
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["name"] == "tiny" and saved["bench"]["executor"] == "local"
    from cent_serve.config import config_to_dict, load_config
    back = config_to_dict(load_config(out / "config.json"))  # it is a --config as it is
    assert back == {k: v for k, v in saved.items() if k != "bench"}
    for png in ("latency_cdf.png", "timeline.png", "utilization.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ttft" in capsys.readouterr().out


def test_requests_csv_orders_equal_arrivals_by_their_ids_as_numbers(tmp_path):
    """Rows that arrive together keep a person's order (`trace-2`, `trace-10`), not the text's."""
    from cent_serve.bench.results import write_requests_csv
    from cent_serve.bench.runner import RequestRecord
    ids = ["trace-10", "trace-2", "trace-1", "b", "a-7"]
    write_requests_csv(tmp_path / "r.csv", [RequestRecord(i, 0.5, 4) for i in ids]
                       + [RequestRecord("trace-0", 0.25, 4)])
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["request_id"] for r in rows] == ["trace-0", "a-7", "b", "trace-1", "trace-2", "trace-10"]


def test_save_detailed_writes_each_requests_itls_that_the_summary_is_made_of(tmp_path):
    """requests.csv names a request's ITL list with --save-detailed (as vLLM's benchmark saves its
    `itls`), so the summary's ITL figures can be recomputed from the file; not by default (its size)."""
    out = tmp_path / "res"
    args = ["bench", "run", "--numerics", "off", "--num-requests", "12", "--max-prompt-tokens", "64",
            "--max-output-tokens", "16", "--no-plots", "--out", str(out)]
    assert main(args) == 0
    with open(out / "requests.csv") as f:
        assert "itls_s" not in next(csv.reader(f))
    assert main(args + ["--save-detailed"]) == 0
    s = json.loads((out / "summary.json").read_text())
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    itls = [json.loads(r["itls_s"]) for r in rows]
    assert [len(x) for x in itls] == [int(r["num_output_tokens"]) - 1 for r in rows] and min(map(len, itls)) > 0
    for r, gaps in zip(rows, itls):  # the gaps add up to the time from the first token to the last
        assert sum(gaps) == pytest.approx(float(r["finish_s"]) - float(r["first_token_s"]), rel=1e-9)
    every = np.array([x * 1e3 for gaps in itls for x in gaps])
    assert s["mean_itl_ms"] == pytest.approx(every.mean(), rel=1e-12)
    assert s["p99_itl_ms"] == pytest.approx(np.percentile(every, 99), rel=1e-12)


def test_ctrl_c_keeps_the_results_of_the_requests_that_ended(tmp_path, capsys, monkeypatch):
    """A long replay stopped with Ctrl-C writes what ended before it, marked partial, and exits 130
    (it printed "interrupted" and wrote nothing); a sweep's replays still stop at once."""
    out, steps, real = tmp_path / "res", [0], Engine.step

    def step(self):
        steps[0] += 1
        if steps[0] == 400:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Engine, "step", step)
    assert main(["bench", "run", "--numerics", "off", "--num-requests", "40", "--max-prompt-tokens", "64",
                 "--max-output-tokens", "16", "--out", str(out), "--no-plots"]) == 130
    s = json.loads((out / "summary.json").read_text())
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert s["interrupted"] is True and 0 < s["completed"] == len(rows) < 40
    assert f"the results of the {len(rows)} of 40 requests that ended before Ctrl-C" in capsys.readouterr().out
    steps[0] = 0  # again, with the devices gone too (Ray's workers get the Ctrl-C): the records still count
    monkeypatch.setattr(Engine, "stats_now", lambda self: (_ for _ in ()).throw(RuntimeError("actor died")))
    assert main(["bench", "run", "--numerics", "off", "--num-requests", "40", "--max-prompt-tokens", "64",
                 "--max-output-tokens", "16", "--out", str(out)]) == 130
    assert json.loads((out / "summary.json").read_text())["completed"] == s["completed"]
    # a replay without keep_on_interrupt (a sweep's, a comparison's) lets it through
    monkeypatch.setattr(Engine, "step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_in_process(CentConfig(numerics="off"), synthetic_trace(3, rate=1.0, lengths=FixedLengths(8, 4)), progress=False)


@pytest.mark.parametrize("specs, says", [
    (["latency:5"], "--goodput 'latency:5' is invalid: use NAME:MS"),
    (["ttft:nan"], "--goodput 'ttft:nan' is invalid: the value must be milliseconds >= 0"),  # was: 0% meet nan
    (["ttft:-1"], "--goodput 'ttft:-1' is invalid: the value must be milliseconds >= 0"),
    (["ttft:5", "ttft:10"], "--goodput 'ttft:10' is invalid: ttft is given twice (also ttft:5)"),  # kept the last
])
def test_bad_goodput_spec_is_a_clear_error(capsys, specs, says):
    assert main(["bench", "run", "--goodput", *specs]) == 2
    assert says in capsys.readouterr().err


def test_sweep_finds_the_distserve_goodput(tmp_path, capsys):
    out = tmp_path / "sweep"
    # TTFT SLO of 1.2x a lone request's prefill: met at a low rate, missed once requests queue
    timer = Engine(_cfg()).timer
    slo_ms = 1.2e3 * sum(timer.token_s(L) for L in range(1, 33))
    assert main(["bench", "sweep", "--numerics", "off", "--synthetic", "poisson", "--num-requests", "80",
                 "--prompt-len", "32", "--output-len", "8", "--rates", "5,5000",
                 "--goodput", f"ttft:{slo_ms}", "tpot:1", "--out", str(out)]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    low, high = sweep["rows"]
    assert low["slo_attainment"] >= 0.9 > high["slo_attainment"]
    assert sweep["distserve_goodput_rate"] == 5.0
    assert sweep["bench"]["trace"] == "synthetic" and sweep["bench"]["rates"] == [5.0, 5000.0]
    assert sweep["bench"]["num_requests"] == 80 and sweep["bench"]["prompt_len"] == 32  # what shaped the requests
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "config.json").read_text())  # as bench run's: the resolved config, readable back
    assert config["model"]["name"] == "tiny" and config["bench"]["rates"] == [5.0, 5000.0]
    assert load_config(out / "config.json").model == _cfg().model
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == ("tiny on 8 CENT devices: pipeline pp 8 x tp 1, 8 devices used; synthetic, "
                                            "Poisson arrivals, 32 prompt + 8 output tokens; rates 5, 5000 req/s")
    assert "DistServe goodput: 5 req/s (the highest rate with 90% of its requests within the SLOs)" in captured.out
    assert "rate 5: " in captured.err and "rate 5000: " in captured.err  # each rate's replay shows its bar
    assert main(["bench", "sweep", "--numerics", "off", "--synthetic", "poisson", "--num-requests", "20",
                 "--prompt-len", "32", "--output-len", "8", "--rates", "5000", "--goodput", "ttft:0.001",
                 "--out", str(tmp_path / "again"), "--no-plots"]) == 0  # as bench run and cent sweep take it
    assert "DistServe goodput: no rate of 5000 has 90% of its requests within the SLOs" in capsys.readouterr().out
    assert (tmp_path / "again" / "sweep.json").is_file() and not (tmp_path / "again" / "sweep.png").exists()


def test_paper_runs_every_mapping_beside_the_gpu(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off",
                 "--num-requests", "12", "--max-prompt-tokens", "16", "--max-output-tokens", "4", "--rate", "100",
                 "--set", "device.clock_hz=1.5e9", "--out", str(out)]) == 0
    paper = json.loads((out / "paper.json").read_text())
    # the hardware a --set changed is recorded (paper.json named the model alone)
    assert json.loads((out / "config.json").read_text())["device"]["clock_hz"] == 1.5e9
    assert [(r["pp"], r["tp"]) for r in paper["rows"]] == [(32, 1), (1, 8), (2, 4), (4, 2), (8, 1)]
    # pp 8 x tp 1 is a pipeline of whole devices (its mapping's mode says `tensor`: blocks on all channels)
    assert [r["parallelism"] for r in paper["rows"]] == ["pipeline", "tensor", "hybrid", "hybrid", "pipeline"]
    assert all(r["completed"] == 12 and r["throughput_ratio"] > 0 for r in paper["rows"])
    assert paper["gpu_baseline"]["gpus"] == 1
    assert paper["bench"]["num_requests"] == 12 and paper["bench"]["rate"] == 100  # what shaped the requests
    assert paper["bench"]["max_prompt_tokens"] == 16 and paper["bench"]["trace"] == "sample_conv"
    assert (out / "paper.png").read_bytes()[:4] == b"\x89PNG"
    # "1.73x GPU" says against what: the artifact's measured A100, its workload, and where a modelled GPU is
    captured = capsys.readouterr()
    printed = captured.out
    assert "pp 32 tp 1: " in captured.err and "pp 8 tp 1: " in captured.err  # each mapping's replay has a bar
    assert "x GPU: against 1 A100-80GB as the CENT artifact measured it" in printed, printed
    assert "1,085 tok/s end to end" in printed and "512 + 3584" in printed and "cent bench compare" in printed


@pytest.mark.parametrize("command, checks", [
    (["bench", "sweep", "--rates", "5,50", "--no-plots"], 1),  # run_sweep's, before the trace is read; not at each rate
    (["bench", "compare", "--rates", "5,50", "--no-plots"], 2),  # each side, by the command before it reads the
    # trace (run_compare, told checked=True, not again), before either side's first replay
    (["bench", "paper", "--model", "llama2-7b", "--no-plots"], 5),  # each mapping (a mapping that cannot run is skipped)
    (["bench", "run", "--no-plots"], 1),  # in run_in_process, before its engine
    (["sweep", "--model", "llama2-7b", "--vary", "device.num_channels=16,32", "--trace", "sample_conv",
      "--no-plots"], 2),  # each point, before its replay
])
def test_a_command_checks_what_cannot_run_once(tmp_path, monkeypatch, command, checks):
    """`preflight.check_runnable` ran again in each replay a command had checked before it: bench
    compare with two rates checked each side four times, bench sweep at every rate."""
    import cent_serve.preflight as preflight

    calls = []
    memory = preflight.check_host_memory  # check_runnable's own step: counted whichever module imported it

    def counted(cfg, mp, available_bytes=None):
        calls.append(cfg.hardware)
        return memory(cfg, mp, available_bytes)
    monkeypatch.setattr(preflight, "check_host_memory", counted)
    assert main([*command, "--devices", "8", "--numerics", "off", "--num-requests", "4", "--max-prompt-tokens", "16",
                 "--max-output-tokens", "4", "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == checks, calls


@pytest.mark.parametrize("side, fits, says", [
    ("CENT", "gpu:a100-80gb:4", r"llama2-70b on 8 devices \(tensor: 1 stage x tp 8.*\) does not fit: .*16.06 GiB "
                                r"of the device's 16.00 GiB"),
    ("GPU", None, r"llama2-70b does not fit on 1 x a100-80gb"),
])
def test_a_script_sweep_or_compare_refuses_what_cannot_run(tmp_path, monkeypatch, side, fits, says):
    """run_sweep and run_compare called from a script, with no command's check before them, refuse what
    cannot run in one line (`preflight.check_runnable`), before the trace is read, any replay begins or
    any file is written. When the commands checked and passed checked=True to run_in_process, a script's
    70B on 8 devices at --pp 1 --tp 8 (a weight shard of 16.06 GiB of 16) replayed with every request failing."""
    import cent_serve.bench.compare as compare_mod
    import cent_serve.bench.sweep as sweep_mod
    from cent_serve.config import build_config

    def no_replay(*a, **kw):
        raise AssertionError("a replay began before the refusal")

    def no_trace(rate):
        raise AssertionError("the trace was read before the refusal")
    monkeypatch.setattr(sweep_mod, "run_in_process", no_replay)
    monkeypatch.setattr(compare_mod, "run_in_process", no_replay)
    cent = build_config("llama2-70b", devices=8, pp=1, tp=8, numerics="off") if side == "CENT" else \
        build_config("llama2-70b", devices=32, numerics="off")
    gpu = build_config("llama2-70b", devices=32, numerics="off", hardware=fits or "gpu:a100-80gb:1")
    requests = [Request("a", 0.0, 16, 4)]
    out = tmp_path / "out"
    if side == "CENT":
        with pytest.raises(ValueError, match=says):
            sweep_mod.run_sweep(cent, no_trace, [5.0, 50.0], {}, out / "sweep", plots=False)
    with pytest.raises(ValueError, match=says):
        compare_mod.run_compare(cent, gpu, requests, {}, out / "compare", {5.0: requests}, plots=False)
    assert not out.exists()


def test_paper_prints_why_requests_failed(tmp_path, capsys):
    """Also: --no-plots writes the tables and config.json without paper.png, as bench run, sweep and
    compare take it (bench paper had no --no-plots)."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,16,4\n0.1,5000,4\n")
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--trace",
                 str(trace), "--out", str(out), "--no-plots"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("pp ")]
    assert len(lines) == 5 and all("1 done, 1 failed (context_exceeded 1)" in x for x in lines), lines
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "paper.csv", "paper.json"]


@pytest.mark.parametrize("command", [["bench", "sweep", "--rates", "1,2"],
                                     ["bench", "paper", "--model", "llama2-7b", "--devices", "8"]])
def test_sweep_and_paper_say_once_what_the_flags_do_about_failed_requests(command, tmp_path, capsys):
    """bench run and compare print, under a context_exceeded count, that --max-prompt-tokens and
    --max-output-tokens clip the requests; bench sweep and paper printed the count alone."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,16,4\n0.1,9000,4\n")
    assert main([*command, "--numerics", "off", "--trace", str(trace), "--out", str(tmp_path / "out"),
                 "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "context_exceeded 1" in out
    fixes = [x for x in out.splitlines() if x.startswith("context_exceeded: clip the requests' lengths with "
                                                         "--max-prompt-tokens and --max-output-tokens")]
    assert len(fixes) == 1, out


@pytest.mark.parametrize("lengths, warn, raised, message", [
    ([(0, 4), (8, 0), (0, 0), (8, 4)], True, 3,
     "3 of 4 trace requests have 0 tokens (2 with an empty prompt, 2 with an empty output): sent with 1 token"),
    ([(0, 4), (8, 4)], False, 1, None),  # counted, the caller warns
    ([(8, 4), (8, 4)], True, 0, None),
])
def test_zero_token_requests_are_sent_with_one_counted_and_warned_once(caplog, lengths, warn, raised, message):
    reqs = [Request(str(i), 0.5 * i, p, o) for i, (p, o) in enumerate(lengths)]
    with caplog.at_level("WARNING", logger="cent.bench"):
        result = run_in_process(_cfg(), reqs, progress=False, warn=warn)
    warnings = [r.getMessage() for r in caplog.records if r.name == "cent.bench"]
    assert [w[:len(message or "")] for w in warnings] == ([message] if message else [])
    s = summarize(result)
    assert result.raised_to_one_token == s["raised_to_one_token"] == raised
    assert s["completed"] == len(lengths)
    assert s["total_input_tokens"] == sum(max(1, p) for p, _ in lengths)  # as sent
    assert s["total_output_tokens"] == sum(max(1, o) for _, o in lengths)


def test_cli_warns_once_for_zero_token_rows_and_reports_them(tmp_path, capsys, caplog):
    trace = tmp_path / "z.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,8,4\n0.5,0,8\n1.0,30,0\n")
    with caplog.at_level("WARNING", logger="cent.bench"):
        assert main(["bench", "sweep", "--numerics", "off", "--trace", str(trace), "--rates", "1,2,4",
                     "--out", str(tmp_path / "sweep")]) == 0
    assert [r.getMessage()[:34] for r in caplog.records] == ["2 of 3 trace requests have 0 token"]  # 3 rates, once
    caplog.clear()
    with caplog.at_level("WARNING", logger="cent.bench"):
        assert main(["bench", "run", "--numerics", "off", "--trace", str(trace), "--no-plots",
                     "--out", str(tmp_path / "run")]) == 0
    assert [r.getMessage()[:34] for r in caplog.records if r.levelname == "WARNING"] == [
        "2 of 3 trace requests have 0 token"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["raised_to_one_token"] == 2
    assert "raised to 1 token                  2" in capsys.readouterr().out


def test_requests_csv_joins_back_to_the_trace_on_its_own_clock(tmp_path, capsys):
    trace = tmp_path / "late.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n3.0,8,4\n3.5,8,4\n4.25,8,4\n")
    out = tmp_path / "res"
    assert main(["bench", "run", "--numerics", "off", "--trace", str(trace), "--start-s", "0.5", "--no-plots",
                 "--out", str(out)]) == 0
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    # --start-s 0.5 is after the first request (3.0), not on the file's clock; arrival_s is the replay's
    assert [(r["request_id"], float(r["arrival_s"]), float(r["trace_arrival_s"])) for r in rows] == [
        ("trace-1", 0.0, 3.5), ("trace-2", 0.75, 4.25)]


@pytest.mark.parametrize("args, recorded", [
    (["--trace", "{trace}", "--start-s", "0.5", "--rate", "3", "--num-requests", "3", "--max-output-tokens", "7",
      "--prompt-scale", "2"],
     dict(trace="{trace}", format="vidur", start_s=0.5, num_requests=3, time_scale=1.0, rate=3.0, prompt_scale=2.0,
          output_scale=1.0, max_prompt_tokens=None, max_output_tokens=7)),
    (["--synthetic", "gamma", "--burstiness", "0.5", "--rate", "4", "--num-requests", "3", "--prompt-len", "9",
      "--seed", "2"],
     dict(trace="synthetic", format="synthetic", start_s=0.0, num_requests=3, time_scale=1.0, rate=4.0,
          prompt_scale=1.0, output_scale=1.0, max_prompt_tokens=None, max_output_tokens=None, arrivals="gamma",
          burstiness=0.5, seed=2, prompt_len=9, output_len=128)),
])
def test_config_and_summary_record_every_option_that_shaped_the_requests(tmp_path, capsys, args, recorded):
    trace = tmp_path / "vidur.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,8,9\n0.5,8,9\n1,8,9\n2,8,9\n3,8,9\n")
    out = tmp_path / "res"
    args = [a.format(trace=trace) for a in args]
    assert main(["bench", "run", "--numerics", "off", *args, "--no-plots", "--out", str(out)]) == 0
    recorded = {k: v.format(trace=trace) if isinstance(v, str) else v for k, v in recorded.items()}
    assert json.loads((out / "config.json").read_text())["bench"] == dict(recorded, executor="local")
    assert json.loads((out / "summary.json").read_text())["bench"] == recorded


@pytest.mark.parametrize("selection", [
    ["--trace", "sample_conv", "--num-requests", "4", "--rate", "2", "--max-output-tokens", "7"],
    ["--synthetic", "gamma", "--burstiness", "0.5", "--rate", "3", "--num-requests", "4", "--prompt-len", "9",
     "--output-len", "5"],
    ["--synthetic", "poisson", "--rate", "3", "--num-requests", "4", "--prompt-len", "4:40", "--output-scale", "0.5"],
    ["--synthetic", "poisson", "--rate", "3", "--num-requests", "4", "--lengths-from", "sample_conv"],
    ["--trace", "{sharegpt}", "--synthetic", "gamma", "--burstiness", "0.5", "--rate", "3", "--prompt-scale", "0.5"],
])
def test_a_results_config_names_the_flags_that_replay_its_requests(tmp_path, caplog, monkeypatch, selection):
    """`--config results/config.json` reads the config, not its `bench` record of the requests: it
    says so, with the flags that select them again (the same record when given)."""
    import shlex

    from cent_serve.config import load_config

    sharegpt = tmp_path / "conv.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi " * i},
                                                       {"from": "gpt", "value": "ok " * i}]} for i in range(1, 5)]))
    selection = [a.replace("{sharegpt}", sharegpt.name) for a in selection]
    common = ["bench", "run", "--numerics", "off", "--no-plots"]
    monkeypatch.chdir(tmp_path)  # a relative --trace is recorded by its absolute path: the flags work anywhere
    assert main(common + selection + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "config.json").read_text())["bench"]
    if "sample_conv" in selection:  # a shipped trace by its name: its path is this install's, not another machine's
        assert first.get("trace") == "sample_conv" or first.get("lengths_from") == "sample_conv", first
    caplog.clear()
    load_config(tmp_path / "a" / "config.json")
    said = [r.getMessage() for r in caplog.records if "bench section" in r.getMessage()]
    assert len(said) == 1 and "is not read as config" in said[0]
    flags = shlex.split(said[0].split("give cent bench its flags: ", 1)[1])
    monkeypatch.chdir(tmp_path.parent)
    assert main(common + flags + ["--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["bench"] == first


def test_a_rate_sweep_s_config_names_rates_its_flag_takes(tmp_path, caplog):
    """`cent bench sweep`'s config.json records its --rates as a list: the flags the warning gives for it
    are the comma-separated numbers --rates takes (a Python list, `'[2.0, 8.0]'`, was refused), and
    they replay the same sweep."""
    import shlex

    from cent_serve.config import load_config

    common = ["bench", "sweep", "--numerics", "off", "--no-plots"]
    assert main(common + ["--num-requests", "6", "--rates", "2,8", "--out", str(tmp_path / "a")]) == 0
    caplog.clear()
    load_config(tmp_path / "a" / "config.json")
    said = [r.getMessage() for r in caplog.records if "bench section" in r.getMessage()]
    flags = shlex.split(said[0].split("give cent bench its flags: ", 1)[1])
    assert flags[flags.index("--rates") + 1] == "2.0,8.0"
    assert main(common + flags + ["--out", str(tmp_path / "b")]) == 0
    rows = [[{k: v for k, v in r.items() if k != "wall_s"}
             for r in json.loads((tmp_path / d / "sweep.json").read_text())["rows"]] for d in ("a", "b")]
    assert rows[0] == rows[1] and [r["rate"] for r in rows[0]] == [2.0, 8.0]


def test_synthetic_lengths_are_fixed_uniform_or_a_trace_s_rows(tmp_path):
    """SERVING.md's length distributions for synthetic loads: N, LO:HI (uniform, inclusive) or a
    trace's (prompt, output) rows drawn whole; every draw seeded, the arrivals the same whichever."""
    def run(name, *flags):
        assert main(["bench", "run", "--numerics", "off", "--no-plots", "--synthetic", "poisson", "--rate", "2",
                     "--num-requests", "20", *flags, "--out", str(tmp_path / name)]) == 0
        rows = list(csv.DictReader(open(tmp_path / name / "requests.csv")))
        return [(int(r["num_prompt_tokens"]), int(r["num_output_tokens"])) for r in rows], [r["arrival_s"] for r in rows]

    fixed, arrivals = run("fixed", "--prompt-len", "30", "--output-len", "7")
    assert set(fixed) == {(30, 7)}
    uniform, same = run("uniform", "--prompt-len", "10:20", "--output-len", "7")
    assert same == arrivals and {o for _, o in uniform} == {7}
    assert all(10 <= p <= 20 for p, _ in uniform) and len({p for p, _ in uniform}) > 5
    assert run("again", "--prompt-len", "10:20", "--output-len", "7")[0] == uniform  # seeded
    drawn, _ = run("drawn", "--lengths-from", "sample_conv")
    with open(Path(__file__).parents[2] / "cent_serve" / "bench" / "data" / "sample_conv.csv") as f:
        rows = {(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(f)}
    assert set(drawn) <= rows and len(set(drawn)) > 5  # whole rows: each pair is one of the trace's


def test_requests_csv_keeps_no_float_noise():
    """A trace's 1.025094 s less its first arrival (1.0) is 0.02509399999999995 as a float: the file
    writes times to the picosecond, below any simulated step, which drops the arithmetic's noise."""
    from cent_serve.bench.results import _seconds

    assert repr(1.025094 - 1.0) != "0.025094" and repr(_seconds(1.025094 - 1.0)) == "0.025094"
    assert repr(_seconds(4321.025094 - 1000.0)) == "3321.025094"
    assert _seconds(5.370012345678901) == 5.370012345679 and _seconds(3) == 3 and _seconds(None) is None


def test_the_table_starts_with_what_ran(tmp_path, capsys):
    """The terminal table named no model, hardware, mapping or trace (the plots' titles did; first-hour
    audit): its first line is the plots' title line and the trace."""
    from cent_serve.cli import main

    assert main(["bench", "run", "--numerics", "off", "--num-requests", "3", "--no-plots", "--out",
                 str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tiny on 8 CENT devices: pipeline pp 8 x tp 1, 8 devices used; sample_conv.csv", out[:2]
    assert out[1].startswith("completed")


@pytest.mark.parametrize("flags, source", [
    (["--synthetic", "poisson", "--rate", "2", "--num-requests", "3"],
     "synthetic, Poisson arrivals at 2 req/s, 128 prompt + 128 output tokens"),
    (["--synthetic", "gamma", "--burstiness", "0.5", "--rate", "2.5", "--num-requests", "3", "--prompt-len", "4:40",
      "--output-len", "5"], "synthetic, gamma (burstiness 0.5) arrivals at 2.5 req/s, 4:40 prompt + 5 output tokens"),
    (["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--lengths-from", "sample_conv"],
     "synthetic, Poisson arrivals at 2 req/s, lengths from sample_conv.csv"),
    (["--trace", "{sharegpt}", "--rate", "3"], "conv.json, Poisson arrivals at 3 req/s"),
])
def test_the_table_says_what_a_generated_load_is(tmp_path, capsys, flags, source):
    """A synthetic run's table said only `synthetic`: it names the arrivals, the rate and the lengths
    (and a ShareGPT trace's arrivals, which the command makes)."""
    from cent_serve.cli import main

    sharegpt = tmp_path / "conv.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi " * i},
                                                       {"from": "gpt", "value": "ok " * i}]} for i in range(1, 5)]))
    flags = [a.replace("{sharegpt}", str(sharegpt)) for a in flags]
    assert main(["bench", "run", "--numerics", "off", "--no-plots", *flags, "--out", str(tmp_path / "r")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"tiny on 8 CENT devices: pipeline pp 8 x tp 1, 8 devices used; {source}", first


def test_a_result_prints_its_counts_not_its_records():
    """A notebook shows a replay's result by its repr: the counts, a line, not every record."""
    cfg = CentConfig(numerics="off")
    reqs = [*synthetic_trace(3, rate=1.0, lengths=FixedLengths(8, 4), seed=0),
            Request("long", 5.0, cfg.model.max_seq_len, 8)]  # past the context: refused, a failed record
    text = repr(run_in_process(cfg, reqs, progress=False))
    assert text.startswith("BenchResult(4 records: 3 completed, 1 failed; ") and len(text) < 200, text


def test_paper_says_how_full_each_mappings_lanes_ran(tmp_path, capsys):
    """The README's bench paper on 200 requests showed pp 80 (the paper's own 70B mapping) at 0.80x GPU
    beside pp 32 at 1.17x, with nothing to say why: its 80 lanes averaged 50 queries, the tail of a
    finite trace running nearly alone at one query's pace. Each row says the queries it ran at once,
    averaged over the run, of its lanes, and a note says what that means when a row ran under 3/4."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,16,4\n0.0,16,4\n")
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--trace",
                 str(trace), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    rows = {(r["pp"], r["tp"]): r for r in json.loads((out / "paper.json").read_text())["rows"]}
    assert rows[32, 1]["lanes"] == 32 and rows[32, 1]["mean_in_flight"] == pytest.approx(2.0, rel=0.01)  # both at once
    assert rows[1, 8]["lanes"] == 1 and rows[1, 8]["mean_in_flight"] == pytest.approx(1.0, rel=0.01)  # one after the other
    assert "TPOT p50 " in printed and ", 2 of 32 lanes in flight, " in printed and ", 1 of 1 lanes in flight" in printed
    assert "lanes in flight: the queries a mapping ran at once, averaged over the run" in printed
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,1,1\n0.0,1,1\n")  # done in a round or two
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--trace",
                 str(trace), "--out", str(out), "--no-plots"]) == 0
    rows = {(r["pp"], r["tp"]): r for r in json.loads((out / "paper.json").read_text())["rows"]}
    assert rows[1, 8]["mean_in_flight"] == 1.0 and rows[32, 1]["mean_in_flight"] > 1.5, rows  # read 0 from samples


def test_paper_names_the_settings_its_mappings_share(tmp_path, capsys, monkeypatch):
    """bench paper on a 4 GHz device printed and plotted 'llama2-7b on 8 CENT devices ... 2.3x GPU' with no word
    that the device was not the paper's (audit): the terminal and paper.png's title give cent simulate's
    'given:' line."""
    from matplotlib.figure import Figure

    titles = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.append(fig._suptitle.get_text()),
                                                                  real(fig, *a, **k))[1])
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off",
                 "--num-requests", "2", "--max-prompt-tokens", "8", "--max-output-tokens", "2",
                 "--set", "device.clock_hz=4e9", "--out", str(tmp_path)]) == 0
    assert "given: --set device.clock_hz=4e9" in capsys.readouterr().out
    assert len(titles) == 1 and "given: --set device.clock_hz=4e9" in " ".join(titles[0].split())


def test_a_runs_titles_name_the_settings_that_changed_its_device(tmp_path, capsys):
    """bench run on a 4 GHz device titled its table and plots 'llama2-7b on 8 CENT devices' as the paper's
    (audit; a changed preset's fields were named, a changed device's not): the title's first line ends with
    cent simulate's 'given:' line, and summary.json keeps it."""
    from cent_serve.bench.report import run_title

    assert main(["bench", "run", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--num-requests", "2",
                 "--max-prompt-tokens", "8", "--max-output-tokens", "2", "--set", "device.clock_hz=4e9",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    assert "given: --set device.clock_hz=4e9" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["given"] == "--set device.clock_hz=4e9"
    assert run_title({}, summary).splitlines()[0].endswith("; given: --set device.clock_hz=4e9")
    assert "given" not in run_title({}, dict(summary, given=""))


def test_a_rate_sweep_names_the_settings_that_changed_its_device(tmp_path, capsys, monkeypatch):
    """bench sweep on a 4 GHz device: its first line, sweep.json and sweep.png's title named the model and
    mapping only (audit), as bench run's did: each gives cent simulate's 'given:' line."""
    from matplotlib.figure import Figure

    titles = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.append(fig._suptitle.get_text()),
                                                                  real(fig, *a, **k))[1])
    assert main(["bench", "sweep", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--num-requests",
                 "2", "--max-prompt-tokens", "8", "--max-output-tokens", "2", "--rates", "5",
                 "--set", "device.clock_hz=4e9", "--out", str(tmp_path)]) == 0
    assert "; given: --set device.clock_hz=4e9" in capsys.readouterr().out
    assert json.loads((tmp_path / "sweep.json").read_text())["given"] == "--set device.clock_hz=4e9"
    assert len(titles) == 1 and "given: --set device.clock_hz=4e9" in " ".join(titles[0].split())


def test_a_checkpoint_named_like_a_preset_is_titled_a_checkpoint(tmp_path, capsys):
    """A checkpoint directory called `llama2-7b` (its model is named after its directory) was titled as the
    preset changed in every field: 'llama2-7b (model.hidden_size=64, model.intermediate_size=... and N more)',
    in bench run's summary.json and plots and cent simulate's header. It is titled a checkpoint; the preset
    changed by --set keeps its label."""
    import shutil

    from cent_serve.config import model_label, model_preset
    from cent_serve.model import model_config_from_hf

    ckpt = tmp_path / "llama2-7b"
    shutil.copytree(Path(__file__).parents[1] / "data" / "hf_tiny_llama", ckpt)
    assert model_label(model_config_from_hf(ckpt)) == "llama2-7b (checkpoint)"
    assert model_label(model_preset("llama2-7b", num_layers=16)) == "llama2-7b (model.num_layers=16)"
    assert main(["bench", "run", "--model", str(ckpt), "--numerics", "off", "--synthetic", "poisson", "--rate", "10",
                 "--num-requests", "2", "--in-process", "--no-plots", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model_label"] == "llama2-7b (checkpoint)"


TINY_TRACE = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,16,4\n0.2,24,6\n0.5,16,8\n"
"""Three requests the tiny model serves on either hardware in well under a second of simulated time."""


def test_bench_run_reports_the_tokens_per_dollar_compare_reports_for_the_same_side(tmp_path, capsys):
    """`bench run` reported no cost figure (--set device.tco_per_device was accepted and changed nothing
    it printed): summary.json's `tokens_per_tco` is what `bench compare` reports for the same side on the
    same trace, CENT and GPUs alike (`report.tco_figures`, one function for both), and the table prints it."""
    trace = tmp_path / "t.csv"
    trace.write_text(TINY_TRACE)
    common = ["--numerics", "off", "--trace", str(trace), "--no-plots"]
    assert main(["bench", "compare", *common, "--gpu", "a100-80gb:1", "--out", str(tmp_path / "cmp")]) == 0
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for side, hardware in (("cent", []), ("gpu", ["--hardware", "gpu:a100-80gb:1"])):
        out = tmp_path / side
        capsys.readouterr()
        assert main(["bench", "run", *common, *hardware, "--out", str(out)]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["completed"] == 3 and s["tokens_per_tco"] is not None
        assert s["tokens_per_tco"] == compared[side]["tokens_per_tco"], side  # bit for bit: one function, one run
        assert s["total_token_throughput"] == compared[side]["total_token_throughput"], side
        row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tokens per dollar")]
        assert row == [f"{'tokens per dollar':<24}{s['tokens_per_tco']:>12,.1f} tok/s per TCO unit "
                       "(the CENT artifact's TCO convention)"], row
    assert "tco" not in s  # the one new key: the price itself stays compare's


def test_device_tco_per_device_moves_bench_run_s_tokens_per_dollar_by_its_ratio(tmp_path, capsys):
    """Twice the price a device, half the tokens per dollar, on the same simulated run: 0.0456 against the
    paper's 0.0228125 (docs/hardware_model.md section 9) is a factor 0.0228125 / 0.0456. A changed
    unit_cost_usd leaves the figure as it is and a note says so; a set TCO draws no note."""
    trace = tmp_path / "t.csv"
    trace.write_text(TINY_TRACE)
    runs = {}
    for name, sets in (("paper", ["--set", "device.unit_cost_usd=50"]),
                       ("dear", ["--set", "device.unit_cost_usd=50", "--set", "device.tco_per_device=0.0456"])):
        capsys.readouterr()
        assert main(["bench", "run", "--numerics", "off", "--trace", str(trace), "--no-plots", *sets,
                     "--out", str(tmp_path / name)]) == 0
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text()), notes
    (paper, paper_notes), (dear, dear_notes) = runs["paper"], runs["dear"]
    assert paper["duration"] == dear["duration"] and paper["total_token_throughput"] == dear["total_token_throughput"]
    assert paper["tokens_per_tco"] == pytest.approx(paper["total_token_throughput"] / (0.0228125 * 8), rel=1e-12)
    assert dear["tokens_per_tco"] == pytest.approx(paper["tokens_per_tco"] * 0.0228125 / 0.0456, rel=1e-12)
    assert len(paper_notes) == 1 and "device.unit_cost_usd=50.0 does not move" in paper_notes[0], paper_notes
    assert dear_notes == []


def test_a_gpu_kind_without_a_cost_has_no_tokens_per_dollar_and_a_note_says_how_to_give_it_one(tmp_path, capsys):
    """h100-80gb has no price in the CENT artifact's convention: null in summary.json, '-' in the table
    and compare's note on how to price it (`report.price_notes`)."""
    trace = tmp_path / "t.csv"
    trace.write_text(TINY_TRACE)
    assert main(["bench", "run", "--numerics", "off", "--trace", str(trace), "--no-plots", "--hardware",
                 "gpu:h100-80gb:1", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["tokens_per_tco"] is None
    assert f"{'tokens per dollar':<24}{'-':>12}   (no price: see the note below)" in printed
    assert ("note: tokens per dollar: h100-80gb has no cost in the CENT artifact's TCO convention; --set "
            "gpu.tco_per_gpu=UNITS gives it one (an A100's is 0.44, 1.76 per 4)") in printed


@pytest.mark.parametrize("hardware, sets, tco, note", [
    ([], [], 0.73 * 8 / 32, None),  # the paper's device, 0.73 per 32
    ([], ["--set", "device.tco_per_device=0.05"], 0.05 * 8, None),
    # a changed device priced as the paper's: bench run's note, once for every rate
    ([], ["--set", "device.unit_cost_usd=40"], 0.73 * 8 / 32, "device.unit_cost_usd=40"),
    (["--hardware", "gpu:a100-80gb:2"], [], 1.76 * 2 / 4, None),  # 1.76 per 4 A100s
    (["--hardware", "gpu:h100-80gb:1"], [], None, "tokens per dollar: h100-80gb has no cost"),  # no price: said
])
def test_sweep_rows_count_tokens_per_dollar_as_bench_run(tmp_path, capsys, hardware, sets, tco, note):
    """Each rate's row of sweep.json has `tokens_per_tco` (`report.tco_figures`: its prompt and output tokens
    a second over the hardware's TCO units), and its terminal line says it; bench run's summary.json and
    bench compare had it, bench sweep did not."""
    out = tmp_path / "sweep"
    assert main(["bench", "sweep", "--numerics", "off", "--synthetic", "poisson", "--num-requests", "6",
                 "--prompt-len", "16", "--output-len", "4", "--rates", "5,50", *hardware, *sets,
                 "--out", str(out), "--no-plots"]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if x.startswith("rate ")]
    assert len(rows) == len(lines) == 2
    for row, line in zip(rows, lines):
        if tco is None:
            assert row["tokens_per_tco"] is None and "per TCO unit" not in line
        else:
            assert row["tokens_per_tco"] == pytest.approx(row["total_token_throughput"] / tco, rel=1e-12)
            assert f", {row['tokens_per_tco']:,.1f} tok/s per TCO unit" in line, line
    notes = [x for x in printed.splitlines() if x.startswith("note: ")]
    assert len(notes) == (note is not None) and all(note in x for x in notes), printed


@pytest.mark.parametrize("sets, tco", [
    ([], 0.73 * 8 / 32),  # the paper's price: a changed device priced as the paper's gets bench run's note
    (["--set", "device.tco_per_device=0.05"], 0.05 * 8),  # the user's price for it: no note
])
def test_paper_rows_count_tokens_per_dollar_as_bench_run(tmp_path, capsys, sets, tco):
    """Each mapping's row of paper.json and paper.csv has `tokens_per_tco` (`report.tco_figures`: every device
    bought, whichever the mapping uses), and its terminal line says it; a changed device priced as the
    paper's gets the note bench run prints."""
    out = tmp_path / "paper"
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off",
                 "--num-requests", "6", "--max-prompt-tokens", "16", "--max-output-tokens", "4", "--rate", "100",
                 "--set", "device.unit_cost_usd=40", *sets, "--out", str(out), "--no-plots"]) == 0
    rows = json.loads((out / "paper.json").read_text())["rows"]
    assert len(rows) == 5
    for row in rows:
        assert row["tokens_per_tco"] == pytest.approx(row["total_token_throughput"] / tco, rel=1e-12)
    with open(out / "paper.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["tokens_per_tco"]) for r in table] == pytest.approx([r["tokens_per_tco"] for r in rows], rel=1e-12)
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if x.startswith("pp ")]
    assert all(f"({r['tokens_per_tco']:,.1f} per TCO unit)" in x for r, x in zip(rows, lines)), lines
    assert sum(x.startswith("note: ") and "device.unit_cost_usd=40" in x for x in printed.splitlines()) == (not sets), printed
