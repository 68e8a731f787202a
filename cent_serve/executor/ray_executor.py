"""Devices as Ray actors, the switch as a fabric actor.

Ray starts, places, queries and kills the actors. The rounds travel on links
(`fabric.link`) as a chain: the host sends a round to the first unit's devices,
each unit's leader hands it on to the next unit over its own switch port, and the
last unit's leader sends the round's output back; the host waits once, for that.
Activations go device -> device over the switch ports, never through the driver;
the fabric actor relays the tensor-parallel exchanges (`fabric.router`).

Joining or starting Ray: `ray_cluster`; where the actors go: `ray_placement`.
"""
from __future__ import annotations

import copy
import itertools
import logging
import secrets
import threading
import time
from typing import Callable

import numpy as np
import ray

from cent_serve.config import CentConfig
from cent_serve.executor.base import DevicesLost, Executor, check_start, cluster_gone, sum_terms
from cent_serve.executor.ray_cluster import (WORKER_NICENESS_ENV, _single_node, cluster_watch, ensure_ray,
                                             join_cluster)
from cent_serve.executor.ray_placement import (PlacementError, _bundle_nodes, _replica_hosts, chain_bundles,
                                               check_cluster_holds, place_devices, replica_hosts)
from cent_serve.messages import RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from cent_serve.timing.token import PRELOAD_CONTEXTS
from cent_serve.timing.clock import warm
from device_worker.steady import warm as warm_steady
from fabric.link import HEADER, Link, LinkClosed
from fabric.rounds import HostEnd, chain_places, execution_units
from fabric.switch import merge_stats
from fabric.wire import WireError, remote_error

__all__ = ["RayExecutor", "RoundFuture", "DevicesGone", "DevicesHung", "SwitchGone", "await_started",
           "ensure_ray", "join_cluster", "cluster_watch", "WORKER_NICENESS_ENV", "PlacementError", "replica_hosts",
           "check_cluster_holds", "place_devices"]

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0
"""Longest wait for every actor to come up (weights loaded)."""
CHECK_WAIT_S = 0.5
"""Longest one idle check, or one /metrics scrape's stats read, holds the engine thread waiting for the
actors' answers. An answer not in yet is not a hang: the call stays pending (`_Asked`), read again at
the next check, and only a call unanswered for `server.round_timeout_s` (a round's own bar) calls the
replica hung. A loaded host (a load average of 32 on 2 cores) answers a `ready` in seconds; a 10 s bar
there re-created healthy replicas, their KV caches with them. Ray Serve's own rule for comparison: a
replica's `check_health` every `health_check_period_s` (10 s by default), failed after
`health_check_timeout_s` (30 s by default; docs.ray.io serve/production-guide/fault-tolerance.html)."""
STRAY_REPLY_S = 1.0
"""Longest wait for the rest of a message the last device sent with no round asked (a device's error,
one small frame, is whole at once), or of the switch's word of a device gone (as small)."""


class DevicesGone(DevicesLost):
    """The executor was shut down (its replica is being re-created): nothing can run on it."""


class DevicesHung(RuntimeError):
    """Device actors (or the switch) alive but silent past a wait: the replica is re-created."""


STARTUP_PROGRESS_S = 10.0
"""While the device actors start, a log line this often says how many are up (dozens of actors on a
few cores take minutes)."""
STARTUP_CHECK_S = 0.25
"""How often a start-up asks whether it is still wanted (`check_start`)."""


def await_started(refs: list, timeout_s: float, every_s: float = STARTUP_PROGRESS_S) -> list:
    """`ray.get(refs, timeout=timeout_s)` (the device actors' first answers, in order, or the first
    error as soon as it comes), logging every `every_s` seconds how many have answered; given up
    (StartCancelled) within STARTUP_CHECK_S once nobody wants it (`check_start`)."""
    t0 = time.monotonic()
    pending, n = list(refs), len(refs)
    next_log = t0 + every_s
    while pending:
        now = time.monotonic()
        left = timeout_s - (now - t0)
        if left <= 0:
            break
        # one at a time, so an actor that failed to start raises as soon as it answers
        ready, pending = ray.wait(pending, num_returns=1,
                                  timeout=max(0.0, min(next_log - now, left, STARTUP_CHECK_S)))
        ray.get(ready)
        check_start()
        if pending and time.monotonic() >= next_log:
            log.info("starting the device actors: %d of %d up after %.0f s", n - len(pending), n,
                     time.monotonic() - t0)
            next_log = time.monotonic() + every_s
    return ray.get(refs, timeout=max(0.0, timeout_s - (time.monotonic() - t0)))


