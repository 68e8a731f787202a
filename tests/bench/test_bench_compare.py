"""`cent bench compare`: why requests failed (terminal and compare.json), no empty legends, and
rate labels on compare_sweep.png that do not cover each other."""
from __future__ import annotations

import csv
import json

import pytest
from matplotlib.figure import Figure

from cent_serve.bench.plots import place_rate_labels
from cent_serve.cli import main

HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
TOO_LONG = "{t},9000,4\n"
"""A request past the tiny model's 8,192-token context: refused as context_exceeded on both sides."""


@pytest.mark.parametrize("rows, rates, failed", [
    (["0.0,16,4\n", TOO_LONG.format(t=0.5), "1.0,16,4\n"], ["--rates", "1,2"], 1),
    ([TOO_LONG.format(t=0.0), TOO_LONG.format(t=0.5)], [], 2),  # every request fails: nothing to plot
])
def test_compare_says_why_requests_failed(tmp_path, capsys, recwarn, rows, rates, failed):
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "".join(rows))
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), *rates, "--out", str(out),
                 "--save-detailed"]) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    head = next(x for x in printed if ": CENT = " in x)  # the table's line: which replay it is of
    assert ("at the trace's own arrival times" in head) == bool(rates), head
    bars = {bar for bar in ("replay", "rate 1 CENT", "rate 2 GPU") if f"{bar}: " in captured.err}
    assert bars == ({"replay", "rate 1 CENT", "rate 2 GPU"} if rates else {"replay"})  # each replay's bar
    for side in ("CENT", "GPU"):
        line = next((x for x in printed if x.startswith(f"  {side} ")), "")
        assert line.split()[1:4] == ["context_exceeded", str(failed), "e.g."] and "9000 tokens" in line
    assert sum("context_exceeded: clip the requests' lengths with --max-prompt-tokens" in x for x in printed) == 1
    assert b"\r" not in (out / "compare.csv").read_bytes()  # \n lines (csv's default \r\n trips cut and awk)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["bench"] == dict(trace=str(trace), format="vidur", start_s=0.0, num_requests=None, time_scale=1.0,
                                  rate=None, prompt_scale=1.0, output_scale=1.0, max_prompt_tokens=None,
                                  max_output_tokens=None,
                                  rates=[1.0, 2.0] if rates else [])  # what shaped the requests
    for side in ("cent", "gpu"):  # each side's requests as bench run writes them, the failures among them
        lines = (out / f"requests_{side}.csv").read_text().splitlines()
        assert lines[0].startswith("request_id,arrival_s") and len(lines) == 1 + len(rows)  # one per request
        assert sum(",context_exceeded," in line for line in lines[1:]) == failed
        for row in csv.DictReader(lines):  # --save-detailed: a list of gaps each, empty for a refusal
            gaps = json.loads(row["itls_s"])
            assert len(gaps) == (int(row["num_output_tokens"]) - 1 if row["finish_reason"] == "length" else 0)
    for side in ("cent", "gpu"):
        assert saved[side]["failure_reasons"]["context_exceeded"]["count"] == failed
        # no output token completed: no energy per output token (not the run's whole energy over 1)
        assert (saved[side]["energy_per_output_token_mj"] is None) == (failed == len(rows))
        assert "9000 tokens" in saved[side]["failure_reasons"]["context_exceeded"]["example"]
        for row in (saved["sweep"] or {}).get(side, []):
            assert row["failure_reasons"]["context_exceeded"]["count"] == failed
    assert set(saved["sweep"] or {"cent": 0, "gpu": 0}) == {"cent", "gpu"}  # as the sides' keys
    assert saved["config"]["gpu"]["gpu"]["count"] > 0 == saved["config"]["cent"]["gpu"]["count"]  # each side's
    gpu = saved["config"]["gpu"]["gpu"]  # the batching the kind gave, not its 0
    assert (gpu["max_num_seqs"], gpu["max_num_batched_tokens"]) == (256, 2048) and saved["config"]["cent"]["parallel"]
    assert not [w for w in recwarn if "legend" in str(w.message)], [str(w.message) for w in recwarn]


def test_compare_no_plots_writes_the_tables_only(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,16,4\n1.0,16,4\n")
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--rates", "1", "--no-plots",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", "requests_cent.csv",
                                                       "requests_gpu.csv"]


