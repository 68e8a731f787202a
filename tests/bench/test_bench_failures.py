"""Failed requests where the user looks: reasons with counts and an example in summary.json, the
terminal table and the progress bar; SLO attainment over all requests (a failed one misses)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cent_serve.bench import Request as TraceRequest
from cent_serve.bench import sweep as sweep_mod
from cent_serve.bench.http_client import failure_reason
from cent_serve.bench.plots import fmt_in, latency_unit, plot_all
from cent_serve.bench.report import mapping_text, print_table, run_title, summarize
from cent_serve.bench.runner import DEVICE_FAULT, BenchResult, Progress, RequestRecord, Sample, run_in_process
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.request import Request, RequestParams, RequestRefused
from cent_serve.scheduler import QueueFull

STATUS = dict(model="llama2-70b", mapping=dict(mode="pipeline", devices=32, pp=80, tp=1, devices_used=27,
                                                replicas=1))


def done(rid: str, arrival_s: float, ttft_s: float, tokens: int = 11, tpot_s: float = 0.01) -> RequestRecord:
    """A completed record: first token `ttft_s` after arrival, then `tokens - 1` at `tpot_s`."""
    first = arrival_s + ttft_s
    times = [first + i * tpot_s for i in range(tokens)]
    return RequestRecord(rid, arrival_s, 32, tokens, arrival_s, first, times[-1], "length", token_times_s=times)


def refused(rid: str, arrival_s: float, exc: RequestRefused) -> RequestRecord:
    return RequestRecord.refused(rid, TraceRequest(rid, arrival_s, 32, 8), exc)


def mixed_records() -> list[RequestRecord]:
    """3 completed (TTFT 0.1, 0.2, 3 s), 2 context_exceeded, 1 queue_full, 1 device fault."""
    return [
        done("ok-0", 0.0, 0.1), done("ok-1", 1.0, 0.2), done("ok-2", 2.0, 3.0),
        refused("long-1", 1.5, RequestRefused("context_exceeded", "the prompt has 9000 tokens; first")),
        refused("long-0", 0.5, RequestRefused("context_exceeded", "the prompt has 8500 tokens; earliest")),
        refused("busy", 2.5, QueueFull("6 requests are waiting")),
        RequestRecord("fault", 3.0, 32, 2, 3.0, 3.1, 3.2, "error", error="device 3 died"),
    ]


def result_of(records: list[RequestRecord], status: dict | None = None) -> BenchResult:
    samples = [Sample(0.0, 0, 1, 0.01), Sample(2.0, 3, 4, 0.25), Sample(6.0, 0, 0, 0.0)]
    devices = [dict(device_id=i, replica=0, busy_s={"group0": 1.0 + i, "dma": 0.5}) for i in range(3)]
    return BenchResult(records, samples, devices, 6.0, 0.1, STATUS if status is None else status)


def test_summary_gives_each_failure_reason_a_count_and_the_first_example():
    s = summarize(result_of(mixed_records()))
    assert s["completed"] == 3 and s["failed"] == 4
    assert s["failure_reasons"] == {
        "context_exceeded": {"count": 2, "example": "the prompt has 8500 tokens; earliest"},  # first to arrive
        DEVICE_FAULT: {"count": 1, "example": "device 3 died"},
        "queue_full": {"count": 1, "example": "6 requests are waiting"},
    }
    assert list(s["failure_reasons"])[0] == "context_exceeded"  # most frequent first
    json.dumps(s)  # summary.json stays plain JSON


def test_slo_attainment_counts_failed_requests_as_missing():
    s = summarize(result_of(mixed_records()), {"ttft": 500.0})
    assert s["slo_attainment"] == pytest.approx(2 / 7)  # 2 of 3 completed meet it; 4 failed miss it
    assert s["request_goodput"] == pytest.approx(2 / s["duration"])


def test_duration_rates_and_energy_per_token_by_hand():
    """docs/serving.md's definitions written out: the duration runs from the first arrival of any
    request (a refused one here) to the last finish of a completed one; the rates are over it; the
    energy per token is every request's energy, the failed ones' too, over the completed ones' prompt
    and output tokens. (The test above divides by the summary's own duration.)"""
    first = refused("early", 0.0, RequestRefused("context_exceeded", "too long"))
    first.energy_mj = 5.0
    ok = [done("a", 1.0, 0.1), done("b", 1.5, 0.3, tokens=5)]  # finish 1.2 and 1.84
    ok[0].energy_mj, ok[1].energy_mj = 20.0, 11.0
    s = summarize(result_of([first, *ok]), {"e2el": 250.0})
    assert s["duration"] == pytest.approx(1.84)
    assert s["request_throughput"] == pytest.approx(2 / 1.84)
    assert s["output_throughput"] == pytest.approx((11 + 5) / 1.84)
    assert s["total_token_throughput"] == pytest.approx((2 * 32 + 11 + 5) / 1.84)
    assert s["request_goodput"] == pytest.approx(1 / 1.84)  # e2el 250 ms: a's 0.2 s, not b's 0.34 s
    assert s["energy_per_token_mj"] == pytest.approx((5.0 + 20.0 + 11.0) / (2 * 32 + 11 + 5))
    assert s["energy_j"] == pytest.approx(0.036)
    assert s["mean_tpot_ms"] == pytest.approx(10.0) and s["mean_e2el_ms"] == pytest.approx((200 + 340) / 2)


def test_a_run_where_nothing_completed_lasts_0_s_at_0_req_s():
    """Every request refused: duration 0 and every rate 0 (the duration read 1e-12, a made-up value)."""
    s = summarize(result_of([refused(str(i), float(i), RequestRefused("context_exceeded", "too long"))
                             for i in range(2)]), {"ttft": 500.0})
    assert s["duration"] == 0.0 and s["completed"] == 0 and s["failed"] == 2
    assert s["request_throughput"] == s["output_throughput"] == s["total_token_throughput"] == 0.0
    assert s["request_goodput"] == 0.0 and s["slo_attainment"] == 0.0


def test_refusals_keep_their_reason_codes():
    assert refused("x", 0.0, QueueFull("full")).finish_reason == "rejected"
    rec = refused("y", 0.0, RequestRefused("kv_capacity", "needs 9 KV blocks"))
    assert (rec.finish_reason, rec.failure_reason, rec.reason, rec.ok) == ("invalid", "kv_capacity", "kv_capacity",
                                                                            False)
    assert done("z", 0.0, 0.1).reason == ""


def test_a_device_fault_in_the_engine_is_reason_device_fault():
    req = Request("r", [1, 2, 3], RequestParams(max_tokens=4), 0.0, rng=np.random.default_rng(0),
                  finish_reason="error", error="the switch died")
    rec = RequestRecord.from_request(req)
    assert rec.failure_reason == DEVICE_FAULT and rec.error == "the switch died"


def test_in_process_refusals_are_grouped_by_the_engines_reason():
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    room = cfg.model.max_seq_len
    reqs = [TraceRequest("0", 0.0, 16, 4), TraceRequest("1", 0.001, room - 10, 20), TraceRequest("2", 0.002, 16, 4)]
    s = summarize(run_in_process(cfg, reqs, progress=False))
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["failure_reasons"]["context_exceeded"]["count"] == 1
    assert "max_tokens=20 does not fit" in s["failure_reasons"]["context_exceeded"]["example"]


def test_the_table_prints_each_reason_with_its_count_and_example(capsys):
    print_table(summarize(result_of(mixed_records()), {"ttft": 500.0}))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "context_exceeded" in x)
    assert " 2 " in line and "earliest" in line
    assert "device_fault" in out and "28.6% of all requests meet ttft <= 500 ms)" in out  # not a Python dict
    # a queue that overflowed: the figures are an overloaded system's, and the table says how to replay it
    assert "queue_full: the requests arrive faster than the server serves them; replay them slower" in out
    # a trace longer than the model's context: the engine's example says "shorten the prompt", which a
    # replay does with its flags
    assert "context_exceeded: clip the requests' lengths with --max-prompt-tokens and --max-output-tokens" in out