class _Asked:
    """One call of a method to every actor of a replica (the device actors', then the switch's), sent at
    `sent_s` (the executor's clock) and answered over one or more polls."""

    def __init__(self, names: list[str], refs: list, sent_s: float) -> None:
        self.names, self.refs, self.sent_s = names, refs, sent_s
        self.pending = list(refs)
        self.is_logged = False  # a scrape served older figures for it: said once


class RoundFuture:
    """A round sent with `RayExecutor.submit`; `result()` waits for it (replies come in the order
    rounds were sent)."""

    def __init__(self, executor: "RayExecutor", number: int) -> None:
        self.executor, self.number = executor, number

    def result(self, timeout: float | None = None) -> RoundOutput:
        """The round's output; DevicesHung after `timeout` (default: `server.round_timeout_s`)."""
        return self.executor._wait(self.number, self.executor.cfg.server.round_timeout_s if timeout is None
                                   else timeout)


_cpu_slots = itertools.count()
"""Each new replica's CPU slot (`server.pin_replica_cpu`): replicas take a node's CPUs in turn."""


def _in_driver() -> bool:
    """Whether this process is a Ray driver, not a task's or an actor's worker. Only a driver pins its
    replicas' devices (`server.pin_replica_cpu`): processes a Ray program fans out (a sweep over
    `ray.remote` tasks) each count from the node's first CPU, unaware of the others, and pinned,
    all their devices would share that one CPU while the node's others idle."""
    return ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE


class SwitchGone(DevicesLost):
    """The fabric actor (the CXL switch) is gone: no round can run on this replica."""


