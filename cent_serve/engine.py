"""The serving engine: continuous batching over the emulated CENT devices, in simulated time.

`Engine.step()` is three calls, as vLLM and nano-vllm write it: schedule (one `RoundPlan` per
replica), run (the executors, all plans sent before any is awaited), update (from one
`RoundOutput` per replica: times, logits, the energy each sequence's step cost).

The engine clock `now_s` is a round boundary: the latest simulated time at
which any micro-batch of the last round became ready. A request that arrives
while a round is in flight joins at the next boundary, as in any round-based
scheduler (vLLM admits at step boundaries); so a device never receives a
micro-batch that is ready earlier than one it has already served.

Sampling happens on the host after the LM head (`RoundOutput.sampled_s`): `HostSampler`
(cent_serve/host_sampler.py) turns each sequence's logits, or timing-only nothing, into its
token; `check_stop` (cent_serve/stop_check.py) says whether that token stops it.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.executor.base import devices_lost
from cent_serve.messages import RoundOutput
from cent_serve.host_sampler import HostSampler
from cent_serve.model.tokenizer import Tokenizer, load_tokenizer
from cent_serve.replicas import NoReplica, Replicas, describe_fault
from cent_serve.request import Request, RequestParams, RequestRefused, Status, prompt_too_long
from cent_serve.scheduler import Scheduler, SchedulerOutput
from cent_serve.stop_check import check_stop, output_text
from cent_serve.timing import hardware_timer

log = logging.getLogger("cent.engine")

FAULT_RETRIES = 1
"""Times a request a replica's devices died under is queued again (`Engine._recover`: started over
with nothing produced, recomputed with its output so far) before such a death fails it."""


@dataclass
class EngineStats:
    """Totals since start (simulated seconds and tokens)."""

    num_rounds: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_failed: int = 0
    num_fault_retries: int = 0
    """Requests queued again after their replica's devices died under them (`Engine._recover`), to
    start over or be recomputed with their output so far; not preemptions (those are for KV space)."""
    energy_j: float = 0.0
    """Energy charged to the requests' steps (the sum of their `energy_j`; monotone)."""


