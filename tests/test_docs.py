"""The docs stay true: docs/config.md is what `cent info --describe` prints from the config's own
docstrings, every config field has one, every example config loads, maps and fits its devices,
every `cent` command line in README.md and docs/ (backticked, or in a bash block) parses, and they cite only
files that are in the repo."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cent_serve.cli import build_parser, main
from cent_serve.config import CentConfig, DeviceConfig, load_config
from cent_serve.config_doc import UNDOCUMENTED, describe_config, field_docs, sections, undocumented_fields
from cent_serve.timing import check_capacity, resolve_mapping

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGENERATE = "cent info --describe > docs/config.md"


def test_config_md_is_up_to_date():
    text = (DOCS / "config.md").read_text()
    assert text == describe_config(), (
        f"docs/config.md is out of date with cent_serve/config/: regenerate it with `{REGENERATE}` "
        "(from the repo root) and commit the result")


def test_every_config_field_has_a_docstring():
    missing = undocumented_fields()
    assert not missing, (f"config fields without a docstring: {missing}; give each a one-line string literal "
                         f"right below the field in cent_serve/config/, then run `{REGENERATE}`")


def test_cent_info_describe_prints_the_reference(capsys):
    assert main(["info", "--describe"]) == 0
    assert capsys.readouterr().out == describe_config()


def test_the_reference_lists_every_field_once_with_its_default():
    text = describe_config()
    assert UNDOCUMENTED not in text
    for prefix, cls, plain in sections():
        for f in plain:
            rows = [line for line in text.splitlines() if line.startswith(f"| `{prefix}{f.name}` |")]
            assert len(rows) == 1, (prefix + f.name, rows)
    assert "| `device.clock_hz` | `float` | `2000000000.0` |" in text
    assert "| `numerics` | `str` | `auto` |" in text
    assert "| `device.energy.rd_mw` | `float` | `438.15` |" in text
    for preset in ("tiny", "llama2-7b", "llama2-13b", "llama2-70b"):
        assert f"| `{preset}` |" in text
    assert "| 68.98 B (68,976,648,192) | 128.48 GiB |" in text  # llama2-70b


@dataclasses.dataclass
class _Sample:
    documented: int = 1
    """A field with a docstring
    spread over two lines."""
    bare: int = 2
    also: str = "x"
    """Another one."""


def test_field_docs_reads_the_literal_below_each_field_and_spots_a_missing_one():
    assert field_docs(_Sample) == {"documented": "A field with a docstring spread over two lines.",
                                   "also": "Another one."}


def test_element_count_fields_say_whose_width_an_element_is():
    """A row or a burst holds device.bytes_per_element-wide elements (8-bit weights fit 2048 a row), not
    always bf16 ones: their help names the width field and the bf16 count only as the paper's."""
    docs = field_docs(DeviceConfig)
    for name in ("row_elements", "burst_elements"):
        assert "device.bytes_per_element" in docs[name], (name, docs[name])
        assert "8-bit" in docs[name] and not docs[name].startswith("bf16"), (name, docs[name])


# ----------------------------------------------------------------------------- example configs

