"""A GPU kind of one's own (`gpu.custom`, docs/gpu_model.md section 6): its figures reach the timing model
as a shipped kind's do, what it borrows from the A100 SXM4 is said by every command that runs it, and a
wrong figure is refused naming the field, the value and the fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cent_serve.cli import main
from cent_serve.config import CentConfig, GpuConfig, build_config, model_preset
from cent_serve.config.gpu import GpuKindConfig
from cent_serve.gpu.kinds import A100_COMPUTE_EFFICIENCY, A100_MEM_EFFICIENCY, GPU_KINDS
from cent_serve.gpu.timing import GpuTimer

ROOT = Path(__file__).resolve().parent.parent

H200 = dict(name="h200", hbm_bytes_per_s=4.8e12, peak_flops=989.5e12, memory_bytes=141e9, link_bytes_per_s=450e9,
            link="NVLink 4", board_power_w=700.0)
"""docs/examples/h200-compare.yaml's H200 SXM (docs/gpu_model.md section 6 names the sources)."""


def custom_sets(figures: dict) -> list[str]:
    """`--set gpu.custom.F=V` items of `figures`."""
    return [f"gpu.custom.{k}={v}" for k, v in figures.items()]


def on(kind: GpuKindConfig | None, name: str, count: int = 1, model: str = "llama2-7b", **gpu) -> GpuTimer:
    custom = kind or GpuKindConfig()
    return GpuTimer(CentConfig(model=model_preset(model), numerics="off",
                               gpu=GpuConfig(kind=name, count=count, custom=custom, **gpu)))


def test_a_custom_kind_with_a_shipped_kinds_figures_times_as_it_does():
    """h100-80gb described as one's own: every figure of a static batch and of a tensor-parallel step is
    the shipped kind's, bit for bit (the same efficiency constants, power share and batching)."""
    h = GPU_KINDS["h100-80gb"]
    twin = GpuKindConfig(name="h100-twin", hbm_bytes_per_s=h.hbm_bytes_per_s, peak_flops=h.peak_flops,
                         memory_bytes=h.memory_bytes, link_bytes_per_s=h.link_bytes_per_s, link=h.link,
                         board_power_w=h.board_power_w)
    for model, count in (("llama2-7b", 1), ("llama2-70b", 4)):
        shipped, own = on(None, "h100-80gb", count, model), on(twin, "h100-twin", count, model)
        assert own.static_batch(8, 512, 64) == shipped.static_batch(8, 512, 64)
        assert own.step_s(0, [1] * 8, [900] * 8, 8) == shipped.step_s(0, [1] * 8, [900] * 8, 8)
        assert own.kv_tokens() == shipped.kv_tokens() and own.power_w == shipped.power_w
    assert (twin.kind().max_num_seqs, twin.kind().max_num_batched_tokens) == (h.max_num_seqs, h.max_num_batched_tokens)
    assert not twin.kind().calibrated and twin.kind().tco_per_gpu is None


def test_batch_1_decode_step_by_hand():
    """Llama2-7B, one sequence, one new token on 1,000 cached, on one H200 (section 6's figures), from
    docs/gpu_model.md section 2: the bytes of the 32 blocks, the LM head and the KV over HBM x
    mem_efficiency, plus 32 layers of host overhead; the FLOPs' time is below the bytes'."""
    t = on(GpuKindConfig(**H200), "h200")
    D, F, V, c = 4096, 11008, 32000, 1000
    block = 4 * D * D + 3 * D * F + 2 * D  # q, k, v, o (32 KV heads: no GQA), SwiGLU, two norms
    kv_token_layer = 2 * D * 2  # K and V of a token in a layer, bf16
    weights = 32 * block * 2 + V * D * 2  # the blocks and the LM head (the embedding is looked up)
    kv = 32 * ((c + 1) * kv_token_layer + kv_token_layer)  # read the cache with the new token, write it
    memory_s = (weights + kv) / (4.8e12 * A100_MEM_EFFICIENCY)
    want = memory_s + 32 * 143e-6
    assert t.step_s(0, [1], [c], logit_rows=1) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(7.573e-3, abs=1e-6)  # the figure docs/gpu_model.md section 6 gives
    flops = 32 * (2 * block + 4 * D * (c + 1)) + 2 * V * D
    assert flops / (989.5e12 * A100_COMPUTE_EFFICIENCY) < memory_s
    # energy: the board at the A100 SXM4's share of its TDP, or the serving power given
    assert t.step_energy_j(1.0) == pytest.approx(700 * 293 / 400)
    assert on(GpuKindConfig(**H200, serving_power_w=600.0), "h200").step_energy_j(1.0) == pytest.approx(600.0)


