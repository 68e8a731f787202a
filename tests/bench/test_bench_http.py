"""`cent bench run --url`: the same trace over HTTP gives the in-process run's simulated metrics."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from api.server import Server
from cent_serve.bench import TraceOptions, load_trace, sample_trace_path
from cent_serve.bench.http_client import replay_http
from cent_serve.bench.report import summarize
from cent_serve.bench.runner import run_in_process
from cent_serve.cli import main
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from tests.serving.utils import HANG_GUARD_S, body, breakable_replicas, wait_for

OPTIONS = TraceOptions(num_requests=50, max_prompt_tokens=96, max_output_tokens=32, time_scale=0.05)


def _cfg(clock: str = "virtual") -> CentConfig:
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    cfg.server.port, cfg.server.clock = 0, clock
    return cfg


def test_http_replay_on_the_virtual_clock_equals_in_process():
    from cent_serve.bench import Request

    reqs = list(load_trace(sample_trace_path(), options=OPTIONS))
    # prompt + output past the context: refused alike (vLLM's server answers 400 too)
    reqs.insert(10, Request("too-long", reqs[10].arrival_s, model_preset("tiny").max_seq_len - 12, 20))
    reqs.insert(20, Request("empty", reqs[20].arrival_s, 0, 0))  # sent with 1 token of each, counted alike
    local = summarize(run_in_process(_cfg(), reqs, progress=False), {"ttft": 20.0})
    with Server(_cfg(), "local") as s:
        result, client = asyncio.run(replay_http(s.url, reqs, progress=False))
    remote = summarize(result, {"ttft": 20.0})
    assert remote.pop("wall_s") > 0 and local.pop("wall_s") > 0
    assert remote == local  # bit for bit: queueing included (the sample has bursts)
    assert local["completed"] == 51 and local["failed"] == 1 and local["p99_ttft_ms"] > local["median_ttft_ms"]
    assert local["raised_to_one_token"] == 1
    assert client["server_clock"] == "virtual" and len(client["per_request"]) == 52


def test_cli_url_against_a_paced_server(tmp_path):
    cfg = _cfg("paced")
    cfg.parallel = ParallelConfig(4, 0, 1)
    cfg.server.pace_factor = 0.2  # faster than real time: the test stays short
    with Server(cfg, "local") as s:
        out = tmp_path / "paced"
        assert main(["bench", "run", "--url", s.url, "--num-requests", "12", "--max-prompt-tokens", "32",
                     "--max-output-tokens", "8", "--time-scale", "0.01", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 12 and summary["server_clock"] == "paced"
    assert summary["hold_expiries"] is None and summary["late_arrivals"] is None  # a paced server holds no replay
    assert summary["mean_client_wall_ttft_ms"] > 0 and summary["mean_ttft_ms"] > 0
    assert json.loads((out / "config.json").read_text())["server_status"]["model"] == "tiny"
    assert summary["model"] == "tiny" and summary["devices"] == 4  # the server's, not the command's defaults
    assert summary["hardware"] == "cent"


def test_url_says_the_flags_of_the_hardware_change_nothing_on_the_server(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="cent.bench")
    with Server(_cfg(), "local") as s:
        assert main(["bench", "run", "--url", s.url, "--num-requests", "3", "--max-prompt-tokens", "16",
                     "--max-output-tokens", "4", "--model", "llama2-7b", "--devices", "32", "--no-plots",
                     "--out", str(tmp_path)]) == 0
    said = [r.getMessage() for r in caplog.records if "change nothing there" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("--model --devices: the server at") and "(tiny)" in said[0]


def test_url_takes_the_openai_base_url_the_server_logs(tmp_path):
    """`cent serve` logs "listening on http://HOST:PORT/v1" and the openai client's base_url ends in /v1:
    that URL given to --url was refused (GET /v1/v1/models answered 404). It names the same server."""
    from cent_serve.bench.http_client import server_root
    assert [server_root(u) for u in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/", "http://h:1/x/v1")] \
        == ["http://h:1", "http://h:1", "http://h:1", "http://h:1", "http://h:1/x"]
    # a host named v1 is the server's host, not an OpenAI base path (it became "http:")
    assert [server_root(u) for u in ("http://v1", "http://v1/", "https://v1:8000/v1")] == \
        ["http://v1", "http://v1", "https://v1:8000"]
    with Server(_cfg(), "local") as s:
        assert main(["bench", "run", "--url", s.url + "/v1/", "--num-requests", "3", "--max-prompt-tokens", "16",
                     "--max-output-tokens", "4", "--no-plots", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] == 3 and summary["model"] == "tiny"


def test_a_url_run_prices_the_servers_devices_from_its_config(tmp_path, capsys):
    """`tokens_per_tco` of a --url run is the server's devices' price, from the config it gives at GET
    /v1/cent/config (`report.served_price`: `tco_figures` of that config, as an in-process run of it), not this
    command's defaults'. It was null with a note, though every cent-serve says its devices and price there."""
    cfg = _cfg()
    cfg.device.tco_per_device = 0.05  # not the default price: the figure is the server's
    with Server(cfg, "local") as s:
        assert main(["bench", "run", "--url", s.url, "--num-requests", "3", "--max-prompt-tokens", "16",
                     "--max-output-tokens", "4", "--no-plots", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] == 3
    assert summary["tokens_per_tco"] == pytest.approx(summary["total_token_throughput"] / (0.05 * 8), rel=1e-12)
    assert not [line for line in printed if line.startswith("note: tokens per dollar")], printed


def test_a_url_run_against_a_server_without_its_config_prices_nothing_and_says_why():
    from cent_serve.bench.report import served_price

    tpd, notes = served_price(None, "http://h:1/v1", 100.0)
    assert tpd is None and notes == ["tokens per dollar: n/a: the server at http://h:1 does not give its config "
                                     "(GET /v1/cent/config), so its devices and their price are unknown"]
    tpd, notes = served_price({"device": {"no_such_field": 1}}, "http://h:1", 100.0)
    assert tpd is None and notes[0].startswith("tokens per dollar: n/a: the server's config could not be read here")
    assert served_price({}, "http://h:1", 100.0) == served_price(None, "http://h:1", 100.0)  # not the defaults' price


def test_a_url_run_prices_a_server_with_a_key_and_a_checkpoint_of_its_own_host(tmp_path, monkeypatch, caplog):
    """The config a server gives names its checkpoint by its own host's path and redacts its API key: the price
    of its devices reads neither (`served_price`). It said "n/a: ... model.checkpoint=...: does not exist: give
    the checkpoint directory's path" for a server on another host, and warned of its key "no key is set (give
    --api-key or CENT_API_KEY)" to a replay that gave one. Its notes are `price_notes`' of that config."""
    import logging
    import shutil

    from cent_serve.bench.report import price_notes, served_price, tco_figures
    from cent_serve.config import CentConfig, config_to_dict, resolve_model

    shutil.copytree(Path(__file__).parents[1] / "data" / "hf_tiny_llama", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    cfg = CentConfig(model=resolve_model("m"))
    cfg.server.api_key = "k"
    cfg.device.unit_cost_usd = 99.0  # a price the TCO does not follow: the server's config's note
    given = config_to_dict(cfg)
    shutil.rmtree(tmp_path / "m")  # the server's host's directory, not this one's
    sent = json.loads(json.dumps(given))
    with caplog.at_level(logging.WARNING, logger="cent_serve"):
        tpd, notes = served_price(given, "http://h:1/v1", 100.0)
    priced = tco_figures(cfg, 100.0)
    assert (tpd, notes) == (priced["tokens_per_tco"], price_notes(cfg, priced["tco"])) and notes, notes
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert given == sent  # what the results' config.json then records of the server is left as it gave it


def test_a_paced_server_that_ran_before_reports_in_trace_time():
    """On the paced clock the server's simulated times run from its own start: the replay shifts them
    to the trace's time 0, as it does the virtual clock's, and leaves a refused request's trace arrival
    as it is (the two clocks were mixed: a duration of 146 s for a 14 s replay). The bounds are the
    server's own clock read before and after the replay, not a guess at how long the client takes
    (fixed bounds of 1 and 2 wall s were 5-8x what the replay took here): shifted, every time lies
    within the replay's span; unshifted, past the server's age when the replay began, ~30 s. The
    two only overlap if the replay takes longer than the 3 s the server idled first, 11x what it
    takes here, and that is said as such."""
    from cent_serve.bench import Request
    from tests.serving.utils import status

    cfg = _cfg("paced")
    cfg.server.pace_factor = 0.1
    reqs = [Request(f"r{i}", 0.1 * i, 16, 4) for i in range(6)]
    reqs.insert(3, Request("too-long", 0.25, model_preset("tiny").max_seq_len, 4))  # refused at once: 400
    with Server(cfg, "local") as s:
        httpx.post(s.url + "/v1/completions", json=dict(model="tiny", prompt="warm", max_tokens=4))
        time.sleep(3.0)  # the server's clock now stands ~30 simulated seconds past its start
        age = status(s.url)["sim_now_s"]
        result, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
        span = status(s.url)["sim_now_s"] - age  # the replay's trace times lie within it
        refused, _ = asyncio.run(replay_http(s.url, [reqs[3]], progress=False))  # nothing runs: the clock idles
    assert span < age, f"the replay took {span:.1f} simulated s, longer than the {age:.1f} s the server ran before"
    by_id = {r.request_id: r for r in result.records}
    assert by_id["trace-too-long"].arrival_s == 0.25 and not by_id["trace-too-long"].ok
    done = [by_id[f"trace-r{i}"] for i in range(6)]
    assert all(r.ok for r in done)
    # arrivals in trace time: sent on the wall clock at their trace time, so no earlier, and before the end
    assert all(0.1 * i - 1e-9 <= r.arrival_s <= span for i, r in enumerate(done)), ([r.arrival_s for r in done], span)
    assert 0 < result.clock_s <= span and 0 < summarize(result)["duration"] <= span
    assert all(0.0 <= x.time_s <= span for x in result.samples), ([x.time_s for x in result.samples], span)
    assert refused.clock_s >= 0.0 and not refused.records[0].ok  # the idle engine's clock lies before the start


def test_a_prompt_longer_than_any_memory_is_refused_by_its_length_not_built(monkeypatch):
    """A trace row of 3e9 prompt tokens: context_exceeded, in process and over HTTP alike, without
    a prompt of that length built first (it was: the kernel killed the replay at 24 GB)."""
    import cent_serve.bench.http_client as http_client
    import cent_serve.bench.runner as runner
    from cent_serve.bench import Request

    real = runner.prompt_ids
    cap = model_preset("tiny").max_seq_len

    def bounded(num_tokens, *args, **kwargs):
        assert num_tokens <= cap, f"built a prompt of {num_tokens} tokens"
        return real(num_tokens, *args, **kwargs)

    monkeypatch.setattr(runner, "prompt_ids", bounded)
    monkeypatch.setattr(http_client, "prompt_ids", bounded)
    reqs = [Request("a", 0.0, 10, 5), Request("huge", 0.001, 3_000_000_000, 5), Request("b", 0.002, 10, 5),
            Request("last", 0.003, 9_000, 5)]  # refused last: no request the server waits for (30 s hold)
    local = run_in_process(_cfg(), reqs, progress=False)
    with Server(_cfg(), "local") as s:
        remote, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
        assert httpx.get(s.url + "/v1/cent/status").json()["num_hold_expiries"] == 0
    for result in (local, remote):
        by_id = {r.request_id: r for r in result.records}
        for rid, n in (("trace-huge", 3_000_000_000), ("trace-last", 9_000)):
            assert (by_id[rid].finish_reason, by_id[rid].failure_reason) == ("invalid", "context_exceeded")
            assert by_id[rid].error.startswith(f"the prompt has {n} tokens; the model's context is 8192")
        assert by_id["trace-a"].finish_reason == by_id["trace-b"].finish_reason == "length"
    assert summarize(local, {"ttft": 20.0}) | {"wall_s": 0} == summarize(remote, {"ttft": 20.0}) | {"wall_s": 0}


def test_refused_replay_requests_do_not_stall_the_clock():
    """Rejected requests (429) still move the replay hold on: the replay finishes promptly."""
    from cent_serve.bench import Request

    cfg = _cfg()
    cfg.parallel = ParallelConfig(1, 1, 1)  # one lane
    cfg.scheduler.max_waiting = 3
    reqs = [Request(str(i), 0.0001 * i, 8, 16) for i in range(14)]
    with Server(cfg, "local") as s:
        result, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
        expiries = httpx.get(s.url + "/v1/cent/status").json()["num_hold_expiries"]
    outcomes = [r.finish_reason for r in result.records]
    assert outcomes.count("rejected") > 0 and outcomes.count("length") > 0
    assert len(outcomes) == 14 and expiries == 0  # a stuck hold would have to expire (30 s each)


def test_http_replay_equals_in_process_when_the_queue_overflows():
    """Replay arrivals enter the server's engine when its clock reaches them, so the queue bound
    refuses the same requests over HTTP as in-process (the refusals move later requests' times)."""
    cfg = _cfg()
    cfg.scheduler.max_waiting = 6
    reqs = list(load_trace(sample_trace_path(), options=TraceOptions(num_requests=30, request_rate=400.0,
                                                                     max_prompt_tokens=1024)))
    local = summarize(run_in_process(cfg, reqs, progress=False))
    with Server(cfg, "local") as s:
        result, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
    remote = summarize(result)
    assert remote.pop("wall_s") > 0 and local.pop("wall_s") > 0
    assert local["failure_reasons"]["queue_full"]["count"] > 5  # the bound was reached, often
    assert remote == local


def test_the_last_replay_request_releases_the_hold(monkeypatch):
    """The last request's hold (`RELEASE_HOLD_S`: no next arrival) releases the clock at once, so a
    finished replay leaves no hold to expire later (an expiry warns and counts). The short expiry
    set here is a wall-clock bound a busy machine can break *during* the replay (the client sending
    the next request late), which costs nothing but a warning; what is held is that no hold expires
    *after* the replay's last request."""
    import time

    import cent_serve.serving as serving
    from cent_serve.bench import Request

    monkeypatch.setattr(serving, "HOLD_EXPIRY_S", 0.2)  # a hold left behind would expire during the wait below
    reqs = [Request(str(i), 0.01 * i, 8, 4) for i in range(3)]
    with Server(_cfg(), "local") as s:
        result, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
        during = httpx.get(s.url + "/v1/cent/status").json()["num_hold_expiries"]
        time.sleep(0.5)
        httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).raise_for_status()
        after = httpx.get(s.url + "/v1/cent/status").json()["num_hold_expiries"]
    assert [r.finish_reason for r in result.records] == ["length"] * 3
    assert after == during


