"""A replica's devices die under a round (a lost actor's closed link, Ray's word of an actor gone):
the round produced nothing, so each request on them is queued again, once (`FAULT_RETRIES`): one
with nothing produced starts over, one with tokens is recomputed as a preemption is (prompt and
output so far prefilled again) and goes on as if the devices had never died. A device's own error,
a hang, a second death and a lost cluster fail as before; the choices of one API request fail
together. The engine alone, with fake executors (`Breakable`, `Rebuild` from tests/serving/utils.py);
test_faults.py kills real actors on Ray."""
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


def _engine_of(cfg):
    """An engine of one replica of `cfg` whose devices die when told (`Dying`)."""
    from cent_serve.engine import Engine
    from tests.serving.utils import Rebuild

    dying, rebuild = Dying(cfg), Rebuild(cfg)
    return Engine(cfg, executors=[dying], remake=rebuild), dying, rebuild


def _run(cfg, params, die_after: int | None):
    """The request [1, 5, 6, 7, 9, 11] to its end on `cfg`'s engine, its devices dying under the round
    after its `die_after`-th token (None: never); returns the engine, the request and each round's
    output ids (a stream sends each round's ids past the last's: `EngineLoop._deliver`)."""
    eng, dying, rebuild = _engine_of(cfg)
    req = eng.add_request([1, 5, 6, 7, 9, 11], params)
    seen = []
    for _ in range(200):
        if req.is_finished:
            return eng, req, seen
        if len(req.output_ids) == die_after and not req.num_fault_retries:
            dying.broken = True
            rebuild.plan.put(OK)
        wait_for(eng.can_step, "a replica to run on")
        eng.step()
        seen.append(list(req.output_ids))
    raise AssertionError("not finished in 200 rounds")


@pytest.mark.parametrize("sampling", [SamplingParams(seed=7), SamplingParams(temperature=0)], ids=["seeded", "greedy"])
@pytest.mark.parametrize("die_after", [1, 3])
def test_a_request_with_tokens_is_recomputed_and_ends_as_without_the_fault(sampling, die_after):
    """Timing-only: the request's prompt and output so far are prefilled again on the re-created devices
    and its decoding goes on; its reply is the same as without the fault (the round that failed drew
    nothing from its generator), each round's output extends the last one's (a stream sends no token
    twice and misses none), its first token, usage and prompt count stand, and it is no preemption."""
    from tests.serving.utils import server_cfg

    params = RequestParams(max_tokens=6, ignore_eos=True, sampling=sampling, logprobs=1)
    _, ref, _ = _run(server_cfg(devices=1, pp=1), params, None)
    eng, req, seen = _run(server_cfg(devices=1, pp=1), params, die_after)
    assert req.finish_reason == "length" and req.error is None and req.num_fault_retries == 1
    assert req.output_ids == ref.output_ids and len(req.logprobs) == len(req.token_times_s) == 6
    assert all(a == b[:len(a)] for a, b in zip(seen, seen[1:]))  # only ever extended
    at = next(i for i, x in enumerate(seen) if len(x) == die_after)  # the round after its token: the fault's
    assert seen[at + 1] == seen[at] and seen[at + 2] == seen[at]  # that round, then the prompt's, add nothing
    assert req.token_times_s[:die_after] == ref.token_times_s[:die_after]
    assert req.first_token_s == ref.first_token_s and req.timing()["ttft_s"] == ref.timing()["ttft_s"]
    assert req.finish_s > ref.finish_s  # the recompute took its time
    assert (eng.stats.prompt_tokens, eng.stats.generation_tokens) == (6, 6)  # usage: counted once
    assert (eng.stats.num_failed, eng.stats.num_fault_retries, eng.scheduler.num_preemptions,
            req.timing()["preemptions"]) == (0, 1, 0, 0)
    assert eng.status()["num_fault_retries"] == 1
    # a bench replay's bar counts the recompute as work: the 6 prompt tokens and die_after - 1 outputs
    # computed before the fault, a round each again (prefill_chunk_tokens 1)
    assert eng.scheduler.rounds_redone == 6 + die_after - 1
    assert eng.last_fault.endswith("; 1 request on it with tokens produced waits to be recomputed (prompt and "
                                   "output so far)"), eng.last_fault


@pytest.mark.parametrize("chunk", [1, 4])
def test_with_full_numerics_a_recomputed_request_draws_the_same_tokens(chunk):
    """Full numerics: the recompute prefills the prompt and output again, `chunk` tokens a round. Token
    by token (the default `scheduler.prefill_chunk_tokens` 1) the logits are those of the decode, bit for
    bit; in chunks of 4 they may differ in the last bits (float32 sums in another order: measured up to
    7e-7 in a log-probability), which left this seeded request's tokens as they were."""
    from tests.serving.utils import server_cfg

    cfg = server_cfg("full", devices=1, pp=1)
    cfg.scheduler.prefill_chunk_tokens = chunk
    params = RequestParams(max_tokens=8, ignore_eos=True, sampling=SamplingParams(seed=3), logprobs=2)
    _, ref, _ = _run(cfg, params, None)
    _, req, _ = _run(cfg, params, 4)
    assert req.num_fault_retries == 1 and req.output_ids == ref.output_ids
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(ref.logprobs, req.logprobs))
    assert diff == 0.0 if chunk == 1 else diff < 1e-5, diff


