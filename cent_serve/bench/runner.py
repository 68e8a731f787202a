"""Replay a trace through the engine in virtual time (`cent bench run --in-process`).

Requests enter the engine when the simulated clock reaches their arrival
(the same round-boundary admission as the server), so the waiting-queue bound
(`scheduler.max_waiting`) rejects what a server would answer 429. Nothing
here reads the wall clock except the progress bar and `wall_s`.

The engine needs at least one prompt token and one output token: a trace request with 0 of
either is sent with 1, counted (`BenchResult.raised_to_one_token`, summary.json's
`raised_to_one_token`) and warned about once per replay (`ZeroTokens`).

What a replay yields is `records`' (`RequestRecord`, `Sample`, `BenchResult`); its bar is `progress`'s.
"""
from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cent_serve.arguments import check_config, is_int, wrong
from cent_serve.bench.progress import (ETA_WINDOW_S, MIN_PACE_INTERVALS, Progress, WorkDone, request_rounds,
                                       work_eta_s, work_left, work_pace)
from cent_serve.bench.prompts import prompt_ids
from cent_serve.bench.records import DEVICE_FAULT, BenchResult, RequestRecord, Sample
from cent_serve.bench.request import Request as TraceRequest
from cent_serve.bench.traces import MAX_ARRIVAL_S
from cent_serve.config import CentConfig
from cent_serve.engine import Engine
from cent_serve.request import RequestParams, RequestRefused

__all__ = ["run_in_process", "ZeroTokens", "engine_id", "SAMPLE_EVERY_ROUNDS",
           # records.py's and progress.py's, still reached here
           "DEVICE_FAULT", "RequestRecord", "Sample", "BenchResult", "Progress", "WorkDone", "ETA_WINDOW_S",
           "MIN_PACE_INTERVALS", "request_rounds", "work_left", "work_pace", "work_eta_s"]

log = logging.getLogger("cent.bench")
SAMPLE_EVERY_ROUNDS = 64
"""Time-series samples: on every change of the queues, else once per this many rounds."""


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
    its output length with ignore_eos (as vLLM's benchmark with --ignore-eos sends them). `warn`: log
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
