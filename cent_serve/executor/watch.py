"""Whether the Ray cluster a server runs on still has its head.

A Ray cluster's head runs its GCS, without which nothing can be placed, re-created or killed; Ray's
core ends a driver whose GCS has not answered for `gcs_rpc_server_reconnect_timeout_s` (60 s) with
an error line of its own, mid-request. `ClusterWatch` asks the GCS (a TCP connect, as
`ray_cluster` probes an address before joining it) every PROBE_S on a thread of its own, so
nothing waits on Ray's retries: `problem` says why while it does not answer (`/health` 503), and
`lost` once it has not for `server.cluster_lost_s`, when the server gives the cluster up (the engine
ends every request with that reason and `cent serve` exits 1: `api.server`). Plain Python: the
address comes from `ray_cluster.cluster_watch`.

It asks this node's raylet too (its node manager's port), while the GCS answers: a raylet that died
alone takes the server's object store and its node's devices with it, and the GCS, answering, never
says so (the devices' re-creation was retried every 10 s for ever, /health naming it, the requests
failed one by one); it is given up as the head is, after `server.cluster_lost_s`. While the GCS does
not answer, its loss is the one counted (a head's raylet goes with it).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

log = logging.getLogger("cent.cluster")
PROBE_S = 1.0
"""Wall seconds between two questions to the GCS."""
PROBE_TIMEOUT_S = 2.0
"""Longest wait for the GCS to accept a connection (a live one does in microseconds; a host gone
from the network never refuses, it stays silent)."""


class ClusterLost(RuntimeError):
    """The cluster's head (or this node's raylet) went unanswered for `server.cluster_lost_s`: `cent
    serve` exits 1 with it."""


def answers(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at `address` ("host:port") within `timeout_s`."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    return True


class _Silence:
    """How long one watched address (`name` says which, in every message) has gone unanswered."""

    def __init__(self, name: str, lost_after_s: float, clock: Callable[[], float]) -> None:
        self.name, self.lost_after_s, self._clock = name, lost_after_s, clock
        self.since: float | None = None

    def answered(self) -> None:
        if self.since is not None:
            log.warning("%s answers again", self.name)
        self.since = None

    def unanswered(self) -> bool:
        """Counts a silent probe; whether it has now lasted `lost_after_s`."""
        now = self._clock()
        if self.since is None:
            self.since = now
            log.warning("%s does not answer; the server gives it up after %g s (server.cluster_lost_s)",
                        self.name, self.lost_after_s)
        return now - self.since >= self.lost_after_s

    def problem(self) -> str | None:
        since = self.since  # once: the watch's thread may clear it meanwhile (/health reads this)
        if since is None:
            return None
        return (f"{self.name} has not answered for {self._clock() - since:.0f} s; the server gives it up at "
                f"{self.lost_after_s:g} s (server.cluster_lost_s)")


class ClusterWatch:
    """`address`: the GCS's host:port; `lost_after_s`: `server.cluster_lost_s`; `own`: the cluster is
    the local Ray this server started (the fix is then a restart of the server alone); `raylet`: this
    node's raylet's host:port (its node manager), or None not to ask it. `probe` and `clock` are for
    tests. `check` runs one probe (the thread calls it every PROBE_S)."""

    def __init__(self, address: str, lost_after_s: float, own: bool = False,
                 probe: Callable[[str], bool] = answers, clock: Callable[[], float] = time.monotonic,
                 raylet: str | None = None) -> None:
        self.address, self.lost_after_s, self.own, self.raylet = address, lost_after_s, own, raylet
        self._probe, self._clock = probe, clock
        self._head = _Silence(f"the Ray cluster's head (its GCS at {address})", lost_after_s, clock)
        # counted while the GCS answers
        self._raylet = None if raylet is None else _Silence(f"this node's raylet (at {raylet})", lost_after_s, clock)
        self._lost: str | None = None
        self._lost_name = ""  # the name of what `_lost` gives up: the head or this node's raylet
        self._unanswered_at: dict[str, float] = {}  # address -> when `fault`'s last probe of it went unanswered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cent-cluster-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_S) and self._lost is None:
            self.check()

    def check(self) -> None:
        if self._lost is not None:
            return
        if not self._probe(self.address):
            if self._raylet is not None:
                self._raylet.since = None  # the head's silence is the one counted
            if self._head.unanswered():
                self._give_up(self._head, "the cluster and its devices are gone",
                              "start the cluster's head again (ray start --head), then the server")
            return
        self._head.answered()
        if self._raylet is None:
            return
        if self._probe(self.raylet):
            self._raylet.answered()
        elif self._raylet.unanswered():
            self._give_up(self._raylet, "the server's Ray node and the devices on it are gone",
                          "start Ray on this node again (ray start), then the server")

    def _give_up(self, silence: _Silence, gone: str, fix: str) -> None:
        """`fix`: for a cluster this server joined (a restart of the server alone for its own)."""
        fix = "restart the server (it starts a fresh local Ray)" if self.own else fix
        self._lost_name = silence.name
        self._lost = (f"{silence.name} has not answered for {self.lost_after_s:g} s (server.cluster_lost_s): "
                      f"{gone}; {fix}")

    def fault(self) -> str | None:
        """After a round failed (engine thread): why, if the cluster's head or this node's raylet is
        the cause: the `problem` already seen, or one of them not answering a probe now (a head lost
        mid-round fails the round's links before the watch's next question)."""
        if self._lost is not None:  # the server is giving the cluster up: no fix to repeat here
            return f"{self._lost_name} is gone"
        if self.problem is not None:
            return self.problem
        if not self._answers_now(self.address):
            return f"{self._head.name} does not answer"
        if self._raylet is not None and not self._answers_now(self.raylet):
            return f"{self._raylet.name} does not answer"
        return None

    def _answers_now(self, address: str) -> bool:
        """`fault`'s probe of `address`. A silent host holds a probe PROBE_TIMEOUT_S on the engine
        thread (every other replica's round waits behind it): one unanswered probe stands for
        PROBE_S, however many replicas fail with it (an answer takes microseconds, and is asked
        again each time)."""
        now = self._clock()
        at = self._unanswered_at.get(address)
        if at is None or now - at >= PROBE_S:
            if self._probe(address):
                self._unanswered_at.pop(address, None)
                return True
            self._unanswered_at[address] = self._clock()  # after the probe: it may have taken PROBE_TIMEOUT_S
        return False

    @property
    def problem(self) -> str | None:
        """Why the cluster cannot be counted on now (None while its head and this node's raylet answer)."""
        if self._lost is not None:
            return self._lost
        return self._head.problem() or (self._raylet.problem() if self._raylet is not None else None)

    @property
    def lost(self) -> str | None:
        """Why the cluster was given up, once its head (or this node's raylet) has not answered for
        `lost_after_s` (then for good)."""
        return self._lost