def test_a_second_replay_on_the_same_server_counts_its_own_device_time():
    """A reused server's devices count busy time from its start; the replay's busy fractions are its own."""
    heavy = list(load_trace(sample_trace_path(), options=TraceOptions(num_requests=8, max_output_tokens=16,
                                                                      time_scale=0.01)))
    light = list(load_trace(sample_trace_path(), options=TraceOptions(num_requests=3, max_prompt_tokens=8,
                                                                      max_output_tokens=4, time_scale=5)))
    local = summarize(run_in_process(_cfg(), light, progress=False))["device_busy_fraction"]
    with Server(_cfg(), "local") as s:
        asyncio.run(replay_http(s.url, heavy, progress=False))
        result, _ = asyncio.run(replay_http(s.url, light, progress=False))
    assert summarize(result)["device_busy_fraction"] == pytest.approx(local, abs=1e-12)



def test_a_hold_lapses_unless_its_client_waits_for_an_arrival_before_it():
    """A silent replayer's hold lapses, also while another client's arrival past the hold waits: the
    clock reaches that arrival only after the hold lapses (kept alive by it, the hold stopped every
    round for good). An arrival at or before the hold, whose client is waiting for its answer, keeps
    the hold: the clock is moving towards it."""
    import concurrent.futures as cf
    import itertools

    import cent_serve.serving as serving

    class Engine:  # what `_held` reads of the engine
        def next_start_s(self) -> float:
            return 5.0

    def loop_with(arrival_s: float, fut: cf.Future) -> serving.EngineLoop:
        loop = serving.EngineLoop.__new__(serving.EngineLoop)
        loop.hold_until_s, loop._hold_expires, loop.num_hold_expiries = 5.0, time.monotonic() - 1.0, 0
        loop._arrivals, seq = [], itertools.count()
        loop._arrivals.append((arrival_s, next(seq), None, fut))
        return loop

    past = loop_with(1000.0, cf.Future())  # beyond the hold: reachable only once it lapses
    assert past._held(Engine()) is False and past.hold_until_s is None and past.num_hold_expiries == 1
    gone = cf.Future()
    gone.cancel()
    assert loop_with(4.0, gone)._held(Engine()) is False  # its client left: nobody is waiting
    waiting = loop_with(4.0, cf.Future())
    assert waiting._held(Engine()) is True and waiting.num_hold_expiries == 0


