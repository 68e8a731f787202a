"""Component check values of docs/hardware_model.md, mapping rules, capacity errors and the CLI."""
from __future__ import annotations

import json

import pytest

from cent_serve.cli import main
from cent_serve.config import DeviceConfig, FabricConfig, ModelConfig, ParallelConfig, model_preset
from cent_serve.timing import check_capacity, resolve_mapping
from cent_serve.timing.accelerator import accelerator_cycles
from cent_serve.timing.fabric import pipeline_block_s, port_model, tensor_block_s
from cent_serve.timing.pim import gemv_cycles

DEV, FAB = DeviceConfig(), FabricConfig()


def test_gemv_check_values():
    assert gemv_cycles(4096, 4096, 128, DEV) == 30298
    # docs/hardware_model.md quotes 82,267; its formula by hand gives 82,263.5 (10 full rows of 7,574.5
    # plus a 768-element row of 6,518.5). The 3.5 cycles (0.004%) are within any tolerance we use.
    assert gemv_cycles(11008, 4096, 128, DEV) == 10 * 7574.5 + 6518.5
    assert abs(gemv_cycles(11008, 4096, 128, DEV) / 82267 - 1) < 1e-4


def test_gemv_by_hand_for_a_partial_row():
    # Din = 1040: rows of 1024 and 16 elements (op 64 and 1); Dout 64 over 32 banks: c = 2, ng = 1
    expected = (2 * 64 + 54.5 + 2 * (103 + 128)) + (2 * 1 + 54.5 + 2 * (103 + 2))
    assert gemv_cycles(1040, 64, 32, DEV) == expected
    assert gemv_cycles(1040, 64, 32, DEV, af=True) == expected - 0 + 72.4 * 2  # ng = cdiv(2, 16) = 1 too


@pytest.mark.parametrize("model, devices, mode, tp, us", [
    ("llama2-7b", 8, "pipeline", 1, 0.322), ("llama2-70b", 32, "pipeline", 1, 1.461),
    ("llama2-7b", 8, "tensor", 8, 4.296), ("llama2-13b", 20, "tensor", 20, 9.406),
    ("llama2-70b", 32, "tensor", 32, 24.571)])
def test_cxl_per_block_figures(model, devices, mode, tp, us):
    m = model_preset(model)
    port = port_model(FAB, devices)
    s = (pipeline_block_s(m.hidden_size, port, FAB) if mode == "pipeline"
         else tensor_block_s(m.hidden_size, m.intermediate_size, tp, port, FAB))
    assert abs(s * 1e6 - us) / us < 0.002


