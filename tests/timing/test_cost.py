"""Cost and the GPU comparison (docs/hardware_model.md section 9) against the paper's headlines."""
from __future__ import annotations

import math

import pytest

from cent_serve.config import DeviceConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, phase_figures, resolve_mapping
from cent_serve.timing.energy import cost_figures

DEV = DeviceConfig()
PAPER_SYSTEMS = {"llama2-7b": 8, "llama2-13b": 20, "llama2-70b": 32}


def test_unit_cost_by_hand():
    assert DEV.unit_cost_usd == pytest.approx(2.69 + 1.10 + 24.38)


def test_tco_ratio_by_hand():
    # 13B: 2 GPUs vs 20 devices; 1000 tok/s against the GPU's 1077
    c = cost_figures(model_preset("llama2-13b"), 20, 20, 1000.0, "end2end", 100.0, DEV, against_paper=True)
    assert c["throughput_ratio"] == pytest.approx(1000 / 1077)
    assert c["tokens_per_dollar_ratio"] == pytest.approx((1000 / (0.73 * 20 / 32)) / (1077 / (1.76 * 2 / 4)))
    assert c["tokens_per_joule"] == pytest.approx(10.0)


def test_tokens_per_device_dollar_follow_the_unit_cost():
    """`cent simulate`'s phases price the devices as the sweep does (`tok_s_per_usd`: tokens/s over
    unit_cost_usd x every device bought): twice the price, half the tokens per dollar, while the TCO
    ratio against the paper's GPUs stays (its convention does not read the price)."""
    from cent_serve.config import build_config
    from cent_serve.paper import closed_form

    base, dear = (closed_form(build_config("llama2-70b", devices=32, pp=80, numerics="off",
                                           overrides=[f"device.unit_cost_usd={usd}"]))["end2end"]
                  for usd in (28.17, 56.34))
    assert base["tok_s_per_usd"] == pytest.approx(base["throughput_tok_s"] / (28.17 * 32), rel=1e-12)
    assert dear["tok_s_per_usd"] == pytest.approx(base["tok_s_per_usd"] / 2, rel=1e-12)
    assert dear["tokens_per_dollar_ratio"] == base["tokens_per_dollar_ratio"]
    free = cost_figures(model_preset("llama2-7b"), 8, 8, 1000.0, "end2end", 100.0,
                        DeviceConfig(unit_cost_usd=0.0), against_paper=False)
    assert free["tok_s_per_usd"] is None  # no price, no figure (not a division by zero)


def test_headline_geomeans_with_the_pure_pipeline():
    """The paper: 2.3x end-to-end throughput and 5.2x tokens per dollar (geomean over 7B, 13B,
    70B). This includes Llama2-70B, whose per-row figures are held out of our tables."""
    thr, tpd = [], []
    for name, devices in PAPER_SYSTEMS.items():
        m = model_preset(name)
        mp = resolve_mapping(m, ParallelConfig(devices, m.num_layers, 1), DEV)
        e2e = phase_figures(SystemTimer(m, mp, DEV, FabricConfig()), 512, 3584)["end2end"]
        c = cost_figures(m, mp.devices_used, devices, e2e["throughput_tok_s"], "end2end",
                         e2e["energy_per_token_mj"], DEV, against_paper=True)
        thr.append(c["throughput_ratio"])
        tpd.append(c["tokens_per_dollar_ratio"])
    assert abs(math.prod(thr) ** (1 / 3) / 2.3 - 1) < 0.05
    assert abs(math.prod(tpd) ** (1 / 3) / 5.2 - 1) < 0.05


