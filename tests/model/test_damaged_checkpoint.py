"""A checkpoint directory with a damaged file (a download cut short, a hand edit gone wrong) is
refused in one line naming the file, what is wrong and the fix, never a library's traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cent_serve.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"


def copy_fixture(tmp_path: Path, name: str = "hf_tiny_llama") -> Path:
    """A writable copy of a shipped checkpoint, to damage."""
    return Path(shutil.copytree(DATA / name, tmp_path / name))


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run `cent argv`: exit code 2 and one line on stderr holding every needle."""
    assert main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


GENERATE = ["generate", "--prompt-ids", "1,5,6", "--max-tokens", "2"]


@pytest.mark.parametrize("damage, says", [
    (lambda data: data[:100_000], "incomplete metadata"),  # a download cut short
    (lambda data: b"", "header too small"),
    (lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 318200\n", "git lfs pull"),
])
# serve on port 0: a server already on 8000 (`make run` beside the tests) must not answer first
@pytest.mark.parametrize("command", [GENERATE, ["info"], ["serve", "--port", "0"]])
def test_a_damaged_safetensors_file_is_named_with_the_fix(tmp_path, capsys, damage, says, command):
    """safe_open's SafetensorError went up as a traceback from every command that reads the weights
    or their headers (`cent info` and `cent serve` check the headers before anything starts)."""
    ckpt = copy_fixture(tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    one_line_error(capsys, [command[0], "--model", str(ckpt), *command[1:]], f"{weights}: ", says)


def test_a_damaged_index_or_a_missing_shard_is_named_with_the_fix(tmp_path, capsys):
    """The index's JSON error did not name the file (json's bare "Expecting ..."), an index without
    weight_map was a KeyError traceback, and a shard the index lists but the directory lacks was
    a bare "No such file"."""
    ckpt = copy_fixture(tmp_path, "hf_tiny_llama_sharded")
    index = ckpt / "model.safetensors.index.json"
    good = index.read_text()
    index.write_text(good[: len(good) // 2])
    one_line_error(capsys, ["info", "--model", str(ckpt)], f"{index}: not valid JSON", "line ", "download it again")
    index.write_text('{"metadata": {}}')
    one_line_error(capsys, ["info", "--model", str(ckpt)], f"{index}: weight_map=None is invalid", "fix the file")
    index.write_text(good)
    (ckpt / "model-00002-of-00004.safetensors").unlink()
    for command in (["info"], GENERATE):
        one_line_error(capsys, [command[0], "--model", str(ckpt), *command[1:]],
                       f"{index}: lists shards missing from {ckpt} (1 of 4): model-00002-of-00004.safetensors: "
                       "download them")


@pytest.mark.parametrize("file, says", [
    ("tokenizer.json", "not a tokenizer the tokenizers library reads (EOF while parsing"),
    ("tokenizer_config.json", "not valid JSON ("),
])
@pytest.mark.parametrize("command", [["generate", "--prompt", "hi", "--max-tokens", "2"],
                                     ["serve", "--local", "--port", "0"], ["serve", "--port", "0"], ["info"]])
def test_a_damaged_tokenizer_file_is_named_with_the_fix(tmp_path, capsys, file, says, command):
    """tokenizer.json cut short was the tokenizers library's traceback ("Exception: EOF while
    parsing ..."), tokenizer_config.json's JSON error did not name the file. The preflight loads them:
    `cent info` said such a checkpoint runs, and `cent serve` on Ray met them after Ray started
    (this refusal comes before any Ray starts)."""
    ckpt = copy_fixture(tmp_path)
    damaged = ckpt / file
    damaged.write_text(damaged.read_text()[:100])
    one_line_error(capsys, [command[0], "--model", str(ckpt), *command[1:]], f"{damaged}: {says}",
                   "download it again")
