"""`cent simulate --batch B`: fewer queries in flight than pipeline stages. A query's token takes
the same time (a stage serves one query at a time), the devices hold B queries' KV cache, and
throughput and power scale with the stages that have a query."""
from __future__ import annotations

import json

import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer
from cent_serve.timing.pipeline import phase_figures, token_figures


def _timer(model: str = "llama2-70b", devices: int = 32) -> SystemTimer:
    return SystemTimer.from_config(CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, 0, 1)))


def test_batch_scales_throughput_and_power_not_latency_or_energy():
    t = _timer()
    full, eight = token_figures(t, 4096), token_figures(t, 4096, 8)
    assert full.batch == t.mapping.lanes == 80 and eight.batch == 8
    assert eight.token_latency_ms == full.token_latency_ms and eight.token_energy_mj == full.token_energy_mj
    assert eight.throughput_tok_s == pytest.approx(full.throughput_tok_s * 8 / 80, rel=1e-12)
    assert eight.power_w == pytest.approx(full.power_w * 8 / 80, rel=1e-12)
    phases = phase_figures(t, 512, 512, batch=8)
    assert phases["end2end"]["throughput_tok_s"] == pytest.approx(
        phase_figures(t, 512, 512)["end2end"]["throughput_tok_s"] / 10, rel=1e-12)
    with pytest.raises(ValueError, match="--batch 81 is invalid: use 1..80"):
        token_figures(t, 4096, 81)


