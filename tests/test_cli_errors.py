"""A user's mistakes through the real `cent` entry point: a non-zero exit, one line on stderr naming
what is wrong and the fix, no traceback; and what cannot run is refused before anything starts."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.in_process import cent_in_process

REPO = Path(__file__).resolve().parents[1]
REFUSE_WITHIN_S = 30.0
"""A refusal comes before Ray or the model start: measured 2-4 s (mostly Python's imports) on a
loaded 2-core machine; the issue's bound, about 10x that."""


def _cent(*args: str, env: dict | None = None, stdout=subprocess.PIPE) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cent_serve.cli", *args], cwd=REPO, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))
    return proc, time.monotonic() - t0


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_config_file(tmp_path):
    """Through the real entry point; the other refusals of a config file run in this process."""
    proc, _ = _cent("info", "--config", str(tmp_path / "nope.yaml"))
    _one_line_error(proc, "nope.yaml", "cannot be read")


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [llama2-7b\nparallel:\n  num_devices: 8\n")
    proc, _ = _cent("simulate", "--config", str(bad))
    _one_line_error(proc, "not valid YAML", "line")


def test_a_section_given_as_a_string(tmp_path, capfd, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: llama2-7b\n")
    proc = cent_in_process("info", "--config", str(bad), capfd=capfd, caplog=caplog)
    _one_line_error(proc, "model='llama2-7b'", "model: {name: llama2-7b}")


def test_a_field_of_the_wrong_type(tmp_path, capfd, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel:\n  num_devices: eight\n")
    proc = cent_in_process("info", "--config", str(bad), capfd=capfd, caplog=caplog)
    _one_line_error(proc, "parallel.num_devices", "integer")


def test_output_closed_early_by_a_pipe():
    """`cent simulate ... | head`: the reader left on purpose; silent, as Unix tools are (no
    BrokenPipeError traceback, no message under the lines `head` printed), exit 141 (SIGPIPE's)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc, _ = _cent("simulate", "--sweep", "--model", "llama2-7b", "--devices", "8", "--json", stdout=w)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr.strip() == "", proc.stderr


def test_a_ray_cluster_that_is_gone():
    """An address (flag or RAY_ADDRESS) where no cluster answers: refused at once, with the fix. Each in a
    process of its own: in a test's process the session's Ray may be up already, and a command joins the
    Ray its process has (RAY_ADDRESS then unread)."""
    dead = f"127.0.0.1:{_free_port()}"
    proc, wall = _cent("serve", "--ray-address", dead, "--port", "0")
    # the address may come from a --config file's server.ray_address (docs/examples/cluster.yaml's auto): the
    # fix names every place it is set, not only the flag (first-hour audit)
    _one_line_error(proc, dead, "ray start --head", "(--ray-address, server.ray_address in a --config file, "
                    "RAY_ADDRESS) to start a fresh local Ray")
    assert wall < REFUSE_WITHIN_S, wall
    assert f"server.ray_address='{dead}'" in proc.stderr
    proc, _ = _cent("simulate", "--model", "llama2-7b", "--seqlen", "256", "--emulate", env={"RAY_ADDRESS": dead})
    _one_line_error(proc, dead)
    proc, _ = _cent("serve", "--port", "0", env={"RAY_ADDRESS": dead})  # named as set: it said server.ray_address
    _one_line_error(proc, f"RAY_ADDRESS='{dead}': no Ray cluster could be joined")
    assert "server.ray_address=" not in proc.stderr, proc.stderr
    proc, _ = _cent("serve", "--ray-address", "not-an-address", "--port", "0")  # was "nothing answers ...: invalid
    _one_line_error(proc, "not-an-address is not HOST:PORT, e.g. 10.0.0.1:6379")  # literal for int()"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["bench", "run", "--num-requests", "2"],
                                     ["simulate", "--seqlen", "4096"], ["info"]])
def test_a_model_the_devices_cannot_hold_is_refused_everywhere_alike(command):
    proc, wall = _cent(*command, "--model", "llama2-70b", "--devices", "8", "--numerics", "off")
    # the fewest that hold one sequence of the context (serve, bench, info), or simulate's 80 queries
    # (simulate says so: its 16 read as the weights' count beside info's 9)
    fewest = "16 devices (the fewest that hold it with a 4,096-token query a stage)" if command[0] == "simulate" \
        else "9 devices (the fewest that hold it)"
    line = _one_line_error(proc, "llama2-70b on 8 devices", "does not fit", "16.43 GiB",
                           f"use {fewest}, or larger devices: ")
    assert line.split("error: ", 1)[1].startswith("llama2-70b on 8 devices")  # the same message
    assert wall < REFUSE_WITHIN_S, wall


def test_full_numerics_beyond_the_machines_memory_is_refused():
    proc, wall = _cent("serve", "--model", "llama2-70b", "--devices", "32", "--numerics", "full", "--port", "0")
    _one_line_error(proc, "full numerics of llama2-70b", "GiB available", "--numerics off")
    assert wall < REFUSE_WITHIN_S, wall


def test_a_port_in_use_is_found_before_anything_starts():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc, wall = _cent("serve", "--port", str(port))
    _one_line_error(proc, f"server.port={port} is in use", "--port")
    assert wall < REFUSE_WITHIN_S, wall


def test_version():
    proc, _ = _cent("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("cent-serve ")


@pytest.mark.parametrize("args, needles", [
    (["--set", "device.clock_hz=inf"], ["device.clock_hz=inf", "finite"]),
    (["--set", "device.gemv_af_group_size=0"], ["device.gemv_af_group_size=0", "positive integer"]),
    (["--hardware", "gpu:a100-80gb:4", "--set", "gpu.tco_per_gpu=0"], ["gpu.tco_per_gpu=0", "leave it unset"]),
    (["--hardware", "gpu:a100-80gb:4", "--set", "gpu.count=0"], ["gpu.count=0", "--hardware"]),
    # gpu.tp is left at 0 (count / pp): the error names the field set, not gpu.tp=0
    (["--hardware", "gpu:a100-80gb:4", "--set", "gpu.pp=3"], ["gpu.pp=3 is invalid", "divide gpu.count=4"]),
    (["--hardware", "gpu:a100-80gb:4", "--set", "gpu.tp=3"], ["gpu.tp=3 is invalid", "divide gpu.count=4"]),
    (["--set", "device=5"], ["device='5'", "section"]),
    (["--set", "device.kv_bytes_per_element=3"], ["device.kv_bytes_per_element=3 is invalid", "leave it unset"]),
    (["--set", "parallel.lm_head=own"], ["parallel.lm_head='own' is invalid", "unit, last_stage"]),
    (["--set", "device.energy=3"], ["device.energy='3'", "section"]),
    (["--prompt", "0", "--decode", "10"], ["--prompt 0", "at least 1"]),
    # past the context: how to raise it, as --prompt + --decode past it say
    (["--seqlen", "9000"], ["--seqlen 9000 is invalid", "raise the context with --set model.max_seq_len=9000"]),
    (["--seqlen", "9000", "--emulate", "--local"], ["--seqlen 9000", "--set model.max_seq_len=9000"]),
    (["--prompt", "100", "--decode", "0", "--seqlen-gap", "0"], ["--seqlen-gap 0", "positive"]),
    # the one-token form times one context: a spacing of contexts to average went unread
    (["--seqlen", "1024", "--seqlen-gap", "64"], ["--seqlen-gap 64", "--prompt and --decode", "drop --seqlen-gap"]),
    (["--seqlen-gap", "64"], ["--seqlen-gap 64", "--prompt and --decode", "drop --seqlen-gap"]),
    (["--seqlen-gap", "64", "--emulate", "--local"], ["--seqlen-gap 64", "--prompt and --decode"]),
    (["--hardware", "gpu:a100-80gb:4", "--prompt", "100", "--decode", "-1"], ["--decode -1", "0 or more"]),
    # --sweep runs the paper's every mapping: a --pp / --tp was dropped without a word
    (["--pp", "1", "--tp", "8", "--sweep"], ["--pp 1 --tp 8 is one mapping", "drop --pp and --tp"]),
    (["--set", "parallel.tp=8", "--set", "parallel.pp=1", "--sweep"],
     ["parallel.pp=1 parallel.tp=8 is one mapping", "the config file"]),
])
def test_bad_values_end_in_one_line_not_a_traceback(args, needles, capfd, caplog):
    # in this process: the real entry point's refusals of `cent simulate` are test_malformed_yaml's,
    # test_output_closed_early_by_a_pipe's and test_a_model_the_devices_cannot_hold_is_refused_everywhere_alike's
    proc = cent_in_process("simulate", "--model", "llama2-7b", *args, capfd=capfd, caplog=caplog)
    _one_line_error(proc, *needles)


def test_a_yaml_section_given_a_value(tmp_path, capfd, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpu: 5\n")
    proc = cent_in_process("info", "--config", str(bad), capfd=capfd, caplog=caplog)
    _one_line_error(proc, "bad.yaml", "gpu=5", "section")


@pytest.mark.parametrize("edit, needles", [
    (lambda hf: hf.pop("intermediate_size"), ["intermediate_size is missing"]),
    (lambda hf: hf.pop("num_attention_heads"), ["num_attention_heads is missing"]),
    (lambda hf: hf.update(hidden_size="4096"), ["hidden_size='4096' is invalid", "without quotes"]),
    (None, ["not valid JSON", "line 1"]),
])
def test_a_hand_written_config_json_names_the_file_and_the_key(tmp_path, edit, needles, capfd, caplog):
    hf = json.loads((REPO / "tests" / "data" / "hf_tiny_llama" / "config.json").read_text())
    if edit:
        edit(hf)
    (tmp_path / "config.json").write_text(json.dumps(hf) if edit else "{bad json")
    # in this process: the real entry point's refusal of a `cent info` config is test_a_missing_config_file's
    proc = cent_in_process("info", "--model", str(tmp_path), capfd=capfd, caplog=caplog)
    _one_line_error(proc, str(tmp_path / "config.json"), *needles)


def test_decode_0_is_the_prompt_alone(capsys):
    """--decode 0 is allowed everywhere (the messages say decode >= 0): prefill and end2end, no decoding."""
    from cent_serve.cli import main

    for args in (["--model", "llama2-7b", "--prompt", "512"], ["--hardware", "gpu:a100-80gb:4", "--prompt", "100"]):
        assert main(["simulate", *args, "--decode", "0", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert "decoding" not in out and out["prefill"]["throughput_tok_s"] == out["end2end"]["throughput_tok_s"] > 0


def test_a_phase_shorter_than_the_spacing_is_taken_at_its_middle(capsys):
    """A prompt or an output shorter than --seqlen-gap: the phase no multiple of the gap falls in is
    timed at its middle context length, not left out of the table (it was) or refused (with decode 0)."""
    from cent_serve.cli import main
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing import SystemTimer
    from cent_serve.timing.pipeline import phase_seqlens, token_figures

    assert phase_seqlens(100, 200) == {"prefill": [50], "decoding": [128, 256], "end2end": [50, 128, 256]}
    assert phase_seqlens(200, 50) == {"prefill": [128], "decoding": [225], "end2end": [128, 225]}
    assert phase_seqlens(100, 1) == {"prefill": [50], "decoding": [101], "end2end": [50, 101]}
    assert phase_seqlens(100, 0) == {"prefill": [50], "end2end": [50]}
    paper = phase_seqlens(512, 3584)  # the paper's, unchanged
    assert paper["prefill"] == [128, 256, 384, 512] and paper["end2end"] == list(range(128, 4097, 128))
    t = SystemTimer.from_config(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1),
                                           numerics="off"))
    for prompt, decode, phase, L in ((100, 200, "prefill", 50), (200, 50, "decoding", 225)):
        assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--prompt", str(prompt),
                     "--decode", str(decode), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out[phase]["throughput_tok_s"] == pytest.approx(token_figures(t, L).throughput_tok_s, rel=1e-12)


def test_simulate_json_names_its_workload_and_config_and_reruns_from_them(tmp_path, capsys):
    """--json had the figures only: not the --set that moved them, nor the model, mapping or
    workload. Its `config` (overrides applied) given back as --config gives the same figures."""
    from cent_serve.cli import main

    args = ["simulate", "--model", "llama2-7b", "--devices", "16", "--pp", "8", "--prompt", "64", "--decode", "64",
            "--json"]
    assert main(args + ["--set", "device.clock_hz=4e9", "--set", "fabric.lane_gbps=16"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["workload"] == {"prompt": 64, "decode": 64, "seqlen_gap": 128, "batch": 8}
    assert first["config"]["device"]["clock_hz"] == 4e9 and first["config"]["parallel"]["pp"] == 8
    (tmp_path / "run.json").write_text(json.dumps(first["config"]))  # as `jq .config` would
    assert main(["simulate", "--config", str(tmp_path / "run.json"), "--prompt", "64", "--decode", "64", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["end2end"] == first["end2end"] and again["config"] == first["config"]
    assert main(["simulate", "--model", "llama2-7b", "--devices", "8", "--seqlen", "300",
                 "--set", "device.clock_hz=4e9"]) == 0
    assert "given: --set device.clock_hz=4e9" in capsys.readouterr().out.splitlines()[1]


@pytest.mark.parametrize("prompt, decode, gap", [(512, 3584, 5000), (200, 50, 128), (100, 200, 128), (500, 3596, 128),
                                                  (512, 3584, 128)])
def test_end_to_end_is_the_phases_by_their_token_counts(prompt, decode, gap):
    """End2end's latency is the phases' added and its figures their token-weighted means: with a gap
    past both phases it read 38.8 s beside phases of 3.9 + 40.6 s (the two middle lengths at equal
    weight); 500 + 3596 at gap 128 weighed 3 prefill lengths against 29 (3/32, not 500/4096). The
    paper's workload at its gap already was (4 + 28 lengths, 128 tokens each)."""
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing import SystemTimer
    from cent_serve.timing.pipeline import phase_figures

    t = SystemTimer.from_config(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1),
                                           numerics="off"))
    f = phase_figures(t, prompt, decode, gap)
    p, d, e = f["prefill"], f["decoding"], f["end2end"]
    assert e["latency_s"] == pytest.approx(p["latency_s"] + d["latency_s"], rel=1e-12)
    for key in ("throughput_tok_s", "energy_per_token_mj", "avg_power_w"):
        assert e[key] == pytest.approx((prompt * p[key] + decode * d[key]) / (prompt + decode), rel=1e-12), key


@pytest.mark.parametrize("model, devices, prompt, decode, gap", [
    ("llama2-70b", 32, 512, 3584, 128), ("llama2-7b", 8, 512, 1024, 256), ("llama2-13b", 20, 128, 128, 64)])
def test_the_papers_workloads_keep_the_artifacts_plain_mean_float_for_float(model, devices, prompt, decode, gap):
    """Where the gap divides both phases, end2end is the artifact's mean over every L, summed in its
    order: the token weighting must not move a published workload's figures by a bit."""
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing import SystemTimer
    from cent_serve.timing.pipeline import phase_figures, token_figures

    t = SystemTimer.from_config(CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, 0, 1),
                                           numerics="off"))
    rows = [token_figures(t, L) for L in range(gap, prompt + decode + 1, gap)]
    e = phase_figures(t, prompt, decode, gap)["end2end"]
    for key, attr in (("throughput_tok_s", "throughput_tok_s"), ("energy_per_token_mj", "token_energy_mj"),
                      ("token_latency_ms", "token_latency_ms"), ("power_w", "power_w")):
        assert e[key] == sum(getattr(r, attr) for r in rows) / len(rows), key
    assert e["latency_s"] == sum(r.token_latency_ms for r in rows) / len(rows) * (prompt + decode) / 1000


