"""Joining a Ray cluster, or starting a local Ray, for the Ray executor and the server (`ensure_ray`,
`join_cluster`, `cluster_watch`): an address that cannot be joined is refused in one line naming it
and the fix, before `ray.init` would retry it for minutes."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading

import ray

from cent_serve.config import CentConfig
from cent_serve.executor.ray_placement import check_cluster_holds

log = logging.getLogger("cent_serve.executor.ray_executor")  # the name the log has always shown for its lines

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
    """A `watch.ClusterWatch` (not started) on the GCS of the Ray this process joined or started, and
    on this node's raylet, giving them up after `server.cluster_lost_s`; None where Ray does not say
    where its GCS is (Ray Client)."""
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
    return ClusterWatch(address, cfg.server.cluster_lost_s, own=own, raylet=_local_raylet())


def _local_raylet() -> str | None:
    """host:port of this process's node's raylet (its node manager, as `ray.nodes()` lists it), or None
    where Ray does not say."""
    try:
        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("NodeManagerPort"):
                return f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
    except Exception:  # noqa: BLE001 - no node known here: only the GCS is watched
        return None
    return None


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
        # the whole job, and at nice 15 any other busy process on the machine starves them.
        # Ray warns when more workers start at once than it expects (its CPUs): a replica's devices
        # all start together, and the warning comes on the driver's stdout (into `--json` output).
        # Both are read by the raylet ray.init starts, then taken out of this process's environment:
        # a Ray the user starts here later gets Ray's defaults (docs/python_api.md)
        ours = [n for n in (WORKER_NICENESS_ENV, STARTUP_CONCURRENCY_ENV) if n not in os.environ]
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        os.environ.setdefault(STARTUP_CONCURRENCY_ENV, str(STARTUP_CONCURRENCY))
        try:
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
        finally:
            for name in ours:
                os.environ.pop(name, None)
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
    # "cent", not "cent serve": cent simulate --emulate and cent bench run --ray join a cluster too
    return (f"{VERSION_MISMATCH} Ray {ray_there} on Python {py_there}, this process Ray {ray_here} on Python "
            f"{py_here}: run cent with the cluster's (pip install \"ray[default]=={ray_there}\" in a Python "
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
