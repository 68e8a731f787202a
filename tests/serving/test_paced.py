"""The paced clock's lateness: measured on the tokens a client gets, not on the engine's rounds."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import re
import threading
import time

import httpx
import pytest

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.serving import PACE_LAG_WARN_S, PACE_LATE_FRAC, PaceMonitor
from tests.serving.utils import HANG_GUARD_S, body, metric, server_cfg, status, wait_for

PROMPT_TOKENS = 512
"""One prefill round of Llama 3.2 1B on one device (the whole prompt in one chunk): 2.74 simulated
seconds, which the engine computes in about 0.3 wall s; a decode round after it is 7.3 ms."""
SLOW_S = 0.7
"""Wall seconds one chosen round is made to take on top of its own: over the old 0.5 s bound
(PACE_LAG_WARN_S), well under the prefill's 2.74 s paced at pace factor 1, far over a decode round's."""


def _long_prefill_server(pace_factor: float = 1.0) -> Server:
    cfg = CentConfig(model=model_preset("llama3.2-1b"), parallel=ParallelConfig(1, 0, 1), numerics="off")
    cfg.scheduler.prefill_chunk_tokens = PROMPT_TOKENS
    cfg.server.port, cfg.server.clock, cfg.server.pace_factor = 0, "paced", pace_factor
    return Server(cfg, "local")


def _late_fractions(url: str) -> tuple[float, float]:
    """`cent:pace_late_fraction`'s (count, observations at most PACE_LATE_FRAC)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return (metric(text, "cent:pace_late_fraction_count"),
            metric(text, "cent:pace_late_fraction_bucket", le=str(PACE_LATE_FRAC)))


def _post_in_background(url: str, json: dict) -> None:
    """A completion request on its own thread; the server stopping under it ends it quietly."""
    def post() -> None:
        try:
            httpx.post(url + "/v1/completions", json=json, timeout=HANG_GUARD_S)
        except httpx.HTTPError:
            pass

    threading.Thread(target=post, daemon=True).start()


@pytest.mark.parametrize("slow_round, is_late", [(1, False), (3, True)], ids=["the prefill", "a decode round"])
def test_lateness_is_the_tokens_not_the_rounds_start(caplog, slow_round, is_late):
    """A 512-token prompt prefilled in one round of 2.74 simulated s at pace factor 1, made to take
    0.7 wall s more. The prefill: its token is due 2.74 s after the arrival and handed over about
    1 s after it, early, so nothing is late, though the round after it started 1 s after the
    engine's clock (the prefill round's start: the old measure, which warned of 'tokens 1.00 s late
    after a stall' of a request whose every token was early). A decode round of 7.3 ms that takes
    0.7 s more really is a stall: its token is late by at least the 0.7 s less one round, so the
    request is counted late once (one episode, over PACE_LATE_FRAC of the token's 2.76 s paced
    latency), observed above PACE_LATE_FRAC in cent:pace_late_fraction, and warned of as a stall
    the rounds keep up with. Counts and orders, no wall bound: load can only make tokens later, and
    the prefill's are 1.7 s early. A first request warms the engine (a cold cache's first round)."""
    caplog.set_level(logging.WARNING, logger="cent.serving")
    long = body(model="llama3.2-1b", prompt=[5] * PROMPT_TOKENS, max_tokens=4)
    with _long_prefill_server() as s:
        warm = httpx.post(s.url + "/v1/completions", json=long, timeout=HANG_GUARD_S)
        assert warm.status_code == 200 and warm.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
        assert warm.json()["cent"]["ttft_s"] > 2 * SLOW_S + 1  # the prefill is long enough
        before, hist_before = status(s.url), _late_fractions(s.url)
        caplog.clear()

        step, rounds = s.loop.engine.step, []

        def slow_step():  # the engine thread's round, `slow_round`th of the request slower by SLOW_S
            out = step()
            rounds.append(1)
            if len(rounds) == slow_round:
                time.sleep(SLOW_S)
            return out

        s.loop.engine.step = slow_step
        r = httpx.post(s.url + "/v1/completions", json=long, timeout=HANG_GUARD_S)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        after = status(s.url)  # the first read after the run: nothing in flight, no lag
        count, on_time = _late_fractions(s.url)
    assert len(rounds) == 4  # a prefill round, then one a token
    assert after["pace_lag_s"] == 0.0
    assert count == hist_before[0] + 1
    warnings = [rec.getMessage() for rec in caplog.records if "paced mode" in rec.getMessage()]
    late = after["pace_late_requests"] - before["pace_late_requests"]
    episodes = after["pace_lag_episodes"] - before["pace_lag_episodes"]
    if not is_late:
        assert (late, episodes, warnings) == (0, 0, [])
        assert on_time == hist_before[1] + 1
        return
    assert (late, episodes, on_time) == (1, 1, hist_before[1])
    assert after["pace_late_frac_max"] > PACE_LATE_FRAC
    assert len(warnings) == 1 and "after a stall" in warnings[0], warnings
    said = float(re.search(r"up to ([\d.]+) s late", warnings[0]).group(1))
    assert said > PACE_LAG_WARN_S  # the stall's 0.7 s less one 7 ms round, at least


