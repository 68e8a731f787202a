"""Paper mode through the device and fabric workers (`cent simulate --emulate`).

The emulated figures are read off the timestamps the workers put on the data;
the closed form (`cent_serve.timing.token`) computes them from formulas. The
two are separate code paths, so agreement here is a cross-check of both.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.emulate import emulate_phases, emulate_seqlen, run_workload
from cent_serve.executor import LocalExecutor
from cent_serve.timing.pipeline import token_figures

TOL = 0.01
"""Relative agreement held here (the issue asks 3%; measured: within 0.01%)."""


def _cfg(model: str, devices: int, pp: int, tp: int, numerics: str = "off") -> CentConfig:
    return CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp), numerics=numerics)


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1)


def _check_terms(fig: dict, total_key: str, per_term_rel: bool) -> None:
    """The energy by term of an emulated figure (the devices' counts) and of the closed form beside it:
    each adds up to its own total to 1e-9, and the two agree as their totals do (`TOL`): each term
    relative to itself (`per_term_rel`: one context, the same contexts charged), else on the scale of the
    token's energy, and relative to itself for a term of at least 1% of it (a phase: the closed form
    averages sampled contexts, the devices charge every one; accelerator_dynamic, 1e-8 of the total and
    growing with the context, is 2-26% apart on its own scale, under 1e-8 on the total's)."""
    from cent_serve.timing.energy import TERMS

    mine, closed = fig["energy_breakdown_mj"], fig["closed_form"]["energy_breakdown_mj"]
    assert list(mine) == list(closed) == list(TERMS)
    assert sum(mine.values()) == pytest.approx(fig[total_key], rel=1e-9)
    assert sum(closed.values()) == pytest.approx(fig["closed_form"][total_key], rel=1e-9)
    total = fig["closed_form"][total_key]
    for t in TERMS:
        if per_term_rel or closed[t] >= 0.01 * total:
            assert mine[t] == pytest.approx(closed[t], rel=TOL, abs=1e-12 * total), t
        assert abs(mine[t] - closed[t]) < TOL * total, t
    assert mine["pim"] > 0 and mine["activate"] > 0


@pytest.mark.parametrize("model, devices, pp, tp, numerics", [
    ("llama2-7b", 32, 32, 1, "off"),    # pure pipeline, one block per channel group
    ("llama2-7b", 8, 2, 4, "off"),      # hybrid
    ("llama2-70b", 32, 4, 8, "off"),    # hybrid, 10 blocks per device
    ("tiny", 8, 2, 4, "full"),          # real weights through the fabric
    ("llama2-7b", 16, 8, 1, "off"),     # two replicas of 8 devices: the figures of both
    ("gemma-2-9b", 8, 2, 4, "off"),     # four norms a block and soft-capped scores, charged by both alike
    ("gemma-3-4b", 8, 2, 4, "off"),     # q/k norms, four norms, a window on five blocks of six: both alike
])
def test_seqlen_figures_match_closed_form(model, devices, pp, tp, numerics):
    cfg = _cfg(model, devices, pp, tp, numerics)
    out = emulate_seqlen(cfg, LocalExecutor(cfg), 300)
    for key in ("token_latency_ms", "throughput_tok_s", "token_energy_mj", "avg_power_w"):
        assert _rel(out[key], out["closed_form"][key]) < TOL, key
    assert out["seqlen"] == 300 and out["sim_tokens_per_wall_s"] > 0
    _check_terms(out, "token_energy_mj", per_term_rel=True)


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (8, 2, 4), (3, 3, 1)])
def test_a_window_on_some_blocks_is_charged_alike_by_the_devices_and_the_closed_form(devices, pp, tp):
    """Llama 2 7B windowing alternate blocks (128, `model.layer_types`) at a context of 300 past the
    window: pure pipeline (4 blocks of both kinds a device), hybrid, and three uneven stages (11, 11, 10
    blocks: stages of different mixes). The devices read each block's costs at its own keys; the
    closed form adds them per stage; both agree, the latency between the model windowing none and every
    block, the energy their mean (16 blocks of each)."""
    from cent_serve.config import apply_overrides

    types = ",".join("sliding_attention" if b % 2 else "full_attention" for b in range(32))
    window = ["model.sliding_window=128"]
    cfg = apply_overrides(_cfg("llama2-7b", devices, pp, tp), window + [f"model.layer_types={types}"])
    out = emulate_seqlen(cfg, LocalExecutor(cfg), 300)
    for key in ("token_latency_ms", "throughput_tok_s", "token_energy_mj", "avg_power_w"):
        assert _rel(out[key], out["closed_form"][key]) < TOL, key
    every = apply_overrides(_cfg("llama2-7b", devices, pp, tp), window)
    none = _cfg("llama2-7b", devices, pp, tp)
    every, none = token_figures_of(every, 300), token_figures_of(none, 300)
    assert every["token_latency_ms"] < out["closed_form"]["token_latency_ms"] < none["token_latency_ms"]
    # half the blocks as the model windowing every block charges them, half as the one windowing none
    assert out["closed_form"]["token_energy_mj"] == pytest.approx((every["token_energy_mj"] + none["token_energy_mj"]) / 2,
                                                                  rel=1e-12)