@pytest.mark.parametrize("bos", [[128000], []], ids=["llama3-bos", "no-bos-qwen"])
def test_url_prompts_start_with_the_server_s_own_bos(monkeypatch, bos):
    """A prompt of ids gets no BOS from the server: the replay asks the server's tokenizer what it
    puts first (`POST /tokenize` with and without the special tokens), so a Llama 3 server sees
    128000, a Qwen one none, and an eos a tokenizer adds after the text is not taken for it (it was
    the byte preset's 1 whatever the server's tokenizer, a quote mark in Llama 3's vocabulary)."""
    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "llama", "max_model_len": 4096}]})
        if path == "/tokenize":  # a tokenizer that also ends a text with its eos (add_eos_token)
            body = json.loads(request.content)
            text = [120] if body["prompt"] else []
            ids = [*bos, *text, 2] if body["add_special_tokens"] else text
            return httpx.Response(200, json={"tokens": ids, "count": len(ids)})
        if path == "/v1/completions":
            body = json.loads(request.content)
            sent.append(body["prompt"])
            chunk = {"choices": [{"index": 0, "text": "x" * body["max_tokens"], "finish_reason": "length"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}}
            return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n",
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": {"message": "no such path"}})  # not cent-serve: no status

    real = httpx.AsyncClient
    monkeypatch.setattr(http_client.httpx, "AsyncClient",
                        lambda **kw: real(transport=httpx.MockTransport(answer), **kw))
    reqs = [Request(f"r{i}", 0.001 * i, n, 3) for i, n in enumerate((1, 5, 17))]
    result, _ = asyncio.run(http_client.replay_http("http://127.0.0.1:1", reqs, progress=False))
    assert [len(p) for p in sorted(sent, key=len)] == [1, 5, 17]
    assert all(p[:len(bos)] == bos and all(35 <= t < 160 for t in p[len(bos):]) for p in sent), sent
    assert sorted(r.finish_reason for r in result.records) == ["length"] * 3


def test_the_start_probe_falls_back_for_a_server_that_ignores_add_special_tokens():
    """A server answering /tokenize alike with and without the special tokens (it ignores the flag)
    is asked for an empty text's ids, a BOS or none; one without /tokenize gets the byte preset's 1
    (review: the probe took [] for a Llama server that ignores the flag)."""
    import cent_serve.bench.http_client as http_client

    def server(tokenize):
        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.path != "/tokenize":
                return httpx.Response(404)
            body = json.loads(request.content)
            ids = tokenize(body["prompt"])
            return httpx.Response(200, json={"tokens": ids}) if ids is not None else httpx.Response(404)
        return httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(answer))

    async def probe(tokenize):
        async with server(tokenize) as client:
            return await http_client._bos(client, "m")

    assert asyncio.run(probe(lambda text: [7] + ([120] if text else []))) == [7]  # flag ignored: "" says [7]
    assert asyncio.run(probe(lambda text: [120] if text else [])) == []  # Qwen's: nothing before a text
    assert asyncio.run(probe(lambda text: None)) == [1]  # no /tokenize
    assert asyncio.run(probe(lambda text: [7, 8] + ([120] if text else []))) == [1]  # "" of two ids: not a BOS


