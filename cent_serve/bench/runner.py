"""Replay a trace through the engine in virtual time (`cent bench run --in-process`).

Requests enter the engine when the simulated clock reaches their arrival
(the same round-boundary admission as the server), so the waiting-queue bound
(`scheduler.max_waiting`) rejects what a server would answer 429. Nothing
here reads the wall clock except the progress bar and `wall_s`.

The engine needs at least one prompt token and one output token: a trace request with 0 of
either is sent with 1, counted (`BenchResult.raised_to_one_token`, summary.json's
`raised_to_one_token`) and warned about once per replay (`ZeroTokens`).
"""
from __future__ import annotations

import itertools
import logging
import numbers
import os
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from cent_serve.arguments import check_config, is_int, wrong
from cent_serve.bench.prompts import prompt_ids
from cent_serve.bench.request import Request as TraceRequest
from cent_serve.bench.traces import MAX_ARRIVAL_S
from cent_serve.config import CentConfig
from cent_serve.engine import Engine
from cent_serve.request import Request, RequestParams, RequestRefused
from cent_serve.scheduler import QueueFull

log = logging.getLogger("cent.bench")
SAMPLE_EVERY_ROUNDS = 64
"""Time-series samples: on every change of the queues, else once per this many rounds."""
DEVICE_FAULT = "device_fault"
"""`failure_reason` of a request that ended with finish_reason "error": an emulated device or the
switch failed under it. The other reasons are the engine's refusals (`REFUSAL_REASONS`)."""


@dataclass
class RequestRecord:
    """One row of requests.csv: simulated times in seconds from the trace start."""

    request_id: str
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    finish_reason: str = ""
    energy_mj: float = 0.0
    preemptions: int = 0
    error: str = ""
    token_times_s: Sequence[float] = field(default_factory=lambda: array("d"), repr=False)
    """When each output token came, in the record's times: an `array('d')` in the records a replay
    makes, 8 bytes a token where a list holds a 24-byte float object and its pointer (a replay keeps
    every request's until the end, for the ITLs and `--save-detailed`); a record built by hand may
    give a list."""
    failure_reason: str = ""
    """Why the request failed, "" when it did not: a `cent_serve.request.REFUSAL_REASONS` code,
    DEVICE_FAULT, or for HTTP runs what `http_client.failure_reason` maps the answer to."""
    trace_arrival_s: float | None = None
    """The arrival on the trace's own clock (`bench.request.Request.trace_arrival_s`): where the
    row came from, while `arrival_s` is the replay's."""

    @property
    def ok(self) -> bool:
        return self.finish_reason in ("stop", "length")

    @property
    def reason(self) -> str:
        """`failure_reason`, else one derived from `finish_reason` (records built by hand or by
        older code): "error" is a device fault; "" for a request that did not fail."""
        if self.ok:
            return ""
        if self.failure_reason:
            return self.failure_reason
        return DEVICE_FAULT if self.finish_reason == "error" else (self.finish_reason or "unknown")

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM's definition: (E2EL - TTFT) / (output tokens - 1), for outputs longer than one."""
        if self.first_token_s is None or self.finish_s is None or self.num_output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.num_output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @classmethod
    def from_request(cls, req: Request, trace_arrival_s: float | None = None) -> "RequestRecord":
        return cls(req.request_id, req.arrival_s, len(req.prompt_ids), len(req.output_ids), req.scheduled_s,
                   req.first_token_s, req.finish_s, req.finish_reason or "", req.energy_j * 1e3,
                   req.num_preemptions, req.error or "", array("d", req.token_times_s),
                   DEVICE_FAULT if req.finish_reason == "error" else "", trace_arrival_s)

    @classmethod
    def refused(cls, request_id: str, tr: TraceRequest, exc: RequestRefused) -> "RequestRecord":
        """A request the engine would not take: finish_reason "rejected" (queue full, the API's
        429) or "invalid" (the API's 400), the refusal's reason code and message."""
        return cls(request_id, tr.arrival_s, max(1, tr.num_prompt_tokens),  # as sent (`ZeroTokens`)
                   finish_reason="rejected" if isinstance(exc, QueueFull) else "invalid", error=str(exc),
                   failure_reason=exc.reason, trace_arrival_s=tr.trace_arrival_s)


