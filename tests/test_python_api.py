"""docs/python_api.md's examples run as written and give what the commands named under them give:
each `## (x)` section's Python is executed in a fresh namespace (in a temporary directory, where it
writes its files), then the section's `cent` command lines are run and their JSON (stdout, or the
files under --out) is compared with the example's results, figure for figure."""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from cent_serve.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "python_api.md"
WALL = ("wall_s", "sim_tokens_per_wall_s")
"""Wall-clock figures: they differ run to run."""
NO_PLOTS = ("sweep", "bench")
"""Commands whose --no-plots saves the test the PNGs (the figures are the same)."""


def _sections() -> dict[str, tuple[str, list[str]]]:
    """{letter: (its Python, its `cent` command lines)} of each `## (x) ...` section of the doc."""
    out = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        m = re.match(r"\((\w)\)", part)
        if m:
            code = "\n".join(re.findall(r"```python\n(.*?)```", part, re.S))
            out[m.group(1)] = (code, [" ".join(c.split()) for c in re.findall(r"`(cent [^`]+)`", part)])
    return out


SECTIONS = _sections()


def test_the_doc_has_each_example_with_its_code_and_command():
    assert sorted(SECTIONS) == list("abcdef")
    for letter, (code, commands) in SECTIONS.items():
        assert code.strip() and commands, letter


@pytest.fixture
def run_example(tmp_path, monkeypatch):
    """Execute the example's code as the doc has it, in `tmp_path`; its namespace."""
    monkeypatch.chdir(tmp_path)

    def run(letter: str) -> dict:
        ns: dict = {"__name__": f"python_api_{letter}"}
        exec(compile(SECTIONS[letter][0], f"docs/python_api.md ({letter})", "exec"), ns)
        return ns
    return run


def cent(command: str, capsys, **replace: str):
    """Run one of the doc's `cent` command lines in-process (in the example's directory), with
    `replace`'s flag values swapped in; its stdout as JSON, or with --out the directory's path."""
    argv = shlex.split(command)[1:]
    for flag, value in replace.items():
        argv[argv.index(f"--{flag}") + 1] = value
    if argv[0] in NO_PLOTS:
        argv.append("--no-plots")
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return Path(argv[argv.index("--out") + 1]) if "--out" in argv else json.loads(out)


def plain(x):
    """As JSON has it (tuples as lists, dataclass dicts as dicts): the commands' output round trip."""
    return json.loads(json.dumps(x, default=str))


def test_a_closed_form_sweep_of_a_device_field(run_example, capsys):
    ns = run_example("a")
    rows = ns["rows"]
    assert len(rows) == 10 and Path("clock.png").is_file()
    out = cent(SECTIONS["a"][1][0], capsys)
    csv_rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [float(r["device.clock_hz"]) for r in csv_rows] == [r["clock_hz"] for r in rows]
    for mine, theirs in zip(rows, csv_rows):
        assert theirs["error"] == ""
        assert mine["throughput_tok_s"] == float(theirs["throughput_tok_s"])
        assert mine["energy_per_token_mj"] == float(theirs["energy_per_token_mj"])
    tok_s = [r["throughput_tok_s"] for r in rows]
    assert tok_s == sorted(tok_s)  # a faster clock, more tokens (the plot's shape)


def test_b_one_config_through_the_emulated_devices(run_example, capsys):
    ns = run_example("b")
    out = cent(SECTIONS["b"][1][0], capsys)
    for key in ("workload", "config", *WALL):
        out.pop(key)
    assert plain({k: v for k, v in ns["out"].items() if k not in WALL}) == out
    e2e = ns["summary"]["end2end"]
    assert e2e["tok_s"] == pytest.approx(e2e["closed_form_tok_s"], rel=1e-3)  # the devices run the formulas' pipeline