def test_the_progress_bar_ticks_each_request_as_it_ends_while_later_ones_are_sent(monkeypatch):
    """Virtual clock: the bar ticked only once every request had been sent, so a replay against a
    slow server (full numerics on Ray: 31 of 200 done after 5 minutes) showed 0% all along."""
    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    events = []

    async def one(client, body, rec, wall, submitted):  # the server takes it and answers at once
        events.append(("sent", rec.request_id))
        submitted.set()
        return rec

    class Bar:
        def __init__(self, *args) -> None:
            pass

        def done(self, rec) -> None:
            events.append(("done", rec.request_id))

        def close(self) -> None:
            pass

    monkeypatch.setattr(http_client, "_one", one)
    monkeypatch.setattr(http_client, "Progress", Bar)
    srv = http_client._Server("tiny", {"clock_mode": "virtual", "clock_s": 0.0, "sim_now_s": 0.0})
    monkeypatch.setattr(http_client._Server, "cent", property(lambda self: False))  # no status polls
    reqs = [Request(str(i), 0.01 * i, 8, 4) for i in range(3)]

    async def run():
        async with httpx.AsyncClient(base_url="http://x") as client:
            await http_client._Replay(client, srv, reqs, 1, 0, False).run()

    asyncio.run(run())
    assert events.index(("done", "trace-0")) < events.index(("sent", "trace-2")), events
    assert sorted(e for e in events if e[0] == "done") == [("done", f"trace-{i}") for i in range(3)]


