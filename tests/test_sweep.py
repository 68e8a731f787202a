"""`cent sweep`: every combination of --vary values is a point; each row has its full config (a
rerun of it gives the same figures), a point that cannot run is a row with its error, the
Pareto front is the points nothing beats on both axes, and the plots are written."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig
from cent_serve.config.fields import _from_dict
from cent_serve.sweep import closed_form_figures, parse_vary
from cent_serve.sweep_plots import _spots, pareto_front


def test_vary_takes_config_paths_and_short_names_and_refuses_the_malformed():
    assert parse_vary(["devices=8,16", "device.clock_hz=1e9"]) == [("parallel.num_devices", ["8", "16"]),
                                                                   ("device.clock_hz", ["1e9"])]
    for bad in (["devices"], ["=1,2"], ["devices="], []):
        with pytest.raises(ValueError, match="--vary"):
            parse_vary(bad)


def test_a_closed_form_sweep_writes_every_point_with_its_config(tmp_path, capsys):
    assert main(["sweep", "--model", "llama2-70b", "--set", "device.num_channels=16", "--vary", "devices=16,64",
                 "--vary", "device.clock_hz=2e9,4e9", "--out", str(tmp_path)]) == 0
    assert "4 points, 2 evaluated, 2 could not run" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["parallel.num_devices"], r["device.clock_hz"]) for r in rows] == [
        ("16", "2e9"), ("16", "4e9"), ("64", "2e9"), ("64", "4e9")]
    assert all("does not fit" in r["error"] for r in rows[:2])  # 70B on 16 devices of 8 GiB: weights over 8 GiB
    # a refused point names its model and devices and keeps its config: what was refused, to rerun or inspect
    assert [(r["model_name"], r["devices"]) for r in rows[:2]] == [("llama2-70b", "16")] * 2
    assert [json.loads(r["config"])["device"]["clock_hz"] for r in rows[:2]] == [2e9, 4e9]
    ok = rows[2:]
    assert float(ok[1]["throughput_tok_s"]) > float(ok[0]["throughput_tok_s"])  # a faster clock
    recorded = json.loads(ok[1]["config"])
    assert recorded.pop("workload") == {"prompt": 512, "decode": 3584}  # the workload the figures are of
    cfg = _from_dict(CentConfig, recorded, "")  # the row's config reruns to the same figures
    assert cfg.device.clock_hz == 4e9 and cfg.parallel.num_devices == 64 and cfg.device.num_channels == 16
    assert closed_form_figures(cfg, 512, 3584)["throughput_tok_s"] == pytest.approx(float(ok[1]["throughput_tok_s"]),
                                                                                    rel=1e-12)
    assert (tmp_path / "pareto.png").stat().st_size > 10_000 and (tmp_path / "tokens_per_dollar.png").stat().st_size


def test_a_varied_tp_takes_devices_over_tp_stages_unless_pp_is_given(tmp_path, capsys):
    """A tp > 1 point needs a pp (0, one stage a block, is pure pipeline's): varying tp alone, each
    such point runs devices // tp stages (CENT's hybrid mapping), as its row says; a pp varied or
    given is kept."""
    assert main(["sweep", "--model", "llama2-70b", "--vary", "devices=32,64", "--vary", "tp=1,8",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    assert "points of tp > 1 run devices / tp stages" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["devices"], r["tp"], r["pp"], r["error"]) for r in rows] == [
        ("32", "1", "80", ""), ("32", "8", "4", ""), ("64", "1", "80", ""), ("64", "8", "8", "")]
    # more devices / tp than the model has blocks: a stage a block, the devices left over hold replicas (as
    # the tp 1 point's do), not pp=64 refused for more stages than blocks
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=128", "--vary", "tp=1,2", "--out", str(tmp_path),
                 "--no-plots"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["tp"], r["pp"], r["replicas"], r["error"]) for r in rows] == [("1", "32", "4", ""), ("2", "32", "2", "")]
    capsys.readouterr()
    assert main(["sweep", "--model", "llama2-70b", "--pp", "2", "--vary", "tp=8,16", "--out", str(tmp_path),
                 "--no-plots"]) == 0
    assert "points of tp > 1" not in capsys.readouterr().out
    assert [r["pp"] for r in csv.DictReader(open(tmp_path / "sweep.csv"))] == ["2", "2"]


def test_a_varied_model_keeps_the_model_fields_set_on_the_command_line(tmp_path, capsys):
    # as `--model NAME --set model.FIELD=V` does: the model is chosen whole, then every --set applies
    assert main(["sweep", "--devices", "32", "--seed", "7", "--vary", "model=llama2-7b,llama2-70b",
                 "--set", "model.intermediate_size=22016", "--out", str(tmp_path), "--no-plots"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    for r in rows:
        recorded = json.loads(r["config"])
        recorded.pop("workload")
        cfg = _from_dict(CentConfig, recorded, "")
        assert cfg.model.name == r["model"]
        assert cfg.model.intermediate_size == 22016 and cfg.model.seed == 7, r["model"]
    assert main(["simulate", "--model", "llama2-7b", "--devices", "32", "--prompt", "512", "--decode", "3584",
                 "--set", "model.intermediate_size=22016", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)["end2end"]["throughput_tok_s"]
    assert float(rows[0]["throughput_tok_s"]) == pytest.approx(one, rel=1e-12)


def test_a_trace_sweep_replays_the_trace_at_every_point(tmp_path):
    assert main(["sweep", "--model", "llama2-7b", "--vary", "device.num_channels=16,32", "--trace", "sample_conv",
                 "--num-requests", "20", "--out", str(tmp_path), "--no-plots"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [int(r["completed"]) + int(r["failed"]) for r in rows] == [20, 20]
    assert b"\r" not in (tmp_path / "sweep.csv").read_bytes()  # \n lines, not csv's default \r\n
    assert float(rows[1]["throughput_tok_s"]) > float(rows[0]["throughput_tok_s"])  # more channels per block
    assert "tokens_per_dollar_ratio" not in rows[0]  # not against the paper's GPU workload
    for r in rows:  # prompt + output tokens, as the energy per token and the closed form count them
        total, output = float(r["throughput_tok_s"]), float(r["output_throughput_tok_s"])
        assert total > 1.5 * output  # sample_conv's prompts are longer than its outputs
        assert float(r["tok_s_per_usd"]) == pytest.approx(total / float(r["system_device_cost_usd"]), rel=1e-9)
    assert not (tmp_path / "pareto.png").exists()


def test_points_on_one_spot_share_the_pareto_plots_label():
    """Points a varied field moves in neither figure (a faster lane under a pipeline of 1.5 us hops)
    are labelled once, "1,3", not drawn over each other; points apart keep their own."""
    from cent_serve.sweep_plots import pareto_figure

    pts = [dict(energy_per_token_mj=e, throughput_tok_s=t) for e, t in
           [(687.2, 1189.6), (694.7, 1860.3), (687.2, 1189.58), (694.6, 1847.0)]]
    assert _spots(pts) == {(687.2, 1189.6): [1, 3], (694.7, 1860.3): [2], (694.6, 1847.0): [4]}
    rows = [dict(p, model_name="m", x=k) for k, p in enumerate(pts)]
    fig, axes = pareto_figure(rows, ["x"])
    # numbered front first, by energy: 1 (687.2, 1189.6), 2 (694.6, 1847), 3 (694.7, 1860.3); then 4, off it
    assert sorted(t.get_text() for t in axes[0].texts) == ["1,4", "2", "3"]


def test_the_pareto_plots_numbers_stand_clear_of_their_markers():
    """pareto.png's numbers sat 5 points right of (or left of) their points' centres, touching the markers
    (cent sweep --model llama2-7b --devices 16 --vary device.num_channels=16,32,64 --vary device.clock_hz=1e9,
    2e9). Every label's box now keeps LABEL_GAP_PT clear of its marker's edge."""
    from cent_serve.sweep_plots import LABEL_GAP_PT, _marker_reach_pt, pareto_figure

    pts = [(72.4, 3500), (73.2, 5870), (76.2, 8850), (73.6, 1820), (73.9, 3140), (76.6, 4850)]
    rows = [dict(energy_per_token_mj=e, throughput_tok_s=t, model_name="m", x=k) for k, (e, t) in enumerate(pts)]
    fig, axes = pareto_figure(rows, ["x"])
    ax = axes[0]
    fig.tight_layout()
    px = fig.dpi / 72  # pixels a point
    assert len(ax.texts) == len(pts)
    for text in ax.texts:
        box = text.get_window_extent()
        x, y = ax.transData.transform(text.xy)
        dx, dy = max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1)
        assert math.hypot(dx, dy) >= (_marker_reach_pt() + LABEL_GAP_PT) * px - 1e-6, (text.get_text(), dx, dy)


def test_the_pareto_front_is_what_nothing_beats_on_both():
    pts = [dict(throughput_tok_s=t, energy_per_token_mj=e, n=n) for n, (t, e) in enumerate(
        [(10, 5), (20, 6), (15, 7), (20, 6.5), (5, 4), (30, 9)])]
    assert [p["n"] for p in pareto_front(pts)] == [4, 0, 1, 5]  # (15, 7) and (20, 6.5) are beaten by (20, 6)


@pytest.mark.parametrize("items", [["devices=8,16", "parallel.num_devices=32"], ["pp=1", "pp=2"],
                                   ["device.clock_hz=1e9", "device.clock_hz=2e9"]])
def test_a_field_varied_twice_is_refused(items):
    with pytest.raises(ValueError, match="--vary .* is given twice"):
        parse_vary(items)


@pytest.mark.parametrize("vary, needle", [
    ("device.foo=1,2", "device.foo is not a field"),
    ("device.gemv_row_cycles=-100,103,nan", "device.gemv_row_cycles=-100.0 is invalid"),
    ("device.clock_hz=2e9,inf", "device.clock_hz=inf is invalid"),
    ("model=llama2-7b,nosuch", "'nosuch' is neither a preset"),
    ("model.name=llama2-7b", "use --model"),
    ("device=1,2", "device is a section"),
])
def test_a_bad_vary_field_or_value_is_refused_before_any_point_runs(tmp_path, capsys, vary, needle):
    model = [] if vary.startswith("model=") else ["--model", "llama2-7b"]
    assert main(["sweep", *model, "--vary", vary, "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweep.csv").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--vary", "device.clock_hz=1e9,2e9", "--set", "device.clock_hz=3e9"],
     "--set device.clock_hz=3e9 sets device.clock_hz, which --vary varies"),
    (["--devices", "16", "--vary", "devices=8,16"], "--devices 16 sets devices, which --vary varies"),
    (["--tp", "2", "--vary", "parallel.tp=1,2"], "--tp 2 sets tp, which --vary varies"),
    (["--model", "llama2-13b", "--vary", "model=llama2-7b,llama2-13b"], "--model llama2-13b sets model"),
    (["--vary", "devices=8,16,8"], "--vary devices: the value 8 is given twice"),
    (["--vary", "device.clock_hz=1e9,1000000000"], "the value 1000000000 is given twice (1e9 and 1000000000 are "
                                                   "the same)"),
    (["--seed", "3", "--vary", "model.seed=1,2"], "--seed 3 sets seed, which --vary varies"),
    (["--set", "devices=8", "--vary", "devices=8,16"], "devices is not a field"),  # --set takes config paths only
    (["--vary", "devices=8,16", "--trace", "sample_conv", "--decode", "100"], "--decode sets the closed form's workload"),
])
def test_what_every_point_would_overwrite_or_ignore_is_refused(tmp_path, capsys, flags, needle):
    """A flag or --set of a field --vary varies, a value given twice, a workload beside a trace: one
    line, before any point runs (each was silently replaced, repeated or unused)."""
    model = [] if "model=" in " ".join(flags) else ["--model", "llama2-7b"]
    assert main(["sweep", *model, *flags, "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweep.csv").exists()


def test_a_sweep_where_no_point_runs_fails(tmp_path, capsys):
    assert main(["sweep", "--model", "llama2-70b", "--vary", "devices=4,8", "--out", str(tmp_path),
                 "--no-plots"]) == 2
    assert "none of the 2 points could run" in capsys.readouterr().err
    assert all("does not fit" in r["error"] for r in csv.DictReader(open(tmp_path / "sweep.csv")))


def test_a_sweep_of_one_point_counts_it_in_the_singular(tmp_path, capsys):
    """'1 points' (and 'none of the 1 points could run') read wrong: one point is 'a point'."""
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8", "--out", str(tmp_path / "a"),
                 "--no-plots"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 point, 1 evaluated, 0 could not run: ")
    assert main(["sweep", "--model", "llama2-70b", "--vary", "devices=4", "--out", str(tmp_path / "b"),
                 "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "the point could not run (" in err and "its error is in" in err and "1 points" not in err, err


def test_a_trace_sweep_point_that_cannot_run_is_an_error_row_not_zeros(tmp_path, capsys):
    """A mapping that cannot hold the model is refused at its point as the closed form refuses it (no
    row of 0 tok/s and 0 mJ per token to sit on the Pareto front), and so is a point where no request
    completes, with the requests' reasons."""
    assert main(["sweep", "--model", "llama2-70b", "--vary", "devices=8,32", "--trace", "sample_conv",
                 "--num-requests", "3", "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    small, ok = csv.DictReader(open(tmp_path / "a" / "sweep.csv"))
    assert "does not fit" in small["error"] and small["throughput_tok_s"] == small["energy_per_token_mj"] == ""
    assert ok["error"] == "" and float(ok["energy_per_token_mj"]) > 0
    assert "2 points, 1 evaluated, 1 could not run" in capsys.readouterr().out
    huge = tmp_path / "huge.csv"
    huge.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,100000,10\n")
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8,16", "--trace", str(huge),
                 "--out", str(tmp_path / "b"), "--no-plots"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "b" / "sweep.csv")))
    assert all(r["error"].startswith("no request completed (1 failed): context_exceeded 1") for r in rows)


