"""The engine on its own thread, for the asyncio front end.

Only the engine thread touches the `Engine` (and so the executors and
actors). The API talks to it through an inbox of commands whose results come
back as futures, and receives each request's progress as `Delta`s on an
asyncio queue. Clock modes (docs/architecture.md):

- `virtual`: the engine runs rounds as fast as it can; a request arriving
  over HTTP gets the engine's simulated clock as its arrival time.
  A trace replayer can send each request's trace arrival (`arrival_s`) and
  hold the clock (`hold_until_s`: no round starts at or past it until the
  next request comes), so an HTTP replay equals the in-process one.
- `paced`: simulated time is tied to the wall clock (`pace_factor` wall
  seconds per simulated second): arrivals get the wall-derived simulated
  time, no round starts before the wall clock reaches its boundary
  (`Engine.next_start_s`, where arrivals join), and the API releases each
  token when the wall clock reaches its simulated time. A round's lanes may
  begin later than its boundary: the round after a long one (a prefill) is
  computed at once, ahead of the wall clock by at most that long round.

The paced clock's lateness is measured by `pace_monitor.PaceMonitor`; a request's stream receives
`delta.Delta`s, which the engine thread makes and hands to the event loops (`streams.StreamDelivery`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import heapq
import itertools
import logging
import math
import queue
import threading
import time
from typing import Callable

from cent_serve.delta import Delta, _put_all, _stable
from cent_serve.engine import Engine
from cent_serve.pace_monitor import PACE_LAG_WARN_S, PACE_LATE_FRAC, PaceMonitor
from cent_serve.request import Request, RequestParams
from cent_serve.streams import FLUSH_EVERY_S, StreamDelivery

__all__ = ["EngineLoop", "EngineStopped", "Delta", "PaceMonitor", "ENGINE_THREAD_FAILED", "RELEASE_HOLD_S",
           "HOLD_EXPIRY_S", "PACE_LAG_WARN_S", "PACE_LATE_FRAC", "StreamDelivery", "FLUSH_EVERY_S",
           "_put_all", "_stable"]  # StreamDelivery, FLUSH_EVERY_S: streams.py's; _put_all, _stable: delta.py's

log = logging.getLogger("cent.serving")
ENGINE_THREAD_FAILED = "the engine thread failed"
"""`Engine.last_fault` after a bug ended the engine thread."""
IDLE_POLL_S = 0.05
"""Wall seconds the idle engine thread waits for a command before looking again."""
PACE_SLICE_S = 0.005
"""Longest wall sleep in paced mode before the inbox is looked at again."""
HEALTH_CHECK_S = 5.0
"""Wall seconds between checks for dead devices while the engine is idle (rounds notice at once)."""
HOLD_EXPIRY_S = 30.0
"""Wall seconds a replay hold lasts without news from its client (a vanished client must
not stop the clock forever)."""
RELEASE_HOLD_S = 1e18
"""A hold at or past this releases the clock: the replayer's last request has no next arrival."""


class EngineStopped(RuntimeError):
    """The engine thread is gone; the API answers 503."""


