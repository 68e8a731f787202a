"""A replay's energy by term (`summarize`'s `energy_by_term_j`, `energy_share_by_term`): charged by the
devices where they charge the total, so the terms add up to the run's `energy_j` whatever the path a
round takes (a pure pipeline's compiled ticks, a tensor-parallel unit's twin ranks, the general loop)."""
from __future__ import annotations

import json

import pytest

from cent_serve.bench import FixedLengths, synthetic_trace
from cent_serve.bench.report import print_table, summarize
from cent_serve.bench.runner import run_in_process
from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.timing.energy import TERMS


def _cfg(model="tiny", devices=8, pp=0, tp=1, **kw) -> CentConfig:
    return CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp), numerics="off", **kw)


def _trace(n=12):
    return synthetic_trace(n, rate=50.0, burstiness=1.0, lengths=FixedLengths(20, 9), seed=4)


@pytest.mark.parametrize("devices, pp, tp", [
    (8, 0, 1),   # pure pipeline, one device a unit: compiled ticks
    (8, 2, 4),   # hybrid: tensor-parallel twins in lockstep
    (4, 4, 1),   # a pipeline of 4 over 4 devices (several blocks a device)
])
def test_the_terms_add_up_to_the_runs_energy(devices, pp, tp):
    s = summarize(run_in_process(_cfg("tiny", devices, pp, tp), _trace(), progress=False))
    terms = s["energy_by_term_j"]
    assert list(terms) and set(terms) <= set(TERMS)
    assert s["energy_j"] > 0
    assert sum(terms.values()) == pytest.approx(s["energy_j"], rel=1e-9)
    assert sum(s["energy_share_by_term"].values()) == pytest.approx(1.0, rel=1e-9)
    assert all(v >= 0 for v in terms.values())
    # the PIM banks and the rows they open are a decode step's energy: both are charged
    assert terms["pim"] > 0 and terms["activate"] > 0


def test_the_terms_follow_the_closed_form_of_one_request():
    """One request alone: its tokens are charged at contexts 1 .. P + n - 1, the closed form's terms."""
    from cent_serve.bench import Request
    from cent_serve.engine import Engine
    from cent_serve.timing.energy import token_energy_terms_j

    cfg = _cfg("llama2-7b", 32, 32)
    P, n = 16, 5
    s = summarize(run_in_process(cfg, [Request("0", 0.0, P, n)], progress=False))
    timer = Engine(cfg).timer
    want = {t: 0.0 for t in TERMS}
    for L in range(1, P + n):
        for t, j in token_energy_terms_j(timer, L).items():
            want[t] += j
    for t in TERMS:
        assert s["energy_by_term_j"].get(t, 0.0) == pytest.approx(want[t], rel=1e-9, abs=1e-15), t


def test_the_table_prints_the_largest_terms_and_their_shares(capsys):
    s = summarize(run_in_process(_cfg(), _trace(), progress=False))
    s["wall_s"] = 0.0
    print_table(s)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("energy by term"))
    top = max(s["energy_share_by_term"], key=s["energy_share_by_term"].get)
    assert f"{top} {100 * s['energy_share_by_term'][top]:.1f}%" in line


def test_compare_json_has_the_cent_sides_terms_and_none_for_the_gpus(tmp_path, capsys):
    out = tmp_path / "cmp"
    main(["bench", "compare", "--model", "tiny", "--devices", "8", "--numerics", "off", "--synthetic", "poisson",
          "--rate", "20", "--num-requests", "6", "--prompt-len", "16", "--output-len", "6", "--gpu", "a100-80gb:1",
          "--out", str(out), "--no-plots"])
    cmp = json.loads((out / "compare.json").read_text())
    cent, gpu = cmp["cent"], cmp["gpu"]
    assert sum(cent["energy_by_term_j"].values()) == pytest.approx(cent["energy_j"], rel=1e-9)
    assert gpu["energy_by_term_j"] is None and gpu["energy_share_by_term"] is None
    text = capsys.readouterr().out
    assert "energy by term" in text and "GPU: n/a" in text