@pytest.mark.parametrize("requests", [1, 12])
def test_a_second_replay_starts_after_the_first_one_s_work(requests):
    """A reused virtual-clock server's replay counts trace time from where a request sent now
    arrives (`sim_now_s`: the clock, or the last finish when later), not from the clock (the start
    of its last round): a trace's first request met the last round's work and every TTFT of the
    second replay came out later (docs audit: 55 us on this model, 3-16 ms with Llama2-70B)."""
    reqs = list(load_trace(sample_trace_path(), options=TraceOptions(num_requests=requests, max_prompt_tokens=64,
                                                                     max_output_tokens=16, time_scale=0.05)))
    with Server(_cfg(), "local") as s:
        first, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
        second, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
    a, b = ([r.ttft_s for r in x.records] for x in (first, second))
    assert len(a) == requests and b == pytest.approx(a, rel=0, abs=1e-9)  # the offset's float rounding apart


def test_http_replay_equals_in_process_when_requests_arrive_together():
    """Requests of one arrival time (a burst: traces have them) enter the same round over HTTP as
    in-process. The first one's hold is its own time (the next one's arrival), so the server must
    not start a round with it alone, though it found the engine idle and unheld before it came:
    that round moved every later round boundary, and with them when the second burst got in."""
    from cent_serve.bench import Request

    cfg = _cfg()
    cfg.model, cfg.parallel = model_preset("llama3.2-1b"), ParallelConfig(2, 0, 1)  # 8 blocks a device
    reqs = [Request(str(i), 0.0 if i < 4 else 0.05, 24 + 8 * i, 6) for i in range(8)]
    local = run_in_process(cfg, reqs, progress=False)
    with Server(cfg, "local") as s:
        result, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
    firsts = {r.request_id: r.first_token_s for r in local.records}
    assert len(set(firsts.values())) == 8 and max(firsts.values()) > 0.05  # the second burst waits for lanes
    assert {r.request_id: r.first_token_s for r in result.records} == firsts
    remote, local = summarize(result), summarize(local)
    assert remote.pop("wall_s") > 0 and local.pop("wall_s") > 0
    assert remote == local