class Engine:
    """Owns the executors (one per data-parallel replica), the scheduler and the tokenizer."""

    def __init__(self, cfg: CentConfig, executors: list | None = None, tokenizer: Tokenizer | None = None,
                 weights=None, remake: Callable[[], object] | None = None) -> None:
        """`executors`: the replicas' executors, built already (default: built from `cfg`); `remake`
        re-creates one failed replica's executor (default: the configured kind's, for one replica;
        tests pass a fake that blocks or fails)."""
        from cent_serve.executor import executor_factory

        self.cfg = cfg
        self.timer = hardware_timer(cfg)
        mp = self.timer.mapping
        self.full = cfg.resolved_numerics == "full"
        num_replicas = len(executors) if executors is not None else mp.replicas
        make = executor_factory(cfg, weights, num_replicas) if executors is None else None
        given = iter(executors or ())
        # the first build places every replica (a cluster too small for them all is refused at once);
        # a re-created one asks for its own devices alone (the others hold theirs)
        self.replicas = Replicas(lambda: next(given, None) or make(num_replicas), num_replicas,
                                 retry_s=cfg.server.replica_retry_s, remake=remake or (lambda: make(1)))
        self.num_replicas = num_replicas
        self._failed: list[Request] = []  # failed by a fault since the last step returned
        self.last_fault: str | None = None
        """The latest fault the engine met (a replica's devices, a round), for the status; None if none."""
        self.cluster_fault: Callable[[], str | None] | None = None
        """Asked when a replica's devices fail, and when no replica can serve (`unservable`): the
        cluster's part in it, if any (a Ray head gone takes the devices' links with it:
        `ClusterWatch.fault`, set by the engine loop that watches it)."""
        self.tokenizer = tokenizer or load_tokenizer(cfg.model)
        self.sampler = HostSampler(cfg, self.tokenizer)
        """Turns each sequence's logits (timing-only: nothing) into its next token."""
        self.scheduler = Scheduler.from_config(cfg, self.timer, num_replicas)
        self.requests: dict[str, Request] = {}
        self.now_s = 0.0
        self.round_start_s = 0.0
        """When the last round that ran work began (a replay arrival before it has been passed by)."""
        self.last_finish_s = 0.0
        """The latest time a request finished at: a request that comes without an arrival arrives no
        earlier (`add_request`)."""
        self.stats = EngineStats()
        self.expert_load = None
        """A mixture of experts' per-expert load (`cent_serve.timing.experts.ExpertLoad`): every
        round's tokens through the time model's router, the same draw the devices time."""
        if cfg.model.is_moe:
            from cent_serve.timing.experts import ExpertLoad
            self.expert_load = ExpertLoad(cfg.model, getattr(self.timer, "expert_s", None))
        self._ids = itertools.count()
        self._num_added = 0

    # ------------------------------------------------------------------ requests

    def check_request(self, prompt_ids: list[int], max_tokens: int) -> None:
        """The one validator of a request's prompt and length: raises RequestRefused (reason and
        param set) for what can never be served. Reads only the config: safe from any thread (the
        API checks every choice before it queues any)."""
        m = self.cfg.model
        if not prompt_ids:
            raise RequestRefused("invalid_prompt", "prompt is empty: give at least one token")
        bad = next((t for t in prompt_ids if not 0 <= t < m.vocab_size), None)
        if bad is not None:
            raise RequestRefused("invalid_prompt", f"prompt token id {bad} is outside the vocabulary [0, {m.vocab_size})")
        self.check_length(len(prompt_ids), max_tokens)

    def check_length(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """`check_request`'s part that needs only the lengths: a replay asks it before it builds a
        prompt, so a trace row of 3e9 prompt tokens is refused, not built."""
        m = self.cfg.model
        too_long = prompt_too_long(num_prompt_tokens, m.max_seq_len)
        if too_long is not None:
            raise too_long
        room = m.max_seq_len - num_prompt_tokens
        if max_tokens > room:  # refused, as vLLM's server refuses it, not cut short later
            raise RequestRefused("context_exceeded", f"max_tokens={max_tokens} does not fit: the prompt leaves {room} "
                                 "tokens of the model's context; lower max_tokens or shorten the prompt", "max_tokens")
        self.scheduler.check_fits(num_prompt_tokens)

    def add_request(self, prompt_ids: list[int], params: RequestParams = RequestParams(),
                    request_id: str | None = None, arrival_s: float | None = None) -> Request:
        """Queue a request. Raises ValueError (bad input: nothing changed) or QueueFull."""
        self.check_request(prompt_ids, params.max_tokens)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise RequestRefused("duplicate_id", f"request_id {rid!r} is already in use: pick another")
        rng = self.sampler.generator(prompt_ids, params, self._num_added)
        self._num_added += 1
        if arrival_s is None:
            arrival_s = self.arrival_now_s
        req = Request(rid, list(prompt_ids), params, arrival_s, rng=rng)
        req.ready_s = req.arrival_s
        self.scheduler.add(req)
        self.requests[rid] = req
        return req

    def abort(self, request_id: str) -> Request | None:
        """Finish a request at once (client gone): its KV blocks are free for the next round."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return None
        self._abort(req)
        return req

    def _abort(self, req: Request) -> None:
        """End `req` as aborted now (a client gone, or a sibling choice failed: `_fail`): its lane and
        KV blocks free for the next round, its id sent to its devices with the next plan to forget."""
        self._finish(req, "abort", max(self.now_s, req.ready_s))
        self.stats.num_aborted += 1

    def next_start_s(self) -> float:
        """When the next round starts (`Scheduler.next_start_s` at the engine's clock)."""
        return self.scheduler.next_start_s(self.now_s)

    def has_work(self) -> bool:
        return self.scheduler.num_waiting + self.scheduler.num_running > 0

    # ------------------------------------------------------------------ the step

    @property
    def executors(self) -> list:
        """Each replica's executor (None while a replica is being re-created)."""
        return self.replicas.executors

    @property
    def recovering(self) -> bool:
        """True while a replica's devices are being re-created after a fault (health: degraded)."""
        return self.replicas.recovering

    def unservable(self) -> str | None:
        """Why no request can be served soon, as the 503's message: no replica is up and every one's
        re-creation has failed at least once (`Replicas.none_can_serve`, its errors as /health gives
        them); None otherwise, also while a first re-creation is in flight. Engine thread.
        The cluster's fault first when it has one (`cluster_fault`: its head or this node's raylet
        silent), as a failed round names it: the re-creations' errors are its symptom (Ray's GCS may
        mark a node whose raylet died dead, its placement group removed, before the server gives the
        raylet up)."""
        why = self.replicas.none_can_serve()
        if why is None:
            return None
        cluster = self.cluster_fault() if self.cluster_fault is not None else None
        cause = f"{cluster}; " if cluster else ""
        return (f"{cause}no replica of the emulated devices can serve: {why}; the re-creation is retried every "
                f"{self.replicas.retry_s:g} s: retry later")

    def check_serving(self) -> None:
        """Raise NoReplica while `unservable`: a new request is refused before anything is queued."""
        why = self.unservable()
        if why is not None:
            raise NoReplica(why, self.replicas.retry_s)

    def fail_waiting(self) -> list[Request]:
        """While `unservable`, fail every request waiting for a replica (its `retry_after_s` set: the
        API answers 503 with Retry-After) rather than let it wait with no limit; returns them. None
        runs then (no replica is up). The engine loop calls it on every pass."""
        if not self.scheduler.num_waiting:
            return []
        why = self.unservable()
        if why is None:
            return []
        reqs = list(self.scheduler.waiting)
        for req in reqs:
            req.retry_after_s = self.replicas.retry_s
        log.warning("failing %d waiting request(s): %s", len(reqs), why)
        return self._fail(reqs, why)

    def can_step(self) -> bool:
        """Whether a round could run now: something is running, or waits with a replica up."""
        self._poll_replicas()
        return self.scheduler.num_running > 0 or (self.scheduler.num_waiting > 0 and self.scheduler.any_up())

    def _poll_replicas(self) -> None:
        for r in self.replicas.poll():
            self.scheduler.set_up(r, True)

    def step(self) -> list[Request]:
        """One round: schedule, run, update. Returns the requests that advanced (or failed)."""
        self._check_links()
        scheduled = self.scheduler.schedule(self.now_s)
        outputs = self._run(scheduled)
        return self._update(scheduled, outputs)

    def _check_links(self) -> None:
        """Take out, before scheduling, a replica whose links show a device died since its last round
        (executors that can tell without waiting): the requests that would go to it wait for its
        re-creation instead of failing with it."""
        self._check_each("check_links")

    def _check_each(self, method: str) -> None:
        """Call `method` of each replica's executor that has one (a replica being re-created has none);
        recover a replica it raises for."""
        failed = {}
        for r, ex in enumerate(self.executors):
            check = getattr(ex, method, None)
            if check is None:
                continue
            try:
                check()
            except Exception as exc:  # noqa: BLE001
                failed[r] = exc
        if failed:
            self._recover(failed)

    def _run(self, scheduled: SchedulerOutput) -> dict[int, RoundOutput]:
        """Every replica's plan to its executor (all sent before any is awaited); a replica whose
        devices fail is recovered, its output missing from the result."""
        self._poll_replicas()
        running = [rr.plan.ready_s for rr in scheduled.rounds if not rr.plan.is_empty]
        if running:
            self.round_start_s = scheduled.start_s
            # the latest lane of all (one reduction over every replica's lanes, not one per replica)
            self.now_s = max(scheduled.start_s, self.now_s, float(np.concatenate(running).max()))
        else:
            self.now_s = max(scheduled.start_s, self.now_s)
        sent, failed = [], {}
        for rr in scheduled.rounds:  # replicas are independent devices
            try:
                sent.append((rr.replica, self.executors[rr.replica].submit(rr.plan)))
            except Exception as exc:  # noqa: BLE001 - a device fault costs its replica's round only
                failed[rr.replica] = exc
        out = {}
        for r, future in sent:
            try:
                out[r] = future.result()
            except Exception as exc:  # noqa: BLE001
                failed[r] = exc
        if failed:
            self._recover(failed)
        if running:
            self.stats.num_rounds += 1
        return out

    def _recover(self, failed: dict[int, BaseException]) -> None:
        """Replicas whose round failed (a device or the switch died, or raised), each with its error:
        take them out and re-create their devices in the background (weights reloaded); the other
        replicas keep serving. Where the devices are gone (`devices_lost`, the cluster up) the
        requests on them are queued again, once (`FAULT_RETRIES`): one with nothing produced starts
        over, one with tokens is recomputed as a preemption's is (its prompt and its output so far
        prefilled again on a replica that is up, then its decoding goes on: the round that failed
        sampled nothing, so no token is lost or repeated). Every other failure (a device's own error,
        a hang, a lost cluster, a second death) fails them with the cause. The choices of one API
        request answer together: when one of them fails, none of them goes again, and `_fail` ends
        the others with it (the waiting failed, those running on replicas that serve on aborted, in
        this round, so the reply's 500 waits for none of them). All the replicas that failed
        together are recovered in one call, so that their requests go back in arrival order, ties in
        admission order."""
        causes, gone = {}, set()  # each replica's cause; the replicas whose devices died
        for replica, exc in failed.items():
            cluster = self.cluster_fault() if self.cluster_fault is not None else None
            if cluster:  # the cause, not its symptom (a closed link)
                causes[replica] = f"{cluster}; the emulated devices of replica {replica} went with it ({describe_fault(exc)})"
                continue
            causes[replica] = f"the emulated devices of replica {replica} failed: {describe_fault(exc)}"
            if devices_lost(exc):
                # the devices died (in the race before the host read their death, the round was sent to a
                # dead chain): the round that failed produced nothing, so each request on them can go on
                # from what it has, as a preempted one does; once only, so that a request that itself kills
                # its devices cannot re-create them for ever
                gone.add(replica)
        hit = [q for q in self.scheduler.running if q.replica in failed]  # in admission order
        may_go_again = {q for q in hit if q.replica in gone and q.num_fault_retries < FAULT_RETRIES}
        # an API request with a choice that fails now is an error whatever its other choices do: none of
        # them is computed again for no one (while the reply waited for it). One that failed before
        # has none left running: `_fail` ended them all then
        doomed = {id(q.choices) for q in hit if q.choices is not None and q not in may_go_again}
        again, stopped = [], {replica: [] for replica in failed}
        for q in hit:
            if q in may_go_again and (q.choices is None or id(q.choices) not in doomed):
                again.append(q)
            else:
                stopped[q.replica].append(q)
        stopped_all = {q for on_it in stopped.values() for q in on_it}
        for replica in failed:
            on_it, retry = stopped[replica], [q for q in again if q.replica == replica]
            fresh = sum(not q.output_ids for q in retry)
            waits = "".join(f"; {n} request{'s' if n > 1 else ''} on it with {what}" for n, what in (
                (fresh, f"nothing produced wait{'s' * (fresh == 1)} for the re-created devices"),
                (len(retry) - fresh, f"tokens produced wait{'s' * (len(retry) - fresh == 1)} to be recomputed "
                                     "(prompt and output so far)")) if n)
            cause = causes[replica]
            message = f"{cause}; the request was stopped, retry it"
            self.last_fault = (f"{message}{waits}" if on_it else f"{cause}{waits}" if retry
                               else f"{cause}; no request was on it")
            log.error("%s; re-creating the replica's devices", self.last_fault)
            self._failed += self._fail(on_it, message, failing=stopped_all)
        again.sort(key=lambda q: q.arrival_s)  # stable: ties stay in admission order, whatever their replica
        for q in again:
            q.num_fault_retries += 1
        self.stats.num_fault_retries += len(again)
        self.scheduler.requeue(again)
        for replica, exc in failed.items():
            self.scheduler.set_up(replica, False)
            self.replicas.fail(replica, exc)

    def forget_finished(self) -> None:
        """Idle: tell the devices which sequences they may forget (plans with no lanes; the
        clock does not move), so their KV caches read empty between bursts."""
        rounds = self.scheduler.free_rounds(self.now_s)
        if rounds:
            self._run(SchedulerOutput(rounds, self.now_s))

    def check_devices(self) -> list[Request]:
        """Look for dead devices between rounds (executors that can tell) and recover them;
        returns the requests that failed with them (on Ray, hung: silent for a round's timeout)."""
        self._poll_replicas()
        self._check_each("check")
        failed, self._failed = self._failed, []
        return failed

    def _update(self, scheduled: SchedulerOutput, outputs: dict[int, RoundOutput]) -> list[Request]:
        advanced = []
        for rr in scheduled.rounds:
            out = outputs.get(rr.replica)
            if out is None:  # its replica failed this round: its requests are finished already
                continue
            lane_of = rr.plan.layout.seq_lanes
            if self.expert_load is not None:
                self.expert_load.add(rr.plan.layout.seq_ids, [req.num_computed for req, _ in rr.steps],
                                     rr.plan.layout.seq_tokens)
            counts, row = rr.plan.wants_logits, 0
            energy_j, sampled_s = out.energy_j.tolist(), out.sampled_s.tolist()  # Python floats, read once
            for k, (req, n) in enumerate(rr.steps):
                block = None  # logits of the step's last positions (scheduler.logit_rows)
                if counts is not None and out.logits is not None:
                    block, row = out.logits[row:row + counts[k]], row + counts[k]
                if req.is_finished:  # aborted while the round ran
                    continue
                e = energy_j[k]
                req.energy_j += e
                self.stats.energy_j += e
                if block is not None and len(block) and req.params.prompt_logprobs is not None:
                    self.sampler.prompt_logprobs(req, block, req.num_computed + n - len(block))
                req.num_computed += n
                req.ready_s = t = sampled_s[lane_of[k]]
                if req.num_computed < req.num_tokens:
                    continue  # more prompt to go
                self._append_token(req, self.sampler.sample(req, block[-1] if block is not None else None), t)
                advanced.append(req)
        failed, self._failed = self._failed, []
        return advanced + failed

    # ------------------------------------------------------------------ helpers

    def _append_token(self, req: Request, token: int, t: float) -> None:
        p = req.params
        req.append_token(token, t)
        self.stats.generation_tokens += 1
        if len(req.output_ids) == 1:
            self.stats.prompt_tokens += len(req.prompt_ids)
        if check_stop(req, token, self.cfg.model, self.tokenizer):
            self._finish(req, "stop", t)
        elif (len(req.output_ids) >= p.max_tokens or req.num_tokens >= self.cfg.model.max_seq_len
              or not self.scheduler.fits_alone(req.num_tokens + 1)):  # no room even alone
            self._finish(req, "length", t)

    def text(self, req: Request) -> str:
        """The request's output text so far (`stop_check.output_text`)."""
        return output_text(req, self.tokenizer)

    def _finish(self, req: Request, reason: str, t: float) -> None:
        self.scheduler.finish(req)  # a running sequence's id goes to its devices with the next plan
        req.status, req.finish_reason, req.finish_s = Status.FINISHED, reason, t
        self.last_finish_s = max(self.last_finish_s, t)
        if reason in ("stop", "length"):
            self.stats.num_finished += 1

    def fail_running(self, message: str) -> list[Request]:
        """A fault in a round: fail the requests that were in it, keep the rest of the engine."""
        return self._fail(list(self.scheduler.running), message)

    def _fail(self, reqs: list[Request], message: str,
              failing: Collection[Request] = frozenset()) -> list[Request]:
        """Finish `reqs` with the error `message`, and with them every other choice of their API
        requests (`Request.choices`): the reply is that error whatever those do, so none waits, runs or
        holds KV for it. One waiting (never admitted, preempted, or queued again after its devices
        died) fails with the message; one running on devices that serve on is aborted, as a client's
        disconnect aborts it (`_abort`: its lane and KV blocks free for the next round, counted as
        aborted, as vLLM counts a request it aborts), with the message as its error (a stream's
        error event for that choice). `failing`: requests the caller fails next with a message of
        their own (another replica's, in the same fault), left to it. Returns every request ended."""
        reqs = list(reqs)
        seen, aborted = set(reqs) | set(failing), []
        for req in list(reqs):
            for q in req.choices or ():
                if q in seen or q.is_finished:
                    continue
                seen.add(q)
                (reqs if q.status is Status.WAITING else aborted).append(q)
        for req in reqs:
            req.error = message
            self._finish(req, "error", max(self.now_s, req.ready_s))
            self.stats.num_failed += 1
        for q in aborted:
            q.error = message
            self._abort(q)
        return reqs + aborted

    def forget(self, request_id: str) -> None:
        """Drop a finished request's record (the API calls this once the client has it)."""
        req = self.requests.get(request_id)
        if req is not None and req.is_finished:
            del self.requests[request_id]

    @property
    def arrival_now_s(self) -> float:
        """Where a request that comes now, without an arrival, arrives: the clock, or the last finish
        when later (a client that waited for a reply sends after it; the last round's start would
        charge a GPU's request the rest of that round's step, and have an idle server's next request
        wait behind its last round)."""
        return max(self.now_s, self.last_finish_s)

    def status(self) -> dict:
        mp = self.timer.mapping
        return dict(model=self.cfg.model.name, hardware=self.cfg.hardware,
                    mapping=dict(mode=mp.mode, parallelism=mp.parallelism, devices=mp.num_devices, pp=mp.pp,
                    tp=mp.tp, devices_used=mp.devices_used, replicas=self.num_replicas,
                    lanes=mp.lanes * self.num_replicas, max_seqs_per_stage=self.scheduler.seqs_per_lane,
                    describe=mp.describe()),
                    numerics="full" if self.full else "off", clock_s=self.now_s, last_fault=self.last_fault,
                    num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
                    kv_usage=self.scheduler.kv_usage(), kv_blocks_per_replica=self.scheduler.kv_blocks,
                    num_preemptions=self.scheduler.num_preemptions, replicas_up=sum(map(self.replicas.is_up,
                                                                                         range(self.num_replicas))),
                    **dict(vars(self.stats), num_recoveries=self.replicas.num_recoveries),
                    **({} if self.expert_load is None else
                       dict(experts=self.expert_load.figures(self.now_s, self.num_replicas))))

    def stats_now(self, scrape: bool = False) -> tuple[list[dict], list[dict], dict[str, float] | None]:
        """(device stats, fabric stats, the devices' joules by term added) of the replicas that are up,
        read in one pass over them, so the three describe the same moment; the fabrics' byte totals and
        the terms count from the server's start, a re-created replica's old devices included, and the
        terms a down replica's too (`Replicas.fabric_totals`, `Replicas.energy_terms_j`). The terms are
        None when the hardware has no split (GPUs: `Executor.energy_terms_j`). A replica
        that cannot answer (an actor died, or silent for `server.round_timeout_s`) is recovered here, not
        reported as an error. `scrape` (the API's reads): slow Ray devices give their last figures
        (`RayExecutor.stats_and_terms`)."""
        devices, fabrics, terms, failed = [], [], {}, {}
        for r, ex in enumerate(self.executors):
            if ex is None:
                continue
            try:
                both = getattr(ex, "stats_and_terms", None)  # Ray: one call for both
                split = getattr(ex, "energy_terms_j", None)  # (an executor of one's own may have none)
                st, split_j = both(scrape) if both is not None else (ex.stats(), split and split())
                terms[r] = split_j
            except Exception as exc:  # noqa: BLE001 - a device fault, found by a status call
                failed[r] = exc
                continue
            devices += [dict(d, replica=r) for d in st["devices"]]
            fabrics.append(dict(self.replicas.fabric_totals(r, st["fabric"]), replica=r))
        terms_j = self.replicas.energy_terms_j(terms)  # (a replica failed here keeps its last terms read)
        if failed:
            self._recover(failed)
        return devices, fabrics, terms_j

    def device_stats(self) -> list[dict]:
        return self.stats_now()[0]

    def energy_terms_j(self) -> dict[str, float] | None:
        """The replicas' devices' joules by term (`stats_now`); None on GPUs."""
        return self.stats_now()[2]

    def fabric_stats(self) -> list[dict]:
        return self.stats_now()[1]

    def shutdown(self, join_s: float | None = None) -> None:
        """Stop the devices (`Replicas.shutdown`: a replica being re-created waited for up to `join_s`)."""
        self.replicas.shutdown(join_s)