class RayExecutor(Executor):
    """One Ray actor per device used and a fabric actor for the switch. Ray places, starts,
    queries and kills them; the rounds travel on authenticated links (`fabric.link`) as a chain:
    host -> the first unit's devices -> ... -> the last unit's leader -> host, each unit's leader
    clocking its own switch port (`device_worker.port`); the switch relays the tensor-parallel
    exchanges. The links carry msgpack, never code."""

    def __init__(self, cfg: CentConfig, address: str | None = None, replicas: int = 1) -> None:
        from device_worker.actor import DeviceActor
        from fabric.actor import FabricActor

        ensure_ray(address or cfg.server.ray_address)
        if cfg.numerics == "auto":  # resolved here, once: on another node the checkpoint's files may be
            cfg = copy.deepcopy(cfg)  # missing, and an actor resolving `auto` there would run timing only
            cfg.numerics = cfg.resolved_numerics
        self.cfg = cfg
        self.timer = SystemTimer.from_config(cfg)
        self.units = execution_units(self.timer.mapping)
        from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                    PlacementGroupSchedulingStrategy)

        warm()  # compile the clock kernels once here: the actors load numba's on-disk cache
        warm_steady()
        secret = secrets.token_bytes(32)  # this executor's links prove they know it
        self.actors, self.pg, self.fabric, self.replica_host = {}, None, None, None
        self.inputs: list[Link] = []
        self.output = self.switch_link = None
        self.clock: Callable[[], float] = time.monotonic
        """The wall seconds an unanswered check or stats call is aged by (a test sets a fake)."""
        self._asked: dict[str, _Asked] = {}  # method -> its call to the actors still unanswered
        self.figures_age_s = 0.0
        """Wall seconds since the figures the last stats read gave were answered: 0, or after a scrape
        that served older ones (`_stats_answers`), their age (the API's `snapshot_age_s`)."""
        try:
            device_ids = [d for u in self.units for d in u.device_ids]
            # `replicas`: the copies of the mapping its caller builds (the engine: every one; one for
            # `cent simulate --emulate`), each placed by its own executor, so a cluster that cannot hold
            # them all is refused at the first, not after the last's placement timeout
            self.pg = place_devices(cfg, len(device_ids), replicas)
            if self.pg is not None and cfg.server.placement == "replica":  # its host, for the next replica
                self.replica_host = next(iter(_bundle_nodes(self.pg).values()))
                _replica_hosts[self.replica_host] = _replica_hosts.get(self.replica_host, 0) + 1
            # one node: every link stays on 127.0.0.1; a cluster: each actor listens on its node's IP
            listen = "127.0.0.1" if _single_node() else None
            # the switch next to the driver (the head node when the engine runs there)
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self.fabric = FabricActor.options(scheduling_strategy=here).remote(
                cfg, [u.device_ids for u in self.units], secret, listen)
            # given up as the devices' start-up is (a switch created after its cluster was lost never starts,
            # and a plain ray.get waited STARTUP_TIMEOUT_S deaf to the stop); one actor: no progress line
            switch, self.switch_where = await_started([self.fabric.address.remote(), self.fabric.where.remote()],
                                                      STARTUP_TIMEOUT_S, every_s=STARTUP_TIMEOUT_S)
            places = chain_places(self.units)
            # the cost model's table by context, filled once here for every device
            self.timer.fill_contexts(np.arange(1, min(cfg.model.max_seq_len, PRELOAD_CONTEXTS) + 1))
            table = ray.put(self.timer.context_table())
            slot = next(_cpu_slots) if cfg.server.pin_replica_cpu and _in_driver() and not (
                cfg.resolved_numerics == "full" and self.timer.mapping.tp > 1) else None
            bundles = chain_bundles(self.pg, ray.get_runtime_context().get_node_id()) if self.pg is not None else None
            for i, d in enumerate(device_ids):
                opts = {}
                if self.pg is not None:
                    opts = dict(resources={cfg.server.device_resource: 1},
                                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, bundles[i]))
                self.actors[d] = DeviceActor.options(**opts).remote(cfg, places[d], switch, secret, listen, table,
                                                                    slot)
            addresses = dict(zip(device_ids, await_started([self.actors[d].address.remote() for d in device_ids],
                                                           STARTUP_TIMEOUT_S)))
            ray.get([a.wire.remote(addresses) for a in self.actors.values()], timeout=STARTUP_TIMEOUT_S)
            first, last = self.units[0].device_ids, self.units[-1].device_ids[0]
            node = ray.get_runtime_context().get_node_id()
            stall_s = cfg.server.peer_wait_s  # a send to a device that stops reading: as the devices' own waits
            self.inputs = [addresses[d].connect({"role": "host"}, secret, node, send_stall_s=stall_s) for d in first]
            self.output = (self.inputs[first.index(last)] if last in first
                           else addresses[last].connect({"role": "host"}, secret, node, send_stall_s=stall_s))
            self.switch_link = switch.connect({"role": "host"}, secret, node, send_stall_s=stall_s)
            # (when, the answers) of the last stats call answered: a scrape the devices are slow to answer
            # serves these (`_stats_answers`), so there are always some
            self._figures = (self.clock(), await_started(self._send("stats").refs, STARTUP_TIMEOUT_S))
        except BaseException:  # a half-built executor must not keep actors or reserved devices
            self.shutdown()
            raise
        self._sent = self._received = 0
        self._replies: dict[int, dict] = {}
        self._layouts: dict[int, object] = {}  # each round in flight's layout, to read its answer
        self.sent = np.zeros(2, dtype=np.int64)
        """Messages and bytes the host sent the devices."""
        self.host = HostEnd()
        self._lock = threading.Lock()  # one host link: submits and waits from several threads take turns

    def submit(self, plan: RoundPlan) -> RoundFuture:
        """Send a whole round to the first unit's devices without waiting; rounds run in the order
        they are sent."""
        with self._lock:
            self._check_sendable()
            blob = self.host.message(plan)
            self.sent += (len(self.inputs), len(self.inputs) * (HEADER.size + len(blob)))
            for link in self.inputs:
                link.send_bytes(blob)
            self._layouts[self._sent] = plan.layout
            self._sent += 1
            return RoundFuture(self, self._sent - 1)

    def _wait(self, number: int, timeout_s: float) -> RoundOutput:
        """Read the last unit's replies until round `number`'s. After a timeout the link may be
        mid-message: the executor is then unusable (the engine re-creates it)."""
        with self._lock:
            while number not in self._replies:
                assert self._received < self._sent, f"round {number} was never sent"
                self._check_open()
                try:
                    self._replies[self._received] = self.output.recv(timeout_s)
                except TimeoutError:
                    raise DevicesHung(f"round {number} gave no output within {timeout_s:g} s (server.round_timeout_s): "
                                      "a device or the switch stopped or hung (a process paused, a node that stopped "
                                      "answering)") from None
                self._received += 1
            msg = self._replies.pop(number)
            layout = self._layouts.pop(number)
        return self.host.output(msg, layout)

    def _check_open(self) -> None:
        if self.output is None or self.fabric is None:
            raise DevicesGone("this replica's device actors were shut down")

    def _check_sendable(self) -> None:
        """Raise unless a round can go out: the actors are up and the switch's link is open."""
        self._check_open()
        if self.switch_link.peer_closed():
            raise SwitchGone("the switch (fabric actor) of this replica is gone")

    def check_links(self) -> None:
        """Between rounds, without waiting on Ray (polls of the host's links, nothing read unless one
        has bytes): raise if this replica's links say a device or the switch is gone (a link its peer
        closed; a reply with no round asked: the error a device sends down the chain when its input
        link closes; the switch's word that a device's link to it closed, for any device, the ranks no
        host link reaches included). An idle replica's dead device was found only by the idle check
        (`check`, every few seconds) or by the next round, whose requests, sent after the device died,
        then failed with it."""
        with self._lock:
            self._check_sendable()
            if any(link.peer_closed() for link in self.inputs):
                raise DevicesGone("a first device's input link from the host closed (the device is gone)")
            if self._received == self._sent and self.output.readable():
                try:  # the device's own words (which input link closed), or the link's LinkClosed
                    msg = self.output.recv(STRAY_REPLY_S)
                except TimeoutError:
                    msg = None
                if isinstance(msg, dict) and msg.get("kind") == "error":
                    raise remote_error(msg.get("error"))
                raise DevicesGone("the last device sent the host a reply with no round asked (a device or a "
                                  "link is gone)")
            if self.switch_link.readable():
                self._read_switch()

    def _read_switch(self) -> None:
        """The switch's message to the host (`fabric.router.Relay.attach_host`: only ever a device's
        death; the exchanges travel on the devices' own switch links), raised as DevicesGone naming
        the device; SwitchGone if the link closed instead."""
        try:
            msg = self.switch_link.recv(STRAY_REPLY_S)
        except LinkClosed:
            raise SwitchGone("the switch (fabric actor) of this replica is gone") from None
        except (TimeoutError, WireError) as exc:
            raise DevicesGone(f"the switch's message to the host could not be read ({exc})") from None
        if isinstance(msg, dict) and msg.get("kind") == "gone":
            raise DevicesGone(f"device {msg.get('device_id')} is gone: its link to the switch closed")
        raise DevicesGone(f"the switch sent the host an unexpected message ({msg!r:.120})")

    def check(self) -> None:
        """The idle check (engine thread, every few seconds between rounds): raise if a device actor or
        the switch is gone (Ray reports a dead actor's error at once) or has left a `ready` unanswered
        for `server.round_timeout_s` (DevicesHung: the bar a round has). Holds the thread for at most
        CHECK_WAIT_S; a call still unanswered is read again at the next check."""
        self._check_open()
        self._poll("ready", "a health check", CHECK_WAIT_S)

    def _send(self, method: str) -> _Asked:
        names = [f"device {d}" for d in self.actors] + ["the switch"]
        refs = [getattr(a, method).remote() for a in self.actors.values()] + [getattr(self.fabric, method).remote()]
        return _Asked(names, refs, self.clock())

    def _poll(self, method: str, what: str, wait_s: float) -> list | None:
        """Every device actor's `method`, then the switch's: their answers once all came, else None
        (the call, sent once, stays pending for the next poll). Waits up to `wait_s` for them. An
        actor that died raises its own error as soon as Ray reports it; DevicesHung names the ones
        that left the call unanswered for longer than `server.round_timeout_s`."""
        asked = self._asked.get(method)
        if asked is None:
            asked = self._asked[method] = self._send(method)
        try:
            ready, asked.pending = ray.wait(asked.pending, num_returns=len(asked.pending), timeout=wait_s)
            ray.get(ready)  # an actor that died: its error now
        except BaseException:
            self._asked.pop(method, None)
            raise
        if not asked.pending:
            del self._asked[method]
            return ray.get(asked.refs)
        limit_s, silent_s = self.cfg.server.round_timeout_s, self.clock() - asked.sent_s
        if silent_s > limit_s:
            del self._asked[method]
            pending = set(asked.pending)
            silent = [name for name, ref in zip(asked.names, asked.refs) if ref in pending]
            raise DevicesHung(f"{', '.join(silent[:8])}{' ...' if len(silent) > 8 else ''} gave no answer to {what} "
                              f"within {limit_s:g} s (server.round_timeout_s): stopped or hung (a process paused, a "
                              "node that stopped answering)")
        return None

    def _answers(self, method: str, what: str) -> list:
        """`method`'s answers from a call sent now (not one a scrape left pending, asked before the last
        rounds), waited for as long as a round is (`server.round_timeout_s`), then DevicesHung."""
        self._asked.pop(method, None)
        while True:
            got = self._poll(method, what, CHECK_WAIT_S)
            if got is not None:
                return got

    def _stats_answers(self, scrape: bool) -> list:
        """The actors' stats answers: fresh ones (`_answers`), or for a scrape (`scrape`) those that came
        within CHECK_WAIT_S, else the last ones answered (logged once per call; a call unanswered for
        `server.round_timeout_s` raises DevicesHung), so a scrape holds the engine thread briefly and a
        slow host's replica is not re-created for it."""
        got = self._poll("stats", "a stats call", CHECK_WAIT_S) if scrape else self._answers("stats", "a stats call")
        if got is None:
            asked, (at_s, got) = self._asked["stats"], self._figures
            if not asked.is_logged:
                asked.is_logged = True
                log.warning("the devices have not answered a stats call in %.1f s (a loaded host?): a scrape "
                            "serves their figures of %.1f s ago", self.clock() - asked.sent_s, self.clock() - at_s)
            self.figures_age_s = self.clock() - at_s
            return got
        self._figures, self.figures_age_s = (self.clock(), got), 0.0
        return got

    def stats_and_terms(self, scrape: bool = False) -> tuple[dict, dict[str, float]]:
        """(`stats`, `energy_terms_j`) from one stats call, so the two describe the same moment. Fresh
        figures, waited for as a round is; `scrape` (a /metrics or status read, on the engine thread):
        the last figures answered while the devices are slow to answer (`_stats_answers`)."""
        self._check_open()
        got = self._stats_answers(scrape)
        views = [g["fabric"] for g in got[:-1]] + [got[-1]]
        sent = self.sent + np.sum([g["sent"] for g in got[:-1]], axis=0)
        return (dict(devices=[g["device"] for g in got[:-1]], fabric=dict(merge_stats(views), **self.switch_where),
                     links=dict(messages=int(sent[0]), bytes=int(sent[1]))),
                sum_terms(g["energy_terms_j"] for g in got[:-1]))

    def stats(self) -> dict:
        """The devices' counters, and the switch's: its ports as the devices clock them merged with
        the exchanges it relayed (`fabric.switch.merge_stats`); and "links": the messages and bytes
        the host and the devices sent each other (the rounds' real traffic). Fresh (`stats_and_terms`)."""
        return self.stats_and_terms()[0]

    def energy_terms_j(self) -> dict[str, float]:
        """The devices' joules by term (`Executor.energy_terms_j`), from their stats answers (fresh)."""
        return self.stats_and_terms()[1]

    def shutdown(self) -> None:
        """Kill the actors and give the devices back; safe to call twice or half-built. On a thread whose
        start-up was given up with its cluster (`cluster_gone`) they are forgotten, Ray not asked."""
        if getattr(self, "replica_host", None) is not None:
            _replica_hosts[self.replica_host] -= 1
            self.replica_host = None
        HostEnd.stop(getattr(self, "inputs", []))  # the devices end quietly, not as after a failure
        for link in [*getattr(self, "inputs", []), getattr(self, "output", None), getattr(self, "switch_link", None)]:
            if link is not None:
                link.close()
        self.inputs, self.output, self.switch_link = [], None, None
        if cluster_gone():  # a start-up given up with its cluster: the actors and the group went with it, and
            self.actors, self.fabric, self.pg = {}, None, None  # Ray's kill and removal would wait on its dead GCS
            return
        for a in [*self.actors.values(), *([self.fabric] if self.fabric is not None else [])]:
            ray.kill(a)
        self.actors, self.fabric = {}, None
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group
            remove_placement_group(self.pg)
            self.pg = None

    def placement(self) -> dict[int, str]:
        """Device id -> Ray node id of its actor."""
        ids = ray.get([a.node_id.remote() for a in self.actors.values()], timeout=STARTUP_TIMEOUT_S)
        return dict(zip(self.actors, ids))
