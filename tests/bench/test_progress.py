"""An in-process replay's progress bar: its fill and time left go by request-rounds (a prefill chunk
or a decode token of a request in an engine round), the requests ended are counted beside them.
Every test feeds counts and elapsed seconds of its own (no wall clock)."""
from __future__ import annotations

import pytest

from cent_serve.bench import Request as TraceRequest
from cent_serve.bench import runner
from cent_serve.bench.runner import Progress, RequestRecord, WorkDone, request_rounds, run_in_process, work_eta_s, \
    work_left, work_pace
from cent_serve.config import CentConfig, ParallelConfig, model_preset


def test_the_time_left_comes_from_the_work_left_not_the_requests_ended():
    """An overloaded replay of 100 requests at 10 s: 96 offered, 90 of them refused at once (a full queue)
    and 2 finished, so tqdm said 10 s x 8/92 = 0.9 s were left by the requests ended. The work: 6 taken
    with 100 rounds each, 240 of their 600 done, 120 of them (and 12 offers, 2 taken) in the last 4 s:
    360 rounds left, and 4 requests to come at 200/12 rounds each, at 30 rounds a second."""
    then, now = WorkDone(6.0, 120, 400, 84), WorkDone(10.0, 240, 600, 96)
    points = [then, WorkDone(7.0, 150, 450, 87), WorkDone(8.0, 180, 500, 90), now]  # redraws: 30 rounds a second
    left = work_eta_s(points, total=100)
    assert work_left(now, then, 100) == pytest.approx(360 + 4 * 200 / 12)
    assert left == pytest.approx((360 + 4 * 200 / 12) / 30)
    assert left > 10 * (10.0 * (100 - 92) / 92)  # over ten times the estimate from the requests ended
    # nothing offered since `then`: the share taken of all offered so far
    assert work_left(WorkDone(10.0, 240, 600, 96), WorkDone(6.0, 120, 600, 96), 100) == pytest.approx(
        360 + 4 * 600 / 96)
    assert work_eta_s([*points[:-1], WorkDone(10.0, 600, 600, 100)], 100) == 0.0  # all offered, all done
    assert work_eta_s([WorkDone(6.0, 240, 400, 84), WorkDone(7.0, 240, 450, 87), WorkDone(8.0, 240, 500, 90),
                       WorkDone(10.0, 240, 600, 96)], 100) is None  # no pace to go by
    assert work_eta_s(points, None) is None
    # offered in request-rounds (the replay's are known): what is to come counts at its own size, the
    # share taken at the window's (half of the 2,400 rounds offered since `then` were taken)
    then, now = WorkDone(6.0, 120, 400, 8_000), WorkDone(10.0, 240, 1_600, 10_400)
    assert work_left(now, then, 20_000) == pytest.approx(1_360 + 9_600 * 0.5)


def test_a_prompt_s_rounds_are_work_too():
    """A request runs its prompt in chunks (CENT's default chunk is one token), the last chunk making the
    first token, then a round per other token."""
    assert request_rounds(1000, 250, 1) == 1249
    assert request_rounds(1000, 250, 512) == 2 + 249
    assert request_rounds(1, 1, 1) == 1


def test_a_one_off_stall_does_not_set_the_pace():
    """The first round took 20 s (numba compiling its kernels on a cold cache), the rounds after it ran at
    100 request-rounds a second, redrawn each second: at 25 s the time left is the work left at 100 a
    second. The ratio of the window's sums (580 rounds in 25 s) said 4.3 times that, and kept the stall
    until it left the window."""
    bar = Progress(10, "replay", enabled=False, by_work=True)
    for _ in range(10):
        bar.offer(1_000)  # all offered at once, all taken
    assert bar.eta_s(0.0) is None  # tqdm's first draw: no pace yet
    bar.advanced(80)
    bar.eta_s(20.0)
    for t in range(21, 26):
        bar.advanced(100)
        said = bar.eta_s(float(t))
    assert said == pytest.approx((10_000 - 580) / 100)
    # the first redraws after it: of one interval or two, the stall is half or more: no pace yet
    assert work_pace([WorkDone(0.0, 0, 0, 0), WorkDone(20.0, 80, 0, 0), WorkDone(21.0, 180, 0, 0)]) is None
    assert work_pace([WorkDone(0.0, 0, 0, 0), WorkDone(20.0, 80, 0, 0), WorkDone(21.0, 180, 0, 0),
                      WorkDone(22.0, 280, 0, 0)]) == 100


