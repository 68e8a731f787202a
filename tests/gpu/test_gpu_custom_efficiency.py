"""A GPU kind of one's own's own efficiency constants (`gpu.custom.mem_efficiency`, `compute_efficiency`;
docs/gpu_model.md section 6): a step's time follows them, a share out of (0, 1] is refused naming the field,
the value and the fix, and the line on what the kind borrows names only what it still borrows."""
from __future__ import annotations

import json

import pytest

from cent_serve.bench.report import kind_notes
from cent_serve.cli import main
from cent_serve.config import build_config
from cent_serve.config.gpu import GpuKindConfig
from tests.test_gpu_kind import H200, custom_sets, on

SOURCE = "(set from the CENT artifact's A100 SXM4 measurements)"
HOST = "gpu.layer_overhead_s and gpu.allreduce_latency_s"
TAIL = "as given, not validated against any measurement (docs/gpu_model.md section 6)"


def test_a_memory_bound_step_follows_mem_efficiency_and_a_compute_bound_one_compute_efficiency():
    """Without the host's per-layer time a step is max(bytes / (HBM x mem_efficiency), FLOPs / (peak x
    compute_efficiency)) (docs/gpu_model.md section 2): one sequence's decode step reads far more than it
    computes, a 4,096-token prefill computes far more than it reads, so each scales as 1 / its constant
    alone, and the other constant leaves it as it was, bit for bit."""
    def timer(**own):
        return on(GpuKindConfig(**H200, **own), "h200", layer_overhead_s=0.0)

    borrowed, mem, compute = timer(), timer(mem_efficiency=0.8), timer(compute_efficiency=0.6)
    decode, prefill = ([1], [1000]), ([4096], [0])
    assert borrowed.step(0, *decode, 1).compute_s < borrowed.step(0, *decode, 1).memory_s / 10
    assert borrowed.step(0, *prefill, 1).memory_s < borrowed.step(0, *prefill, 1).compute_s / 10
    assert mem.step_s(0, *decode, 1) / borrowed.step_s(0, *decode, 1) == pytest.approx(0.955 / 0.8, rel=1e-12)
    assert compute.step_s(0, *decode, 1) == borrowed.step_s(0, *decode, 1)
    assert compute.step_s(0, *prefill, 1) / borrowed.step_s(0, *prefill, 1) == pytest.approx(0.526 / 0.6, rel=1e-12)
    assert mem.step_s(0, *prefill, 1) == borrowed.step_s(0, *prefill, 1)
    both = timer(mem_efficiency=0.8, compute_efficiency=0.6)
    assert (both.step_s(0, *decode, 1), both.step_s(0, *prefill, 1)) == (mem.step_s(0, *decode, 1),
                                                                        compute.step_s(0, *prefill, 1))


def test_batch_1_decode_step_by_hand_at_80_percent_of_hbm():
    """tests/test_gpu_kind.py's step by hand (docs/gpu_model.md section 6) with gpu.custom.mem_efficiency 0.8:
    the same 13,740,015,616 bytes over 4.8 TB/s x 0.8, plus 32 x 143 us of the host."""
    t = on(GpuKindConfig(**H200, mem_efficiency=0.8), "h200")
    want = 13_740_015_616 / (4.8e12 * 0.8) + 32 * 143e-6
    assert t.step_s(0, [1], [1000], logit_rows=1) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(8.154e-3, abs=1e-6)  # the figure docs/gpu_model.md section 6 gives