EXAMPLES = {
    # file: (context the example is meant for, what else it must say)
    "paper-70b.yaml": (512 + 3584, dict(mode="pipeline", devices_used=27, clock="virtual")),
    "serve-70b.yaml": (4096, dict(mode="pipeline", devices_used=27, clock="paced")),
    "cluster.yaml": (4096, dict(mode="pipeline", devices_used=27, clock="virtual")),
    "h200-compare.yaml": (512 + 3584, dict(mode="pipeline", devices_used=27, clock="virtual")),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_loads_maps_and_fits(name):
    context, want = EXAMPLES[name]
    cfg = load_config(DOCS / "examples" / name)
    assert isinstance(cfg, CentConfig)
    assert cfg.model.name == "llama2-70b" and cfg.model.num_layers == 80  # the preset was pulled in
    assert cfg.resolved_numerics == "off" and cfg.server.clock == want["clock"]
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    assert (mp.mode, mp.devices_used) == (want["mode"], want["devices_used"])
    assert context <= cfg.model.max_seq_len
    # every lane place holds a sequence of the whole context at once
    check_capacity(cfg.model, mp, cfg.device, context, batch=mp.lanes * cfg.scheduler.max_seqs_per_stage)


def test_every_example_is_indexed_and_the_cluster_example_names_its_cluster():
    index = (DOCS / "README.md").read_text()
    found = sorted(p.name for p in (DOCS / "examples").glob("*.yaml"))
    assert found == sorted(EXAMPLES)
    for name in found:
        assert f"examples/{name}" in index, name
    s = load_config(DOCS / "examples" / "cluster.yaml").server
    assert (s.ray_address, s.placement, s.device_resource) == ("auto", "spread", "cent_device")


# ----------------------------------------------------------------------------- commands and citations

def _doc_files() -> list[Path]:
    """docs/ and the repo's README.md, the tour a new user runs first."""
    return [ROOT / "README.md"] + sorted(DOCS.rglob("*.md")) + sorted((DOCS / "examples").glob("*.yaml"))


def _block_commands(text: str) -> list[str]:
    """`cent ...` lines of a Markdown file's ```bash blocks (a line continued with a backslash joined),
    the way a reader pastes them; an environment assignment before `cent` dropped."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.match(r"^(?:[A-Z_]+=\S+\s+)*(cent \S.*)$", line.strip())
            if found:
                lines.append(" ".join(found.group(1).split()))
    return lines


def _commands(path: Path) -> list[str]:
    """`cent ...` command lines: backticked in Markdown and in its bash blocks, comment lines in YAML."""
    text = path.read_text()
    if path.suffix == ".md":
        found = [" ".join(m.split()) for m in re.findall(r"`(cent [^`]+)`", text)] + _block_commands(text)
    else:
        found = [m.strip() for m in re.findall(r"^#\s+(?:[A-Z_]+=\S+\s+)?(cent \S.*)$", text, re.M)]
    return [re.split(r"\s[>|]\s", c)[0] for c in found]  # the command, not where its output goes


def test_make_run_passes_the_readmes_args_to_cent_serve():
    """README: `make run ARGS="..."` passes flags to `cent serve`; `make -n` prints the command without
    running it (nor installing: a missing .venv's steps print first)."""
    args = re.search(r'`make run ARGS="([^"]+)"`', (ROOT / "README.md").read_text())
    assert args, "README no longer shows make run ARGS"
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    out = subprocess.run(["make", "-n", "run", f"ARGS={args.group(1)}"], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env).stdout
    assert f".venv/bin/cent serve {args.group(1)}" in out.splitlines()[-1]
    # an ARGS exported in the shell (a common name) is not passed: only make's command line sets it
    plain = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True,
                           env=dict(env, ARGS="--port 1")).stdout
    assert plain.splitlines()[-1].rstrip().endswith(".venv/bin/cent serve"), plain


def test_docs_contain_commands():
    assert len([c for p in _doc_files() for c in _commands(p)]) >= 15


def _command_names(parser: argparse.ArgumentParser, prefix: str = "cent") -> set[str]:
    """`cent`, `cent bench`, `cent bench run`, ...: every (sub)command's name."""
    names = {prefix}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names |= _command_names(sub, f"{prefix} {name}")
    return names


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every (sub)command's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_help_reads_as_written():
    """argparse %-formats a flag's help, not a command's description: a description's "90%%" printed
    as "90%%" (cent bench sweep --help). Every page prints without a doubled or stray format mark."""
    for p in _parsers(build_parser()):
        text = p.format_help()
        assert "%%" not in text and "%(" not in text, (p.prog, [x for x in text.splitlines() if "%" in x])


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cent_command_in_the_docs_parses(path):
    """A span with flags is an invocation and must parse; one without names a (sub)command."""
    parser = build_parser()
    names = _command_names(parser)
    for command in _commands(path):
        argv = shlex.split(command, comments=True)[1:]
        if not any(a.startswith("-") for a in argv):
            assert " ".join(["cent", *argv]) in names, f"{path.relative_to(ROOT)}: `{command}` names no command"
            continue
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # 0: --version or --help, which print and end
            if exc.code:
                pytest.fail(f"{path.relative_to(ROOT)}: `{command}` does not parse")
            continue
        config = getattr(args, "config", None)
        if config:
            assert (ROOT / config).is_file(), f"{path.relative_to(ROOT)}: `{command}`: no file {config}"


REPO_PATH = re.compile(r"(?<![\w/.])((?:cent_serve|tests|docs|api|device_worker|fabric|deploy|benchmarks)/[\w./-]*)")
OUTSIDE = ("CENT_MODEL.md", "SERVING.md", "DESIGN.md", "STYLE.md", "../shared", "/work/")


@pytest.mark.parametrize("path", [p for p in _doc_files() if p.name != "config.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_cite_only_files_in_the_repo(path):
    """(docs/config.md is generated from cent_serve/config/: its citations are the code's.)"""
    text = path.read_text()
    for name in OUTSIDE:
        assert name not in text, f"{path.relative_to(ROOT)} cites {name}, which is not in the repo"
    for cited in REPO_PATH.findall(text):
        cited = cited.rstrip(".,;:)")
        assert (ROOT / cited).exists(), f"{path.relative_to(ROOT)} cites {cited}, which does not exist"


def test_gpu_model_md_gives_each_kinds_power_as_the_code_does():
    """docs/gpu_model.md said the A100 PCIe card takes the SXM4's fractions (293 / 400 of its 300 W:
    220 W), but the code gives it the measured 293 W (293 / 300), as the SXM4's: the watts each kind
    draws are stated, from the code's own figures."""
    from cent_serve.gpu.kinds import GPU_KINDS

    text = " ".join((ROOT / "docs" / "gpu_model.md").read_text().split())
    said = ", ".join(f"`{k.name}` {k.board_power_w * k.power_fraction:.0f} W" for k in GPU_KINDS.values())
    assert f"(`board_power x power_fraction`): {said}" in text
    assert "take the A100 SXM4's fractions" not in text


def test_hardware_model_md_says_how_to_get_a_blocks_energy_by_operation():
    """Section 8 named `block_energy_by_op_j` beside `cent simulate --json` as if the command gave it;
    it is a Python function only: the section's example runs as written and gives its figures."""
    from cent_serve.timing.energy import OPS, block_energy_j

    section = re.split(r"^## ", (DOCS / "hardware_model.md").read_text(), flags=re.M)
    section = next(part for part in section if part.startswith("8."))
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(code) == 1 and "block_energy_by_op_j(timer, 2048)" in code[0]
    ns: dict = {}
    exec(compile(code[0], "docs/hardware_model.md section 8", "exec"), ns)
    by_op = ns["by_op"]
    assert tuple(by_op) == OPS and sum(by_op.values()) == pytest.approx(block_energy_j(ns["timer"], 2048))
    assert f'"qkvo": {by_op["qkvo"]:.2e}' in code[0] and f'"ffn": {by_op["ffn"]:.2e}' in code[0]
    assert f'"background": {by_op["background"]:.2e}' in code[0]


def _flag_help(parser: argparse.ArgumentParser, flag: str) -> str | None:
    return next((a.help for a in parser._actions if flag in a.option_strings), None)


def test_the_mapping_numerics_and_batch_flags_say_their_defaults():
    """`--devices`, `--pp`, `--tp` and `--numerics` said no default (README and docs/config.md give 8, 0,
    1 and auto, and what auto does), `cent serve --pace-factor` neither, and `cent simulate --batch`
    told only CENT's batch, though README's GPU examples give --batch 128 and leave it out for the
    largest that fits: every page says the defaults the config gives."""
    from cent_serve.config import ParallelConfig, ServerConfig

    par = ParallelConfig()
    wanted = {"--devices": f"(default {par.num_devices})", "--pp": f"(default {par.pp}: one per block)",
              "--tp": f"default {par.tp})", "--numerics": "auto (the default): full for a checkpoint's weights up to 1B parameters"}
    seen = set()
    for p in _parsers(build_parser()):
        for flag, text in wanted.items():
            said = _flag_help(p, flag)
            if said is not None:
                assert text in said, (p.prog, flag, said)
                seen.add(flag)
    assert seen == set(wanted)
    assert CentConfig().numerics == "auto"
    sub = {p.prog: p for p in _parsers(build_parser())}
    assert f"(default {ServerConfig().pace_factor:g})" in _flag_help(sub["cent serve"], "--pace-factor")
    assert "On GPUs (--hardware gpu:KIND:N): the static batch, by default the largest that fits, at most 128" \
        in " ".join(_flag_help(sub["cent simulate"], "--batch").split())


def _simulate_json(capsys, *argv: str) -> dict:
    import json

    assert main(["simulate", *argv, "--prompt", "512", "--decode", "3584", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_readmes_closed_form_figures_are_what_cent_simulate_prints(capsys):
    """README quotes figures of closed-form commands (each under a second) that no test pinned: a change
    to the GPU model or the CENT timing would have left them stale. Each figure is computed here by the
    command the README shows beside it and must read as written."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    serving = " ".join((DOCS / "serving.md").read_text().split())
    gpu = ["--model", "llama2-70b", "--hardware", "gpu:a100-80gb:4"]
    out = _simulate_json(capsys, *gpu)
    assert f"# {out['end2end']['throughput_tok_s']:,.0f} tok/s, batch {out['batch']}" in readme
    out = _simulate_json(capsys, *gpu, "--set", "gpu.attention_reads=query_heads",
                         "--set", "gpu.memory_utilization=0.97", "--batch", "128")
    assert f"# the artifact's set-up: {out['end2end']['throughput_tok_s']:,.0f}" in readme
    cent = {pp: _simulate_json(capsys, "--model", "llama2-70b", "--devices", "32", "--pp", str(pp))["end2end"]
            for pp in (80, 32)}
    assert f"{cent[80]['throughput_ratio']:.2f}x for 32 devices" in readme
    assert (f"gives {cent[80]['throughput_tok_s']:,.0f} and {cent[32]['throughput_tok_s']:,.0f})") in serving


def test_cent_help_says_what_cent_info_prints():
    """`cent --help` said info prints "the resolved config, parameter count and weight bytes", leaving out
    the KV room and whether the mapping fits (its `runs` line), which README's tour names it for, and its
    --presets and --describe; and the device line (capacity, PIM peak) once it printed one."""
    listing = " ".join(build_parser().format_help().split())
    assert "info the resolved config, parameters, the device, KV room and whether it fits; --presets, --describe" in listing
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "# resolved config, parameters, the device, KV room, whether it fits" in readme


def test_the_readme_says_gemma_2_s_window_as_its_presets_serve_it():
    """README's reference-model list said Gemma 2 is "served within its window" after its presets came to
    serve their published 8192 tokens with the 4096 window on alternate blocks (`model.layer_types`), and
    named a sliding window for Mistral and Phi-3 only. It says the window on some blocks now."""
    from cent_serve.config import model_preset

    readme = " ".join((ROOT / "README.md").read_text().split())
    for name in ("gemma-2-9b", "gemma-2-27b"):
        m = model_preset(name)
        assert m.max_seq_len > m.sliding_window and 0 < sum(map(bool, m.block_windows)) < m.num_layers, name
    assert "served within its window" not in readme
    assert "a sliding window on every block (Mistral, Phi-3) or on some (`model.layer_types`" in readme


def test_no_help_line_splits_a_word_at_its_hyphen():
    """argparse wraps a flag's help with textwrap, which also breaks after a hyphen: `cent bench run --help`
    printed "(rounded; before --max-" over "prompt-tokens)" and `cent sweep --help` "(default: sweep-" over
    "results)", the flag and the directory a user copies cut in two. Help lines now break at spaces."""
    for p in _parsers(build_parser()):
        split = [line for line in p.format_help().splitlines() if re.search(r"\w-$", line)]
        assert not split, (p.prog, split)


def test_the_readmes_refused_openai_features_are_the_ones_the_api_refuses():
    """README said OpenAI features the server cannot honour, "(`tools`, `logit_bias`, `best_of` > 1, ...)",
    get 400, after `logit_bias` came to be honoured (docs/serving.md's table; a request with it is
    answered 200): a user reading it would not send a bias the server applies. Each feature it names is
    one api/protocol.py's UNSUPPORTED refuses."""
    from api.protocol import UNSUPPORTED

    readme = " ".join((ROOT / "README.md").read_text().split())
    listed = re.search(r"OpenAI features this server cannot honour \(([^)]*)\)", readme)
    assert listed, "README no longer lists the refused OpenAI features"
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert names and all(name in UNSUPPORTED for name in names), (names, sorted(UNSUPPORTED))


def test_help_names_the_trace_formats_and_the_defaults_it_leaves_out():
    """`--format TRACE_FORMAT trace format (default: detected)` named no format a user could give, the
    bench commands' `--num-requests` said "requests at most" without its default (every request), and
    `cent generate --prompt` not the prompt it runs without one; info and generate had no description."""
    from cent_serve.bench.traces import FORMATS

    pages = {p.prog: " ".join(p.format_help().split()) for p in _parsers(build_parser())}
    for prog in ("cent bench run", "cent bench sweep", "cent bench paper", "cent bench compare", "cent sweep"):
        assert f"trace format: {', '.join(FORMATS)} (default: detected from the file)" in pages[prog], prog
    for prog in ("cent bench run", "cent bench sweep", "cent bench paper", "cent bench compare"):
        assert "--num-requests NUM_REQUESTS requests at most (default: every request the trace selects" in pages[prog]
    assert "--num-requests NUM_REQUESTS requests at most (default 200)" in pages["cent sweep"]
    assert "default 'Hello')" in pages["cent generate"]
    from cent_serve.model.cli import DEFAULT_PROMPT
    assert DEFAULT_PROMPT == "Hello"
    assert "Generate tokens with the single-process numpy reference model" in pages["cent generate"]
    assert "The resolved config, parameters, the device, KV room and whether it fits" in pages["cent info"]


def test_no_help_page_prints_markdown_backticks():
    """`cent bench --help` printed its module docstring as written, "`cent bench`: load tests ..." and
    "- `run`: ...", and `cent tokenizer export --help` "`tokenizers`/`transformers`": Markdown's marks,
    which a terminal shows as they are."""
    for p in _parsers(build_parser()):
        marked = [line for line in p.format_help().splitlines() if "`" in line]
        assert not marked, (p.prog, marked)
