"""`cent bench run` through the real entry point: user mistakes end with one line on stderr naming
what is wrong and the fix (no traceback), and a ShareGPT trace replays from the command line."""
from __future__ import annotations

import csv
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cent_serve.cli import main
from tests.in_process import cent_in_process

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 300
"""A hang guard only (the runs take seconds): a stuck replay fails the test instead of blocking."""


def bench_run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m cent_serve.cli bench run ARGS --out tmp_path/out` from the repository root."""
    cmd = [sys.executable, "-m", "cent_serve.cli", "bench", "run", *args, "--out", str(tmp_path / "out")]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)


@pytest.fixture
def bench_run_here(tmp_path, capfd, caplog):
    """`bench_run` in this process (`cent_in_process`), for a refusal: the real entry point's are
    test_dead_server_names_the_url_and_says_to_start_cent_serve's and the ShareGPT replay's."""
    return lambda *args: cent_in_process("bench", "run", *args, "--out", str(tmp_path / "out"), capfd=capfd,
                                         caplog=caplog)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single non-empty stderr line of a failed run (asserting there is exactly one)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cent bench run: error: "), lines[0]
    return lines[0]


def write_sharegpt(tmp_path: Path) -> Path:
    """Three conversations of two turns or more and one of a single turn (skipped by the reader)."""
    entries = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hello CENT, how fast are you?"},
                                      {"from": "gpt", "value": "Fast enough for Llama."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "héllo wörld"},
                                      {"from": "gpt", "value": "hi"},
                                      {"from": "human", "value": "a later turn, not sent"}]},
        {"id": "skipped", "conversations": [{"from": "human", "value": "no answer"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "x" * 40},
                                      {"from": "gpt", "value": "y" * 12}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries, ensure_ascii=False))
    return path


def free_port() -> int:
    """A port nothing listens on: bound once by the OS, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_format_names_the_known_formats(bench_run_here):
    line = one_error_line(bench_run_here("--numerics", "off", "--format", "parquet"))
    assert "--format 'parquet'" in line
    for fmt in ("vidur", "azure", "burstgpt", "mooncake", "sharegpt"):
        assert fmt in line


def test_sharegpt_without_a_rate_says_to_add_rate(tmp_path, bench_run_here):
    path = write_sharegpt(tmp_path)
    line = one_error_line(bench_run_here("--numerics", "off", "--trace", str(path)))
    assert str(path) in line and "--rate" in line
    assert "count_tokens" not in line  # no Python-API advice on the command line


def test_missing_trace_file_names_the_path(tmp_path, bench_run_here):
    missing = tmp_path / "nope.csv"
    line = one_error_line(bench_run_here("--numerics", "off", "--trace", str(missing)))
    assert "--trace" in line and str(missing) in line


def test_synthetic_arrivals_for_a_timestamped_trace_are_refused(tmp_path, bench_run_here):
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,8,4\n0.5,8,4\n")
    line = one_error_line(bench_run_here("--numerics", "off", "--trace", str(trace), "--synthetic", "poisson",
                                         "--rate", "2"))
    assert "--synthetic" in line and "drop" in line


def test_dead_server_names_the_url_and_says_to_start_cent_serve(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(bench_run("--url", url, "--num-requests", "2", "--no-plots", tmp_path=tmp_path))
    assert url in line and "cent serve" in line


def test_url_without_a_scheme_is_a_clear_error(bench_run_here):
    line = one_error_line(bench_run_here("--url", "127.0.0.1:8000", "--num-requests", "2"))
    assert "127.0.0.1:8000" in line and "http://" in line


def test_sharegpt_replays_with_a_rate_and_the_models_tokenizer(tmp_path):
    path = write_sharegpt(tmp_path)
    proc = bench_run("--numerics", "off", "--trace", str(path), "--rate", "5", "--no-plots", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 3 and summary["failed"] == 0 and summary["failure_reasons"] == {}
    with open(out / "requests.csv") as f:
        rows = {r["request_id"]: r for r in csv.DictReader(f)}
    # the tiny model's byte tokenizer: one token per UTF-8 byte, the prompt with its BOS (as vLLM counts)
    assert int(rows["trace-b"]["num_prompt_tokens"]) == len("héllo wörld".encode()) + 1
    assert int(rows["trace-c"]["num_prompt_tokens"]) == 41
    assert int(rows["trace-c"]["num_output_tokens"]) == 12 + 1  # the answer counted with a BOS too, as vLLM does
    assert all(r["finish_reason"] == "length" for r in rows.values())
    arrivals = sorted(float(r["arrival_s"]) for r in rows.values())
    assert arrivals[0] == 0.0 and arrivals[-1] > 0.0  # Poisson arrivals, not all at once


TRACES = {  # name -> contents, for the flag and file errors below
    "empty.csv": "", "header.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n",
    "empty.jsonl": "", "empty.json": "[]",
    "one.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,8,4\n",
    "unsorted.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,8,4\n0.5,8,4\n0.0,8,4\n",
    "two.jsonl": '{"timestamp": 0, "input_length": 8, "output_length": 4}\n'
                 '{"timestamp": 500, "input_length": 8, "output_length": 4}\n',
    "lengths.csv": "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n100,20,120,5.0\n30,3,33,10.0\n",
    "conv.json": json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                           {"from": "gpt", "value": "hello"}]}]),
}
PYTHON_NAMES = ("fmt", "num_requests", "request_rate", "time_scale", "max_prompt_tokens", "start_s", "None")


@pytest.mark.parametrize("command, args, expected", [
    ("run", ["--trace", "empty.csv"], "empty.csv is empty: a CSV trace needs a header row"),
    ("run", ["--trace", "one.csv", "--format", "azure"],
     "one.csv:1: the header lacks the azure column(s) 'TIMESTAMP', 'ContextTokens', 'GeneratedTokens': it is a "
     "vidur header: give vidur as the format (--format), or leave it out to detect it"),
    ("run", ["--trace", "header.csv", "--rate", "2"], "header.csv has no requests: a header and no rows"),
    ("run", ["--trace", "header.csv"], "header.csv has no requests"),
    ("run", ["--trace", "empty.jsonl", "--rate", "2"], "empty.jsonl has no requests"),
    ("run", ["--trace", "empty.json", "--rate", "2"], "empty.json has no requests"),
    ("run", ["--trace", "one.csv", "--start-s", "5"], "--start-s=5.0 is past the end of {dir}/one.csv: its "
     "requests arrive 0 to 0 s after its first one (--start-s counts from there, not on the trace's own clock): "
     "use a smaller --start-s"),
    ("run", ["--trace", "two.jsonl", "--start-s", "0.6", "--rate", "2"], "--start-s=0.6 is past the end of "
     "{dir}/two.jsonl: its requests arrive 0 to 0.5 s after its first one"),
    ("run", ["--trace", "unsorted.csv"], "unsorted.csv:3: column 'arrived_at' = '0.5' is earlier than the row "
                                         "before (1.0): sort the file by 'arrived_at'"),
    ("run", ["--num-requests", "-5"],
     "--num-requests=-5 is invalid: use a count >= 1, or leave it out for the whole trace"),
    ("run", ["--max-prompt-tokens", "0"], "--max-prompt-tokens=0 is invalid: use a cap >= 1, or leave it out"),
    ("run", ["--time-scale", "-1"], "--time-scale=-1.0 is invalid: use a finite factor > 0"),
    ("run", ["--rate", "0"], "--rate=0.0 is invalid: use a finite rate > 0 in requests/s, or leave it out"),
    ("run", ["--synthetic", "poisson", "--rate", "1", "--num-requests", "3", "--prompt-len", "0"],
     "--prompt-len=0 is invalid: use a length >= 1"),
    ("run", ["--trace", "one.csv", "--rate", "1"], "--rate=1.0 cannot be applied: "),
    ("compare", ["--trace", "one.csv", "--rates", "1,2"],
     "--rates=1.0 cannot be applied: {dir}/one.csv has only 1 request; rescaling needs at least two requests"),
    ("sweep", ["--trace", "one.csv", "--rates", "1,2"], "--rates=1.0 cannot be applied: "),
    # flags that would not shape the requests, refused alike for every source
    ("run", ["--trace", "one.csv", "--burstiness", "0.2"], "--burstiness is the shape of --synthetic gamma "
     "arrivals; --trace {dir}/one.csv (vidur) has its own arrival times: drop --burstiness"),
    ("run", ["--trace", "two.jsonl", "--burstiness", "0.2"], "--trace {dir}/two.jsonl (mooncake) has its own "
     "arrival times: drop --burstiness"),
    ("run", ["--trace", "conv.json", "--rate", "2", "--burstiness", "0.2"], "--burstiness is the shape of "
     "--synthetic gamma arrivals; these are Poisson: add --synthetic gamma or drop --burstiness"),
    ("run", ["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--burstiness", "0.2"],
     "these are Poisson: add --synthetic gamma or drop --burstiness"),
    ("run", ["--trace", "one.csv", "--output-len", "3"], "--output-len sets the length of --synthetic requests "
     "without --trace; --trace {dir}/one.csv (vidur) has its own lengths: drop --output-len (to cap them, "
     "--max-output-tokens)"),
    ("run", ["--trace", "two.jsonl", "--prompt-len", "10"], "--prompt-len sets the length of --synthetic requests "
     "without --trace; --trace {dir}/two.jsonl (mooncake) has its own lengths: drop --prompt-len"),
    ("run", ["--trace", "conv.json", "--synthetic", "gamma", "--rate", "2", "--prompt-len", "10"],
     "--trace {dir}/conv.json (sharegpt) has its own lengths: drop --prompt-len"),
    ("run", ["--prompt-len", "10"], "the shipped sample trace (no --trace) has its own lengths: drop --prompt-len"),
    ("run", ["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--format", "vidur"],
     "--format names the format of a --trace file: add --trace FILE or drop --format"),
    # --rate and --time-scale: one or the other, whatever sets the arrivals
    ("run", ["--trace", "two.jsonl", "--rate", "2", "--time-scale", "2"],
     "--time-scale=2.0 is invalid: give either --time-scale or --rate, not both"),
    ("run", ["--trace", "conv.json", "--rate", "2", "--time-scale", "2"],
     "--time-scale=2.0 is invalid: give either --time-scale or --rate, not both"),
    ("run", ["--synthetic", "gamma", "--rate", "2", "--num-requests", "3", "--time-scale", "2"],
     "--time-scale=2.0 is invalid: give either --time-scale or --rate, not both"),
    ("sweep", ["--synthetic", "poisson", "--num-requests", "3", "--time-scale", "2", "--rates", "1,2"],
     "--time-scale=2.0 is invalid: give either --time-scale or --rates, not both"),
    ("run", ["--trace", "one.csv", "--lengths-from", "two.jsonl"], "--lengths-from sets the length of --synthetic "
     "requests without --trace; --trace {dir}/one.csv (vidur) has its own lengths: drop --lengths-from"),
    ("run", ["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--lengths-from", "two.jsonl",
             "--output-len", "4"], "--lengths-from draws both lengths from {dir}/two.jsonl's rows: drop --output-len"),
    ("run", ["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--lengths-from", "conv.json"],
     "--lengths-from {dir}/conv.json is ShareGPT, which has no token counts"),
    ("run", ["--synthetic", "poisson", "--rate", "2", "--num-requests", "3", "--lengths-from", "nowhere.csv"],
     "--lengths-from 'nowhere.csv' is neither a file nor a shipped trace"),
    # a CSV of lengths only (Vidur's length traces) is --lengths-from's, not a trace to replay
    ("run", ["--trace", "lengths.csv"], "--trace {dir}/lengths.csv: the file has lengths only (vidur's "
     "num_prefill_tokens, num_decode_tokens), no arrival column 'arrived_at': use it with --synthetic poisson "
     "--rate R --num-requests N --lengths-from {dir}/lengths.csv"),
    ("sweep", ["--trace", "lengths.csv", "--rates", "1,2"], "--trace {dir}/lengths.csv: the file has lengths only "
     "(vidur's num_prefill_tokens, num_decode_tokens), no arrival column 'arrived_at': use it with --synthetic poisson "
     "--rates R1,R2 --num-requests N --lengths-from {dir}/lengths.csv"),
    ("compare", ["--trace", "lengths.csv", "--format", "vidur"], "--trace {dir}/lengths.csv: the file has lengths "
     "only (vidur's num_prefill_tokens, num_decode_tokens), no arrival column 'arrived_at': use it with --synthetic"),
    ("run", ["--trace", "conv.json", "--rate", "2", "--prompt-scale", "2"], "--prompt-scale 2 would lengthen the "
     "prompts of --trace {dir}/conv.json (sharegpt), which are their own text: use a scale of at most 1"),
    ("run", ["--trace", "one.csv", "--output-scale", "0"], "--output-scale=0.0 is invalid: use a finite factor > 0"),
    ("sweep", ["--trace", "two.jsonl", "--rate", "3", "--rates", "1,2"],
     "--rate 3 is one rate; bench sweep replays the trace at each of --rates: drop --rate"),
    # --url's flags in process changed nothing, silently (vLLM's --max-concurrency hint names --concurrency), and
    # --concurrency 0 held every request back for ever
    ("run", ["--trace", "one.csv", "--concurrency", "8"], "--concurrency 8 limits the requests in flight of a --url "
     "replay; in process the engine admits what its lanes and KV room hold: add --url URL or drop --concurrency"),
    ("run", ["--trace", "one.csv", "--api-key", "k"], "--api-key is the bearer key of a --url server: add --url URL "
     "or drop --api-key"),
    ("run", ["--trace", "one.csv", "--url", "http://127.0.0.1:9", "--concurrency", "0"], "--concurrency 0 is "
     "invalid: give 1 or more requests in flight"),
])
def test_trace_and_flag_errors_name_the_file_or_the_flag(tmp_path, capsys, command, args, expected):
    for name, text in TRACES.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in TRACES else a for a in args]
    assert main(["bench", command, "--numerics", "off", *args, "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cent bench {command}: error: "), lines
    assert expected.format(dir=tmp_path) in lines[0]
    assert not any(re.search(rf"\b{name}\b", lines[0]) for name in PYTHON_NAMES), lines[0]


def test_lengths_from_takes_a_csv_of_lengths_only(tmp_path):
    """Vidur's length traces (e.g. arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv) have no
    arrival column: --lengths-from needs only the lengths, and took none of them."""
    (tmp_path / "lengths.csv").write_text(TRACES["lengths.csv"])
    assert main(["bench", "run", "--numerics", "off", "--synthetic", "poisson", "--rate", "2", "--num-requests", "6",
                 "--lengths-from", str(tmp_path / "lengths.csv"), "--no-plots", "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {(int(r["num_prompt_tokens"]), int(r["num_output_tokens"])) for r in rows} <= {(100, 20), (30, 3)}


def test_a_gzipped_trace_replays_and_unreadable_ones_are_one_line(tmp_path, capsys):
    import gzip

    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"arrived_at,num_prefill_tokens,num_decode_tokens\n0,8,4\n"))
    assert main(["bench", "run", "--numerics", "off", "--trace", str(tmp_path / "t.csv.gz"), "--no-plots",
                 "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["completed"] == 1
    (tmp_path / "latin1.csv").write_bytes("arrived_at,num_prefill_tokens,num_decode_tokens,request_id\n"
                                          "0,8,4,caf\xe9\n".encode("latin-1"))
    (tmp_path / "traces").mkdir()
    capsys.readouterr()
    for trace, expected in (("latin1.csv", f"{tmp_path}/latin1.csv:2: byte 0xe9 at column 10: the file is not "
                                           "UTF-8 text: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"),
                            ("traces", f"--trace '{tmp_path}/traces' is a directory: give the path of a trace file "
                                       "in it")):
        assert main(["bench", "run", "--numerics", "off", "--trace", str(tmp_path / trace),
                     "--out", str(tmp_path / "bad")]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines == [f"cent bench run: error: {expected}"]


@pytest.mark.parametrize("command", ["run", "sweep", "paper", "compare"])
def test_an_error_names_the_bench_subcommand(tmp_path, capsys, command):
    """Errors of every bench subcommand began "cent bench: error:", where the other commands name
    themselves ("cent simulate: error:") and bench's unknown flags named the subcommand already."""
    assert main(["bench", command, "--numerics", "off", *(["--rates", "1"] if command == "sweep" else []),
                 "--num-requests", "0", "--out", str(tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cent bench {command}: error: --num-requests=0"), lines


@pytest.mark.parametrize("command", ["run", "sweep", "compare"])
def test_goodput_without_an_slo_is_refused(tmp_path, capsys, command):
    """`--goodput` alone gave no goodput and no word (it took zero values)."""
    with pytest.raises(SystemExit) as info:
        main(["bench", command, "--numerics", "off", *(["--rates", "1"] if command == "sweep" else []), "--goodput",
              "--out", str(tmp_path)])
    assert info.value.code == 2 and "--goodput: expected at least one argument" in capsys.readouterr().err


def test_compare_s_table_keeps_its_time_scale_beside_rates(tmp_path, capsys):
    """compare's table replays the trace as --time-scale shapes it; --rates are the plot's extra
    replays (it was refused as "--time-scale or --rates, not both", while --rate was taken)."""
    (tmp_path / "two.jsonl").write_text(TRACES["two.jsonl"])
    assert main(["bench", "compare", "--numerics", "off", "--trace", str(tmp_path / "two.jsonl"), "--time-scale",
                 "0.5", "--rates", "1,2", "--no-plots", "--out", str(tmp_path / "out")]) == 0
    bench = json.loads((tmp_path / "out" / "compare.json").read_text())["bench"]
    assert bench["time_scale"] == 0.5 and bench["rates"] == [1.0, 2.0]
    with open(tmp_path / "out" / "requests_cent.csv") as f:  # the table's replay: the 0.5 s gap halved
        assert [float(r["arrival_s"]) for r in csv.DictReader(f)] == [0.0, 0.25]