@pytest.mark.parametrize("args, says", [
    (["bench", "run", "--bogus-flag"], "cent bench run: error: unrecognized arguments: --bogus-flag (see cent bench run"),
    (["serve", "--clock", "warp"], "cent serve: error: argument --clock: invalid choice: 'warp'"),
    (["simulate", "--devices", "x"], "cent simulate: error: argument --devices: invalid int value: 'x' (see cent"),
    # simulate has no trace: the line says where one replays
    (["simulate", "--trace", "my.csv"], "cent simulate: error: unrecognized arguments: --trace my.csv (see cent "
     "simulate --help); cent simulate is the closed form of one workload; to replay a trace use cent bench run "
     "--trace FILE (or cent bench compare for CENT vs GPUs)"),
    (["simulate", "--trace=my.csv"], "to replay a trace use cent bench run --trace FILE"),
    # "what if the clock were 1, 2, 4 GHz?" asked of simulate or compare: the line names the command that varies
    (["simulate", "--sweep", "--vary", "device.clock_hz=1e9,2e9"], "cent simulate: error: unrecognized arguments: "
     "--vary device.clock_hz=1e9,2e9 (see cent simulate --help); cent simulate evaluates one config (--sweep: "
     "its mappings); cent sweep --vary FIELD=V1,V2,... evaluates every value"),
    (["bench", "compare", "--vary=device.clock_hz=1e9,2e9"], "cent bench compare replays one CENT config: run it "
     "once a value with --set FIELD=VALUE, or cent sweep --vary FIELD=V1,V2,... --trace FILE"),
    (["bench", "run", "--vary", "devices=8,16"], "cent bench run replays one config: cent sweep --vary "
     "FIELD=V1,V2,... --trace FILE replays it at every value"),
])
def test_argument_errors_are_one_line_naming_the_subcommand(args, says, capsys):
    from cent_serve.cli import main
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors exit from inside the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize("command", [["serve"], ["bench", "run"], ["info"]])
def test_hardware_contradicted_by_set_is_refused_by_every_command(command):
    proc, wall = _cent(*command, "--hardware", "gpu:a100-80gb:4", "--set", "gpu.count=0")
    _one_line_error(proc, "gpu.count=0 is invalid with --hardware gpu:a100-80gb:4")
    assert wall < REFUSE_WITHIN_S, wall