def test_the_progress_bar_counts_failures(capsys):
    bar = Progress(3, "replay")
    for rec in mixed_records()[2:5]:  # one completed, two refused
        bar.done(rec)
    bar.close()
    final = capsys.readouterr().err.strip().split("\r")[-1]  # the bar's last redraw
    assert bar.failed == 2 and "3/3" in final and "failed=2" in final, final


@pytest.mark.parametrize("status, err, reason", [
    (400, {"code": "context_length_exceeded", "message": "the prompt has 9000 tokens"}, "context_exceeded"),
    (429, {"code": None, "message": "the server is overloaded"}, "queue_full"),
    (400, {"code": "kv_capacity", "message": "x"}, "kv_capacity"),
    (400, {"code": None, "param": "max_tokens",
           "message": "max_tokens=20 does not fit: the prompt leaves 4 tokens of the model's context"},
     "context_exceeded"),
    (400, {"code": None, "param": "prompt", "message": "prompt token id 999 is outside the vocabulary"},
     "invalid_prompt"),
    (500, {"code": None, "message": "internal error"}, "server_error"),
    (500, {"code": "device_fault", "message": "the emulated devices of replica 0 failed"}, "device_fault"),
    # cent-serve's own: `code` the status (as vLLM's), the reason in `cent.code`
    (400, {"code": 400, "cent": {"code": "kv_capacity"}, "message": "x"}, "kv_capacity"),
    (400, {"code": 400, "cent": {"code": "context_length_exceeded"}, "message": "x"}, "context_exceeded"),
    (500, {"code": 500, "cent": {"code": "device_fault"}, "message": "x"}, "device_fault"),
    (503, {"code": 503, "cent": {"code": "no_replica"}, "message": "x"}, "server_error"),
    (400, {"code": 400, "cent": {"code": None}, "param": "n", "message": "n=0 is invalid: use 1..16"}, "bad_request"),
    # vLLM's: the status alone
    (400, {"code": 400, "type": "BadRequestError", "message": "This model's maximum context length is 4096 tokens"},
     "context_exceeded"),
])
def test_http_errors_map_to_the_engines_reason_names(status, err, reason):
    assert failure_reason(status, err) == reason