@pytest.mark.slow
def test_c_a_trace_under_two_configs(run_example, capsys):
    ns = run_example("c")
    command = SECTIONS["c"][1][0]
    for row in ns["results"]:
        out = cent(command, capsys, devices=str(row["devices"]), out=f"run-{row['devices']}/")
        s = json.loads((out / "summary.json").read_text())
        assert row == dict(devices=row["devices"], ttft_p50_ms=s["median_ttft_ms"], ttft_p99_ms=s["p99_ttft_ms"],
                           tpot_p50_ms=s["median_tpot_ms"], tpot_p99_ms=s["p99_tpot_ms"],
                           completed=s["completed"], failed=s["failed"])
        # as the doc says: 6 requests longer than the context
        assert (s["failed"], list(s["failure_reasons"])) == (6, ["context_exceeded"])
    assert [r["devices"] for r in ns["results"]] == [8, 16]
    assert ns["results"][1]["ttft_p50_ms"] < ns["results"][0]["ttft_p50_ms"]


@pytest.mark.slow
def test_d_the_same_trace_on_cent_and_on_gpus(run_example, capsys):
    ns = run_example("d")
    out = cent(SECTIONS["d"][1][0], capsys)
    compare = json.loads((out / "compare.json").read_text())
    assert plain(ns["table"]) == compare["table"]
    for side in ("cent", "gpu"):
        mine = plain(ns["sides"][side])
        assert {k: mine[k] for k in compare[side] if k != "wall_s"} == {k: v for k, v in compare[side].items()
                                                                       if k != "wall_s"}, side
        assert set(mine) - set(compare[side]) == {"device_busy_fraction"}, side  # the one the doc says compare.json lacks
    ratios = ns["ratios"]  # the doc's comment
    assert (round(ratios["TTFT p50"], 1), round(ratios["TPOT p50"], 2)) == (110.2, 1.39)


def test_e_a_models_own_config_json(run_example, capsys):
    ns = run_example("e")
    assert round(ns["params_b"], 2) == 8.03  # the doc's comment
    assert ns["cfg"].resolved_numerics == "off"  # no weights: timing only
    cent_cmd, gpu_cmd = SECTIONS["e"][1]
    assert plain(ns["cent"]) == cent(cent_cmd, capsys)["end2end"]
    assert plain(ns["gpu"]) == cent(gpu_cmd, capsys)["end2end"]


def test_f_one_token_and_one_block(run_example, capsys):
    ns = run_example("f")
    out = cent(SECTIONS["f"][1][0], capsys)
    for key in ("other_convention", "workload", "config"):
        out.pop(key)
    fig = ns["fig"]
    assert plain(fig.as_dict()) == out
    assert ns["pim_s"] * 1e3 == pytest.approx(fig.block_pim_ms, rel=1e-12)
    assert ns["acc_s"] * 1e3 * fig.blocks_per_device == pytest.approx(fig.block_acc_ms, rel=1e-12)
    assert fig.blocks_per_device == 3 and ns["cycles"] == out["breakdown_cycles"]  # the doc's "3 here"


def test_build_config_is_the_config_the_flags_resolve(monkeypatch):
    """`build_config`'s keywords are the flags' values: the command line resolves through it."""
    from cent_serve.cli import build_parser
    from cent_serve.cli_common import config_from_args
    from cent_serve.config import build_config

    flags = ["--config", "docs/examples/paper-70b.yaml", "--seed", "3", "--devices", "64", "--tp", "1",
             "--set", "device.clock_hz=1e9", "--set", "scheduler.max_seqs_per_stage=2"]
    monkeypatch.chdir(DOC.parent.parent)
    mine = build_config(config="docs/examples/paper-70b.yaml", seed=3, devices=64, tp=1,
                        overrides=["device.clock_hz=1e9", "scheduler.max_seqs_per_stage=2"])
    assert mine == config_from_args(build_parser().parse_args(["simulate", *flags]))
    assert (mine.model.name, mine.model.seed, mine.parallel.num_devices, mine.device.clock_hz) == ("llama2-70b", 3, 64, 1e9)
    assert build_config("tiny", overrides="device.clock_hz=1e9").device.clock_hz == 1e9  # one item, bare
    gpu = build_config("llama2-7b", hardware="gpu:h100-80gb:2")
    assert (gpu.hardware, gpu.on_gpus) == ("gpu:h100-80gb:2", True)
    with pytest.raises(ValueError, match="gpu.count=0 is invalid with --hardware gpu:h100-80gb:2"):
        build_config("llama2-7b", hardware="gpu:h100-80gb:2", overrides=["gpu.count=0"])
    with pytest.raises(ValueError, match="neither a preset"):
        build_config("llama-2-7b")