def token_figures_of(cfg: CentConfig, context: int) -> dict:
    from cent_serve.timing import SystemTimer
    return token_figures(SystemTimer.from_config(cfg), context).as_dict()


@pytest.mark.parametrize("devices, pp, tp", [(8, 2, 4), (32, 4, 8), (32, 1, 32)])
def test_without_multicast_the_devices_and_the_switch_send_once_a_receiver(devices, pp, tp):
    """fabric.multicast false: the stage-to-stage hops (the switch, one send to each device of the
    next stage), the hops inside a stage (to its tp - 1 other devices) and the block's exchanges
    (charged by the devices) agree with the closed form; one stage of tp 32, where every hop is
    inside the stage, to the last digits."""
    from cent_serve.config import apply_overrides

    cfg = apply_overrides(_cfg("llama2-7b", devices, pp, tp), ["fabric.multicast=false"])
    out = emulate_seqlen(cfg, LocalExecutor(cfg), 300)
    for key in ("token_latency_ms", "throughput_tok_s"):
        assert _rel(out[key], out["closed_form"][key]) < (1e-9 if pp == 1 else TOL), key
    with_multicast = emulate_seqlen(_cfg("llama2-7b", devices, pp, tp), LocalExecutor(_cfg("llama2-7b", devices, pp, tp)), 300)
    assert out["token_latency_ms"] > with_multicast["token_latency_ms"]


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (32, 4, 8)])
def test_an_8_bit_wire_format_moves_the_devices_and_the_closed_form_alike(devices, pp, tp):
    """fabric.activation_bytes=1: the switch's hops and the devices' exchanges (charged apart from the
    closed form's formulas) carry half the flits, and both agree; the token gets faster."""
    from cent_serve.config import apply_overrides

    cfg = apply_overrides(_cfg("llama2-7b", devices, pp, tp), ["fabric.activation_bytes=1"])
    out = emulate_seqlen(cfg, LocalExecutor(cfg), 300)
    for key in ("token_latency_ms", "throughput_tok_s", "token_energy_mj"):
        assert _rel(out[key], out["closed_form"][key]) < TOL, key
    bf16 = _cfg("llama2-7b", devices, pp, tp)
    assert out["token_latency_ms"] < emulate_seqlen(bf16, LocalExecutor(bf16), 300)["token_latency_ms"]


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (32, 4, 8)])
def test_an_8_bit_kv_cache_moves_the_devices_and_the_closed_form_alike(devices, pp, tp):
    """device.kv_bytes_per_element=1 beside bf16 weights: the devices' attention steps (their own
    per-context calls, apart from the closed form's table) charge half the MAC columns over K and V,
    and both agree as they do for bf16; the token gets faster and cheaper."""
    from cent_serve.config import apply_overrides

    cfg = apply_overrides(_cfg("llama2-7b", devices, pp, tp), ["device.kv_bytes_per_element=1"])
    out = emulate_seqlen(cfg, LocalExecutor(cfg), 2000)
    for key in ("token_latency_ms", "throughput_tok_s", "token_energy_mj", "avg_power_w"):
        assert _rel(out[key], out["closed_form"][key]) < TOL, key
    bf16 = _cfg("llama2-7b", devices, pp, tp)
    ref = emulate_seqlen(bf16, LocalExecutor(bf16), 2000)
    assert out["token_latency_ms"] < ref["token_latency_ms"] and out["token_energy_mj"] < ref["token_energy_mj"]