def test_a_request_with_tokens_dying_a_second_time_fails():
    eng, dying, rebuild = _engine()
    req = eng.add_request([1, 5, 6], PARAMS)
    while not req.output_ids:
        eng.step()
    dying.broken = True
    assert eng.step() == [] and req.num_fault_retries == 1 and req in eng.scheduler.waiting
    rebuild.plan.put(OK)
    wait_for(eng.can_step, "the re-created replica")
    rebuild.made[0].__class__ = Dying
    rebuild.made[0].broken = True
    assert eng.step() == [req] and req.finish_reason == "error" and eng.stats.num_failed == 1
    assert eng.last_fault.endswith("the request was stopped, retry it"), eng.last_fault


@pytest.mark.parametrize("why", ["device_error", "hang", "cluster"])
@pytest.mark.parametrize("with_tokens", [False, True])
def test_a_device_s_own_error_a_hang_or_a_lost_cluster_fails_it_as_before(why, with_tokens):
    """A device's error while computing (here a RuntimeError) or a round that timed out may be the
    round's own doing; a lost Ray head fails its requests at once (docs/serving.md)."""
    eng, dying, rebuild = _engine()
    req = eng.add_request([1, 5, 6], PARAMS)
    while with_tokens and not req.output_ids:
        eng.step()
    dying.broken = True
    if why == "device_error":
        dying.error = RuntimeError("a device raised while computing")
    elif why == "hang":
        from cent_serve.executor.ray_executor import DevicesHung

        dying.error = DevicesHung("round 3 gave no output within 300 s (server.round_timeout_s)")
    else:
        eng.cluster_fault = lambda: "the Ray cluster's head at 127.0.0.1:1 stopped answering"
    assert eng.step() == [req] and req.finish_reason == "error" and eng.stats.num_failed == 1
    assert req.num_fault_retries == eng.stats.num_fault_retries == 0


def test_a_choice_queued_again_fails_with_its_sibling_that_fails():
    """The choices of one API request (n, or a list of prompts) answer together: one that fails makes
    the reply an error whatever the others do, so its sibling is not queued again to compute, on
    re-created devices, what nobody reads (the reply waited for it). A request alone, on the same
    round, still is; so are both choices when neither fails."""
    from cent_serve.engine import FAULT_RETRIES

    for first_retry_used in (False, True):
        cfg, _, rebuild, _ = breakable_replicas(1)
        cfg.scheduler.max_seqs_per_stage = 3
        eng, dying, rebuild = _engine_of(cfg)
        short, long_ = eng.add_request([1], PARAMS), eng.add_request([1, 5, 6, 7, 8], PARAMS)
        short.choices = long_.choices = [short, long_]  # as the API queues a request's choices
        alone = eng.add_request([1, 5, 6, 7, 9], PARAMS)
        eng.step()  # one prompt token a round: the short prompt's choice has a token, the long one's none
        assert short.output_ids and not long_.output_ids and not alone.output_ids
        if first_retry_used:
            short.num_fault_retries = FAULT_RETRIES  # as an earlier death it was recomputed after left it
        dying.broken = True
        failed = eng.step()
        assert alone in eng.scheduler.waiting and alone.num_fault_retries == 1
        if not first_retry_used:  # both go on from what they have
            assert failed == [] and list(eng.scheduler.waiting) == [short, long_, alone]
            assert eng.stats.num_failed == 0 and eng.stats.num_fault_retries == 3
            continue
        assert set(failed) == {short, long_} and long_.finish_reason == "error" and long_.num_fault_retries == 0
        assert eng.stats.num_failed == 2 and not eng.scheduler.running and eng.stats.num_fault_retries == 1


@pytest.mark.parametrize("erring", [0, 1])
def test_a_choice_fails_with_its_sibling_failing_on_another_replica_in_the_same_round(erring):
    """Two replicas fail in one round: the choice on replica `erring` with a device's own error fails, so
    its sibling on the other, whose devices were lost, fails with it, whichever replica is looked at
    first (replica 0's sibling was queued again when replica 1's error came second)."""
    cfg, devices, rebuild, eng = breakable_replicas(2)
    devices = eng.replicas.executors[:] = [Dying(cfg), Dying(cfg)]
    a, b = eng.add_request([1, 5], PARAMS), eng.add_request([1, 5], PARAMS)
    a.choices = b.choices = [a, b]
    eng.step()
    assert (a.replica, b.replica) == (0, 1)
    devices[erring].error = RuntimeError("a device raised while computing")
    devices[0].broken = devices[1].broken = True
    assert set(eng.step()) == {a, b} and a.finish_reason == b.finish_reason == "error"
    assert eng.stats.num_fault_retries == 0 and not eng.scheduler.waiting
    # each failed once, with its own replica's cause: the one failing second was not aborted by the first
    assert (eng.stats.num_failed, eng.stats.num_aborted) == (2, 0) and "replica 1" in b.error