def test_the_paper_s_gpu_ratio_only_for_the_paper_s_workload(capsys):
    """The paper's GPU figures are for 512 + 3584 tokens: another workload (a prefill alone, a short
    query) gets no ratio to them, in the table or the JSON, and is pointed at the GPU model instead."""
    import json

    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584",
                 "--json"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["end2end"]["throughput_ratio"] > 1 and paper["end2end"]["tokens_per_dollar_ratio"] > 1
    for decode in ("0", "5"):
        assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", decode,
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert all("throughput_ratio" not in out[p] and "tokens_per_dollar_ratio" not in out[p]
                   for p in ("prefill", "end2end"))
        assert out["end2end"]["tokens_per_joule"] > 0  # the cost figures of its own stay
        assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", decode]) == 0
        text = capsys.readouterr().out
        assert "vs GPU" not in text and "--hardware gpu:a100-80gb:1" in text


def test_cent_and_gpu_simulate_name_the_same_figures_alike(capsys):
    """A script comparing `cent simulate --json` for CENT and for GPUs finds the same keys, in the same
    units: tokens per joule, and tokens per TCO unit of the artifact's convention (0.73 per 32 devices,
    1.76 per 4 A100s)."""
    import json

    from cent_serve.cli import main

    common = ["simulate", "--model", "llama2-70b", "--prompt", "512", "--decode", "3584", "--json"]
    assert main(common + ["--devices", "32"]) == 0
    cent = json.loads(capsys.readouterr().out)["end2end"]
    assert main(common + ["--hardware", "gpu:a100-80gb:4"]) == 0
    gpu = json.loads(capsys.readouterr().out)["end2end"]
    for key in ("throughput_tok_s", "energy_per_token_mj", "power_w", "tokens_per_joule", "tokens_per_tco"):
        assert cent[key] > 0 and gpu[key] > 0, key
    assert cent["tokens_per_tco"] == pytest.approx(cent["throughput_tok_s"] / 0.73, rel=1e-12)
    assert gpu["tokens_per_tco"] == pytest.approx(gpu["throughput_tok_s"] / 1.76, rel=1e-12)