def _record(rid: str) -> RequestRecord:
    return RequestRecord(rid, 0.0, 8, 4, 0.0, 0.1, 0.4, "length")


def _three_of_four_ended(bar: Progress) -> None:
    """Two of four requests refused at once, one done in 100 rounds, the fourth 100 of its 300 rounds
    in; the bar redrawn."""
    bar.offer(100, 100)
    bar.offer(None, 200)
    bar.offer(None, 200)
    bar.offer(300, 300)
    bar.advanced(200)
    for rid in "abc":
        bar.done(_record(rid))
    bar.bar.refresh()


def test_the_fill_is_the_share_of_the_work_and_the_count_the_requests_ended(capsys):
    """3 of 4 requests ended (two refused at once, one done: 100 rounds), the fourth has 100 of its 300
    rounds run: the bar is a third full, not three quarters, and says 3/4 requests."""
    bar = Progress(4, "replay", by_work=True, total_rounds=800)
    _three_of_four_ended(bar)
    line = capsys.readouterr().err.strip().split("\r")[-1]
    assert " 50%|" in line and "| 3/4 [" in line, line  # 200 of the 400 rounds the taken requests run
    bar.advanced(200)
    bar.done(_record("d"))
    bar.close()
    line = capsys.readouterr().err.strip().split("\r")[-1]
    assert "100%|" in line and "| 4/4 [" in line and "<00:00" in line, line


def _keep_bars(monkeypatch) -> list[Progress]:
    """The bars run_in_process makes from now on, in order (its `Progress` kept as it is made)."""
    bars = []

    class Kept(Progress):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(runner, "Progress", Kept)
    return bars


def test_an_in_process_replay_tells_the_bar_its_work(monkeypatch):
    """run_in_process counts each request offered (its rounds when taken, nothing when refused), the
    replay's rounds up front, and each request-round as it runs: a queue of 1 refuses most of a burst,
    and at the end the rounds run are the rounds the requests taken needed, none left."""
    bars = _keep_bars(monkeypatch)
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    cfg.scheduler.max_waiting = 1
    reqs = [TraceRequest(str(i), 0.0, 16, 5 + i) for i in range(12)]
    result = run_in_process(cfg, reqs, progress=False, total=len(reqs))
    taken = [r for r in result.records if r.finish_reason != "rejected"]
    assert 0 < len(taken) < len(reqs)
    bar = bars[0]
    assert cfg.scheduler.prefill_chunk_tokens == 1  # a round a prompt token
    assert bar.offered == 12 and bar.admitted_work == sum(16 + r.num_output_tokens - 1 for r in taken)
    assert bar.total_rounds == bar.offered_work == sum(16 + 5 + i - 1 for i in range(12))
    assert bar.done_work == bar.admitted_work and bar.eta_s(1.0) == 0.0 and bar.fraction_done() == 1.0
    # an iterator's requests are not known before: the work to come goes by the requests offered
    run_in_process(cfg, iter(reqs), progress=False, total=len(reqs))
    assert bars[1].total_rounds is None and bars[1].offered_work == 12