def test_a_host_this_machine_does_not_have_is_refused_before_anything_starts_even_on_port_0():
    proc, wall = _cent("serve", "--local", "--port", "0", "--host", "192.0.2.1")  # TEST-NET-1: never local
    _one_line_error(proc, "server.host='192.0.2.1', server.port=0 cannot be bound", "address of this machine")
    assert wall < REFUSE_WITHIN_S, wall


def test_a_cluster_that_will_not_let_us_join_says_why(capfd):
    """Ray's core logs a refused join to file descriptor 2 once a second: held back, and read for the
    reason (a token-authenticated cluster); what a join logs when it succeeds is shown as it was."""
    from cent_serve.executor.ray_cluster import _stderr_held, join_refused

    with _stderr_held() as held:
        os.write(2, b"gcs_client.cc:210: Unauthenticated: RPC error: InvalidAuthToken: token is missing\n")
        held.drop()
    assert "InvalidAuthToken" in held.text and capfd.readouterr().err == ""
    err = str(join_refused("10.0.0.1:6379", "10.0.0.1:6379", "Failed to connect to Ray cluster", held.text))
    assert "token authentication" in err and "RAY_AUTH_MODE=token" in err and "10.0.0.1:6379" in err
    assert "ray status" in str(join_refused("a:1", "a:1", "Failed to connect", "something else\n"))
    with _stderr_held():
        os.write(2, b"a warning Ray logged while joining\n")
    assert capfd.readouterr().err == "a warning Ray logged while joining\n"
    with pytest.raises(KeyboardInterrupt), _stderr_held():  # interrupted mid-join: fd 2 comes back
        os.write(2, b"half a join\n")
        raise KeyboardInterrupt
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "half a join\nafter\n"


