"""Devices as Ray actors, the switch as a fabric actor.

Ray starts, places, queries and kills the actors. The rounds travel on links
(`fabric.link`) as a chain: the host sends a round to the first unit's devices,
each unit's leader hands it on to the next unit over its own switch port, and the
last unit's leader sends the round's output back; the host waits once, for that.
Activations go device -> device over the switch ports, never through the driver;
the fabric actor relays the tensor-parallel exchanges (`fabric.router`).
"""
from __future__ import annotations

import copy
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time

import numpy as np
import ray

from cent_serve.config import CentConfig
from cent_serve.executor.base import DevicesLost, Executor, check_start, sum_terms
from cent_serve.messages import RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from cent_serve.timing.token import PRELOAD_CONTEXTS
from cent_serve.timing.clock import warm
from device_worker.steady import warm as warm_steady
from fabric.link import HEADER, Link, LinkClosed
from fabric.rounds import HostEnd, chain_places, execution_units
from fabric.switch import merge_stats
from fabric.wire import WireError, remote_error

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0
"""Longest wait for every actor to come up (weights loaded)."""
CHECK_TIMEOUT_S = 10.0
"""Longest wait for the actors to answer a health check."""
STRAY_REPLY_S = 1.0
"""Longest wait for the rest of a message the last device sent with no round asked (a device's error,
one small frame, is whole at once), or of the switch's word of a device gone (as small)."""
JOIN_PROBE_TIMEOUT_S = 5.0
"""Longest wait for a TCP answer from a cluster's address before `ray.init` (which would retry a
dead address for minutes)."""


WORKER_NICENESS_ENV = "RAY_worker_niceness"
"""Ray's setting of its workers' niceness, read by the raylet a local Ray starts (set it to keep
Ray's default of 15)."""

STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
STARTUP_CONCURRENCY = 256
"""Worker processes a local Ray expects to start at once (Ray's default: its CPU count)."""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> str:
    """Join `address` (or RAY_ADDRESS), or start a fresh local Ray; returns a line saying which.

    Without an address a new local Ray is started (`address="local"`), never a cluster an
    earlier `ray start` recorded on this machine: that one may be gone, and joining it by
    accident would put the devices on somebody else's cluster. A cluster that cannot be
    joined is a ValueError naming the address and the fix."""
    if ray.is_initialized():
        return "using the Ray already running in this process"
    before = signal.getsignal(signal.SIGTERM)
    line = _start_or_join(address, num_cpus)
    handler = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread() and (handler == signal.SIG_DFL or _rays(handler)):
        # ray.init has put its own SIGTERM handler in: a stack dump and an abort, the devices' workers
        # left starting; a SIGTERM before the server's handlers (or in `cent simulate --emulate`) ends the
        # command as Ctrl-C does, its Ray shut down; a program that handled SIGTERM itself before (`cent
        # serve`: a second signal exits at once) gets its handler back
        signal.signal(signal.SIGTERM, before if callable(before) and not _rays(before) else _interrupt)
    return line


def _rays(handler) -> bool:
    """Whether a signal handler is one of Ray's."""
    return getattr(handler, "__module__", "").startswith("ray.")


def join_cluster(cfg: CentConfig, replicas: int | None = None) -> str:
    """`ensure_ray` at `server.ray_address`, then `check_cluster_holds` for `replicas` copies
    (default: as many as the devices hold) of the config's mapping; returns `ensure_ray`'s line, so
    a caller that logs it does so once the cluster is known to hold them: a refusal comes alone."""
    from cent_serve.timing.mapping import resolve_mapping

    line = ensure_ray(cfg.server.ray_address)
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    check_cluster_holds(cfg, mp.devices_used, mp.replicas if replicas is None else replicas)
    return line


def cluster_watch(cfg: CentConfig):
    """A `watch.ClusterWatch` (not started) on the GCS of the Ray this process joined or started,
    giving it up after `server.cluster_lost_s`; None where Ray does not say where its GCS is (Ray Client)."""
    from cent_serve.executor.watch import ClusterWatch

    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - no GCS address here: nothing to watch
        return None
    if not address:
        return None
    # ensure_ray's fresh local Ray: no address given, or "local" (review: the fix said `ray start --head`)
    own = (cfg.server.ray_address or os.environ.get("RAY_ADDRESS") or "local") == "local"
    ray_limit_s = ray_gcs_timeout_s()
    if cfg.server.cluster_lost_s >= ray_limit_s:
        log.warning("server.cluster_lost_s = %g s does not come before Ray's own limit (%g s: Ray's default "
                    "or this process's RAY_gcs_rpc_server_reconnect_timeout_s; a head started with another "
                    "system config may differ): Ray's core would end this process first, with its own error; "
                    "set server.cluster_lost_s below %g", cfg.server.cluster_lost_s, ray_limit_s, ray_limit_s)
    return ClusterWatch(address, cfg.server.cluster_lost_s, own=own)