@pytest.mark.parametrize("with_tokens", [False, True])
def test_two_replicas_failing_in_one_round_queue_their_requests_again_in_arrival_order(with_tokens):
    """Each replica's requests went to the front of the queue in turn, so replica 1's ended up ahead of
    replica 0's; they go back in arrival order (ahead of the request that was never admitted), in their
    prompt or with tokens produced alike."""
    cfg, _, rebuild, eng = breakable_replicas(2)
    cfg.scheduler.max_seqs_per_stage = 2
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    reqs = [eng.add_request([1, 5, 6, 7, 8, 9], PARAMS, arrival_s=1e-9 * i) for i in range(5)]  # all in by round 2
    while len(eng.scheduler.running) < 4 or (with_tokens and not all(q.output_ids for q in reqs[:4])):
        eng.step()
    assert [q.replica for q in reqs] == [0, 1, 0, 1, -1] and eng.scheduler.running == reqs[:4]
    assert all(bool(q.output_ids) == with_tokens for q in reqs[:4])
    devices[0].broken = devices[1].broken = True
    assert eng.step() == []
    assert list(eng.scheduler.waiting) == reqs and all(q.num_fault_retries == 1 for q in reqs[:4])


class DyingSeen(Dying):
    """A `Dying` whose death its links show before a round (`check_links`) and a status call finds
    (`stats`), as a lost actor's do."""

    def check_links(self):
        if self.broken:
            raise self.error

    def stats(self):
        if self.broken:
            raise self.error
        return super().stats()


