"""Whether the Ray cluster a server runs on still has its head.

A Ray cluster's head runs its GCS, without which nothing can be placed, re-created or killed; Ray's
core ends a driver whose GCS has not answered for `gcs_rpc_server_reconnect_timeout_s` (60 s) with
an error line of its own, mid-request. `ClusterWatch` asks the GCS (a TCP connect, as
`ray_cluster` probes an address before joining it) every PROBE_S on a thread of its own, so
nothing waits on Ray's retries: `problem` says why while it does not answer (`/health` 503), and
`lost` once it has not for `server.cluster_lost_s`, when the server gives the cluster up (the engine
ends every request with that reason and `cent serve` exits 1: `api.server`). Plain Python: the
address comes from `ray_cluster.cluster_watch`.
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
    """The cluster's head went unanswered for `server.cluster_lost_s`: `cent serve` exits 1 with it."""


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
    the local Ray this server started (the fix is then a restart of the server alone). `probe` and
    `clock` are for tests. `check` runs one probe (the thread calls it every PROBE_S)."""

    def __init__(self, address: str, lost_after_s: float, own: bool = False,
                 probe: Callable[[str], bool] = answers, clock: Callable[[], float] = time.monotonic) -> None:
        self.address, self.lost_after_s, self.own = address, lost_after_s, own
        self._probe, self._clock = probe, clock
        self._silent_since: float | None = None
        self._lost: str | None = None
        self._unanswered_at: float | None = None  # when `fault`'s last probe went unanswered
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
            return
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

    def fault(self) -> str | None:
        """After a round failed (engine thread): why, if the cluster's head is the cause: the
        `problem` already seen, or the head not answering a probe now (a head lost mid-round fails
        the round's links before the watch's next question)."""
        if self._lost is not None:  # the server is giving the cluster up: no fix to repeat here
            return f"the Ray cluster's head (its GCS at {self.address}) is gone"
        if self.problem is not None:
            return self.problem
        # a silent host holds a probe PROBE_TIMEOUT_S on the engine thread (every other replica's round
        # waits behind it): one unanswered probe stands for PROBE_S, however many replicas fail with
        # the head (an answer takes microseconds, and is asked again each time)
        now = self._clock()
        if self._unanswered_at is None or now - self._unanswered_at >= PROBE_S:
            if self._probe(self.address):
                self._unanswered_at = None
                return None
            self._unanswered_at = self._clock()  # after the probe: it may have taken PROBE_TIMEOUT_S
        return f"the Ray cluster's head (its GCS at {self.address}) does not answer"

    @property
    def problem(self) -> str | None:
        """Why the cluster cannot be counted on now (None while its head answers)."""
        if self._lost is not None:
            return self._lost
        since = self._silent_since
        if since is None:
            return None
        return (f"the Ray cluster's head (its GCS at {self.address}) has not answered for "
                f"{self._clock() - since:.0f} s; the server gives it up at {self.lost_after_s:g} s "
                "(server.cluster_lost_s)")

    @property
    def lost(self) -> str | None:
        """Why the cluster was given up, once its head has not answered for `lost_after_s` (then for good)."""
        return self._lost