def test_context_is_exactly_the_closed_forms():
    """4096 sits on a tile boundary: one context more costs a visibly different amount."""
    cfg = _cfg("llama2-7b", 32, 32, 1)
    ex = LocalExecutor(cfg)
    assert _rel(token_figures(ex.timer, 4097).token_latency_ms,
                token_figures(ex.timer, 4096).token_latency_ms) > TOL
    out = emulate_seqlen(cfg, ex, 4096)
    assert _rel(out["token_latency_ms"], out["closed_form"]["token_latency_ms"]) < 1e-3


@pytest.mark.parametrize("prompt, decode, gap, devices", [
    (64, 64, 32, 32), (20, 12, 32, 32),  # the second: both phases short
    (20, 12, 32, 40),  # two replicas of 20 devices: the throughput of both
])
def test_phases_match_closed_form(prompt, decode, gap, devices):
    cfg = _cfg("llama2-13b", devices, 20, 1)
    out = emulate_phases(cfg, LocalExecutor(cfg), prompt=prompt, decode=decode, gap=gap)
    assert out["replicas"] == devices // 20
    for phase in ("prefill", "decoding", "end2end"):
        for key in ("latency_s", "throughput_tok_s", "token_latency_ms", "energy_per_token_mj"):
            assert _rel(out[phase][key], out[phase]["closed_form"][key]) < TOL, (phase, key)
        _check_terms(out[phase], "energy_per_token_mj", per_term_rel=False)
    assert out["simulated_s"] > out["end2end"]["latency_s"] * 0.99


def test_replicas_add_throughput_and_power_not_latency_or_energy_per_token():
    """40 devices hold two copies of 13B's 20-stage pipeline: the emulation runs one, and reports
    both (it reported one copy's throughput beside the closed form's two). Not exactly twice: the
    40 devices share the switch's lanes, so each link is slower (0.6% here)."""
    one, two = (emulate_phases(c, LocalExecutor(c), prompt=20, decode=12, gap=32)
                for c in (_cfg("llama2-13b", 20, 20, 1), _cfg("llama2-13b", 40, 20, 1)))
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for phase in ("prefill", "decoding", "end2end"):
        a, b = one[phase], two[phase]
        assert _rel(b["throughput_tok_s"], 2 * a["throughput_tok_s"]) < TOL and _rel(b["power_w"], 2 * a["power_w"]) < TOL
        assert _rel(b["latency_s"], a["latency_s"]) < TOL and _rel(b["energy_per_token_mj"], a["energy_per_token_mj"]) < TOL


def test_two_runs_are_bit_identical():
    cfg = _cfg("tiny", 8, 2, 4, "full")
    a = run_workload(cfg, LocalExecutor(cfg), 0, 12, energy_marks=(4,), prompt=6)
    b = run_workload(cfg, LocalExecutor(cfg), 0, 12, energy_marks=(4,), prompt=6)
    assert np.array_equal(a.done_s, b.done_s)
    assert a.energy_j_at == b.energy_j_at


@pytest.mark.parametrize("devices, pp, tp", [(16, 0, 1), (32, 80, 1), (128, 0, 1), (128, 16, 8)])
def test_llama2_70b_timing_only_scales_to_128_devices(devices, pp, tp):
    """16 devices hold 5 blocks each: their shared DMA and accelerator must not serialize the
    micro-batches (a former bug made this case 4x slower than the closed form)."""
    cfg = _cfg("llama2-70b", devices, pp, tp)
    ex = LocalExecutor(cfg)
    assert len(ex.workers) == devices or ex.timer.mapping.devices_used <= devices
    out = emulate_seqlen(cfg, ex, 2048)
    assert _rel(out["throughput_tok_s"], out["closed_form"]["throughput_tok_s"]) < TOL
    assert ex.timer.mapping.devices_used == out["devices_used"]