@pytest.mark.parametrize("goodput", [[], ["--goodput", "ttft:2000"]])
def test_the_goodput_row_prints_only_with_slos(tmp_path, capsys, goodput):
    """Without --goodput the table printed `request goodput (req/s)  -  -  -`; compare.json keeps the row
    (its values null) either way, so its table has the same rows."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,16,4\n1.0,16,4\n")
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--no-plots", *goodput,
                 "--out", str(tmp_path / "cmp")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("request goodput")]
    assert len(printed) == (1 if goodput else 0), printed
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    row = next(r for r in saved["table"] if r["metric"] == "request goodput")
    assert (row["cent"] is None) == (not goodput)


def test_the_notes_answer_what_the_table_raises(tmp_path, capsys):
    """Requests far apart: both sides keep the trace's pace, so throughput and tokens per dollar are the
    arrivals' (said, with how long after the last arrival each run ends); long prompts token by token
    on CENT against a GPU's chunks (said when CENT's TTFT is 5x the GPUs' or more); an H100 has no cost
    in the artifact's convention (said, with the --set that gives it one). Kept in compare.json."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,16,4\n100.0,16,4\n")
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--no-plots",
                 "--out", str(tmp_path / "a")]) == 0
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note: ")]
    saved = json.loads((tmp_path / "a" / "compare.json").read_text())
    assert [f"note: {n}" for n in saved["notes"]] == notes and len(notes) == 1
    tails = [saved[s]["duration"] - 100.0 for s in ("cent", "gpu")]
    assert notes[0].startswith(f"note: CENT and the GPUs kept the trace's pace (the runs end {tails[0]:.3g} s and "
                               f"{tails[1]:.3g} s after the last arrival, at 100 s)")
    trace.write_text(HEADER + "".join(f"{0.001 * k},2000,4\n" for k in range(4)))  # prompts at once, long
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--no-plots", "--gpu", "h100-80gb:1",
                 "--out", str(tmp_path / "b")]) == 0
    saved = json.loads((tmp_path / "b" / "compare.json").read_text())
    ttft = [saved[s]["median_ttft_ms"] for s in ("cent", "gpu")]
    assert ttft[0] > 5 * ttft[1]
    assert [n.split(" ", 1)[0] for n in saved["notes"]] == ["CENT", "tokens"], saved["notes"]
    assert "a chunk of up to 8,192 prompt tokens" in saved["notes"][0]
    assert "h100-80gb has no cost" in saved["notes"][1] and "--set gpu.tco_per_gpu=" in saved["notes"][1]
    # energy per output token: the run's energy over the output tokens alone (here 500x fewer than the prompts')
    row = next(r for r in saved["table"] if r["metric"] == "energy per output token")
    for side in ("cent", "gpu"):
        s = saved[side]
        assert row[side] == s["energy_per_output_token_mj"] == pytest.approx(1e3 * s["energy_j"] / s["total_output_tokens"])
        assert s["energy_per_output_token_mj"] == pytest.approx(s["energy_per_token_mj"] * (2000 + 4) / 4)
    # a compare.json written before the row: its sides still make a table, "-" there
    from cent_serve.bench.report import compare_table
    older = {k: v for k, v in saved["cent"].items() if k != "energy_per_output_token_mj"}
    again = {r["metric"]: r for r in compare_table(older, saved["gpu"])}
    assert again["energy per output token"]["cent"] is None and again["TTFT p50"]["cent"] == ttft[0]


