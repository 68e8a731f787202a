"""run_in_process checks each request a script builds by hand (its own trace read into Request
records, as docs/python_api.md shows for the shipped ones): what the trace readers refuse or rename
in a file is refused here in one line, not replayed into figures that lose or bend requests."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.bench.request import Request
from cent_serve.bench.runner import run_in_process
from cent_serve.config import build_config


@pytest.fixture(scope="module")
def cfg():
    return build_config("tiny", devices=2, numerics="off")


@pytest.mark.parametrize("requests, says", [
    # the same id twice: one request's record replaced the other's (2 sent, 1 completed, 0 failed)
    ([Request("a", 0.0, 5, 3), Request("a", 0.1, 5, 3)],
     r"requests\[1\]\.request_id is a str \('a'\): give each request its own id \(requests\[0\] has it; "),
    # out of order: the late one was taken at the engine's clock, its queue time dropped
    ([Request("0", 1.0, 5, 3), Request("1", 0.0, 5, 3)],
     r"requests\[1\]\.arrival_s is a float \(0\.0\): .*before requests\[0\]'s \(1\.0\): sort the requests by arrival_s"),
    # epoch seconds: simulated time is one float, a millisecond TTFT lost its digits (0.9698 ms read 0.9727)
    ([Request("0", 1.7e9, 5, 3), Request("1", 1.7e9 + 0.5, 5, 3)],
     r"requests\[0\]\.arrival_s is a float \(1700000000\.0\): give seconds from the trace's start, 0 to 1e\+08"),
    ([Request("0", float("nan"), 5, 3)], r"requests\[0\]\.arrival_s is a float \(nan\)"),
    ([Request("0", -1.0, 5, 3)], r"requests\[0\]\.arrival_s is a float \(-1\.0\)"),
    # a float length failed deep inside: TypeError: slice indices must be integers
    ([Request("0", 0.0, 5.0, 3)], r"requests\[0\]\.num_prompt_tokens is a float \(5\.0\): give a whole number of tokens >= 0"),
    ([Request("0", 0.0, 5, -3)], r"requests\[0\]\.num_output_tokens is an int \(-3\): give a whole number of tokens >= 0"),
    ([Request("0", 0.0, 5, 3), {"arrival_s": 1.0}], r"requests\[1\] is a dict .*: give the trace's requests"),
    # not a number: TypeError: '<=' not supported between instances of 'float' and 'str'
    ([Request("0", "0.5", 5, 3)], r"requests\[0\]\.arrival_s is a str \('0\.5'\): give seconds from the trace's start as a number"),
    ([Request("0", None, 5, 3)], r"requests\[0\]\.arrival_s is None: give seconds"),
    # 1 and "1" are both the engine's trace-1: one record replaced the other (2 sent, 1 record)
    ([Request(1, 0.0, 5, 3), Request("1", 0.1, 5, 3)],
     r"requests\[1\]\.request_id is a str \('1'\): give each request its own id \(requests\[0\] has it as 1, the "
     r"engine's trace-1 too; "),
])
def test_a_request_the_trace_readers_would_refuse_is_refused_in_one_line(cfg, requests, says):
    with pytest.raises(ValueError, match=r"^run_in_process\(cfg, requests\): " + says) as err:
        run_in_process(cfg, requests, progress=False)
    assert "\n" not in str(err.value)


def test_requests_built_by_hand_each_get_a_record(cfg):
    """numpy's integers are whole numbers; equal arrivals are in order; every request is counted."""
    reqs = [Request("0", 0.0, np.int64(5), np.int32(3)), Request("1", 0.0, 7, 0), Request("2", 0.25, 9, 2)]
    result = run_in_process(cfg, reqs, progress=False)
    assert sorted(r.request_id for r in result.records) == ["trace-0", "trace-1", "trace-2"]
    assert all(r.finish_reason == "length" for r in result.records)


def test_a_list_is_checked_whole_before_anything_runs(cfg):
    """A list's requests are all checked first: with `total` given, its rounds were summed before its
    second item was looked at (AttributeError: 'dict' object has no attribute 'num_prompt_tokens'),
    and a bad last request was refused only after the ones before it had been replayed."""
    from cent_serve.engine import Engine

    with pytest.raises(ValueError, match=r"requests\[1\] is a dict"):
        run_in_process(cfg, [Request("0", 0.0, 5, 3), {"arrival_s": 1.0}], progress=False, total=2)
    engine = Engine(cfg)
    try:
        with pytest.raises(ValueError, match=r"requests\[2\]\.arrival_s is a float \(0\.5\): .*before requests\[1\]'s"):
            run_in_process(cfg, [Request("0", 0.0, 5, 3), Request("1", 1.0, 5, 3), Request("2", 0.5, 5, 3)],
                           progress=False, engine=engine)
        assert not engine.requests and engine.stats.generation_tokens == 0 and engine.stats.num_rounds == 0
    finally:
        engine.shutdown()