def test_cent_simulate_reads_them_from_set_items(capsys):
    """`cent simulate --hardware gpu:h200:1 --set gpu.custom.mem_efficiency=0.8`: one sequence's decoding
    (memory-bound) takes 0.955 / 0.8 of the borrowed constants' time, its 2,048-token prefill (compute-bound)
    is unchanged; compute_efficiency 0.6 the other way round (no host time: gpu.layer_overhead_s 0)."""
    def phases(*own: str) -> dict:
        sets = [*custom_sets(H200), "gpu.layer_overhead_s=0", *own]
        assert main(["simulate", "--model", "llama2-7b", "--numerics", "off", "--hardware", "gpu:h200:1",
                     "--prompt", "2048", "--decode", "8", "--batch", "1", "--json",
                     *sum((["--set", s] for s in sets), [])]) == 0
        out = json.loads(capsys.readouterr().out)
        return {p: out[p]["latency_s"] for p in ("prefill", "decoding")}

    borrowed = phases()
    mem, compute = phases("gpu.custom.mem_efficiency=0.8"), phases("gpu.custom.compute_efficiency=0.6")
    assert mem["decoding"] / borrowed["decoding"] == pytest.approx(0.955 / 0.8, rel=1e-12)
    assert mem["prefill"] == borrowed["prefill"]
    assert compute["prefill"] / borrowed["prefill"] == pytest.approx(0.526 / 0.6, rel=1e-12)
    assert compute["decoding"] == borrowed["decoding"]


HBM_FIX = "use a share in (0, 1] of the HBM bandwidth the kernels reach (0.8 for 80%), or 0 for the A100 SXM4's"
PEAK_FIX = "use a share in (0, 1] of the bf16 peak the kernels reach (0.8 for 80%), or 0 for the A100 SXM4's"


@pytest.mark.parametrize("own, message", [
    (dict(mem_efficiency=1.5), f"gpu.custom.mem_efficiency=1.5 is invalid: {HBM_FIX}"),
    (dict(mem_efficiency=80), f"gpu.custom.mem_efficiency=80.0 is invalid: {HBM_FIX}"),  # a percentage
    (dict(mem_efficiency=-0.5), f"gpu.custom.mem_efficiency=-0.5 is invalid: {HBM_FIX}"),
    (dict(compute_efficiency=1.01), f"gpu.custom.compute_efficiency=1.01 is invalid: {PEAK_FIX}"),
    (dict(compute_efficiency=-1), f"gpu.custom.compute_efficiency=-1.0 is invalid: {PEAK_FIX}"),
    (dict(compute_efficiency="nan"), f"gpu.custom.compute_efficiency=nan is invalid: {PEAK_FIX}"),
])
def test_a_share_out_of_range_is_refused_by_name(own, message):
    with pytest.raises(ValueError) as info:
        build_config("llama2-7b", overrides=custom_sets(dict(H200, **own)))
    assert str(info.value) == message


def test_a_share_of_one_is_taken():
    """(0, 1]: the whole peak is an assumption the model runs, not an error."""
    cfg = build_config("llama2-7b", hardware="gpu:h200:1",
                       overrides=custom_sets(dict(H200, mem_efficiency=1, compute_efficiency=1)))
    assert (cfg.gpu.spec.mem_efficiency, cfg.gpu.spec.compute_efficiency) == (1.0, 1.0)


POWER = ("; its serving power too is the A100 SXM4's share of its TDP, 293 / 400 of 700 W "
         "(gpu.custom.serving_power_w gives a measured draw)")


