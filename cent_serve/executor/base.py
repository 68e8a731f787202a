"""The executor interface: what runs a replica's rounds on its devices (vLLM's `Executor`).

`submit(plan)` sends a round and returns a future of its `RoundOutput` (anything with
`result()`); rounds run in the order they are submitted, so several may be in flight. `check()`
raises if a device is gone, `stats()` reports the devices' and the switch's counters, `shutdown()`
stops everything (safe twice). The config chooses the implementation (`cfg.executor`,
`make_executor`); nothing else names it.
"""
from __future__ import annotations

import sys
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Callable, Iterator

from cent_serve.messages import RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer


class Executor(ABC):
    timer: SystemTimer

    @abstractmethod
    def submit(self, plan: RoundPlan):
        """Send one round without waiting for it; `.result()` of what it returns waits for its
        `RoundOutput` (or raises its error)."""

    def run(self, plan: RoundPlan) -> RoundOutput:
        """Submit one round and wait for it."""
        return self.submit(plan).result()

    def check(self) -> None:
        """Raise if a device or the switch is gone (executors that can tell)."""

    @abstractmethod
    def stats(self) -> dict:
        """{"devices": [per-device counters], "fabric": the switch's counters}."""

    def energy_terms_j(self) -> dict[str, float] | None:
        """The devices' joules by term (`cent_serve.timing.energy.TERMS`) over the run, charged where
        their `energy_j` is (so they add up to it); None where the hardware has no such split (GPUs)."""
        return None

    def shutdown(self) -> None:
        """Stop the devices and give back what they hold; safe to call twice."""


class DevicesLost(RuntimeError):
    """A replica's devices, or the links between them, are gone (an actor or the switch died)."""


def devices_lost(exc: BaseException) -> bool:
    """Whether a replica's failure is its devices gone: a link closed (on the host's send, its
    receive, or a device's, passed down the chain as the error of its closed input link), the
    executor's own `DevicesLost`, or Ray's word of an actor gone. Not an error a device raised while
    computing (a full KV cache, a bad plan), nor a device that stays silent (`DevicesHung`): the
    round itself may be what broke or hung it."""
    from fabric.link import LinkClosed
    from fabric.wire import RemoteError

    if isinstance(exc, (LinkClosed, DevicesLost)):
        return True
    if isinstance(exc, RemoteError):  # a device's LinkClosed where this process has not registered it
        return exc.remote_type == LinkClosed.__name__
    ray = sys.modules.get("ray")  # looked up, not imported: an executor that raised it has imported Ray
    actor_error = getattr(getattr(ray, "exceptions", None), "RayActorError", None)
    return actor_error is not None and isinstance(exc, actor_error)


def sum_terms(parts) -> dict[str, float]:
    """Joules by term added over `parts` (dicts of the same terms), in the order given."""
    out: dict[str, float] = {}
    for part in parts:
        for term, j in part.items():
            out[term] = out.get(term, 0.0) + j
    return out


def busy_fraction(device: dict, clock_s: float) -> float:
    """A device's busiest resource's busy time (its `stats()` entry) as a share of the run: up to
    the engine clock (a round boundary: the last round's start) or, when later, the end of the
    device's own last work (`clock_s` in its entry), so a device busy to the end reads 1, not more."""
    span = max(clock_s, device.get("clock_s") or 0.0)
    return max(device["busy_s"].values(), default=0.0) / span if span > 0 else 0.0


class Done:
    """A round that ran while it was submitted (in-process executors): `result()` returns it. Not a
    `concurrent.futures.Future`: its lock and condition, one per replica and round, were a tenth of
    a 128-replica replay's profile."""

    __slots__ = ("_result",)

    def __init__(self, result: RoundOutput) -> None:
        self._result = result

    def result(self, timeout: float | None = None) -> RoundOutput:
        return self._result


class StartCancelled(RuntimeError):
    """An executor's start-up given up part way: nobody wants it any more (the server stopped while
    a replica was being re-created)."""


_start = threading.local()


@contextmanager
def cancellable_start(cancelled: Callable[[], bool], lost: Callable[[], bool] | None = None) -> Iterator[None]:
    """Executors built on this thread inside the block may give their start-up up (`StartCancelled`)
    once `cancelled()` is true; a Ray replica's devices take tens of seconds to start. `lost()` true:
    the start-up is given up with its cluster, and what it built went with it (`cluster_gone`)."""
    _start.cancelled, _start.lost = cancelled, lost
    try:
        yield
    finally:
        _start.cancelled = _start.lost = None


def check_start() -> None:
    """Raise StartCancelled if this thread's start-up is no longer wanted (`cancellable_start`)."""
    cancelled = getattr(_start, "cancelled", None)
    if (cancelled is not None and cancelled()) or cluster_gone():
        raise StartCancelled("the start-up was given up: the server is stopping")


def cluster_gone() -> bool:
    """Whether this thread's start-up was given up with its cluster (`cancellable_start`'s `lost`: the
    server gave the Ray cluster up, its head or this node's raylet silent). Its actors and placement
    group went with the cluster, and every Ray call about them (a kill, a group's removal, a get)
    waits on the dead GCS, so its clean-up asks Ray nothing: the start-up just leaves."""
    lost = getattr(_start, "lost", None)
    return lost is not None and lost()