def test_long_context_runs_at_a_batch_that_fits(capsys):
    """70B at 30,976 tokens: 80 queries' KV exceed a 16 GB device (refused, naming the largest batch
    that fits); at --batch 8 it runs and reports the latency."""
    args = ["simulate", "--model", "llama2-70b", "--devices", "32", "--seqlen", "30976",
            "--set", "model.max_seq_len=32768", "--json"]
    assert main(args) == 2
    assert ("the largest batch at context 30976 is 30; or use --batch 30, 80 devices (the fewest that hold it with a 30,976-token query a stage), or "
            "a shorter context") in capsys.readouterr().err  # it said "more devices", not how many (scale audit)
    assert main(args + ["--batch", "30"]) == 0
    capsys.readouterr()
    over = ["--devices", "79", *args[5:]]  # the count it names holds the 80 queries, one fewer does not
    assert main(args[:3] + over) == 2 and main(args[:3] + ["--devices", "80", *args[5:]]) == 0
    capsys.readouterr()
    # 131,072 tokens: no count holds 80 queries with one stage a block (a block a device already; more
    # only add copies), so no count alone is named and "more devices" is not offered (review); a larger tp
    # splits each block's KV over more devices, so the fewest devices with more stages or a larger tp that
    # hold it are (it offered --batch 7 or a shorter context alone), and that mapping runs
    long = ["--seqlen", "131072", "--set", "model.max_seq_len=131072"]
    assert main(["simulate", "--model", "llama2-70b", "--devices", "32", *long]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("the largest batch at context 131072 is 7; or use --batch 7, 320 devices with --pp 80 "
                                 "--tp 4 (the fewest that hold it with more stages or a larger tp) with --set "
                                 "fabric.switch_lanes=320, or a shorter context with --seqlen N"), err
    assert main(["simulate", "--model", "llama2-70b", "--devices", "320", "--pp", "80", "--tp", "4", "--set",
                 "fabric.switch_lanes=320", *long]) == 0
    capsys.readouterr()
    assert main(args + ["--batch", "8"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["batch"] == 8 and fig["seqlen"] == 30976
    assert fig["token_latency_ms"] > token_figures(_timer(), 4096).token_latency_ms  # longer context, slower token


def test_phase_mode_checks_the_context(capsys):
    assert main(["simulate", "--model", "llama2-7b", "--prompt", "512", "--decode", "4000"]) == 2
    err = capsys.readouterr().err
    assert "4512 tokens exceed the model's context, model.max_seq_len=4096" in err and "--set model.max_seq_len" in err


def test_batch_is_refused_where_it_cannot_apply(capsys):
    assert main(["simulate", "--model", "llama2-7b", "--emulate", "--local", "--batch", "4"]) == 2
    err = capsys.readouterr().err
    assert "--batch goes with the closed form" in err and "drop --batch or --emulate" in err and err.count("\n") == 1


def test_sweep_with_batch_gives_each_mapping_as_simulate_and_cent_sweep_give_it(capsys):
    """`cent simulate --sweep --batch B`: every mapping with B queries in flight in each replica, each row
    bit for bit `cent simulate --pp P --tp T --batch B` (and `cent sweep --batch B`'s point); a mapping of
    fewer stages than B is its row's error, in the words that mapping alone is refused with."""
    from cent_serve.config import build_config
    from cent_serve.sweep import closed_form_figures

    work = ["--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584", "--batch", "4"]
    assert main(["simulate", "--sweep", *work, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["workload"]["batch"] == 4
    rows = {(r["pp"], r["tp"]): r for r in out["points"]}
    assert set(rows) == {(32, 1), (1, 8), (2, 4), (4, 2), (8, 1)}
    for (pp, tp), r in rows.items():
        code = main(["simulate", *work, "--pp", str(pp), "--tp", str(tp), "--json"])
        captured = capsys.readouterr()
        if "error" in r:
            assert pp < 4 and code == 2 and captured.err.strip() == f"cent simulate: error: {r['error']}"
            continue
        one = json.loads(captured.out)["end2end"]
        assert (r["throughput_tok_s"], r["energy_per_token_mj"]) == (one["throughput_tok_s"], one["energy_per_token_mj"])
    swept = closed_form_figures(build_config("llama2-7b", devices=8, pp=4, tp=2), 512, 3584, 4)
    assert swept["throughput_tok_s"] == rows[(4, 2)]["throughput_tok_s"]
    assert main(["simulate", "--sweep", *work[:-2], "--json"]) == 0  # the paper's batch: one query a stage, 8 here
    paper = {(r["pp"], r["tp"]): r for r in json.loads(capsys.readouterr().out)["points"]}
    assert rows[(8, 1)]["throughput_tok_s"] < 0.75 * paper[(8, 1)]["throughput_tok_s"]  # half the queries in flight
    assert main(["simulate", "--sweep", *work]) == 0
    text = capsys.readouterr().out
    assert "prompt 512 + decode 3584, 4 queries in flight in each replica" in text.splitlines()[0]
    assert ("   1   8  could not run: --batch 4 is invalid: use 1 (one query per pipeline stage at most, as the paper "
            "runs them; this mapping has 1 stage)\n") in text  # not 'use 1..1', '1 stages'
    assert "   2   4  could not run: --batch 4 is invalid: use 1..2 (" in text


def test_replicas_multiply_the_system_s_throughput_and_power():
    """7B as 8 stages on 16 devices: two copies of the mapping, as the serving engine runs them."""
    one, two = (SystemTimer.from_config(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(n, 8, 1)))
                for n in (8, 16))
    assert (one.mapping.replicas, two.mapping.replicas) == (1, 2)
    a, b = token_figures(one, 4096), token_figures(two, 4096)
    assert b.replicas == 2 and b.token_latency_ms == pytest.approx(a.token_latency_ms, rel=0.05)
    assert b.throughput_tok_s == pytest.approx(2 * 8 / (b.token_latency_ms / 1e3), rel=1e-12)
    assert b.power_w / b.throughput_tok_s == pytest.approx(a.power_w / a.throughput_tok_s, rel=0.05)


def test_the_sweep_table_says_what_its_short_columns_are(capsys):
    """`cpb` was never explained (first-hour audit): a line under the table says it and `used`."""
    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "  pp  tp  cpb  used" in out
    assert "cpb: channels a block's weights span on each of its devices; used: devices one copy" in out


def test_the_sweep_table_keeps_its_columns_apart_at_a_thousand_devices(capsys):
    """At 1,024 devices the sweep's tp 1024 row filled `tp` and its 153,581 mJ a token filled
    `mJ/tok`: the figures ran into the columns before them ("   11024   32  1024 ... 37.663153581.38").
    Each column widens to one more than its widest figure; every row splits into its fields."""
    argv = ["simulate", "--model", "llama2-7b", "--devices", "1024", "--sweep", "--set", "fabric.switch_lanes=2048"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.split()[:2] == ["pp", "tp"])
    rows = [line.split() for line in out[head + 1:] if line[:1] == " "]
    assert ["1", "1024"] == rows[[r[:2] for r in rows].index(["1", "1024"])][:2]
    assert len(rows) > 5 and all(len(r) == 10 for r in rows), rows  # 8, and the two against GPUs
    assert all(len(line) == len(out[head]) for line in out[head + 1:head + 1 + len(rows)])


def test_a_named_device_count_past_the_switch_says_to_raise_its_lanes(capsys):
    """The count a capacity refusal names must run as told: 200 blocks of 7B on 100 devices need 200,
    one each, and 200 devices are more than the switch's 144 lanes (`parallel.num_devices=200 exceeds
    fabric.switch_lanes=144`), so the refusal says to raise them too."""
    args = ["simulate", "--model", "llama2-7b", "--set", "model.num_layers=200", "--seqlen", "4096", "--json"]
    assert main([*args, "--devices", "100"]) == 2
    err = capsys.readouterr().err
    assert "or use --batch 120, 200 devices (the fewest that hold it with a 4,096-token query a stage) with --set fabric.switch_lanes=200, or" in err, err
    assert main([*args, "--devices", "200", "--set", "fabric.switch_lanes=200"]) == 0
    assert main([*args, "--devices", "199", "--set", "fabric.switch_lanes=200"]) == 2


def test_a_long_context_s_mean_throughput_is_set_beside_its_tokens_over_its_latency(capsys):
    """A phase's tok/s is the artifact's mean of each context's throughput (docs/hardware_model.md section
    7), which over a 128k context weighs the slow long-context tokens as much as the fast short ones: 6.3
    tok/s end to end where the phase's tokens over its latency are 3.9. `cent simulate` says so, with the
    latter, when they are more than 10% apart; the paper's workload (1.5% apart) is printed as before."""
    argv = ["simulate", "--model", "llama3.1-70b", "--devices", "32", "--prompt", "122880", "--decode", "8192",
            "--batch", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    phases = json.loads(capsys.readouterr().out)
    done = {p: 2 * n / phases[p]["latency_s"] for p, n in (("prefill", 122880), ("decoding", 8192),
                                                             ("end2end", 131072))}
    assert phases["end2end"]["throughput_tok_s"] > 1.5 * done["end2end"]  # 6.3 against 3.9
    note = next(line for line in out.splitlines() if "tokens over its latency" in line)
    for phase in done:
        assert f"{phase} {done[phase]:.1f}" in note
    assert main(["simulate", "--model", "llama2-70b", "--prompt", "512", "--decode", "3584"]) == 0
    assert "tokens over its latency" not in capsys.readouterr().out


def test_the_mean_rate_note_counts_every_replica_s_queries_and_spares_the_paper_s_mappings(capsys):
    """64 devices hold two replicas of Llama 3.1 8B's 32 stages: the tokens over the latency are both
    replicas' 2 queries' (4 x 122,880 tokens over the latency), 108.1 tok/s end to end, not one replica's
    54.0. The paper's workload on its farthest mapping (Llama2-70B as tp 32, 8.7% apart end to end) and
    Llama 3.1 8B as tp 8 (8.9%) stay under the 10% at which the note is printed."""
    argv = ["simulate", "--model", "llama3.1-8b", "--devices", "64", "--prompt", "114688", "--decode", "8192",
            "--batch", "2"]
    assert main(argv + ["--json"]) == 0
    phases = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if "tokens over its latency" in line)
    assert f"end2end {4 * 122880 / phases['end2end']['latency_s']:.1f} tok/s" in note, note
    for model, devices in (("llama2-70b", "32"), ("llama3.1-8b", "8")):
        assert main(["simulate", "--model", model, "--devices", devices, "--tp", devices, "--pp", "1",
                     "--prompt", "512", "--decode", "3584"]) == 0
        assert "tokens over its latency" not in capsys.readouterr().out


def test_sweep_with_batch_names_a_smaller_batch_where_the_kv_does_not_hold_it(capsys):
    """--sweep --batch B: a mapping whose devices cannot hold B queries' KV names the largest batch that fits
    among its fixes, as that mapping alone does (the user gave a --batch to make smaller)."""
    assert main(["simulate", "--sweep", "--model", "llama2-70b", "--devices", "32", "--prompt", "30000", "--decode",
                 "976", "--set", "model.max_seq_len=32768", "--batch", "40"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  80   1"))
    assert "could not run:" in row and "or use --batch 30, " in row, row