@dataclass
class Sample:
    """The engine after a round (for the time-series plots)."""

    time_s: float
    num_waiting: int
    num_running: int
    kv_usage: float


@dataclass
class BenchResult:
    records: list[RequestRecord]
    samples: list[Sample]
    devices: list[dict]
    """Per-device counters at the end (busy seconds per resource, energy, ...)."""
    clock_s: float
    wall_s: float
    status: dict
    raised_to_one_token: int = 0
    """Requests the trace gave 0 prompt or 0 output tokens, sent with 1 (see `ZeroTokens`)."""
    interrupted: bool = False
    """Ctrl-C stopped the replay: `records` are the requests that ended before it (partial)."""
    energy_terms_j: dict[str, float] | None = None
    """The devices' joules by term (`Engine.energy_terms_j`), charged where the requests' energy is:
    they add up to the records' when every request ended; None on GPUs (and for a --url run, from a
    server whose status has none: `http_client.replay_http`)."""

    def __repr__(self) -> str:
        """Counts, not every record (a 200-request replay's records and samples are ~130 kB of text,
        which a notebook would print whole)."""
        ok = sum(r.ok for r in self.records)
        return (f"BenchResult({len(self.records)} records: {ok} completed, {len(self.records) - ok} failed; "
                f"{len(self.samples)} samples, {len(self.devices)} devices; clock_s={self.clock_s:.6g}, "
                f"wall_s={self.wall_s:.3g}" + (", interrupted" if self.interrupted else "") + ")")


@dataclass
class ZeroTokens:
    """Trace requests with 0 prompt or output tokens, which are sent with 1 (the engine needs at
    least one of each): counted as they are sent, reported in one warning at the end."""

    requests: int = 0
    prompt: int = 0
    output: int = 0
    total: int = 0
    """Requests seen."""

    def add(self, tr: TraceRequest) -> None:
        self.total += 1
        zero_prompt, zero_output = tr.num_prompt_tokens < 1, tr.num_output_tokens < 1
        self.prompt += zero_prompt
        self.output += zero_output
        self.requests += zero_prompt or zero_output

    def message(self) -> str:
        return (f"{self.requests} of {self.total} trace requests have 0 tokens ({self.prompt} with "
                f"an empty prompt, {self.output} with an empty output): sent with 1 token instead, as "
                "the engine needs at least one; the results and token totals count that token")

    def warn(self) -> None:
        if self.requests:
            log.warning(self.message())


@dataclass(frozen=True)
class WorkDone:
    """Where an in-process replay stood at `elapsed_s` wall seconds (`Progress`): request-rounds run
    (a request's step in an engine round: a prefill chunk or a decode token), request-rounds the
    requests the engine took need in all (`request_rounds`), and what was offered to it: the
    request-rounds of the requests offered, taken or not, when the replay's are known, else the
    requests."""

    elapsed_s: float
    done: int
    admitted: int
    offered: int


ETA_WINDOW_S = 10.0
"""`work_eta_s` takes the pace of the last third of the replay, at least this many wall seconds of it."""
MIN_PACE_INTERVALS = 3
"""`work_pace` has no pace from fewer redraw intervals: of one or two, a stall is half or more."""