def test_a_ray_version_mismatch_names_both_versions_in_one_line():
    """Ray refuses a driver of another Ray with "Version mismatch: The cluster was started with:" and
    the versions on the lines after it: the first line alone named neither."""
    import ray
    from ray._private.utils import check_version_info

    from cent_serve.executor.ray_cluster import _first_line, join_refused

    with pytest.raises(RuntimeError) as raised:  # Ray's own check, a cluster of another Ray
        check_version_info({"ray_version": "2.59.0", "python_version": "3.11.7"}, "127.0.0.1")
    err = str(join_refused("127.0.0.1:6379", "127.0.0.1:6379", _first_line(raised.value), ""))
    assert "\n" not in err and "the cluster runs Ray 2.59.0 on Python 3.11.7" in err, err
    assert f"this process Ray {ray.__version__}" in err and '"ray[default]==2.59.0"' in err, err
    assert "run cent with the cluster's" in err, err  # not "cent serve": cent bench run --ray joins too
    assert "ray status" not in err  # the fix is here, not on the cluster


def test_another_ray_refusal_keeps_its_first_line_and_a_mismatch_of_another_form_all_its_words():
    """Only Ray's version refusal is read past its first line: another error's later lines (Ray's
    hints, a traceback's) stay out, and a version refusal without the two "Ray: V Python: V" pairs
    is said whole in one line rather than cut to its first."""
    from cent_serve.executor.ray_cluster import _first_line

    assert _first_line(RuntimeError("Failed to connect to GCS\n  Ray: 2.59.0\n  Python: 3.11.7")) == \
        "Failed to connect to GCS"
    assert _first_line(RuntimeError("Version mismatch: The cluster was started with:\n  Ray 2.59.0")) == \
        "Version mismatch: The cluster was started with: Ray 2.59.0"


