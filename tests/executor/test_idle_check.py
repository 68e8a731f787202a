"""The idle check and a /metrics scrape on a slow host: a device is hung when it leaves a call
unanswered for `server.round_timeout_s`, the bar a round has, not after a few seconds; neither holds
the engine thread longer than CHECK_WAIT_S. Fake time: Ray's wait is replaced by one that lets its
whole timeout pass on a fake clock until the actors' answers are due."""
from __future__ import annotations

import logging
import time

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.executor import ray_executor
from cent_serve.serving import HEALTH_CHECK_S

pytestmark = pytest.mark.ray

ANSWER_WAIT_S = 60.0
"""Longest real wait for answers that are due (the actors are healthy: they come at once)."""
DEATH_POLLS = 600
"""Calls a killed actor may still answer before Ray ends it (in practice one or two)."""


class SlowHost:
    """`ray.wait` and a clock for a host whose actors answer at `answer_at_s` (fake seconds): before
    then nothing is ready and the wait's whole timeout passes on the clock; from then on Ray's own
    answers (the real actors')."""

    def __init__(self, real_wait, answer_at_s: float = float("inf")) -> None:
        self.real_wait, self.answer_at_s = real_wait, answer_at_s
        self.now_s = 0.0
        self.waits_s: list[float] = []  # each wait's timeout: how long it may hold the engine thread

    def clock(self) -> float:
        return self.now_s

    def wait(self, refs, num_returns: int = 1, timeout: float | None = None, **kw):
        self.waits_s.append(timeout)
        if self.now_s + timeout < self.answer_at_s:
            self.now_s += timeout
            return [], list(refs)
        self.now_s = max(self.now_s, self.answer_at_s)
        return self.real_wait(refs, num_returns=num_returns, timeout=ANSWER_WAIT_S, **kw)


@pytest.fixture(scope="module")
def executor(ray_cluster):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1))
    ex = ray_executor.RayExecutor(cfg)
    yield ex
    ex.shutdown()


def _engine(executor, monkeypatch, answer_at_s: float) -> tuple[Engine, SlowHost, list]:
    """An engine on `executor`, its Ray slow (`SlowHost`), and the faults it would re-create the
    replica for (counted, not acted on)."""
    slow = SlowHost(ray_executor.ray.wait, answer_at_s)
    monkeypatch.setattr(ray_executor.ray, "wait", slow.wait)
    monkeypatch.setattr(executor, "clock", slow.clock, raising=False)
    eng = Engine(executor.cfg, executors=[executor])
    recreated = []
    monkeypatch.setattr(eng.replicas, "fail", lambda replica, exc: recreated.append((replica, exc)))
    return eng, slow, recreated


def _idle_check(eng: Engine, slow: SlowHost) -> None:
    """The engine loop's idle check, HEALTH_CHECK_S after the last."""
    slow.now_s += HEALTH_CHECK_S
    eng.check_devices()


def test_a_scrape_before_any_stats_answer_serves_the_figures_the_executor_started_with(executor, monkeypatch):
    # first in the module: no stats call but the executor's own (at its start) was answered yet
    eng, slow, recreated = _engine(executor, monkeypatch, float("inf"))
    devices, fabrics, terms = eng.stats_now(scrape=True)
    assert [d["device_id"] for d in devices] == [0, 1] and len(fabrics) == 1 and terms is not None
    assert slow.waits_s == [ray_executor.CHECK_WAIT_S] and recreated == []
    executor._asked.clear()  # the scrape's call, never to be answered on this fake host


def test_devices_answering_an_idle_check_late_but_within_the_round_timeout_are_not_re_created(executor,
                                                                                                monkeypatch):
    timeout_s = executor.cfg.server.round_timeout_s
    answer_at_s = 20.0  # 15 s after the first check asks: past the old 10 s bar, far within a round's
    assert answer_at_s < timeout_s
    eng, slow, recreated = _engine(executor, monkeypatch, answer_at_s)
    for _ in range(5):
        _idle_check(eng, slow)
    assert slow.now_s > answer_at_s  # the answers came, and later checks were answered too
    assert recreated == [] and eng.last_fault is None
    assert max(slow.waits_s) <= ray_executor.CHECK_WAIT_S  # no check held the engine thread longer
    assert not executor._asked  # nothing left pending