def test_the_distserve_goodput_is_the_highest_rate_with_at_least_90_percent(tmp_path, monkeypatch):
    """docs/serving.md: the highest swept rate at which at least 90% of requests meet the SLOs. At 1, 2
    and 4 req/s 10, 9 and 5 of 10 requests meet a 500 ms TTFT: the goodput is 2 (90% exactly counts).
    The sweep test of the CLI has one rate within the SLO, where the lowest qualifying rate or a strict
    > 90% gave the same answer."""
    def fake_run(cfg, requests, progress=True, warn=True, **kw):
        return result_of(requests)

    def records_at(rate: float) -> list[RequestRecord]:
        late = {1.0: 0, 2.0: 1, 4.0: 5}[rate]
        return [done(f"r-{i}", 0.1 * i, 3.0 if i < late else 0.1) for i in range(10)]

    monkeypatch.setattr(sweep_mod, "run_in_process", fake_run)
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    sweep = sweep_mod.run_sweep(cfg, records_at, [1.0, 2.0, 4.0], {"ttft": 500.0}, tmp_path, plots=False)
    assert [r["slo_attainment"] for r in sweep["rows"]] == [1.0, 0.9, 0.5]
    assert sweep["distserve_goodput_rate"] == 2.0


def test_sweep_attainment_counts_failed_requests(tmp_path, monkeypatch, capsys):
    """The defect: 119 of 200 failed and the sweep printed 100% (good / completed)."""
    def fake_run(cfg, requests, progress=True, warn=True, **kw):
        return result_of(requests)  # the "requests" are the records themselves

    def records_at(rate: float) -> list[RequestRecord]:
        ok = [done(f"ok-{i}", 0.1 * i, 0.1) for i in range(81)]
        if rate < 10:
            return ok
        return ok + [refused(f"busy-{i}", 9.0 + 0.01 * i, QueueFull("queue full")) for i in range(119)]

    monkeypatch.setattr(sweep_mod, "run_in_process", fake_run)
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    sweep = sweep_mod.run_sweep(cfg, records_at, [1.0, 20.0], {"ttft": 500.0}, tmp_path)
    low, high = sweep["rows"]
    assert low["slo_attainment"] == 1.0 and low["failed"] == 0
    assert high["slo_attainment"] == pytest.approx(81 / 200) and high["failed"] == 119
    assert high["failure_counts"] == {"queue_full": 119}
    assert sweep["distserve_goodput_rate"] == 1.0
    printed = capsys.readouterr().out
    assert "119 failed (queue_full 119)" in printed and "40.5% of all requests" in printed
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("attainment, goodput", [
    ([0.2, 0.2, 0.2, 0.2], None),  # a run's: the legend in the lower left covered 0.5 req/s and its label
    ([1.0, 0.95, 0.4, 0.05], 1.0),
    ([0.0, 0.0, 0.0, 0.0], None),
    ([1.0, 1.0, 1.0, 1.0], 4.0),
])
def test_the_attainment_legend_covers_no_point_or_label(tmp_path, monkeypatch, attainment, goodput):
    """sweep.png's SLO attainment panel: its legend sits where no point, rate label or axis text is."""
    rates = [0.5, 1.0, 2.0, 4.0]
    fig = _sweep_figure(tmp_path, monkeypatch, rates, [40.0 * r for r in rates], [470.0] * len(rates), attainment, goodput)
    ax = fig.axes[2]
    assert ax.get_title() == "SLO attainment vs rate"
    legend = ax.get_legend().get_window_extent()
    line = ax.lines[0]  # the attainment at each rate
    points = ax.transData.transform(line.get_xydata())  # the markers' centres, in pixels
    reach = legend.padded(line.get_markersize() / 2 * fig.dpi / 72)  # a marker within its radius is covered
    assert len(points) == len(rates) and not any(reach.contains(x, y) for x, y in points), (legend, points)
    labels = [t.get_window_extent() for t in ax.texts]  # "20%" above each point
    assert len(labels) == len(rates) and not any(legend.overlaps(b) for b in labels)
    assert not legend.overlaps(ax.get_window_extent())  # outside the panel: nothing it shows is covered
    axis_text = [ax.xaxis.label] + [t for t in ax.get_xticklabels() if t.get_text()]
    assert not any(legend.overlaps(t.get_window_extent()) for t in axis_text)
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1 and fig.bbox.y0 <= legend.y0  # in the file


