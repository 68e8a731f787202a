"""What a user coming from vLLM types first, through the real `cent` entry point: vLLM's flags
(`VLLM_FLAG_HINTS`), `vllm serve MODEL`'s positional model and a Hub id for a preset are told cent's way
to the same in the one-line error."""
from __future__ import annotations

import pytest

from cent_serve.vllm_hints import VLLM_FLAG_HINTS


@pytest.mark.parametrize("args, says", [
    (["serve", "--tensor-parallel-size", "4"], "unrecognized arguments: --tensor-parallel-size 4 (see cent serve "
     "--help); vLLM's --tensor-parallel-size is --tp N here, with --pp M: CENT devices per pipeline stage, M stages "
     "(--devices N x M;"),
    (["serve", "-tp", "4"], "vLLM's -tp is --tp N here"),
    (["simulate", "--pipeline-parallel-size=2"], "vLLM's --pipeline-parallel-size is --pp N here"),
    (["serve", "--max-model-len", "2048", "--dtype", "half"], "vLLM's --max-model-len is --set model.max_seq_len=N "
     "here; vLLM's --dtype is --set model.weight_dtype=bfloat16 or float32 here"),
    (["serve", "--max-num-seqs", "8"], "--set gpu.max_num_seqs=N here on modelled GPUs"),
    (["serve", "--gpu-memory-utilization", "0.9"], "--set gpu.memory_utilization=F here"),
    (["serve", "--served-model-name", "x"], "the API serves the model by its --model name"),
    (["bench", "run", "--request-rate", "4", "--num-prompts", "10"], "vLLM's --request-rate is --rate R here; "
     "vLLM's --num-prompts is --num-requests N here"),
    # `vllm serve MODEL`'s positional model
    (["serve", "meta-llama/Llama-2-7b-hf"], "unrecognized arguments: meta-llama/Llama-2-7b-hf (see cent serve "
     "--help); give the model as --model meta-llama/Llama-2-7b-hf"),
])
def test_a_flag_from_vllm_is_told_the_flag_that_does_it_here(args, says, capsys):
    """`cent serve --tensor-parallel-size 4`, a vLLM user's first try, said only "unrecognized arguments
    (see cent serve --help)"; the line now names cent's flag or field for it."""
    from cent_serve.cli import main
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize("args", [
    ["serve", "--dtype", "half", "meta-llama/Llama-2-7b-hf"],
    ["serve", "--dtype=half", "meta-llama/Llama-2-7b-hf"],
    ["serve", "--max-model-len", "2048", "--devices", "8", "--dtype", "half", "meta-llama/Llama-2-7b-hf"],
    ["serve", "--enable-chunked-prefill", "meta-llama/Llama-2-7b-hf"],  # a switch: the word after it is no value
    ["serve", "--some-flag", "--dtype", "half", "meta-llama/Llama-2-7b-hf", "--port", "8001"],
    # vLLM switches with no hint: each of vLLM's --enable-*/--disable-* flags takes no value
    ["serve", "--disable-log-requests", "meta-llama/Llama-2-7b-hf"],
    ["serve", "--enable-lora", "meta-llama/Llama-2-7b-hf", "--max-loras", "4"],
])
def test_the_positional_model_after_a_vllm_flag_is_found(args, capsys):
    """`cent serve --dtype half MODEL` (vLLM's positional model after a flag and its value) got no "give
    --model" hint: only a first left-over word was taken for the model, and argparse leaves `--dtype`,
    `half` and MODEL over apart, in order. The words a flag takes are skipped."""
    from cent_serve.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the model as --model meta-llama/Llama-2-7b-hf " in err, err


@pytest.mark.parametrize("args", [["serve", "--dtype", "half"], ["serve", "--max-num-seqs", "8", "--dtype=half"],
                                  ["simulate", "--dtype", "half", "--max-num-seqs", "8"]])
def test_a_flag_s_value_is_not_taken_for_the_model(args, capsys):
    from cent_serve.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: " in err and "give the model" not in err, err


# the flags with a hint that take no value in vLLM: bool fields, which vllm/engine/arg_utils.py's get_kwargs
# makes argparse.BooleanOptionalAction switches (also --no-FLAG), and vllm/benchmarks/serve.py's store_true ones
_VLLM_TAKES_NONE = {"--enable-chunked-prefill", "--enable-prefix-caching", "--no-enable-prefix-caching",
                    "--enforce-eager", "--trust-remote-code", "--save-result", "--ignore-eos"}