@pytest.mark.parametrize("xs", [
    [22.8, 26.6, 29.1],  # the audit's CENT side: three rates within 7 tok/s of 150
    [20.0, 23.5, 27.0, 30.5, 34.0],  # crowded for labels beside the points, not for upright ones
    [50.0, 90.0, 147.0],  # room for labels beside the points
    [60.0, 60.0, 60.0],  # one throughput for every rate (saturated)
    [150.0, 150.5, 151.0],  # crowded at the right edge: the one label ends at the point, inside the axes
])
def test_rate_labels_do_not_overlap_and_name_every_rate(xs):
    rates = [0.25, 0.5, 1, 2, 4][:len(xs)]
    fig = Figure(figsize=(6.5, 4.8))  # as plot_sweep's: no pyplot, no canvas of a backend
    ax = fig.subplots()
    ax.plot(xs, [72.0] * len(xs), "s--")
    ax.set_xlim(15, 155)
    ax.set_ylim(0, 90)
    fig.tight_layout()
    place_rate_labels(ax, [("tab:blue", [(x, 72.0, r) for x, r in zip(xs, rates)])])
    boxes = [t.get_window_extent() for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    text = " ".join(t.get_text() for t in ax.texts)
    assert all(f"{r:g}" in text for r in rates)
    right = ax.get_window_extent().x1
    assert all(b.x1 <= right for b in boxes), (right, [b.x1 for b in boxes])  # none runs past the right edge


@pytest.mark.parametrize("slo_ms, drawn", [(100.0, True), (1000.0, False)])
def test_an_slo_beyond_the_values_widens_the_axis_or_is_named(tmp_path, monkeypatch, slo_ms, drawn):
    """The CDFs of both sides with a TPOT SLO past every value: within SLO_OFF_AXIS x the largest value
    the axis reaches the SLO line (it ended at the values and hid it); far beyond, the legend names it."""
    from types import SimpleNamespace

    from cent_serve.bench.compare import plot_cdfs

    def result(tpots_ms):
        return SimpleNamespace(records=[SimpleNamespace(ok=True, ttft_s=0.2, tpot_s=t / 1e3, e2e_s=5.0)
                                        for t in tpots_ms])

    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    side = dict(hardware="hw", completed=3, failed=0)
    plot_cdfs(tmp_path / "cdfs.png", {"CENT": result([55, 60, 70]), "GPU": result([35, 45, 90])},
              {"CENT": side, "GPU": side}, "m", {"tpot": slo_ms})
    ax = figs[0].axes[1]
    labels = ax.get_legend_handles_labels()[1]
    if drawn:
        assert ax.get_xlim()[1] >= slo_ms and "SLO 100 ms" in labels
    else:
        assert ax.get_xlim()[1] < slo_ms and any(label.endswith("(right of the axis)") for label in labels)


def test_the_cdfs_share_axis_reads_in_percent_as_bench_runs_does(tmp_path, monkeypatch):
    """bench run's CDFs label the share of requests 0% .. 100%; compare's read 0.0 .. 1.0 beside them."""
    from types import SimpleNamespace

    from cent_serve.bench.compare import plot_cdfs

    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    records = [SimpleNamespace(ok=True, ttft_s=0.2, tpot_s=0.05, e2e_s=5.0)]
    side = dict(hardware="hw", completed=1, failed=0)
    plot_cdfs(tmp_path / "cdfs.png", {"CENT": SimpleNamespace(records=records), "GPU": SimpleNamespace(records=[])},
              {"CENT": side, "GPU": side}, "m", {})
    for ax in figs[0].axes:
        assert ax.yaxis.get_major_formatter()(0.5, 0) == "50%", ax.get_title()


def test_the_table_prints_large_figures_as_whole_numbers_and_small_ratios_with_their_digits(capsys):
    from cent_serve.bench.compare import print_compare
    side = dict(hardware="x", failure_reasons={})
    print_compare(dict(model="m", requests=3, cent=side, gpu=side, sweep=None, table=[
        dict(metric="tokens per dollar", unit="tok/s per TCO unit", cent=10630.4, gpu=400.2, cent_over_gpu=26.56),
        dict(metric="TTFT p50", unit="ms", cent=0.1234567, gpu=None, cent_over_gpu=None),
        dict(metric="energy per token", unit="mJ", cent=0.5912, gpu=173.2, cent_over_gpu=0.5912 / 173.2),
        dict(metric="E2E p50", unit="ms", cent=23695.2, gpu=4626.9, cent_over_gpu=5.121)]))
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split()[-3:] == ["10,630", "400.2", "26.56x"]
    assert rows[3].split()[-3:] == ["0.1235", "-", "-"]
    assert rows[4].split()[-3:] == ["0.5912", "173.2", "0.003413x"]  # a small ratio keeps its digits, not 0.00x
    assert rows[5].split()[-3:] == ["23,695", "4,627", "5.121x"]  # one column, one form (4627 beside 11,415 was not)


def test_a_ratio_of_ten_characters_stays_apart_from_the_gpu_column(capsys):
    """0.0008108x is 10 characters: in a 10-wide column it ran into the GPU figure (654.90.0008108x)."""
    from cent_serve.bench.compare import print_compare
    side = dict(hardware="x", failure_reasons={})
    print_compare(dict(model="m", requests=3, cent=side, gpu=side, sweep=None, table=[
        dict(metric="energy per token", unit="mJ", cent=0.531, gpu=654.9, cent_over_gpu=0.531 / 654.9)]))
    assert capsys.readouterr().out.splitlines()[2].split()[-3:] == ["0.531", "654.9", "0.0008108x"]


@pytest.mark.parametrize("bench, says", [
    (dict(rate=2.0, time_scale=1.0), "3 requests arriving at 2 req/s (--rate)"),
    (dict(rate=None, time_scale=0.5), "3 requests at the trace's arrival times x 0.5 (--time-scale)"),
    (dict(rate=None, time_scale=1.0), "3 requests at the trace's own arrival times (the rates above"),
    (dict(trace="/nowhere/conv.csv", rate=2.0, time_scale=1.0), "3 requests of /nowhere/conv.csv arriving at 2 req/s"),
    (dict(trace="synthetic", rate=2.0, time_scale=1.0, arrivals="poisson", prompt_len=9, output_len=5),
     "3 requests of synthetic, Poisson arrivals at 2 req/s, 9 prompt + 5 output tokens (the rates above"),
])
def test_the_header_says_how_the_compared_requests_arrived(capsys, bench, says):
    """With --rates beside --rate, the header said the trace's own arrival times (external audit)."""
    from cent_serve.bench.compare import print_compare
    side = dict(hardware="x", failure_reasons={})
    print_compare(dict(model="m", requests=3, cent=side, gpu=side, bench=bench, sweep={"CENT": []}, table=[]))
    assert says in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("hardware, tco, sets", [(None, 0.73 * 8 / 32, []), ("gpu:a100-80gb:2", 1.76 * 2 / 4, []),
                                                (None, 0.05 * 8, ["device.tco_per_device=0.05"])])
def test_a_sides_power_and_tokens_per_tco_are_its_run_s(hardware, tco, sets):
    """compare.json's `power_w` is the run's energy over its duration and `tokens_per_tco` its prompt and
    output tokens a second over the artifact's TCO units (0.73 per 32 CENT devices unless
    device.tco_per_device prices them, 1.76 per 4 A100s): no test read either (half the power, or output
    tokens only, kept every test green)."""
    from cent_serve.bench import FixedLengths, synthetic_trace
    from cent_serve.bench.report import side_figures
    from cent_serve.bench.runner import run_in_process
    from cent_serve.config import build_config

    cfg = build_config("tiny", devices=8, numerics="off", hardware=hardware, overrides=sets)
    reqs = list(synthetic_trace(6, rate=50.0, lengths=FixedLengths(20, 5), seed=0))
    s = side_figures(cfg, run_in_process(cfg, reqs, progress=False))
    assert s["completed"] == 6 and s["duration"] > 0 and s["energy_j"] > 0
    assert s["tco"] == pytest.approx(tco, rel=1e-12)
    assert s["power_w"] == pytest.approx(s["energy_j"] / s["duration"], rel=1e-12)
    tokens = s["total_input_tokens"] + s["total_output_tokens"]
    assert tokens == 6 * (20 + 5)
    assert s["tokens_per_tco"] == pytest.approx(tokens / s["duration"] / tco, rel=1e-12)


@pytest.mark.parametrize("rows, rates, paced", [
    ([TOO_LONG.format(t=0.0), TOO_LONG.format(t=100.0)], [], False),  # nothing completed: no pace was kept
    (["0.0,16,4\n", TOO_LONG.format(t=100.0)], [], False),  # the last request failed: the run ends at ~0 s
    (["0.0,16,4\n", "100.0,16,4\n"], ["--rates", "1"], True),  # kept; the sweep is run already, not suggested
])
def test_the_kept_pace_note_is_about_requests_that_completed(tmp_path, capsys, rows, rates, paced):
    """Every request failed: a side's duration is 0, and the note said both "kept the trace's pace (the
    runs end -100 s and -100 s after the last arrival)"; with --rates it suggested the flag just given."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "".join(rows))
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--no-plots", *rates,
                 "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    notes = json.loads((tmp_path / "o" / "compare.json").read_text())["notes"]
    kept = [n for n in notes if "kept the trace's pace" in n]
    assert bool(kept) == paced, notes
    for note in kept:
        assert "s -" not in note and "end -" not in note and "--rates R1,R2" not in note and "the --rates sweep" in note, note


def test_a_side_that_queued_no_request_kept_the_pace_though_one_long_request_ends_late(tmp_path):
    """GPUs that took every request as it came, ending one long request's decode after the last arrival
    (1.36x the trace's span on azure_conv_2023's first 100), got no kept-pace note, so their throughput
    read as capacity: a side whose requests did not queue kept the pace within 2x the span."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,16,4\n1.0,16,4\n2.0,16,4\n3.0,16,4\n4.0,16,2000\n")
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--no-plots",
                 "--out", str(tmp_path / "o")]) == 0
    saved = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert 1.25 * 4.0 < saved["gpu"]["duration"] < 2 * 4.0  # past the first rule, within the second
    with open(tmp_path / "o" / "requests_gpu.csv", newline="") as f:
        rows = [{k: float(r[k]) for k in ("arrival_s", "scheduled_s", "finish_s")} for r in csv.DictReader(f)]
    assert all(r["scheduled_s"] - r["arrival_s"] < 0.1 * (r["finish_s"] - r["arrival_s"]) for r in rows)  # none queued
    assert saved["notes"][0].startswith("CENT and the GPUs kept the trace's pace"), saved["notes"]