def test_a_replay_the_server_could_not_hold_says_so(monkeypatch, caplog):
    """A virtual-clock replay equals the in-process one only if every hold held and no arrival came
    late. When the server counts a lapsed hold or a late arrival during the replay (its client silent
    for HOLD_EXPIRY_S, another client's requests on the same server), the replay gives the counts
    and warns, rather than passing its figures off as the in-process ones."""
    import logging

    import cent_serve.serving as serving
    from cent_serve.bench import Request

    reqs = [Request(str(i), 0.01 * i, 8, 16) for i in range(6)]
    with Server(_cfg(), "local") as s:
        _, clean = asyncio.run(replay_http(s.url, reqs, progress=False))
        monkeypatch.setattr(serving, "HOLD_EXPIRY_S", -1.0)  # every hold lapses once nothing waits for it
        with caplog.at_level(logging.WARNING, logger="cent.bench"):
            _, client = asyncio.run(replay_http(s.url, reqs, progress=False))
        status = httpx.get(s.url + "/v1/cent/status").json()
    assert clean["hold_expiries"] == clean["late_arrivals"] == 0
    assert client["hold_expiries"] == status["num_hold_expiries"] > 0
    assert client["late_arrivals"] == status["num_late_arrivals"]
    said = [r.getMessage() for r in caplog.records if "not the in-process" in r.getMessage()]
    assert len(said) == 1 and f"{client['hold_expiries']} replay hold" in said[0]


def test_a_url_replay_s_config_reruns_it_in_process(tmp_path, caplog):
    """A `--url` run's config.json is the server's resolved config (`GET /v1/cent/config`), so
    `--config` with the flags its load names replays the same requests in-process to the same
    figures; it recorded only the server's status, with which no run could be made again."""
    import logging
    import shlex

    from cent_serve.config import config_to_dict, load_config

    cfg = _cfg()
    cfg.parallel = ParallelConfig(4, 0, 1)
    cfg.scheduler.max_seqs_per_stage = 2  # settings of the server's own, which the command's flags do not give
    cfg.device.clock_hz = 1.5e9
    flags = ["--num-requests", "12", "--max-prompt-tokens", "40", "--max-output-tokens", "8", "--no-plots"]
    with Server(cfg, "local") as s:
        served = httpx.get(s.url + "/v1/cent/config").json()
        assert main(["bench", "run", "--url", s.url, *flags, "--out", str(tmp_path / "a")]) == 0
    assert served == config_to_dict(cfg)
    written = json.loads((tmp_path / "a" / "config.json").read_text())
    assert written["server_status"]["model"] == "tiny" and written["bench"]["url"] == s.url
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_config(tmp_path / "a" / "config.json")
    assert config_to_dict(again) == served
    said = [r.getMessage() for r in caplog.records if "bench section" in r.getMessage()]
    rerun = shlex.split(said[0].split("give cent bench its flags: ", 1)[1])
    assert "--url" not in rerun
    assert main(["bench", "run", "--config", str(tmp_path / "a" / "config.json"), *rerun, "--no-plots",
                 "--out", str(tmp_path / "b")]) == 0
    rows = [(tmp_path / d / "requests.csv").read_text() for d in ("a", "b")]
    assert rows[0] == rows[1] and len(rows[0].splitlines()) == 13


def test_a_url_replay_without_the_server_s_config_is_not_read_as_the_defaults(tmp_path):
    """A server that does not serve `/v1/cent/config` (vLLM, a cent-serve from before it) leaves a
    config.json of `bench:` and `server_status:` alone. `--config` must refuse it, naming the server's
    model, rather than replay the trace on the default config (tiny on 8 devices) as if it were the
    server's."""
    from cent_serve.config import load_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(bench=dict(trace="sample_conv", format="vidur", num_requests=12,
                                               url="http://127.0.0.1:8000"),
                                    server_status=dict(model="llama2-7b", clock_mode="virtual"))))
    with pytest.raises(ValueError, match=r"server_status \(model 'llama2-7b'\) .* give the flags the server ran with"):
        load_config(path)
    assert main(["bench", "run", "--config", str(path), "--num-requests", "2", "--no-plots",
                 "--out", str(tmp_path / "r")]) == 2