def _sweep_figure(tmp_path, monkeypatch, rates, thr, p99_ttft, attainment, goodput):
    """sweep.png's figure, drawn (as savefig would) but not written."""
    from matplotlib.figure import Figure

    rows = [dict(rate=r, output_throughput=x, median_ttft_ms=80.0, p99_ttft_ms=y, median_tpot_ms=0.2,
                 p99_tpot_ms=0.27 + 0.001 * i, slo_attainment=a, completed=20, failed=0)
            for i, (r, x, y, a) in enumerate(zip(rates, thr, p99_ttft, attainment))]
    sweep = dict(rates=rates, slos_ms={"ttft": 300.0, "tpot": 5.0}, rows=rows, model="tiny", model_label="tiny",
                 hardware="cent", mapping=STATUS["mapping"], distserve_goodput_rate=goodput,
                 attainment_threshold=sweep_mod.DISTSERVE_ATTAINMENT)
    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    sweep_mod._plot_sweep(tmp_path, sweep)
    figs[0].draw_without_rendering()
    return figs[0]


SWEEPS = [  # rates, output throughput (tok/s), p99 TTFT (ms), attainment, goodput
    # a run's (tiny, 20 requests): 0.5 and 1 req/s at 44 and 87 tok/s, their labels overlapped
    ([0.5, 1.0, 2.0, 4.0, 8.0], [43.9, 86.6, 170.4, 329.8, 619.8], [470, 470, 470, 485, 485], [0.95] * 5, 8.0),
    ([1.0, 8.0, 32.0], [113.5, 848.9, 1976.2], [1080, 1140, 1180], [0.875, 0.875, 0.85], None),  # well apart
    ([0.25, 1.0, 4.0, 16.0, 64.0], [21.9, 86.6, 329.8, 1074.1, 2159.8], [470, 470, 485, 497, 504],  # log-spaced
     [0.95, 0.95, 0.95, 0.85, 0.85], 4.0),
    ([1.0, 2.0, 4.0, 8.0], [60.0, 60.0, 60.0, 60.0], [900, 1800, 3600, 7200], [1.0, 0.5, 0.2, 0.0], 1.0),  # saturated
]