def test_a_side_that_refused_most_requests_did_not_keep_the_pace():
    """10 completed without queueing and 90 refused, ending 1.5x the span: the second rule (few
    queued, within 2x) read it as having kept the pace; refusals may be overload's, so more than a
    tenth failed keeps the note off (the first rule, within 1.25x, is as it was)."""
    from cent_serve.bench.compare import _kept_pace
    from cent_serve.bench.runner import BenchResult, RequestRecord

    ok = [RequestRecord(f"ok{i}", float(i), 16, 4, scheduled_s=float(i), first_token_s=i + 0.5, finish_s=i + 1.0,
                        finish_reason="length") for i in range(10)]
    refused = [RequestRecord(f"no{i}", 0.1 * i, 16, finish_reason="error", failure_reason="queue_full")
               for i in range(90)]
    side = dict(duration=1.5 * 9.0, completed=10)
    assert _kept_pace(BenchResult(ok, [], [], 0.0, 0.0, {}), side, 9.0)  # alone: kept
    assert not _kept_pace(BenchResult(ok + refused, [], [], 0.0, 0.0, {}), side, 9.0)


def test_compare_names_the_settings_that_changed_its_device(tmp_path, capsys, monkeypatch):
    """bench compare on a 4 GHz device titled its table and plots 'tiny: 8 CENT devices ... vs 4 x a100-80gb' as
    the paper's device, where bench run, sweep and paper end theirs with cent simulate's 'given:' line: the
    table's header, compare.json and both plots' titles now give it too."""
    titles = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.append(fig._suptitle.get_text()),
                                                                  real(fig, *a, **k))[1])
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,16,4\n1.0,16,4\n")
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--rates", "1",
                 "--set", "device.clock_hz=4e9", "--out", str(out)]) == 0
    head = next(x for x in capsys.readouterr().out.splitlines() if ": CENT = " in x)
    assert head.endswith("; given: --set device.clock_hz=4e9"), head
    assert json.loads((out / "compare.json").read_text())["given"] == "--set device.clock_hz=4e9"
    assert len(titles) == 2 and all("given: --set device.clock_hz=4e9" in " ".join(t.split()) for t in titles), titles
    titles.clear()
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(trace), "--rates", "1",
                 "--out", str(tmp_path / "plain")]) == 0
    assert "given:" not in capsys.readouterr().out
    assert len(titles) == 2 and not any("given:" in t for t in titles), titles
    assert json.loads((tmp_path / "plain" / "compare.json").read_text())["given"] == ""