class EngineLoop(StreamDelivery):
    """Runs `engine.step()` on a thread; `submit_all`/`abort`/`call` are safe from any thread."""

    def __init__(self, engine: Engine, clock: str = "virtual", pace_factor: float = 1.0,
                 on_finish: Callable[[Request], None] | None = None,
                 on_tokens: Callable[[Request, int], None] | None = None,
                 on_round: Callable[[int], None] | None = None,
                 on_late: Callable[[float], None] | None = None, on_idle: Callable[[], None] | None = None,
                 watch=None) -> None:
        self.engine = engine
        self.watch = watch
        """What the devices run on, when it can be lost (a Ray cluster: `executor.watch.ClusterWatch`,
        started and stopped with the loop): once it is `lost`, the thread stops, every request ending
        as aborted with that reason (`stopped_by`). None: nothing to watch."""
        engine.cluster_fault = watch.fault if watch is not None else None  # a device fault names the head
        self.stopped_by: str | None = None
        """Why the thread stopped when nobody asked it to (the `watch`'s cluster lost), for the requests
        it ended and /health; None for a stop it was asked for."""
        self.clock, self.pace_factor = clock, pace_factor
        self.on_finish = on_finish
        """Called once per ended sequence (engine thread; one that raises is logged, `_observe`, as
        `on_tokens` and `on_late` are)."""
        self.on_tokens = on_tokens
        """Called with a sequence and how many of its tokens were delivered before, when new ones are
        (engine thread, before `on_finish`)."""
        self.on_round = on_round
        """Called after each round that ran with the tokens it made: prompts whose first token it made,
        and tokens generated (engine thread, before the round's `on_tokens`; one that raises is logged,
        `_observe`)."""
        self.on_late = on_late
        """Paced clock: called once per ended sequence that was given a token, with the most its tokens
        reached its client late, as a fraction of its paced latency (0: on time; engine thread)."""
        self.on_idle = on_idle
        """Called when the thread finds no round to run (idle or held; engine thread, at most about every
        IDLE_POLL_S): what runs on a timer while no round does (the stats line's last interval; one that
        raises is logged, `_observe`)."""
        self._observer_failures: dict[str, int] = {}  # callback name -> times it raised (`_observe`)
        self.inbox: queue.Queue = queue.Queue()
        # request id -> (event loop, queue, tag, [tokens, chars] sent, tokens observed, the most a token was
        # late as a fraction of its paced latency (`PaceMonitor.delivered`)], final only)
        self.streams: dict[str, tuple] = {}
        self._flushed_at = -math.inf  # the first round's deltas go out at once
        self._outbox: dict = {}  # event loop -> [(queue, item)] delivered since the last `_flush`
        self._stop = threading.Event()
        self._closed = False  # set by _close under _close_lock: a command put after it would never be taken
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cent-engine", daemon=True)
        self.wall_origin = time.monotonic()
        self.hold_until_s: float | None = None
        self._next_check = time.monotonic() + HEALTH_CHECK_S
        self._hold_expires = 0.0
        self.pace = PaceMonitor(pace_factor)
        self._arrivals: list = []  # heap of (arrival_s, seq, add, future): replay arrivals not yet due
        self._arrival_seq = itertools.count()
        self.num_hold_expiries = 0
        """Replay holds that expired (a replayer stopped sending): 0 in a healthy replay."""
        self.num_late_arrivals = 0
        """Replay arrivals the engine had passed, taken as arriving when its last round began."""
        self.round_started: float | None = None
        """When (monotonic wall seconds) the round now running began; None between rounds."""
        self.snapshot: tuple | None = None
        """The API's last (status, device stats, fabric stats), served while a round holds the engine thread."""
        self.snapshot_task = None
        """The API's snapshot call in flight (one at a time, however many scrapes wait on it)."""

    # ------------------------------------------------------------------ from the API

    def start(self) -> None:
        self._thread.start()
        if self.watch is not None:
            self.watch.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after its round: every request not finished ends as aborted (`_close`).
        Waits up to `timeout_s` for it. Not from a signal handler (`request_stop`)."""
        self._stop.set()
        if self.watch is not None:
            self.watch.stop()
        self.inbox.put(None)
        self._thread.join(timeout_s)

    def request_stop(self) -> None:
        """`stop` without waking or waiting: the thread sees the flag within a round or IDLE_POLL_S.
        The one stop a signal handler may call: it takes no lock that the code it interrupted (the
        event loop, putting into the inbox) may hold."""
        self._stop.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def round_running_s(self) -> float:
        """How long the round now running has run (wall seconds), 0 between rounds."""
        started = self.round_started
        return 0.0 if started is None else time.monotonic() - started

    def status(self) -> dict:
        """The engine's status with the loop's own (engine thread: through `call`)."""
        # where a request sent now arrives: the wall clock's time, or on the virtual clock the engine's
        sim_now_s = self.sim_now_s() if self.clock == "paced" else self.engine.arrival_now_s
        return dict(self.engine.status(), sim_now_s=sim_now_s, clock_mode=self.clock, pace_factor=self.pace_factor,
                    num_hold_expiries=self.num_hold_expiries, num_late_arrivals=self.num_late_arrivals,
                    pace_lag_s=self.pace.lag_s, pace_lag_episodes=self.pace.num_episodes,
                    pace_factor_needed=self.pace.needed_factor(), pace_late_requests=self.pace.num_late_requests,
                    pace_late_frac_max=self.pace.late_frac_max)

    def sim_now_s(self) -> float:
        """Paced mode: the simulated time the wall clock stands at."""
        return (time.monotonic() - self.wall_origin) / self.pace_factor

    def wall_delay_s(self, sim_s: float) -> float:
        """Paced mode: wall seconds until `sim_s` is reached (0 in virtual mode)."""
        if self.clock != "paced":
            return 0.0
        return self.wall_origin + sim_s * self.pace_factor - time.monotonic()

    async def submit_all(self, choices: list[tuple[list[int], RequestParams, object]], q: asyncio.Queue,
                         arrival_s: float | None = None, hold_until_s: float | None = None,
                         final_only: bool = False) -> list[Request]:
        """Queue requests (an HTTP request's choices: (prompt ids, params, tag) each) whose progress
        arrives on `q` as (tag, Delta) items, at one moment of the engine thread, all or none: no
        round runs between them, and what `Engine.add_request` raises (ValueError, QueueFull, also
        when the waiting bound has no room for all) leaves nothing queued, so a refused request's
        choices never ran. `arrival_s` and `hold_until_s` (virtual clock only) are a replayer's
        trace arrival and clock hold (module docstring). `final_only`: one Delta per request, when
        it ends, with all its output (a response that is not streamed): no text is decoded and no
        event loop woken for it each round, work that took the engine thread most of its time and
        the event loop its turns (a /health behind it waited seconds) with many long sequences."""
        if self.clock == "paced" and (arrival_s is not None or hold_until_s is not None):
            raise ValueError("arrival_s and hold_until_s need the virtual clock: the paced clock takes "
                             "arrivals from the wall clock")
        loop = asyncio.get_running_loop()
        # paced: the request arrives now, on the wall clock, not when the engine thread (maybe busy with a
        # round) takes it; it then waits for the round boundary, and its TTFT counts the wait, as a client's does
        when = self.sim_now_s() if self.clock == "paced" else arrival_s
        # `at`: the arrival the engine takes instead, for a replay arrival it has passed (`_handle`)
        add = lambda eng, at=None: self._add(eng, choices, loop, q, when if at is None else at,  # noqa: E731
                                             hold_until_s, final_only)
        if arrival_s is None:
            return await self.call(add)
        fut: cf.Future = cf.Future()  # answered when the engine's clock reaches the arrival
        self._put(("arrive", (arrival_s, hold_until_s, add), fut))
        return await asyncio.wrap_future(fut)

    def abort(self, request_id: str) -> None:
        self.inbox.put(("abort", request_id, None))

    async def call(self, fn: Callable[[Engine], object]):
        """Run `fn(engine)` on the engine thread between rounds and return its result."""
        fut: cf.Future = cf.Future()
        self._put(("call", fn, fut))
        return await asyncio.wrap_future(fut)

    def _put(self, cmd: tuple) -> None:
        """Put a command whose future the engine thread answers, or raise EngineStopped when it never
        will: not started, or closed. Under `_close_lock`, so that a command is either put before
        `_close` empties the inbox (and answered by it) or refused: a thread alive at a check and
        closed before the put left the caller waiting until the server's shutdown grace ran out."""
        with self._close_lock:
            if self._closed or not self._thread.is_alive():
                why = self.stopped_by or "the server is stopping or failed"
                raise EngineStopped(f"the engine thread is not running: {why}")
            self.inbox.put(cmd)

    # ------------------------------------------------------------------ the thread

    def _add(self, eng: Engine, choices, loop, q, arrival_s, hold_until_s, final_only=False) -> list[Request]:
        try:
            for prompt_ids, params, _ in choices:  # every check before any is queued: all or none
                eng.check_request(prompt_ids, params.max_tokens)
            eng.check_serving()  # no replica can come back soon: refused now (NoReplica), not left to wait
            if eng.scheduler.is_full(len(choices)):
                raise eng.scheduler.queue_full(len(choices))
            reqs = [eng.add_request(prompt_ids, params, arrival_s=arrival_s) for prompt_ids, params, _ in choices]
            if len(reqs) > 1:
                for req in reqs:
                    req.choices = reqs  # they answer together (`Engine._recover`)
        finally:  # the hold moves on even when the request is refused (the replayer sends the next)
            self.set_hold(hold_until_s)
        for req, (_, _, tag) in zip(reqs, choices):
            self.streams[req.request_id] = (loop, q, tag, [0, 0, 0, 0.0], final_only)
        return reqs

    def set_hold(self, hold_until_s: float | None) -> None:
        """Engine thread only. The replayer sends one request at a time, in arrival order."""
        if hold_until_s is not None:
            self.hold_until_s = hold_until_s if hold_until_s < RELEASE_HOLD_S else None
            self._hold_expires = time.monotonic() + HOLD_EXPIRY_S

    def _held(self, eng: Engine) -> bool:
        """Whether the next round would start at or past a replayer's hold."""
        if self.hold_until_s is None:
            return False
        # a client waiting for an arrival the clock is moving towards (at or before the hold) is not silent;
        # one past the hold, or whose client left, would keep the hold, and every round, waiting for good
        waiting = any(at <= self.hold_until_s and not fut.done() for at, _, _, fut in self._arrivals)
        if time.monotonic() > self._hold_expires and not waiting:
            log.warning("replay hold at %.6f s expired: no request for %.0f s", self.hold_until_s, HOLD_EXPIRY_S)
            self.hold_until_s = None
            self.num_hold_expiries += 1
            return False
        return eng.next_start_s() >= self.hold_until_s

    def _admit_due(self) -> None:
        """Replay arrivals enter the engine when its clock reaches them, exactly as the in-process
        replayer adds trace requests (`cent_serve.bench.runner`): at a round boundary at or past
        the arrival, or at once when nothing runs (the idle engine jumps to the arrival). So the
        queue bound sees the same waiting queue in both, and an HTTP replay equals an in-process one."""
        if not self._arrivals:
            return
        eng = self.engine
        horizon = eng.now_s
        if not eng.scheduler.num_running:
            horizon = max(horizon, self._arrivals[0][0])
        while self._arrivals and self._arrivals[0][0] <= horizon:
            _, _, add, fut = heapq.heappop(self._arrivals)
            self._run_call(add, fut)

    def _run_call(self, fn, fut: cf.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return  # the caller gave up (its task was cancelled): do not act for it
        try:
            fut.set_result(fn(self.engine))
        except BaseException as exc:  # the caller gets it; the engine goes on
            fut.set_exception(exc)

    def _handle(self, cmd) -> None:
        if cmd is None:
            return
        kind, arg, fut = cmd
        if kind == "abort":
            req = self.engine.abort(arg)
            if req is not None:
                self._deliver(req)
            return
        if kind == "arrive":
            arrival_s, hold_until_s, add = arg
            self.set_hold(hold_until_s)  # the hold moves on now: the replayer waits for this answer
            started = self.engine.round_start_s
            if arrival_s < started:
                # a replay's hold keeps rounds from starting past its next arrival, so this arrival was passed
                # by: other clients' rounds, a lapsed hold, or a client's mistake. Taken as arriving when
                # the last round began, not queued for the time since (arrival_s 0 after the clock had moved
                # put ~1e9 s into every latency series)
                self.num_late_arrivals += 1
                if self.num_late_arrivals == 1 or self.num_late_arrivals % 100 == 0:  # not one line for each
                    log.warning("replay arrival_s=%.6f is before the engine's clock (a round began at %.6f s): "
                                "taken as %.6f s (another client's rounds or a lapsed replay hold let the clock "
                                "pass it; %d so far)", arrival_s, started, started, self.num_late_arrivals)
                arrival_s = started
                add = functools.partial(add, at=arrival_s)
            heapq.heappush(self._arrivals, (arrival_s, next(self._arrival_seq), add, fut))
            self._admit_due()
            return
        self._run_call(arg, fut)

    def _drain(self, block: bool) -> int:
        """Handle the commands waiting (waiting up to IDLE_POLL_S for one if `block`); how many."""
        handled = 0
        try:
            cmd = self.inbox.get(timeout=IDLE_POLL_S) if block else self.inbox.get_nowait()
            self._handle(cmd)
            handled += 1
            while True:
                self._handle(self.inbox.get_nowait())
                handled += 1
        except queue.Empty:
            pass
        return handled

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug: say so, and leave nobody waiting
            log.exception(ENGINE_THREAD_FAILED)
            self.engine.last_fault = ENGINE_THREAD_FAILED
            raise
        finally:
            self._close()

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            if self.watch is not None and self.watch.lost:  # nothing can run again: end every request (`_close`)
                return
            self._flush(force=False)  # what the last passes delivered
            self._admit_due()
            for req in eng.fail_waiting():  # no replica can come back soon: the waiting are told so, not left
                self._deliver(req)
            held = self._held(eng)
            if not held and not eng.can_step():
                try:  # before the commands: a status read sees the devices emptied
                    self.round_started = time.monotonic()  # a round of plans with no lanes: a device may hold it
                    eng.forget_finished()
                except Exception:  # noqa: BLE001 - a device fault is recovered by _run; anything else logged
                    log.exception("telling the idle devices which sequences to forget failed")
                finally:
                    self.round_started = None
            block = held or not eng.can_step()
            if block:
                self._flush()  # before this may wait
            if self._drain(block=block):
                self._flush()  # an abort's end now, not after the next round
            # `held` was read before the drain: a request it admitted may have set a hold the next round
            # would reach (the first of a burst of one arrival time, which found the engine unheld)
            if held or self._held(eng) or not eng.can_step():  # idle, held, or waiting for a replica to come back
                self.pace.on_schedule()
                if self.on_idle is not None:
                    self._observe("on_idle", self.on_idle)
                if time.monotonic() >= self._next_check:  # idle: look for dead devices now and then
                    self._next_check = time.monotonic() + HEALTH_CHECK_S
                    try:
                        for req in eng.check_devices():
                            self._deliver(req)
                    except Exception:  # noqa: BLE001 - re-creating failed; retried at the next check
                        log.exception("device check failed")
                continue
            if self.clock == "paced":
                wait = self.wall_delay_s(eng.next_start_s())
                if wait > 0:
                    self.pace.on_schedule()
                    self._stop.wait(min(wait, PACE_SLICE_S))
                    continue
            try:
                t0, sim0, made = time.monotonic(), eng.now_s, eng.stats.prompt_tokens + eng.stats.generation_tokens
                self.round_started = t0
                try:
                    advanced = eng.step()
                finally:
                    self.round_started = None
                self.pace.stepped(time.monotonic() - t0, eng.now_s - sim0)
            except Exception as exc:  # a fault fails the requests of the round, not the server
                log.exception("round failed")
                eng.last_fault = f"{type(exc).__name__}: {exc}"
                eng.fail_running(f"the emulated devices failed this round: {eng.last_fault}")
                # everything that finished in this round, failed or not, still owes its client an end
                advanced = [r for r in (eng.requests.get(rid) for rid in list(self.streams)) if r and r.is_finished]
            else:  # outside the fault handling: an observer's bug is no device fault (`_observe`)
                if self.on_round is not None:
                    self._observe("on_round", self.on_round,
                                  eng.stats.prompt_tokens + eng.stats.generation_tokens - made)
            for req in advanced:
                self._deliver(req)

    def _observe(self, name: str, callback: Callable, *args) -> None:
        """Call an observer (`on_round`, `on_idle`, and in `_deliver` `on_tokens`, `on_late`, `on_finish`: the
        metrics, the stats line) on the engine thread.
        One that raises is a bug of ours, not a device's fault nor a client's error: it is logged, its
        first failure with its traceback, then at its 10th, 100th, ... failure one line with the count
        (it may fail every round), and the engine goes on: the round it observed stands and its
        requests are delivered. Its figures may then be short; that costs no client a request (vLLM's
        output handler, which feeds its stat loggers, ends its engine instead)."""
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - logged; an observer's bug must not end requests
            n = self._observer_failures[name] = self._observer_failures.get(name, 0) + 1
            if n == 1:
                log.exception("the %s callback failed (a bug; the engine goes on, and logs further failures "
                              "at the 10th, 100th, ...)", name)
            elif n == 10 ** (len(str(n)) - 1):
                log.error("the %s callback has failed %d times (the last: %s: %s)", name, n, type(exc).__name__, exc)

    def _close(self) -> None:
        """Stopping: end every stream and every pending command, so nobody waits forever (also when
        ending a stream fails: on a failed engine thread the bug may strike again here)."""
        eng = self.engine
        if self.watch is not None and self.watch.lost:  # why, whoever saw it first (this thread or the server's)
            self.stopped_by = self.watch.lost
        try:
            for rid in list(self.streams):
                req = eng.requests.get(rid)
                if req is None:
                    continue
                try:
                    if not req.is_finished:
                        eng.abort(rid)
                    self._deliver(req)
                except Exception as exc:  # noqa: BLE001 - the others still get their end, and so does this one
                    log.exception("request %s: ending its stream failed", rid)
                    entry = self.streams.pop(rid, None)
                    if entry is not None:
                        loop, q, tag, *_ = entry
                        end = Delta([], [], "", finished=True, finish_reason="error",
                                    error=f"the engine stopped and could not end this request: {exc}")
                        self._outbox.setdefault(loop, []).append((q, (tag, end)))
        finally:
            self._flush()
            self._answer_pending()

    def _answer_pending(self) -> None:
        """Refuse every command not taken, and every one put from now on (`_put`)."""
        pending = [fut for *_, fut in self._arrivals]
        with self._close_lock:  # no command is put after this (`_put`)
            self._closed = True
        while True:
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                break
            if cmd is not None and cmd[0] in ("call", "arrive"):
                pending.append(cmd[2])
        why = f": {self.stopped_by}" if self.stopped_by else ""
        for fut in pending:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(EngineStopped(f"the engine stopped before it could take this{why}"))