def test_cli_emulate_prints_the_closed_form_json_plus_wall_figures(capsys):
    args = ["simulate", "--model", "llama2-7b", "--devices", "8", "--pp", "2", "--tp", "4", "--json"]
    assert main(args + ["--prompt", "16", "--decode", "16", "--seqlen-gap", "8"]) == 0
    closed = json.loads(capsys.readouterr().out)
    assert main(args + ["--prompt", "16", "--decode", "16", "--seqlen-gap", "8", "--emulate", "--local"]) == 0
    emulated = json.loads(capsys.readouterr().out)
    # every closed-form figure, less the artifact convention's (the devices run the cent one)
    assert set(closed) - {"other_convention"} <= set(emulated)
    assert emulated["wall_s"] > 0 and emulated["sim_tokens_per_wall_s"] > 0
    for phase in ("prefill", "decoding", "end2end"):
        # every figure, the energy by term too: the devices' own counts, the closed form's under closed_form
        assert set(closed[phase]) <= set(emulated[phase]), phase
        assert emulated[phase]["closed_form"]["energy_breakdown_mj"] == closed[phase]["energy_breakdown_mj"]
        assert _rel(emulated[phase]["throughput_tok_s"], closed[phase]["throughput_tok_s"]) < TOL
    assert main(args + ["--seqlen", "64", "--emulate", "--local"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["seqlen"] == 64 and one["executor"] == "local"
    _check_terms(one, "token_energy_mj", per_term_rel=True)


def test_cli_text_names_the_largest_terms_of_the_closed_form_and_the_devices(capsys):
    """The phases' table (closed form) and the emulated one end with a line of end2end's largest terms
    and their shares of the token's energy."""
    args = ["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", "16", "--decode", "16",
            "--seqlen-gap", "8"]
    assert main(args + ["--json"]) == 0
    split = json.loads(capsys.readouterr().out)["end2end"]["energy_breakdown_mj"]
    top = max(split, key=split.get)
    share = f"{top} {100 * split[top] / sum(split.values()):.1f}%"
    for extra in ([], ["--emulate", "--local"]):
        assert main(args + extra) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("energy by term, end2end"))
        assert line.split(": ", 1)[1].startswith(share), (extra, line)


def test_cli_local_without_emulate_is_an_error(capsys):
    """The closed form of one mapping, of the sweep and of GPUs alike (the sweep's and the GPUs' ran,
    --local unread)."""
    for extra in ([], ["--sweep"], ["--hardware", "gpu:a100-80gb:1"]):
        assert main(["simulate", "--model", "llama2-7b", "--local", *extra]) == 2, extra
        assert "--local goes with --emulate (the closed form needs no executor)" in capsys.readouterr().err, extra


def test_cli_ray_address_without_emulate_is_an_error(capsys):
    """--ray-address joins a cluster for the emulation only: the closed forms ran with it unread."""
    for extra in ([], ["--sweep"], ["--hardware", "gpu:a100-80gb:1"]):
        assert main(["simulate", "--model", "llama2-7b", "--ray-address", "10.0.0.1:6379", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "--ray-address 10.0.0.1:6379 goes with --emulate" in err and len(err.strip().splitlines()) == 1, err


def _paper_mappings() -> list[tuple[str, int, int, int]]:
    """Every mapping the paper evaluates (`cent simulate --sweep`), and the issue's uneven ones."""
    from cent_serve.simulate_cli import sweep_mappings

    out = [("llama2-70b", 32, 32, 1), ("llama2-13b", 20, 12, 1), ("llama2-7b", 12, 12, 1)]
    for model, devices, blocks in (("llama2-7b", 8, 32), ("llama2-13b", 20, 40), ("llama2-70b", 32, 80)):
        out += [(model, devices, pp, tp) for pp, tp in sweep_mappings(devices, blocks)]
    return out


@pytest.mark.parametrize("model, devices, pp, tp", _paper_mappings())
def test_the_closed_form_is_the_emulated_pipeline_on_every_mapping(model, devices, pp, tp):
    """The closed form's default convention is the pipeline the devices run: an uneven split's
    slowest stage sets the pace (70B pp 32 on 32 devices: 16 stages of 3 blocks, 16 of 2)."""
    cfg = _cfg(model, devices, pp, tp)
    for seqlen in (128, 4096):
        out = emulate_seqlen(cfg, LocalExecutor(cfg), seqlen)
        for key in ("token_latency_ms", "throughput_tok_s"):
            assert _rel(out[key], out["closed_form"][key]) < TOL, (key, seqlen, out[key], out["closed_form"][key])


def test_the_artifacts_perfect_pipeline_is_the_other_convention():
    """Where a split is uneven the artifact's accounting (every stage N/pp blocks) is faster than
    the devices can run; where it is even the two agree; tp = 1 charges no exchange by default."""
    from cent_serve.timing import SystemTimer

    uneven = _cfg("llama2-70b", 32, 32, 1)
    cent, artifact = SystemTimer.from_config(uneven), SystemTimer.from_config(uneven, "artifact")
    a, b = token_figures(cent, 2048), token_figures(artifact, 2048)
    assert a.bottleneck and not b.bottleneck and a.token_latency_ms > 1.1 * b.token_latency_ms
    assert cent.collectives_s(1) == 0.0 < artifact.collectives_s(1)  # tp 1: no partner to exchange with
    even = _cfg("llama2-70b", 32, 80, 1)
    cent, artifact = SystemTimer.from_config(even), SystemTimer.from_config(even, "artifact")
    # even: only the embedding differs (a row lookup; the artifact's vocab x D GEMV)
    assert token_figures(artifact, 2048).token_latency_ms - token_figures(cent, 2048).token_latency_ms == \
        pytest.approx((artifact.embed_lookup_s - cent.embed_lookup_s) * 1e3)


@pytest.mark.parametrize("model, devices, pp, tp", [("llama2-7b", 8, 32, 1), ("llama3.1-8b", 8, 32, 1),
                                                    ("llama2-70b", 32, 80, 1), ("llama2-7b", 8, 2, 4),
                                                    ("llama2-7b", 16, 32, 1), ("qwen3-30b-a3b", 16, 0, 1)])
def test_an_lm_head_on_the_last_stage_s_channels_holds_them_in_the_devices_and_the_closed_form(model, devices, pp, tp):
    """parallel.lm_head: last_stage puts the LM head on the last stage's channel group, which its next
    blocks then wait for: the emulated devices and the closed form's stations agree (to 1e-4: a
    station without the hop to the head was 5e-4 to 2e-3 off, under the 1% the other mappings are
    held to), and in the pure pipeline the last station is its blocks, the hop and the head (by hand,
    7B on 8 devices at 4,096 tokens: 32 x (0.445 + 0.0003 + 0.118) ms = 18.0 ms a token, against
    14.5 with the head a unit of its own)."""
    from cent_serve.config import apply_overrides
    from cent_serve.timing import SystemTimer

    cfg = apply_overrides(_cfg(model, devices, pp, tp), ["parallel.lm_head=last_stage"])
    unit = _cfg(model, devices, pp, tp)
    for seqlen in (128, 4096):
        out = emulate_seqlen(cfg, LocalExecutor(cfg), seqlen)
        for key in ("token_latency_ms", "throughput_tok_s"):
            assert _rel(out[key], out["closed_form"][key]) < 1e-4, (key, seqlen, out[key], out["closed_form"][key])
        own = token_figures(SystemTimer.from_config(unit), seqlen)
        timer = SystemTimer.from_config(cfg)
        shared = token_figures(timer, seqlen)
        assert shared.token_energy_mj == own.token_energy_mj  # the same work, only where it waits
        if pp == 1 or tp > 1:  # a few stages of many blocks: the ring's latency sets the pace either way
            assert shared.token_latency_ms == own.token_latency_ms
            continue
        last = timer.stations_s(seqlen)[len(timer.mapping.stages) - 1]
        lanes = timer.mapping.lanes
        assert shared.token_latency_ms == pytest.approx(1e3 * lanes * last) and shared.bottleneck
        assert last == pytest.approx(SystemTimer.from_config(unit).stations_s(seqlen)[lanes - 1] + timer.local_hop_s(1)
                                     + timer.lm_head_s)
        assert shared.token_latency_ms > own.token_latency_ms
    if (model, devices, pp) == ("llama2-7b", 8, 32):
        assert (own.token_latency_ms, shared.token_latency_ms) == (pytest.approx(14.52, abs=0.01),
                                                                   pytest.approx(18.03, abs=0.01))


def test_parallel_lm_head_survives_the_flags_and_the_sweeps_that_set_a_mapping(tmp_path, capsys):
    """--devices / --pp / --tp and each mapping of simulate --sweep rebuilt the parallel section and
    dropped lm_head back to unit (review): a config file's last_stage ran as unit beside --devices."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: {name: llama2-7b}\nparallel: {num_devices: 8, lm_head: last_stage}\n")
    base = ["simulate", "--config", str(cfg_file), "--seqlen", "4096", "--json"]
    assert main(base) == 0
    alone = json.loads(capsys.readouterr().out)["token_latency_ms"]
    assert main(base + ["--devices", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["token_latency_ms"] == alone == pytest.approx(18.03, abs=0.01)
    sweep = ["simulate", "--model", "llama2-7b", "--devices", "8", "--sweep", "--json"]
    rows = {}
    for placement in ("unit", "last_stage"):
        assert main(sweep + ["--set", f"parallel.lm_head={placement}"]) == 0
        rows[placement] = json.loads(capsys.readouterr().out)["points"]
    assert rows["unit"] != rows["last_stage"]