def test_fewer_banks_than_the_bank_groups_is_refused_not_a_division_by_zero(capfd, caplog):
    # A block on one channel of 2 banks has 2 // 4 = 0 elementwise lanes: the time model divided by
    # zero (a ZeroDivisionError traceback) instead of naming the field.
    proc = cent_in_process("simulate", "--model", "tiny", "--devices", "1", "--seqlen", "1024",
                           "--set", "device.num_channels=8", "--set", "device.banks_per_channel=2",
                           capfd=capfd, caplog=caplog)
    _one_line_error(proc, "device.banks_per_channel=2", "multiple of 4")
    assert proc.returncode == 2


def test_an_activation_group_larger_than_the_accumulator_registers_is_refused(capfd, caplog):
    proc = cent_in_process("simulate", "--model", "tiny", "--devices", "1", "--seqlen", "1024",
                           "--set", "device.gemv_af_group_size=64", capfd=capfd, caplog=caplog)
    _one_line_error(proc, "device.gemv_af_group_size=64", "at most device.accumulator_registers=32")
    assert proc.returncode == 2


def test_a_controller_of_a_fraction_of_the_channels_is_refused(capfd, caplog):
    # 32 channels at 3 a controller would be 10 2/3 controllers: it was accepted, each command charged
    # a third of a controller's power.
    proc = cent_in_process("simulate", "--model", "tiny", "--devices", "1", "--seqlen", "1024",
                           "--set", "device.energy.channels_per_controller=3", capfd=capfd, caplog=caplog)
    _one_line_error(proc, "device.energy.channels_per_controller=3", "does not divide device.num_channels=32",
                    "set device.num_channels to a multiple of 3 (30 or 33) or device.energy.channels_per_controller "
                    "to a divisor of 32 (2 or 4)")
    assert proc.returncode == 2


def test_channels_a_controller_cannot_share_name_the_channels_changed_and_both_fixes(capfd, caplog):
    # --set device.num_channels=33 blamed channels_per_controller=2 (left at its default) and offered
    # only a divisor of 33: the user changed num_channels, so it is named, with both ways out.
    proc = cent_in_process("info", "--set", "device.num_channels=33", capfd=capfd, caplog=caplog)
    _one_line_error(proc, "device.num_channels=33 is invalid: device.energy.channels_per_controller=2 does not "
                    "divide it", "set device.num_channels to a multiple of 2 (32 or 34) or "
                    "device.energy.channels_per_controller to a divisor of 33 (1 or 3)")
    assert proc.returncode == 2


@pytest.mark.parametrize("command", [["bench", "run"], ["bench", "sweep", "--rates", "1"], ["bench", "paper"],
                                     ["bench", "compare", "--gpu", "a100-80gb:1"]])
def test_an_out_that_is_a_file_is_refused_before_the_replay(tmp_path, command, capfd, caplog):
    """The results directory is checked first: a replay's hours are not lost to a path it cannot write."""
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    proc = cent_in_process(*command, "--model", "tiny", "--numerics", "off", "--num-requests", "3",
                           "--out", str(taken / "results"), capfd=capfd, caplog=caplog)
    _one_line_error(proc, "--out", "a file")
    assert "requests/s" not in proc.stdout and taken.read_text() == "not a directory"


@pytest.mark.parametrize("context, fix", [(["--seqlen", "32768"], "a shorter context with --seqlen N"),
                                          (["--prompt", "512", "--decode", "30000"],
                                           "a shorter context with a smaller --prompt or --decode")])
def test_simulate_s_capacity_fix_names_the_flag_that_set_the_context(capsys, context, fix):
    """The context of `cent simulate --seqlen` is the flag's, not model.max_seq_len (which it suggested)."""
    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-70b", "--devices", "32", "--set", "model.max_seq_len=32768",
                 "--batch", "32", *context]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and fix in err and "model.max_seq_len=N" not in err


def test_info_says_a_full_numerics_mapping_that_splits_a_head_does_not_run(capfd, caplog):
    """`cent info` said "runs yes" for tp 3 on a 4-head checkpoint that `cent serve` then refused:
    full numerics split each block's heads over a stage's devices. Timing-only runs it."""
    ckpt = str(REPO / "tests" / "data" / "hf_tiny_llama")
    proc = cent_in_process("info", "--model", ckpt, "--devices", "6", "--pp", "2", "--tp", "3",
                           capfd=capfd, caplog=caplog)
    # the reason on the runs line, not only after the config's 170 lines (first-hour audit)
    assert proc.returncode != 0 and "runs         no: parallel.tp=3 does not divide" in proc.stdout, proc.stdout
    _one_line_error(proc, "parallel.tp=3 does not divide model.num_heads=4", "--numerics off")
    proc = cent_in_process("info", "--model", ckpt, "--devices", "6", "--pp", "2", "--tp", "3", "--numerics", "off",
                           capfd=capfd, caplog=caplog)
    assert proc.returncode == 0 and "runs         yes" in proc.stdout, proc.stderr


def test_bench_paper_refuses_one_mapping(capfd, caplog):
    """bench paper runs every mapping the paper evaluates: its --tp was dropped without a word."""
    proc = cent_in_process("bench", "paper", "--model", "llama2-7b", "--devices", "8", "--tp", "8", "--numerics", "off",
                           capfd=capfd, caplog=caplog)
    _one_line_error(proc, "--tp 8 is one mapping", "cent bench paper", "cent bench run")


