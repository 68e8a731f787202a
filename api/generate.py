"""The one generation path behind `/v1/completions` and `/v1/chat/completions`: check the body,
build its prompts, plan and check every choice, queue them all (or none), then stream them as
SSE or collect them into one response. The two endpoints differ only in what an `Endpoint`
decides: how a body becomes prompts, and how a choice and a chunk look (api/routes.py).

The engine thread never waits for a client: it hands each `Delta` to the request's unbounded
asyncio queue with `call_soon_threadsafe`; a client that reads slowly only slows its own
response (uvicorn's flow control pauses that handler)."""
from __future__ import annotations

import asyncio
import math
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

from fastapi import Request

from api.checks import ApiError
from api.context import ApiContext, FieldNames, refusal, sse, summary, usage
from api.logprobs import prompt_logprobs as format_prompt_logprobs, text_lengths
from api.errors import EventStream, record, record_finished
from cent_serve.replicas import NO_REPLICA, NoReplica
from cent_serve.request import Request as EngineRequest, RequestParams, RequestRefused
from cent_serve.scheduler import QueueFull
from cent_serve.serving import ENGINE_THREAD_FAILED, Delta, EngineStopped

DISCONNECT_POLL_S = 0.25
"""How often a non-streaming handler checks whether its client is still there, besides listening
for the disconnect itself (a server whose ASGI receive never tells it; uvicorn's does at once)."""
RETRY_AFTER_S = 1
"""`Retry-After` of a 429 (seconds): a small constant, not an estimate. The queue drains at
engine speed, which in virtual mode is far faster than a client's retry loop; clients that
honour the header (the `openai` client does) back off this long."""

STREAM_BATCH = 64
"""A stream's write goes out once it holds this many server-sent events, even with more ready (it
may hold a few more: a delta can add an error event before its chunk, the end adds usage and
[DONE]). Events that are ready together (a client behind the engine, the virtual clock's backlog)
go out in one write, not one each: each socket write gives the GIL up and waits to get it back
behind the engine thread, and one write per token was a third of the event loop's time with 24
streams. Each event stays whole and its own, as a client that splits the stream at blank lines
reads it (vLLM's bench, the openai client, SSE)."""

WHOLE_RESPONSE_NULLS = {"service_tier": None, "system_fingerprint": None}
"""What vLLM 0.33's whole (not streamed) completion and chat responses carry besides the choices and
usage (vllm/entrypoints/openai/completion/protocol.py and chat_completion/protocol.py, serialized with
their nulls): no service tier, and the fingerprint vLLM sends with `--fingerprint-mode none` (its
default `full` sends `vllm-<version>-<config hash>`; this server names no build that way). Its stream
chunks carry neither then: it sets a fingerprint on a stream's last chunk only when it has one, and
its chunk model has no service_tier."""

DEVICE_FAULT_CODE = "device_fault"
"""The error body's `cent.code` of a request the emulated devices failed (it was null, as a bug's is):
a client tells a fault it may retry from a bug (`code` is the status, 500 for both)."""