def test_a_trace_sweep_reads_the_trace_once_before_any_point(tmp_path, capsys, caplog):
    zero = tmp_path / "zero.csv"
    zero.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,0,5\n1,10,4\n")
    assert main(["sweep", "--trace", str(zero), "--vary", "devices=8,16", "--out", str(tmp_path / "ok"),
                 "--no-plots"]) == 0
    assert sum("1 of 2 trace requests have 0 tokens" in r.getMessage() for r in caplog.records) == 1  # not per point
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    assert main(["sweep", "--trace", str(bad), "--vary", "devices=8,16", "--out", str(tmp_path / "bad"),
                 "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"cent sweep: error: {bad}:1: header" in err and "name the format with --format" in err
    assert "fmt=" not in err and "cent bench" not in err  # its own flag, not cent bench's
    assert not (tmp_path / "bad" / "sweep.csv").exists()


def test_a_sharegpt_trace_is_refused_in_the_command_lines_words(tmp_path, capsys):
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "hello"}]}]))
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8", "--trace", str(conv),
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--trace {conv} is ShareGPT" in err and f"cent bench run --trace {conv} --rate" in err
    assert "count_tokens=" not in err and "arrivals_s=" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["sweep", "--model", "llama2-7b", "--vary", "devices=8,x"],
     "cent sweep: error: --vary devices: parallel.num_devices='x' is invalid: expected an integer, e.g. 8\n"),
    (["simulate", "--set", "scheduler.max_waiting=many"],
     "cent simulate: error: scheduler.max_waiting='many' is invalid: expected an integer, e.g. 1024\n"),
    (["simulate", "--config", "{yaml}"], "model.max_seq_len='4k' is invalid: expected an integer, e.g. 8192\n"),
    # a default of 0 means off or derived (no GPUs, a stage a block): not the example
    (["simulate", "--set", "gpu.count=x"], "gpu.count='x' is invalid: expected an integer, e.g. 4\n"),
    (["simulate", "--set", "model.head_dim=x"], "model.head_dim='x' is invalid: expected an integer, e.g. 128\n"),
    # a default of 0 with a floor above 4 (the sequences a step holds), and a default of None: not 4
    (["simulate", "--set", "gpu.max_num_batched_tokens=x"],
     "gpu.max_num_batched_tokens='x' is invalid: expected an integer, e.g. 8192\n"),
    (["simulate", "--set", "server.max_tokens_default=x"],
     "server.max_tokens_default='x' is invalid: expected an integer, e.g. 4096\n"),
])
def test_an_integer_fields_example_is_the_fields_own(args, says, tmp_path, capsys):
    """A device count was told `e.g. 4096`, every integer field's example: now the field's default."""
    (tmp_path / "c.yaml").write_text("model:\n  max_seq_len: 4k\n")
    assert main([a.format(yaml=tmp_path / "c.yaml") for a in args]) == 2
    err = capsys.readouterr().err
    assert err.endswith(says) and err.count("\n") == 1, err


@pytest.mark.parametrize("args, says", [
    (["simulate", "--set", "server.pace_factor=fast"],
     "cent simulate: error: server.pace_factor='fast' is invalid: expected a number, e.g. 1\n"),
    (["simulate", "--set", "device.clock_hz=2GHz"], "device.clock_hz='2GHz' is invalid: expected a number, e.g. 2e9\n"),
    (["simulate", "--config", "{yaml}"], "server.pace_factor='fast' is invalid: expected a number, e.g. 1\n"),
    # a default of 0 is off: not the example
    (["simulate", "--set", "model.expert_skew=lots"], "model.expert_skew='lots' is invalid: expected a number, e.g. 0.5\n"),
    # unset by default: no example
    (["simulate", "--set", "gpu.tco_per_gpu=x"], "gpu.tco_per_gpu='x' is invalid: expected a number\n"),
    # the default exactly, as --set reads it back (:g said 267.708 and 28.17, neither of them the default)
    (["simulate", "--set", "device.energy.controller_trx_mw=x"],
     "device.energy.controller_trx_mw='x' is invalid: expected a number, e.g. 267.7082056\n"),
    (["simulate", "--set", "device.unit_cost_usd=x"],
     "device.unit_cost_usd='x' is invalid: expected a number, e.g. 28.17\n"),
])
def test_a_number_fields_example_is_the_fields_own(args, says, tmp_path, capsys):
    """Every number field's --set error said `e.g. 1.5e9` (a pace factor of 1.5e9) and a config file's
    none: now the field's default, as an integer field's."""
    (tmp_path / "c.yaml").write_text("server:\n  pace_factor: fast\n")
    assert main([a.format(yaml=tmp_path / "c.yaml") for a in args]) == 2
    err = capsys.readouterr().err
    assert err.endswith(says) and err.count("\n") == 1, err


@pytest.mark.parametrize("value, text", [
    (1234567.0, "1234567"), (2e9, "2e9"), (1.5e9, "1.5e9"), (1e6, "1e6"), (123456.0, "123456"),
    (12345678.0, "12345678"), (10000.0, "10000"), (3e-5, "3e-5"), (0.00015, "0.00015"), (54.5, "54.5"),
    (1.0, "1"), (28.169999999999998, "28.17"), (267.7082056, "267.7082056"), (1e-15, "1e-15"),
])
def test_a_number_example_is_the_default_exactly_and_short_when_round(value, text):
    """:g rounded an example to 6 digits (1234567.0 said 1.23457e+06, which --set reads as another number):
    the text now reads back to the float within a double's 15 decimal figures (a sum's last-bit rounding,
    28.169999999999998, reads as the 28.17 a user types), and a round number stays short."""
    from cent_serve.config.fields import _number_text

    assert _number_text(value) == text
    assert float(text) == pytest.approx(value, rel=1e-15, abs=0)


def test_a_csv_of_lengths_only_is_refused_with_where_it_fits(tmp_path, capsys):
    """A Vidur length trace (no arrival column) has no arrivals to sweep: say so, and that cent bench's
    --lengths-from takes it."""
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n100,20,120,5.0\n")
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8", "--trace", str(lengths),
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "the file has lengths only" in err and "cent bench run --synthetic poisson" in err
    assert f"--lengths-from {lengths}" in err and "TraceLengths" not in err
    # with --format, the file is read as a trace (no header sniffed): the same line, cent sweep's fix
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8", "--trace", str(lengths), "--format", "vidur",
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 2
    assert capsys.readouterr().err == err


def test_a_trace_sweep_prints_each_points_failed_requests_and_why(tmp_path, capsys):
    huge = tmp_path / "huge.csv"
    huge.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,100000,10\n1,100,10\n")
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8,16", "--trace", str(huge),
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if "requests failed" in line]
    assert [line.split(":")[0] for line in failed] == ["parallel.num_devices=8", "parallel.num_devices=16"]
    assert all("1 of 2 requests failed: context_exceeded 1 (e.g. the prompt has 100000 tokens" in line
               for line in failed)
    assert "2 points, 2 evaluated, 0 could not run" in lines[-1]


def test_a_trace_sweep_says_once_what_the_flags_do_about_failed_requests(tmp_path, capsys):
    """Each point's context_exceeded requests were printed without the fix bench run prints under them
    (--max-prompt-tokens, --max-output-tokens, which cent sweep takes too): now once, after the points."""
    huge = tmp_path / "huge.csv"
    huge.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,100000,10\n1,100,10\n")
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8,16", "--trace", str(huge),
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fixes = [line for line in lines if line.startswith("context_exceeded: clip the requests' lengths with "
                                                       "--max-prompt-tokens and --max-output-tokens")]
    assert len(fixes) == 1 and lines.index(fixes[0]) == len(lines) - 2, lines


def test_the_pareto_legend_names_only_what_the_panel_shows():
    """No 'a point off the front' entry when every point is on it; the title fits a single narrow
    panel (two lines)."""
    from cent_serve.sweep_plots import pareto_figure

    def labels(rows):
        fig, axes = pareto_figure(rows, ["parallel.num_devices"])
        return axes[0].get_legend_handles_labels()[1], fig._suptitle.get_text()

    row = dict(model_name="m", **{"parallel.num_devices": 8})
    on_front = [dict(row, throughput_tok_s=1.0, energy_per_token_mj=1.0),
                dict(row, throughput_tok_s=2.0, energy_per_token_mj=2.0)]
    legend, title = labels(on_front)
    assert "a point off the front" not in legend and "\n" in title
    legend, _ = labels(on_front + [dict(row, throughput_tok_s=0.5, energy_per_token_mj=3.0)])
    assert "a point off the front" in legend