def request_rounds(num_prompt_tokens: int, num_output_tokens: int, chunk_tokens: int) -> int:
    """Engine rounds a request runs in: its prompt in chunks of `chunk_tokens`
    (`Scheduler.prefill_chunk_tokens`), the last of which makes the first token, then a round per
    other output token. A replay's wall time goes by these, not by the tokens made: a round costs
    about the same per request in it whether it prefills or decodes, and with CENT's one-token
    prefill chunks the prompts are most of the rounds (1500 azure_conv_2023 requests on llama2-70b:
    1.53M request-rounds for 379k output tokens). GPUs share a chunk's budget with the decodes, so
    theirs can take a round or two more."""
    return -(-num_prompt_tokens // chunk_tokens) + num_output_tokens - 1


def work_left(now: WorkDone, then: WorkDone, total: float | None) -> float | None:
    """Request-rounds left at `now` of a replay that offers `total` in all (in `WorkDone.offered`'s
    unit): those the requests taken still need, and of what is still to come the share the engine
    took of what was offered since `then` (refusals take none: a full queue takes few, a prompt
    too long for the model nothing); since the start when nothing was offered since `then`. None
    when the total is not known."""
    if total is None:
        return None
    offered, admitted = now.offered - then.offered, now.admitted - then.admitted
    each = admitted / offered if offered else (now.admitted / now.offered if now.offered else 0.0)
    return max(0, now.admitted - now.done) + max(0, total - now.offered) * each


def work_pace(points: Sequence[WorkDone]) -> float | None:
    """Request-rounds a wall second, the median over the intervals between successive `points`
    (oldest first): a one-off stall is one slow interval, which a median passes over where the
    ratio of the window's sums carried it until it left the window (numba compiling its kernels
    on a cold cache took 22 s of the first two rounds of a 48 s replay, and the time left said
    then stayed twice the truth for the 10 s after). None from fewer than MIN_PACE_INTERVALS intervals
    (the first redraws after a stall said hours) or while the median ran none."""
    paces = sorted((b.done - a.done) / (b.elapsed_s - a.elapsed_s)
                   for a, b in itertools.pairwise(points) if b.elapsed_s > a.elapsed_s)
    if len(paces) < MIN_PACE_INTERVALS:
        return None
    mid = len(paces) // 2
    pace = paces[mid] if len(paces) % 2 else (paces[mid - 1] + paces[mid]) / 2
    return pace if pace > 0 else None


def work_eta_s(points: Sequence[WorkDone], total: float | None) -> float | None:
    """Wall seconds left of an in-process replay that offers `total` (`work_left`'s): `work_left` at the last of
    `points` (since the first of them) at `work_pace`, not the requests ended: a request the queue
    refuses (`QueueFull`) ends at once and costs nothing, so under overload the request count raced
    ahead and tqdm's estimate from it was optimistic. 0 when nothing is left; None without a pace or a total."""
    left = work_left(points[-1], points[0], total)
    if not left:  # None, or nothing left
        return left
    pace = work_pace(points)
    return None if pace is None else left / pace


class _Bar(tqdm):
    """tqdm whose fill is `progress()`'s fraction of the work, `{ended}` the requests ended (its `n`)
    and `{work_left}` the estimate of `eta` (callables of the elapsed seconds)."""

    eta = None
    progress = None

    @property
    def format_dict(self):
        d = super().format_dict
        left = self.eta(d["elapsed"]) if self.eta is not None else None
        d["work_left"] = "?" if left is None else self.format_interval(left)
        d["ended"] = d["n"]
        if self.progress is not None and d["total"]:
            if d["rate"] is None and d["elapsed"]:  # tqdm would take the rate from `n`: the requests' instead
                d["rate"] = (d["n"] - d["initial"]) / d["elapsed"]
            d["n"] = d["total"] * self.progress()
        return d


class Progress:
    """A replay's tqdm bar: one tick per request that ended, failed ones counted as `failed=N`. With
    `by_work` (an in-process replay, which tells it `offer`s and `advanced`), the fill and the time
    left go by request-rounds (`work_eta_s`), not by tqdm's count of the requests ended, which it
    still shows."""

    BAR_BY_WORK = ("{desc}: {percentage:3.0f}%|{bar}| {ended}/{total_fmt} [{elapsed}<{work_left}, "
                   "{rate_fmt}{postfix}]")

    def __init__(self, total: int | None, desc: str, enabled: bool = True, by_work: bool = False,
                 total_rounds: int | None = None) -> None:
        """`total`: the requests the replay offers; `total_rounds`: their `request_rounds` when they
        are known before (a list of requests), else the work still to come is what each request
        offered brought."""
        self.failed = 0
        self.total = total
        self.total_rounds = total_rounds
        self.offered = 0
        self.offered_work = 0
        """What was offered in `WorkDone.offered`'s unit: request-rounds with `total_rounds`, else requests."""
        self.admitted_work = 0
        self.done_work = 0
        self._points: deque[WorkDone] = deque([WorkDone(0.0, 0, 0, 0)])
        by_work = by_work and total is not None
        self.bar = _Bar(total=total, unit="req", desc=desc, disable=not enabled, mininterval=1.0,
                        bar_format=self.BAR_BY_WORK if by_work else None)
        if by_work:
            self.bar.eta, self.bar.progress = self.eta_s, self.fraction_done
        self.bar.set_postfix(failed=0, refresh=False)

    def offer(self, work: int | None, rounds: int = 0) -> None:
        """A request was offered to the engine: `work` the rounds it needs when taken
        (`request_rounds`), None when refused; `rounds` its rounds as `total_rounds` counted them."""
        self.offered += 1
        self.offered_work += rounds if self.total_rounds is not None else 1
        self.admitted_work += work or 0

    def redone(self, n: int) -> None:
        """The requests taken need `n` request-rounds more: preempted or requeued after a fault, they
        prefill again what they had computed (`Scheduler.rounds_redone`)."""
        self.admitted_work += n

    def dropped(self, n: int) -> None:
        """A request taken ended with `n` of its request-rounds not run (failed): they are no work to do."""
        self.admitted_work -= n

    def advanced(self, n: int) -> None:
        """`n` request-rounds ran (the requests in an engine round)."""
        self.done_work += n

    def eta_s(self, elapsed_s: float) -> float | None:
        """`work_eta_s` at `elapsed_s` over the points this has been asked at (one a redraw) within
        the last third of the replay or ETA_WINDOW_S, whichever is longer, and the last before them."""
        now = self._now(elapsed_s)
        points = self._points
        points.append(now)
        window = max(ETA_WINDOW_S, elapsed_s / 3)
        while len(points) > 2 and points[1].elapsed_s <= elapsed_s - window:
            points.popleft()
        return work_eta_s(points, self._total())

    def _now(self, elapsed_s: float) -> WorkDone:
        return WorkDone(elapsed_s, self.done_work, self.admitted_work, self.offered_work)

    def _total(self) -> int | None:
        return self.total_rounds if self.total_rounds is not None else self.total

    def fraction_done(self) -> float:
        """The request-rounds run of all the replay will run (`work_left` since the window's start);
        1 when nothing is left."""
        left = work_left(self._now(0.0), self._points[0], self._total()) or 0.0
        return self.done_work / (self.done_work + left) if left > 0 else 1.0

    def done(self, rec: RequestRecord) -> None:
        if not rec.ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _prompt_ids(tr: TraceRequest, engine: Engine, index: int, seed: int) -> list[int]:
    """Token ids of the trace's length: the trace's text when it has some, else seeded bytes."""
    if tr.prompt is not None:
        return engine.tokenizer.encode(tr.prompt)[: max(1, tr.num_prompt_tokens)]
    # what the tokenizer puts first (Llama's BOS; nothing for Qwen's)
    return prompt_ids(max(1, tr.num_prompt_tokens), (seed, index), engine.tokenizer.start_ids)


CALL = "run_in_process(cfg, requests)"
REQUESTS_FIX = ("give the trace's requests (cent_serve.bench.Request records), e.g. "
                "list(load_trace(resolve_trace('azure_conv_2023'))) or list(synthetic_trace(n, rate))")


def _check_requests(requests: object) -> None:
    """ValueError unless `requests` is an iterable of trace requests (its items checked by the caller):
    a trace's name or path is told to load it first."""
    if isinstance(requests, (str, os.PathLike)):
        name = os.fspath(requests)
        raise wrong(CALL, "requests", requests, f"load it first: list(load_trace(resolve_trace({name!r}))) "
                    "(cent_serve.bench)")
    if isinstance(requests, (dict, TraceRequest)) or not isinstance(requests, Iterable):
        raise wrong(CALL, "requests", requests, REQUESTS_FIX + (" (one request: [request])"
                                                                 if isinstance(requests, TraceRequest) else ""))


def _checked(requests: Iterable[TraceRequest]) -> Iterator[TraceRequest]:
    """`requests` as they are taken, each refused (ValueError naming `requests[i]`) where a trace
    reader refuses its row (docs/serving.md, Request traces) or renames it: a request that is not a
    Request record, a length that is not a whole number >= 0, an arrival that is not a number of
    seconds from the trace's start within MAX_ARRIVAL_S (NaN never arrived: the replay waited for it
    forever) or is earlier than the one before, an id another request has (its record replaced the
    other's; ids compared as the engine names them, `engine_id`: 1 and "1" are both trace-1)."""
    ids: dict[str, tuple[int, object]] = {}
    previous_s = 0.0
    for i, tr in enumerate(requests):
        if not isinstance(tr, TraceRequest):
            raise wrong(CALL, "requests' first item" if i == 0 else f"requests[{i}]", tr, REQUESTS_FIX)
        for name in ("num_prompt_tokens", "num_output_tokens"):
            value = getattr(tr, name)
            if not is_int(value) or value < 0:
                raise wrong(CALL, f"requests[{i}].{name}", value, "give a whole number of tokens >= 0")
        if not isinstance(tr.arrival_s, numbers.Real) or isinstance(tr.arrival_s, bool):
            raise wrong(CALL, f"requests[{i}].arrival_s", tr.arrival_s,
                        "give seconds from the trace's start as a number, e.g. 0.5")
        if not 0.0 <= tr.arrival_s <= MAX_ARRIVAL_S:  # NaN too
            raise wrong(CALL, f"requests[{i}].arrival_s", tr.arrival_s,
                        f"give seconds from the trace's start, 0 to {MAX_ARRIVAL_S:g} (simulated time is one "
                        "float of seconds): subtract the first request's arrival, as load_trace does")
        if tr.arrival_s < previous_s:
            raise wrong(CALL, f"requests[{i}].arrival_s", tr.arrival_s,
                        f"give arrivals in order: it is before requests[{i - 1}]'s ({previous_s!r}): sort the "
                        "requests by arrival_s")
        name = engine_id(tr)
        if name in ids:
            j, theirs = ids[name]
            alike = "" if type(theirs) is type(tr.request_id) else f" as {theirs!r}, the engine's {name} too"
            raise wrong(CALL, f"requests[{i}].request_id", tr.request_id,
                        f"give each request its own id (requests[{j}] has it{alike}; load_trace sends a file's "
                        "repeats as <id>#<index>)")
        ids[name] = i, tr.request_id
        previous_s = tr.arrival_s
        yield tr


def run_in_process(cfg: CentConfig, requests: Iterable[TraceRequest],
                   progress: bool = True, total: int | None = None, engine: Engine | None = None,
                   warn: bool = True, keep_on_interrupt: bool = False, desc: str = "replay",
                   checked: bool = False) -> BenchResult:
    """Replay `requests` (arrival-ordered) in virtual time; every request gets max_tokens =
    its output length with ignore_eos, as vLLM's benchmark sends trace requests. `warn`: log
    the warning for requests raised to 1 token (False: the caller warns once for several
    replays of one trace). `keep_on_interrupt`: Ctrl-C ends the replay with the records of the
    requests that ended before it (`BenchResult.interrupted`) rather than raising. Without `engine`,
    what cannot run is refused before the engine is built, as every command refuses it
    (`preflight.check_runnable`: the devices or GPUs hold the model and one sequence of its whole
    context, full numerics fits this machine's memory), and the engine is shut down at the end.
    `checked`: the caller ran `check_runnable(cfg)` already (`run_sweep`, `run_compare`, `run_paper` per
    mapping, `cent sweep --trace` per point, each before its first replay), so it is not run again."""
    check_config(CALL, cfg)
    _check_requests(requests)
    own = engine is None
    if own and not checked:
        from cent_serve.preflight import check_runnable
        check_runnable(cfg)
    if isinstance(requests, Sequence):  # all of them before anything runs (and before their rounds are summed)
        for _ in _checked(requests):
            pass
        it = iter(requests)
    else:  # a generator (load_trace's, lazily): each as it is taken
        it = _checked(requests)
    pending = next(it, None)
    engine = engine or Engine(cfg)
    seed = cfg.scheduler.seed
    records: dict[str, RequestRecord] = {}
    trace_arrivals: dict[str, float | None] = {}  # by engine request id, until the request's record is made
    samples: list[Sample] = []
    index = steps = 0
    zeros = ZeroTokens()
    chunk_tokens = engine.scheduler.prefill_chunk_tokens
    total_rounds = None
    if isinstance(requests, Sequence) and len(requests) == total:  # the work to come is known
        total_rounds = sum(_trace_rounds(tr, chunk_tokens) for tr in requests)
    bar = Progress(total, desc, progress, by_work=True, total_rounds=total_rounds)
    redone = engine.scheduler.rounds_redone  # a given engine's before this replay
    t0 = time.perf_counter()
    interrupted = False
    try:
        try:
            while pending is not None or engine.has_work():
                horizon = engine.now_s
                if not engine.scheduler.num_running and pending is not None:
                    horizon = max(horizon, pending.arrival_s)  # idle: the engine jumps to the next arrival
                while pending is not None and pending.arrival_s <= horizon:
                    zeros.add(pending)
                    refused = _add(engine, pending, index, seed)
                    bar.offer(None if refused is not None else _rounds(engine, engine_id(pending)),
                              _trace_rounds(pending, chunk_tokens))
                    if refused is not None:
                        records[refused.request_id] = refused
                        bar.done(refused)
                    else:
                        trace_arrivals[engine_id(pending)] = pending.trace_arrival_s
                    index += 1
                    pending = next(it, None)
                advanced = engine.step()
                ran = engine.scheduler.num_running  # the round ran these and the requests it finished
                for req in advanced:  # finished, failed by a fault included (nothing aborts here)
                    if req.is_finished:
                        if req.error is None:  # a failed one's round failed: it ran nothing
                            ran += 1
                        bar.dropped(_rounds_left(req, chunk_tokens))  # a failed one's: never run
                        rec = records[req.request_id] = RequestRecord.from_request(
                            req, trace_arrivals.pop(req.request_id, None))
                        engine.forget(req.request_id)
                        bar.done(rec)
                bar.advanced(ran)
                if engine.scheduler.rounds_redone != redone:  # preempted or requeued: recomputed
                    bar.redone(engine.scheduler.rounds_redone - redone)
                    redone = engine.scheduler.rounds_redone
                st = engine.scheduler
                last = samples[-1] if samples else None
                steps += 1
                if (last is None or steps % SAMPLE_EVERY_ROUNDS == 0 or last.num_waiting != st.num_waiting
                        or last.num_running != st.num_running):
                    samples.append(Sample(engine.now_s, st.num_waiting, st.num_running, st.kv_usage()))
        except KeyboardInterrupt:
            if not keep_on_interrupt:
                raise
            interrupted = True
        wall = time.perf_counter() - t0
        try:
            devices, _, terms = engine.stats_now()
            status = engine.status()
        except Exception:  # noqa: BLE001 - after Ctrl-C the devices may be gone too (Ray's workers get it)
            if not interrupted:
                raise
            devices, status, terms = [], {}, None
        out = BenchResult(list(records.values()), samples, devices, engine.now_s, wall, status, zeros.requests,
                          interrupted, terms)
    finally:
        bar.close()
        if own:
            engine.shutdown()
    if warn:
        zeros.warn()
    return out


def engine_id(tr: TraceRequest) -> str:
    """The engine's id of a trace request (requests.csv's `request_id`)."""
    return f"trace-{tr.request_id}"


def _trace_rounds(tr: TraceRequest, chunk_tokens: int) -> int:
    """`request_rounds` of a trace request as it is sent (`ZeroTokens`), the prompt at its trace length."""
    return request_rounds(max(1, tr.num_prompt_tokens), max(1, tr.num_output_tokens), chunk_tokens)


def _rounds(engine: Engine, request_id: str) -> int:
    """`request_rounds` of a request the engine took."""
    req = engine.requests[request_id]
    return request_rounds(len(req.prompt_ids), req.params.max_tokens, engine.scheduler.prefill_chunk_tokens)


def _rounds_left(req, chunk_tokens: int) -> int:
    """`request_rounds` a finished request did not run: 0 when it made all its tokens, else (failed) the
    chunks of its tokens not computed and its tokens not made after them."""
    left = req.num_tokens - req.num_computed
    return max(0, -(-left // chunk_tokens) + req.params.max_tokens - len(req.output_ids) - 1)


def _add(engine: Engine, tr: TraceRequest, index: int, seed: int) -> RequestRecord | None:
    """Queue one trace request; the record of its refusal when the engine will not take it."""
    rid = engine_id(tr)
    params = RequestParams(max_tokens=max(1, tr.num_output_tokens), ignore_eos=True)
    try:
        if tr.prompt is None:  # refused by its length before a prompt of that length is built
            engine.check_length(max(1, tr.num_prompt_tokens), params.max_tokens)
        engine.add_request(_prompt_ids(tr, engine, index, seed), params, request_id=rid, arrival_s=tr.arrival_s)
    except RequestRefused as exc:
        return RequestRecord.refused(rid, tr, exc)
    return None