def test_a_changed_preset_is_not_compared_with_the_paper_s_gpus(capsys):
    """The paper's GPU figures are for Llama2 as published: a preset with a field changed that sets a
    token's cost (16 layers) is another model and gets no ratio, saying which field; one with only its
    weights' seed or its admitted context changed is still the model the GPUs ran."""
    import json

    from cent_serve.cli import main
    from cent_serve.timing.energy import baseline_changes, gpu_baseline

    common = ["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584"]
    assert main(common + ["--set", "model.num_layers=16", "--json"]) == 0
    assert "throughput_ratio" not in json.loads(capsys.readouterr().out)["end2end"]
    assert main(common + ["--set", "model.num_layers=16"]) == 0
    assert "model.num_layers=16 makes another model" in capsys.readouterr().out
    assert main(common + ["--set", "model.seed=3", "--set", "model.max_seq_len=8192", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["end2end"]["throughput_ratio"] > 1
    m = model_preset("llama2-70b", hidden_size=4096)
    assert baseline_changes(m)[0] == "model.hidden_size=4096" and gpu_baseline(m) is None
    assert gpu_baseline(model_preset("llama2-70b"))["gpus"] == 4
    assert baseline_changes(model_preset("mistral-7b", num_layers=4)) == []  # no GPU figures to leave
    # 8-bit storage is not the bfloat16 the GPUs computed in: no ratio (architecture audit: "vs GPU" was printed)
    eight = ["--set", "device.bytes_per_element=1", "--set", "device.row_elements=2048", "--set",
             "device.burst_elements=32"]
    assert main(common + eight + ["--json"]) == 0
    assert "throughput_ratio" not in json.loads(capsys.readouterr().out)["end2end"]
    assert main(common + eight) == 0
    out = capsys.readouterr().out
    assert "(bfloat16), and device.bytes_per_element=1 makes another model" in out and "vs GPU" not in out


def test_fields_the_closed_form_ignores_keep_the_gpu_baseline():
    """Every model field the closed form does not read (`CLOSED_FORM_IGNORES`) leaves the model the
    paper's GPUs ran: the two lists agree."""
    from cent_serve.cli_common import CLOSED_FORM_IGNORES
    from cent_serve.timing.energy import UNPRICED_MODEL_FIELDS

    for key in CLOSED_FORM_IGNORES:
        if key.startswith("model."):
            field = key[len("model."):]
            assert field in UNPRICED_MODEL_FIELDS or field == "rope_", key


def test_the_device_s_tco_prices_tokens_per_dollar_and_defaults_to_the_paper_s():
    """`device.tco_per_device` is the CENT side of the TCO ratio, as `gpu.tco_per_gpu` is the GPUs': its
    default is the paper's 0.73 per 32 (the ratio bit for bit the formula's), and a device priced at twice
    that halves the tokens per TCO unit and the ratio, as the price field alone does not."""
    m = model_preset("llama2-13b")
    c = cost_figures(m, 20, 20, 1000.0, "end2end", 100.0, DEV, against_paper=True)
    assert DEV.tco_per_device is None and DEV.tco == 0.73 / 32  # unset: the paper's
    assert c["tokens_per_dollar_ratio"] == (1000.0 / (0.73 * 20 / 32)) / (1077.0 / (1.76 * 2 / 4))
    assert c["tokens_per_tco"] == 1000.0 / (0.73 * 20 / 32)
    dear = cost_figures(m, 20, 20, 1000.0, "end2end", 100.0, DeviceConfig(tco_per_device=0.73 / 16),
                        against_paper=True)
    assert dear["tokens_per_dollar_ratio"] == pytest.approx(c["tokens_per_dollar_ratio"] / 2, rel=1e-12)
    assert dear["tokens_per_tco"] == pytest.approx(c["tokens_per_tco"] / 2, rel=1e-12)


def test_a_device_priced_otherwise_but_not_its_tco_says_where_the_ratio_s_prices_come_from(capsys, caplog):
    """More channels, another price or capacity leave the ratio the paper's device's: the output says so
    in one line naming the fields and the knob (the JSON on stderr), and says nothing once the TCO is set
    or nothing that prices a device changed."""
    import json

    from cent_serve.cli import main

    common = ["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep"]
    assert main(common + ["--set", "device.clock_hz=4e9"]) == 0  # a clock is not what the note is about
    assert "device.tco_per_device" not in capsys.readouterr().out
    assert main(common + ["--set", "device.num_channels=64", "--set", "device.rows_per_bank=8192"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "device.tco_per_device=0.0228125" in x]
    assert len(lines) == 1, lines
    assert "device.num_channels=64, device.rows_per_bank=8192 do not move: --set device.tco_per_device=" in lines[0]
    assert main(common + ["--set", "device.num_channels=64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["points"]
    said = [r.getMessage() for r in caplog.records if "device.tco_per_device" in r.getMessage()]
    assert len(said) == 1 and "device.num_channels=64 does not move" in said[0]
    caplog.clear()
    assert main(common + ["--set", "device.num_channels=64", "--set", "device.tco_per_device=0.045625", "--json"]) == 0
    priced = json.loads(capsys.readouterr().out)["points"]
    assert not [r for r in caplog.records if "device.tco_per_device" in r.getMessage()]
    assert priced[0]["tokens_per_dollar_ratio"] == pytest.approx(rows[0]["tokens_per_dollar_ratio"] / 2, rel=1e-12)


def test_the_paper_s_price_as_printed_is_the_paper_s_device():
    """--set device.unit_cost_usd=28.17 (section 9's $2.69 + $1.10 + $24.38 as the paper sums it) is the
    default's 28.169999...: no note that the device is priced otherwise; another price is."""
    import dataclasses

    from cent_serve.timing.energy import unpriced_device_changes

    dev = DeviceConfig()
    assert unpriced_device_changes(dataclasses.replace(dev, unit_cost_usd=28.17)) == []
    assert unpriced_device_changes(dataclasses.replace(dev, unit_cost_usd=28.18)) == ["device.unit_cost_usd=28.18"]
    assert unpriced_device_changes(dataclasses.replace(dev, unit_cost_usd=40.0, tco_per_device=0.73 / 32 * 1.5)) == []


@pytest.mark.parametrize("field, value", [("banks_per_channel", 32), ("row_elements", 2048), ("unit_cost_usd", 40.0),
                                          ("num_channels", 64), ("rows_per_bank", 8192)])
def test_each_field_that_prices_a_device_draws_the_tco_note(field, value):
    """Every field of PRICED_DEVICE_FIELDS changed alone, its TCO not, is named by the note's trigger."""
    import dataclasses

    from cent_serve.timing.energy import unpriced_device_changes

    assert unpriced_device_changes(dataclasses.replace(DeviceConfig(), **{field: value})) == [f"device.{field}={value}"]


def test_simulate_sweep_json_without_a_ratio_warns_nothing_of_prices(capsys, caplog):
    """--json of a workload the paper's GPUs did not run has no tokens per dollar: no warning on its prices."""
    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep", "--prompt", "1024", "--decode", "128",
                 "--set", "device.num_channels=64", "--json"]) == 0
    capsys.readouterr()
    assert not [r for r in caplog.records if "device.tco_per_device" in r.getMessage()]


def test_the_paper_s_gpus_are_priced_at_gpu_tco_per_gpu_when_it_is_set(capsys, caplog):
    """`gpu.tco_per_gpu` prices the GPUs on `--hardware gpu:...` and in `cent bench compare`, and the paper's
    A100s in the closed form's tokens per dollar against them too: twice an A100's price doubles the ratio
    (the throughput ratio stays), and the closed form does not call the field unread. Unset, the GPU side is
    section 9's 1.76 x GPUs / 4 bit for bit."""
    import json

    from cent_serve.cli import main
    from cent_serve.timing.energy import paper_gpu_tco

    assert [paper_gpu_tco(g) for g in (1, 2, 4)] == [1.76 * g / 4 for g in (1, 2, 4)]
    m = model_preset("llama2-13b")
    c = cost_figures(m, 20, 20, 1000.0, "end2end", 100.0, DEV, against_paper=True)
    dear = cost_figures(m, 20, 20, 1000.0, "end2end", 100.0, DEV, against_paper=True, tco_per_gpu=0.88)
    assert dear["tokens_per_dollar_ratio"] == pytest.approx(2 * c["tokens_per_dollar_ratio"], rel=1e-12)
    assert dear["throughput_ratio"] == c["throughput_ratio"]
    common = ["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584", "--json"]
    assert main(common) == 0
    base = json.loads(capsys.readouterr().out)
    caplog.clear()
    assert main(common + ["--set", "gpu.tco_per_gpu=0.88"]) == 0
    priced = json.loads(capsys.readouterr().out)
    for phase in ("prefill", "decoding", "end2end"):
        assert priced[phase]["tokens_per_dollar_ratio"] == pytest.approx(2 * base[phase]["tokens_per_dollar_ratio"],
                                                                         rel=1e-12)
        assert priced[phase]["throughput_ratio"] == base[phase]["throughput_ratio"]
    assert not [r for r in caplog.records if "gpu.tco_per_gpu" in r.getMessage()]
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep", "--set", "gpu.tco_per_gpu=0.88"]) == 0
    assert "priced at gpu.tco_per_gpu=0.88 TCO units each" in capsys.readouterr().out


def test_the_tco_note_follows_whether_the_device_s_tco_was_set_not_its_value(tmp_path, capsys, caplog):
    """A device with 64 channels whose TCO is set, even to the paper's 0.0228125, is priced by the user: no
    note. Left unset, the note comes, and again from the config the run wrote (null there), so a rerun
    says what the run said; the figures are the same either way."""
    import json

    from cent_serve.cli import main
    from cent_serve.timing.energy import unpriced_device_changes

    assert unpriced_device_changes(DeviceConfig(num_channels=64)) == ["device.num_channels=64"]
    assert unpriced_device_changes(DeviceConfig(num_channels=64, tco_per_device=0.73 / 32)) == []
    common = ["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep", "--set", "device.num_channels=64"]
    assert main(common + ["--set", "device.tco_per_device=0.0228125"]) == 0
    given = capsys.readouterr().out
    assert "does not move" not in given
    assert main(common) == 0
    unset = capsys.readouterr().out
    assert "which device.num_channels=64 does not move" in unset
    assert [x for x in given.splitlines() if x.endswith("x")] == [x for x in unset.splitlines() if x.endswith("x")]
    assert main(common + ["--json"]) == 0
    written = json.loads(capsys.readouterr().out)["config"]
    assert written["device"]["tco_per_device"] is None
    (tmp_path / "c.json").write_text(json.dumps(written))
    caplog.clear()
    assert main(["simulate", "--config", str(tmp_path / "c.json"), "--sweep"]) == 0
    assert "which device.num_channels=64 does not move" in capsys.readouterr().out
    assert main(["sweep", "--model", "llama2-7b", "--devices", "8", "--set", "device.tco_per_device=0.0228125",
                 "--vary", "device.num_channels=32,64", "--out", str(tmp_path / "s"), "--no-plots"]) == 0
    assert "does not move" not in capsys.readouterr().out


def test_a_price_set_for_another_gpu_kind_does_not_price_the_paper_s_a100s(capsys):
    """`gpu.tco_per_gpu` is the price of `gpu.kind` (None: that kind's own): set beside an H100 (or the A100
    PCIe card) it is that GPU's, and the paper's A100-80GB SXM4s keep their 1.76 / 4 in the closed form's
    tokens per dollar against them; the baseline line says why the set price is not theirs."""
    import json

    from cent_serve.cli import main

    common = ["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "512", "--decode", "3584", "--json"]
    assert main(common) == 0
    base = json.loads(capsys.readouterr().out)
    for kind in ("h100-80gb", "a100-80gb-pcie"):
        assert main(common + ["--set", f"gpu.kind={kind}", "--set", "gpu.tco_per_gpu=1.5"]) == 0
        other = json.loads(capsys.readouterr().out)
        for phase in ("prefill", "decoding", "end2end"):
            assert other[phase]["tokens_per_dollar_ratio"] == base[phase]["tokens_per_dollar_ratio"], (kind, phase)
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep", "--set", "gpu.kind=h100-80gb",
                 "--set", "gpu.tco_per_gpu=1.5"]) == 0
    out = capsys.readouterr().out
    assert "priced at gpu.tco_per_gpu" not in out
    assert "gpu.tco_per_gpu=1.5 prices gpu.kind=h100-80gb, not these" in out


def test_bench_paper_prices_the_paper_s_gpus_as_the_closed_form_does(tmp_path, capsys):
    """cent bench paper's tokens per dollar against the paper's A100s take gpu.tco_per_gpu as cent simulate's
    do (`paper_gpu_price`): twice an A100's price, twice the ratio (the throughput ratio stays); the same
    price set beside an H100 is that GPU's and leaves the ratio as it was."""
    import json

    from cent_serve.cli import main

    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,16,4\n")

    def rows(*sets: str) -> list[dict]:
        out = tmp_path / f"paper{len(list(tmp_path.iterdir()))}"
        assert main(["bench", "paper", "--model", "llama2-7b", "--devices", "8", "--numerics", "off", "--trace",
                     str(trace), "--out", str(out), "--no-plots", *[a for s in sets for a in ("--set", s)]]) == 0
        capsys.readouterr()
        return json.loads((out / "paper.json").read_text())["rows"]

    base, dear = rows(), rows("gpu.tco_per_gpu=0.88")
    h100 = rows("gpu.kind=h100-80gb", "gpu.tco_per_gpu=0.88")
    assert len(base) == len(dear) == len(h100) == 5
    for b, d, h in zip(base, dear, h100):
        assert d["tokens_per_dollar_ratio"] == pytest.approx(2 * b["tokens_per_dollar_ratio"], rel=1e-12)
        assert d["throughput_ratio"] == b["throughput_ratio"]
        assert h["tokens_per_dollar_ratio"] == b["tokens_per_dollar_ratio"]