def test_a_preempted_request_s_recompute_is_work_to_do(monkeypatch):
    """A KV cache of 16 blocks preempts requests, which prefill again (a round a token on CENT) what they
    had computed: the rounds run (4,463 here) were counted, the work to do was not (3,955, the requests'
    rounds as admitted), so the bar filled and the time left shrank ahead of the replay. Now each
    preemption adds its recompute to the work (`Scheduler.rounds_redone`): at the end the two are equal."""
    bars = _keep_bars(monkeypatch)
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 0, 1), numerics="off")
    cfg.model.max_seq_len = 256
    cfg.scheduler.num_kv_blocks_override = 16
    reqs = [TraceRequest(f"r{i}", 0.01 * i, 40 + 30 * (i % 5), 30 + i % 7) for i in range(30)]
    from cent_serve.engine import Engine
    engine = Engine(cfg)
    try:
        result = run_in_process(cfg, reqs, progress=False, total=len(reqs), engine=engine)
    finally:
        engine.shutdown()
    assert all(r.ok for r in result.records) and engine.scheduler.num_preemptions > 0
    bar = bars[0]
    assert bar.admitted_work > bar.total_rounds  # the recompute is work the trace's rounds do not count
    assert bar.done_work == bar.admitted_work and bar.fraction_done() == 1.0


def test_the_pace_of_an_even_number_of_intervals_is_the_mean_of_the_middle_two():
    """Four redraw intervals at 10, 20, 40 and 80 rounds a second: the median is 30, not the upper middle 40."""
    points = [WorkDone(0.0, 0, 0, 0), WorkDone(1.0, 10, 0, 0), WorkDone(2.0, 30, 0, 0), WorkDone(3.0, 70, 0, 0),
              WorkDone(4.0, 150, 0, 0)]
    assert work_pace(points) == 30


def test_the_bar_s_rate_is_the_requests_ended_a_second(capsys):
    """The fill goes by the work, but the rate beside `n/total` is the requests ended a second: 3 ended in
    10 s is 0.30 req/s (tqdm shows 3.33 s/req), not tqdm's rate of the fill's n (2 of 4 at half the work: 0.20) while tqdm has no
    smoothed rate of its own (its updates came within its redraw interval). The bar's clock is set by hand."""
    bar = Progress(4, "replay", by_work=True, total_rounds=800)
    start = bar.bar.start_t
    bar.bar._time, bar.bar.mininterval = (lambda: start + 10.0), float("inf")  # no update sets tqdm's rate
    _three_of_four_ended(bar)
    line = capsys.readouterr().err.strip().split("\r")[-1]
    assert " 50%|" in line and "| 3/4 [" in line and "3.33s/req" in line, line  # 0.3 a second, shown inverted
    bar.close()


def test_a_request_failed_by_a_fault_leaves_no_work_behind(monkeypatch):
    """One replica's devices raise on the 12th round (a device's own error): the request in it fails,
    the two others are recomputed and finish. The failed one's unrun rounds stayed work to do and its
    failed round was counted as run: the replay ended with the bar at 90% (46 of 51 rounds) and time left
    to go. Now its rounds not run leave the work, the round it failed in is not counted: 45 of 45."""
    from tests.serving.utils import OK, breakable_replicas

    bars = _keep_bars(monkeypatch)
    cfg, (device,), rebuild, engine = breakable_replicas(1)
    rebuild.plan.put(OK)  # the re-created devices work
    rounds, submit = [0], device.submit

    def dies_once(plan):
        rounds[0] += 1
        if rounds[0] == 12:
            raise RuntimeError("the device actor died")
        return submit(plan)

    device.submit = dies_once
    reqs = [TraceRequest(f"r{i}", 0.0, 8, 10) for i in range(3)]
    try:
        result = run_in_process(cfg, reqs, progress=False, total=3, engine=engine)
    finally:
        engine.shutdown()
    assert [r.ok for r in result.records] == [False, True, True]
    bar = bars[0]
    assert bar.done_work == bar.admitted_work == 45 and bar.fraction_done() == 1.0 and bar.eta_s(100.0) == 0.0