def test_a_copy_too_big_for_its_devices_is_told_to_spread_over_the_devices_it_has(capsys):
    """70B as 7 stages on 32 devices: a copy uses 7 of them and a shard needs 19.6 GiB. "Use more
    devices" would only add copies (first-hour audit): the fix is more stages or a larger tp, named
    (it said only "spread a copy over more of the 32 devices (it uses 7): more stages (--pp) or a
    larger tp", and on 64 devices --pp 5 or --pp 8 at --tp 2 still failed where --tp 8 runs), with
    the devices a copy takes of the user's, and it runs on them. Where a copy uses every device (the
    pure pipeline on 8), more devices stays the fix."""
    from cent_serve.cli import main

    long = ["--set", "model.max_seq_len=131072", "--seqlen", "131072"]
    for devices, flags, extra, fix in ((32, ["--pp", "7"], [], ("10", "1", 10)),
                                       (64, ["--pp", "8"], [], ("10", "1", 10)),
                                       (64, ["--pp", "4", "--tp", "2"], long, ("4", "8", 32))):
        assert main(["simulate", "--model", "llama2-70b", "--devices", str(devices), *flags, *extra]) == 2
        err = capsys.readouterr().err
        pp, tp, used = fix
        assert "its weight shard alone needs" in err, err
        assert (f"use --pp {pp} --tp {tp} (a copy on {used} of your {devices} devices, the fewest that hold it with "
                "more stages or a larger tp)") in err, err
        assert "use more devices" not in err and "spread a copy" not in err, err
        assert main(["simulate", "--model", "llama2-70b", "--devices", str(devices), "--pp", pp, "--tp", tp,
                     *extra]) == 0
        capsys.readouterr()
    # the KV of 16 queries at 131,072 tokens, a copy on 32 of the 64: a larger tp on all 64 holds it
    work = ["--set", "model.max_seq_len=131072", "--prompt", "65536", "--decode", "65536"]
    assert main(["simulate", "--model", "llama2-70b", "--devices", "64", "--pp", "16", "--tp", "2", *work]) == 2
    err = capsys.readouterr().err
    assert "exceed the device's 16.00 GiB" in err, err
    assert ("or use --batch 9, --pp 16 --tp 4 (a copy on 64 of your 64 devices, the fewest that hold it with more "
            "stages or a larger tp), or a shorter context") in err, err
    assert main(["simulate", "--model", "llama2-70b", "--devices", "64", "--pp", "16", "--tp", "4", *work]) == 0
    capsys.readouterr()
    assert main(["simulate", "--model", "llama2-70b", "--devices", "8"]) == 2
    assert "use 16 devices (the fewest that hold it with a 4,096-token query a stage), or larger devices: " \
        in capsys.readouterr().err
    assert main(["simulate", "--model", "llama2-70b", "--devices", "8", "--batch", "20"]) == 2
    assert "use 10 devices (the fewest that hold it with 20 queries of 4,096 tokens), or larger devices: " \
        in capsys.readouterr().err
    assert main(["simulate", "--model", "llama2-70b", "--devices", "15"]) == 2  # the KV of 80 queries, now
    assert "16 devices (the fewest that hold it with a 4,096-token query a stage)" in capsys.readouterr().err
    assert main(["simulate", "--model", "llama2-70b", "--devices", "16"]) == 0
    capsys.readouterr()


def test_a_pipeline_that_leaves_a_device_idle_is_not_told_to_use_more_devices(capsys):
    """7B in pure pipeline on 12 devices of 256 MiB (3 blocks a device, 11 used) whose one block alone
    is too big: no count of devices holds it, yet the refusal said "use more devices or a larger tp"
    (the timing module's words for a copy that leaves devices idle). A larger tp, on the devices it
    takes, is the fix, and it runs."""
    from cent_serve.cli import main

    small = ["--model", "llama2-7b", "--set", "device.rows_per_bank=256"]
    assert main(["simulate", *small, "--devices", "12"]) == 2
    err = capsys.readouterr().err
    assert "11 devices used) does not fit: device 0: its weight shard alone needs 1.38 GiB of the device's 256 MiB" in err
    assert ("no count of devices up to 1,024 holds it with one stage a block and --tp 1: use 512 devices with --pp 32 "
            "--tp 16 (the fewest that hold it with more stages or a larger tp) with --set fabric.switch_lanes=512") in err
    assert "use more devices" not in err, err
    assert main(["simulate", *small, "--devices", "512", "--pp", "32", "--tp", "16", "--set",
                 "fabric.switch_lanes=512"]) == 0
    capsys.readouterr()


def test_weights_that_more_devices_only_copy_are_told_how_many_devices_hold_them(capsys):
    """70B as 4 stages on 4 devices: a shard needs 32.4 GiB, and with --pp 4 more devices only add
    copies (it said "use more devices"); 70B with tp 8 on 8 devices (one stage) likewise. Then it said
    "use more stages (--pp) or a larger tp", which these devices cannot take (pp x tp devices hold a
    copy: --pp 2 --tp 8 needs 16): the fix names the devices too, the fewest with their pp and tp,
    and that mapping runs, for simulate's batch (a query a stage) and for info's (serve's) one sequence."""
    from cent_serve.cli import main

    for command, flags, given, fix in (
            ("simulate", ["--devices", "4", "--pp", "4"], "--pp 4 and --tp 1", ["10", "10", "1"]),
            ("simulate", ["--devices", "8", "--pp", "1", "--tp", "8"], "--pp 1 and --tp 8", ["16", "2", "8"]),
            ("info", ["--devices", "8", "--pp", "8"], "--pp 8 and --tp 1", ["9", "9", "1"])):
        assert main([command, "--model", "llama2-70b", "--numerics", "off", *flags]) == 2
        err = capsys.readouterr().err
        devices, pp, tp = fix
        assert (f"no count of devices up to 1,024 holds it with {given}: use {devices} devices with --pp {pp} --tp {tp} "
                "(the fewest that hold it with more stages or a larger tp), or larger devices: device.num_channels") \
            in err, err  # one sentence (it read "... a larger tp) (or larger devices: ...)")
        assert "use more devices" not in err and "more stages (--pp)" not in err, err
        assert main([command, "--model", "llama2-70b", "--numerics", "off", "--devices", devices, "--pp", pp,
                     "--tp", tp]) == 0
        capsys.readouterr()