def test_a_replay_keeps_per_token_times_once_and_compactly():
    """What a replay holds per request until the end is its record plus a few wall-clock scalars, not
    its finished task: from cent-serve the record's simulated token times, and no wall time per chunk
    beside them (a float per token kept for nothing, half of what a replay of tens of thousands of
    requests held); from a server without simulated times the chunks' wall times, which become the
    token times. Either way 8 bytes a token (`array('d')`), not a float object and a list's pointer (~32)."""
    import dataclasses

    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    reqs = [Request(str(i), 0.01 * i, 8, 12) for i in range(4)]

    async def replay(url: str, transport: httpx.AsyncBaseTransport | None = None) -> http_client._Replay:
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            r = http_client._Replay(client, await http_client._server(client, url), reqs, 4, 0, False)
            await r.run()
            return r

    def answer(request: httpx.Request) -> httpx.Response:  # not cent-serve: a chunk per token, no `cent` times
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404)
        n = json.loads(request.content)["max_tokens"]
        chunks = [{"choices": [{"index": 0, "text": "x", "finish_reason": "length" if k == n - 1 else None}]}
                  for k in range(n)]
        return httpx.Response(200, text="".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    with Server(_cfg(), "local") as s:
        cent = asyncio.run(replay(s.url))
    other = asyncio.run(replay("http://x", httpx.MockTransport(answer)))
    recs = cent.records_in_trace_time()
    assert [len(r.token_times_s) for r in recs] == [12] * 4
    # shifted to trace time with the record's own times, and once: a second call changes nothing
    assert all(r.token_times_s[0] == r.first_token_s and r.token_times_s[-1] == r.finish_s for r in recs)
    shifted = [list(r.token_times_s) for r in recs]
    assert [list(r.token_times_s) for r in cent.records_in_trace_time()] == shifted
    assert all(getattr(r.token_times_s, "typecode", None) == "d" for r in cent.records.values())
    assert not cent.tasks  # each finished request's task was let go
    held = [v for w in cent.walls.values() for v in dataclasses.astuple(w)]
    assert all(v is None or isinstance(v, float) for v in held), held  # no list per request beside the record's
    recs = other.records_in_trace_time()
    assert [len(r.token_times_s) for r in recs] == [12] * 4  # the chunks' wall times
    assert all(0 <= r.first_token_s <= r.token_times_s[0] <= r.token_times_s[-1] <= r.finish_s for r in recs)
    assert other.records_in_trace_time() == recs  # a second call: the same records (the chunks went to them)
    assert all(getattr(r.token_times_s, "typecode", None) == "d" and w.chunks is None
               for r, w in zip(other.records.values(), other.walls.values()))  # moved, not copied


def test_a_request_in_flight_holds_its_body_s_bytes_not_its_list_of_prompt_ids():
    """While a request streams, its prompt is held once, as the JSON bytes sent (httpx keeps them on
    the request), not also as the list of ids they were made from: 8 bytes a token, ~9 kB of the
    ~40 kB an Azure conversation request held in flight, and an overloaded replay has as many in
    flight as the server queues. The fake server looks, while answering, for any other list of
    those ids still alive."""
    import gc

    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    alive = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404)
        body = json.loads(request.content)
        prompt = body["prompt"]
        alive.append(sum(1 for o in gc.get_objects() if type(o) is list and o is not prompt and o == prompt))
        chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    async def replay() -> http_client._Replay:
        async with httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(answer)) as client:
            r = http_client._Replay(client, await http_client._server(client, "http://x"), reqs, 4, 0, False)
            await r.run()
            return r

    reqs = [Request(str(i), 0.001 * i, 300 + i, 1) for i in range(3)]
    done = asyncio.run(replay())
    assert [r.finish_reason for r in done.records.values()] == ["length"] * 3
    assert alive == [0, 0, 0], alive


def test_a_replay_gives_the_free_heap_back_every_so_many_requests():
    """The heap's free space grew ~18 kB a request of an Azure conversation replay, without end (the
    socket reads' freed tails, which the records' token times pin: `release_free_heap`), and the
    resident memory with it: every RELEASE_EVERY_REQUESTS requests that end, refused ones included,
    the replay hands the free pages back. A fake release is passed in and counted."""
    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 64}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404)
        chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    n = 2 * http_client.RELEASE_EVERY_REQUESTS + 3
    reqs = [Request(str(i), 0.0001 * i, 100 if i == 5 else 4, 1) for i in range(n)]  # request 5: past the context
    released = []

    async def replay() -> http_client._Replay:
        async with httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(answer)) as client:
            r = http_client._Replay(client, await http_client._server(client, "http://x"), reqs, 8, 0, False,
                                    release_heap=lambda: released.append(len(r.records)))
            await r.run()
            return r

    done = asyncio.run(replay())
    assert done.num_ended == n and len(released) == 2, released
    assert done.records["trace-5"].failure_reason == "context_exceeded"
    http_client.release_free_heap()  # the real one runs here too (glibc's malloc_trim; a no-op elsewhere)