def test_the_csv_has_the_same_columns_whatever_the_points_gave(tmp_path, capsys):
    """Every point failing, some, none: the columns of the three sweeps are the same (scripts reading
    several sweeps find each figure where it was; when every point failed the header was the varied
    field, the error and the config)."""
    runs = {"none": "devices=2,4", "some": "devices=8,32", "all": "devices=32,64"}  # 70B needs 9 devices or more
    for name, vary in runs.items():
        code = main(["sweep", "--model", "llama2-70b", "--vary", vary, "--out", str(tmp_path / name), "--no-plots"])
        assert code == (2 if name == "none" else 0)
    capsys.readouterr()
    heads = [next(csv.reader(open(tmp_path / name / "sweep.csv"))) for name in runs]
    assert heads[0] == heads[1] == heads[2] and "error" in heads[0] and "avg_power_w" in heads[0]
    rows = list(csv.DictReader(open(tmp_path / "some" / "sweep.csv")))
    assert rows[0]["error"] and not rows[1]["error"] and rows[1]["avg_power_w"]


def test_average_power_follows_the_whole_step_where_the_artifacts_power_does_not(tmp_path, capsys):
    """power_w is the artifact's (a token's energy over its blocks' PIM time): a slower switch leaves it;
    avg_power_w, energy per token x throughput, falls as the switch slows the tokens."""
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8", "--pp", "1", "--tp", "8",
                 "--vary", "fabric.switch_latency_ns=20,2000", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    fast, slow = csv.DictReader(open(tmp_path / "sweep.csv"))
    assert float(fast["power_w"]) == pytest.approx(float(slow["power_w"]), rel=1e-12)
    assert float(slow["avg_power_w"]) < 0.9 * float(fast["avg_power_w"])
    for r in (fast, slow):
        joules_per_s = float(r["energy_per_token_mj"]) * 1e-3 * float(r["throughput_tok_s"])
        assert float(r["avg_power_w"]) == pytest.approx(joules_per_s, rel=0.05)  # phase means of products
    assert (tmp_path / "figures.png").stat().st_size > 10_000  # the figures against the varied field


def test_tokens_per_dollar_follow_the_device_price_when_it_is_varied(tmp_path, capsys):
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8",
                 "--vary", "device.unit_cost_usd=28.17,56.34", "--out", str(tmp_path), "--no-plots"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert rows[0]["tokens_per_dollar_ratio"] == rows[1]["tokens_per_dollar_ratio"]  # the TCO convention's
    assert float(rows[0]["tok_s_per_usd"]) == pytest.approx(2 * float(rows[1]["tok_s_per_usd"]), rel=1e-12)


