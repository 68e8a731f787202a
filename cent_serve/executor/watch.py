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
        self._silent_since: float | None = None
        self._raylet_silent_since: float | None = None  # counted while the GCS answers
        self._lost: str | None = None
        self._raylet_lost = False  # what `_lost` names: this node's raylet, not the head
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
        if self._probe(self.address):
            if self._silent_since is not None:
                log.warning("the Ray cluster's head (its GCS at %s) answers again", self.address)
            self._silent_since = None
            self._check_raylet()
            return
        self._raylet_silent_since = None  # the head's silence is the one counted
        now = self._clock()
        if self._silent_since is None:
            self._silent_since = now
            log.warning("the Ray cluster's head (its GCS at %s) does not answer; the server gives it up after "
                        "%g s (server.cluster_lost_s)", self.address, self.lost_after_s)
        if now - self._silent_since >= self.lost_after_s:
            fix = ("restart the server (it starts a fresh local Ray)" if self.own else
                   "start the cluster's head again (ray start --head), then the server")
            self._lost = (f"the Ray cluster's head (its GCS at {self.address}) has not answered for "
                          f"{self.lost_after_s:g} s (server.cluster_lost_s): the cluster and its devices are "
                          f"gone; {fix}")

    def _check_raylet(self) -> None:
        """`check`'s question to this node's raylet, the GCS answering."""
        if self.raylet is None:
            return
        if self._probe(self.raylet):
            if self._raylet_silent_since is not None:
                log.warning("this node's raylet (at %s) answers again", self.raylet)
            self._raylet_silent_since = None
            return
        now = self._clock()
        if self._raylet_silent_since is None:
            self._raylet_silent_since = now
            log.warning("this node's raylet (at %s) does not answer; the server gives it up after %g s "
                        "(server.cluster_lost_s)", self.raylet, self.lost_after_s)
        if now - self._raylet_silent_since >= self.lost_after_s:
            fix = ("restart the server (it starts a fresh local Ray)" if self.own else
                   "start Ray on this node again (ray start), then the server")
            self._raylet_lost = True
            self._lost = (f"this node's raylet (at {self.raylet}) has not answered for {self.lost_after_s:g} s "
                          f"(server.cluster_lost_s): the server's Ray node and the devices on it are gone; {fix}")

    def fault(self) -> str | None:
        """After a round failed (engine thread): why, if the cluster's head or this node's raylet is
        the cause: the `problem` already seen, or one of them not answering a probe now (a head lost
        mid-round fails the round's links before the watch's next question)."""
        if self._lost is not None:  # the server is giving the cluster up: no fix to repeat here
            if self._raylet_lost:
                return f"this node's raylet (at {self.raylet}) is gone"
            return f"the Ray cluster's head (its GCS at {self.address}) is gone"
        if self.problem is not None:
            return self.problem
        if not self._answers_now(self.address):
            return f"the Ray cluster's head (its GCS at {self.address}) does not answer"
        if self.raylet is not None and not self._answers_now(self.raylet):
            return f"this node's raylet (at {self.raylet}) does not answer"
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
        since = self._silent_since
        if since is not None:
            return (f"the Ray cluster's head (its GCS at {self.address}) has not answered for "
                    f"{self._clock() - since:.0f} s; the server gives it up at {self.lost_after_s:g} s "
                    "(server.cluster_lost_s)")
        since = self._raylet_silent_since
        if since is not None:
            return (f"this node's raylet (at {self.raylet}) has not answered for {self._clock() - since:.0f} s; "
                    f"the server gives it up at {self.lost_after_s:g} s (server.cluster_lost_s)")
        return None

    @property
    def lost(self) -> str | None:
        """Why the cluster was given up, once its head (or this node's raylet) has not answered for
        `lost_after_s` (then for good)."""
        return self._lost