def test_weights_no_mapping_holds_with_the_kv_cache_are_told_the_one_that_holds_them_with_less_context(capsys):
    """70B (Llama 3.1) on devices of 512 MiB at 65,536 + 65,536 tokens: no mapping up to 1,024 devices
    holds the weights and the KV of a query a stage, and the refusal offered larger devices alone,
    though 512 devices as 8 stages x tp 64 hold the weights: it names them, with a shorter context,
    and they run the paper's 512 + 3,584 tokens."""
    from cent_serve.cli import main

    model = ["--model", "llama3.1-70b", "--set", "device.rows_per_bank=512", "--set", "model.max_seq_len=131072"]
    long = ["--prompt", "65536", "--decode", "65536"]
    assert main(["simulate", *model, "--devices", "8", "--pp", "8", *long]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its weight shard alone needs 17.89 GiB of the device's 512 MiB" in err, err
    assert ("nor with more stages or a larger tp; with a shorter context (a smaller --prompt or --decode), use 512 "
            "devices with --pp 8 --tp 64 (the fewest that hold the weights with more stages or a larger tp) with "
            "--set fabric.switch_lanes=512, or larger devices: device.num_channels") in err, err
    mapping = ["--devices", "512", "--pp", "8", "--tp", "64", "--set", "fabric.switch_lanes=512"]
    assert main(["simulate", *model, *mapping, *long]) == 2  # the shorter context is needed
    assert "does not fit" in capsys.readouterr().err
    assert main(["simulate", *model, *mapping, "--prompt", "512", "--decode", "3584"]) == 0
    capsys.readouterr()


def test_a_kv_cache_more_devices_only_copy_is_told_the_stages_or_tp_that_hold_it(capsys):
    """70B at 131,072 tokens on 80 devices, a block a device: the weights fit, the KV of 80 queries
    does not, and more devices with one stage a block only add copies, so the refusal offered --batch
    or a shorter context alone. A larger tp splits each block's KV over more devices: it names the
    fewest devices with more stages or a larger tp that hold it (320 as 80 stages x tp 4: tp 2 on 160
    does not), with the switch lanes they need, and that mapping runs. 7B on one device likewise gets
    more stages (6; 5 do not)."""
    from cent_serve.cli import main
    from cent_serve.config import FabricConfig

    long = ["--set", "model.max_seq_len=131072", "--seqlen", "131072"]
    for model, devices, given, (fix, fewer) in (
            ("llama2-70b", ["--devices", "80"], [], (("320", "80", "4"), ("160", "80", "2"))),
            ("llama2-7b", ["--devices", "1", "--pp", "1"], ["--batch", "1"], (("6", "6", "1"), ("5", "5", "1")))):
        assert main(["simulate", "--model", model, *devices, *long, *given]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "exceed the device's 16.00 GiB" in err, err  # one line, the KV branch
        found = re.search(r"(?:, |use )(\d+) devices with --pp (\d+) --tp (\d+) \(the fewest that hold it with more stages "
                          r"or a larger tp\)( with --set fabric.switch_lanes=(\d+))?, or a shorter context with "
                          r"--seqlen N$", err.rstrip())
        assert found and found.groups()[:3] == fix, err
        lanes = ["--set", f"fabric.switch_lanes={found[5]}"] if found[5] else []
        assert bool(lanes) == (int(fix[0]) > FabricConfig().switch_lanes), err  # named past the switch's lanes
        mapping = ["--devices", fix[0], "--pp", fix[1], "--tp", fix[2]]
        assert main(["simulate", "--model", model, *mapping, *lanes, *long, *given]) == 0
        capsys.readouterr()
        assert main(["simulate", "--model", model, "--devices", fewer[0], "--pp", fewer[1], "--tp", fewer[2],
                     "--set", "fabric.switch_lanes=1024", *long, *given]) == 2  # the fewest: less does not hold it
        assert "does not fit" in capsys.readouterr().err


def test_sweep_rows_whose_kv_cache_does_not_fit_name_the_stages_or_tp_that_hold_it(capsys):
    """`cent simulate --sweep` of 70B at 65,536 + 65,536 tokens on 32 devices: rows whose weights fit
    but whose KV does not, which more devices only copy, name a mapping that holds it, and it runs."""
    from cent_serve.cli import main

    work = ["--prompt", "65536", "--decode", "65536", "--set", "model.max_seq_len=131072"]
    assert main(["simulate", "--sweep", "--model", "llama2-70b", "--devices", "32", *work, "--json"]) == 0
    rows = {(r["pp"], r["tp"]): r.get("error") for r in json.loads(capsys.readouterr().out)["points"]}
    assert "use 64 devices with --pp 16 --tp 4 (the fewest that hold it with more stages or a larger tp), or a " \
           "shorter context with a smaller --prompt or --decode" in rows[(16, 2)], rows
    assert main(["simulate", "--model", "llama2-70b", "--devices", "64", "--pp", "16", "--tp", "4", *work]) == 0
    capsys.readouterr()


def test_sweep_rows_that_do_not_fit_name_the_devices_that_hold_them_as_simulate_does(capsys):
    """`cent simulate --sweep` on 8 devices: every mapping uses all 8, so raising --pp (which --sweep
    refuses) or tp cannot make a row fit on them; a row said "use more stages (--pp) or a larger tp".
    Each row now gives cent simulate's refusal of its mapping, which names the devices that hold it."""
    from cent_serve.cli import main

    assert main(["simulate", "--sweep", "--model", "llama2-70b", "--devices", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["points"]
    assert [(r["pp"], r["tp"]) for r in rows] == [(80, 1), (1, 8), (2, 4), (4, 2), (8, 1)]
    assert all("error" in r and "more stages (--pp)" not in r["error"] for r in rows)
    for r in rows[1:]:
        assert main(["simulate", "--model", "llama2-70b", "--devices", "8", "--pp", str(r["pp"]), "--tp", str(r["tp"]),
                     "--prompt", "512", "--decode", "3584"]) == 2
        assert capsys.readouterr().err.strip() == f"cent simulate: error: {r['error']}"  # the same words
        devices, pp, tp = re.search(r"use (\d+) devices with --pp (\d+) --tp (\d+)", r["error"]).groups()
        assert int(devices) > 8
        assert main(["simulate", "--model", "llama2-70b", "--devices", devices, "--pp", pp, "--tp", tp,
                     "--prompt", "512", "--decode", "3584"]) == 0  # the fix holds the paper's batch
        capsys.readouterr()


def test_gpus_capped_by_the_kv_block_override_are_told_to_raise_it_not_to_use_more_gpus(capsys, caplog):
    """`--set scheduler.num_kv_blocks_override=20` on a GPU that holds thousands of blocks: the refusal
    said "the GPUs hold 20 ...: use more GPUs", which the override caps all the same. What serving checks
    (cent info, cent serve) refuses it; cent simulate's closed form does not read it (its static batch meets
    no scheduler, as CENT's closed form does not) and says so, as it does on CENT."""
    from cent_serve.cli import main

    info = ["info", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--numerics", "off"]
    assert main([*info, "--set", "scheduler.num_kv_blocks_override=20"]) == 2
    err = capsys.readouterr().err
    assert "scheduler.num_kv_blocks_override=20 caps the GPUs at 20 (they hold 6976): raise it to 256 or more, " \
           "or remove it" in err, err
    assert "use more GPUs" not in err and len(err.strip().splitlines()) == 1, err
    assert main([*info, "--set", "scheduler.num_kv_blocks_override=256"]) == 0
    capsys.readouterr()
    gpu = ["simulate", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--json"]
    assert main(gpu) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["batch"] == 27  # the GPU's own largest (6976 // 256)
    for blocks in (20, 256, 6912):
        caplog.clear()
        assert main([*gpu, "--set", f"scheduler.num_kv_blocks_override={blocks}"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got.pop("config")["scheduler"]["num_kv_blocks_override"] == blocks
        assert got == {k: v for k, v in plain.items() if k != "config"}  # the same batch and figures
        assert any("--set scheduler.num_kv_blocks_override: the closed form does not read it" in r.getMessage()
                   for r in caplog.records)


def test_a_kv_cache_that_a_shrunk_device_cannot_hold_names_the_device_fields(capsys):
    """A researcher's `--set device.rows_per_bank=8192` halves a device; the KV-cache refusal offered
    fewer queries, more devices or a shorter context, never the field just set. It names the fields
    that size a device when they make it smaller than the default, and not at the default (a
    serving user is not told to change the hardware)."""
    from cent_serve.cli import main

    args = ["simulate", "--model", "llama2-7b", "--devices", "8", "--numerics", "off"]
    assert main([*args, "--set", "device.rows_per_bank=8192"]) == 2
    err = capsys.readouterr().err
    assert ("11 devices (the fewest that hold it with a 4,096-token query a stage), larger devices (device.num_channels x banks_per_channel x "
            "rows_per_bank x row_elements x bytes_per_element make one 8.00 GiB here, 16.00 GiB by default), or a "
            "shorter context with --seqlen N") in err, err
    assert main(["simulate", "--model", "llama2-13b", "--devices", "8", "--numerics", "off"]) == 2  # the default device
    err = capsys.readouterr().err
    assert "exceed the device's 16.00 GiB" in err and "larger devices" not in err, err
    assert main([*args, "--set", "device.rows_per_bank=32768"]) == 0  # a larger device than the default
    capsys.readouterr()


def test_too_few_devices_for_a_pipeline_names_the_channel_field(capsys):
    """A block takes a channel at least: the refusal names device.num_channels, the field that a
    researcher's smaller device changes, beside the device count."""
    from cent_serve.cli import main

    assert main(["simulate", "--model", "llama2-70b", "--devices", "2", "--numerics", "off"]) == 2
    assert ("a device has 32 channels (device.num_channels), one for a block at least, so use at least 3 devices"
            in capsys.readouterr().err)


@pytest.mark.parametrize("argv, says", [
    ([], "cent: error: the following arguments are required: {info,generate,"),
    (["bench"], "cent bench: error: the following arguments are required: {run,sweep,paper,compare}"),
    (["tokenizer"], "cent tokenizer: error: the following arguments are required: {export"),
])
def test_a_missing_subcommand_is_named_by_its_choices(argv, says, capsys):
    """`cent bench` alone said 'the following arguments are required: bench_command', the parser's own
    name for it (and 'command', 'action'): the error lists the subcommands to choose from."""
    from cent_serve.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and says in err and "bench_command" not in err, err