@pytest.mark.parametrize("own, note, info", [
    ({}, f"h200's efficiency constants are a100-80gb's {SOURCE}, and so are the host's {HOST}: h200 is a kind of "
         f"one's own (gpu.custom), its datasheet figures {TAIL}{POWER}",
     "efficiency 0.955 of HBM, 0.526 of the peak; a kind of one's own (gpu.custom): these and the host's times are "
     "a100-80gb's, not validated"),
    (dict(mem_efficiency=0.8), f"h200's compute efficiency, 0.526, is a100-80gb's {SOURCE}, and so are the host's "
                               f"{HOST}: h200 is a kind of one's own (gpu.custom), its datasheet figures and memory "
                               f"efficiency {TAIL}{POWER}",
     "efficiency 0.8 of HBM, 0.526 of the peak; a kind of one's own (gpu.custom): the peak's and the host's times are "
     "a100-80gb's, not validated"),
    (dict(compute_efficiency=0.6), f"h200's memory efficiency, 0.955, is a100-80gb's {SOURCE}, and so are the host's "
                                   f"{HOST}: h200 is a kind of one's own (gpu.custom), its datasheet figures and "
                                   f"compute efficiency {TAIL}{POWER}",
     "efficiency 0.955 of HBM, 0.6 of the peak; a kind of one's own (gpu.custom): the HBM's and the host's times are "
     "a100-80gb's, not validated"),
    (dict(mem_efficiency=0.8, compute_efficiency=0.6),
     f"h200's host times, {HOST}, are a100-80gb's {SOURCE}: h200 is a kind of one's own (gpu.custom), its datasheet "
     f"figures and efficiency constants {TAIL}{POWER}",
     "efficiency 0.8 of HBM, 0.6 of the peak; a kind of one's own (gpu.custom): these as given, the host's times "
     "a100-80gb's, not validated"),
    (dict(mem_efficiency=0.8, compute_efficiency=0.6, serving_power_w=600),
     f"h200's host times, {HOST}, are a100-80gb's {SOURCE}: h200 is a kind of one's own (gpu.custom), its datasheet "
     f"figures and efficiency constants {TAIL}",
     "efficiency 0.8 of HBM, 0.6 of the peak; a kind of one's own (gpu.custom): these as given, the host's times "
     "a100-80gb's, not validated"),
])
def test_the_note_names_only_what_is_still_borrowed(own, note, info, capsys, caplog):
    """The line every command logs and the bench commands give as a note (`borrowed_note`), and cent info's gpu
    line: an efficiency constant gpu.custom gives is no longer called a100-80gb's; the host's times, left at their
    default here, are (set, they are not: below)."""
    sets = custom_sets(dict(H200, **own))
    assert kind_notes(build_config("tiny", hardware="gpu:h200:1", overrides=sets)) == [note]
    caplog.clear()
    assert main(["info", "--model", "tiny", "--numerics", "off", "--hardware", "gpu:h200:1",
                 *sum((["--set", s] for s in sets), [])]) == 0
    assert info in capsys.readouterr().out and note in caplog.text


LAYER, ALLREDUCE = "gpu.layer_overhead_s=2e-05", "gpu.allreduce_latency_s=1e-05"  # a vLLM host's, say


@pytest.mark.parametrize("own, host, note, info", [
    ({}, [LAYER, ALLREDUCE],
     f"h200's efficiency constants are a100-80gb's {SOURCE}: h200 is a kind of one's own (gpu.custom), its datasheet "
     f"figures and host times {TAIL}{POWER}",
     "these are a100-80gb's, the host's times as given, not validated"),
    ({}, [LAYER],
     f"h200's efficiency constants are a100-80gb's {SOURCE}, and so is the host's gpu.allreduce_latency_s: h200 is a "
     f"kind of one's own (gpu.custom), its datasheet figures and gpu.layer_overhead_s {TAIL}{POWER}",
     "these and the host's gpu.allreduce_latency_s are a100-80gb's, not validated"),
    (dict(mem_efficiency=0.8), [ALLREDUCE],
     f"h200's compute efficiency, 0.526, is a100-80gb's {SOURCE}, and so is the host's gpu.layer_overhead_s: h200 is "
     f"a kind of one's own (gpu.custom), its datasheet figures, memory efficiency and gpu.allreduce_latency_s "
     f"{TAIL}{POWER}",
     "the peak's and the host's gpu.layer_overhead_s are a100-80gb's, not validated"),
    (dict(compute_efficiency=0.6), [LAYER, ALLREDUCE],
     f"h200's memory efficiency, 0.955, is a100-80gb's {SOURCE}: h200 is a kind of one's own (gpu.custom), its "
     f"datasheet figures, compute efficiency and host times {TAIL}{POWER}",
     "the HBM's is a100-80gb's, the host's times as given, not validated"),
    (dict(mem_efficiency=0.8, compute_efficiency=0.6), [LAYER],
     f"h200's host time, gpu.allreduce_latency_s, is a100-80gb's {SOURCE}: h200 is a kind of one's own (gpu.custom), "
     f"its datasheet figures, efficiency constants and gpu.layer_overhead_s {TAIL}{POWER}",
     "these as given, the host's gpu.allreduce_latency_s a100-80gb's, not validated"),
    (dict(mem_efficiency=0.8, compute_efficiency=0.6), [LAYER, ALLREDUCE],
     f"h200 borrows nothing of the A100 SXM4's apart from its serving power: h200 is a kind of one's own "
     f"(gpu.custom), its datasheet figures, efficiency constants and host times {TAIL}"
     f"{POWER.replace('power too is', 'power is')}",
     "these and the host's times as given, not validated"),
    (dict(mem_efficiency=0.8, compute_efficiency=0.6, serving_power_w=600), [LAYER, ALLREDUCE],
     f"h200 borrows nothing of the A100 SXM4's: h200 is a kind of one's own (gpu.custom), its datasheet figures, "
     f"efficiency constants and host times {TAIL}",
     "these and the host's times as given, not validated"),
], ids=["host-times-set", "layer-set", "mem-eff-allreduce-set", "compute-eff-host-times-set",
        "both-eff-layer-set", "all-set", "all-set-power-given"])