@pytest.mark.parametrize("flag", sorted(VLLM_FLAG_HINTS))
def test_the_word_after_a_vllm_flag_is_its_value_as_in_vllm(flag, capsys):
    """`_positional` reads the word after a vLLM flag as vLLM does: a switch's next word is the model,
    any other flag's is its value (a flag wrongly taken for a switch would name its value as the model)."""
    from cent_serve.cli import main
    assert main(["info", flag, "meta-llama/Llama-2-7b-hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("give the model as --model meta-llama/Llama-2-7b-hf " in err) \
        == (flag in _VLLM_TAKES_NONE), err
    if flag in _VLLM_TAKES_NONE and flag.startswith("--enable-"):  # BooleanOptionalAction's --no-FLAG is one too
        assert main(["info", "--no-" + flag[2:], "meta-llama/Llama-2-7b-hf"]) == 2
        assert "give the model as --model meta-llama/Llama-2-7b-hf " in capsys.readouterr().err


@pytest.mark.parametrize("args", [["serve", "--dtype"], ["info", "--max-num-seqs", "8", "-dp"]])
def test_a_vllm_flag_missing_its_value_is_one_line(args, capsys):
    """A flag that takes a value, last with none: no word after it to skip, and no model."""
    from cent_serve.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: " in err and "give the model" not in err, err


def test_a_stray_word_after_the_model_is_not_taken_for_the_model(capsys):
    from cent_serve.cli import main
    assert main(["serve", "--model", "tiny", "extra"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: extra" in err and "--model extra" not in err, err


@pytest.mark.parametrize("given, preset", [
    ("Llama2-70B", "llama2-70b"), ("llama-2-70b", "llama2-70b"), ("meta-llama/Llama-2-70b-hf", "llama2-70b"),
    ("meta-llama/Llama-2-70b-hf/", "llama2-70b"),  # a shell's completion of a directory that is not there
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),  # a release of a preset _RELEASES does not list
    ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1-8b"), ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
    ("google/gemma-2-9b-it", "gemma-2-9b"), ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
])
def test_a_preset_spelled_otherwise_is_named(given, preset, capsys):
    """`cent simulate --model Llama2-70B` (or the Hub id meta-llama/Llama-2-70b-hf) listed 22 presets
    and left the user to find llama2-70b among them; the line now names it."""
    from cent_serve.cli import main
    assert main(["info", "--model", given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the preset of its shape is --model {preset} " in err, err


# the published config.json of each release (huggingface.co/mistralai/Mistral-7B-Instruct-v0.2 and
# Mistral-7B-v0.3; their model cards: v0.2 has rope_theta 1e6 and no sliding window, v0.3 adds a 32,768 vocabulary)
_MISTRAL = dict(architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                rms_norm_eps=1e-05, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, hidden_act="silu")
_MISTRAL_RELEASES = {"v0.2": dict(_MISTRAL, vocab_size=32000, rope_theta=1000000.0, sliding_window=None),
                     "v0.3": dict(_MISTRAL, vocab_size=32768, rope_theta=1000000.0, sliding_window=None)}


@pytest.mark.parametrize("given, release", [("Mistral-7B-Instruct-v0.3", "v0.3"), ("mistralai/Mistral-7B-v0.3", "v0.3"),
                                            ("mistralai/Mistral-7B-Instruct-v0.2", "v0.2"),
                                            ("mistralai/Mistral-7B-v0.3/", "v0.3")])
def test_a_later_release_of_a_preset_is_told_how_it_differs(given, release, capsys, tmp_path):
    """`--model mistralai/Mistral-7B-v0.3` was told "the preset of its shape is --model mistral-7b", which
    is v0.1's (a 32,000 vocabulary, a 4,096-token window, rope_theta 1e4): v0.3's is not that shape. The
    line now names the preset and the --set fields that give the release's shape, and they do: the
    preset with them is the release's config.json field for field."""
    import dataclasses
    import json
    import re

    from cent_serve.cli import main
    from cent_serve.config.presets import model_preset, resolve_model
    assert main(["info", "--model", given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the preset of its shape" not in err, err
    assert f"the nearest preset is --model mistral-7b, Mistral-7B-v0.1, which {release} differs from: " in err, err
    sets = dict(re.findall(r"--set model\.([a-z_]+)=(\S+?)[ ,;)]", err))
    (tmp_path / "config.json").write_text(json.dumps(_MISTRAL_RELEASES[release]))
    published = dataclasses.replace(resolve_model(str(tmp_path)), name="mistral-7b", checkpoint=None)
    preset = model_preset("mistral-7b")
    assert sets and dataclasses.replace(preset, **{k: type(getattr(preset, k))(float(v)) for k, v in sets.items()}) \
        == published, sets


def test_a_release_no_preset_knows_is_told_it_may_differ(capsys):
    from cent_serve.cli import main
    assert main(["info", "--model", "mistralai/Mistral-7B-v0.9"]) == 2
    err = capsys.readouterr().err
    assert "the nearest preset is --model mistral-7b, Mistral-7B-v0.1; v0.9 may differ from it" in err, err


def test_a_name_near_no_preset_is_told_none():
    from cent_serve.config.presets import _near_preset
    # two numbers run together are another model: Qwen2-57B is not qwen2.5-7b, a 31B gemma not gemma-3-1b
    names = ("no-such-model", "gpt-4", "llama3-8b", "", "/", "qwen2-57b", "gemma-31b", "llama3-18b")
    assert [_near_preset(x) for x in names] == [None] * len(names)


@pytest.mark.parametrize("args, says", [
    (["serve", "--request-rate", "4"], "vLLM's --request-rate is --rate R of cent sweep, cent bench run, "
     "cent bench sweep, cent bench paper, cent bench compare (cent serve takes no --rate)"),
    (["generate", "-tp", "2"], "vLLM's -tp is --tp N of cent info, cent simulate, cent sweep, cent serve, "
     "cent bench run, cent bench sweep, cent bench paper, cent bench compare (cent generate takes no --tp), with "
     "--pp M: "),
    (["simulate", "--num-prompts", "5"], "(cent simulate takes no --num-requests)"),
    (["serve", "--base-url", "x"], "vLLM's --base-url is --url URL of cent bench run (cent serve takes no --url)"),
    (["bench", "run", "--base-url", "x"], "vLLM's --base-url is --url URL here"),
    # what --synthetic needs besides, or the command the hint gives is refused
    (["bench", "run", "--random-input-len", "8"], "vLLM's --random-input-len is --synthetic poisson --prompt-len N "
     "here, with --rate R and --num-requests N"),
])
def test_a_vllm_flag_is_not_told_a_flag_its_command_lacks(args, says, capsys):
    """`cent serve --request-rate 4` was told "--rate R here", and `cent serve --rate 4` is refused too:
    a cent flag the command does not take is named with the commands that take it."""
    from cent_serve.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize("args, says", [
    # vllm bench serve's (vllm/benchmarks/serve.py, vllm/benchmarks/datasets/arg_utils.py)
    (["bench", "run", "--max-concurrency", "8"], "vLLM's --max-concurrency is --concurrency N here, with --url URL"),
    (["simulate", "--max-concurrency", "8"], "vLLM's --max-concurrency is --concurrency N of cent bench run (cent "
     "simulate takes no --concurrency)"),
    (["bench", "run", "--dataset-name", "sharegpt"], "vLLM's --dataset-name is --trace FILE here for sharegpt and "
     "burstgpt"),
    (["bench", "run", "--dataset-name", "sonnet"], "no sonnet, hf, custom or other generated dataset"),
    (["bench", "run", "--tokenizer", "/models/x"], "vLLM's --tokenizer is --model here: the tokenizer is the model's "
     "own"),
    (["bench", "run", "--save-result", "--result-dir", "out"], "vLLM's --save-result is not needed here: cent bench "
     "run always writes summary.json, requests.csv and config.json to --out DIR; vLLM's --result-dir is --out DIR here"),
    (["bench", "run", "--host", "10.0.0.2", "--port", "8000"], "vLLM's --host is --url http://HOST:PORT here"),
    # vLLM's bench sends ignore_eos only with --ignore-eos or for its random datasets (vllm/benchmarks/serve.py
    # main_async), not for a trace's requests: the hint said "as vLLM's benchmark sends trace requests"
    (["bench", "run", "--ignore-eos"], "vLLM's --ignore-eos is not needed here: every request generates its trace's "
     "output length (each is sent with ignore_eos, as vLLM's benchmark sends them with --ignore-eos)"),
    (["bench", "run", "--random-range-ratio", "0.5"], "vLLM's --random-range-ratio is --prompt-len LO:HI here"),
    (["bench", "run", "--input-len", "512"], "vLLM's --input-len is --synthetic poisson --prompt-len N here"),
    (["bench", "run", "--percentile-metrics", "ttft,tpot"], "p90 and p99"),
    # vllm serve's (vllm/engine/arg_utils.py)
    (["serve", "--tokenizer", "/models/x"], "cent tokenizer export DIR --model M"),
    (["serve", "--block-size", "32"], "vLLM's --block-size is --set scheduler.kv_block_tokens=N here"),
    (["serve", "-dp", "2"], "vLLM's -dp is --devices N here"),
    (["serve", "--kv-cache-dtype", "fp8"], "vLLM's --kv-cache-dtype is --set device.kv_bytes_per_element=1 here"),
    (["serve", "--enable-prefix-caching"], "vLLM's --enable-prefix-caching is not taken here: no prefix cache"),
    # vLLM's --quantization is -q too, and benchmark recipes turn prefix caching off with --no-enable-prefix-caching
    (["serve", "-q", "awq", "meta-llama/Llama-2-7b-hf"], "give the model as --model meta-llama/Llama-2-7b-hf (a preset "
     "or a checkpoint directory); vLLM's -q is not taken here: weights are bfloat16 or float32"),
    (["serve", "--no-enable-prefix-caching"], "vLLM's --no-enable-prefix-caching is not needed here: no prefix cache "
     "is modelled"),
    (["serve", "--trust-remote-code", "meta-llama/Llama-2-7b-hf"], "give the model as --model meta-llama/Llama-2-7b-hf "
     "(a preset or a checkpoint directory); vLLM's --trust-remote-code is not needed here"),
])
def test_a_vllm_user_s_first_flags_are_told_cent_s_way(args, says, capsys):
    """`cent bench run --max-concurrency 8`, `--dataset-name`, `--tokenizer` (and most of the flags a
    `vllm serve` or `vllm bench serve` user types) said only "unrecognized arguments": each now names
    cent's flag or field for it, or says plainly that cent has none and what to do instead."""
    from cent_serve.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_a_vllm_hint_names_a_flag_of_the_command_its_flag_belongs_to():
    """A hint for `vllm serve`'s flag starts with a flag `cent serve` takes, one for `vllm bench serve`'s
    with a flag `cent bench run` takes (or says cent takes none); a command it names is a cent command,
    and a flag that takes no value in vLLM has a hint (`_positional` reads the word after it)."""
    import re

    from cent_serve.cli import _commands, build_parser
    from cent_serve.vllm_hints import VLLM_BENCH_HINTS, VLLM_FLAG_HINTS, VLLM_SERVE_HINTS, VLLM_SWITCHES

    parsers = {" ".join(words): sub for words, sub in _commands(build_parser()) if words}
    assert VLLM_FLAG_HINTS == {**VLLM_SERVE_HINTS, **VLLM_BENCH_HINTS} and VLLM_SWITCHES <= set(VLLM_FLAG_HINTS)
    for hints, command in ((VLLM_SERVE_HINTS, "serve"), (VLLM_BENCH_HINTS, "bench run")):
        for vllm_flag, hint in hints.items():
            first = hint.split()[0]
            assert first in parsers[command]._option_string_actions or hint.startswith("not "), (vllm_flag, hint)
    for vllm_flag, hint in VLLM_FLAG_HINTS.items():
        for named in re.findall(r"\bcent ([a-z]+(?: [a-z]+)?)", hint):
            group = named.split()[0]  # `cent bench` alone is no command: its subcommand is named
            assert named in parsers or (group in parsers and not any(p.startswith(group + " ") for p in parsers)), \
                (vllm_flag, named)


def test_every_flag_and_field_a_vllm_hint_names_exists():
    """Each hint is a command a vLLM user types next: a field (--set SECTION.FIELD=) it names is a config
    field, and a flag it names is taken by some cent command (a rename would leave the hint pointing
    nowhere)."""
    import re

    from cent_serve.cli import _commands, build_parser
    from cent_serve.config.fields import _all_paths
    from cent_serve.vllm_hints import VLLM_FLAG_HINTS

    flags = {f for _, sub in _commands(build_parser()) for f in sub._option_string_actions}
    for vllm_flag, hint in VLLM_FLAG_HINTS.items():
        for path in re.findall(r"--set ([a-z_]+\.[a-z_]+)=", hint) + re.findall(r"\b((?:gpu|device|model|"
                                                                               r"scheduler|server)\.[a-z_]+)", hint):
            assert path in _all_paths(), (vllm_flag, path)
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", hint):
            assert flag in flags, (vllm_flag, flag)
