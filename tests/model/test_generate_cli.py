"""`cent generate` as a user runs it: what it cannot do is refused in one line before any weight is built."""
from __future__ import annotations

import pytest

import cent_serve.preflight as preflight
from cent_serve.cli import main


@pytest.mark.parametrize("args, says", [
    (["--numerics", "off"], "numerics='off' (--numerics off): cent generate is the reference model's real math"),
    (["--set", "numerics=off"], "numerics='off' (--numerics off): cent generate"),
    (["--hardware", "gpu:a100-80gb:1"], "gpu.count=1 (--hardware gpu:...): cent generate runs the reference model"),
    (["--set", "gpu.count=2"], "gpu.count=2 (--hardware gpu:...): cent generate"),
    (["--max-tokens", "100000", "--prompt-ids", "1,2"], "--max-tokens 100000 is invalid with a prompt of 2 tokens in "
                                                        "model.max_seq_len=8192: use 1..8190"),
    (["--sample-seed", "-1"], "--sample-seed -1 is invalid: use an integer >= 0"),
])
def test_options_generate_cannot_honour_are_refused(args, says, capsys):
    assert main(["generate", *args]) == 2
    assert says in capsys.readouterr().err


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