def test_a_host_time_set_is_not_called_borrowed(own, host, note, info, capsys, caplog):
    """`--set gpu.layer_overhead_s` / `gpu.allreduce_latency_s` (a vLLM host's times): the line every command logs,
    the bench commands' note and cent info's gpu line name only the host time still at its default, the A100
    SXM4's; a kind that borrows nothing says so, and still that it is not validated."""
    sets = custom_sets(dict(H200, **own)) + host
    assert kind_notes(build_config("tiny", hardware="gpu:h200:1", overrides=sets)) == [note]
    caplog.clear()
    assert main(["info", "--model", "tiny", "--numerics", "off", "--hardware", "gpu:h200:1",
                 *sum((["--set", s] for s in sets), [])]) == 0
    gpu_line, = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gpu ")]
    assert gpu_line.endswith(f"; a kind of one's own (gpu.custom): {info}") and note in caplog.text


def test_a_shipped_kind_s_line_is_the_same_with_the_host_s_times_set(capsys, caplog):
    """An H100's line names its efficiency constants alone, the host's times set or not (no measurement of an
    H100 to set them from either way): unchanged by the host times."""
    line = ("h100-80gb's efficiency constants are a100-80gb's (set from the CENT artifact's A100 SXM4 measurements): "
            "none of this kind to set them from (docs/gpu_model.md)")
    for host in ([], [LAYER, ALLREDUCE]):
        assert build_config("tiny", hardware="gpu:h100-80gb:1", overrides=host).gpu.borrowed_note == line
        caplog.clear()
        assert main(["info", "--model", "tiny", "--numerics", "off", "--hardware", "gpu:h100-80gb:1",
                     *sum((["--set", s] for s in host), [])]) == 0
        gpu_line, = [g for g in capsys.readouterr().out.splitlines() if g.startswith("gpu ")]
        assert gpu_line.endswith("of the peak; a100-80gb's") and line in caplog.text


@pytest.mark.parametrize("key", ["mem_efficiency", "compute_efficiency"])
def test_a_constant_without_a_name_is_refused_not_ignored(key):
    """An efficiency constant applies to a kind of one's own only: given for a shipped kind (no gpu.custom.name)
    it would change nothing, so it is refused naming it, as any gpu.custom figure set without a name is."""
    with pytest.raises(ValueError) as info:
        build_config("llama2-7b", hardware="gpu:h100-80gb:1", overrides=[f"gpu.custom.{key}=0.8"])
    assert str(info.value).startswith(f"gpu.custom.name='' is invalid: gpu.custom.{key} set without a name: ")
