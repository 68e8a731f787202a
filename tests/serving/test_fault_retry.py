"""A replica's devices die under a round that produced nothing for its requests (the race of a round
sent in the instant before the host read the death): those requests start again on the re-created
devices, once; a request with tokens streamed, a device's own error, a second death and a lost
cluster fail as before. The engine alone, with fake executors (`Breakable`, `Rebuild` from
tests/serving/utils.py); test_faults.py kills real actors on Ray."""
from __future__ import annotations

import pytest

from cent_serve.request import RequestParams, SamplingParams
from fabric.link import LinkClosed
from fabric.wire import remote_error, error_message
from tests.serving.utils import OK, Breakable, breakable_replicas, wait_for

PARAMS = RequestParams(max_tokens=4, ignore_eos=True, sampling=SamplingParams(seed=7))


class Dying(Breakable):
    """A `Breakable` whose broken round raises `error` (a lost device's closed link by default)."""

    error: BaseException = LinkClosed("link to local socket b'device0' closed while sending: [Errno 32] Broken pipe")

    def submit(self, plan):
        if self.broken:
            raise self.error
        return self.inner.submit(plan)


def _engine():
    cfg, (device,), rebuild, eng = breakable_replicas(1)
    dying = Dying(cfg)
    eng.replicas.executors[0] = dying
    return eng, dying, rebuild


def _until_done(eng, req) -> None:
    for _ in range(100):
        if req.is_finished:
            return
        wait_for(eng.can_step, "a replica to run on")
        eng.step()
    raise AssertionError("not finished in 100 rounds")


def _reference() -> list[int]:
    """The tokens of the request on devices that never die."""
    eng, _, _ = _engine()
    req = eng.add_request([1, 5, 6], PARAMS)
    _until_done(eng, req)
    return req.output_ids


@pytest.mark.parametrize("error", [LinkClosed("link closed by local socket b'device3'"),  # the host's receive
                                   remote_error(error_message(LinkClosed(  # the chain's error for a dead device
                                       "device 3's input link from device 2 closed (device 2 or the link is gone)")))])
def test_a_request_with_nothing_produced_waits_for_the_re_created_devices(error):
    eng, dying, rebuild = _engine()
    dying.error, dying.broken = error, True
    req = eng.add_request([1, 5, 6], PARAMS)
    assert eng.step() == []  # its round failed: nothing advanced, nothing failed
    assert not req.is_finished and req in eng.scheduler.waiting and req.num_computed == 0
    assert (eng.stats.num_failed, eng.scheduler.num_preemptions, req.num_fault_retries) == (0, 0, 1)
    assert eng.recovering and eng.last_fault.endswith("; 1 request on it with nothing produced waits for the "
                                                      "re-created devices"), eng.last_fault
    assert "LinkClosed" in eng.last_fault
    rebuild.plan.put(OK)
    _until_done(eng, req)
    assert req.finish_reason == "length" and req.error is None
    assert req.output_ids == _reference()  # as if the devices had never died
    assert eng.replicas.num_recoveries == 1


def test_a_second_death_fails_it():
    """Once only: a request that itself kills its devices does not re-create them for ever."""
    eng, dying, rebuild = _engine()
    dying.broken = True
    req = eng.add_request([1, 5, 6], PARAMS)
    eng.step()
    rebuild.plan.put(OK)
    wait_for(eng.can_step, "the re-created replica")
    rebuild.made[0].__class__ = Dying
    rebuild.made[0].broken = True
    assert eng.step() == [req] and req.finish_reason == "error" and eng.stats.num_failed == 1
    assert req.error.startswith("the emulated devices of replica 0 failed: LinkClosed")


def test_a_request_with_a_token_streamed_fails_as_before():
    eng, dying, rebuild = _engine()
    req = eng.add_request([1, 5, 6], PARAMS)
    while not req.output_ids:
        eng.step()
    dying.broken = True
    assert eng.step() == [req] and req.finish_reason == "error" and req.num_fault_retries == 0
    assert eng.last_fault.endswith("the request was stopped, retry it"), eng.last_fault