@pytest.mark.parametrize("model, fields, tp", [
    ("qwen3-30b-a3b", {}, 8),  # a mixture of experts: H hd = 32 x 128 = 4096, D = 2048
    ("qwen3-8b", dict(hidden_size=2560, intermediate_size=9728), 4),  # Qwen3-4B's shape: 4096 beside D = 2560
])
def test_the_heads_exchange_moves_h_hd_values_not_d(model, fields, tp):
    """A tensor-parallel block's heads' outputs are H hd values (o_proj's input), D only where the
    two agree (every model the paper ran). Against the same model with a head_dim that makes H hd =
    D, the block's exchanges take one broadcast and one gather of H hd values instead of D, by hand
    from the transfer time t(f) = 180 ns + f x 256 B / (4 GiB/s x lanes): a broadcast of n values is
    t(ceil(2 n / 192)), a gather t(ceil(2 n / tp / 192) (tp - 1)) (section 6)."""
    from cent_serve.timing.token import SystemTimer

    def collectives(**more):
        m = model_preset(model, **fields, **more)
        dev = DeviceConfig()
        t = SystemTimer(m, resolve_mapping(m, ParallelConfig(32, 32 // tp, tp), dev), dev, FAB)
        return m, t.collectives_s(1)

    m, real = collectives()
    d, heads = m.hidden_size, m.num_heads * m.head_dim
    assert heads != d
    _, as_d = collectives(head_dim=d // m.num_heads)
    lanes = port_model(FAB, 32).lanes
    t = lambda flits: 180e-9 + flits * 256 / (4 * 2**30 * lanes)  # noqa: E731
    exchange = lambda n: t(-(-2 * n // 192)) + t(-(-2 * n // (tp * 192)) * (tp - 1))  # noqa: E731
    assert real - as_d == pytest.approx(exchange(heads) - exchange(d), rel=1e-9)
    assert real > as_d


def test_lanes_per_device():
    assert [port_model(FAB, n).lanes for n in (8, 20, 32)] == [18, 7, 4]
    with pytest.raises(ValueError, match="fabric.switch_lanes"):
        port_model(FAB, 145)


def test_accelerator_by_hand():
    m = model_preset("llama2-13b")  # 2 (66 D/8192 + 29) + 110 L H / 512 + 18.25 H + 0.375 D (1 + Hkv/H)
    assert accelerator_cycles(m, DEV, 128) == pytest.approx(2 * (41.25 + 29) + 1100 + 730 + 3840)


def test_rotary_turns_q_and_k_whose_width_is_h_hd():
    """The rotary's RISC-V cycles are per element of q and k, (H + Hkv) hd: the artifact's
    (1 + Hkv / H) D where H hd = D, not in Qwen3-30B-A3B (32 x 128 = 4096 beside D = 2048), whose
    q and k are 4096 + 512 values: 4608 x 3 / 8 cores = 1728 cycles, not 864."""
    from cent_serve.timing.accelerator import accelerator_parts
    m = model_preset("qwen3-30b-a3b")
    assert accelerator_parts(m, DEV, 128)["rotary"] == (32 + 4) * 128 * 3 / 8 == 1728
    llama = model_preset("llama2-13b")  # H hd = D: the artifact's term as it was
    assert accelerator_parts(llama, DEV, 128)["rotary"] == 0.375 * llama.hidden_size * (1 + 40 / 40)


def test_pipeline_mapping_70b_on_32():
    mp = resolve_mapping(model_preset("llama2-70b"), ParallelConfig(32, 80, 1), DEV)
    assert (mp.mode, mp.blocks_per_device, mp.channels_per_block, mp.devices_used, mp.lanes) == \
        ("pipeline", 3, 10, 27, 80)
    assert [s.device_ids[0] for s in mp.stages[:7]] == [0, 0, 0, 1, 1, 1, 2]
    assert [s.channel_group for s in mp.stages[:4]] == [0, 1, 2, 0]


def test_hybrid_mapping_spreads_uneven_blocks():
    mp = resolve_mapping(model_preset("llama2-13b"), ParallelConfig(20, 3, 4), DEV)
    assert [len(s.blocks) for s in mp.stages] == [14, 13, 13]
    assert mp.stages[1].device_ids == (4, 5, 6, 7) and mp.devices_used == 12 and mp.channels_per_block == 32


def test_mapping_for_any_llama_and_1_to_128_devices():
    m = ModelConfig(name="odd", hidden_size=3072, intermediate_size=8192, num_layers=26, num_heads=24,
                    num_kv_heads=8, vocab_size=50000, max_seq_len=8192)
    for n in (1, 2, 3, 7, 26, 64, 128):
        mp = resolve_mapping(m, ParallelConfig(n, 26, 1), DEV)
        assert mp.devices_used == min(n, 26) or mp.blocks_per_device > 1
        assert mp.channels_per_block * mp.blocks_per_device <= 32


def test_capacity_error_names_what_does_not_fit():
    m = model_preset("llama2-70b")
    mp = resolve_mapping(m, ParallelConfig(32, 80, 1), DEV)
    check_capacity(m, mp, DEV, 4096)  # the paper's workload fits
    with pytest.raises(ValueError) as err:
        check_capacity(m, mp, DEV, 4096, batch=2000)
    msg = str(err.value)
    assert "device 0" in msg and "largest context at batch 2000 is" in msg and "largest batch at context 4096" in msg
    # the reported largest batch really is the boundary
    largest = int(msg.rsplit("is ", 1)[1])
    check_capacity(m, mp, DEV, 4096, batch=largest)
    with pytest.raises(ValueError):
        check_capacity(m, mp, DEV, 4096, batch=largest + 1)


def test_cli_seqlen_json(capsys):
    assert main(["simulate", "--model", "llama2-70b", "--devices", "32", "--pp", "80", "--tp", "1",
                 "--seqlen", "4096", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("token_latency_ms", "throughput_tok_s", "block_pim_ms", "block_cxl_ms", "block_acc_ms",
                "embedding_ms", "token_energy_mj", "power_w", "devices_used", "channels_per_block"):
        assert isinstance(out[key], (int, float))
    assert set(out["breakdown_cycles"]) == {"norm", "qkvo", "rotary", "kv", "score", "softmax", "sv", "ffn", "act"}
    assert (out["devices_used"], out["channels_per_block"]) == (27, 10)
    assert abs(out["block_cxl_ms"] - 1.461e-3) < 1e-5
    # token = N (PIM + CXL + ACC) + embedding + 0.15 ms, recomputed from the printed parts
    assert out["token_latency_ms"] == pytest.approx(
        80 * (out["block_pim_ms"] + out["block_cxl_ms"] + out["block_acc_ms"]) + out["embedding_ms"] + 0.15)


def test_cli_phases_and_sweep(capsys):
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--pp", "32", "--prompt", "512",
                 "--decode", "3584", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"prefill", "decoding", "end2end", "convention", "other_convention", "workload", "config"}
    assert out["convention"] == "cent" and "energy: the artifact leaves the embedding and LM head out" in \
        out["other_convention"]["why"]
    # published: llama2-7b pp32 end2end 3006 tok/s (cent_phases_7b_13b.csv)
    assert abs(out["end2end"]["throughput_tok_s"] / 3006.2 - 1) < 0.02
    assert main(["simulate", "--sweep", "--model", "llama2-7b", "--devices", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["points"]
    assert [(r["pp"], r["tp"]) for r in rows] == [(32, 1), (1, 8), (2, 4), (4, 2), (8, 1)]
    # pp 8 x tp 1 on whole devices is mode "tensor" (how blocks use channels), a pipeline to a reader
    assert [(r["mode"], r["parallelism"]) for r in rows] == [
        ("pipeline", "pipeline"), ("tensor", "tensor"), ("tensor", "hybrid"), ("tensor", "hybrid"),
        ("tensor", "pipeline")]
    assert all(r["throughput_ratio"] > 0 for r in rows)
    assert main(["simulate", "--sweep", "--model", "llama2-7b", "--devices", "8"]) == 0
    assert "GPU baseline" in capsys.readouterr().out
    # an uneven split (32 blocks over 12 stages): both conventions, and why they differ
    assert main(["simulate", "--model", "llama2-7b", "--devices", "12", "--pp", "12", "--prompt", "512",
                 "--decode", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    other = out["other_convention"]
    assert other["convention"] == "artifact" and "8 of the 12 stages hold 3 blocks" in other["why"]
    assert abs(other["throughput_tok_s"] / out["end2end"]["throughput_tok_s"] - 1) > 0.01  # either way: see why
    assert main(["simulate", "--model", "llama2-7b", "--prompt", "512"]) == 2
    assert "--prompt and --decode go together" in capsys.readouterr().err


def test_a_sweep_runs_each_mapping_once_when_the_devices_are_the_blocks(capsys):
    """Llama2-7B (32 blocks) on 32 devices: the pure pipeline, pp 32 x tp 1, is also the mapping of one
    device a stage, and `cent simulate --sweep` printed it twice (first and last), `cent bench paper`
    replayed the trace on it twice."""
    from cent_serve.simulate_cli import sweep_mappings

    assert sweep_mappings(32, 32) == [(32, 1), (1, 32), (2, 16), (4, 8), (8, 4), (16, 2)]
    assert sweep_mappings(8, 32) == [(32, 1), (1, 8), (2, 4), (4, 2), (8, 1)]  # pp 8 x tp 1: another mapping
    assert main(["simulate", "--sweep", "--model", "llama2-7b", "--devices", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["points"]
    assert len({(r["pp"], r["tp"]) for r in rows}) == len(rows) == 6


@pytest.mark.parametrize("given, says", [
    (dict(prompt=512), "--prompt and --decode go together: give both"),
    (dict(decode=512), "--prompt and --decode go together: give both"),
    (dict(prompt=512, decode=512, seqlen=1024), "--seqlen and --prompt/--decode are two forms"),
])
def test_a_workload_of_neither_form_is_refused_alike_in_closed_form_and_emulated(capsys, given, says):
    """The closed form's command, its sweep, its GPUs and `paper.emulate` (`--emulate`, a script) refuse
    it with one message, in one line. The sweep and the GPUs filled a missing --decode with 3584 (or
    --prompt with 512) and ran."""
    from cent_serve.config import build_config
    from cent_serve.paper import emulate

    flags = [x for k, v in given.items() for x in (f"--{k}", str(v))]
    for form in ([], ["--emulate", "--local"], ["--sweep"], ["--hardware", "gpu:a100-80gb:4"]):
        assert main(["simulate", "--model", "tiny", *flags, *form]) == 2, form
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, (form, err)
    with pytest.raises(ValueError, match=says):
        emulate(build_config("tiny", numerics="off"), **given)


def test_sweep_json_carries_its_config_and_workload_as_one_mapping_s_does(tmp_path, capsys):
    """`cent simulate --sweep --json` printed a bare list of rows, without the config or the workload
    that `cent simulate --json` carries: it is an object now, and a point reruns from it alone."""
    argv = ["simulate", "--sweep", "--model", "llama2-7b", "--devices", "8", "--prompt", "256", "--decode", "768",
            "--set", "device.clock_hz=1e9", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"convention", "points", "workload", "config"}
    assert out["workload"] == {"prompt": 256, "decode": 768, "seqlen_gap": 128} and out["convention"] == "cent"
    assert out["config"]["device"]["clock_hz"] == 1e9 and out["config"]["parallel"]["num_devices"] == 8
    point = out["points"][2]
    config = dict(out["config"], parallel=dict(out["config"]["parallel"], pp=point["pp"], tp=point["tp"]))
    (tmp_path / "point.json").write_text(json.dumps(config))
    assert main(["simulate", "--config", str(tmp_path / "point.json"), "--prompt", "256", "--decode", "768",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["end2end"]
    assert again["throughput_tok_s"] == point["throughput_tok_s"] and point["pp"] * point["tp"] == 8


def test_sweep_table_splits_each_mappings_energy_by_term_as_its_json_does(capsys):
    """`cent sweep`'s CSV splits a point's energy per token by term (`energy_<term>_mj`) and `cent simulate
    --sweep --json` each point's (`energy_breakdown_mj`), but `cent simulate --sweep`'s table had no split:
    a line a mapping now gives its largest terms' shares (`shares_text`, as the one-mapping table's line),
    the shares of the JSON's mJ, which add up to the point's energy per token."""
    from cent_serve.timing.energy import shares_text

    argv = ["simulate", "--sweep", "--model", "llama2-7b", "--devices", "8"]
    assert main(argv + ["--json"]) == 0
    points = json.loads(capsys.readouterr().out)["points"]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    at = table.index("energy by term, end2end (--json: every term in mJ a token, each point's energy_breakdown_mj):")
    lines = table[at + 1:at + 1 + len(points)]
    for r, line in zip(points, lines):
        assert line.split()[:4] == ["pp", str(r["pp"]), "tp", str(r["tp"])], line
        assert line.endswith("  " + shares_text(r["energy_breakdown_mj"])), line
        assert sum(r["energy_breakdown_mj"].values()) == pytest.approx(r["energy_per_token_mj"], rel=1e-9)
    assert "pim 51.3%, activate 30.0%" in lines[0]  # pp 32: the PIM commands, then the rows they open


def test_sweep_refuses_the_one_token_form(capsys):
    """`cent simulate --sweep --seqlen N` ran the paper's 512 + 3584 and left --seqlen unread."""
    assert main(["simulate", "--model", "tiny", "--sweep", "--seqlen", "1024"]) == 2
    assert "--seqlen is the one-token form; --sweep runs the paper's phases" in capsys.readouterr().err


def test_simulate_a_hugging_face_config(tmp_path, capsys):
    from cent_serve.model.hf_config_writer import hf_config_dict
    m = ModelConfig(name="hf", hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                    num_kv_heads=4, vocab_size=32000, max_seq_len=2048)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(m)))
    assert main(["simulate", "--model", str(tmp_path), "--devices", "4", "--seqlen", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # 22 blocks on 4 devices: 6 per device (cpb 5), 4 devices used
    assert (out["pp"], out["blocks_per_device"], out["channels_per_block"], out["devices_used"]) == (22, 6, 5, 4)
    assert main(["simulate", "--model", str(tmp_path), "--devices", "4", "--seqlen", "4096"]) == 2
    assert "max_seq_len=2048" in capsys.readouterr().err


@pytest.mark.parametrize("args, numbers", [
    # Qwen3-8B on 8 devices: the LM-head unit paces the cent convention by a wide margin
    (["--model", "qwen3-8b", "--devices", "8"], None),
    # 70B as 3 stages of tp 8: the slowest stage beats the trip round the ring by ~0.1%
    (["--model", "llama2-70b", "--devices", "32", "--pp", "3", "--tp", "8"], ("5.048 ms", "15.14 ms", "15.12 ms")),
])
def test_the_bottleneck_sentence_is_true_as_printed(capsys, args, numbers):
    """`cent simulate` names the station that sets the cent convention's pace with figures that show
    it: the queries x the station's time, printed longer than the trip round the ring (at 3 figures
    the 70B case read "15.1 ms ... longer than ... (15.1 ms)")."""
    import re

    from cent_serve.cli import main

    assert main(["simulate", *args, "--prompt", "512", "--decode", "3584"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"is the bottleneck at \d+ tokens: (\d+) queries x ([\d.]+) ms = ([\d.]+) ms between a query's "
                  r"tokens, longer than its trip round the pipeline \(([\d.]+) ms\)", out)
    assert m, out
    batch, station, slow, trip = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    assert slow > trip and slow == pytest.approx(batch * station, rel=1e-3)
    if numbers:
        assert all(n in out for n in numbers)


def test_cli_seqlen_text_names_the_lm_head_apart(capsys):
    """The LM head, a bottleneck on models of large vocabularies, is its own row (one
    `embedding_ms` row of 0.739 ms read as a slow embedding lookup beside the LM-head sentence)."""
    assert main(["simulate", "--model", "qwen3-8b", "--devices", "8", "--seqlen", "4096"]) == 0
    rows = dict(line.split() for line in capsys.readouterr().out.splitlines()
                if line.startswith("  ") and len(line.split()) == 2)
    assert float(rows["lm_head_ms"]) > 1000 * float(rows["embed_lookup_ms"]) > 0 and "embedding_ms" not in rows


@pytest.mark.parametrize("pp, tp, word", [(8, 1, "pipeline"), (2, 4, "hybrid"), (1, 8, "tensor"), (0, 1, "pipeline")])
def test_a_mapping_is_described_with_the_word_the_bench_plots_use(pp, tp, word):
    """`cent simulate` and `cent bench paper` call pp 8 x tp 1 the same: a pipeline (the mapping's
    `mode` is `tensor` there: how its blocks use channels, not what it is to a reader)."""
    from cent_serve.config import DeviceConfig, ParallelConfig, model_preset
    from cent_serve.timing.mapping import resolve_mapping

    mp = resolve_mapping(model_preset("llama2-7b"), ParallelConfig(8, pp, tp), DeviceConfig())
    assert mp.describe().startswith(f"{word}: ")


def test_one_device_is_not_written_as_devices():
    from cent_serve.config import DeviceConfig, ParallelConfig, model_preset
    from cent_serve.timing.mapping import resolve_mapping

    text = resolve_mapping(model_preset("tiny"), ParallelConfig(1, 8, 1), DeviceConfig()).describe()
    assert text.endswith("1 device used") and "8 blocks/device" in text


def test_simulate_says_idle_devices_narrow_the_switch_ports(capsys):
    """Devices no replica uses still take their share of the switch's 144 lanes: the header says so,
    with the lanes the timing charges and the device count that gives the working ones more, and
    that count is indeed faster; nothing is said when every device works."""
    from cent_serve.config import build_config
    from cent_serve.timing.fabric import port_model

    def run(devices: int) -> tuple[str, float]:
        assert main(["simulate", "--model", "llama2-70b", "--devices", str(devices), "--pp", "4", "--tp", "8"]) == 0
        out = capsys.readouterr().out
        return out.splitlines()[0], float(out.split("throughput_tok_s")[1].split()[0])

    head, slow = run(49)
    lanes = port_model(build_config("llama2-70b", devices=49, pp=4, tp=8).fabric, 49).lanes
    assert lanes == 2 and head.endswith(
        "; the switch's 144 lanes are shared by all 49 devices, 17 of them idle: 2 lanes a device (4 with --devices 32)")
    head, fast = run(32)
    assert "idle" not in head and fast > slow * 1.1
    assert "idle" not in run(64)[0]  # two replicas: none idle


def test_the_bottleneck_station_is_named(capsys):
    """Where a station, not the ring, sets the pace, the figures name it (a large vocabulary's LM-head
    unit; an uneven split's stage of the most blocks) and its time x the queries is the token's."""
    from cent_serve.config import build_config
    from cent_serve.timing.pipeline import token_figures
    from cent_serve.timing.token import SystemTimer

    assert main(["simulate", "--model", "qwen3-8b", "--devices", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bottleneck"] and out["bottleneck_station"] == "the LM-head unit"
    assert out["token_latency_ms"] == pytest.approx(out["batch"] * out["lm_head_ms"])
    assert main(["simulate", "--model", "qwen3-8b", "--devices", "8"]) == 0
    assert "  bottleneck          the LM-head unit: it sets the pace" in capsys.readouterr().out
    timer = SystemTimer.from_config(build_config("llama2-70b", devices=32, pp=32, tp=1))
    f = token_figures(timer, 2048)
    assert f.bottleneck_station == "stage 0 (3 blocks)"  # 80 blocks over 32 stages: 16 of 3, 16 of 2
    assert f.token_latency_ms == pytest.approx(1e3 * f.batch * timer.stations_s(2048)[0])
    even = token_figures(SystemTimer.from_config(build_config("llama2-70b", devices=32, pp=80, tp=1)), 2048)
    assert not even.bottleneck and even.bottleneck_station is None


def test_the_pace_reads_the_stations_once(monkeypatch):
    """Naming the station that sets the pace costs no second pass over the stations: `token_figures`
    and `cent simulate`'s sentence on the other convention each read `stations_s` once."""
    from cent_serve.config import build_config
    from cent_serve.simulate_cli import _bottleneck
    from cent_serve.timing.pipeline import token_figures
    from cent_serve.timing.token import SystemTimer

    calls = []
    real = SystemTimer.stations_s
    monkeypatch.setattr(SystemTimer, "stations_s", lambda self, context: calls.append(context) or real(self, context))
    timer = SystemTimer.from_config(build_config("qwen3-8b", devices=8))
    f = token_figures(timer, 4096)
    assert f.bottleneck_station == "the LM-head unit" and calls == [4096]
    calls.clear()
    assert "the LM-head unit is the bottleneck at 4096 tokens" in _bottleneck(timer, 4096, f.batch)
    assert calls == [4096]


def test_gemma_geglu_scaled_embeddings_and_offset_norms_are_charged_as_a_llama_of_its_sizes():
    """GELU-tanh is looked up in the banks as SiLU is (the AF GEMV's table holds any function), the
    sqrt(D) embedding scale rides the DMA's row read, and 1 + w norms are norms: gemma-7b's block and
    token cost what a Llama of the same sizes costs (docs/hardware_model.md section 4)."""
    import dataclasses

    from cent_serve.timing.pim import BlockGeometry, block_pim_breakdown, embed_lookup_cycles, lm_head_cycles

    gemma = model_preset("gemma-7b")
    llama = dataclasses.replace(gemma, model_type="llama", hidden_act="silu", scale_embeddings=False, norm_offset=0.0)
    g = BlockGeometry(cpb=8, tb=1, tp=4)
    for context in (1, 1000, 4097):
        assert block_pim_breakdown(gemma, g, DEV, context) == block_pim_breakdown(llama, g, DEV, context)
    assert (embed_lookup_cycles(gemma, DEV), lm_head_cycles(gemma, g, DEV)) == \
        (embed_lookup_cycles(llama, DEV), lm_head_cycles(llama, g, DEV))


def test_a_gemma2_block_by_hand():
    """gemma-2-9b (D 3584, H 16) on 2 channels a block: its four RMSNorms are each a square-and-reduce
    over TB/2 = 16 lanes (nb 224, nbb 16) and a scale over TB/4 = 8 (ew 448, ewb 8), 850 fixed:
    4 [(2 cdiv(224, 16) 16 + 3 cdiv(448, 16) 8) dma + 850] = 4 (1120 dma + 850). On the accelerator its
    four norms cost twice the two, and soft-capping adds to softmax one exp pass (32 units x 1 buffer
    cycle + 11 exp + 1 write = 44) and one add pass (32 x 2 + 1 + 1 = 66) per L H / (16 lanes x 32
    units) vectors: at L = 1024, 32 x 110 = 3,520 cycles. Nothing else of the block moves."""
    import dataclasses

    from cent_serve.timing.accelerator import accelerator_parts
    from cent_serve.timing.pim import BlockGeometry, block_pim_breakdown, norm_cycles

    m = model_preset("gemma-2-9b")
    g = BlockGeometry(cpb=2, tb=1, tp=1)
    assert norm_cycles(m, g, DEV) == 4 * (1120 * DEV.dma_line_cycles + 850)
    plain = dataclasses.replace(m, sandwich_norms=False, attn_logit_softcapping=0.0)
    assert norm_cycles(plain, g, DEV) == 2 * (1120 * DEV.dma_line_cycles + 850)
    ours, theirs = block_pim_breakdown(m, g, DEV, 1024), block_pim_breakdown(plain, g, DEV, 1024)
    assert dataclasses.replace(ours, norm=0.0) == dataclasses.replace(theirs, norm=0.0)
    acc, acc_plain = accelerator_parts(m, DEV, 1024), accelerator_parts(plain, DEV, 1024)
    assert acc["norm"] == 2 * acc_plain["norm"]
    assert acc["softmax"] - acc_plain["softmax"] == 1024 * 16 / (16 * 32) * (44 + 66) == 3520
    assert (acc["rotary"], acc["qk_norm"]) == (acc_plain["rotary"], acc_plain["qk_norm"])


def test_a_gemma3_block_is_gemma2_s_with_qwen3_s_q_k_norms_and_its_rope_bases_cost_nothing():
    """gemma-3-4b (H 8, Hkv 4, hd 256): its q/k norms are charged on the accelerator as Qwen 3's, over
    (H + Hkv) hd = 3,072 values and 12 heads' rsqrt (12 x 256 / 16 lanes / 16 / 32 units x 66 + 12 x 26 / 8
    cores = 63.75 cycles), its four norms twice the two, and its sliding
    blocks' own rope base moves no cycle anywhere (a rotation costs what it costs whatever its angles):
    the block is a Llama block's but for those, and a soft-cap it does not have."""
    import dataclasses

    from cent_serve.timing.accelerator import accelerator_parts
    from cent_serve.timing.pim import BlockGeometry, block_pim_breakdown

    m = model_preset("gemma-3-4b")
    g = BlockGeometry(cpb=2, tb=1, tp=1)
    qwen = dataclasses.replace(m, model_type="qwen3", hidden_act="silu", scale_embeddings=False, norm_offset=0.0,
                               sandwich_norms=False, query_pre_attn_scalar=0, rope_local_theta=0.0)
    ours, theirs = accelerator_parts(m, DEV, 1024), accelerator_parts(qwen, DEV, 1024)
    assert ours["qk_norm"] == theirs["qk_norm"] > 0 and ours["norm"] == 2 * theirs["norm"]
    assert (ours["softmax"], ours["rotary"]) == (theirs["softmax"], theirs["rotary"])
    units, lanes, buf = DEV.num_channels, DEV.acc_simd_lanes, DEV.acc_buffer_cycles
    add_pass = units * 2 * buf + 1 + buf  # two reads, add, write
    assert ours["qk_norm"] == 12 * 256 / lanes / DEV.burst_elements / units * add_pass \
        + 12 * DEV.acc_norm_riscv_cycles / DEV.acc_riscv_cores
    for context in (512, 4096):
        a, b = block_pim_breakdown(m, g, DEV, context), block_pim_breakdown(qwen, g, DEV, context)
        assert dataclasses.replace(a, norm=0.0) == dataclasses.replace(b, norm=0.0)
        assert block_pim_breakdown(dataclasses.replace(m, rope_local_theta=0.0), g, DEV, context) == a
    assert accelerator_parts(dataclasses.replace(m, rope_local_theta=0.0), DEV, 1024) == ours


def test_a_weight_shard_just_over_the_device_says_by_how_much():
    """Qwen2-57B-A14B on 8 devices: devices 0 and 6 hold 4 blocks and the embedding (or the LM head),
    17,180,385,280 bytes, 516,096 over the 16 GiB device; both sizes print as 16.00 GiB, which read as if
    the shard fitted. The message adds the excess when the two print alike, and only then."""
    m = ModelConfig(name="q", model_type="qwen2_moe", hidden_size=3584, intermediate_size=18944, num_layers=28,
                    num_heads=28, num_kv_heads=4, vocab_size=151936, max_seq_len=4096, attention_bias=True,
                    num_experts=64, num_experts_per_tok=8, moe_intermediate_size=2560,
                    shared_expert_intermediate_size=20480)
    mp = resolve_mapping(m, ParallelConfig(8), DEV)
    with pytest.raises(ValueError) as err:
        check_capacity(m, mp, DEV, 4096)
    assert str(err.value) == "device 0: its weight shard alone needs 16.00 GiB of the device's 16.00 GiB (0.492 MiB " \
        "too much)"
    with pytest.raises(ValueError) as err:  # sizes that print apart say nothing more
        check_capacity(model_preset("llama2-70b"), resolve_mapping(model_preset("llama2-70b"), ParallelConfig(8), DEV), DEV, 4096)
    assert str(err.value).endswith("of the device's 16.00 GiB"), str(err.value)
