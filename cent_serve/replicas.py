"""The data-parallel replicas' executors, and their re-creation after a device fault.

A replica whose round failed (a device actor or the switch died, or raised) is taken out at once
and re-created on a background thread, so the engine goes on serving the other replicas and
answering status calls while new actors start and load their weights (tens of seconds on Ray).
The engine swaps the new executor in between rounds (`poll`). A re-creation that fails is retried
every `retry_s` (`server.replica_retry_s`); meanwhile `degraded` says why the system runs short.
When no replica is up and every down one's re-creation has failed at least once (a lost worker
host: each waits to retry, known not to come back soon), `none_can_serve` says why, and the engine
fails the requests waiting for a replica rather than have them wait with no limit (`NoReplica`, a
503 at the API).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable

from cent_serve.config.runtime import ServerConfig
from cent_serve.executor.base import StartCancelled, cancellable_start, sum_terms

log = logging.getLogger("cent.replicas")
RETRY_S = ServerConfig.replica_retry_s
"""Wall seconds between attempts to re-create a replica whose re-creation failed: `server.replica_retry_s`'s
default (the engine passes the configured one)."""
SHUTDOWN_JOIN_S = 60.0
"""Longest wait, at shutdown, for a re-creation in flight (its actors are then stopped too)."""
EXIT_JOIN_S = 5.0
"""The same wait when the process exits next (`cent serve` stopped by a signal). A re-creation gives
its devices' start-up up within a fraction of a second of the stop (`cancellable_start`; a stopped
server took 19 s waiting for it); one still busy after this (in a Ray call that does not ask
`check_start`) is left, its actors going with the Ray the server started or, on a cluster of its
own, with the driver (Ray ends a job's actors when its driver leaves)."""
LOST_JOIN_S = 2.0
"""The same wait when the server gives its Ray cluster up (`give_up_cluster`). A re-creation waiting
for its placement, its switch or its devices hears the stop within a quarter second
(`ray_placement.PLACEMENT_CHECK_S`, `ray_executor.STARTUP_CHECK_S`; 8x that here for a loaded host)
and leaves without a Ray call; one inside a call on the dead GCS, begun before the loss was known,
does not return, and every second waited for it is one less before Ray's core ends the process (its
60 s without a GCS) ahead of the server's last line."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
FAULT_TEXT_MAX = 600
"""Longest fault description kept (characters): Ray's errors carry pages of advice."""


CARRIED_FABRIC = ("wire_bytes", "framed_bytes")
"""A replica's fabric totals counted from the server's start (`Replicas.fabric_totals`): a re-created
replica's go on from its old devices' last figures, so `cent:fabric_bytes_total` never goes back (a
Prometheus counter that drops reads as a reset, and rate() across it is wrong)."""


def _added(a: dict, b: dict) -> dict:
    """`a` with `b`'s figures added to it, key by key (a's keys first, then b's new ones)."""
    return dict(a, **{k: a.get(k, 0) + v for k, v in b.items()})


class Carried:
    """Totals of each replica counted from the server's start, across its executor's re-creations: the
    last figures read from the executors it had before (`fail` adds them in) plus those last read from
    the one it has (`read`). What a failed executor counted after its last reading is lost with it (its
    devices may not answer), and one that fails before any reading adds nothing. Engine thread."""

    def __init__(self, num_replicas: int) -> None:
        self._before = [{} for _ in range(num_replicas)]
        self._seen = [{} for _ in range(num_replicas)]

    def read(self, replica: int, figures: dict) -> dict:
        """`figures` (replica `replica`'s executor's own totals, just read) counted from the server's start."""
        self._seen[replica] = dict(figures)
        return self.total(replica)

    def total(self, replica: int) -> dict:
        """Replica `replica`'s totals at the last reading, its executors before included (while it is down,
        those of the executors it had)."""
        return _added(self._before[replica], self._seen[replica])

    def fail(self, replica: int) -> None:
        """Replica `replica`'s executor failed: its last figures read go into those carried."""
        self._before[replica], self._seen[replica] = self.total(replica), {}


NO_REPLICA = "no_replica"
"""The error body's `cent.code` of a request no replica can serve soon (the API's 503, a stream's error event; a
`cent bench` HTTP run counts it as a `server_error`)."""


class NoReplica(RuntimeError):
    """No replica can serve soon (`Replicas.none_can_serve`): a new request is refused before it is
    queued. The API answers 503 with `Retry-After: retry_after_s` (the re-creations' retry interval)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _shut_down(executor, replica: int, cluster_lost: bool = False) -> None:
    """Shut a failed replica's executor down (None: nothing to do); it is broken already, so an
    error doing so is logged, not raised (its actors are killed anyway). `cluster_lost`: nothing to
    do either, its actors went with the cluster (Ray's kill would wait on its dead GCS)."""
    if executor is None or cluster_lost:
        return
    try:
        executor.shutdown()
    except Exception:  # noqa: BLE001
        log.exception("shutting down the failed replica %d", replica)


def describe_fault(exc: BaseException) -> str:
    """`Type: message` on one line, for logs, `/health` and `last_fault`: Ray's errors (an
    ActorDiedError, a creation task's failure) carry ANSI colours, tab-indented fields and a remote
    traceback; the frames and the caret lines go, the rest is joined with spaces and cut."""
    lines, frame_indent = [], None
    for raw in _ANSI.sub("", str(exc)).splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if line.startswith('File "'):  # a frame (its source line, if it has one, follows it)
            frame_indent = indent
            continue
        source, frame_indent = frame_indent is not None and indent > frame_indent, None
        if source:  # the source line under a frame: indented deeper (a frame of a .pyx has none)
            continue
        if not line or line.startswith("Traceback (most recent call last)") or set(line) <= set("^~ "):
            continue
        lines.append(line)
    text = f"{type(exc).__name__}: {' '.join(lines)}"
    return text if len(text) <= FAULT_TEXT_MAX else text[:FAULT_TEXT_MAX - 3] + "..."


class Replicas:
    """`executors[r]` is replica r's executor, or None while it is being re-created.

    Only the engine thread calls `fail`, `poll`, `none_can_serve` and `shutdown`; `recovering` and
    `degraded` may be read from any thread (the health endpoint)."""

    def __init__(self, make: Callable[[], object], num_replicas: int, retry_s: float = RETRY_S,
                 remake: Callable[[], object] | None = None) -> None:
        """`make` builds the first `num_replicas` executors; `remake` (default `make`) re-creates a
        failed one alone (a Ray executor then asks the cluster for one replica's devices, not all)."""
        self._make, self.retry_s = make, retry_s
        self._remake = remake or make
        self.executors: list = []
        try:
            for r in range(num_replicas):
                if num_replicas > 1:  # the devices' start-up progress lines that follow are this replica's
                    log.info("starting replica %d (%d of %d)", r, r + 1, num_replicas)
                self.executors.append(make())
        except BaseException:  # a half-built system keeps no actors
            self.shutdown()
            raise
        self._lock = threading.Lock()
        self._built: dict[int, object] = {}  # replica -> new executor, waiting to be swapped in
        self._errors: dict[int, str] = {}  # replica -> why its last re-creation failed
        self._threads: dict[int, threading.Thread] = {}
        self._retry_at: dict[int, float] = {}
        self._stopping = False
        self._cluster_lost = False  # set before `_stopping` (`give_up_cluster`): a stopped re-creation reads both
        self.num_recoveries = 0
        self._fabric = Carried(num_replicas)  # the CARRIED_FABRIC totals (`fabric_totals`)
        self._energy_terms = Carried(num_replicas)  # the devices' joules by term (`energy_terms_j`)

    def __len__(self) -> int:
        return len(self.executors)

    def is_up(self, replica: int) -> bool:
        return self.executors[replica] is not None

    @property
    def recovering(self) -> bool:
        """Whether a replica is down (being re-created, or waiting to retry)."""
        return any(ex is None for ex in self.executors)

    @property
    def degraded(self) -> str | None:
        """Why the system runs short of a replica, or None."""
        down = [r for r, ex in enumerate(self.executors) if ex is None]
        if not down:
            return None
        with self._lock:
            errors = [f"replica {r}: {self._errors[r]}" for r in down if r in self._errors]
        return "; ".join(errors) if errors else f"re-creating the devices of replica(s) {down}"

    def none_can_serve(self) -> str | None:
        """Why no replica will serve soon, as `degraded` says it (each down replica's last re-creation
        error), or None. Not None only while no replica is up and every one's re-creation has failed at
        least once, so each waits `retry_s` to try again; None while one is up or a first re-creation is
        in flight (the normal short recovery, which requests wait for). A replica that comes back and
        fails again starts afresh: its error goes when its re-creation succeeds."""
        if any(ex is not None for ex in self.executors):
            return None
        with self._lock:
            errors = [self._errors.get(r) for r in range(len(self.executors))]
        if None in errors:
            return None
        return "; ".join(f"replica {r}: {e}" for r, e in enumerate(errors))

    def fail(self, replica: int, exc: BaseException) -> None:
        """Take replica `replica` out and start re-creating it; its executor is shut down on the
        re-creating thread, not the engine's (Ray's kill blocks while its cluster's head is gone, and
        the requests that failed wait for the engine thread to be answered)."""
        old, self.executors[replica] = self.executors[replica], None
        self._fabric.fail(replica)
        self._energy_terms.fail(replica)
        if not self._start(replica, old):  # no new thread took it (stopping, or one re-creating already)
            _shut_down(old, replica, self._cluster_lost)

    def fabric_totals(self, replica: int, fabric: dict) -> dict:
        """`fabric` (replica `replica`'s executor's `stats()["fabric"]`, just read) with its
        CARRIED_FABRIC totals counted from the server's start: the executor's own plus, for a
        re-created replica, the last figures read from the executors before it (the bytes a failed
        one moved after its last reading are not counted: `Carried`). Its `ports` stay the
        executor's own. Engine thread (`Engine.stats_now`)."""
        return dict(fabric, **self._fabric.read(replica, {k: fabric[k] for k in CARRIED_FABRIC if k in fabric}))

    def energy_terms_j(self, read: dict[int, dict | None]) -> dict[str, float] | None:
        """Every replica's devices' joules by term counted from the server's start, added replica by
        replica: `read` maps the replicas that answered to their executor's own terms, just read; a down
        replica counts its old devices' last terms read, a re-created one goes on from them (those
        charged after that reading are not counted: `Carried`), so the sum never goes back. None when
        a replica has no split (GPUs: `Executor.energy_terms_j` None), or none has answered yet. Engine
        thread (`Engine.stats_now`)."""
        if None in read.values():
            return None
        for r, terms in read.items():
            self._energy_terms.read(r, terms)
        return sum_terms(self._energy_terms.total(r) for r in range(len(self))) or None

    def _start(self, replica: int, old=None) -> bool:
        """Start re-creating `replica` on a thread, which first shuts `old` down; False (nothing
        started, `old` not taken) while stopping or when a thread re-creates it already."""
        if replica in self._threads or self._stopping:
            return False

        def build() -> None:
            # first: its devices' units go back before new ones are asked for
            _shut_down(old, replica, self._cluster_lost)
            if self._stopping:  # the server stopped meanwhile (a shutdown that blocked): build nothing
                return
            log.info("re-creating replica %d", replica)
            try:
                # a stop ends its devices' start-up; a lost cluster's, with no clean-up asked of Ray
                with cancellable_start(lambda: self._stopping, lambda: self._cluster_lost):
                    ex = self._remake()
            except StartCancelled:
                log.info("replica %d: its re-creation was given up (%s)", replica,
                         "the Ray cluster is lost" if self._cluster_lost else "the server is stopping")
                return
            except Exception as exc:  # noqa: BLE001 - kept as the degraded reason, retried
                reason = f"could not be re-created: {describe_fault(exc)}"
                log.error("replica %d %s", replica, reason)
                with self._lock:
                    self._errors[replica] = reason
                    self._retry_at[replica] = time.monotonic() + self.retry_s
                return
            with self._lock:
                if self._stopping:
                    if not self._cluster_lost:  # a lost cluster's actors went with it
                        ex.shutdown()
                    return
                self._built[replica] = ex
                self._errors.pop(replica, None)

        t = threading.Thread(target=build, name=f"cent-rebuild-{replica}", daemon=True)
        self._threads[replica] = t
        t.start()
        return True

    def poll(self) -> list[int]:
        """Swap in the replicas re-created since the last call (returned); retry failed ones."""
        now = time.monotonic()
        with self._lock:
            built, self._built = self._built, {}
            retry = [r for r, at in self._retry_at.items() if at <= now]
            for r in retry:
                del self._retry_at[r]
        for r, ex in built.items():
            self.executors[r] = ex
            self._threads.pop(r, None)
            self.num_recoveries += 1
            log.info("replica %d is back", r)
        for r in retry:
            self._threads.pop(r, None)
            self._start(r)
        return sorted(built)

    def stop_recreating(self, join_s: float | None = None) -> None:
        """Start no re-creation and give up those in flight (their start-up cancelled), waiting for
        them up to `join_s` (default SHUTDOWN_JOIN_S); each stops what it built by itself. A lost
        cluster's are given up by `give_up_cluster`, which asks Ray nothing more. One inside a call that
        does not hear the stop stays there past `join_s`."""
        self._stopping = True
        # one wait for them all
        deadline = time.monotonic() + (SHUTDOWN_JOIN_S if join_s is None else join_s)
        for r, t in list(getattr(self, "_threads", {}).items()):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.info("replica %d is still being re-created: not waiting for it (it stops what it builds, or "
                         "Ray's teardown does)", r)

    def give_up_cluster(self, join_s: float = LOST_JOIN_S) -> None:
        """The server gives its Ray cluster up (`server.cluster_lost_s`; `api.server.run_server`, on the
        way out): as `stop_recreating`, but a re-creation in flight asks Ray nothing more, its executors,
        placement group and actors gone with the cluster (a failed replica's shutdown not begun, a
        group's removal, a half-built or a built executor's kill: `executor.base.cluster_gone`). Each of
        those calls waited on the dead GCS, so the re-creation never left and Ray's core could end the
        process (its 60 s without a GCS) before the server's last line. Waits up to `join_s`
        (LOST_JOIN_S) for those still inside Ray; the executors are not shut down (`shutdown` would
        ask Ray)."""
        self._cluster_lost = True  # first: a re-creation that hears the stop reads it
        self.stop_recreating(join_s)

    def shutdown(self, join_s: float | None = None) -> None:
        """Stop every executor, those being re-created included: a re-creation in flight is waited
        for up to `join_s` (default SHUTDOWN_JOIN_S), then stops what it built by itself."""
        self.stop_recreating(join_s)
        for ex in self.executors + list(getattr(self, "_built", {}).values()):
            if ex is not None:
                ex.shutdown()