@pytest.mark.parametrize("why", ["device_error", "cluster"])
def test_a_device_s_own_error_or_a_lost_cluster_fails_it_as_before(why):
    """A device's error while computing (here a RuntimeError) may be the round's own doing; a lost Ray
    head fails its requests at once (docs/serving.md)."""
    eng, dying, rebuild = _engine()
    dying.broken = True
    if why == "device_error":
        dying.error = RuntimeError("a device raised while computing")
    else:
        eng.cluster_fault = lambda: "the Ray cluster's head at 127.0.0.1:1 stopped answering"
    req = eng.add_request([1, 5, 6], PARAMS)
    assert eng.step() == [req] and req.finish_reason == "error" and eng.stats.num_failed == 1


def test_a_choice_with_nothing_produced_fails_with_its_sibling_that_had_output():
    """The choices of one API request (n, or a list of prompts) answer together: one that fails makes
    the reply an error whatever the others do, so a choice with nothing produced is not queued again
    to compute, on re-created devices, what nobody reads (the reply waited for it). A request alone,
    on the same round, still is."""
    cfg, _, rebuild, _ = breakable_replicas(1)
    cfg.scheduler.max_seqs_per_stage = 3
    from cent_serve.engine import Engine

    dying = Dying(cfg)
    eng = Engine(cfg, executors=[dying], remake=rebuild)
    short, long_ = eng.add_request([1], PARAMS), eng.add_request([1, 5, 6, 7, 8], PARAMS)
    short.choices = long_.choices = [short, long_]  # as the API queues a request's choices
    alone = eng.add_request([1, 5, 6, 7, 9], PARAMS)
    eng.step()  # one prompt token a round: the short prompt's choice has a token, the long one's none
    assert short.output_ids and not long_.output_ids and not alone.output_ids
    dying.broken = True
    failed = eng.step()
    assert set(failed) == {short, long_} and long_.finish_reason == "error" and long_.num_fault_retries == 0
    assert alone in eng.scheduler.waiting and alone.num_fault_retries == 1
    assert eng.stats.num_failed == 2 and not eng.scheduler.running


class DyingAtSecondRound(Dying):
    """Its devices die under its second round (a lost device's closed link)."""

    rounds = 0

    def submit(self, plan):
        self.rounds += 1
        self.broken = self.broken or self.rounds == 2
        return super().submit(plan)


def test_the_api_queues_a_request_s_choices_together():
    """Over HTTP: two prompts in one completion, one with a token when the devices die, one without:
    the reply is the device fault's 500, and the choice with nothing produced failed with it rather
    than run again on the re-created devices (which are ready at once here)."""
    import httpx

    from api.server import Server
    from cent_serve.engine import Engine
    from tests.serving.utils import HANG_GUARD_S, OK, body, status

    cfg, _, rebuild, _ = breakable_replicas(1)
    cfg.scheduler.max_seqs_per_stage = 2
    eng = Engine(cfg, executors=[DyingAtSecondRound(cfg)], remake=rebuild)
    rebuild.plan.put(OK)
    with Server(cfg, "local", engine=eng) as s:
        r = httpx.post(s.url + "/v1/completions", json=body(prompt=[[1], [1, 5, 6, 7, 8]]), timeout=HANG_GUARD_S)
        assert r.status_code == 500 and r.json()["error"]["cent"]["code"] == "device_fault", r.text
        st = status(s.url)
        assert (st["num_failed"], st["num_running"], st["num_waiting"]) == (2, 0, 0), st


def test_a_choice_whose_sibling_failed_before_on_another_replica_is_not_queued_again():
    cfg, _, rebuild, _ = breakable_replicas(2)
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    short, long_ = eng.add_request([1], PARAMS), eng.add_request([1, 5, 6, 7, 8], PARAMS)
    short.choices = long_.choices = [short, long_]
    eng.step()
    assert (short.replica, long_.replica) == (0, 1) and short.output_ids and not long_.output_ids
    devices[0].broken = True
    assert eng.step() == [short] and short.finish_reason == "error"
    devices[1].broken = True
    assert eng.step() == [long_] and long_.finish_reason == "error" and long_.num_fault_retries == 0