def test_tensor_parallel_2_decode_step_by_hand_crosses_the_custom_link():
    """The same step on two such H200s (tp 2), from docs/gpu_model.md section 2: each GPU reads half the
    weights, the LM head and the KV (32 KV heads split over tp), and a layer's two ring all-reduces each take
    gpu.allreduce_latency_s + 2 (tp-1)/tp x the token's activations (D bf16 values) over gpu.custom's link,
    one direction; a slower link (PCIe 5.0 x16, 64 GB/s) changes only that term."""
    D, F, V, c, tp = 4096, 11008, 32000, 1000, 2
    block = 4 * D * D + 3 * D * F + 2 * D
    kv_token_layer = 2 * D * 2
    per_gpu = (32 * block * 2 + V * D * 2 + 32 * ((c + 1) * kv_token_layer + kv_token_layer)) / tp
    memory_s = per_gpu / (4.8e12 * A100_MEM_EFFICIENCY)
    for link in (450e9, 64e9):
        allreduces = 32 * 2 * (30e-6 + 2 * (tp - 1) / tp * (D * 2) / link)
        t = on(GpuKindConfig(**dict(H200, link_bytes_per_s=link)), "h200", count=tp)
        assert t.step_s(0, [1], [c], logit_rows=1) == pytest.approx(memory_s + 32 * 143e-6 + allreduces, rel=1e-12)


@pytest.mark.parametrize("name, memory, batch", [
    ("h200", 141e9, (1024, 8192)),      # 70 GiB and more, not an A100: vLLM's larger defaults
    ("l40s", 48e9, (256, 2048)),        # under 70 GiB
    ("a100-80gb-mine", 80e9, (256, 2048)),  # vLLM's name check: an A100 keeps the smaller ones
    ("A100-Mine", 80e9, (256, 2048)),   # vLLM lowers the device's name before it looks for "a100"
    ("gpu-72gb", 72e9, (256, 2048)),    # 67 GiB: vLLM's line is 70 GiB, not 70 GB
    ("gpu-76gb", 76e9, (1024, 8192)),   # 70.8 GiB
])
def test_batching_defaults_follow_vllms_rule(name, memory, batch):
    g = GpuConfig(kind=name, count=1, custom=GpuKindConfig(**dict(H200, name=name, memory_bytes=memory)))
    assert (g.num_seqs, g.num_batched_tokens) == batch


@pytest.mark.parametrize("sets, message", [
    (["gpu.custom.name=h200"], "gpu.custom.hbm_bytes_per_s=0.0 is invalid: h200 needs it (every figure of a kind "
                               "of one's own is required): give it in bytes a second: 4.8 TB/s is 4.8e12"),
    (custom_sets(dict(H200, hbm_bytes_per_s=4.8)), "gpu.custom.hbm_bytes_per_s=4.8 is invalid: give h200's figure in "
                                                   "bytes a second: 4.8 TB/s is 4.8e12"),
    (custom_sets(dict(H200, peak_flops=1979)), "gpu.custom.peak_flops=1979.0 is invalid: give h200's figure in FLOP/s"),
    (custom_sets(dict(H200, link="")), "gpu.custom.link='' is invalid: name the link"),
    (custom_sets(dict(H200, serving_power_w=800)), "gpu.custom.serving_power_w=800.0 is invalid: use at most "
                                                   "gpu.custom.board_power_w=700"),
    (custom_sets(dict(H200, board_power_w=-1)), "gpu.custom.board_power_w=-1.0 is invalid: use a finite number >= 0"),
    (custom_sets(dict(H200, name="h100-80gb")), "gpu.custom.name='h100-80gb' is invalid: h100-80gb is a shipped kind"),
    (custom_sets(dict(H200, name="h200:sxm")), "gpu.custom.name='h200:sxm' is invalid: use letters, digits"),
    (["gpu.custom.hbm_bytes_per_s=4.8e12"], "gpu.custom.name='' is invalid: gpu.custom.hbm_bytes_per_s set without "
                                            "a name: name the GPU they describe"),
])
def test_a_wrong_figure_is_refused_by_name(sets, message):
    with pytest.raises(ValueError) as info:
        build_config("llama2-7b", overrides=sets)
    assert str(info.value).startswith(message), str(info.value)


