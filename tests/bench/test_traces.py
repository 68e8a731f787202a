"""Trace readers and replay options: hand-written fixtures in each format's real layout."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cent_serve.bench import (SAMPLE_TRACE_NUM_REQUESTS, Request, TraceLengths, TraceOptions, apply_options,
                              detect_format, iter_arrival_times_s, arrival_times_s, load_trace,
                              sample_trace_path)
from cent_serve.bench.errors import CLI_FLAGS, ParamError
from cent_serve.model.tokenizer import ByteTokenizer

SHARED_TRACES = Path("/work/shared/traces")


def write(tmp_path: Path, name: str, text: str) -> Path:
    """A trace file `name` holding `text` (dedented lines)."""
    path = tmp_path / name
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


def vidur_trace(tmp_path: Path, times_s: list[float], name: str = "t.csv") -> Path:
    """A Vidur CSV with the given arrivals; row i has prompt 100 * (i + 1) and output i."""
    rows = [f"{t},{100 * (i + 1)},{i}" for i, t in enumerate(times_s)]
    return write(tmp_path, name, "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                 + "\n".join(rows))


def count_tokens(text: str) -> int:
    return len(ByteTokenizer().encode(text, add_bos=False))


# --- each format -------------------------------------------------------------------------

def test_vidur_rows_arrive_from_the_first_row(tmp_path):
    path = vidur_trace(tmp_path, [10.5, 11.0, 14.25])
    assert detect_format(path) == "vidur"
    assert list(load_trace(path)) == [Request("0", 0.0, 100, 0, trace_arrival_s=10.5),  # output 0 kept
                                      Request("1", 0.5, 200, 1, trace_arrival_s=11.0),  # (the replay sends 1)
                                      Request("2", 3.75, 300, 2, trace_arrival_s=14.25)]


def test_azure_datetimes_keep_seven_fractional_digits(tmp_path):
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", """
        TIMESTAMP,ContextTokens,GeneratedTokens
        2023-11-16 18:15:46.6805900,374,44
        2023-11-16 18:15:47.0000001,396,109
        2023-11-16 18:16:00.1234567,879,55
        2023-11-17 00:00:00.0000000,91,16
    """)
    assert detect_format(path) == "azure"
    reqs = list(load_trace(path))
    expected_s = [0.0, 0.3194101, 13.4428667, 5 * 3600 + 44 * 60 + 13.3194100]
    assert [r.arrival_s for r in reqs] == pytest.approx(expected_s, abs=1e-9)
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [
        (374, 44), (396, 109), (879, 55), (91, 16)]


def test_azure_2024_datetimes_carry_a_zone_and_mix_with_2023s(tmp_path):
    path = write(tmp_path, "AzureLLMInferenceTrace_conv_1week.csv", """
        TIMESTAMP,ContextTokens,GeneratedTokens
        2024-05-10 00:00:00.009930+00:00,100,10
        2024-05-10 00:00:01.5+00:00,200,20
        2024-05-10 02:00:02.0000001+02:00,300,30
        2024-05-10 00:00:03.1234567,400,40
        2024-05-10 00:00:04+00:00,500,50
    """)  # 2023's shape (7 digits, no zone) is UTC too; +02:00 is 00:00:02 UTC
    assert detect_format(path) == "azure"
    reqs = list(load_trace(path))
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 1.49007, 1.9900701, 3.1135267, 3.99007], abs=1e-9)
    assert [r.num_prompt_tokens for r in reqs] == [100, 200, 300, 400, 500]


def test_burstgpt_columns_and_failed_responses(tmp_path):
    path = write(tmp_path, "BurstGPT_1.csv", """
        Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
        5,ChatGPT,472,18,490,Conversation log
        45,ChatGPT,1087,0,1087,Conversation log
        118,GPT-4,417,276,693,API log
    """)
    assert detect_format(path) == "burstgpt"
    reqs = list(load_trace(path))
    assert [r.arrival_s for r in reqs] == [0.0, 40.0, 113.0]
    assert [r.num_prompt_tokens for r in reqs] == [472, 1087, 417]
    assert [r.num_output_tokens for r in reqs] == [18, 0, 276]  # a failed request: 0 (the replay sends 1)


def test_mooncake_milliseconds_and_optional_hash_ids(tmp_path):
    path = write(tmp_path, "mooncake_trace.jsonl", """
        {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]}
        {"timestamp": 1500, "input_length": 6472, "output_length": 26}

        {"timestamp": 1502, "input_length": 8767, "output_length": 23, "hash_ids": []}
    """)
    assert detect_format(path) == "mooncake"
    assert list(load_trace(path)) == [Request("0", 0.0, 6955, 52, trace_arrival_s=0.0),
                                      Request("1", 1.5, 6472, 26, trace_arrival_s=1.5),
                                      Request("2", 1.502, 8767, 23, trace_arrival_s=1.502)]


def mooncake_lines(stamps: list) -> str:
    """Mooncake JSON lines at `stamps`, the lengths of its published opening rows, cycled."""
    lengths = [(6755, 500), (7319, 490), (7234, 794), (2287, 316)]
    return "\n".join(json.dumps({"timestamp": t, "input_length": lengths[i % 4][0],
                                  "output_length": lengths[i % 4][1], "hash_ids": [0, i + 1]})
                      for i, t in enumerate(stamps)) + "\n"


# mooncake_trace.jsonl's opening arrivals (0, 0, 3052, 3052 ms), then pairs and bursts at ~6 requests/s
MOONCAKE_MS = [0, 0, 3052, 3052] + [3052 + 160 * i + (i % 3 == 0) * 7 for i in range(1, 397)]


def _unit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "read as milliseconds" in r.getMessage()]


def test_a_real_mooncake_trace_in_milliseconds_reads_in_silence(tmp_path, caplog):
    path = tmp_path / "mooncake_trace.jsonl"
    path.write_text(mooncake_lines(MOONCAKE_MS))
    reqs = list(load_trace(path))
    assert len(reqs) == 400 and reqs[2].arrival_s == 3.052 and reqs[-1].arrival_s == pytest.approx(66.419)
    assert list(load_trace(path, options=TraceOptions(num_requests=3)))[-1].arrival_s == 3.052
    assert not _unit_warnings(caplog)


@pytest.mark.parametrize("stamps", [[t / 1000 for t in MOONCAKE_MS],     # seconds, as floats
                                    [t // 1000 for t in MOONCAKE_MS]])   # whole seconds
def test_a_mooncake_trace_in_seconds_is_warned_about_with_the_fix(tmp_path, caplog, stamps):
    """Timestamps in seconds were read as milliseconds in silence: 400 requests in 66 "ms", every
    arrival 1000x too early. One warning names the unit and the fix; the fix (a time scale of 1000)
    replays them at their pace in silence, and so does a rate, which sets the pace whatever the unit."""
    path = tmp_path / "seconds.jsonl"
    path.write_text(mooncake_lines(stamps))
    reqs = list(load_trace(path, options=TraceOptions(num_requests=5)))
    assert reqs[-1].arrival_s == pytest.approx(stamps[4] / 1000)  # still read as written: a warning, not a guess
    said = _unit_warnings(caplog)
    assert len(said) == 1 and "\n" not in said[0], said
    assert f"{path}: its first 400 requests arrive at " in said[0]
    assert "if they are seconds, replay them with time_scale=1000 (cent bench: --time-scale 1000)" in said[0]
    caplog.clear()
    fixed = list(load_trace(path, options=TraceOptions(time_scale=1000)))
    assert fixed[-1].arrival_s == pytest.approx(stamps[-1])
    list(load_trace(path, options=TraceOptions(request_rate=5.0)))
    assert TraceLengths.from_trace(path).prompt_tokens[0] == 6755  # its lengths alone: no arrival replayed
    assert not _unit_warnings(caplog)


def test_sharegpt_turns_0_and_1_and_synthetic_arrivals(tmp_path, caplog):
    """vLLM's benchmark reads turn 0 as the prompt and turn 1's length as the output whoever speaks
    them (a conversation opening with the assistant's greeting, OpenAI's role names), and skips
    conversations of fewer than two turns."""
    entries = [
        {"id": "a1", "conversations": [{"from": "human", "value": "Hi there"},
                                       {"from": "gpt", "value": "Hello!"},
                                       {"from": "human", "value": "more"}]},
        {"id": "b2", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "c3", "conversations": [{"from": "gpt", "value": "stray"},
                                       {"from": "human", "value": "Why?"},
                                       {"from": "gpt", "value": "Because."}]},
        {"id": "d4", "conversations": []},
        {"id": "e5", "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A."}]},
    ]
    path = tmp_path / "ShareGPT_V3.json"
    path.write_text(json.dumps(entries, indent=1))
    assert detect_format(path) == "sharegpt"
    reqs = list(load_trace(path, count_tokens=count_tokens,
                           arrivals_s=lambda: iter_arrival_times_s(rate=2.0, seed=3)))
    assert [r.request_id for r in reqs] == ["a1", "c3", "e5"]  # b2 and d4 have fewer than two turns
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "2 conversations of fewer than two turns" in skipped[0] and "entries 1, 3" in skipped[0]
    assert [r.prompt for r in reqs] == ["Hi there", "stray", "Q"]
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [(8, 6), (5, 4), (1, 2)]
    assert [r.arrival_s for r in reqs] == list(arrival_times_s(3, rate=2.0, seed=3))
    with pytest.raises(ValueError, match="count_tokens"):
        load_trace(path)


def test_sharegpt_repeated_ids_name_one_request_each(tmp_path, caplog):
    """ShareGPT files repeat ids (a conversation split in parts, hand-made files): every request
    keeps a distinct id, else the replay's records (keyed by id) silently lost all but one."""
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    entries = [{"id": "a", "conversations": turns}, {"id": "a", "conversations": turns},
               {"id": "a#2", "conversations": turns}, {"id": "a", "conversations": turns},
               {"conversations": turns}, {"id": 4, "conversations": turns}]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(entries))
    reqs = list(load_trace(path, count_tokens=count_tokens, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    ids = [r.request_id for r in reqs]
    assert ids == ["a", "a#1", "a#2", "a#3", "4", "4#5"]
    assert len(set(ids)) == len(entries)
    warned = [r.getMessage() for r in caplog.records if "repeat" in r.getMessage()]
    assert len(warned) == 1 and "3 conversations repeat an earlier id ('a', 'a', '4')" in warned[0]


def test_a_csv_trace_s_own_request_ids_name_its_requests(tmp_path, caplog):
    """A CSV with a request_id column names its requests by it (requests.csv joins back to the
    user's trace), an empty one by the row's index; a repeat, or an id equal to an index-named
    row's, is `<id>#<row>` with one warning, also when --num-requests stops the reader early."""
    path = write(tmp_path, "ids.csv", "request_id,arrived_at,num_prefill_tokens,num_decode_tokens\n"
                 "q-7,0.0,5,2\nq-8,0.5,5,2\n,1.0,5,2\nq-7,1.5,5,2\n2,2.0,5,2\n")
    assert [r.request_id for r in load_trace(path)] == ["q-7", "q-8", "2", "q-7#3", "2#4"]
    warned = [r.getMessage() for r in caplog.records if "repeat" in r.getMessage()]
    assert len(warned) == 1 and "2 rows repeat an earlier id ('q-7', '2'): sent as <id>#<row>" in warned[0]
    caplog.clear()
    assert [r.request_id for r in load_trace(path, "vidur", TraceOptions(num_requests=4))][-1] == "q-7#3"
    assert sum("repeat" in r.getMessage() for r in caplog.records) == 1
    assert [r.request_id for r in load_trace(vidur_trace(tmp_path, [0.0, 1.0]))] == ["0", "1"]  # no column


def test_sharegpt_repeated_ids_are_all_replayed(tmp_path):
    from cent_serve.bench.runner import run_in_process
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    turns = [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "a reply"}]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([{"id": "same", "conversations": turns}] * 6))
    reqs = list(load_trace(path, count_tokens=count_tokens, arrivals_s=lambda: iter_arrival_times_s(100.0, seed=0)))
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(num_devices=8), numerics="off")
    result = run_in_process(cfg, reqs, progress=False)
    assert len(result.records) == 6 and all(r.ok for r in result.records)