def test_bench_sweep_gives_each_rates_terms(tmp_path, capsys):
    """sweep.json's rows: summary.json's energy_by_term_j and energy_share_by_term for each rate."""
    out = tmp_path / "sweep"
    assert main(["bench", "sweep", "--model", "tiny", "--devices", "8", "--numerics", "off", "--synthetic", "poisson",
                 "--num-requests", "8", "--prompt-len", "16", "--output-len", "6", "--rates", "5,50",
                 "--out", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert len(rows) == 2
    for r in rows:
        assert set(r["energy_by_term_j"]) == set(TERMS)
        assert sum(r["energy_by_term_j"].values()) == pytest.approx(r["energy_j"], rel=1e-9)
        assert sum(r["energy_share_by_term"].values()) == pytest.approx(1.0, rel=1e-9)


def test_bench_sweep_s_energy_per_token_is_the_same_at_every_rate(tmp_path, capsys):
    """Devices draw nothing while idle (docs/hardware_model.md section 8, "Idle devices draw nothing"): the
    standby and leakage terms are charged over the steps a device runs, whose commands and times a rate
    does not change, so the same requests at a tenth and at ten requests a second cost the same joules,
    term by term, over spans 100x apart; the average draw (joules over the span) is what the rate moves."""
    out = tmp_path / "sweep"
    assert main(["bench", "sweep", "--model", "tiny", "--devices", "8", "--numerics", "off", "--synthetic", "poisson",
                 "--num-requests", "8", "--prompt-len", "16", "--output-len", "6", "--rates", "0.1,10",
                 "--out", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    slow, fast = json.loads((out / "sweep.json").read_text())["rows"]
    assert slow["completed"] == fast["completed"] == 8
    assert slow["duration"] > 20 * fast["duration"]
    assert slow["energy_per_token_mj"] == pytest.approx(fast["energy_per_token_mj"], rel=1e-9)
    for term in ("active_standby", "precharge_standby", "sram_static", "accelerator_static", "device_controller"):
        assert slow["energy_by_term_j"][term] == pytest.approx(fast["energy_by_term_j"][term], rel=1e-9), term
        assert slow["energy_by_term_j"][term] > 0, term


def test_bench_sweep_on_gpus_gives_null_terms(tmp_path, capsys):
    """On GPUs summary.json's split is null, which the row's scalars already carry: the sweep's row was built
    with the key twice (TypeError) until it took them apart."""
    out = tmp_path / "sweep"
    assert main(["bench", "sweep", "--model", "tiny", "--hardware", "gpu:a100-80gb:1", "--synthetic", "poisson",
                 "--num-requests", "8", "--prompt-len", "16", "--output-len", "6", "--rates", "5,50",
                 "--out", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["rate"] for r in rows] == [5, 50]
    assert all(r["energy_by_term_j"] is None and r["energy_share_by_term"] is None for r in rows)
    assert all(r["completed"] == 8 for r in rows)


def test_bench_paper_gives_each_mappings_energy_per_token_by_term(tmp_path, capsys):
    """paper.csv and paper.json: energy_<term>_mj, a column a term, adding up to energy_per_token_mj."""
    import csv

    out = tmp_path / "paper"
    assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off",
                 "--num-requests", "6", "--max-prompt-tokens", "16", "--max-output-tokens", "4", "--rate", "100",
                 "--out", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(out / "paper.csv")))
    assert rows == [{k: str(v) for k, v in r.items() if not isinstance(v, dict)}
                    for r in json.loads((out / "paper.json").read_text())["rows"]]
    for r in rows:
        terms = [float(r[f"energy_{t}_mj"]) for t in TERMS]
        assert sum(terms) == pytest.approx(float(r["energy_per_token_mj"]), rel=1e-9)
        assert float(r["energy_pim_mj"]) > 0


@pytest.mark.parametrize("energy_j, shown", [(15830.4, "15,830 J"), (9999.7, "10,000 J"), (3.98867e6, "3,988,670 J"), (571.94, "571.9 J")])
def test_the_tables_energy_is_a_plain_number_at_any_size(capsys, energy_j, shown):
    """`bench run`'s table printed a run's energy with 4 significant digits, `1.583e+04 J` from 10 kJ up (a
    dozen requests on 8 GPUs, any long CENT replay) beside `571.9 J` below: whole joules with thousands
    separators from 1 kJ, as the throughputs beside it read."""
    s = summarize(run_in_process(_cfg(), _trace(), progress=False))
    s["wall_s"], s["energy_j"] = 0.0, energy_j
    print_table(s)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("energy by term"))
    assert line.split(": ")[0].split()[-2:] == shown.split(), line