def test_hardware_names_the_custom_kind_set_after_it():
    """`--hardware gpu:h200:2` with the kind described by --set items after it, or by a config file."""
    cfg = build_config("llama2-7b", hardware="gpu:h200:2", overrides=custom_sets(H200))
    assert (cfg.gpu.kind, cfg.gpu.count, cfg.hardware, cfg.gpu.is_custom) == ("h200", 2, "gpu:h200:2", True)
    assert cfg.gpu.spec.hbm_bytes_per_s == 4.8e12
    with pytest.raises(ValueError, match=r"no GPU kind 'h201' \(gpu.custom.name is 'h200'\): use 'cent' or "
                                         r"gpu:KIND:N with KIND one of a100-80gb, .*described in gpu.custom"):
        build_config("llama2-7b", hardware="gpu:h201:2", overrides=custom_sets(H200))
    with pytest.raises(ValueError, match="gpu.kind='h201' is invalid: use one of a100-80gb"):
        build_config("llama2-7b", overrides=custom_sets(H200) + ["gpu.kind=h201"])
    # a --set kind other than the custom one --hardware names is the contradiction it is with a shipped kind
    with pytest.raises(ValueError, match=r"gpu.kind='a100-80gb' is invalid with --hardware gpu:h200:2, which sets"):
        build_config("llama2-7b", hardware="gpu:h200:2", overrides=custom_sets(H200) + ["gpu.kind=a100-80gb"])
    # a shipped kind run with a custom one described beside it is the shipped kind, said as such
    shipped = build_config("llama2-7b", hardware="gpu:h100-80gb:1", overrides=custom_sets(H200))
    assert not shipped.gpu.is_custom and shipped.gpu.spec == GPU_KINDS["h100-80gb"]
    from cent_serve.bench.report import kind_notes
    assert kind_notes(shipped) == []
    # the last --set of the name is the one the config has, and so the one --hardware may name
    renamed = build_config("llama2-7b", hardware="gpu:h201:1", overrides=custom_sets(H200) + ["gpu.custom.name=h201"])
    assert renamed.gpu.is_custom and renamed.gpu.custom.name == "h201"


def test_hardware_read_as_the_first_set_items_keeps_what_a_set_after_it_means(tmp_path):
    """--hardware is applied as the first --set items (so a --set after it may describe the kind): a --set
    contradicting it is still refused, one agreeing with it still taken, and only the whole config is checked,
    so a --set may now correct a config file's field that the --hardware alone makes wrong (it was refused:
    the file's tp 4 checked against --hardware's 2 GPUs before the --set was read)."""
    with pytest.raises(ValueError, match=r"gpu.kind='h100-80gb' is invalid with --hardware gpu:a100-80gb:4"):
        build_config("tiny", hardware="gpu:a100-80gb:4", overrides=["gpu.kind=h100-80gb"])
    with pytest.raises(ValueError, match=r"gpu.count=2 is invalid with --hardware gpu:a100-80gb:4"):
        build_config("tiny", hardware="gpu:a100-80gb:4", overrides=["gpu.count=2"])
    with pytest.raises(ValueError, match=r"gpu.kind='h200' is invalid with --hardware gpu:a100-80gb:4"):
        build_config("tiny", hardware="gpu:a100-80gb:4", overrides=[*custom_sets(H200), "gpu.kind=h200"])
    assert build_config("tiny", hardware="gpu:a100-80gb:4", overrides=["gpu.kind=a100-80gb"]).hardware == \
        "gpu:a100-80gb:4"
    path = tmp_path / "tp4.yaml"
    path.write_text("gpu:\n  kind: h100-80gb\n  count: 4\n  tp: 4\n")
    cfg = build_config("tiny", config=path, hardware="gpu:a100-80gb:2", overrides=["gpu.tp=2"])
    assert (cfg.hardware, cfg.gpu.tp) == ("gpu:a100-80gb:2", 2)
    with pytest.raises(ValueError, match=r"gpu.tp=4 is invalid: tp x pp = 4 must divide gpu.count=2"):
        build_config("tiny", config=path, hardware="gpu:a100-80gb:2")
    assert build_config("tiny", config=path, hardware="cent").hardware == "cent"


def test_the_borrowed_power_share_is_said_where_the_borrowing_is(capsys):
    """Without gpu.custom.serving_power_w a kind of one's own draws the A100 SXM4's 293 / 400 of its TDP: its
    energy figures rest on it, so the line every command logs (and the bench commands' note) and cent info's
    gpu line say so; with a measured draw they do not."""
    from cent_serve.bench.report import kind_notes

    share = "its serving power too is the A100 SXM4's share of its TDP, 293 / 400 of 700 W"
    borrowed = build_config("tiny", hardware="gpu:h200:1", overrides=custom_sets(H200))
    measured = build_config("tiny", hardware="gpu:h200:1", overrides=custom_sets(dict(H200, serving_power_w=600)))
    assert share in kind_notes(borrowed)[0] and share not in kind_notes(measured)[0]
    smaller = build_config("tiny", hardware="gpu:h200:1", overrides=custom_sets(dict(H200, board_power_w=600)))
    assert "293 / 400 of 600 W" in kind_notes(smaller)[0]
    assert main(["info", "--model", "tiny", "--numerics", "off", "--hardware", "gpu:h200:1", *sum(
        (["--set", item] for item in custom_sets(H200)), [])]) == 0
    assert "513 W serving (293 / 400 of the TDP, the A100 SXM4's share)" in capsys.readouterr().out
    assert main(["info", "--model", "tiny", "--numerics", "off", "--hardware", "gpu:h200:1", *sum(
        (["--set", item] for item in custom_sets(dict(H200, serving_power_w=600))), [])]) == 0
    out = capsys.readouterr().out
    assert "600 W serving;" in out and "293 / 400" not in out