def test_a_sweep_over_channels_says_once_where_the_tco_ratio_s_prices_come_from(tmp_path, capsys):
    """Every point's tokens_per_dollar_ratio prices its device as the paper's unless device.tco_per_device
    says otherwise: the terminal says so in one line naming the varied field, and a TCO varied with it
    moves the ratio (and silences the line)."""
    common = ["sweep", "--model", "llama2-7b", "--devices", "8", "--out", str(tmp_path), "--no-plots"]
    assert main(common + ["--vary", "device.num_channels=32,64"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "device.tco_per_device" in x]
    assert len(lines) == 1 and "which device.num_channels does not move" in lines[0], lines
    assert main(common + ["--vary", "device.tco_per_device=0.0228125,0.045625"]) == 0
    assert "does not move" not in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert float(rows[1]["tokens_per_dollar_ratio"]) == pytest.approx(float(rows[0]["tokens_per_dollar_ratio"]) / 2,
                                                                      rel=1e-12)


def test_the_tokens_per_dollar_plot_reads_the_price_when_it_is_varied(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from cent_serve.sweep_plots import plot_tokens_per_dollar

    rows = [dict(model_name="m", devices=8, **{"device.unit_cost_usd": c}, tokens_per_dollar_ratio=6.0,
                 tok_s_per_usd=t) for c, t in (("28", 14.0), ("56", 7.0))]
    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, xs, ys, *a, **k: (drawn.append((list(xs), list(ys))),
                                                                    real(self, xs, ys, *a, **k))[1])
    plot_tokens_per_dollar(rows, ["device.unit_cost_usd"], tmp_path / "t.png")
    assert drawn == [([28.0, 56.0], [14.0, 7.0])]  # per device dollar against the price, not the TCO ratio
    # the TCO varied with the price: the ratio prices each point's device, so it is what is drawn
    priced = [dict(r, **{"device.tco_per_device": t}, tokens_per_dollar_ratio=q)
              for r, t, q in zip(rows, ("0.0228", "0.0456"), (6.0, 3.0))]
    drawn.clear()
    plot_tokens_per_dollar(priced, ["device.unit_cost_usd", "device.tco_per_device"], tmp_path / "t.png")
    assert drawn == [([28.0], [6.0]), ([56.0], [3.0])]  # a line for each TCO (the cross product's)


@pytest.mark.parametrize("where", ["the path", "its parent"])
def test_out_is_checked_before_any_point_runs(tmp_path, capsys, monkeypatch, where):
    import cent_serve.sweep as sweep

    (tmp_path / "results").write_text("a file where a directory would go")
    out = tmp_path / "results" if where == "the path" else tmp_path / "results" / "deeper"
    ran = []
    monkeypatch.setattr(sweep, "closed_form_figures", lambda *a: ran.append(a))
    assert main(["sweep", "--model", "llama2-7b", "--vary", "devices=8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "a file" in err and len(err.strip().splitlines()) == 1 and not ran


def test_a_trace_sweep_takes_cent_bench_runs_selection_flags_and_records_them(tmp_path, capsys):
    """--format, --start-s, --rate (and the rest of bench run's selection) shape the replay at every point,
    and each row's config records them as bench run's config.json does; without --trace they are refused."""
    odd = tmp_path / "odd.csv"  # both Vidur's and Azure's columns: detection reads Vidur's, --format azure Azure's
    odd.write_text("arrived_at,num_prefill_tokens,num_decode_tokens,TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   + "".join(f"0,1,1,2024-05-10 00:00:0{i}.5,16,4\n" for i in range(4)))
    out = tmp_path / "out"
    assert main(["sweep", "--trace", str(odd), "--format", "azure", "--start-s", "0.5", "--rate", "4",
                 "--max-output-tokens", "3", "--vary", "devices=8,16", "--out", str(out), "--no-plots"]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [int(r["completed"]) for r in rows] == [3, 3]  # the row at 0 s dropped by --start-s
    for r in rows:
        assert json.loads(r["config"])["bench"] == dict(trace=str(odd), format="azure", start_s=0.5, num_requests=200,
                                                        time_scale=1.0, rate=4.0, prompt_scale=1.0, output_scale=1.0,
                                                        max_prompt_tokens=None,
                                                        max_output_tokens=3)
    vidur = tmp_path / "vidur.csv"
    vidur.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,16,4\n")
    assert main(["sweep", "--trace", str(vidur), "--format", "azure", "--vary", "devices=8", "--out",
                 str(tmp_path / "az"), "--no-plots"]) == 2
    assert "it is a vidur header: give vidur as the format (--format)" in capsys.readouterr().err
    assert main(["sweep", "--model", "llama2-7b", "--start-s", "5", "--vary", "devices=8", "--out",
                 str(tmp_path / "closed"), "--no-plots"]) == 2
    assert ("--start-s selects the requests of a --trace replay; the closed form runs the paper's workload "
            "(--prompt, --decode): add --trace or drop --start-s") in capsys.readouterr().err


def test_a_varied_model_field_leaves_the_paper_s_gpus_out(tmp_path, capsys):
    """The paper's GPU ratios are for Llama2-7B as published: a point with 16 of its layers has none."""
    assert main(["sweep", "--model", "llama2-7b", "--vary", "model.num_layers=16,32", "--out", str(tmp_path),
                 "--no-plots"]) == 0
    half, whole = csv.DictReader(open(tmp_path / "sweep.csv"))
    assert half["throughput_ratio"] == "" and float(whole["throughput_ratio"]) > 1


def test_a_spread_under_one_percent_is_drawn_flat_and_axes_carry_units():
    """0.016% between points filled the whole axis and read as a steep trend (audit): an axis at least
    2% of the value wide; a varied field's axis names its unit."""
    from matplotlib.figure import Figure

    from cent_serve.sweep_plots import _lines, axis_label

    rows = [{"fabric.lane_gbps": v, "throughput_tok_s": y} for v, y in ((4, 1813.65), (8, 1813.8), (16, 1813.95))]
    ax = Figure().subplots()
    _lines(ax, rows, ["fabric.lane_gbps"], "fabric.lane_gbps", "throughput_tok_s")
    low, high = ax.get_ylim()
    assert high - low >= 0.0199 * 1813.8 and low < 1813.65 and high > 1813.95
    assert ax.get_xlabel() == "fabric.lane_gbps (GiB/s a lane)"
    assert axis_label("device.clock_hz") == "device.clock_hz (Hz)" and axis_label("devices") == "devices"
    # a DMA width, a host time and a wire format were bare on the axis (audit); counts stay bare
    assert axis_label("device.dma_bytes_per_cycle") == "device.dma_bytes_per_cycle (bytes a cycle)"
    assert axis_label("device.host_sample_s") == "device.host_sample_s (s)"
    assert axis_label("fabric.activation_bytes") == "fabric.activation_bytes (bytes)"
    assert axis_label("device.bytes_per_element") == "device.bytes_per_element (bytes)"
    assert axis_label("device.silu_cycles_per_burst") == "device.silu_cycles_per_burst (cycles a burst)"
    assert axis_label("device.acc_simd_lanes") == "device.acc_simd_lanes"


def test_two_checkpoints_of_one_basename_are_two_points(tmp_path):
    """A checkpoint's model is named after its directory: runs/1/ckpt and runs/2/ckpt are two models,
    not a value given twice."""
    import shutil
    from pathlib import Path

    source = Path(__file__).parent / "data" / "hf_tiny_llama"
    for run in ("1", "2"):
        shutil.copytree(source, tmp_path / run / "ckpt")
    assert main(["sweep", "--vary", f"model={tmp_path / '1' / 'ckpt'},{tmp_path / '2' / 'ckpt'}", "--devices", "8",
                 "--prompt", "64", "--decode", "64",  # its 256-token context: the paper's 4,096 do not fit
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))) == 2


@pytest.mark.parametrize("argv", [
    ["sweep", "--vary", "device.clock_hz=1e9,2e9"],  # every point: one closed form with cent simulate
    ["simulate", "--sweep"],                          # every mapping
    ["simulate", "--emulate", "--local"],             # through the devices
])
def test_a_workload_past_the_models_context_is_refused_as_cent_simulate_refuses_it(argv, tmp_path, capsys):
    """One check for every form of the paper's workload (`cent_serve.paper`): the sweeps and the
    emulation once evaluated 7,680 tokens of a 4,096-token model where `cent simulate` refused them."""
    out = ["--out", str(tmp_path / "out"), "--no-plots"] if argv[0] == "sweep" else []
    assert main([*argv, "--model", "llama2-7b", "--devices", "16", "--prompt", "4096", "--decode", "3584",
                 "--numerics", "off", *out]) == 2
    assert "7680 tokens exceed the model's context, model.max_seq_len=4096" in capsys.readouterr().err


def test_a_sweep_s_kv_refusal_names_fixes_its_command_takes(tmp_path, capsys):
    """Llama2-70B as 80 stages on 16 devices of 9.77 GiB: the weights fit, the KV of 80 queries does
    not. `cent simulate` suggests --batch 16; `cent simulate --sweep` refuses --batch, so its rows name
    the devices and the context instead (they said "use --batch 16" since they called closed_form);
    `cent sweep` takes --batch, and its row names it."""
    small = ["--model", "llama2-70b", "--devices", "16", "--numerics", "off"]
    assert main(["simulate", "--sweep", *small, "--set", "device.rows_per_bank=10000", "--json"]) == 0
    sweep_error = next(r["error"] for r in json.loads(capsys.readouterr().out)["points"] if r["pp"] == 80)
    assert main(["sweep", *small, "--pp", "80", "--vary", "device.rows_per_bank=10000", "--no-plots",
                 "--out", str(tmp_path / "out")]) == 2
    capsys.readouterr()
    row_error = next(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))["error"]
    for error in (sweep_error, row_error):
        assert "the largest batch at context 4096 is 16" in error and "27 devices (the fewest that hold it with a 4,096-token query a stage)" in error
    assert "--batch" not in sweep_error, sweep_error
    assert "use --batch 16, 27 devices" in row_error, row_error
    assert main(["simulate", *small, "--pp", "80", "--set", "device.rows_per_bank=10000"]) == 2
    assert "use --batch 16, 27 devices" in capsys.readouterr().err  # its own flag: the fix it names


def test_a_trace_sweep_point_s_config_is_the_one_it_replayed(tmp_path):
    """A trace point replays timing only, in this process: its row's config says numerics off and
    executor local, as its figures were made (recorded before the replay set them, it said the base's
    numerics, auto, which with `--config` reruns tiny with full numerics)."""
    assert main(["sweep", "--vary", "device.clock_hz=1e9", "--trace", "sample_conv", "--num-requests", "5",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    config = json.loads(next(csv.DictReader(open(tmp_path / "sweep.csv")))["config"])
    assert (config["numerics"], config["executor"]) == ("off", "local")


def test_a_varied_context_reads_a_checkpoints_window_again_at_each_point(tmp_path, capsys):
    """A Qwen checkpoint's window is read within the context served (a window at least the context hides
    no key: full attention); varying model.max_seq_len reads it again at each point, as `--set` does."""
    from pathlib import Path

    ckpt = Path(__file__).parent / "data" / "hf_families" / "qwen2_window"  # window 8, blocks 1 and 2
    (tmp_path / "c.yaml").write_text(f"model: {{checkpoint: {ckpt}, max_seq_len: 8}}\n")  # read at 8: no window
    for base in (["--model", str(ckpt)], ["--config", str(tmp_path / "c.yaml")]):
        assert main(["sweep", *base, "--vary", "model.max_seq_len=8,64", "--devices", "3", "--prompt", "4",
                     "--decode", "4", "--out", str(tmp_path), "--no-plots"]) == 0
        capsys.readouterr()
        windows = {}
        for r in csv.DictReader(open(tmp_path / "sweep.csv")):
            recorded = json.loads(r["config"])
            recorded.pop("workload")
            m = _from_dict(CentConfig, recorded, "").model
            windows[m.max_seq_len] = m.block_windows
        assert windows == {8: (0, 0, 0), 64: (0, 8, 8)}, base


def _plot_titles(monkeypatch) -> dict[str, str]:
    """{a sweep plot's file name: its figure's title and its panels' titles}, filled as the plots are saved.
    The files are not rendered (the titles are set before): test_a_closed_form_sweep_writes_every_point_with_its_config
    checks the written plots."""
    import cent_serve.sweep_plots as plots

    titles: dict[str, str] = {}

    def save(fig, axes, path, *args, **kwargs):
        texts = [fig._suptitle.get_text()] if fig._suptitle else []
        titles[path.name] = "\n".join(texts + [ax.get_title() for ax in fig.axes])
        return path

    monkeypatch.setattr(plots, "_save", save)
    return titles


def test_the_figures_title_names_the_workload_the_points_ran(tmp_path, capsys, monkeypatch):
    """figures.png's title said "the paper's workload" whatever --prompt and --decode gave (audit: a
    1024 + 1024 sweep read as 512 + 3584)."""
    titles = _plot_titles(monkeypatch)
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8", "--prompt", "1024", "--decode", "1024",
                 "--vary", "device.clock_hz=2e9,4e9", "--out", str(tmp_path / "own")]) == 0
    assert "prompt 1024 + decode 1024" in titles["figures.png"] and "paper" not in titles["figures.png"]
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8",
                 "--vary", "device.clock_hz=2e9,4e9", "--out", str(tmp_path / "paper")]) == 0
    capsys.readouterr()
    assert "the paper's workload: prompt 512 + decode 3584" in titles["figures.png"]


def test_every_plot_names_the_settings_every_point_shares(tmp_path, capsys, monkeypatch):
    """A sweep of a 4 GHz device over its channels drew plots titled as the paper's 2 GHz device's (audit):
    each plot names the --set fields (and --config file) every point shares, as cent simulate's 'given:'
    line does."""
    titles = _plot_titles(monkeypatch)
    assert main(["sweep", "--model", "llama2-7b", "--set", "device.clock_hz=4e9",
                 "--set", "fabric.lane_gbps=16", "--vary", "device.num_channels=32,64", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert sorted(titles) == ["figures.png", "pareto.png", "tokens_per_dollar.png"]
    for name, title in titles.items():
        assert "given: --set device.clock_hz=4e9 --set fabric.lane_gbps=16" in " ".join(title.split()), name
    assert main(["sweep", "--model", "llama2-7b", "--vary", "device.num_channels=32,64",
                 "--out", str(tmp_path / "plain")]) == 0
    assert not any("given:" in title for title in titles.values())


def test_a_point_that_cannot_run_says_why_on_the_terminal(tmp_path, capsys):
    """'6 points, 4 evaluated, 2 could not run' and nothing more (audit): the reason was in sweep.csv only,
    while cent bench paper prints a skipped mapping's. Each such point is a line: its values and its error."""
    assert main(["sweep", "--model", "llama2-70b", "--devices", "32", "--vary", "device.num_channels=16,32",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    why = [line for line in lines if ": could not run: " in line]
    assert len(why) == 1 and why[0].startswith("device.num_channels=16: could not run: llama2-70b on 32 devices")
    assert "does not fit" in why[0]
    assert "2 points, 1 evaluated, 1 could not run" in lines[-1]


def test_the_plots_name_the_mapping_and_hardware_flags_every_point_shares(tmp_path, capsys, monkeypatch):
    """A sweep of 16 devices at tp 2 drew plots that named neither (their 'given:' line named --config and
    --set only), so they read as the default 8-device pipeline's: the config flags given on the command line
    (--seed, --hardware, --devices, --pp, --tp) are named too, before the --set ones, in the order they apply."""
    titles = _plot_titles(monkeypatch)
    assert main(["sweep", "--model", "llama2-7b", "--devices", "16", "--tp", "2", "--pp", "8", "--seed", "3", "--hardware", "cent",
                 "--set", "device.clock_hz=4e9", "--vary", "device.num_channels=32,64", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for name, title in titles.items():
        assert "given: --seed 3 --hardware cent --devices 16 --pp 8 --tp 2 --set device.clock_hz=4e9" in " ".join(title.split()), name


def test_every_plot_names_the_workload_the_points_ran(tmp_path, capsys, monkeypatch):
    """figures.png named the workload, pareto.png and tokens_per_dollar.png did not, though their throughput
    moves with it: a 1024 + 1024 sweep's Pareto front read as the paper's 512 + 3584."""
    titles = _plot_titles(monkeypatch)
    assert main(["sweep", "--model", "llama2-7b", "--prompt", "1024", "--decode", "1024",
                 "--vary", "device.num_channels=32,64", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert sorted(titles) == ["figures.png", "pareto.png", "tokens_per_dollar.png"]
    for name, title in titles.items():
        assert "closed form, prompt 1024 + decode 1024" in " ".join(title.split()), name


def test_the_plots_name_a_checkpoint_by_its_model_name_and_keep_two_of_one_name_apart(tmp_path):
    """--vary model=DIR1,DIR2: figures.png's legend read 'model=/tmp/.../snapshots/0e9e39f2...' (the path
    as given) where the title and the Pareto panels said the model's name; and two checkpoints of one
    name (runs/1/ckpt, runs/2/ckpt) shared one Pareto panel, their points mixed. Each model is its name,
    or the path as given where two share a name."""
    from matplotlib.figure import Figure

    from cent_serve.sweep_plots import _lines, pareto_figure

    row = dict(throughput_tok_s=1.0, energy_per_token_mj=1.0)
    rows = [dict(row, model=path, model_name=name, devices=d, throughput_tok_s=d)
            for path, name in (("/m/llama31_8b", "llama31_8b"), ("llama2-7b", "llama2-7b"))
            for d in (8, 16)]
    ax = Figure().subplots()
    _lines(ax, rows, ["model", "devices"], "devices", "throughput_tok_s")
    assert ax.get_legend_handles_labels()[1] == ["model=llama31_8b", "model=llama2-7b"]
    _, axes = pareto_figure(rows, ["model", "devices"])
    assert [a.get_title() for a in axes] == ["llama31_8b", "llama2-7b"]
    twins = [dict(r, model=f"runs/{i}/ckpt", model_name="ckpt") for i, r in enumerate(rows[:2], 1)]
    ax = Figure().subplots()
    _lines(ax, twins + rows[2:], ["model", "devices"], "devices", "throughput_tok_s")
    assert ax.get_legend_handles_labels()[1] == ["model=runs/1/ckpt", "model=runs/2/ckpt", "model=llama2-7b"]
    _, axes = pareto_figure(twins + rows[2:], ["model", "devices"])
    assert [a.get_title() for a in axes] == ["runs/1/ckpt", "runs/2/ckpt", "llama2-7b"]


def test_a_config_file_s_model_fields_under_a_varied_model_are_named(tmp_path, capsys, caplog):
    """`cent sweep --config f.yaml --vary model=...` dropped the file's model fields (its `max_seq_len: 8192`
    beside `name: llama2-70b`) in silence: a varied model is chosen whole, as `--model` chooses it (docs/config.md:
    it replaces the model section), and only --set model.F=V applies to it. The fields are named in one warning
    with the --set that applies them, as they are under --model; a --set of the same field applies and is not
    named; a config.json a run wrote (every field at its model's own value) names none."""
    from cent_serve.config import build_config, config_to_dict

    def run(*argv: str) -> list[str]:
        caplog.clear()
        assert main(list(argv)) == 0
        capsys.readouterr()
        return [r.getMessage() for r in caplog.records if "replaces the file's model section" in r.getMessage()]

    f = tmp_path / "f.yaml"
    f.write_text("model: {name: llama2-70b, max_seq_len: 8192, expert_skew: 2}\nparallel: {num_devices: 32}\n")
    vary = ["--vary", "model=llama2-7b,llama2-13b", "--no-plots"]
    said = run("sweep", "--config", str(f), *vary, "--out", str(tmp_path / "a"))
    assert said == [f"--config {f} model.max_seq_len=8192, model.expert_skew=2: --vary model replaces the file's model "
                    "section (the model chosen whole, as --model chooses it), so they are not read; to apply "
                    "model.max_seq_len=8192 to every varied model, give --set model.max_seq_len=8192; "
                    "model.expert_skew=2: no model here has experts, so nothing would read it"], said
    assert not any("no model here has experts" in r.getMessage() and "replaces the file's model" not in r.getMessage()
                   for r in caplog.records)  # named once, above
    rows = list(csv.DictReader(open(tmp_path / "a" / "sweep.csv")))
    assert [json.loads(r["config"])["model"]["max_seq_len"] for r in rows] == [4096, 4096]
    said = run("sweep", "--config", str(f), *vary, "--set", "model.max_seq_len=8192", "--out", str(tmp_path / "b"))
    assert len(said) == 1 and "model.max_seq_len" not in said[0] and "model.expert_skew=2" in said[0], said
    rows = list(csv.DictReader(open(tmp_path / "b" / "sweep.csv")))
    assert [json.loads(r["config"])["model"]["max_seq_len"] for r in rows] == [8192, 8192]
    said = run("simulate", "--config", str(f), "--model", "llama2-7b")
    assert len(said) == 1 and said[0].startswith(f"--config {f} model.max_seq_len=8192, model.expert_skew=2: "
                                                 "--model llama2-7b replaces"), said
    written = tmp_path / "written.json"
    written.write_text(json.dumps(config_to_dict(build_config("llama2-70b", devices=32))))
    assert run("sweep", "--config", str(written), *vary, "--out", str(tmp_path / "c")) == []
    assert run("simulate", "--config", str(f)) == []  # its own model: every field read


@pytest.mark.parametrize("trace", [None, "sample_conv"])
def test_the_csv_splits_each_points_energy_per_token_by_term(tmp_path, capsys, trace):
    """energy_<term>_mj, a column a term of energy.TERMS: they add up to the row's energy_per_token_mj; the
    closed form's are cent simulate's end2end energy_breakdown_mj, a replay's its devices' shares of the
    energy per token; a varied field that moves one term (the clock: standby over a step) moves it."""
    from cent_serve.timing.energy import TERMS

    extra = ["--trace", trace, "--num-requests", "20"] if trace else []
    assert main(["sweep", "--model", "llama2-7b", "--vary", "device.clock_hz=1e9,2e9", *extra,
                 "--out", str(tmp_path), "--no-plots"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert len(rows) == 2
    for r in rows:
        terms = {t: float(r[f"energy_{t}_mj"]) for t in TERMS}
        assert sum(terms.values()) == pytest.approx(float(r["energy_per_token_mj"]), rel=1e-9)
        assert terms["pim"] > 0 and terms["activate"] > 0
    if trace is None:
        assert main(["simulate", "--model", "llama2-7b", "--set", "device.clock_hz=2e9", "--prompt", "512",
                     "--decode", "3584", "--json"]) == 0
        want = json.loads(capsys.readouterr().out)["end2end"]["energy_breakdown_mj"]
        assert {t: float(rows[1][f"energy_{t}_mj"]) for t in TERMS} == pytest.approx(want, rel=1e-12)
    # standby draws over the step's time: a faster clock, a shorter step, less of it a token
    assert float(rows[1]["energy_active_standby_mj"]) < float(rows[0]["energy_active_standby_mj"])


@pytest.mark.parametrize("vary, example, listed", [
    ("device=16,32", "--vary device.num_channels=16,32", ("clock_hz", "column_cycles", "device.energy.FIELD")),
    ("device.energy=1e3,2e3", "--vary device.energy.act_mw=1e3,2e3", ("rd_mw", "pcie_pj_per_bit")),
    ("fabric=true,false", "--vary fabric.multicast=true,false", ("lane_gbps", "charge_local_hops")),
    ("server=1,2", "--vary server.port=1,2", ("host", "pace_factor")),  # numbers: a numeric field first
])
def test_a_section_given_to_vary_names_its_fields_and_one_that_takes_the_values(tmp_path, capsys, vary, example,
                                                                                listed):
    """--vary device=16,32 suggested `--set device.FIELD=VALUE`, neither a field nor --vary: one line naming
    the section's fields and, as the example, the first of them that takes every value given."""
    assert main(["sweep", "--model", "llama2-7b", "--vary", vary, "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--set" not in err, err
    assert example in err and all(name in err for name in listed), err
    assert not (tmp_path / "sweep.csv").exists()


@pytest.mark.parametrize("argv, closed_form", [(["simulate"], True), (["simulate", "--hardware", "gpu:a100-80gb:4"], True),
                                               (["sweep", "--vary", "devices=32", "--no-plots"], True),
                                               (["info"], False)])
def test_the_set_a_replaced_model_section_suggests_is_one_the_command_reads(tmp_path, capsys, caplog, argv,
                                                                             closed_form):
    """`cent simulate --config f.yaml --model llama2-7b`, the file's model section setting rms_norm_eps: the
    warning said "to apply it to this model, give --set model.rms_norm_eps=1e-06", and that --set then drew the
    closed form's own warning that it does not read it. A command that runs the closed form (cent simulate, on
    CENT or GPUs, and cent sweep without --trace) suggests the --set of what it reads and says which it reads on no
    model, and where to see them; a command that reads them all (cent info) suggests every one."""
    f = tmp_path / "f.yaml"
    f.write_text("model: {name: llama2-70b, max_seq_len: 8192, rms_norm_eps: 1.0e-6}\nparallel: {num_devices: 32}\n")
    caplog.clear()
    out = ["--out", str(tmp_path / "o")] if argv[0] == "sweep" else []
    assert main([*argv, "--config", str(f), "--model", "llama2-7b", *out]) == 0
    capsys.readouterr()
    said = [r.getMessage() for r in caplog.records if "replaces the file's model section" in r.getMessage()]
    assert len(said) == 1, said
    if closed_form:
        assert said[0].endswith("so they are not read; to apply model.max_seq_len=8192 to this model, give --set "
                                "model.max_seq_len=8192; model.rms_norm_eps=1e-06: the closed form does not read it on "
                                "any model (it sets the numerics' RMSNorm); to see it, serve it or replay a trace with full "
                                "numerics (cent serve, cent bench run), with --set model.rms_norm_eps=1e-06"), said
    else:
        assert said[0].endswith("so they are not read; to apply them to this model, give --set model.max_seq_len=8192 "
                                "--set model.rms_norm_eps=1e-06"), said
    # the --set it suggests draws no closed-form warning, nor is the file's replaced field warned of twice
    caplog.clear()
    assert main([*argv, "--config", str(f), "--model", "llama2-7b", "--set", "model.max_seq_len=8192", *out]) == 0
    capsys.readouterr()
    said = [r.getMessage() for r in caplog.records]
    assert not any("the closed form does not read" in m and "replaces the file's model" not in m for m in said), said


def test_a_section_given_to_vary_with_values_no_field_takes_suggests_no_field(tmp_path, capsys):
    """--vary device=a,b: no device field takes 'a', so the example is device.FIELD=a,b, not the section's
    first field with values it refuses (it said --vary device.num_channels=a,b, itself an error)."""
    assert main(["sweep", "--model", "llama2-7b", "--vary", "device=a,b", "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "e.g. --vary device.FIELD=a,b (device's fields: num_channels," in err, err
    assert "device.num_channels=a,b" not in err


def test_a_long_context_sweep_says_its_throughput_is_a_mean_of_rates(tmp_path, capsys):
    """throughput_tok_s is the artifact's mean of each context's throughput; at a 32k prompt it lies far
    above the tokens over the latency (cent simulate's note, `mean_rate_note`), and the sweep says so with
    the farthest point's two figures; the paper's workload on 70B (1.5% apart) gets no such line."""
    argv = ["sweep", "--model", "llama3.1-70b", "--devices", "128", "--prompt", "32768", "--decode", "1024",
            "--vary", "device.num_channels=32,64", "--out", str(tmp_path), "--no-plots"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert "tokens_over_latency_tok_s" not in rows[0]  # a note, not a column: sweep.csv's columns stay
    row = rows[1]  # 64 channels: the farthest
    queries = int(row["pp"]) * int(row["replicas"])
    done = queries * (32768 + 1024) / (float(row["token_latency_ms"]) * (32768 + 1024) / 1000)
    note = next(line for line in out.splitlines() if "mean of each context length's throughput" in line)
    assert f"device.num_channels=64: {float(row['throughput_tok_s']):.1f} against {done:.1f} tok/s" in note
    assert float(row["throughput_tok_s"]) > 1.3 * done
    assert main(["sweep", "--model", "llama2-70b", "--vary", "devices=32", "--out", str(tmp_path / "p"),
                 "--no-plots"]) == 0
    assert "mean of each context length's throughput" not in capsys.readouterr().out


def test_a_sweep_takes_fewer_queries_than_stages_for_a_long_context(tmp_path, capsys):
    """`cent sweep --batch B` runs B queries in flight as `cent simulate --batch B` does: Llama 3.1 70B's
    32k context on 32 devices cannot hold 80 queries (the refusal names --batch now), and at --batch 8 every
    point gives cent simulate's figures; a point with fewer stages than B says so; with --trace it is refused."""
    argv = ["sweep", "--model", "llama3.1-70b", "--devices", "32", "--prompt", "32768", "--decode", "1024",
            "--out", str(tmp_path), "--no-plots"]
    assert main([*argv, "--vary", "device.num_channels=32"]) == 2
    assert "--batch 23" in capsys.readouterr().err
    assert main([*argv, "--batch", "8", "--vary", "device.num_channels=32,64", "--vary", "tp=1,8"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["device.num_channels"], r["parallel.tp"], r["error"][:20]) for r in rows] == [
        ("32", "1", ""), ("32", "8", "--batch 8 is invalid"), ("64", "1", ""), ("64", "8", "--batch 8 is invalid")]
    assert json.loads(rows[0]["config"])["workload"] == dict(prompt=32768, decode=1024, batch=8)
    assert main(["simulate", "--model", "llama3.1-70b", "--devices", "32", "--prompt", "32768", "--decode", "1024",
                 "--batch", "8", "--set", "device.num_channels=64", "--json"]) == 0
    e2e = json.loads(capsys.readouterr().out)["end2end"]
    assert float(rows[2]["throughput_tok_s"]) == pytest.approx(e2e["throughput_tok_s"], rel=1e-12)
    assert float(rows[2]["energy_per_token_mj"]) == pytest.approx(e2e["energy_per_token_mj"], rel=1e-12)
    assert main(["sweep", "--model", "llama2-7b", "--trace", "sample_conv", "--batch", "4", "--vary", "devices=8",
                 "--out", str(tmp_path / "t")]) == 2
    assert "--batch" in capsys.readouterr().err


def test_a_varied_context_limit_says_the_closed_form_s_contexts_are_the_workload_s(tmp_path, capsys, caplog):
    """`--vary model.max_seq_len=8192,16384` asks "what if the context were longer?", but the closed form's
    contexts are --prompt + --decode's: the limit only lets them in, so every point gave the same figures in
    silence. The sweep now warns and names the flags that set the context; a replay, whose requests the limit
    admits or refuses, and a --set of the limit (to let a long workload in) are not warned of."""
    says = "--vary model.max_seq_len: the closed form reads it only to check that --prompt + --decode fit it"
    argv = ["sweep", "--model", "llama3.1-8b", "--devices", "8", "--vary", "model.max_seq_len=8192,16384",
            "--out", str(tmp_path), "--no-plots"]
    assert main(argv) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert rows[0]["throughput_tok_s"] == rows[1]["throughput_tok_s"]  # what the warning is about
    assert [r.getMessage() for r in caplog.records if says in r.getMessage()]
    caplog.clear()
    assert main(["sweep", "--model", "llama2-70b", "--prompt", "30000", "--decode", "976", "--batch", "8",
                 "--set", "model.max_seq_len=32768", "--vary", "devices=32", "--out", str(tmp_path / "s"),
                 "--no-plots"]) == 0
    assert main([*argv[:5], "--vary", "model.max_seq_len=256,8192", "--trace", "sample_conv", "--num-requests",
                 "3", "--out", str(tmp_path / "t"), "--no-plots"]) == 0
    capsys.readouterr()
    assert not [r for r in caplog.records if "model.max_seq_len" in r.getMessage()]


def test_an_element_width_alone_says_it_makes_a_narrower_dram(tmp_path, capsys, caplog):
    """"What if the weights were 8-bit?" as --vary device.bytes_per_element=1,2 alone keeps 1024-element rows
    and 16-element bursts, so 1 KB rows, 16 B bursts and 8 GiB devices: a DRAM narrower than CENT's, whose
    rows and bursts cost half the energy (70B: 372 against 687 mJ a token), not 8-bit weights on CENT's DRAM
    (docs/hardware_model.md section 1: also row_elements 2048 and burst_elements 32). It said nothing; now
    the sweep and cent simulate say so, with the fields to set; the documented recipe is not warned of."""
    says = "a DRAM narrower than CENT's"
    assert main(["sweep", "--model", "llama2-70b", "--vary", "device.bytes_per_element=1,2", "--out", str(tmp_path),
                 "--no-plots"]) == 0
    warned = [r.getMessage() for r in caplog.records if says in r.getMessage()]
    assert warned and "device.row_elements=2048 and device.burst_elements=32" in warned[0], warned
    caplog.clear()
    assert main(["simulate", "--model", "llama2-70b", "--seqlen", "4096", "--set", "device.bytes_per_element=1"]) == 0
    assert [r for r in caplog.records if says in r.getMessage()]
    caplog.clear()
    assert main(["simulate", "--model", "llama2-70b", "--seqlen", "4096", "--set", "device.bytes_per_element=1",
                 "--set", "device.row_elements=2048", "--set", "device.burst_elements=32"]) == 0
    assert main(["sweep", "--model", "llama2-70b", "--set", "device.row_elements=2048", "--set",
                 "device.burst_elements=32", "--vary", "device.bytes_per_element=1", "--out", str(tmp_path / "r"),
                 "--no-plots"]) == 0
    capsys.readouterr()
    assert not [r for r in caplog.records if says in r.getMessage()]


def test_an_element_width_with_cents_row_but_not_its_burst_is_called_narrower(caplog):
    """device.bytes_per_element=1 with row_elements=2048 but the 16-element bursts: CENT's 2 KB rows and 16 B
    bursts, a DRAM narrower than CENT's (its bursts cost less). The warning judged by the row alone and said
    'wider than CENT's ... cost more energy'. On GPUs (--hardware gpu:...) the device is not read: no warning."""
    assert main(["simulate", "--model", "llama2-70b", "--seqlen", "4096", "--set", "device.bytes_per_element=1",
                 "--set", "device.row_elements=2048"]) == 0
    warned = [r.getMessage() for r in caplog.records if "device.bytes_per_element=1 makes" in r.getMessage()]
    assert len(warned) == 1 and "bursts of 16 B, a DRAM narrower than CENT's" in warned[0], warned
    assert "cost less energy" in warned[0] and "wider" not in warned[0], warned
    caplog.clear()
    assert main(["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--prompt", "512",
                 "--decode", "512", "--set", "device.bytes_per_element=1"]) == 0
    assert not [r for r in caplog.records if "makes rows of" in r.getMessage()]


def test_a_sweep_s_mean_rate_note_counts_every_replica_s_queries(tmp_path, capsys):
    """At 64 devices Llama 3.1 8B runs two replicas of 32 stages, 2 queries each (--batch 2): the note's
    tokens over the latency are the four queries' (108.1 tok/s against the 197.8 mean of rates), as
    cent simulate's are, not one replica's."""
    assert main(["sweep", "--model", "llama3.1-8b", "--prompt", "114688", "--decode", "8192", "--batch", "2",
                 "--vary", "devices=64", "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    row = next(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert row["replicas"] == "2"
    done = 2 * 2 * 122880 / (float(row["token_latency_ms"]) * 122880 / 1000)
    note = next(line for line in out.splitlines() if "mean of each context length's throughput" in line)
    assert f"{float(row['throughput_tok_s']):.1f} against {done:.1f} tok/s" in note, note


def test_a_sweep_s_batch_is_checked_once_and_named_in_its_titles(tmp_path, capsys):
    """--batch 0 is refused before any point runs, in one line (else each point failed with cent simulate's
    'use 1..N' and the sweep said none could run); the plots' titles name the queries in flight."""
    import argparse

    from cent_serve.sweep import workload_text

    assert main(["sweep", "--model", "llama2-7b", "--batch", "0", "--vary", "devices=8", "--out", str(tmp_path),
                 "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "--batch 0 is invalid: use a positive number of queries in flight" in err and "none of" not in err
    args = argparse.Namespace(trace=None, prompt=512, decode=3584, batch=None)
    assert workload_text(args) == "closed form, the paper's workload: prompt 512 + decode 3584"
    args.batch = 1
    assert workload_text(args).endswith("prompt 512 + decode 3584, 1 query in flight")
    args.batch, args.prompt = 8, 32768
    assert workload_text(args) == "closed form, prompt 32768 + decode 3584, 8 queries in flight"


def test_the_element_width_warning_leaves_bf16_and_a_varied_row_or_burst_alone(tmp_path, caplog):
    """It is about device.bytes_per_element: a bf16 device with 2048-element rows (4 KB) is a wider DRAM the
    user set, not warned of; a sweep that varies the row or burst beside the width asks for those
    combinations, narrow ones included."""
    assert main(["simulate", "--model", "llama2-7b", "--seqlen", "4096", "--set", "device.row_elements=2048"]) == 0
    assert main(["sweep", "--model", "llama2-7b", "--vary", "device.bytes_per_element=1,2", "--vary",
                 "device.row_elements=1024,2048", "--out", str(tmp_path), "--no-plots"]) == 0
    assert not [r for r in caplog.records if "makes rows of" in r.getMessage()]


def test_fields_named_together_vary_in_step_and_cross_the_others():
    """`--vary devices,pp=32:80,64:40` is two points (32 with 80, 64 with 40), crossed with the other
    --vary's; the flat list keeps each field's values at the point's index."""
    from cent_serve.sweep import in_step_of, parse_vary_groups, vary_grid

    groups = parse_vary_groups(["devices,pp=32:80, 64:40", "device.clock_hz=1e9,2e9"])
    assert groups == [[("parallel.num_devices", ["32", "64"]), ("parallel.pp", ["80", "40"])],
                      [("device.clock_hz", ["1e9", "2e9"])]]
    assert [tuple(p.values()) for p in vary_grid(groups)] == [
        ("32", "80", "1e9"), ("32", "80", "2e9"), ("64", "40", "1e9"), ("64", "40", "2e9")]
    assert in_step_of(groups) == [("parallel.num_devices", "parallel.pp")]
    assert parse_vary(["devices,pp=32:80,64:40"]) == [("parallel.num_devices", ["32", "64"]), ("parallel.pp", ["80", "40"])]
    # the cross product stays the default
    assert len(vary_grid(parse_vary_groups(["devices=32,64", "pp=80,40"]))) == 4
    from cent_serve.sweep_plots import fields_text  # the Pareto plot's title

    assert (fields_text(["parallel.num_devices", "parallel.pp", "device.clock_hz"], in_step_of(groups))
            == "parallel.num_devices and parallel.pp in step, device.clock_hz")


@pytest.mark.parametrize("items, needle", [
    (["devices,pp=32,64"], "the point 32 does not give one value for each of the 2 fields devices,pp"),
    (["devices,pp=32:80:1"], "the point 32:80:1 does not give one value for each of the 2 fields"),
    (["devices,pp=32:"], "the point 32: does not give one value"),
    (["devices=32:80"], "32:80 joins the values of fields in step, but only devices is named"),
    (["devices,,pp=1:2:3"], "is invalid: write FIELD=V1,V2,..."),
    (["devices,parallel.num_devices=8:16"], "--vary parallel.num_devices is given twice (devices and "),
    (["devices,pp=32:80", "pp=40"], "--vary parallel.pp is given twice"),
])
def test_a_malformed_in_step_vary_is_one_line_naming_the_fix(items, needle):
    from cent_serve.sweep import parse_vary_groups

    with pytest.raises(ValueError) as err:
        parse_vary_groups(items)
    text = str(err.value)
    assert needle in text and "\n" not in text, text
    assert "--vary devices,pp=32:80,64:160" in text or "given twice" in text  # the form to write


def test_a_sweep_in_step_runs_the_paired_points_and_labels_them(tmp_path, capsys):
    """devices with tp in step: a point each pair, its CSV row naming both (tp > 1 takes devices / tp stages,
    as a crossed tp does); a point given twice is refused before any runs, a device count given twice
    with another tp is not."""
    common = ["sweep", "--model", "llama2-70b", "--out", str(tmp_path), "--no-plots"]
    assert main(common + ["--vary", "devices,tp=32:1,64:2"]) == 0
    assert "2 points, 2 evaluated" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["parallel.num_devices"], r["parallel.tp"], r["devices"], r["tp"], r["pp"]) for r in rows] == [
        ("32", "1", "32", "1", "80"), ("64", "2", "64", "2", "32")]
    assert main(common + ["--vary", "devices,tp=32:1,32:2"]) == 0  # 32 twice, each with its own tp
    capsys.readouterr()
    assert main(common + ["--vary", "devices,tp=32:1,32:01"]) == 2
    err = capsys.readouterr().err
    assert "--vary devices,tp: the point 32:01 is given twice: give each point once" in err and err.count("\n") == 1


def test_the_line_plots_draw_fields_in_step_on_the_x_axis(tmp_path, monkeypatch):
    """devices with pp in step: one line over the devices whose axis names pp, not a one-point line for
    each pp; a field of the group that takes two values at one device count stays a line's label."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cent_serve.sweep_plots import _lines

    rows = [dict(model_name="m", **{"parallel.num_devices": d, "parallel.pp": p}, throughput_tok_s=t)
            for d, p, t in (("32", "80", 1.0), ("64", "40", 2.0))]
    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, xs, ys, *a, **k: (drawn.append((list(xs), list(ys), k.get("label"))),
                                                                    real(self, xs, ys, *a, **k))[1])
    fields, step = ["parallel.num_devices", "parallel.pp"], [("parallel.num_devices", "parallel.pp")]
    ax = Figure().subplots()
    _lines(ax, rows, fields, "parallel.num_devices", "throughput_tok_s", step)
    assert drawn == [([32.0, 64.0], [1.0, 2.0], "all points")] and ax.get_xlabel() == "parallel.num_devices (pp in step)"
    drawn.clear()
    _lines(Figure().subplots(), rows, fields, "parallel.num_devices", "throughput_tok_s")  # crossed: a line a pp
    assert [d[2] for d in drawn] == ["pp=80", "pp=40"]
    drawn.clear()
    twice = rows + [dict(rows[0], **{"parallel.pp": "40"}, throughput_tok_s=3.0)]
    _lines(Figure().subplots(), twice, fields, "parallel.num_devices", "throughput_tok_s", step)
    assert sorted(d[2] for d in drawn) == ["pp=40", "pp=80"]


def test_a_model_in_step_stays_a_line_each_and_the_ticks_say_what_moves_with_x(tmp_path, monkeypatch):
    """A model varied in step with the devices is no point on the devices' axis: one line (and label) a model,
    not one 'all points' line joining two models; a number in step with x is named at each tick (32 / tp=1)."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cent_serve.sweep_plots import _lines

    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, xs, ys, *a, **k: (drawn.append((list(xs), k.get("label"))),
                                                                    real(self, xs, ys, *a, **k))[1])
    rows = [dict(model_name=m, model=m, **{"parallel.num_devices": d}, throughput_tok_s=t)
            for m, d, t in (("llama2-7b", "8", 1.0), ("llama2-13b", "16", 2.0))]
    ax = Figure().subplots()
    _lines(ax, rows, ["model", "parallel.num_devices"], "parallel.num_devices", "throughput_tok_s",
           [("model", "parallel.num_devices")])
    assert sorted(d[1] for d in drawn) == ["model=llama2-13b", "model=llama2-7b"], drawn
    assert "in step" not in ax.get_xlabel()
    rows = [dict(model_name="m", **{"parallel.num_devices": d, "parallel.tp": p}, throughput_tok_s=t)
            for d, p, t in (("32", "1", 1.0), ("64", "2", 2.0))]
    ax = Figure().subplots()
    _lines(ax, rows, ["parallel.num_devices", "parallel.tp"], "parallel.num_devices", "throughput_tok_s",
           [("parallel.num_devices", "parallel.tp")])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32\ntp=1", "64\ntp=2"]


def test_the_vary_parser_keeps_a_model_s_colon_and_strips_names():
    """A model is a preset or a checkpoint path, which may hold a ':' (one field: no fields in step to join);
    names in step may be written with spaces after the commas."""
    from cent_serve.sweep import parse_vary_groups

    assert parse_vary_groups(["model=/ckpt/run:3,llama2-7b"]) == [[("model", ["/ckpt/run:3", "llama2-7b"])]]
    assert parse_vary_groups(["devices, pp=32:80"]) == [[("parallel.num_devices", ["32"]), ("parallel.pp", ["80"])]]


def test_a_sweep_without_a_tco_ratio_says_nothing_of_its_prices(tmp_path, capsys):
    """The note on where the TCO ratio's prices come from goes with a ratio: a workload other than the
    paper's has none, so a sweep over channels at --prompt 1024 says nothing of it."""
    common = ["sweep", "--model", "llama2-7b", "--devices", "8", "--out", str(tmp_path), "--no-plots"]
    assert main(common + ["--prompt", "1024", "--decode", "128", "--vary", "device.num_channels=32,64"]) == 0
    out = capsys.readouterr().out
    assert "2 evaluated" in out and "device.tco_per_device" not in out


def test_a_model_in_step_keeps_the_colons_its_value_holds(tmp_path, capsys):
    """Fields in step split a point at each ':', but a model (a checkpoint path, C:/ckpt, or a name with a
    ':') takes every ':' left once each other field has one value, wherever it stands among them; a point
    with too few values, or a model that is then no model, is still one line naming the fix."""
    import shutil

    from cent_serve.sweep import parse_vary_groups

    assert parse_vary_groups(["model,devices=C:/x:8,llama2-7b:16"]) == [
        [("model", ["C:/x", "llama2-7b"]), ("parallel.num_devices", ["8", "16"])]]
    assert parse_vary_groups(["devices,model,pp=8:org/m:v2:tag:4"]) == [
        [("parallel.num_devices", ["8"]), ("model", ["org/m:v2:tag"]), ("parallel.pp", ["4"])]]
    with pytest.raises(ValueError, match="the point C:/x: does not give one value for each of the 2 fields"):
        parse_vary_groups(["model,devices=C:/x:"])
    ckpt = tmp_path / "C:" / "x"
    ckpt.mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "hf_tiny_llama" / "config.json", ckpt)  # its config.json alone: a model to time
    common = ["sweep", "--prompt", "128", "--decode", "128", "--out", str(tmp_path / "out"), "--no-plots"]
    assert main(common + ["--vary", f"model,devices={ckpt}:8,{ckpt}:16"]) == 0
    assert "2 points, 2 evaluated" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    assert [(r["model"], r["parallel.num_devices"]) for r in rows] == [(str(ckpt), "8"), (str(ckpt), "16")]
    assert main(common + ["--vary", "model,devices=llama2-7b:8:16"]) == 2  # 16 devices of model 'llama2-7b:8'
    err = capsys.readouterr().err
    assert "a model takes every ':' beyond one a field: llama2-7b:8 here" in err and err.count("\n") == 1, err


def _saved_axes(monkeypatch) -> dict:
    """The axes each figure of `cent_serve.sweep_plots` saves, by file name, as it saves them."""
    import cent_serve.sweep_plots as plots

    saved = {}
    real = plots._save

    def save(fig, axes, path, *args, **kwargs):
        saved[path.name] = list(axes)
        return real(fig, saved[path.name], path, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", save)
    return saved


def test_energy_per_token_panels_start_at_zero_on_a_linear_axis(tmp_path, monkeypatch):
    """A 4% change of energy per token (400 to 416 mJ across 8 to 32 devices) filled its panel's height and read
    as a steep trend: the energy panels start at zero, their top above the highest point, so a 4% change looks
    4%. The other panels keep their fitted axes, and a log axis (models sharing a panel, 10x apart) is left
    as it is: a log axis cannot start at zero."""
    from matplotlib.figure import Figure

    import cent_serve.sweep_plots as plots

    saved = _saved_axes(monkeypatch)
    rows = [{"model": "m", "model_name": "m", "parallel.num_devices": str(d), "throughput_tok_s": 100.0 * d,
             "token_latency_ms": 5.0, "energy_per_token_mj": e, "avg_power_w": 10.0 * d}
            for d, e in ((8, 400.0), (16, 408.0), (32, 416.0))]
    plots.plot_figures(rows, ["parallel.num_devices"], tmp_path / "figures.png", trace=False, how="closed form")
    throughput, _, energy, _ = saved["figures.png"]
    assert energy.get_yscale() == "linear" and energy.get_ylim()[0] == 0.0 and energy.get_ylim()[1] > 416.0
    assert throughput.get_ylim()[0] > 0.0  # 800 to 3,200 tok/s: fitted, as before
    two = [dict(r, model=m, model_name=m, energy_per_token_mj=r["energy_per_token_mj"] * k)
           for m, k in (("a", 1.0), ("b", 10.0)) for r in rows[:2]]
    ax = Figure().subplots()
    plots._lines(ax, two, ["model", "parallel.num_devices"], "parallel.num_devices", "energy_per_token_mj",
                 from_zero=True)
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0.0


def test_figures_of_several_models_are_a_column_each_on_its_own_scales(tmp_path, monkeypatch):
    """`--vary model=llama2-7b,llama2-70b` drew both models on four shared linear panels, where the 70B's
    energy (about 700 mJ) and the 7B's throughput (tens of thousands of tok/s) drew the other model's lines
    flat: each model is now a column of the four panels on its own scales, its lines (the other fields')
    named once atop it. Models that share a panel (in step with x, or tokens per dollar) get a log axis once
    their values span 10x; one model spanning as much keeps a linear one."""
    from matplotlib.figure import Figure

    import cent_serve.sweep_plots as plots

    saved = {}
    real = plots._save

    def save(fig, axes, path, *args, **kwargs):
        axes = list(axes)
        saved[path.name] = (fig, axes, kwargs.get("legends"))
        return real(fig, axes, path, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", save)
    rows = [dict(model=m, model_name=m, **{"parallel.num_devices": str(d), "device.num_channels": c},
                 throughput_tok_s=scale * d * (c / 32), token_latency_ms=scale / d, energy_per_token_mj=70.0 * scale,
                 avg_power_w=scale * d, tokens_per_dollar_ratio=scale * c)
            for m, scale in (("llama2-7b", 1.0), ("llama2-70b", 10.0)) for d in (16, 32, 64) for c in (32, 64)]
    fields = ["device.num_channels", "parallel.num_devices", "model"]
    plots.plot_figures(rows, fields, tmp_path / "figures.png", trace=False, how="closed form")
    fig, axes, legends = saved["figures.png"]
    assert len(axes) == 8 and [a.get_title() for a in axes[:2]] == ["llama2-7b", "llama2-70b"]
    small, large = axes[4], axes[5]  # energy per token: 70 mJ a 7B token, 700 a 70B one
    assert small.get_ylim()[1] < 100 and large.get_ylim()[1] > 700  # from zero (energy): each to its own top
    assert [a.get_legend_handles_labels()[1] for a in legends] == [["num_channels=32", "num_channels=64"]] * 2
    assert all(a.get_yscale() == "linear" for a in axes)
    plots.plot_tokens_per_dollar(rows, fields, tmp_path / "tokens_per_dollar.png")
    (ax,), _ = saved["tokens_per_dollar.png"][1:]
    assert ax.get_yscale() == "log" and ax.get_ylabel().endswith(", log axis")
    one = [r for r in rows if r["model"] == "llama2-7b"]
    ax = Figure().subplots()
    plots._lines(ax, one, fields, "parallel.num_devices", "throughput_tok_s")  # 16 to 128 tok/s: one model
    assert ax.get_yscale() == "linear"
    plots.plot_figures(one, fields, tmp_path / "one.png", trace=False, how="closed form")  # the 2 x 2 of one model
    fig, axes, legends = saved["one.png"]
    assert len(axes) == 4 and legends is None and all(a.get_legend() is not None for a in axes)


@pytest.mark.parametrize("vary", ["model,devices=nosuch:8", "model=no:such"])
def test_the_in_step_colon_hint_comes_only_where_the_model_took_a_colon(vary, tmp_path, capsys):
    """A model that is no model is one line naming the fix; the hint that a model in step takes every ':'
    beyond one a field is said only where that happened (the model in step, a ':' in what it took), never of
    a name without one, nor of a model varied alone (`--vary model=A,B`: its value is all its own)."""
    assert main(["sweep", "--prompt", "128", "--decode", "128", "--out", str(tmp_path), "--no-plots",
                 "--vary", vary]) == 2
    err = capsys.readouterr().err
    assert "is neither a preset" in err and err.count("\n") == 1, err
    assert "a model takes every ':'" not in err, err


def test_a_log_axis_and_a_column_a_model_come_only_where_their_rules_say(tmp_path, monkeypatch):
    """`_lines` gives a panel a log axis only when several models share it, every value is positive and
    they span LOG_SPAN or more (exactly 10x is log, 9.99x linear; one model spanning 100x stays linear; a
    zero among them, which a log axis cannot draw, keeps it linear). `plot_figures` makes a column a model
    only when each model runs over more than one x: models in step with x (one x each), or one model with a
    single x beside another with three, share the 2 x 2 panels."""
    from matplotlib.figure import Figure

    import cent_serve.sweep_plots as plots

    def scale(rows: list[dict]) -> str:
        ax = Figure().subplots()
        plots._lines(ax, rows, ["model", "parallel.num_devices"], "parallel.num_devices", "throughput_tok_s")
        return ax.get_yscale()

    def row(model: str, devices: int, y: float) -> dict:
        return {"model": model, "model_name": model, "parallel.num_devices": str(devices), "throughput_tok_s": y}

    two = lambda low, high: [row("a", 16, low), row("a", 32, low), row("b", 16, high), row("b", 32, high)]  # noqa: E731
    assert scale(two(1.0, 10.0)) == "log" and scale(two(1.0, 9.99)) == "linear"
    assert scale(two(0.0, 100.0)) == "linear"
    assert scale([row("a", 16, 1.0), row("a", 32, 100.0)]) == "linear"  # one model: its own scale says it all
    same_name = [dict(r, model=f"runs/{r['model']}/ckpt", model_name="ckpt") for r in two(1.0, 10.0)]
    assert scale(same_name) == "log"  # two checkpoints of one name are two models (`_model_names`)

    saved = _saved_axes(monkeypatch)
    figures = dict(token_latency_ms=1.0, energy_per_token_mj=1.0, avg_power_w=1.0)
    in_step = [dict(row(m, d, d), **figures) for m, d in (("a", 16), ("b", 32), ("c", 64))]
    plots.plot_figures(in_step, ["model", "parallel.num_devices"], tmp_path / "in_step.png", trace=False, how="x",
                       in_step=[("model", "parallel.num_devices")])
    lone = [dict(row("a", d, d), **figures) for d in (16, 32, 64)] + [dict(row("b", 16, 5.0), **figures)]
    plots.plot_figures(lone, ["model", "parallel.num_devices"], tmp_path / "lone.png", trace=False, how="x")
    assert len(saved["in_step.png"]) == 4 and len(saved["lone.png"]) == 4


def test_varying_a_grouped_query_attention_field_on_a_model_without_it_is_warned_about(tmp_path, capsys, caplog):
    """`cent sweep --model llama2-7b --vary device.score_rep_head_cycles=70,140` gave two identical rows in silence:
    the field prices the query heads of a KV head's group after the first, and llama2-7b has one query head a KV
    head. Warned once, for --vary as for --set, in the closed form and a replay; not when a varied model shares its
    KV heads (llama2-70b), whose rows move."""
    def run(out: str, *argv: str) -> tuple[list[dict], list[str]]:
        caplog.clear()
        assert main(["sweep", *argv, "--no-plots", "--out", str(tmp_path / out)]) == 0
        capsys.readouterr()
        said = [r.getMessage() for r in caplog.records if "no model here has grouped-query attention" in r.getMessage()]
        return list(csv.DictReader(open(tmp_path / out / "sweep.csv"))), said

    vary = ["--vary", "device.score_rep_head_cycles=70,140"]
    rows, said = run("a", "--model", "llama2-7b", *vary)
    assert rows[0]["energy_per_token_mj"] == rows[1]["energy_per_token_mj"]
    assert [m.split(":")[0] for m in said] == ["--vary device.score_rep_head_cycles"], said
    _, said = run("b", "--model", "llama2-7b", "--set", "device.score_rep_head_cycles=140", "--vary", "devices=8,16")
    assert [m.split(":")[0] for m in said] == ["--set device.score_rep_head_cycles"], said
    rows, said = run("c", "--devices", "32", "--vary", "model=llama2-7b,llama2-70b", *vary)
    assert said == []
    tok_s = {(r["model"], r["device.score_rep_head_cycles"]): r["throughput_tok_s"] for r in rows}
    assert tok_s[("llama2-70b", "70")] != tok_s[("llama2-70b", "140")], tok_s
    assert tok_s[("llama2-7b", "70")] == tok_s[("llama2-7b", "140")], tok_s
    _, said = run("d", "--model", "tiny", "--set", "model.num_kv_heads=8", *vary, "--trace", "sample_conv",
                  "--num-requests", "2")
    assert len(said) == 1, said


def test_the_pareto_plots_energy_axis_starts_at_zero(tmp_path, monkeypatch):
    """pareto.png's energy axis was fitted to its points: Mixtral's 143 to 166 mJ a token (tp 1 to tp 8) filled
    its width, a 16% spread drawn as several-fold, where figures.png's energy panels start at zero. Each model's
    panel now runs from zero to above its own highest point; throughput keeps its fitted axis."""
    import cent_serve.sweep_plots as plots

    saved = _saved_axes(monkeypatch)
    rows = [{"model": m, "model_name": m, "parallel.tp": str(tp), "throughput_tok_s": k * 1000.0 / tp,
             "energy_per_token_mj": k * e} for m, k in (("a", 1.0), ("b", 10.0))
            for tp, e in ((1, 143.0), (4, 151.0), (8, 166.0))]
    plots.plot_pareto(rows, ["model", "parallel.tp"], tmp_path / "pareto.png")
    small, large = saved["pareto.png"]
    assert small.get_xlim()[0] == 0.0 and 166.0 < small.get_xlim()[1] < 200.0
    assert large.get_xlim()[0] == 0.0 and large.get_xlim()[1] > 1660.0  # each model on its own scale
    assert small.get_ylim()[0] > 0.0  # 125 to 1,000 tok/s: fitted, as before


@pytest.mark.parametrize("model, workload, says", [
    ("mixtral-8x7b", [], True),  # no GPU figure for the model
    ("llama2-7b", ["--prompt", "256", "--decode", "256"], True),  # not the paper's workload
    ("llama2-7b", [], False),  # the ratio reads it: it moves, and nothing is said
])
def test_a_tco_no_point_reads_is_said_once(tmp_path, capsys, model, workload, says):
    """`--vary device.tco_per_device=null,0.05` on a model or workload without the paper's GPU figure gave
    identical rows and plots (tok_s_per_usd prices device.unit_cost_usd) and said nothing; one line now says
    the price moved nothing, and where tokens per TCO unit are reported."""
    assert main(["sweep", "--model", model, "--devices", "8", *workload, "--vary",
                 "device.tco_per_device=null,0.05", "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [r["device.tco_per_device"] for r in rows] == ["null", "0.05"] and not any(r["error"] for r in rows)
    lines = [x for x in out.splitlines() if x.startswith("device.tco_per_device: no point has tokens per dollar")]
    assert len(lines) == int(says), out
    if says:
        assert rows[0]["tokens_per_dollar_ratio"] == rows[1]["tokens_per_dollar_ratio"] == ""
        # "cent bench sweep" in full: "sweep" alone, in cent sweep's output, named the command that does not
        assert ("cent bench run, cent bench sweep, cent bench paper and cent bench compare report tokens per TCO "
                "unit") in lines[0]
    else:
        assert float(rows[0]["tokens_per_dollar_ratio"]) > float(rows[1]["tokens_per_dollar_ratio"])


def test_a_sweep_that_sets_no_tco_says_nothing_of_it(tmp_path, capsys):
    """The line of `test_a_tco_no_point_reads_is_said_once` is for a sweep that set device.tco_per_device:
    one that varies another price field (device.unit_cost_usd, which tok_s_per_usd reads) draws no such line."""
    assert main(["sweep", "--model", "mixtral-8x7b", "--devices", "8", "--vary", "device.unit_cost_usd=20,40",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert len(rows) == 2 and not any(r["error"] for r in rows) and rows[0]["tok_s_per_usd"] != rows[1]["tok_s_per_usd"]
    assert "device.tco_per_device: no point" not in out, out


def test_the_tokens_per_dollar_legend_covers_no_point(tmp_path, monkeypatch):
    """Three mixtures of experts over devices and tp (nine lines): the legend, placed inside the panel where
    matplotlib found the least overlap, hid DeepSeek-MoE's tp 1 point at 128 devices (19 tok/s per device
    dollar, the panel's top right). No marker may fall inside the legend."""
    import cent_serve.sweep_plots as plots

    saved = _saved_axes(monkeypatch)
    values = {("mixtral", 1): (7.54, 7.51, 7.44), ("mixtral", 4): (2.64, 2.47, 2.19), ("mixtral", 8): (1.38, 1.25, 1.05),
              ("qwen3moe", 1): (7.46, 6.51, 6.49), ("qwen3moe", 4): (3.0, 2.78, 1.95), ("qwen3moe", 8): (1.54, 1.39, 1.16),
              ("dsmoe", 1): (19.19, 19.1, 18.92), ("dsmoe", 4): (7.31, 6.59, 4.86), ("dsmoe", 8): (3.81, 3.29, 2.58)}
    rows = [{"model": m, "model_name": m, "parallel.num_devices": str(d), "parallel.tp": str(tp), "devices": d,
             "tok_s_per_usd": v} for (m, tp), vs in values.items() for d, v in zip((32, 64, 128), vs)]
    plots.plot_tokens_per_dollar(rows, ["model", "parallel.num_devices", "parallel.tp"], tmp_path / "t.png")
    (ax,) = saved["t.png"]
    box = ax.get_legend().get_window_extent()
    points = [ax.transData.transform(xy) for line in ax.get_lines() for xy in line.get_xydata()]
    assert len(points) == 27
    assert not [p for p in points if box.contains(*p)]


def test_the_figures_title_names_the_models_as_the_columns_do(tmp_path, monkeypatch):
    """figures.png's title listed the models sorted by name (dsmoe, mixtral, qwen3moe) over columns in the
    order --vary model gave them (mixtral, qwen3moe, dsmoe), and two checkpoints sharing a name once: the
    title names them as the columns do, in their order."""
    import cent_serve.sweep_plots as plots

    saved = {}
    real = plots._save

    def save(fig, axes, path, *args, **kwargs):
        saved[path.name] = fig
        return real(fig, axes, path, *args, **kwargs)
    monkeypatch.setattr(plots, "_save", save)
    # not in sorted order: the columns' order is --vary model's
    models = (("qwen3moe", "qwen3moe"), ("mixtral", "mixtral"), ("runs/2/dsmoe", "dsmoe"), ("runs/1/dsmoe", "dsmoe"))
    rows = [{"model": m, "model_name": name, "parallel.num_devices": str(d), "throughput_tok_s": 100.0 * d,
             "token_latency_ms": 5.0, "energy_per_token_mj": 40.0, "avg_power_w": 4.0 * d}
            for m, name in models for d in (32, 64)]
    plots.plot_figures(rows, ["model", "parallel.num_devices"], tmp_path / "figures.png", trace=False, how="closed form")
    fig = saved["figures.png"]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["qwen3moe", "mixtral", "runs/2/dsmoe", "runs/1/dsmoe"]
    assert fig._suptitle.get_text().replace("\n", " ").startswith(
        "qwen3moe, mixtral, runs/2/dsmoe, runs/1/dsmoe: the figures against parallel.num_devices")