@pytest.mark.parametrize("found_by", ["check_links", "stats_now"])
def test_two_replicas_found_dead_in_one_pass_queue_their_requests_again_in_arrival_order(found_by):
    """As a round's: replicas found dead by the link check before scheduling, or by a status call, go
    back together in arrival order (each replica recovered in turn put replica 1's ahead of replica 0's)."""
    cfg, _, rebuild, eng = breakable_replicas(2)
    cfg.scheduler.max_seqs_per_stage = 2
    from cent_serve.engine import Engine

    devices = [DyingSeen(cfg), DyingSeen(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    reqs = [eng.add_request([1, 5, 6, 7, 8, 9], PARAMS, arrival_s=1e-9 * i) for i in range(5)]
    while not all(q.output_ids for q in reqs[:4]):
        eng.step()
    assert [q.replica for q in reqs] == [0, 1, 0, 1, -1]
    devices[0].broken = devices[1].broken = True
    if found_by == "check_links":
        eng._check_links()
    else:
        assert eng.stats_now()[:2] == ([], [])
    assert list(eng.scheduler.waiting) == reqs and all(q.num_fault_retries == 1 for q in reqs[:4])
    assert not eng.scheduler.running and eng.stats.num_fault_retries == 4


class DyingAtSecondRound(Dying):
    """Its devices die under its second round (a lost device's closed link)."""

    rounds = 0

    def submit(self, plan):
        self.rounds += 1
        self.broken = self.broken or self.rounds == 2
        return super().submit(plan)


async def _stream(url: str, request: dict) -> dict:
    """A streamed completion's choices: {index: token ids in the order their chunks came}, the usage and
    the finish reasons."""
    import json

    import httpx

    from tests.serving.utils import HANG_GUARD_S

    ids, finish, usage = {}, {}, None
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", url + "/v1/completions", json=request, timeout=HANG_GUARD_S) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                usage = chunk.get("usage") or usage
                for c in chunk["choices"]:
                    ids.setdefault(c["index"], []).extend(c.get("token_ids") or [])
                    finish[c["index"]] = c.get("finish_reason") or finish.get(c["index"])
    return dict(ids=ids, finish=finish, usage=usage)


def test_over_http_a_streamed_request_s_choices_go_on_after_the_devices_die():
    """Over HTTP: two prompts in one streamed completion, one with a token when the devices die, one
    without: both go on on the re-created devices (ready at once here), and the stream carries every
    token once, the same as on devices that never die, with the usage."""
    import asyncio

    import httpx

    from api.server import Server
    from cent_serve.engine import Engine
    from tests.serving.utils import body, metric, status

    request = body(prompt=[[1], [1, 5, 6, 7, 8]], stream=True, seed=11, return_token_ids=True,
                   stream_options={"include_usage": True})
    got = {}
    for kind in (Breakable, DyingAtSecondRound):
        cfg, _, rebuild, _ = breakable_replicas(1)
        cfg.scheduler.max_seqs_per_stage = 2
        eng = Engine(cfg, executors=[kind(cfg)], remake=rebuild)
        rebuild.plan.put(OK)
        with Server(cfg, "local", engine=eng) as s:
            got[kind] = asyncio.run(_stream(s.url, request))
            st, text = status(s.url), httpx.get(s.url + "/metrics").text
            retries = 2 if kind is DyingAtSecondRound else 0
            assert (st["num_failed"], st["num_fault_retries"], st["num_preemptions"]) == (0, retries, 0), st
            assert metric(text, "cent:fault_retries_total") == retries and not metric(text, "vllm:num_preemptions_total")
    ref, out = got[Breakable], got[DyingAtSecondRound]
    assert out == ref and sorted(map(len, out["ids"].values())) == [4, 4], out
    assert out["usage"]["prompt_tokens"] == 6 and out["usage"]["completion_tokens"] == 8


def test_the_api_queues_a_request_s_choices_together():
    """Over HTTP: two prompts in one completion on two replicas that fail in the same round, one by a
    device's own error: the reply is the device fault's 500, and the other choice, whose devices were
    lost, failed with it rather than run again on the re-created devices (which are ready at once here)."""
    import httpx

    from api.server import Server
    from cent_serve.engine import Engine
    from tests.serving.utils import HANG_GUARD_S, body, status

    cfg, _, rebuild, _ = breakable_replicas(2)
    devices = [DyingAtSecondRound(cfg), DyingAtSecondRound(cfg)]
    devices[0].error = RuntimeError("a device raised while computing")
    eng = Engine(cfg, executors=devices, remake=rebuild)
    rebuild.plan.put(OK)
    rebuild.plan.put(OK)
    with Server(cfg, "local", engine=eng) as s:
        r = httpx.post(s.url + "/v1/completions", json=body(prompt=[[1], [1, 5, 6, 7, 8]]), timeout=HANG_GUARD_S)
        assert r.status_code == 500 and r.json()["error"]["cent"]["code"] == "device_fault", r.text
        st = status(s.url)
        assert (st["num_failed"], st["num_running"], st["num_waiting"]) == (2, 0, 0), st


def test_a_choice_running_on_another_replica_is_aborted_when_its_sibling_fails():
    """A choice fails on replica 0 with a device's own error while its sibling runs on replica 1, whose
    devices serve on: the reply is the 500 whatever the sibling does, so it is aborted in the same
    round (as a client's disconnect aborts it: counted aborted, its lane and KV free), with the
    failure's message, rather than left to finish (or, its devices dying later, queued again) for no one."""
    cfg, _, rebuild, _ = breakable_replicas(2)
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    short, long_ = eng.add_request([1], PARAMS), eng.add_request([1, 5, 6, 7, 8], PARAMS)
    short.choices = long_.choices = [short, long_]
    eng.step()
    assert (short.replica, long_.replica) == (0, 1) and short.output_ids and not long_.output_ids
    devices[0].error = RuntimeError("a device raised while computing")  # not a death: no recompute
    devices[0].broken = True
    assert eng.step() == [short, long_] and short.finish_reason == "error" and long_.finish_reason == "abort"
    assert long_.error == short.error and long_.num_fault_retries == 0 and not eng.scheduler.running
    assert (eng.stats.num_failed, eng.stats.num_aborted, eng.stats.num_fault_retries) == (1, 1, 0)
    devices[1].broken = True  # nothing is on it any more: nothing to fail or queue again
    assert eng.step() == [] and not eng.has_work() and eng.stats.num_failed == 1


def test_a_recompute_keeps_the_prompt_logprobs_it_has_and_asks_for_no_prompt_logits():
    """Full numerics in chunks of 4, with prompt_logprobs: the prompt's log-probabilities came with its
    first chunks (a stream sent them with the first token); the recompute after the devices died
    prefills the prompt in other chunks ([0:4] [4:8] where they were [0:4] [4:6]), whose float32 sums
    differed in the last bits, and overwrote the last one with another value (and asked the devices
    for a logits row per prompt position again). It keeps them, bit for bit, and asks for the
    sampling row alone."""
    from tests.serving.utils import server_cfg

    cfg = server_cfg("full", devices=1, pp=1)
    cfg.scheduler.prefill_chunk_tokens = 4
    params = RequestParams(max_tokens=6, ignore_eos=True, sampling=SamplingParams(seed=3), prompt_logprobs=2)
    _, ref, _ = _run(cfg, params, None)
    from cent_serve.executor import LocalExecutor

    rows, submit = [], LocalExecutor.submit

    def counting(self, plan):  # the devices' rounds, before the fault and on the re-created ones
        rows.append((len(plan.token_ids), int(plan.wants_logits.sum())))
        return submit(self, plan)

    LocalExecutor.submit = counting
    try:
        _, req, _ = _run(cfg, params, 2)
    finally:
        LocalExecutor.submit = submit
    assert req.num_fault_retries == 1 and req.output_ids == ref.output_ids
    assert [x and (x.token_id, x.logprob) for x in req.prompt_logprobs] == \
        [x and (x.token_id, x.logprob) for x in ref.prompt_logprobs]
    # the prompt [0:4] (4 rows) and [4:6] (2: the first token), a decode (the second); the round after
    # fails; the recompute [0:4] (no row, where it asked for 4) and [4:8] (the next token's row)
    assert rows[:5] == [(4, 4), (2, 2), (1, 1), (4, 0), (4, 1)], rows


def test_a_choice_queued_again_fails_when_its_sibling_fails_later():
    """The other order: a choice's devices die (it is queued again, and waits for a lane), then its
    sibling fails on another replica with a device's own error. The reply is the 500 whatever the
    waiting choice does, so it fails with its sibling rather than be recomputed for no one (it
    waited, then ran, while the reply waited for it)."""
    cfg, _, rebuild, _ = breakable_replicas(2)
    cfg.scheduler.max_seqs_per_stage = 1
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    a, b = eng.add_request([1, 5], PARAMS), eng.add_request([1, 5], PARAMS)
    a.choices = b.choices = [a, b]
    alone = eng.add_request([1, 6], PARAMS)
    eng.step(), eng.step()  # a prompt token a round
    assert (a.replica, b.replica) == (0, 1) and a.output_ids and b.output_ids
    devices[1].broken = True  # lost: b is queued again, replica 0 has no lane for it
    assert eng.step() == [a] and b in eng.scheduler.waiting and b.num_fault_retries == 1
    devices[0].error = RuntimeError("a device raised while computing")  # not a death: a fails
    devices[0].broken = True
    assert set(eng.step()) == {a, b} and a.finish_reason == b.finish_reason == "error"
    assert b.error == a.error and list(eng.scheduler.waiting) == [alone] and eng.stats.num_failed == 2


def test_requests_of_one_arrival_time_on_two_replicas_go_back_in_admission_order():
    """Requests that arrived together and ran on two replicas failing in one round: the sort by arrival
    left them grouped by replica (0, 2 then 1, 3); ties go back in admission order, as they were queued."""
    cfg, _, rebuild, eng = breakable_replicas(2)
    cfg.scheduler.max_seqs_per_stage = 2
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    reqs = [eng.add_request([1, 5, 6, 7, 8, 9], PARAMS, arrival_s=0.0) for _ in range(5)]
    eng.step()
    assert [q.replica for q in reqs] == [0, 1, 0, 1, -1] and eng.scheduler.running == reqs[:4]
    devices[0].broken = devices[1].broken = True
    assert eng.step() == []
    assert list(eng.scheduler.waiting) == reqs and all(q.num_fault_retries == 1 for q in reqs[:4])


@pytest.mark.parametrize("why", ["device_error", "second_death"])
def test_a_choice_never_admitted_fails_with_its_sibling(why):
    """One lane: choice a runs, choice b of the same API request waits for the lane. a fails (a device's
    own error, or its devices dying a second time): the reply is the 500 whatever b does, so b fails
    with a's message rather than wait and run for no one; a request alone waiting is left waiting."""
    from cent_serve.engine import FAULT_RETRIES

    eng, dying, rebuild = _engine()
    a, b = eng.add_request([1, 5], PARAMS), eng.add_request([1, 5], PARAMS)
    a.choices = b.choices = [a, b]
    alone = eng.add_request([1, 6], PARAMS)
    eng.step()
    assert a in eng.scheduler.running and b in eng.scheduler.waiting and b.num_fault_retries == 0
    if why == "device_error":
        dying.error = RuntimeError("a device raised while computing")
    else:
        a.num_fault_retries = FAULT_RETRIES
    dying.broken = True
    assert set(eng.step()) == {a, b} and a.finish_reason == b.finish_reason == "error"
    assert b.error == a.error and list(eng.scheduler.waiting) == [alone]
    assert eng.stats.num_failed == 2 and eng.stats.num_fault_retries == 0


def test_a_replica_with_requests_failing_and_going_again_says_both():
    """One death, two requests on it: one that has used its retry fails, the fresh one goes again; the
    status's fault names the stop and the wait (what `_recover` says of each replica)."""
    from cent_serve.engine import FAULT_RETRIES

    cfg, _, rebuild, _ = breakable_replicas(1)
    cfg.scheduler.max_seqs_per_stage = 2
    eng, dying, rebuild = _engine_of(cfg)
    used, fresh = eng.add_request([1, 5], PARAMS), eng.add_request([1, 6], PARAMS)
    eng.step()
    used.num_fault_retries = FAULT_RETRIES
    dying.broken = True
    assert eng.step() == [used] and used.finish_reason == "error" and list(eng.scheduler.waiting) == [fresh]
    assert eng.last_fault.endswith("; the request was stopped, retry it; 1 request on it with nothing produced "
                                   "waits for the re-created devices"), eng.last_fault


def test_a_round_s_exception_fails_the_waiting_choices_of_the_requests_it_fails():
    """`fail_running` (a round that raised, not a device fault): a choice still waiting fails with its
    sibling that was running, as a device fault's does; a request alone waiting is left."""
    eng, _, _ = _engine()
    a, b = eng.add_request([1, 5], PARAMS), eng.add_request([1, 5], PARAMS)
    a.choices = b.choices = [a, b]
    alone = eng.add_request([1, 6], PARAMS)
    eng.step()
    assert set(eng.fail_running("a round raised")) == {a, b} and b.error == "a round raised"
    assert list(eng.scheduler.waiting) == [alone] and eng.stats.num_failed == 2


def _one_of_two_requeued():
    """Two replicas of one lane place, max_waiting 1, a request running on each; replica 0's devices
    die: its request `a` is queued again, alone in the waiting queue. (engine, a, the replica rebuilder)."""
    from cent_serve.engine import Engine

    cfg, _, rebuild, _ = breakable_replicas(2)
    cfg.scheduler.max_waiting = 1
    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    a, b = eng.add_request([1, 5, 6, 7], PARAMS), eng.add_request([1, 5, 6, 7], PARAMS)
    eng.step()
    assert (a.replica, b.replica) == (0, 1) and not eng.scheduler.is_full()
    devices[0].broken = True
    eng.step()
    assert list(eng.scheduler.waiting) == [a] and eng.scheduler.num_requeued == 1
    return eng, a, rebuild


def test_requests_queued_again_after_a_fault_take_no_place_of_max_waiting():
    """Two replicas of one lane place, max_waiting 1, both running, none waiting: a new request would be
    let in. Replica 0's devices die and its request is queued again: it was admitted already, so a new
    request is still let in (before: 429, the requeued one filled the bound), and the bound holds for
    the next one. Once the replica is back the requeued request takes a place first."""
    from cent_serve.scheduler import QueueFull

    eng, a, rebuild = _one_of_two_requeued()
    new = eng.add_request([1, 6], PARAMS)
    with pytest.raises(QueueFull, match=r"1 requests are waiting for 0 free lane places \(after 1 queued again"):
        eng.add_request([1, 6], PARAMS)
    rebuild.plan.put(OK)
    wait_for(lambda: eng.can_step() and not eng.recovering, "the re-created replica")
    eng.step()
    assert a.replica == 0 and a in eng.scheduler.running and list(eng.scheduler.waiting) == [new]
    assert eng.scheduler.num_requeued == 0 and eng.scheduler.is_full()


def test_a_preemption_while_requests_wait_for_a_dead_replica_takes_no_place_of_max_waiting():
    """Two replicas of two places, max_waiting 1, two KV blocks a replica. Replica 0's devices die: its
    two requests are queued again, replica 1 is full, a new request would still be let in. Then replica
    1 runs out of KV and preempts one of its own: the place it leaves balances it, as a preemption's
    always did, so a new request is still let in (it was refused: the preempted request was counted as
    a new one, while the requeued ones were said to take the free place that it, at the front, takes).
    The bound holds for the next one."""
    from cent_serve.engine import Engine
    from cent_serve.scheduler import QueueFull

    cfg, _, rebuild, _ = breakable_replicas(2)
    cfg.scheduler.max_waiting = 1
    cfg.scheduler.max_seqs_per_stage = 2
    cfg.scheduler.prefill_chunk_tokens = 16
    cfg.scheduler.num_kv_blocks_override = 2  # a block of 16 tokens each: the 17th token needs a second one
    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    params = RequestParams(max_tokens=8, ignore_eos=True, sampling=SamplingParams(seed=7))
    reqs = [eng.add_request(list(range(1, 16)), params) for _ in range(4)]  # 15 prompt tokens: one block each
    eng.step()  # every prompt in one chunk: a first token each
    assert [q.replica for q in reqs] == [0, 1, 0, 1] and all(len(q.output_ids) == 1 for q in reqs)
    devices[0].broken = True
    eng.step()  # replica 0's round fails: its two are queued again; replica 1's make their 16th token
    assert list(eng.scheduler.waiting) == [reqs[0], reqs[2]] and eng.scheduler.num_requeued == 2
    assert not eng.scheduler.is_full()
    eng.step()  # replica 1's 17th tokens need a second block each: the later one is preempted
    assert eng.scheduler.num_preemptions == 1 and list(eng.scheduler.waiting) == [reqs[3], reqs[0], reqs[2]]
    assert not eng.scheduler.is_full()
    new = eng.add_request([1, 6], params)
    with pytest.raises(QueueFull):
        eng.add_request([1, 6], params)
    assert list(eng.scheduler.waiting) == [reqs[3], reqs[0], reqs[2], new]


def test_a_waiting_choice_of_two_failing_siblings_fails_once():
    """Three choices, two places: a and b run, c waits. a device's own error fails a and b, and c with
    them, once: one end for each choice, each counted once in num_failed."""
    cfg, _, rebuild, _ = breakable_replicas(1)
    cfg.scheduler.max_seqs_per_stage = 2
    eng, dying, rebuild = _engine_of(cfg)
    a, b, c = (eng.add_request([1, 5], PARAMS) for _ in range(3))
    a.choices = b.choices = c.choices = [a, b, c]
    eng.step()
    assert eng.scheduler.running == [a, b] and list(eng.scheduler.waiting) == [c]
    dying.error = RuntimeError("a device raised while computing")
    dying.broken = True
    failed = eng.step()
    assert sorted(q.request_id for q in failed) == sorted(q.request_id for q in (a, b, c)), failed
    assert eng.stats.num_failed == 3 and not eng.scheduler.waiting and c.error == a.error


def test_requests_admitted_out_of_arrival_order_go_back_in_arrival_order():
    """A request can be admitted after one that arrived later (here added after it, as a replica's
    preempted request re-admitted on another does): z and a arrived before b, b was admitted before a.
    Both replicas die: they go back in arrival order (z, a, b), not in admission order (z, b, a)."""
    cfg, _, rebuild, eng = breakable_replicas(2)
    cfg.scheduler.max_seqs_per_stage = 2
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    z = eng.add_request([1, 5, 6, 7], PARAMS, arrival_s=0.0)
    b = eng.add_request([1, 5, 6, 7], PARAMS, arrival_s=2e-9)
    a = eng.add_request([1, 5, 6, 7], PARAMS, arrival_s=1e-9)
    while len(eng.scheduler.running) < 3:  # z first, alone arrived; then b, then a, in the queue's order
        eng.step()
    assert eng.scheduler.running == [z, b, a] and (z.replica, b.replica, a.replica) == (0, 1, 0)
    devices[0].broken = devices[1].broken = True
    assert eng.step() == []
    assert list(eng.scheduler.waiting) == [z, a, b]


@pytest.mark.parametrize("how", ["abort", "fail"])
def test_a_requeued_request_that_ends_while_waiting_no_longer_counts_as_requeued(how):
    """Two replicas of one place, max_waiting 1: replica 0's devices die, its request is queued again
    and ends while waiting (its client aborts it; or no replica can serve, `fail_waiting`'s path,
    here `_fail`). It leaves the requeued ones too: the bound is max_waiting again (one new request
    waits, the next is refused), not one more per ended request."""
    from cent_serve.scheduler import QueueFull

    eng, a, rebuild = _one_of_two_requeued()
    assert list(eng.scheduler.waiting) == [a] and eng.scheduler.num_requeued == 1
    if how == "abort":
        assert eng.abort(a.request_id) is a and eng.stats.num_aborted == 1
    else:
        assert eng._fail([a], "no replica") == [a] and eng.stats.num_failed == 1
    assert not eng.scheduler.waiting and eng.scheduler.num_requeued == 0
    new = eng.add_request([1, 6], PARAMS)
    with pytest.raises(QueueFull):
        eng.add_request([1, 6], PARAMS)
    assert list(eng.scheduler.waiting) == [new]


def test_a_requeued_request_takes_the_free_place_a_new_one_would_count_on():
    """Two replicas of one place, max_waiting 1: replica 0's devices die and its request waits queued
    again; replica 0 comes back with a free place, before a round. That place is the requeued
    request's (it is at the front): one new request may wait, the next is refused (counting the
    place for the new ones as well let two wait, past max_waiting once the requeued one took it)."""
    from cent_serve.scheduler import QueueFull

    eng, a, rebuild = _one_of_two_requeued()
    rebuild.plan.put(OK)
    wait_for(lambda: eng.can_step() and not eng.recovering, "the re-created replica")
    assert eng.scheduler.free_seats == 1 and list(eng.scheduler.waiting) == [a]
    new = eng.add_request([1, 6], PARAMS)
    with pytest.raises(QueueFull, match=r"1 requests are waiting for 0 free lane places \(after 1 queued again"):
        eng.add_request([1, 6], PARAMS)
    eng.step()
    assert a in eng.scheduler.running and list(eng.scheduler.waiting) == [new]


def test_a_choice_that_ended_before_its_sibling_fails_keeps_its_end():
    """One choice finished (its length) and one was aborted by its client before their sibling fails
    with a device's own error: only the sibling ends now. The ended ones keep their ends and are
    neither ended again (as aborted: a finished choice counted twice, once in num_finished and once in
    num_aborted) nor returned again (a second end for a stream that had its last)."""
    cfg, _, rebuild, _ = breakable_replicas(2)
    from cent_serve.engine import Engine

    devices = [Dying(cfg), Dying(cfg)]
    eng = Engine(cfg, executors=devices, remake=rebuild)
    done = eng.add_request([1], RequestParams(max_tokens=1, ignore_eos=True, sampling=SamplingParams(seed=7)))
    running, gone = eng.add_request([1, 5, 6], PARAMS), eng.add_request([1], PARAMS)  # gone waits for a lane
    done.choices = gone.choices = running.choices = [done, running, gone]
    assert eng.step() == [done] and done.finish_reason == "length" and running.replica == 1
    assert eng.abort(gone.request_id) is gone and not running.is_finished
    devices[running.replica].error = RuntimeError("a device raised while computing")  # not a death: it fails
    devices[running.replica].broken = True
    assert eng.step() == [running] and running.finish_reason == "error"
    assert (done.finish_reason, done.error, gone.finish_reason, gone.error) == ("length", None, "abort", None)
    assert (eng.stats.num_finished, eng.stats.num_aborted, eng.stats.num_failed) == (1, 1, 1)


def test_the_fabric_bytes_counter_goes_on_from_the_old_devices_after_a_re_creation():
    """`cent:fabric_bytes_total{replica}` counts from the server's start: a re-created replica's new
    switch starts at 0, and the counter went back to it (Prometheus reads a drop as a reset, so rate()
    and increase() across it were wrong). Now the old devices' last figures read are carried forward."""
    from api.metrics import Metrics
    from tests.serving.utils import metric, server_cfg

    eng, dying, rebuild = _engine_of(server_cfg(devices=2, pp=2))  # two stages: the switch carries the hop
    metrics = Metrics("tiny")

    def scraped() -> float:
        devices, fabrics, _ = eng.stats_now(scrape=True)
        text = metrics.render(eng.status(), devices, fabrics).decode()
        return metric(text, "cent:fabric_bytes_total", replica="0")

    _until_done(eng, eng.add_request([1, 5, 6], PARAMS))
    before = scraped()
    assert before > 0
    dying.broken = True
    rebuild.plan.put(OK)
    req = eng.add_request([1, 5, 6], PARAMS)
    _until_done(eng, req)  # its first round dies with the devices; it runs again on the re-created ones
    assert req.num_fault_retries == 1 and eng.replicas.num_recoveries == 1
    moved = rebuild.made[0].stats()["fabric"]["wire_bytes"]  # the new switch's own count
    assert moved > 0 and scraped() == before + moved


class _Switch:
    """An executor whose switch has moved `wire_bytes` (and half as many framed), as `stats()` says."""

    def __init__(self, wire_bytes: int) -> None:
        self.wire_bytes = wire_bytes

    def stats(self) -> dict:
        return {"devices": [], "fabric": {"wire_bytes": self.wire_bytes, "framed_bytes": self.wire_bytes // 2,
                                          "ports": [{"bytes_out": self.wire_bytes}]}}

    def shutdown(self) -> None:
        pass


def test_a_replica_that_fails_twice_between_readings_carries_its_bytes_once():
    """`Replicas.fabric_totals` carries a failed executor's last figures read into its replica's totals, both
    of them (`framed_bytes` too), once: a re-created executor that fails before any reading (two faults
    within one scrape interval) adds nothing, not its predecessor's figures a second time. The ports stay
    the executor's own."""
    from cent_serve.replicas import Replicas

    made = [_Switch(0), _Switch(7)]
    replicas = Replicas(lambda: _Switch(100), 1, remake=made.pop)

    def read() -> dict:
        return replicas.fabric_totals(0, replicas.executors[0].stats()["fabric"])

    def recreate() -> None:
        replicas.fail(0, RuntimeError("the device actor died"))
        wait_for(lambda: replicas.poll(), "the re-created replica")

    assert read()["wire_bytes"] == 100
    recreate()  # _Switch(7) comes up, and fails before the next reading
    recreate()  # _Switch(0)
    replicas.executors[0].wire_bytes = 10
    totals = read()
    assert (totals["wire_bytes"], totals["framed_bytes"], totals["ports"]) == (110, 55, [{"bytes_out": 10}])
    replicas.shutdown()


def test_the_energy_terms_go_on_from_the_old_devices_while_down_and_after_a_re_creation():
    """The status's `energy_by_term_j` counts the devices' joules from the server's start, and `cent bench
    run --url` takes a replay's split as its end's less its start's: a failed replica's joules left the
    sum while it was re-created (here, with no other replica up, the sum was null) and the new devices'
    counted from 0, so the figure went back (a replay with a fault got smaller, even negative, terms). Now
    the old devices' last terms read are carried, as the fabric's bytes are."""
    eng, dying, rebuild = _engine()

    def terms() -> dict:
        return eng.stats_now(scrape=True)[2]

    _until_done(eng, eng.add_request([1, 5, 6], PARAMS))
    before = terms()
    assert sum(before.values()) > 0
    dying.broken = True
    req = eng.add_request([1, 5, 6], PARAMS)
    assert eng.step() == [] and not eng.replicas.is_up(0)  # its round died with the devices
    assert terms() == before
    rebuild.plan.put(OK)
    _until_done(eng, req)  # on the re-created devices
    own = rebuild.made[0].energy_terms_j()
    assert sum(own.values()) > 0 and terms() == {t: before[t] + own[t] for t in before}


def test_a_down_replica_s_joules_stay_in_the_sum_and_a_twice_failed_one_carries_them_once():
    """`Replicas.energy_terms_j` adds every replica's joules by term from the server's start: one that is
    down counts its devices' last terms read, a re-created one goes on from them, and one re-created
    executor that fails before any reading adds nothing (not its predecessor's terms a second time)."""
    from cent_serve.replicas import Replicas

    made = [_Switch(0), _Switch(0)]
    replicas = Replicas(lambda: _Switch(0), 2, remake=made.pop)

    def recreate() -> None:
        replicas.fail(1, RuntimeError("the device actor died"))
        wait_for(lambda: replicas.poll(), "the re-created replica")

    assert replicas.energy_terms_j({0: {"pim": 1.0, "dq": 2.0}, 1: {"pim": 8.0, "dq": 16.0}}) == {"pim": 9.0, "dq": 18.0}
    replicas.fail(1, RuntimeError("the device actor died"))
    assert replicas.energy_terms_j({0: {"pim": 2.0, "dq": 4.0}}) == {"pim": 10.0, "dq": 20.0}  # 1 is down
    wait_for(lambda: replicas.poll(), "the re-created replica")
    recreate()  # the re-created executor fails before the next reading
    assert replicas.energy_terms_j({0: {"pim": 2.0, "dq": 4.0}, 1: {"pim": 0.5, "dq": 0.25}}) == {"pim": 10.5,
                                                                                                  "dq": 20.25}
    replicas.shutdown()


def test_the_energy_terms_stay_null_without_a_split():
    """GPUs' devices have no split (`Executor.energy_terms_j` None): the sum is None, as it is before any
    replica has answered (every one down since the start)."""
    from cent_serve.replicas import Replicas

    replicas = Replicas(lambda: _Switch(0), 2)
    assert replicas.energy_terms_j({}) is None
    assert replicas.energy_terms_j({0: None, 1: None}) is None
    replicas.shutdown()