def test_a_number_for_a_name_in_a_config_file_is_told_to_be_quoted(tmp_path):
    """`name: 4090` (an RTX 4090 described as one's own) is read by YAML as a number: the refusal says to quote it."""
    path = tmp_path / "rtx.yaml"
    path.write_text("gpu:\n  custom:\n    name: 4090\n")
    with pytest.raises(ValueError, match=r"gpu.custom.name=4090 is invalid: expected a string: YAML reads an unquoted "
                                         r"4090 as a number, so quote it \(name: \"4090\"\)"):
        build_config("tiny", config=path)


EXAMPLE = ROOT / "docs" / "examples" / "h200-compare.yaml"
"""The H200 docs/gpu_model.md section 6 gives."""


def test_the_docs_h200_is_the_one_these_tests_run():
    cfg = build_config(config=EXAMPLE, hardware="gpu:h200-141gb:1")
    assert cfg.gpu.custom == GpuKindConfig(**dict(H200, name="h200-141gb"))


@pytest.fixture
def h200_yaml(tmp_path) -> str:
    """The example's GPU alone (its model and CENT devices are the paper's 70B system's)."""
    import yaml

    path = tmp_path / "h200.yaml"
    path.write_text(yaml.safe_dump(dict(gpu=yaml.safe_load(EXAMPLE.read_text())["gpu"])))
    return str(path)


def test_commands_run_it_and_say_what_it_borrows(h200_yaml, tmp_path, capsys, caplog):
    """cent info shows the kind's figures, cent simulate, bench run, compare and sweep run it, each logging
    the line on what it borrows, which the bench commands also give as a note of their results."""
    borrowed = ("h200-141gb's efficiency constants are a100-80gb's (set from the CENT artifact's A100 SXM4 "
                "measurements), and so are the host's gpu.layer_overhead_s and gpu.allreduce_latency_s: h200-141gb "
                "is a kind of one's own (gpu.custom)")
    common = ["--model", "tiny", "--config", h200_yaml, "--numerics", "off"]
    assert main(["info", *common, "--hardware", "gpu:h200-141gb:2"]) == 0
    out = capsys.readouterr().out
    assert ("gpu          h200-141gb: 4.8 TB/s HBM, 990 TFLOP/s bf16, 141 GB, NVLink 4 450 GB/s a direction, 700 W; "
            "513 W serving (293 / 400 of the TDP, the A100 SXM4's share); efficiency 0.955 of HBM, 0.526 of the peak; a kind "
            "of one's own") in out
    assert "hardware     2 x h200-141gb: pp 1 x tp 2" in out
    caplog.clear()
    assert main(["simulate", *common, "--hardware", "gpu:h200-141gb:1", "--prompt", "16", "--decode", "4"]) == 0
    assert "on 1 x h200-141gb" in capsys.readouterr().out and borrowed in caplog.text
    caplog.clear()
    bench = ["--num-requests", "2", "--no-plots"]
    assert main(["bench", "run", *common, *bench, "--hardware", "gpu:h200-141gb:1", "--out", str(tmp_path / "r")]) == 0
    assert f"note: {borrowed}" in capsys.readouterr().out and borrowed in caplog.text
    assert json.loads((tmp_path / "r" / "config.json").read_text())["gpu"]["custom"]["name"] == "h200-141gb"
    caplog.clear()
    assert main(["bench", "compare", *common, *bench, "--gpu", "h200-141gb:1", "--out", str(tmp_path / "c")]) == 0
    notes = json.loads((tmp_path / "c" / "compare.json").read_text())["notes"]
    assert [n for n in notes if n.startswith(borrowed)] and borrowed in caplog.text
    assert f"note: {borrowed}" in capsys.readouterr().out
    assert main(["bench", "sweep", *common, *bench, "--rates", "1", "--hardware", "gpu:h200-141gb:1",
                 "--out", str(tmp_path / "s")]) == 0
    assert f"note: {borrowed}" in capsys.readouterr().out
    assert main(["bench", "compare", *common, *bench, "--gpu", "h201:1", "--out", str(tmp_path / "d")]) == 2
    assert ("--gpu 'h201:1' is invalid: no GPU kind 'h201' (gpu.custom.name is 'h200-141gb'): use KIND:N"
            in capsys.readouterr().err)