def test_run_in_process_refuses_what_cannot_run_before_it_builds_the_engine(monkeypatch):
    """A script's replay is refused as `cent bench run` refuses it (`preflight.check_runnable`): 70B on
    8 devices does not hold its weights. Without the check it replayed, every request failing with
    kv_capacity, and passed that off as a result."""
    import cent_serve.bench.runner as runner
    from cent_serve.bench import Request
    from cent_serve.config import build_config

    def no_engine(cfg):
        raise AssertionError("the engine was built before the refusal")
    monkeypatch.setattr(runner, "Engine", no_engine)
    cfg = build_config("llama2-70b", devices=8, numerics="off")
    with pytest.raises(ValueError, match="llama2-70b on 8 devices .* does not fit: .* use 9 devices"):
        runner.run_in_process(cfg, [Request("a", 0.0, 16, 4)], progress=False)


def test_emulate_refuses_a_gpu_config_as_the_command_does(capsys):
    """`paper.emulate` on a GPU config crashed in the device workers' timing (`'GpuTimer' object has
    no attribute 'token_s'`); it refuses in one line, before any worker, as `cent simulate --emulate`
    does. The closed form and the context check read a GPU config as `cent simulate` does."""
    from cent_serve.config import build_config
    from cent_serve.paper import check_context, closed_form, emulate

    says = "--emulate runs CENT's device and fabric workers, which --hardware gpu:a100-80gb:1 has none of: drop"
    gpu = ["--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--prompt", "512", "--decode", "512"]
    assert main(["simulate", *gpu, "--emulate", "--local"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    cfg = build_config("llama2-7b", hardware="gpu:a100-80gb:1")
    for workload in (dict(prompt=512, decode=512), dict(seqlen=1024)):
        with pytest.raises(ValueError, match=re.escape(says)):
            emulate(cfg, **workload)
    assert main(["simulate", *gpu, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    mine = closed_form(cfg, 512, 512)
    assert mine["batch"] == printed["batch"] and plain(mine["end2end"]) == printed["end2end"]
    with pytest.raises(ValueError, match=r"--prompt 4000 \+ --decode 512 = 4512 tokens exceed the model's context"):
        check_context(cfg, 4000, 512)
    with pytest.raises(ValueError, match="model.max_seq_len=4096"):
        closed_form(cfg, 4000, 512)


def test_simulate_refuses_sweep_with_emulate(capsys):
    """`cent simulate --sweep --emulate` ran the closed-form sweep and left --emulate unread."""
    assert main(["simulate", "--model", "tiny", "--sweep", "--emulate", "--local"]) == 2
    assert "--sweep and --emulate are two runs" in capsys.readouterr().err


@pytest.mark.parametrize("kw", [dict(numerics=False), dict(numerics=""), dict(numerics=0), dict(model="")])
def test_build_config_refuses_a_falsy_value_rather_than_reading_it_as_not_given(kw):
    """`numerics=False` (a script's natural "no numerics") or `""` quietly became the default `auto`,
    which is full numerics for `tiny`; `model=""` (an unset environment variable) became `tiny`."""
    from cent_serve.config import build_config

    kw = {"model": "tiny", **kw}
    with pytest.raises(ValueError, match=r"^(numerics=|--model '')") as err:
        build_config(devices=2, **kw)
    assert "\n" not in str(err.value)


def _wrong_kinds():
    """(call, what its error says) for arguments of the wrong kind: each gave Python's own error
    from deep inside (a TypeError or an AttributeError), or, compare_table, a table of Nones."""
    from cent_serve.bench import (FixedLengths, TraceOptions, UniformLengths, arrival_times_s,
                                  iter_arrival_times_s, load_trace, resolve_trace, synthetic_trace)
    from cent_serve.bench.report import compare_table, side_figures, summarize
    from cent_serve.bench.runner import BenchResult, run_in_process
    from cent_serve.config import build_config
    from cent_serve.paper import closed_form, emulate
    from cent_serve.timing import SystemTimer, token_figures

    cfg = build_config("tiny", devices=2, numerics="off")
    sample = resolve_trace("sample_conv")
    reqs = list(load_trace(sample, options=TraceOptions(num_requests=3)))
    result = BenchResult([], [], [], 0.0, 0.0, {})
    return [
        (lambda: closed_form(cfg, prompt="512"),
         "closed_form(cfg, prompt, decode): prompt is a str ('512'): give a whole number, e.g. prompt=512"),
        (lambda: closed_form(cfg, 512, 3584.0), "decode is a float (3584.0): give a whole number"),
        (lambda: closed_form("llama2-7b"),
         "closed_form(cfg, prompt, decode): cfg is a str ('llama2-7b'): build one first: build_config('llama2-7b', "),
        (lambda: emulate(cfg, seqlen="100"), "seqlen is a str ('100'): give a whole number, e.g. seqlen=4096"),
        (lambda: TraceOptions(num_requests="5"),
         "num_requests='5' is invalid: give a whole number (not a str): use a count >= 1, or None for the whole trace"),
        (lambda: TraceOptions(time_scale="2"), "time_scale='2' is invalid: give a number (not a str)"),
        (lambda: TraceOptions(num_requests=2.5), "num_requests=2.5 is invalid: give a whole number (not a float)"),
        (lambda: load_trace(sample, options={"num_request": 5}),
         "load_trace(path, options=): options is a dict ({'num_request': 5}): 'num_request' is no field of "
         "TraceOptions, whose fields are start_s, skip_requests, num_requests,"),
        (lambda: load_trace(sample, options=200), "options is an int (200): give TraceOptions(...), e.g."),
        (lambda: load_trace("azure_conv_2023"),
         "trace 'azure_conv_2023' is not a file: load the shipped trace by its name with "
         "load_trace(resolve_trace('azure_conv_2023'))"),
        (lambda: load_trace(5), "load_trace(path): path is an int (5): give a trace file's path"),
        (lambda: resolve_trace(5), "resolve_trace(name_or_path): name_or_path is an int (5): give a trace file's path"),
        (lambda: run_in_process(cfg, "azure_conv_2023", progress=False),
         "run_in_process(cfg, requests): requests is a str ('azure_conv_2023'): load it first: "
         "list(load_trace(resolve_trace('azure_conv_2023')))"),
        (lambda: run_in_process("llama2-7b", reqs, progress=False),
         "run_in_process(cfg, requests): cfg is a str ('llama2-7b'): build one first: build_config('llama2-7b', "),
        (lambda: run_in_process(cfg, [dict(arrival_s=0.0)], progress=False),
         "run_in_process(cfg, requests): requests' first item is a dict ({'arrival_s': 0.0}): give the trace's "
         "requests (cent_serve.bench.Request records)"),
        (lambda: run_in_process(cfg, reqs[0], progress=False), "(one request: [request])"),
        (lambda: summarize(reqs),
         "summarize(result, slos): result is a list of 3 items (the first a Request): give the BenchResult "
         "run_in_process returns"),
        (lambda: summarize(result, ["ttft:200"]), "slos is a list of 1 item (the first a str): parse it first: "
         "parse_goodput(['ttft:200'])"),
        (lambda: summarize(result, {"ttft": "200"}), "slos['ttft'] is a str ('200'): give milliseconds >= 0"),
        (lambda: summarize(result, {"ttfb": 200}), "'ttfb' is no metric: use ttft, tpot, e2el"),
        (lambda: side_figures(result, cfg), "side_figures(cfg, result, slos): cfg is a BenchResult: give a CentConfig"),
        (lambda: compare_table({}, {}),
         "compare_table(cent, gpu): cent is a dict ({}): it lacks median_ttft_ms, p99_ttft_ms, median_tpot_ms, ...: "
         "give each side's side_figures(cfg, result)"),
        (lambda: compare_table(summarize(result), summarize(result)), "it lacks power_w, tokens_per_tco: give"),
        (lambda: token_figures(cfg, 4096), "token_figures(timer, context): timer is a CentConfig: give a SystemTimer: "
         "SystemTimer.from_config(cfg)"),
        (lambda: token_figures(SystemTimer.from_config(cfg), "4096"), "context is a str ('4096'): give a whole number"),
        (lambda: SystemTimer.from_config("tiny"), "SystemTimer.from_config(cfg): cfg is a str ('tiny'): build one first"),
        (lambda: synthetic_trace("5", 1.0), "synthetic_trace(num_requests, rate): num_requests is a str ('5'): "
         "give a whole number, e.g. num_requests=100"),
        (lambda: synthetic_trace(5, "1"), "rate is a str ('1'): give a number, e.g. rate=2.0"),
        (lambda: synthetic_trace(5, 1.0, burstiness=True), "burstiness is a bool (True): give a number"),
        (lambda: synthetic_trace(5, 1.0, seed=1.5), "seed is a float (1.5): give a whole number, e.g. seed=0"),
        (lambda: synthetic_trace(5, 1.0, lengths=(128, 128)), "lengths is a tuple of 2 items (the first an int): "
         "give a LengthSampler: FixedLengths(128, 128), UniformLengths((64, 512), (16, 256)) or "
         "TraceLengths.from_trace(path)"),
        (lambda: FixedLengths("128"), "FixedLengths(num_prompt_tokens, num_output_tokens): num_prompt_tokens is a "
         "str ('128'): give a whole number"),
        (lambda: UniformLengths(64), "UniformLengths(prompt_range, output_range): prompt_range is an int (64): "
         "give (low, high), two whole numbers, e.g. prompt_range=(64, 512)"),
        (lambda: UniformLengths((64, 512), (16.0, 256)), "output_range is a tuple of 2 items (the first a float)"),
        (lambda: arrival_times_s(3.0, 1.0), "arrival_times_s(num_requests, rate): num_requests is a float (3.0)"),
        (lambda: iter_arrival_times_s("2"), "iter_arrival_times_s(rate): rate is a str ('2')"),  # at the call
    ]


def test_an_argument_of_the_wrong_kind_is_a_one_line_value_error_naming_it_and_the_fix():
    """docs/python_api.md's contract, for the kinds of the public functions' arguments: `closed_form(cfg,
    prompt="512")` raised `TypeError: '<' not supported between instances of 'str' and 'int'`,
    `run_in_process(cfg, "azure_conv_2023")` `AttributeError: 'str' object has no attribute 'arrival_s'`,
    `summarize(requests)` `... has no attribute 'records'`, `compare_table({}, {})` returned Nones."""
    for call, says in _wrong_kinds():
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert says in msg and "\n" not in msg, (says, msg)


def test_trace_options_given_as_a_dict_of_its_fields_are_taken():
    """`load_trace(path, options={"num_requests": 5})` raised `'dict' object has no attribute
    'time_scale'`; a dict of TraceOptions' fields is what it says: it is taken as TraceOptions(**dict)
    (a key that is no field is refused above)."""
    from cent_serve.bench import TraceOptions, load_trace, resolve_trace, synthetic_trace

    sample = resolve_trace("sample_conv")
    given = dict(num_requests=5, time_scale=2.0, max_prompt_tokens=100)
    assert list(load_trace(sample, options=given)) == list(load_trace(sample, options=TraceOptions(**given)))
    assert len(list(load_trace(sample, options={"num_requests": 5}))) == 5
    assert list(synthetic_trace(10, 2.0, options={"num_requests": 4})) == \
        list(synthetic_trace(10, 2.0, options=TraceOptions(num_requests=4)))