def test_the_sweeps_title_keeps_each_sides_hardware_on_one_line(tmp_path, monkeypatch):
    """README's `cent bench compare --model llama2-70b --devices 32 --pp 80 --gpu a100-80gb:4 ... --rates`
    wrote compare_sweep.png titled '... vs 4 x a100-80gb: pp 1 x' over a lone 'tp 4': the 13-inch title
    was broken where it reached the width, inside the GPUs' mapping. `vs` now begins the second line;
    a title that fits (compare_cdfs.png's 15 inches) stays one line."""
    from types import SimpleNamespace

    from cent_serve.bench.compare import plot_cdfs, plot_sweep

    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    cent = "32 CENT devices (pipeline: 80 stages of 1 block, 3 blocks/device on 10 channels each, 27 devices used)"
    gpu = "4 x a100-80gb: pp 1 x tp 4"
    sides = {"CENT": dict(hardware=cent, completed=1, failed=0), "GPU": dict(hardware=gpu, completed=1, failed=0)}
    sweep = {k: [dict(rate=r, output_throughput=t * r, median_tpot_ms=20.0, p99_tpot_ms=30.0, median_e2el_ms=900.0,
                      p99_e2el_ms=1500.0) for r in (0.5, 1.0)] for k, t in (("CENT", 10.0), ("GPU", 30.0))}
    plot_sweep(tmp_path / "compare_sweep.png", sweep, sides, "llama2-70b")
    lines = figs[0]._suptitle.get_text().split("\n")
    assert lines == [f"llama2-70b: {cent}", f"vs {gpu}"], lines
    result = SimpleNamespace(records=[SimpleNamespace(ok=True, ttft_s=0.2, tpot_s=0.05, e2e_s=5.0)])
    plot_cdfs(tmp_path / "cdfs.png", {"CENT": result, "GPU": result}, sides, "llama2-70b", {})
    assert figs[1]._suptitle.get_text().split("\n")[0] == f"llama2-70b: {cent} vs {gpu}"