def test_releasing_the_free_heap_does_nothing_where_the_c_library_cannot_be_opened(monkeypatch):
    """On Windows `ctypes.CDLL(None)` raises (there is no C library to open by name None): a
    replay's 64th ended request must not fail there; there is just no heap to trim."""
    from cent_serve.bench import http_client

    def no_library(name, *args, **kwargs):
        raise TypeError("expected str, bytes or os.PathLike object, not NoneType")

    monkeypatch.setattr(http_client.ctypes, "CDLL", no_library)
    http_client._malloc_trim.cache_clear()
    try:
        assert http_client._malloc_trim() is None
        http_client.release_free_heap()
    finally:
        http_client._malloc_trim.cache_clear()  # the next caller opens the real library again


def test_a_url_replay_counts_requests_no_replica_can_serve_as_failed_with_the_503_message():
    """A replay against a server whose one replica is down for good: the requests queued while its
    first re-creation ran get the stream's error event once it fails, a later replay's are refused
    with the 503 at once; each counts as failed (`server_error`) with the server's message, and
    neither replay waits for the client's timeout."""
    from cent_serve.bench import Request

    cfg, (device,), rebuild, eng = breakable_replicas(1)
    reqs = [Request(str(i), 0.001 * i, 8, 4) for i in range(3)]
    with Server(cfg, "local", engine=eng) as s:
        device.broken = True
        assert httpx.post(s.url + "/v1/completions", json=body(), timeout=HANG_GUARD_S).status_code == 500
        wait_for(lambda: rebuild.calls == 1, "the re-creation started")

        async def queued():
            replay = asyncio.ensure_future(replay_http(s.url, reqs, progress=False))
            async with httpx.AsyncClient(base_url=s.url, timeout=HANG_GUARD_S) as client:
                while (await client.get("/v1/cent/status")).json()["num_waiting"] < len(reqs):
                    await asyncio.sleep(0.02)
            rebuild.plan.put(RuntimeError("the worker host was lost"))
            return (await replay)[0]

        first = asyncio.run(queued())
        second, _ = asyncio.run(replay_http(s.url, reqs, progress=False))
    for result in (first, second):  # a stream's error event; a 503: both the server's error, as in-process
        assert [r.finish_reason for r in result.records] == ["error"] * 3
        summary = summarize(result)
        assert summary["completed"] == 0 and summary["failed"] == 3
        assert list(summary["failure_reasons"]) == ["server_error"], summary["failure_reasons"]
        example = summary["failure_reasons"]["server_error"]["example"]
        assert "replica 0: could not be re-created: RuntimeError: the worker host was lost" in example
        assert example.endswith("retry later"), example


@pytest.mark.parametrize("error, reason", [
    # cent-serve's: the reason in cent.code, the status in code
    ({"message": "the emulated devices of replica 0 failed", "code": 500, "cent": {"code": "device_fault"}},
     "device_fault"),
    ({"message": "no replica", "code": 503, "cent": {"code": "no_replica"}}, "server_error"),
    ({"message": "the engine stopped", "code": 503, "cent": {"code": "engine_stopped"}}, "server_error"),
    # vLLM 0.33's (the status alone): no emulated devices there, so never a device fault
    ({"message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}, "server_error"),
    ({"message": "This model's maximum context length is 64 tokens", "type": "BadRequestError", "code": 400},
     "context_exceeded"),
    # an older cent-serve's: the reason as a string code
    ({"message": "the emulated devices of replica 0 failed", "code": "device_fault"}, "device_fault"),
])
def test_a_streams_error_event_is_read_as_the_same_error_answered_before_the_stream(error, reason):
    """A stream's error event carries the error body a refusal before the stream would (its `code` the
    HTTP status, as vLLM 0.33's `ErrorInfo.code` and cent-serve's are): it is grouped as that answer is,
    not as a device fault whatever it says (a vLLM server's 500 is its own failure, cent-serve's
    engine_stopped the server's, as their 5xx answers are)."""
    import cent_serve.bench.http_client as http_client
    from cent_serve.bench import Request

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 64}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404)
        chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'error': error})}\n\n"
                              "data: [DONE]\n\n", headers={"content-type": "text/event-stream"})

    async def replay() -> http_client._Replay:
        async with httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(answer)) as client:
            r = http_client._Replay(client, await http_client._server(client, "http://x"), [Request("0", 0.0, 4, 2)],
                                    1, 0, False)
            await r.run()
            return r

    (rec,) = asyncio.run(replay()).records.values()
    assert (rec.finish_reason, rec.failure_reason, rec.error) == ("error", reason, error["message"])