def test_the_first_status_after_a_run_shows_no_lag():
    """At pace factor 1e-4 every token is late, so the lag is far above 0 while a request runs. The
    first status read after its last token, taken by the engine thread right after that token is
    handed over (so no wait can hide a stale figure), says 0: nothing is in flight. The late count
    and the worst fraction stay. Before, the lag stayed until the idle engine thread next looked."""
    with Server(server_cfg(clock="paced", pace_factor=1e-4), "local") as s:
        loop, reads = s.loop, []
        finish = loop.on_finish

        def then_read(req):  # engine thread, as the request ends: a status read queued behind it
            finish(req)
            fut: cf.Future = cf.Future()
            loop.inbox.put(("call", lambda eng: loop.status(), fut))
            reads.append(fut)

        loop.on_finish = then_read
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=16), timeout=HANG_GUARD_S)
        assert r.status_code == 200
        first = reads[0].result(HANG_GUARD_S)
    assert first["num_running"] == 0 and first["pace_lag_s"] == 0.0
    assert first["pace_late_requests"] == 1 and first["pace_late_frac_max"] > PACE_LATE_FRAC


def test_the_lag_is_the_last_rounds_latest_token_never_below_0_and_a_request_is_late_once():
    """`PaceMonitor.lag_s` is how late the last round that delivered tokens handed its latest one over
    (the most late of its requests' first new tokens), not the last request's of that round nor an
    earlier round's; an early token is a lag of 0, not a negative one (the gauge's 'on time'); a
    round that delivers nothing (a prefill chunk) keeps the last figure. A request whose worst token so
    far was exactly PACE_LATE_FRAC late was not counted, so a later, later token counts it, once."""
    mon = PaceMonitor(pace_factor=1.0)
    mon.stepped(0.01, 0.01)
    for late_s in (0.3, -1.0, 0.1):  # three requests' tokens in one round
        mon.delivered(late_s, 100.0, 0.0)
    assert mon.lag_s == 0.3
    mon.stepped(0.01, 0.01)
    mon.delivered(0.05, 100.0, 0.0)
    assert mon.lag_s == 0.05  # the new round's own, not the last one's 0.3
    mon.stepped(0.01, 0.01)
    mon.delivered(-2.0, 100.0, 0.0)
    assert mon.lag_s == 0.0  # early
    mon.stepped(0.01, 0.01)
    mon.delivered(0.2, 100.0, 0.0)
    mon.stepped(0.01, 0.01)  # a round that delivers nothing
    assert mon.lag_s == 0.2 and mon.num_late_requests == 0
    worst = mon.delivered(PACE_LATE_FRAC * 10.0, 10.0, 0.0)
    assert worst == PACE_LATE_FRAC and mon.num_late_requests == 0  # at the bound: not late
    worst = mon.delivered(2.0, 10.0, worst)
    assert worst == pytest.approx(0.2) and mon.num_late_requests == 1
    mon.delivered(3.0, 10.0, worst)
    assert mon.num_late_requests == 1  # once


