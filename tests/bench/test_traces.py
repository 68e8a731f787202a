"""Trace readers and replay options: hand-written fixtures in each format's real layout."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cent_serve.bench import (SAMPLE_TRACE_NUM_REQUESTS, Request, TraceOptions, apply_options,
                              detect_format, iter_arrival_times_s, arrival_times_s, load_trace,
                              sample_trace_path)
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
    assert list(load_trace(path)) == [Request("0", 0.0, 100, 1), Request("1", 0.5, 200, 1),
                                      Request("2", 3.75, 300, 2)]  # output 0 clipped to 1


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
    assert [r.num_output_tokens for r in reqs] == [18, 1, 276]  # a failed request still asks 1


def test_mooncake_milliseconds_and_optional_hash_ids(tmp_path):
    path = write(tmp_path, "mooncake_trace.jsonl", """
        {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]}
        {"timestamp": 1500, "input_length": 6472, "output_length": 26}

        {"timestamp": 1502, "input_length": 8767, "output_length": 23, "hash_ids": []}
    """)
    assert detect_format(path) == "mooncake"
    assert list(load_trace(path)) == [Request("0", 0.0, 6955, 52), Request("1", 1.5, 6472, 26),
                                      Request("2", 1.502, 8767, 23)]


def test_sharegpt_first_exchange_and_synthetic_arrivals(tmp_path):
    entries = [
        {"id": "a1", "conversations": [{"from": "human", "value": "Hi there"},
                                       {"from": "gpt", "value": "Hello!"},
                                       {"from": "human", "value": "more"}]},
        {"id": "b2", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "c3", "conversations": [{"from": "gpt", "value": "stray"},
                                       {"from": "human", "value": "Why?"},
                                       {"from": "gpt", "value": "Because."}]},
        {"id": "d4", "conversations": []},
    ]
    path = tmp_path / "ShareGPT_V3.json"
    path.write_text(json.dumps(entries, indent=1))
    assert detect_format(path) == "sharegpt"
    reqs = list(load_trace(path, count_tokens=count_tokens,
                           arrivals_s=lambda: iter_arrival_times_s(rate=2.0, seed=3)))
    assert [r.request_id for r in reqs] == ["a1", "c3"]  # b2 and d4 have no human -> gpt pair
    assert [r.prompt for r in reqs] == ["Hi there", "Why?"]
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in reqs] == [(8, 6), (4, 8)]
    assert [r.arrival_s for r in reqs] == list(arrival_times_s(2, rate=2.0, seed=3))
    with pytest.raises(ValueError, match="count_tokens"):
        load_trace(path)


def test_unknown_header_asks_for_fmt(tmp_path):
    path = write(tmp_path, "x.csv", "time,prompt,output\n0,1,1")
    with pytest.raises(ValueError, match=r"x.csv:1: header .* fmt="):
        load_trace(path)
    with pytest.raises(ValueError, match=r"lacks the azure column"):
        list(load_trace(vidur_trace(tmp_path, [0.0]), fmt="azure"))


# --- bad rows ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, where, column, value", [
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,12x,1",
     3, "num_prefill_tokens", "12x"),
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n\n1,1,-4",
     4, "num_decode_tokens", "-4"),
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n3,1,1\n2.5,1,1",
     3, "arrived_at", "2.5"),
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\n"
     "2023-11-16 25:00:00.0,1,1", 3, "TIMESTAMP", "2023-11-16 25:00:00.0"),
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


def test_clipping_caps_lengths_and_lifts_zero_to_one(tmp_path):
    path = vidur_trace(tmp_path, GAPS_TIMES_S)
    reqs = list(load_trace(path, options=TraceOptions(max_prompt_tokens=450, max_output_tokens=3)))
    assert [r.num_prompt_tokens for r in reqs] == [100, 200, 300, 400] + [450] * 6
    assert [r.num_output_tokens for r in reqs] == [1, 1, 2, 3, 3, 3, 3, 3, 3, 3]


def test_rate_override_reads_the_source_twice_and_refuses_one_request(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return iter([Request("0", 0.0, 1, 1), Request("1", 4.0, 1, 1), Request("2", 8.0, 1, 1)])

    assert [r.arrival_s for r in apply_options(make, TraceOptions(request_rate=0.5))] == [0, 2, 4]
    assert len(calls) == 2
    list(apply_options(make, TraceOptions(time_scale=3.0)))
    assert len(calls) == 3
    with pytest.raises(ValueError, match="select at least two requests"):
        list(apply_options(make, TraceOptions(request_rate=1.0, num_requests=1)))


@pytest.mark.parametrize("kwargs, field", [
    (dict(time_scale=2.0, request_rate=3.0), "time_scale"), (dict(time_scale=0.0), "time_scale"),
    (dict(num_requests=0), "num_requests"), (dict(start_s=-1.0), "start_s"),
    (dict(max_output_tokens=0), "max_output_tokens"), (dict(request_rate=-2.0), "request_rate"),
])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}=.* is invalid: "):
        TraceOptions(**kwargs)


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
    assert reqs[0] == Request("0", 0.0, 374, 44)
    conv = SHARED_TRACES / "azure_conv_2023.csv"
    if conv.is_file():
        assert reqs == list(load_trace(conv, options=TraceOptions(num_requests=200)))