def ray_gcs_timeout_s() -> float:
    """How long Ray's core lets the GCS go unanswered before it ends the driver: its
    `gcs_rpc_server_reconnect_timeout_s` (60 s unless set by the environment variable Ray reads)."""
    try:
        return float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "60"))
    except ValueError:
        return 60.0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _start_or_join(address: str | None, num_cpus: int | None) -> str:
    """`ensure_ray`'s work, Ray not yet initialized here."""
    # workers' logs stay in Ray's log files: forwarded, raylet warnings would land in our stdout
    # (and in `--json` output); device errors still come back as exceptions
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    field = "server.ray_address" if address else "RAY_ADDRESS"  # where the user set it, for the errors
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Ray runs its workers at nice 15 by default; here the workers are the emulated devices,
        # the whole job, and at nice 15 any other busy process on the machine starves them
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        # Ray warns when more workers start at once than it expects (its CPUs): a replica's devices
        # all start together, and the warning comes on the driver's stdout (into `--json` output)
        os.environ.setdefault(STARTUP_CONCURRENCY_ENV, str(STARTUP_CONCURRENCY))
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
        return "started a local Ray"
    def refuse(reason: str) -> ValueError:
        return ValueError(f"{field}={address!r}: no Ray cluster could be joined ({reason}); start one "
                          "with `ray start --head`, or leave the address out (--ray-address, server.ray_address in a "
                          "--config file, RAY_ADDRESS) to start a fresh local Ray")

    if not address.startswith(("ray://", "local")):  # ray.init retries a dead address for minutes
        gcs = _gcs_address(address)
        if gcs is None:
            raise refuse("no running cluster is recorded on this machine")
        host, _, port = gcs.rpartition(":")
        if not host or not port.isdigit():
            raise refuse(f"{gcs} is not HOST:PORT, e.g. 10.0.0.1:6379 (`ray start --head` prints it)")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_PROBE_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            raise refuse(f"nothing answers at {gcs}: {exc}") from None
        other = _not_a_gcs(host.strip("[]"), int(port))
        if other is not None:  # ray.init would retry it for minutes, Ray's core logging every attempt
            raise refuse(f"something other than a Ray cluster answers at {gcs}: it answered {other!r} where a "
                         "Ray cluster's GCS speaks gRPC (a wrong port? `ray start --head` prints the address)")
    if address.startswith(("ray://", "local")):
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise refuse(_first_line(exc)) from None
    else:
        # a probed cluster: Ray's core logs a refused join once a second for ~20 s, kept back and read
        # for the reason (shown as it was when the join succeeds)
        with _stderr_held() as held:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                held.drop()
                raise join_refused(address, gcs, _first_line(exc), held.text, field) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    where = address if address.startswith(("ray://", "local")) or gcs == address else f"{address}: {gcs}"
    return f"joined the Ray cluster at {where} ({len(nodes)} node{'s' if len(nodes) != 1 else ''})"


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""HTTP/2's client preface and an empty SETTINGS frame (RFC 9113 section 3.4): a gRPC server, as a Ray
cluster's GCS is, answers with a SETTINGS frame of its own (frame type 4, the header's fourth byte)."""


def _not_a_gcs(host: str, port: int) -> str | None:
    """The first words of what answers at host:port when it is plainly not a gRPC server (an HTTP/1
    server's page, another protocol's greeting); None for a GCS, or when there is no telling (TLS,
    silence, a closed connection)."""
    if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", ""):
        return None  # a TLS GCS answers a plain preface with an alert
    got = b""
    try:
        with socket.create_connection((host, port), timeout=JOIN_PROBE_TIMEOUT_S) as sock:
            sock.sendall(HTTP2_PREFACE)
            while len(got) < 4:
                chunk = sock.recv(64)
                if not chunk:
                    break
                got += chunk
    except OSError:
        pass  # a timeout part way included: no telling
    if len(got) < 4 or got[3] == 4 or got[0] in (0x15, 0x16):  # a TLS record (an alert): a TLS GCS may answer so
        return None
    return got.split(b"\n", 1)[0][:40].decode("ascii", errors="replace").strip()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    mismatch = _version_mismatch(text)
    if mismatch is not None:
        return mismatch
    return text.splitlines()[0] if text else type(exc).__name__


def _version_mismatch(text: str) -> str | None:
    """Ray's refusal of a driver whose Ray or Python differs from the cluster's, in one line with both
    versions (Ray's own message puts them on the lines after its first, "Version mismatch: The cluster
    was started with:"; ray/_private/utils.py `check_version_info`), or None for another error."""
    if not text.startswith("Version mismatch"):
        return None
    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", text)
    if len(found) != 2:
        return " ".join(text.split())
    (ray_there, py_there), (ray_here, py_here) = found
    return (f"{VERSION_MISMATCH} Ray {ray_there} on Python {py_there}, this process Ray {ray_here} on Python "
            f"{py_here}: run cent serve with the cluster's (pip install \"ray[default]=={ray_there}\" in a Python "
            f"{py_there})")


VERSION_MISMATCH = "version mismatch: the cluster runs"


def join_refused(address: str, gcs: str, reason: str, logged: str, field: str = "server.ray_address") -> ValueError:
    """The error for a cluster that answers at `gcs` (probed) but would not let this process join,
    from `ray.init`'s `reason` and what Ray's core `logged` meanwhile (its auth refusals); `field`
    names where the address was set (the config field, or the RAY_ADDRESS variable)."""
    if "Unauthenticated" in logged or "InvalidAuthToken" in logged:
        why = ("the cluster uses token authentication and this process's token is missing or wrong: set "
               "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) as where "
               "`ray start` ran")
    elif reason.startswith(VERSION_MISMATCH):
        why = reason
    else:
        why = f"{reason}: check `ray status` where it runs"
    return ValueError(f"{field}={address!r}: a Ray cluster answers at {gcs} but this process could not "
                      f"join it: {why}")


class _stderr_held:
    """Within the block, what is written to file descriptor 2 (Ray's C++ core logs there directly)
    goes to a temporary file; on leaving it is written out to the real stderr unless `drop()` was
    called, and `text` is what was written (read after `drop()` or on leaving)."""

    def __enter__(self) -> "_stderr_held":
        import tempfile

        self.text, self._show = "", True
        self._file = tempfile.TemporaryFile(mode="w+b")
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def _restore(self) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        finally:  # fd 2 is the real stderr again whatever the flush did
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
            self._file.seek(0)
            self.text = self._file.read().decode("utf-8", "replace")
            self._file.close()

    def drop(self) -> None:
        self._show = False
        self._restore()

    def __exit__(self, *exc) -> None:
        self._restore()
        if self._show and self.text:
            sys.stderr.write(self.text)


def _gcs_address(address: str) -> str | None:
    """`host:port` of the cluster's GCS for an address as `ray.init` takes it (`auto` reads the
    cluster an earlier `ray start` recorded on this machine), or None when none is recorded."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError):
        return None


def _single_node() -> bool:
    return sum(1 for n in ray.nodes() if n.get("Alive")) <= 1


class DevicesGone(DevicesLost):
    """The executor was shut down (its replica is being re-created): nothing can run on it."""


class DevicesHung(RuntimeError):
    """Device actors (or the switch) alive but silent past a wait: the replica is re-created."""


class PlacementError(ValueError):
    """The cluster cannot host the devices (says what is missing)."""


_replica_hosts: dict[str, int] = {}
"""Ray node id -> how many live executors of this process hold a `replica`-placed group there."""


def replica_hosts(units: dict[str, int], need: int, held: dict[str, int]) -> tuple[list[str], bool]:
    """The nodes a `replica` placement may put `need` devices on (all of them on one node): those
    with `need` units that hold none of this process's other replicas, else (the second item True)
    every node with `need` units; from `units` (node id -> units) and `held` (`_replica_hosts`)."""
    fits = sorted(n for n, k in units.items() if k >= need)
    free = [n for n in fits if not held.get(n)]
    return (free, False) if free or not fits else (fits, True)


def _cluster_units(cfg: CentConfig) -> tuple[dict[str, int], str]:
    """({node id: `device_resource` units} of the cluster's live nodes, a summary naming each node
    and its units)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    units = {n["NodeID"]: int(n.get("Resources", {}).get(cfg.server.device_resource, 0)) for n in nodes}
    names = {n["NodeID"]: f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes}
    return units, ", ".join(f"{names[n]}: {k}" for n, k in sorted(units.items(), key=lambda nk: names[nk[0]]))


def check_cluster_holds(cfg: CentConfig, num_devices: int, replicas: int = 1) -> tuple[dict[str, int], str]:
    """Refuse (PlacementError, naming the units each node has and the fix) a cluster advertising
    `device_resource` that cannot hold `replicas` copies of `num_devices` devices, or, for
    `server.placement` replica, has no host with a replica's devices. Reads the cluster once, places
    nothing: what cannot run is refused before anything starts (`cent serve` asks before its first
    replica, `place_devices` before each). Returns `_cluster_units` (no units on one node: a plain
    Ray, which places actors anywhere, nothing checked). Several nodes none of which advertises the
    resource are refused: Ray would scatter the devices over them, one node hop per pipeline hop,
    and `server.placement` could not be applied (deploy/README.md, "The contract")."""
    s = cfg.server
    units, summary = _cluster_units(cfg)
    total = sum(units.values())
    if total == 0 and len(units) > 1:
        raise PlacementError(f"the cluster's {len(units)} nodes advertise no {s.device_resource} units, so the "
                             f"devices cannot be placed (server.placement={s.placement!r}): start each node that "
                             f"is to host devices with ray start --resources='{{\"{s.device_resource}\": N}}' "
                             "(deploy/README.md)")
    if total == 0:
        return units, summary
    if total < num_devices * replicas:  # every replica's, not one's: the first would hold what the last waits for
        copies = f" ({replicas} replicas of {num_devices})" if replicas > 1 else ""
        fewer = (total // num_devices) * num_devices
        raise PlacementError(f"the mapping needs {num_devices * replicas} {s.device_resource} units{copies}; the "
                             f"cluster has {total} ({summary}): add nodes started with ray start --resources="
                             f"'{{\"{s.device_resource}\": N}}' or use --devices {fewer or total}")
    if s.placement == "replica" and not replica_hosts(units, num_devices, {})[0]:
        raise PlacementError(f"server.placement='replica' puts a replica's {num_devices} devices on one host; "
                             f"no host advertises {num_devices} {s.device_resource} units ({summary}): start "
                             f"the hosts with ray start --resources='{{\"{s.device_resource}\": "
                             f"{num_devices}}}' or more, or use --placement spread")
    if s.placement == "replica" and replicas > 1:  # each replica whole on one node: count the nodes' room
        room = sum(k // num_devices for k in units.values())
        if room < replicas:
            raise PlacementError(f"server.placement='replica' puts each replica's {num_devices} devices on one "
                                 f"host; the hosts hold {room} of the {replicas} replicas ({summary}): start the "
                                 f"hosts with more {s.device_resource} units, use --devices {room * num_devices}, "
                                 "or use --placement spread")
    return units, summary


def place_devices(cfg: CentConfig, num_devices: int, replicas: int = 1):
    """A placement group of one `device_resource` bundle per device when the cluster advertises
    that resource (None when it does not: a plain local Ray places actors anywhere), by
    `server.placement`: `spread`, `pack`, or `replica` (every device on one node, a node none of
    this process's other replicas holds when one has room). A cluster that cannot hold the
    `replicas` copies of `num_devices` is refused at once (`check_cluster_holds`); otherwise raises
    PlacementError within `server.placement_timeout_s` if the group cannot be granted."""
    from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group, remove_placement_group

    s = cfg.server
    units, summary = check_cluster_holds(cfg, num_devices, replicas)
    total = sum(units.values())
    if total == 0:
        return None
    strategy, selector, shared = s.placement.upper(), None, False
    if s.placement == "replica":
        hosts, shared = replica_hosts(units, num_devices, _replica_hosts)
        strategy, selector = "STRICT_PACK", [{NODE_ID_LABEL_KEY: f"in({','.join(hosts)})"}] * num_devices
    # a name of its own per group: every replica places its devices with the same config
    pg = placement_group([{s.device_resource: 1}] * num_devices, strategy=strategy,
                         name=f"cent-devices-{secrets.token_hex(6)}", bundle_label_selector=selector)
    try:
        ray.get(pg.ready(), timeout=s.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        free = int(ray.available_resources().get(s.device_resource, 0))
        raise PlacementError(f"the cluster did not grant {num_devices} {s.device_resource} bundles "
                             f"({s.placement}) within {s.placement_timeout_s:g} s: {free} of the cluster's {total} "
                             f"units are free now (each node's, held or not: {summary}); this server's replicas "
                             "placed so far, or another job, hold the rest (ray status): free some or add units"
                             + (f", or a host with {num_devices} free for --placement replica" if s.placement ==
                                "replica" else "")) from None
    if s.placement == "replica" and shared:  # said once granted: a group that is never granted shares nothing
        log.warning("placement replica: every host with %d %s units already holds a replica of this server, "
                    "so this one shares a host (a host's loss fails both): add a host to keep them apart",
                    num_devices, s.device_resource)
    return pg


def _bundle_nodes(pg) -> dict[int, str]:
    """{bundle index: node id} of a granted placement group."""
    from ray.util.placement_group import placement_group_table
    return placement_group_table(pg)["bundles_to_node_id"]


def chain_bundles(pg, first_node: str) -> list[int]:
    """The placement group's bundle indices in chain order: grouped by node, the driver's node
    first, so consecutive devices (the pipeline's neighbours, a unit's partners) share a node and
    a round crosses between nodes once per node, not at every hop (Ray spreads bundle i and i + 1
    over different nodes)."""
    on = _bundle_nodes(pg)
    nodes = sorted(set(on.values()), key=lambda n: (n != first_node, min(i for i, m in on.items() if m == n)))
    return [i for n in nodes for i in sorted(i for i, m in on.items() if m == n)]


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
            switch = ray.get(self.fabric.address.remote(), timeout=STARTUP_TIMEOUT_S)
            self.switch_where = ray.get(self.fabric.where.remote(), timeout=STARTUP_TIMEOUT_S)
            places = chain_places(self.units)
            # the cost model's table by context, filled once here for every device
            self.timer.fill_contexts(np.arange(1, min(cfg.model.max_seq_len, PRELOAD_CONTEXTS) + 1))
            table = ray.put(self.timer.context_table())
            slot = next(_cpu_slots) if cfg.server.pin_replica_cpu and not (
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

    def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        """Raise if a device actor or the switch is gone (a named timeout: nothing hangs)."""
        self._check_open()
        self._ask("ready", "a health check", timeout_s)

    def _ask(self, method: str, what: str, timeout_s: float) -> list:
        """Every device actor's `method`, then the switch's: their answers, or DevicesHung naming the
        ones that gave none within `timeout_s` (stopped or hung: a dead one raises its own error)."""
        names = [f"device {d}" for d in self.actors] + ["the switch"]
        refs = [getattr(a, method).remote() for a in self.actors.values()] + [getattr(self.fabric, method).remote()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            done = set(ready)
            silent = [name for name, ref in zip(names, refs) if ref not in done]
            raise DevicesHung(f"{', '.join(silent[:8])}{' ...' if len(silent) > 8 else ''} gave no answer to {what} "
                              f"within {timeout_s:g} s: stopped or hung (a process paused, a node that stopped "
                              "answering)")
        return ray.get(refs)

    def stats(self) -> dict:
        """The devices' counters, and the switch's: its ports as the devices clock them merged with
        the exchanges it relayed (`fabric.switch.merge_stats`); and "links": the messages and bytes
        the host and the devices sent each other (the rounds' real traffic). A health check's wait:
        a scrape of /metrics does not wait a round's."""
        self._check_open()
        got = self._ask("stats", "a stats call", CHECK_TIMEOUT_S)
        views = [g["fabric"] for g in got[:-1]] + [got[-1]]
        sent = self.sent + np.sum([g["sent"] for g in got[:-1]], axis=0)
        return dict(devices=[g["device"] for g in got[:-1]], fabric=dict(merge_stats(views), **self.switch_where),
                    links=dict(messages=int(sent[0]), bytes=int(sent[1])))

    def energy_terms_j(self) -> dict[str, float]:
        """The devices' joules by term (`Executor.energy_terms_j`), from their stats answers."""
        self._check_open()
        got = self._ask("stats", "a stats call", CHECK_TIMEOUT_S)
        return sum_terms(g["energy_terms_j"] for g in got[:-1])

    def shutdown(self) -> None:
        """Kill the actors and give the devices back; safe to call twice or half-built."""
        if getattr(self, "replica_host", None) is not None:
            _replica_hosts[self.replica_host] -= 1
            self.replica_host = None
        for link in [*getattr(self, "inputs", []), getattr(self, "output", None), getattr(self, "switch_link", None)]:
            if link is not None:
                link.close()
        self.inputs, self.output, self.switch_link = [], None, None
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
