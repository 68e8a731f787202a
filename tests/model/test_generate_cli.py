"""`cent generate` as a user runs it: what it cannot do is refused in one line before any weight is built."""
from __future__ import annotations

import re

import pytest

import cent_serve.preflight as preflight
from cent_serve.cli import main


@pytest.mark.parametrize("args, says", [
    (["--set", "numerics=off"], "numerics='off': cent generate is the reference model's real math"),
    (["--set", "gpu.count=2"], "gpu.count=2: cent generate runs the reference model on this machine"),
    (["--max-tokens", "100000", "--prompt-ids", "1,2"], "--max-tokens 100000 is invalid with a prompt of 2 tokens in "
                                                        "model.max_seq_len=8192: use 1..8190"),
    (["--sample-seed", "-1"], "--sample-seed -1 is invalid: use an integer >= 0"),
])
def test_options_generate_cannot_honour_are_refused(args, says, capsys):
    assert main(["generate", *args]) == 2
    assert says in capsys.readouterr().err


def test_help_offers_no_flag_generate_refuses(capsys):
    """--numerics and --hardware were offered by `cent generate --help` and then refused (off, gpu:...): the
    reference model runs its math on this machine whatever they say, so it does not take them."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    usage = capsys.readouterr().out
    assert "--prompt" in usage and "--set" in usage
    for flag in ("--numerics", "--hardware", "--devices", "--pp", "--tp"):
        assert flag not in usage


def test_help_says_what_each_flag_does_in_generate(capsys):
    """--seed's help spoke of a mixture of experts' timing router 'which its simulated times follow', though
    cent generate times nothing, and --top-p and --top-k had none."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "simulated" not in usage and "--seed SEED seed of the random weights of a preset" in usage
    assert "--top-p TOP_P nucleus sampling" in usage and "--top-k TOP_K the" in usage


@pytest.mark.parametrize("args, says", [
    (["--numerics", "off"], "unrecognized arguments: --numerics off (see cent generate --help); cent generate always "
                            "runs the reference model's real math"),
    (["--hardware", "gpu:a100-80gb:1"], "unrecognized arguments: --hardware gpu:a100-80gb:1 (see cent generate "
                                        "--help); cent generate runs the reference model on this machine"),
])
def test_a_flag_generate_does_not_take_says_what_to_run_instead(args, says, capsys):
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_a_model_larger_than_the_memory_is_refused_before_it_is_built(monkeypatch, capsys):
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 8 * 2**30)
    built = []
    monkeypatch.setattr("cent_serve.model.LlamaModel", lambda *a, **k: built.append(a))
    assert main(["generate", "--model", "llama2-7b", "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "llama2-7b's 6.74 B parameters as float32 (25.1 GiB); this machine has 8.0 GiB available" in err
    assert not built


def test_the_text_output_labels_prompt_and_continuation(capsys):
    assert main(["generate", "--prompt", "Hi", "--max-tokens", "3", "--ignore-eos"]) == 0
    head, prompt, cont = capsys.readouterr().out.splitlines()[:3]
    assert head == "[tiny, 3 tokens, length]" and prompt == "prompt:       'Hi'" and cont.startswith("continuation: '")


def test_serve_s_memory_refusal_says_how_many_copies_it_counts():
    """cent generate said 257 GiB for llama2-70b and cent serve 514 GiB, with nothing to say why (first-hour
    audit): serve counts the model and the devices' shards (in process), or the model once per device actor."""
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing.mapping import resolve_mapping

    cfg = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8), numerics="full")
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    for executor, says in (("local", "50.2 GiB of memory here, 2 float32 copies (the model and its shards; local"),
                           ("ray", "225.9 GiB of memory here, 9 float32 copies (each of the 8 device actors reads the "
                                   "whole model at start-up, beside this process's; ray")):
        cfg.executor = executor
        with pytest.raises(ValueError, match=re.escape(says)):
            preflight.check_host_memory(cfg, mp, available_bytes=8 * 2**30)
    one = resolve_mapping(cfg.model, ParallelConfig(1), cfg.device)  # on Ray: 2 copies, not the in-process pair
    with pytest.raises(ValueError, match=re.escape("2 float32 copies (each of the 1 device actor reads the whole")):
        preflight.check_host_memory(cfg, one, available_bytes=8 * 2**30)