def test_a_side_that_refused_requests_for_a_full_queue_did_not_keep_the_pace():
    """The whole azure_conv_2023 (19,366 requests over 3,501 s) on 4 A100s: 3,580 refused with
    queue_full, TTFT p50 251 s, the run ending 314 s after the last arrival (1.09x the span); the
    first rule (within 1.25x) said the GPUs kept the trace's pace, so their throughput read as the
    trace's. A full queue is overload: a side that refused a request for it kept no pace, whatever
    its end (a long trace's span leaves a queue's drain within 1.25x)."""
    from cent_serve.bench.compare import _kept_pace
    from cent_serve.bench.runner import BenchResult, RequestRecord

    ok = [RequestRecord(f"ok{i}", float(i), 16, 4, scheduled_s=float(i), first_token_s=i + 0.5, finish_s=i + 1.0,
                        finish_reason="length") for i in range(95)]
    refused = [RequestRecord(f"no{i}", 10.0 + i, 16, finish_reason="rejected", failure_reason="queue_full")
               for i in range(5)]
    too_long = [RequestRecord(f"long{i}", 20.0 + i, 5000, finish_reason="invalid", failure_reason="context_exceeded")
                for i in range(5)]
    side = dict(duration=1.1 * 94.0, completed=95)
    assert _kept_pace(BenchResult(ok, [], [], 0.0, 0.0, {}), side, 94.0)  # alone: kept (the first rule)
    assert _kept_pace(BenchResult(ok + too_long, [], [], 0.0, 0.0, {}), side, 94.0)  # too long for any hardware
    assert not _kept_pace(BenchResult(ok + refused, [], [], 0.0, 0.0, {}), side, 94.0)


def test_compare_says_where_the_cent_side_s_tco_comes_from_when_its_device_is_priced_otherwise():
    """A CENT device with twice the channels is still priced as the paper's in tokens per TCO unit unless
    device.tco_per_device says otherwise: a note says so, naming the field; none once the TCO is set."""
    from cent_serve.bench.compare import compare_notes
    from cent_serve.bench.runner import BenchResult
    from cent_serve.config import build_config

    empty = {name: BenchResult([], [], [], 0.0, 0.0, {}) for name in ("CENT", "GPU")}
    sides = {name: dict(duration=0.0, completed=0, tco=1.0) for name in ("CENT", "GPU")}
    gpu = build_config("tiny", hardware="gpu:a100-80gb:1", numerics="off")
    for sets, said in ((["device.num_channels=64"], True), (["device.num_channels=64", "device.tco_per_device=0.05"],
                                                           False)):
        cent = build_config("tiny", devices=8, numerics="off", overrides=sets)
        notes = [n for n in compare_notes(empty, sides, cent, gpu, swept=False) if "device.tco_per_device" in n]
        assert len(notes) == int(said), notes
        assert not said or "device.num_channels=64 does not move" in notes[0]