def test_sharegpt_empty_texts_have_no_tokens(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"id": "e", "conversations": [{"from": "human", "value": ""},
                                                               {"from": "gpt", "value": ""}]}]))
    with_bos = lambda text: count_tokens(text) + 1  # noqa: E731 (as the CLI counts ShareGPT)
    reqs = list(load_trace(path, count_tokens=with_bos, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [(0, 0)]  # not the BOS's 1


@pytest.mark.parametrize("name, text", [
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'),
    ("s.json", '[{"id": "0", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "x"}]}]'),
])
def test_a_byte_order_mark_is_read_in_every_format(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    reqs = list(load_trace(path, count_tokens=count_tokens, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert [(r.arrival_s, r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [(0.0, 5, 1)]


@pytest.mark.parametrize("name, text", [
    ("v.csv.gz", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n"),
    ("m.jsonl.gz", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'),
    ("m.json.gz", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'),
    ("s.json.gz", '[{"id": "0", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "x"}]}]'),
    ("gzipped-without-a-gz-suffix.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n"),
])
def test_a_gzipped_trace_is_read_in_every_format(tmp_path, name, text):
    import gzip

    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()))
    reqs = list(load_trace(path, count_tokens=count_tokens, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert [(r.arrival_s, r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [(0.0, 5, 1)]


@pytest.mark.parametrize("name, compress", [("v.csv", False), ("v.csv.gz", True), ("s.json", False)])
def test_a_file_that_is_not_utf8_names_the_line_and_the_fix(tmp_path, name, compress):
    import gzip

    if name.endswith(".json"):
        text = '[{"id": "0", "conversations": [\n{"from": "human", "value": "caf\xe9"}]}]'
    else:
        text = "arrived_at,num_prefill_tokens,num_decode_tokens,request_id\n0,5,1,a\n1,5,1,caf\xe9\n"
    data = text.encode("latin-1")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if compress else data)
    line = 2 if name.endswith(".json") else 3
    with pytest.raises(ValueError) as exc:
        list(load_trace(path, count_tokens=count_tokens, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert str(exc.value).startswith(f"{path}:{line}: byte 0xe9 at column ")
    assert "not UTF-8 text: save it as UTF-8" in str(exc.value)


def test_random_bytes_and_a_damaged_gzip_file_are_one_line_errors(tmp_path):
    import gzip

    noise = tmp_path / "noise.csv"
    noise.write_bytes(bytes(range(256)) * 4)  # line 2 starts after byte 0x0a
    with pytest.raises(ValueError, match=rf"^{noise}:2: byte 0x80 at column 118: the file is not UTF-8 text"):
        list(load_trace(noise))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(b"arrived_at,num_prefill_tokens,num_decode_tokens\n" + b"0,5,1\n" * 1000)[:60])
    with pytest.raises(ValueError, match=rf"^{cut} is a damaged gzip file \(.*\): compress the trace again"):
        list(load_trace(cut))


def test_a_directory_is_named_as_one(tmp_path):
    from cent_serve.bench import resolve_trace

    with pytest.raises(ValueError, match=rf"--trace '{tmp_path}' is a directory: give the path of a trace file"):
        resolve_trace(str(tmp_path))
    with pytest.raises(ValueError, match=rf"trace '{tmp_path}' is a directory"):
        load_trace(tmp_path)


@pytest.mark.parametrize("text, fmt, python, cli", [
    ("time,prompt,output\n0,1,1", None, r"x.csv:1: header .* name the format with fmt=",
     "name the format with --format"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1", "azure",
     r"x.csv:1: the header lacks the azure column\(s\) 'TIMESTAMP', 'ContextTokens', 'GeneratedTokens': "
     r"it is a vidur header: give vidur as the format \(fmt\), or None to detect it",
     "give vidur as the format (--format), or leave it out to detect it"),
    ("Timestamp,Request tokens\n0,1", "burstgpt", r"x.csv:1: the header lacks the burstgpt column\(s\) "
     r"'Response tokens': rename the column\(s\), or give the file's own format with fmt= \(or None to detect "
     r"it\)$", "give the file's own format with --format (or leave it out to detect it)"),
])
def test_header_errors_name_the_columns_and_fmt_or_the_flag(tmp_path, text, fmt, python, cli):
    path = write(tmp_path, "x.csv", text)
    with pytest.raises(ParamError, match=python) as info:
        list(load_trace(path, fmt))
    assert cli in info.value.render(CLI_FLAGS) and "fmt" not in info.value.render(CLI_FLAGS)


@pytest.mark.parametrize("name, text, fmt, message", [
    ("e.csv", "", None, "e.csv is empty: a CSV trace needs a header row"),
    ("e.csv", "\n \n", "vidur", "e.csv is empty: a CSV trace needs a header row"),
    ("h.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n\n", None,
     "h.csv has no requests: a header and no rows"),
    ("e.jsonl", "\n", None, "e.jsonl has no requests"),
    ("e.json", "[]", None, "e.json has no requests: the list of conversations is empty"),
    ("e.json", '[{"conversations": [{"from": "human", "value": "hi"}]}]', None,
     "e.json has no requests: none of its 1 conversations has two turns (a prompt and an answer)"),
])
@pytest.mark.parametrize("rate", [None, 2.0])
def test_a_file_without_requests_says_so(tmp_path, name, text, fmt, message, rate):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        list(load_trace(path, fmt, TraceOptions(request_rate=rate), count_tokens=count_tokens,
                        arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert str(info.value).startswith(f"{path}") and message in str(info.value)


@pytest.mark.parametrize("name, text, where, message", [
    ("u.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,1,1\n0.5,1,1\n0.0,1,1", 3,
     "column 'arrived_at' = '0.5' is earlier than the row before (1.0): sort the file by 'arrived_at'"),
    ("u.jsonl", '{"timestamp": 9, "input_length": 5, "output_length": 1}\n'
     '{"timestamp": 3, "input_length": 5, "output_length": 1}', 2,
     "column 'timestamp' = 3 is earlier than the line before (9): sort the file by 'timestamp'"),
])
def test_unsorted_arrivals_name_both_values(tmp_path, name, text, where, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    assert str(info.value) == f"{path}:{where}: {message}"


# --- bad rows ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, where, column, value", [
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,12x,1",
     3, "num_prefill_tokens", "12x"),
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n\n1,1,-4",
     4, "num_decode_tokens", "-4"),
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\n"
     "2023-11-16 25:00:00.0,1,1", 3, "TIMESTAMP", "2023-11-16 25:00:00.0"),
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,1,1\n"
     "2024-05-10 00:00:01.5+25:00,1,1", 3, "TIMESTAMP", "2024-05-10 00:00:01.5+25:00"),
    ("b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
     "5,ChatGPT,472,18.5,490,Conversation log", 2, "Response tokens", "18.5"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
     '{"timestamp": 9, "input_length": "many", "output_length": 1}', 2, "input_length", "many"),
])
def test_bad_rows_name_file_line_column_value_and_fix(tmp_path, name, text, where, column, value):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    message = str(info.value)
    assert f"{path}:{where}: column {column!r} = {value!r} is invalid: " in message
    assert len(message.split("is invalid: ")[1]) > 10  # the fix


@pytest.mark.parametrize("rows, message", [
    ("0,1,1\n1,1", "the row has 2 fields, the header 3: write one value per column"),
    ("0,1,1\n1,1,5,7", "the row has 4 fields, the header 3: write one value per column (quote a value"),  # was read
])
def test_a_row_of_too_few_or_too_many_fields_is_refused(tmp_path, rows, message):
    path = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    assert str(info.value).startswith(f"{path}:3: {message}")


def test_a_trailing_comma_is_no_extra_field(tmp_path):
    path = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1,\n1,2,3,\n")
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in load_trace(path)] == [(1, 1), (2, 3)]


def test_bad_json_and_missing_keys(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 9, "input_length": 5}')
    with pytest.raises(ValueError, match=r"m.jsonl:2: no 'output_length' key"):
        list(load_trace(path))
    path = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '\n[0, 5, 1]')
    with pytest.raises(ValueError, match=r"m.jsonl:3: a JSON list, not a dict: write one"):
        list(load_trace(path))
    path = write(tmp_path, "s.json", '[{"id": "x", "conversations": [\n{"from": "human"]}]')
    with pytest.raises(ValueError, match=r"s.json:2: not JSON"):
        list(load_trace(path, count_tokens=len, arrivals_s=lambda: iter_arrival_times_s(1.0)))


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_unfinished_jsonl_line_is_named_by_its_own_number(tmp_path, newline):
    """The decoder reports a line cut short at the newline after it: the next line's number."""
    path = tmp_path / "m.jsonl"
    path.write_bytes(('{"timestamp": 0, "input_length": 5, "output_length": 1}' + newline
                      + '{"timestamp": 9, "input_length": 5, "output_length": 1' + newline
                      + '{"timestamp": 12, "input_length": 5, "output_length": 1}' + newline).encode())
    with pytest.raises(ValueError, match=r"m.jsonl:2: not JSON"):
        list(load_trace(path))


def test_reading_is_lazy(tmp_path):
    path = vidur_trace(tmp_path, [0.0, 1.0, 2.0])
    path.write_text(path.read_text() + "3,oops,1\n")
    reqs = load_trace(path)
    assert next(reqs).request_id == "0"  # rows before the bad one arrive before any error
    with pytest.raises(ValueError, match=":5: column 'num_prefill_tokens'"):
        list(reqs)


# --- options -----------------------------------------------------------------------------

GAPS_TIMES_S = [0, 1, 3, 6, 10, 15, 21, 28, 36, 45]  # gap i is i + 1 s


@pytest.mark.parametrize("options, ids, arrivals_s", [
    (TraceOptions(), [str(i) for i in range(10)], GAPS_TIMES_S),
    (TraceOptions(skip_requests=2), [str(i) for i in range(2, 10)],
     [t - 3 for t in GAPS_TIMES_S[2:]]),
    (TraceOptions(start_s=5), [str(i) for i in range(3, 10)], [t - 6 for t in GAPS_TIMES_S[3:]]),
    (TraceOptions(start_s=5, skip_requests=6), ["6", "7", "8", "9"], [0, 7, 15, 24]),
    (TraceOptions(start_s=5, num_requests=3), ["3", "4", "5"], [0, 4, 9]),
    (TraceOptions(start_s=5, num_requests=3, time_scale=2.0), ["3", "4", "5"], [0, 8, 18]),
    # two gaps over 9 s at 1 req/s: every arrival times 2 / 9
    (TraceOptions(start_s=5, num_requests=3, request_rate=1.0), ["3", "4", "5"],
     [0, 8 / 9, 2.0]),
])
def test_options_compose_in_documented_order(tmp_path, options, ids, arrivals_s):
    reqs = list(load_trace(vidur_trace(tmp_path, GAPS_TIMES_S), options=options))
    assert [r.request_id for r in reqs] == ids
    assert [r.arrival_s for r in reqs] == pytest.approx(arrivals_s, abs=1e-12)


def test_start_s_counts_from_the_first_request_and_each_keeps_its_own_clock(tmp_path):
    """--start-s is seconds after the trace's first request, not on the file's clock (pinned: the
    simulated results depend on it); `trace_arrival_s` says where each request was in the file."""
    path = vidur_trace(tmp_path, [3.0, 3.5, 4.0, 6.0])
    reqs = list(load_trace(path, options=TraceOptions(start_s=1.0, time_scale=2.0)))
    assert [(r.request_id, r.arrival_s, r.trace_arrival_s) for r in reqs] == [("2", 0.0, 4.0), ("3", 4.0, 6.0)]
    azure = write(tmp_path, "a.csv", """
        TIMESTAMP,ContextTokens,GeneratedTokens
        2023-11-16 18:15:46.5,374,44
    """)
    assert next(load_trace(azure)).trace_arrival_s == 1700158546.5  # seconds since 1970 UTC
    with pytest.raises(ParamError) as exc:
        list(load_trace(path, options=TraceOptions(start_s=3.5)))
    assert str(exc.value) == (f"start_s=3.5 is past the end of {path}: its requests arrive 0 to 3 s after its first "
                              "one (start_s counts from there, not on the trace's own clock): use a smaller start_s")


def test_clipping_caps_lengths_and_keeps_zero(tmp_path):
    path = vidur_trace(tmp_path, GAPS_TIMES_S)
    reqs = list(load_trace(path, options=TraceOptions(max_prompt_tokens=450, max_output_tokens=3)))
    assert [r.num_prompt_tokens for r in reqs] == [100, 200, 300, 400] + [450] * 6
    assert [r.num_output_tokens for r in reqs] == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]


def test_length_scales_multiply_then_the_caps_clip(tmp_path):
    """SERVING.md's scale factors for prompt and output length: rounded, a length >= 1 never scaled to
    0 and 0 never raised, applied before the caps."""
    path = vidur_trace(tmp_path, GAPS_TIMES_S)  # prompts 100..1000, outputs 0..9
    reqs = list(load_trace(path, options=TraceOptions(prompt_scale=0.5, output_scale=0.25, max_prompt_tokens=450)))
    assert [r.num_prompt_tokens for r in reqs] == [50, 100, 150, 200, 250, 300, 350, 400, 450, 450]
    assert [r.num_output_tokens for r in reqs] == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]  # 0.25 and 0.5 round to 0: kept at 1
    up = list(load_trace(path, options=TraceOptions(output_scale=2.5)))
    assert [r.num_output_tokens for r in up] == [0, 2, 5, 8, 10, 12, 15, 18, 20, 22]
    assert [r.arrival_s for r in up] == [r.arrival_s for r in load_trace(path)]  # arrivals untouched


def test_an_arrival_past_what_a_float_clock_keeps_exact_is_refused_unless_compressed(tmp_path):
    """1e9 s after the first request: refused, naming the request and the fix (a 1e12 s gap gave a
    1.9 ms TTFT as 1.2 ms, a 1e20 s one a TTFT of 0); --time-scale brings it within 1e8 s."""
    path = vidur_trace(tmp_path, [0.0, 10.0, 1e9])
    with pytest.raises(ParamError) as err:
        list(load_trace(path))
    assert "request '2' arrives 1e+09 s after the first one, past the 1e+08 s" in err.value.render(CLI_FLAGS)
    assert "compress the arrivals with --time-scale" in err.value.render(CLI_FLAGS)
    assert [r.arrival_s for r in load_trace(path, options=TraceOptions(time_scale=0.05))] == [0.0, 0.5, 5e7]
    assert len(list(load_trace(path, options=TraceOptions(num_requests=2)))) == 2


def test_rate_override_reads_the_source_twice_and_refuses_one_request(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return iter([Request("0", 0.0, 1, 1), Request("1", 4.0, 1, 1), Request("2", 8.0, 1, 1)])

    assert [r.arrival_s for r in apply_options(make, TraceOptions(request_rate=0.5))] == [0, 2, 4]
    assert len(calls) == 2
    list(apply_options(make, TraceOptions(time_scale=3.0)))
    assert len(calls) == 3
    for options, why in [(TraceOptions(request_rate=1.0, num_requests=1), "num_requests=1 selects 1 request"),
                         (TraceOptions(request_rate=1.0, start_s=5.0), "start_s=5.0 leaves 1 of 3 requests"),
                         (TraceOptions(request_rate=1.0, skip_requests=2), "skip_requests=2 leaves 1 of 3")]:
        with pytest.raises(ParamError, match=f"^request_rate=1.0 cannot be applied: {why}.*at least two"):
            list(apply_options(make, options))
    with pytest.raises(ParamError, match="^request_rate=1.0 cannot be applied: the trace has only 1 request"):
        list(apply_options(lambda: iter([Request("0", 0.0, 1, 1)]), TraceOptions(request_rate=1.0)))


def test_span_progress_sees_the_rate_override_first_pass_only(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n4,5,5\n8,5,5\n")
    passed = []

    def progress(rows):
        for row in rows:
            passed.append(row.request_id)
            yield row

    reqs = load_trace(path, options=TraceOptions(request_rate=0.5), span_progress=progress)
    assert passed == ["0", "1", "2"]  # the first pass ran, through the wrapper, before any request is taken
    assert [r.arrival_s for r in reqs] == [0, 2, 4] and passed == ["0", "1", "2"]
    assert list(load_trace(path, span_progress=progress)) and passed == ["0", "1", "2"]  # no rate: no first pass


@pytest.mark.parametrize("kwargs, field", [
    (dict(time_scale=2.0, request_rate=3.0), "time_scale"), (dict(time_scale=0.0), "time_scale"),
    (dict(num_requests=0), "num_requests"), (dict(start_s=-1.0), "start_s"),
    (dict(max_output_tokens=0), "max_output_tokens"), (dict(request_rate=-2.0), "request_rate"),
    (dict(prompt_scale=0.0), "prompt_scale"), (dict(output_scale=float("inf")), "output_scale"),
])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ParamError, match=rf"^{field}=.* is invalid: ") as info:
        TraceOptions(**kwargs)
    assert info.value.render(CLI_FLAGS).startswith(f"{CLI_FLAGS[field]}=")  # the flag on the command line


@pytest.mark.parametrize("kwargs, python, cli", [
    (dict(num_requests=-5), "num_requests=-5 is invalid: use a count >= 1, or None for the whole trace",
     "--num-requests=-5 is invalid: use a count >= 1, or leave it out for the whole trace"),
    (dict(max_prompt_tokens=0), "max_prompt_tokens=0 is invalid: use a cap >= 1, or None for no cap",
     "--max-prompt-tokens=0 is invalid: use a cap >= 1, or leave it out for no cap"),
    (dict(time_scale=2.0, request_rate=3.0), "give either time_scale or request_rate, not both",
     "--time-scale=2.0 is invalid: give either --time-scale or --rate, not both"),
])
def test_option_errors_read_right_in_python_and_on_the_command_line(kwargs, python, cli):
    with pytest.raises(ParamError) as info:
        TraceOptions(**kwargs)
    assert python in str(info.value) and info.value.render(CLI_FLAGS) == cli


# --- the real traces and the shipped sample ----------------------------------------------

@pytest.mark.parametrize("name, num_requests", [("azure_conv_2023.csv", 19_366),
                                                ("azure_code_2023.csv", 8_819)])
def test_real_traces_read_fully(name, num_requests):
    path = SHARED_TRACES / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    reqs = list(load_trace(path))
    assert len(reqs) == len(rows) == num_requests
    mean_prompt = sum(int(r["num_prefill_tokens"]) for r in rows) / len(rows)
    mean_output = sum(int(r["num_decode_tokens"]) for r in rows) / len(rows)
    assert sum(r.num_prompt_tokens for r in reqs) / len(reqs) == pytest.approx(mean_prompt)
    assert sum(r.num_output_tokens for r in reqs) / len(reqs) == pytest.approx(mean_output)
    assert reqs[-1].arrival_s == pytest.approx(float(rows[-1]["arrived_at"]))
    assert 3_300 < reqs[-1].arrival_s < 3_700  # "~3,500 s" (docs/serving.md)
    assert 100 < mean_prompt < 5_000 and 10 < mean_output < 1_000
    rescaled = list(load_trace(path, options=TraceOptions(num_requests=1000, request_rate=10.0)))
    assert 999 / rescaled[-1].arrival_s == pytest.approx(10.0, rel=1e-12)


def test_sample_trace_ships_with_the_package():
    path = sample_trace_path()
    assert path.is_file() and path.parent.parent == Path(__import__("cent_serve.bench").bench
                                                         .__file__).parent
    reqs = list(load_trace(path))
    assert len(reqs) == SAMPLE_TRACE_NUM_REQUESTS
    assert reqs[0] == Request("0", 0.0, 374, 44, trace_arrival_s=0.0)
    conv = SHARED_TRACES / "azure_conv_2023.csv"
    if conv.is_file():
        assert reqs == list(load_trace(conv, options=TraceOptions(num_requests=200)))


@pytest.mark.parametrize("name", ["trace.gz", "mooncake_trace.txt", "trace"])
def test_json_traces_under_other_names_are_known_by_their_first_character(tmp_path, name):
    """A JSON trace whose name has no `.json`/`.jsonl` (a gzip'd `trace.gz`, a `.txt`) was read as a
    CSV and refused for its header: its first character says JSON; the first line, which format."""
    import gzip

    lines = '{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
    array = '\n  [{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}]'
    for kind, text in (("mooncake", lines), ("sharegpt", array)):
        data = text.encode()
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        assert detect_format(tmp_path / name) == kind
    (tmp_path / name).write_bytes(gzip.compress(lines.encode()) if name.endswith(".gz") else lines.encode())
    assert [(r.arrival_s, r.num_prompt_tokens) for r in load_trace(tmp_path / name)] == [(0.0, 10)]


def test_a_mooncake_trace_named_json_is_read_as_mooncake(tmp_path):
    """`.json` is ShareGPT's (one array); lines of objects under that name are Mooncake's, read as such
    (they were taken for ShareGPT and refused for want of --rate)."""
    lines = '{"timestamp": 0, "input_length": 10, "output_length": 5}\n{"timestamp": 250, "input_length": 7, ' \
            '"output_length": 3}\n'
    (tmp_path / "mc.json").write_text("\ufeff" + lines, encoding="utf-8")
    (tmp_path / "sg.json").write_text(' [{"id": "a", "conversations": []}]')
    (tmp_path / "obj.json").write_text('{\n  "conversations": []\n}\n')  # a pretty-printed object: not lines
    assert detect_format(tmp_path / "mc.json") == "mooncake" and detect_format(tmp_path / "sg.json") == "sharegpt"
    assert detect_format(tmp_path / "obj.json") == "sharegpt"
    got = list(load_trace(tmp_path / "mc.json"))
    assert [(r.arrival_s, r.num_prompt_tokens, r.num_output_tokens) for r in got] == [(0.0, 10, 5), (0.25, 7, 3)]


def test_a_header_is_matched_without_regard_to_case(tmp_path):
    path = write(tmp_path, "cap.csv", "Arrived_At,Num_Prefill_Tokens,Num_Decode_Tokens,Request_ID\n0,5,6,a\n1,7,8,b\n")
    assert detect_format(path) == "vidur"
    assert [(r.request_id, r.num_prompt_tokens, r.num_output_tokens) for r in load_trace(path)] == [
        ("a", 5, 6), ("b", 7, 8)]


def test_a_utf16_file_and_a_sharegpt_list_as_jsonl_are_named(tmp_path):
    """Excel's "Unicode text" is UTF-16 (the latin1 advice was wrong for it); a ShareGPT list saved
    as .jsonl is pointed at the sharegpt format."""
    path = tmp_path / "u16.csv"
    path.write_bytes("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"u16.csv is UTF-16 text: save it as UTF-8 \(e.g. iconv -f utf-16 -t utf-8"):
        list(load_trace(path))
    sg = write(tmp_path, "sg.jsonl", '[{"conversations": [{"from": "human", "value": "hi"}]}]\n')
    with pytest.raises(ValueError, match="a JSON list, not a dict: .*read it as the sharegpt format"):
        list(load_trace(sg))


@pytest.mark.parametrize("sep, what", [(";", "semicolons"), ("\t", "tabs")])
@pytest.mark.parametrize("fmt", [None, "vidur"])
def test_a_trace_separated_otherwise_than_by_commas_says_so(tmp_path, sep, what, fmt):
    """Excel saves "CSV" with semicolons where the comma is the decimal mark, and a TSV has tabs: the
    header is then one field, and the error said to name the format (--format), which cannot help
    (with --format vidur: to rename the columns). It names the separator and the fix instead."""
    path = write(tmp_path, "x.csv", sep.join(("arrived_at", "num_prefill_tokens", "num_decode_tokens")) + "\n0"
                 + sep + "10" + sep + "5")
    with pytest.raises(ValueError) as info:
        list(load_trace(path, fmt))
    assert str(info.value) == (f"{path}:1: the header {sep.join(('arrived_at', 'num_prefill_tokens', 'num_decode_tokens'))!r}"
                               f" is separated by {what}, not commas: save the trace as comma-separated (e.g. tr "
                               f"{sep!r} ',' < {path} > {tmp_path / 'x-comma.csv'})")


def test_a_csv_of_mooncake_s_keys_says_mooncake_is_json_lines(tmp_path):
    """A Mooncake trace turned into a CSV keeps its keys as columns: it was refused as matching no format,
    "or name the format with --format", which none fits (mooncake reads JSON lines). The error says so."""
    path = write(tmp_path, "m.csv", "timestamp,input_length,output_length,hash_ids\n0,10,5,\n1000,10,5,")
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    assert str(info.value) == (f"{path}:1: the columns timestamp, input_length, output_length are Mooncake's keys, whose "
                               'trace is JSON lines: write one {"timestamp": MS, "input_length": N, "output_length": N} '
                               "object a line (a .jsonl file), or make it vidur's columns: arrived_at (seconds: "
                               "timestamp / 1000, Mooncake's are milliseconds), num_prefill_tokens, num_decode_tokens")


@pytest.mark.parametrize("header, value, fix", [
    ("arrived_at,num_prefill_tokens,num_decode_tokens", "2024-05-01 12:00:00",
     "use seconds from the trace start, e.g. 4.314579, or for datetimes name the columns TIMESTAMP, "
     "ContextTokens, GeneratedTokens (the azure format)"),
    ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type", "2024-05-01 12:00:00",
     "use seconds, e.g. 5.0, or for datetimes name the columns TIMESTAMP, ContextTokens, GeneratedTokens "
     "(the azure format)"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens", "4.5",
     "use a datetime, e.g. 2023-11-16 18:15:46.6805900 or 2024-05-10 00:00:00.009930+00:00, or for seconds "
     "name the columns arrived_at, num_prefill_tokens, num_decode_tokens (the vidur format)"),
])
def test_a_time_of_the_other_kind_names_the_format_that_reads_it(tmp_path, header, value, fix):
    """A CSV of datetimes under Vidur's arrived_at (a trace exported with its wall-clock times) was told
    only to use seconds, as if the datetimes had to be converted by hand: the azure format reads them,
    and the error now names its columns; Azure's TIMESTAMP holding seconds names Vidur's."""
    rest = ",ChatGPT,10,5,15,Conversation log" if header.startswith("Timestamp") else ",10,5"
    path = write(tmp_path, "t.csv", f"{header}\n{value}{rest}")
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    column = header.split(",")[0]
    assert str(info.value) == f"{path}:2: column {column!r} = {value!r} is invalid: {fix}"


def test_sharegpt_conversations_as_json_lines_are_told_to_make_them_a_list(tmp_path):
    """A ShareGPT file saved as JSON lines (a conversation an object a line, as many datasets ship) is read
    as Mooncake's and was refused for want of a 'timestamp' key, a Mooncake field the user never meant to
    write: the error says the line is a ShareGPT conversation and a ShareGPT file is one list of them."""
    conv = '{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}'
    path = write(tmp_path, "sg.jsonl", conv + "\n" + conv)
    with pytest.raises(ValueError) as info:
        list(load_trace(path))
    assert str(info.value) == (f"{path}:1: a ShareGPT conversation (its 'conversations', no 'timestamp'), read as a "
                               "line of Mooncake's JSON-lines trace: a ShareGPT file is one JSON list of them, "
                               "[{...}, {...}], replayed with --rate")


@pytest.mark.parametrize("entry, what", [
    ('{"id": "a", "conversation": []}', "has no 'conversations' key (its keys: 'id', 'conversation')"),
    ('"hello"', "is a str, not an object"),
])
def test_a_sharegpt_entry_without_conversations_says_what_it_has(tmp_path, entry, what):
    """An entry whose key is misspelt was refused as "column 'conversations' = None is invalid", a value
    the file never held: the error names the keys it has instead."""
    path = write(tmp_path, "sg.json", f"[{entry}]")
    with pytest.raises(ValueError) as info:
        list(load_trace(path, count_tokens=len, arrivals_s=lambda: iter_arrival_times_s(1.0)))
    assert str(info.value) == (f"{path}: entry 0 {what}: each entry is "
                               '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}')