@pytest.mark.parametrize("rates, thr, p99_ttft, attainment, goodput", SWEEPS)
def test_sweep_rate_labels_do_not_overlap(tmp_path, monkeypatch, rates, thr, p99_ttft, attainment, goodput):
    """sweep.png's TTFT and TPOT panels: no rate label covers another or the legend, and every rate is named."""
    fig = _sweep_figure(tmp_path, monkeypatch, rates, thr, p99_ttft, attainment, goodput)
    for ax in fig.axes[:2]:
        boxes = [t.get_window_extent() for t in ax.texts]
        assert boxes, ax.get_title()
        pairs = [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i, a in enumerate(boxes)
                 for j, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]
        assert not pairs, (ax.get_title(), pairs)
        legend = ax.get_legend().get_window_extent()
        assert not any(legend.overlaps(b) for b in boxes), ax.get_title()
        named = " ".join(t.get_text() for t in ax.texts)
        assert all(f"{r:g}" in named for r in rates), (ax.get_title(), named)
        assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 for b in boxes)  # in the file


@pytest.mark.parametrize("rates, thr, p99_ttft, attainment, goodput", [s for s in SWEEPS if s[-1] is not None])
def test_the_attainment_label_at_the_goodput_rate_is_over_the_line(tmp_path, monkeypatch, rates, thr, p99_ttft,
                                                                    attainment, goodput):
    """The percentage at the goodput rate sits on a white box drawn over the goodput line (the
    line crossed the text)."""
    fig = _sweep_figure(tmp_path, monkeypatch, rates, thr, p99_ttft, attainment, goodput)
    ax = fig.axes[2]
    line = next(ln for ln in ax.lines if ln.get_label().startswith("goodput"))
    label = ax.texts[rates.index(goodput)]
    assert label.get_text() == f"{100 * attainment[rates.index(goodput)]:.0f}%"
    box = label.get_bbox_patch()
    assert box is not None and box.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert label.get_zorder() > line.get_zorder()  # the box hides the line where they cross
    x = ax.transData.transform((goodput, 0))[0]
    extent = label.get_window_extent()
    assert extent.x0 < x < extent.x1  # the line does run through the label: the box is what keeps it readable
    assert box.get_window_extent().x0 <= extent.x0 and extent.x1 <= box.get_window_extent().x1


def test_latencies_pick_ms_or_s_and_labels_read_like_the_axis():
    assert latency_unit([175_000.0]) == (1e3, "s")
    assert latency_unit([0.3, 1821.5]) == (1.0, "ms")
    assert fmt_in(1821.5, 1.0, "ms") == "1,822 ms" and fmt_in(165_385.0, 1e3, "s") == "165 s"


def test_titles_name_model_devices_mapping_and_outcomes():
    assert mapping_text(STATUS) == "pipeline pp 80 x tp 1, 27 devices used"
    # the kind of parallelism, not the mapping's channel mode (`tensor` for pp 8 x tp 1: whole devices)
    eight = dict(STATUS, mapping=dict(STATUS["mapping"], mode="tensor", pp=8, tp=1, devices_used=8))
    assert mapping_text(eight) == "pipeline pp 8 x tp 1, 8 devices used"
    assert mapping_text(dict(eight, mapping=dict(eight["mapping"], pp=2, tp=4))).startswith("hybrid pp 2 x tp 4")
    title = run_title(STATUS, summarize(result_of(mixed_records())))
    assert title.startswith("llama2-70b on 32 CENT devices: pipeline pp 80 x tp 1, 27 devices used")
    assert "3 completed, 4 failed (context_exceeded 2, device_fault 1, queue_full 1)" in title