def test_the_virtual_clock_observes_no_lateness():
    """On the virtual clock nothing is paced, so nothing is late or on time: after a request the
    histogram cent:pace_late_fraction has no observation (it would count every sequence as on time
    and dilute a paced server's share late) and the late counter and lag stay 0."""
    with Server(server_cfg(), "local") as s:
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=8), timeout=HANG_GUARD_S)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        st = status(s.url)
        text = httpx.get(s.url + "/metrics", timeout=HANG_GUARD_S).text
    assert st["clock_mode"] == "virtual" and metric(text, "vllm:request_success_total", finished_reason="length") == 1
    assert metric(text, "cent:pace_late_fraction_count") == 0
    assert (st["pace_lag_s"], st["pace_late_requests"], st["pace_lag_episodes"]) == (0.0, 0, 0)


LONG_TOKENS = 16
"""The long request's tokens: any number over 1 will do, as its last round waits for the short one."""


def test_an_episode_goes_on_when_a_request_ends_while_another_is_in_flight():
    """At pace factor 1e-4 every token is late: one episode of lag while anything is in flight. A
    short request sent while a long one runs arrives far past the engine's clock (10,000 simulated s
    a wall second), so it waits until the long one ends, and is in flight then: the long one's end
    ends neither the episode nor the lag (only the last request in flight does, `EngineLoop._deliver`);
    ending it there would make the short one's late tokens a second episode. The long one's last
    round waits (the engine thread passes its turns, taking commands between) until the short one is
    in the engine, so the short one is in flight at the long one's end however loaded the machine:
    before, a 1,000-token request was to outlast the short one's trip, which load made a race."""
    with Server(server_cfg(clock="paced", pace_factor=1e-4), "local") as s:
        eng, step = s.loop.engine, s.loop.engine.step

        def last_round_after_the_short_one_arrives():  # the engine thread's round
            if eng.stats.generation_tokens == LONG_TOKENS - 1 and len(eng.requests) == 1:
                time.sleep(0.001)
                return []  # no round: the loop takes its commands (the short one's arrival) and comes back
            return step()

        eng.step = last_round_after_the_short_one_arrives
        _post_in_background(s.url, body(max_tokens=LONG_TOKENS))
        wait_for(lambda: status(s.url)["pace_lag_episodes"] == 1, "the long request late")
        r = httpx.post(s.url + "/v1/completions", json=body(max_tokens=4), timeout=HANG_GUARD_S)
        assert r.status_code == 200
        st = status(s.url)
    assert st["num_finished"] == 2 and st["generation_tokens"] == LONG_TOKENS + 4
    assert st["pace_lag_episodes"] == 1 and st["pace_late_requests"] == 2


def test_a_round_after_a_long_one_is_computed_ahead_of_the_wall_clock_and_the_next_waits():
    """The paced engine starts a round once the wall clock reaches its boundary
    (`Engine.next_start_s`: the latest time a lane of the last round began), not its lanes' start.
    So the round after a long one (a 2.74 s prefill at pace factor 100: 274 wall s) is computed at
    once, its lane starting where the prefill ends, 2.7 simulated s ahead of the wall clock; the
    round after that waits for the wall clock. A request arriving meanwhile is admitted at the same
    boundary as on the virtual clock (`Scheduler.schedule` admits arrivals up to it), and the API
    holds the early tokens until they are due, so no simulated time changes: one round is computed
    early, no more. The second request, still waiting, ends with no token as the server stops and
    is not observed in the lateness histogram (`on_late`: sequences given a token). Counts and
    simulated times; the one wall assumption, that 1 s of sleep passes before 270 s, has a 270x
    margin."""
    with _long_prefill_server(pace_factor=100.0) as s:
        _post_in_background(s.url, body(model="llama3.2-1b", prompt=[5] * PROMPT_TOKENS, max_tokens=4))
        ran = wait_for(lambda: (x := status(s.url))["num_rounds"] >= 2 and x, "two rounds")
        observed = []
        s.loop.on_late = observed.append  # called as the server stops: both requests end then
        _post_in_background(s.url, body(model="llama3.2-1b", max_tokens=4))
        wait_for(lambda: status(s.url)["num_waiting"] == 1, "a second request waiting for the next round")
        time.sleep(1.0)
        later = status(s.url)
    assert ran["num_rounds"] == later["num_rounds"] == 2  # the prefill, one decode round, then a wait
    assert ran["clock_s"] > later["sim_now_s"] + 2.7  # the decode round's lane starts at the prefill's end
    assert later["clock_s"] == ran["clock_s"] and later["generation_tokens"] == 2
    assert observed == [0.0]  # the stop aborts both: the one given no token is not observed