def no_replica(message: str, retry_after_s: float) -> ApiError:
    """The 503 of a request no replica can serve soon (every one down, each one's re-creation failed
    at least once: one waiting for a replica is failed, a new one refused at once), with
    `Retry-After` in whole seconds: the re-creations' retry interval."""
    return ApiError(message, None, 503, "server_error", NO_REPLICA,
                    headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def failure(error: str, retry_after_s: float | None) -> ApiError:
    """What a choice the engine failed becomes: a device fault's 500, or `no_replica`'s 503 (the
    error event of a stream, without its status and headers)."""
    if retry_after_s is not None:
        return no_replica(error, retry_after_s)
    return ApiError(error, None, 500, "server_error", DEVICE_FAULT_CODE)


@dataclass(frozen=True)
class Prompts:
    """A body's prompts as token ids, the limit its choices ask for, and the fields errors name."""

    ids: list[list[int]]
    max_tokens: int | None
    """The client's limit; None: `default_max_tokens`, clamped to the context each prompt leaves."""
    default_max_tokens: int
    fields: FieldNames = field(default_factory=FieldNames)
    echo_only: bool = False
    """Completions' echo with max_tokens=0: each choice runs the prompt's pass (max_tokens 1) and
    answers with the prompt alone; its one token is dropped (`prompt_only`)."""


class Endpoint(ABC):
    """What a generation endpoint decides; `generate` does everything else. Each method returns
    the endpoint's own fields of a choice, which `Reply` wraps in index, logprobs and finish."""

    id_prefix: str
    object: str
    """The response's `object`."""
    chunk_object: str
    """Each SSE chunk's `object`."""
    prompt_on_choice: bool
    """Where vLLM puts `prompt_token_ids` and `prompt_logprobs`: on each choice (completions) or
    once on the response (chat)."""
    chunk_usage_extra: dict = {}
    """What a chunk's continuous usage (`stream_options.continuous_usage_stats`) carries besides the
    three counts: chat's `completion_tokens_details` null (vLLM 0.33's chat serving sets it on every such
    chunk, null without a reasoning parser; vllm/entrypoints/openai/chat_completion/serving.py), none
    for completions (its completion serving sets the counts alone)."""

    @abstractmethod
    def prompts(self, ctx: ApiContext, body, keep: int | None = None) -> Prompts:
        """The body's prompts, each cut to `keep` tokens (`truncate_prompt_tokens`, as
        `ApiContext.to_ids` cuts them; None: whole); raises ApiError naming the field at fault."""
        ...

    def opening(self, body) -> list[dict]:
        """A streamed choice's first chunks, before any token (none by default)."""
        return []

    @abstractmethod
    def piece(self, text: str) -> dict:
        """A streamed choice's chunk of new text."""
        ...

    @abstractmethod
    def end(self) -> dict:
        """A streamed choice's last chunk (the one with its finish_reason)."""
        ...

    @abstractmethod
    def logprobs(self, ctx: ApiContext, entries: list, token_ids: list[int], offset: int, output_from: int = 0,
                 skip_special_tokens: bool = True) -> dict:
        """The `logprobs` of `token_ids` (their `TokenLogprob` entries), whose text starts at
        character `offset` of the output; those from `output_from` on are output tokens (before: an
        echoed prompt's), whose special tokens are in the text unless `skip_special_tokens`."""
        ...

    def echo(self, ctx: ApiContext, body, prompt_ids: list[int]) -> str | None:
        """The text a choice starts with, its whole and its first chunk alike (completions' `echo`);
        None: no echo (the default; chat echoes in `opening` and `whole`)."""
        return None

    @abstractmethod
    def whole(self, ctx: ApiContext, body, prompt_ids: list[int], out: dict) -> dict:
        """A collected choice whose output `out` (text, token_ids, logprobs, prompt_logprobs)
        came after `prompt_ids`."""
        ...


@dataclass(frozen=True)
class Choice:
    """One completion to generate: the engine request of choice `index`."""

    index: int
    prompt_ids: list[int]
    params: RequestParams


@dataclass(frozen=True)
class Reply:
    """How the answer to one request looks: the fields every chunk and the response share
    (`base`), the endpoint's shapes, the body's options, and the prompts for usage and echo."""

    base: dict
    endpoint: Endpoint
    body: object
    prompts: list[list[int]]
    echo_only: bool = False

    def chunk(self, index: int, fields: dict, finish: str | None, extra: dict | None = None) -> dict:
        choice = dict(index=index, **fields, logprobs=None, finish_reason=finish, **(extra or {}))
        return dict(self.base, choices=[choice])

    def prompt_fields(self, ctx: ApiContext, index: int, prompt_logprobs: list | None) -> dict:
        """`prompt_token_ids` (with return_token_ids) and `prompt_logprobs` (when asked for) of
        choice `index`'s prompt."""
        body, fields = self.body, {}
        if body.return_token_ids:
            fields["prompt_token_ids"] = self.prompts[index // body.n]
        if body.prompt_logprobs is not None:
            fields["prompt_logprobs"] = format_prompt_logprobs(ctx.tokenizer, prompt_logprobs)
        return fields


async def generate(ctx: ApiContext, raw: Request, body, endpoint: Endpoint):
    """Serve one generation request: a dict (the JSON response) or an `EventStream` (SSE).
    Raises ApiError before anything is queued if any check fails, or when no choice could be
    queued; every choice is queued or none is."""
    try:
        ctx.check_model(body.model)
        body.check_fields(ctx.cfg.model.vocab_size)
        prompts = endpoint.prompts(ctx, body, body.prompt_truncation(ctx.cfg.model.max_seq_len))
        choices = plan(ctx, body, prompts)
        reqs, q = await submit(ctx, body, choices, prompts.fields)
    except ApiError:
        await ctx.release_hold(body)
        raise
    base = dict(id=f"{endpoint.id_prefix}-{uuid.uuid4().hex}", object=endpoint.chunk_object,
                created=int(time.time()), model=ctx.model_name)
    reply = Reply(base, endpoint, body, prompts.ids, prompts.echo_only)
    if body.stream:
        return event_stream(ctx, raw, reqs, q, reply)
    outs = await collect(ctx, raw, reqs, q, body.n, prompts.echo_only)
    return respond(ctx, reply, outs)


def plan(ctx: ApiContext, body, prompts: Prompts) -> list[Choice]:
    """`body.n` choices per prompt, each checked; raises ApiError 400 naming the field at fault.
    The engine's check (ids, context, KV) runs first for every prompt, so prompt faults are
    named before option faults; a prompt's n choices share its ids and limit, so one check per
    prompt covers all of them. Nothing is queued here."""
    context = ctx.cfg.model.max_seq_len
    limits = [prompts.max_tokens if prompts.max_tokens is not None
              else min(prompts.default_max_tokens, context - len(ids)) for ids in prompts.ids]
    for i, (ids, limit) in enumerate(zip(prompts.ids, limits)):
        try:
            ctx.check_request(ids, limit, prompts.fields)
        except ApiError as exc:
            if len(prompts.ids) > 1:  # a batch of prompts: say which
                exc.message = f"the prompt at index {i} of {len(prompts.ids)}: {exc.message}"
                exc.args = (exc.message,)
            raise
    params = [body.to_params(limit, prompts.fields.max_tokens, ctx.sampling_defaults, ctx.tokenizer)
              for limit in limits]
    n, scheduler = body.n, ctx.engine.scheduler
    most = scheduler.max_admitted  # a busy server's refusal is the 429 of `submit_all`, not this
    if len(prompts.ids) * n > most:  # counted before building: a request may hold thousands of prompts
        raise ApiError(f"{len(prompts.ids) * n} choices (prompts x n) can never be admitted at once: this server "
                       f"takes at most {most} ({most - scheduler.max_waiting} lane places + scheduler.max_waiting="
                       f"{scheduler.max_waiting}); send fewer prompts or a smaller n",
                       "n" if n > 1 else prompts.fields.prompt)
    return [Choice(i * n + j, ids, _seeded(params[i], i * n + j, n))
            for i, ids in enumerate(prompts.ids) for j in range(n)]


def with_prompt(echoed: str | None, prompt_ids: list[int], prompt_logprobs: list | None,
                token_ids: list[int], entries: list) -> tuple[list[int], list]:
    """The token ids and `TokenLogprob` entries a choice's `logprobs` cover: with an echo
    (`echoed` not None) the prompt's first, None where it has none (OpenAI's echo), else the output's."""
    if echoed is None:
        return token_ids, entries
    return prompt_ids + token_ids, (prompt_logprobs or [None] * len(prompt_ids)) + entries


def prompt_only(d: Delta) -> Delta:
    """`d` without its output (an echo-only choice's token, `Prompts.echo_only`): the prompt's
    log-probabilities stay; a choice that finished did so at its limit of 0 tokens."""
    finish = "length" if d.finished and d.finish_reason in ("stop", "length") else d.finish_reason
    return replace(d, token_ids=[], times_s=[], text="", logprobs=[], finish_reason=finish,
                   stop_reason=None)


def _seeded(params: RequestParams, index: int, n: int) -> RequestParams:
    """With a seed and n > 1, choice `index` samples with seed + index: distinct choices, yet
    the same request gives the same choices."""
    if params.sampling.seed is None or n == 1:
        return params
    return replace(params, sampling=replace(params.sampling, seed=params.sampling.seed + index))


async def submit(ctx: ApiContext, body, choices: list[Choice],
                 fields: FieldNames) -> tuple[list[EngineRequest], asyncio.Queue]:
    """Queue every choice; their progress arrives on the returned queue as (choice index, Delta).
    All or none, at one moment of the engine thread (`EngineLoop.submit_all`): a refused request's
    choices never ran. Raises ApiError: 429 (queue full, with Retry-After), 400 (a refusal), 503
    (engine stopped, or no replica can serve soon: with Retry-After)."""
    scheduler = ctx.engine.scheduler
    if body.arrival_s is None and scheduler.is_full(len(choices)):  # a fast 429 (racy; the engine decides)
        raise queue_full(scheduler.queue_full(len(choices)))
    q: asyncio.Queue = asyncio.Queue()
    try:
        reqs = await ctx.loop.submit_all([(c.prompt_ids, c.params, c.index) for c in choices], q,
                                         arrival_s=body.arrival_s, hold_until_s=body.hold_until_s,
                                         final_only=not body.stream)
    except (ValueError, EngineStopped, NoReplica) as exc:  # ValueError: RequestRefused, QueueFull, the loop's own
        raise _submit_error(exc, fields) from None
    return reqs, q


def _submit_error(exc: Exception, fields: FieldNames) -> ApiError:
    """What `EngineLoop.submit_all` raised, as the client's error."""
    if isinstance(exc, QueueFull):
        return queue_full(exc)
    if isinstance(exc, RequestRefused):
        return refusal(exc, fields)
    if isinstance(exc, EngineStopped):
        return ApiError(str(exc), None, 503, "server_error", "engine_stopped")
    if isinstance(exc, NoReplica):
        return no_replica(str(exc), exc.retry_after_s)
    # the loop's own ValueError: replay fields on the paced clock
    return ApiError(str(exc), "arrival_s" if str(exc).startswith("arrival_s") else fields.prompt)


def queue_full(exc: QueueFull) -> ApiError:
    """429 with the scheduler's own words (the same as an in-process replay records)."""
    return ApiError(str(exc), None, 429, "rate_limit_error", "queue_full",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


async def collect(ctx: ApiContext, raw: Request, reqs, q: asyncio.Queue, n: int,
                  echo_only: bool = False) -> dict[int, dict]:
    """Every choice's output (token_ids, text, times, finish_reason, error, timing) by index,
    once all have finished (with `echo_only`, none of the output: `prompt_only`). Aborts them all
    if the client goes away (checked every DISCONNECT_POLL_S: a non-streaming handler sends
    nothing that would notice); raises ApiError 500 if a choice failed in the engine (503 with
    Retry-After when no replica could serve it), 503 if the engine stopped under it (shutdown)."""
    wants_logprobs = reqs[0].params.logprobs is not None
    out = {index: {"token_ids": [], "text": "", "times": [], "logprobs": [] if wants_logprobs else None}
           for index in range(len(reqs))}
    left = len(reqs)
    made = [0] * len(reqs)  # each choice's tokens as the engine made them (an echo alone drops its one)
    next_check = time.monotonic() + DISCONNECT_POLL_S
    gone = asyncio.ensure_future(_client_gone(raw))  # at once, as vLLM's `with_cancellation` listens
    getter = None
    try:
        while left:
            if gone.done() or time.monotonic() >= next_check:
                next_check = time.monotonic() + DISCONNECT_POLL_S
                if gone.done() or await raw.is_disconnected():
                    ctx.abort_all(reqs)
                    raise ApiError("client disconnected", None, 499)
            try:  # what is there already, without a timer and a task for each delta
                index, d = q.get_nowait()
            except asyncio.QueueEmpty:
                getter = asyncio.ensure_future(q.get())
                await asyncio.wait((getter, gone), timeout=DISCONNECT_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                index, d = getter.result()
            await ctx.pace(d)
            made[index] += len(d.token_ids)
            if echo_only:
                d = prompt_only(d)
            o = out[index]
            o["token_ids"] += d.token_ids
            o["text"] += d.text
            o["times"] += d.times_s
            if wants_logprobs:
                o["logprobs"] += d.logprobs
            if d.prompt_logprobs is not None:
                o["prompt_logprobs"] = d.prompt_logprobs
            if d.finished:
                left -= 1
                o.update(finish_reason=d.finish_reason, error=d.error, timing=d.timing, stop_reason=d.stop_reason,
                         retry_after_s=d.retry_after_s)
    except asyncio.CancelledError:  # cancelled under us: nobody will read these choices
        ctx.abort_all(reqs)
        record(raw, "aborted", "client_disconnect")
        raise
    finally:
        gone.cancel()
        if getter is not None:  # cancelled while waiting (a shutdown): no get left pending on the queue
            getter.cancel()
    failed = [o for o in out.values() if o.get("finish_reason") == "error"]
    if failed:
        raise failure(failed[0]["error"], failed[0]["retry_after_s"])
    reasons = [o["finish_reason"] for o in out.values()]
    record_finished(raw, reasons, n, made)
    if "abort" in reasons:  # the engine stopped under it: no whole answer
        raise engine_stopped(ctx)
    return out


async def _client_gone(raw: Request) -> None:
    """Returns once the client has gone: the ASGI server's `http.disconnect` (the body is read by
    now, so nothing else comes). A receive that fails leaves it to the poll (never returns)."""
    try:
        while (await raw.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - not ours to judge: `collect`'s poll still asks
        await asyncio.Event().wait()


def engine_stopped(ctx: ApiContext) -> ApiError:
    """Why a request's generation was aborted under a connected client: the engine stopped (a
    shutdown, its thread failed, or the Ray cluster under it was lost). A 503, or the error event of
    a stream."""
    why = ctx.loop.stopped_by or ("its engine thread failed" if ctx.engine.last_fault == ENGINE_THREAD_FAILED
                                  else "the server is shutting down")
    return ApiError(f"{why}: the request was aborted before it finished; retry on a running server",
                    None, 503, "server_error", "engine_stopped")


def respond(ctx: ApiContext, reply: Reply, outs: dict[int, dict]) -> dict:
    """The non-streaming response: every choice in the endpoint's shape, usage and `cent`."""
    body, n, endpoint = reply.body, reply.body.n, reply.endpoint
    choices = []
    for index, o in outs.items():  # built in choice order by `collect`
        c = dict(dict(index=index, logprobs=None), **endpoint.whole(ctx, body, reply.prompts[index // n], o),
                 finish_reason=o["finish_reason"], stop_reason=o["stop_reason"], cent=o["timing"])
        if body.return_token_ids:
            c["token_ids"] = o["token_ids"]
        if endpoint.prompt_on_choice:
            c.update(reply.prompt_fields(ctx, index, o.get("prompt_logprobs")))
        choices.append(c)
    response = dict(reply.base, object=endpoint.object, choices=choices, **WHOLE_RESPONSE_NULLS,
                    usage=usage(reply.prompts, outs, details=True), cent=summary([c["cent"] for c in choices]))
    if not endpoint.prompt_on_choice:
        response.update(reply.prompt_fields(ctx, 0, outs[0].get("prompt_logprobs")))
    return response


@dataclass
class _Pending:
    """A streamed choice's output not yet sent. Every output with tokens goes out as its own chunk,
    as vLLM streams (a token whose text is held back, an incomplete character or a possible stop
    string, goes out with empty text and its text with a later chunk), so a client timing chunks
    sees each token when it is made (with the request's `stream_interval`, every that many tokens
    after the first); the last token's chunk carries the finish_reason."""

    token_ids: list[int] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    text: str = ""
    sent_tokens: int = 0
    text_offset: int = 0
    """`text_offset` of the next token, counted as the whole response counts it (each token's own
    text after the echo's tokens), not from the text sent: a held-back token's text goes out later."""
    prompt_logprobs: list | None = None
    started: bool = False

    def add(self, d) -> None:
        self.token_ids += d.token_ids
        self.times_s += d.times_s
        self.logprobs += d.logprobs
        self.text += d.text
        if d.prompt_logprobs is not None:
            self.prompt_logprobs = d.prompt_logprobs

    def flush(self, echoed: str | None) -> None:
        """The pending output went out, after `echoed` (the first chunk's echo, else None)."""
        self.sent_tokens += len(self.token_ids)
        self.token_ids, self.times_s, self.logprobs, self.text = [], [], [], ""
        self.started = True


def event_stream(ctx: ApiContext, raw: Request, reqs, q: asyncio.Queue, reply: Reply) -> EventStream:
    """SSE: the endpoint's opening chunk per choice with the first output, one chunk per output
    (empty text while a token's text is held back, as vLLM streams; with `stream_interval` N, a
    choice's first output, then one per N tokens, as vLLM batches them), the last token's chunk with
    the finish_reason, usage if asked, then [DONE]. A fault's or a stop's error event comes before its
    choice's last chunk. If the client leaves first, its choices are aborted and the request counts as
    aborted."""
    left = [len(reqs)]  # a cell: the body decrements it, on_close reads it
    body, endpoint = reply.body, reply.endpoint
    prompt_tokens = [len(p) for p in reply.prompts]
    continuous = body.include_usage and body.stream_options.continuous_usage_stats
    wants_logprobs = reqs[0].params.logprobs is not None
    interval = body.stream_interval or 1  # tokens per chunk after a choice's first (vLLM's `stream_interval`)

    def chunk(index: int, p: _Pending, d, echoed: str | None) -> dict:
        timing = dict(d.timing, times_s=p.times_s) if d.finished else {"times_s": p.times_s}
        extra = {"stop_reason": d.stop_reason if d.finished else None, "cent": timing}
        if body.return_token_ids:
            extra["token_ids"] = p.token_ids
        if not p.started and endpoint.prompt_on_choice:
            extra.update(reply.prompt_fields(ctx, index, p.prompt_logprobs))
        text = (echoed or "") + p.text
        fields = endpoint.piece(text) if text or not d.finished else endpoint.end()
        c = reply.chunk(index, fields, d.finish_reason if d.finished else None, extra)
        if wants_logprobs and (p.logprobs or echoed is not None):
            ids, entries = with_prompt(echoed, reply.prompts[index // body.n], p.prompt_logprobs, p.token_ids,
                                       p.logprobs)
            start = 0 if echoed is not None else p.text_offset
            first = len(ids) - len(p.token_ids)
            c["choices"][0]["logprobs"] = endpoint.logprobs(ctx, entries, ids, start, first, body.skips_special_tokens)
            p.text_offset = start + sum(text_lengths(ctx.tokenizer, ids, first, body.skips_special_tokens))
        if not p.started and not endpoint.prompt_on_choice and index == 0:
            c.update(reply.prompt_fields(ctx, 0, p.prompt_logprobs))
        if continuous:
            n = prompt_tokens[index // body.n]
            done = p.sent_tokens + len(p.token_ids)
            c["usage"] = {"prompt_tokens": n, "completion_tokens": done, "total_tokens": n + done,
                          **endpoint.chunk_usage_extra}
        return c

    def opening() -> list[str]:
        """The endpoint's opening chunks, each for every choice (chat: the role, then any echo)."""
        out = []
        for fields in endpoint.opening(body):
            for i in range(len(reqs)):
                c = reply.chunk(i, fields, None)
                if continuous:
                    n = prompt_tokens[i // body.n]
                    c["usage"] = {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n,
                                  **endpoint.chunk_usage_extra}
                out.append(sse(c))
        return out

    async def chunks() -> AsyncIterator[str]:
        outs = {i: {"token_ids": []} for i in range(len(reqs))}
        made = [0] * len(reqs)  # each choice's tokens as the engine made them (an echo alone drops its one)
        pending = {i: _Pending() for i in range(len(reqs))}
        reasons = []
        opened = False
        out: list[str] = []  # events made and not yet written: a backlog's go out in one write (`STREAM_BATCH`)
        while left[0]:
            if q.empty():
                if out:  # nothing more is ready: what was made goes out before this waits
                    yield "".join(out)
                    out.clear()
                index, d = await q.get()
            else:  # a backlog (the engine ran ahead of this client)
                if len(out) >= STREAM_BATCH:
                    yield "".join(out)
                    out.clear()
                    # let the event loop in between writes. Nothing else here suspends (a get from a non-empty
                    # queue, uvicorn's send to a gone client), so without it the loop never ran the client's
                    # disconnect and the whole backlog went into the closed socket, one "socket.send() raised
                    # exception." logged per write, the request running on (to its max_tokens if the engine
                    # kept ahead), and other clients waited
                    await asyncio.sleep(0)
                index, d = q.get_nowait()
            if ctx.due_in(d) > 0:  # paced: what is due goes out now, this one when it is due
                if out:
                    yield "".join(out)
                    out.clear()
                await ctx.pace(d)
            made[index] += len(d.token_ids)
            if reply.echo_only:
                d = prompt_only(d)
            outs[index]["token_ids"] += d.token_ids
            if not opened:  # the opening (chat's role chunk) goes out with the first output, as vLLM sends
                opened = True  # it: a client timing its first token by the first chunk with choices (vLLM's
                out += opening()  # bench) would otherwise measure the time to the headers, not the TTFT
            if d.error:
                out.append(sse(failure(d.error, d.retry_after_s).body()))
            elif d.finished and d.finish_reason == "abort" and "abort" not in reasons:
                # the engine stopped under the stream: an error event (once), so a client that reads
                # no finish_reason does not count the cut answer as a success (a 503 when not streamed)
                out.append(sse(engine_stopped(ctx).body()))
            p = pending[index]
            p.add(d)
            if d.finished:
                left[0] -= 1
                reasons.append(d.finish_reason)
            if d.finished or (p.token_ids and (not p.started or len(p.token_ids) >= interval)):
                # a choice's first chunk starts with its echo (vLLM's)
                echoed = None if p.started else endpoint.echo(ctx, body, reply.prompts[index // body.n])
                out.append(sse(chunk(index, p, d, echoed)))
                p.flush(echoed)
        record_finished(raw, reasons, body.n, made)
        if body.include_usage:
            out.append(sse(dict(reply.base, choices=[], usage=usage(reply.prompts, outs))))
        out.append("data: [DONE]\n\n")
        yield "".join(out)

    def on_close() -> None:
        if left[0]:  # the client went away mid-stream
            ctx.abort_all(reqs)
            record(raw, "aborted", "client_disconnect")

    return EventStream(chunks(), on_close)