def test_plots_of_nearly_constant_latencies_have_no_offset(tmp_path, monkeypatch):
    """TPOTs equal to 1e-10 gave axes labelled `1e-10+2.377e-1`; every axis must read plainly.

    The latency axes run from 0, so a spread of 1e-13 s no longer zooms in; what is left for
    `plain_axis` to stop is the multiplier matplotlib puts on an axis of tiny values: nearly constant
    TPOTs of about a nanosecond (tokens streamed in one burst) read `1e-6` beside ticks 0.0 ... 1.2."""
    from cent_serve.bench import plots

    records = [done(f"r{i}", float(i), 1.000001 + 1e-6 * i, tpot_s=1e-9 * (1 + 1e-3 * i)) for i in range(5)]
    records.append(refused("long", 0.5, RequestRefused("context_exceeded", "too long")))
    offsets, tpot_ticks = [], []
    real_save = plots._save

    def save(fig, path):  # look at every axis of every figure before it is written
        fig.draw_without_rendering()  # a Figure's own canvas draws nothing: the offsets are set in a draw
        offsets.extend(axis.get_offset_text().get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis))
        if path.name == "latency_cdf.png":
            tpot = fig.axes[1]
            lo, hi = tpot.get_xlim()
            tpot_ticks.extend(t.get_text() for t in tpot.get_xticklabels() if lo <= t.get_position()[0] <= hi)
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    summary = summarize(result_of(records), {"ttft": 300.0, "tpot": 100.0})
    paths = plot_all(tmp_path, result_of(records), summary)
    assert [p.name for p in paths] == ["latency_cdf.png", "timeline.png", "utilization.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert len(offsets) >= 10 and all(text == "" for text in offsets), offsets
    # the TPOT axis's ticks are the values themselves, in ms: 0.0000002, not 0.2 times an offset of 1e-6
    assert len(tpot_ticks) >= 3 and len(set(tpot_ticks)) == len(tpot_ticks), tpot_ticks
    assert 1e-7 <= float(tpot_ticks[1]) <= 1e-6, tpot_ticks


@pytest.mark.parametrize("peak, title", [(0.0, "peak 0% of the KV blocks"), (3e-7, "peak 3e-05% of the KV blocks"),
                                         (0.004, "peak 0.40% of the KV blocks")])
def test_the_kv_axis_of_a_tiny_or_zero_peak_has_distinct_ticks(tmp_path, monkeypatch, peak, title):
    """A peak of 0 or under 0.001% labelled every tick "0%" (or 0.0001%, 0.0001%, 0.0000%)."""
    from cent_serve.bench import plots

    seen = {}

    def save(fig, path):
        fig.draw_without_rendering()
        kv = fig.axes[2]
        seen["ticks"] = [t.get_text() for t in kv.get_yticklabels() if 0 <= t.get_position()[1] <= kv.get_ylim()[1]]
        seen["title"] = kv.get_title(loc="right")

    monkeypatch.setattr(plots, "_save", save)
    result = result_of([done("r", 0.0, 0.2)])
    result.samples = [Sample(0.0, 0, 1, 0.0), Sample(1.0, 0, 1, peak), Sample(2.0, 0, 0, 0.0)]
    plots.plot_timeline(tmp_path / "t.png", result, summarize(result))
    assert len(seen["ticks"]) >= 3 and len(set(seen["ticks"])) == len(seen["ticks"]), seen["ticks"]
    assert seen["title"] == title


@pytest.mark.parametrize("extra", [0, 1])
def test_many_failures_are_drawn_as_a_rate_and_the_legend_is_off_the_data(tmp_path, monkeypatch, extra):
    """The whole azure_conv_2023 on llama2-70b failed 14,709 requests: their markers merged into one red
    band, and the legend covered the waiting line. Up to FAILURE_MARKERS_MAX failures are marked one
    each; above it a row of their rate by reason (the bars' area is each reason's count) replaces the
    markers. Every legend sits right of its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cent_serve.bench import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    n = plots.FAILURE_MARKERS_MAX + extra
    busy = [refused(f"b{i}", 6.0 * i / n, QueueFull("full")) for i in range(n - 3)]
    long = [refused(f"l{i}", 1.0 + i, RequestRefused("context_exceeded", "long")) for i in range(3)]
    result = result_of([done("ok", 0.0, 0.1)] + busy + long)
    plots.plot_timeline(tmp_path / "t.png", result, summarize(result))
    fig = figs[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    waiting = fig.axes[0]
    marks = [line for line in waiting.get_lines() if line.get_marker() == "|"]
    assert fig.axes[2].get_ylabel() == "KV cache in use"  # the rows the other tests read stay where they were
    if not extra:
        assert len(fig.axes) == 3 and len(marks) == 1 and len(marks[0].get_xdata()) == n
    else:
        assert len(fig.axes) == 4 and not marks
        rate = fig.axes[3]
        width = rate.patches[0].get_width()
        by_label = {}
        for bars in rate.containers:
            by_label[bars.get_label()] = sum(p.get_height() for p in bars) * width
        assert by_label.keys() == {f"queue_full ({n - 3:,})", "context_exceeded (3)"}
        assert by_label[f"queue_full ({n - 3:,})"] == pytest.approx(n - 3)
        assert by_label["context_exceeded (3)"] == pytest.approx(3)
        # the row sits between the waiting requests and the running sequences
        assert fig.axes[0].get_position().y0 > rate.get_position().y0 > fig.axes[1].get_position().y0
    for ax in fig.axes:
        if ax.get_legend() is not None:
            assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_failure_rates_count_each_failure_once_in_its_bin():
    from cent_serve.bench.plots import failure_rates

    records = [refused("a", 0.5, QueueFull("x")), refused("b", 9.5, QueueFull("x")), done("ok", 1.0, 0.1),
               refused("c", 12.0, RequestRefused("context_exceeded", "y"))]
    edges, rates, counts = failure_rates(records, 10.0, bins=4)
    assert list(edges) == [0.0, 3.0, 6.0, 9.0, 12.0]  # widened to the last failure
    assert list(rates) == ["queue_full", "context_exceeded"]
    assert list(counts.items()) == [("queue_full", 2), ("context_exceeded", 1)]  # the legend's counts
    assert list(rates["queue_full"] * 3.0) == [1, 0, 0, 1] and list(rates["context_exceeded"] * 3.0) == [0, 0, 0, 1]


def test_outcome_bars_name_failed_only_when_a_rate_has_failures():
    """The rate sweep's outcome panel: a legend entry "failed" and its title say so only when some
    rate failed requests (a run with none showed an entry for a bar that was nowhere)."""
    from matplotlib.figure import Figure

    from cent_serve.bench.sweep import _outcomes

    for failed, legend, title in (([0, 0], ["completed"], "completed requests per rate (none failed)"),
                                  ([0, 3], ["completed", "failed"], "completed and failed requests per rate")):
        ax = Figure().subplots()
        _outcomes(ax, [dict(rate=r, completed=10 - f, failed=f) for r, f in zip((1.0, 2.0), failed)])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == legend
        assert ax.get_title() == title


def test_the_context_exceeded_fix_speaks_of_the_requests_whatever_made_them(tmp_path, capsys):
    """--synthetic requests of 300-token prompts on a 256-token context failed as context_exceeded, and the
    table said to 'clip the trace's lengths' of a run with no trace. The flags it names clip --synthetic
    lengths too (`TraceOptions`): the line speaks of the requests' lengths."""
    from cent_serve.cli import main

    assert main(["bench", "run", "--numerics", "off", "--synthetic", "poisson", "--rate", "10", "--num-requests", "2",
                 "--prompt-len", "300", "--output-len", "4", "--set", "model.max_seq_len=256", "--in-process",
                 "--no-plots", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "context_exceeded: clip the requests' lengths with --max-prompt-tokens and --max-output-tokens" in out, out
    assert main(["bench", "run", "--numerics", "off", "--synthetic", "poisson", "--rate", "10", "--num-requests", "2",
                 "--prompt-len", "300", "--output-len", "4", "--max-prompt-tokens", "200",
                 "--set", "model.max_seq_len=256", "--in-process", "--no-plots", "--out", str(tmp_path / "clipped")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "clipped" / "summary.json").read_text())["failed"] == 0  # the flags named clip them


def test_failure_rates_put_the_most_frequent_reason_first():
    """The legend and the counts go most frequent first, whichever reason failed first."""
    from cent_serve.bench.plots import failure_rates

    records = [refused("c", 0.5, RequestRefused("context_exceeded", "y")), refused("a", 1.0, QueueFull("x")),
               refused("b", 2.0, QueueFull("x"))]
    _, rates, counts = failure_rates(records, 10.0, bins=4)
    assert list(counts.items()) == [("queue_full", 2), ("context_exceeded", 1)] and list(rates) == list(counts)