def test_devices_silent_for_the_round_timeout_are_hung_at_the_first_check_past_it(executor, monkeypatch):
    timeout_s = executor.cfg.server.round_timeout_s
    eng, slow, recreated = _engine(executor, monkeypatch, float("inf"))
    _idle_check(eng, slow)
    sent_s = slow.now_s - slow.waits_s[0]  # the check's call went out as it began
    for _ in range(int(timeout_s / HEALTH_CHECK_S) + 2):  # bounded: a check that never fails must not hang the test
        before_s = slow.now_s
        _idle_check(eng, slow)
        if recreated:
            break
    assert before_s - sent_s <= timeout_s < slow.now_s - sent_s  # not one check earlier
    assert max(slow.waits_s) <= ray_executor.CHECK_WAIT_S
    [(replica, exc)] = recreated
    assert replica == 0 and isinstance(exc, ray_executor.DevicesHung)
    assert str(exc).startswith("device 0, device 1, the switch gave no answer to a health check within 300 s "
                               "(server.round_timeout_s)")


def test_a_scrape_serves_the_last_figures_while_the_devices_are_slow_and_results_wait_for_fresh_ones(
        executor, monkeypatch, caplog):
    eng, slow, recreated = _engine(executor, monkeypatch, 40.0)
    fresh = eng.stats_now()  # a call sent now, answered at 40 fake s: waited for (a result's figures)
    assert slow.now_s == 40.0 and len(fresh[0]) == 2
    num_waits = len(slow.waits_s)
    slow.answer_at_s = 100.0
    with caplog.at_level(logging.WARNING, logger=ray_executor.__name__):
        for _ in range(3):  # three scrapes, 5 s apart, before the devices answer
            slow.now_s += 5.0
            assert eng.stats_now(scrape=True) == fresh  # the last figures answered
            assert executor.figures_age_s == slow.now_s - 40.0  # and how old they are (the status says it)
    assert len(slow.waits_s) == num_waits + 3 and max(slow.waits_s[num_waits:]) <= ray_executor.CHECK_WAIT_S
    stale = [r.getMessage() for r in caplog.records if "stats call" in r.getMessage()]
    assert stale == ["the devices have not answered a stats call in 0.5 s (a loaded host?): a scrape serves "
                     "their figures of 5.5 s ago"]  # once for the call, not at every scrape
    slow.now_s = 100.0
    assert eng.stats_now(scrape=True) == fresh  # the pending call's answers (nothing ran since)
    assert executor.figures_age_s == 0.0
    assert recreated == [] and not executor._asked


def test_results_never_take_the_answers_of_a_call_a_scrape_left_pending(executor, monkeypatch):
    eng, slow, recreated = _engine(executor, monkeypatch, 30.0)
    sent = []
    real_send = executor._send
    monkeypatch.setattr(executor, "_send", lambda method: sent.append((method, slow.now_s)) or real_send(method))
    slow.now_s = 10.0
    eng.stats_now(scrape=True)  # left pending: sent at 10 s
    slow.now_s = 20.0
    assert executor.stats()["devices"] and slow.now_s == 30.0  # cent simulate's figures: waited for
    assert sent == [("stats", 10.0), ("stats", 20.0)]  # from a call sent when asked, not the one pending since 10 s
    assert max(slow.waits_s) <= ray_executor.CHECK_WAIT_S and not executor._asked
    slow.answer_at_s = 80.0
    slow.now_s = 50.0
    assert executor.energy_terms_j() and slow.now_s == 80.0  # (the other result's read) fresh too
    assert sent[-1] == ("stats", 50.0) and recreated == []


def test_a_dead_device_fails_the_first_idle_check(executor, monkeypatch):
    import ray

    eng, slow, recreated = _engine(executor, monkeypatch, 0.0)
    victim = executor.actors[1]
    ray.kill(victim)
    for _ in range(DEATH_POLLS):  # ray.kill is asynchronous: a call may still be answered until it lands
        try:
            ray.get(victim.ready.remote(), timeout=ANSWER_WAIT_S)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"device 1's actor still answers after {DEATH_POLLS} calls")
    # the other actors slow (their answers not in): the dead one's error still fails this check
    refs_of = {}
    real_send = executor._send

    def send(method):
        asked = real_send(method)
        refs_of[method] = asked.refs
        return asked

    def wait(refs, num_returns=1, timeout=None, **kw):
        slow.now_s += timeout
        dead = refs_of["ready"][1]  # device 1's (actors in device order, then the switch)
        return [r for r in refs if r == dead], [r for r in refs if r != dead]

    monkeypatch.setattr(executor, "_send", send)
    monkeypatch.setattr(ray_executor.ray, "wait", wait)
    _idle_check(eng, slow)
    [(replica, exc)] = recreated
    assert replica == 0 and isinstance(exc, ray.exceptions.RayActorError)
    assert not executor._asked  # the failed call is not read again
    monkeypatch.setattr(ray_executor.ray, "wait", slow.wait)  # every answer in: the dead one's error again
    _idle_check(eng, slow)
    assert len(recreated) == 2 and isinstance(recreated[1][1], ray.exceptions.RayActorError)
