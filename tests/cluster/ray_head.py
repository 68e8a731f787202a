"""A one-node Ray cluster of this test's own: `ray start --head` on free ports, in a temporary
directory and HOME, token authentication off (no ~/.ray/auth_token read or written), advertising
`cent_device` units (`devices=0`: none, a head the operator keeps free of devices), and worker nodes
on 127.0.0.1 beside it (`add_worker`), each a raylet of its own that can be lost alone.

Every process it starts (the GCS, the raylet, its agents, the workers and actors it runs) carries
a marker in its environment, so `kill()` (the head lost as a crashed machine loses it: SIGKILL) and
`close()` find them by process id, and never another cluster's processes: no `ray stop`, which stops
every Ray of the user on the machine.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.processes import kill_marked, kill_until_gone, marked_pids, new_marker

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120.0
"""A hang guard for `ray start --head` (about 5 s on a quiet 2-core machine)."""
START_ATTEMPTS = 2
"""`ray start`s of a node before giving up: Ray gives a node 30 s to register with the GCS (ray/_private/node.py,
`raylet_start_wait_time_s`), which a machine under load (other tests' clusters beside) can take."""
CLIENT_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
"""What a process joining the head needs in its environment (the head runs without token auth)."""
HEAD_ENV = {"RAY_health_check_period_ms": "1000"}
"""A test cluster's head only (its GCS runs the nodes' health checks; `RayHead(fast_health_check=True)`,
netns.py's hosts): Ray's system config `health_check_period_ms` (src/ray/common/ray_config_def.h; every
field is read from `RAY_<name>`), 3000 by default. A node whose raylet was killed fails its checks at
once, so it is marked dead after `health_check_failure_threshold` (5) of them 1 s apart: 5 s, not 15 s,
of a lost-node test's wait. A check still waits `health_check_timeout_ms` (10 s) for an answer, so a
busy node has as long to answer as by default, and a node cut off for 10 s (tests/cluster/test_hosts.py)
is not marked dead."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Free ports for one node's own servers (two nodes on one address must not share any)."""
    return [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")]


class RayHead:
    def __init__(self, devices: int = 8, fast_health_check: bool = False) -> None:
        """`fast_health_check`: the head's GCS checks nodes every second (HEAD_ENV), for a test that waits
        for a worker node's death. Not for one that kills the raylet of the server's own node: there the
        GCS marks that node dead (its placement group removed, a re-creation failing with it) before the
        server's own watch (server.cluster_lost_s) has named the raylet."""
        self.marker = new_marker()
        self.dir = tempfile.mkdtemp(prefix="cent-rh-")  # short: Ray's socket paths must fit 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers: list[dict[str, str]] = []  # each worker node's marker
        try:
            env = dict(self.marker, **(HEAD_ENV if fast_health_check else {}))
            self._start(env, ["--head", f"--port={self.port}", "--include-dashboard=false",
                              f"--dashboard-port={free_port()}"], devices)
        except BaseException:
            self.close()
            raise

    def _start(self, marker: dict[str, str], args: list[str], devices: int) -> None:
        env = dict(os.environ, HOME=self.dir, **CLIENT_ENV, **marker)
        env.pop("RAY_ADDRESS", None)
        units = [f"--resources={{\"cent_device\": {devices}}}"] if devices else []
        for attempt in range(START_ATTEMPTS):
            r = subprocess.run([RAY, "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1", *units,
                                "--disable-usage-stats", f"--temp-dir={self.dir}/t", *_node_ports()],
                               env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
            if r.returncode == 0:
                return
            kill_marked(marker)  # what the failed start left, before the next
        raise RuntimeError(f"ray start {args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def add_worker(self, devices: int) -> int:
        """A worker node joined to the head on 127.0.0.1, advertising `devices` units; its index for
        `kill_worker`."""
        self.workers.append(new_marker())
        self._start(self.workers[-1], [f"--address={self.address}"], devices)
        return len(self.workers) - 1

    def kill_worker(self, i: int) -> int:
        """Worker node `i` lost (its raylet, its agents and the actors it runs: SIGKILL), the head left
        running; how many processes were killed."""
        return kill_marked(self.workers[i])

    def kill(self) -> int:
        """The head lost: every process of this cluster killed at once (SIGKILL)."""
        return kill_marked(self.marker)

    def kill_raylet(self) -> int:
        """The head's raylet lost alone (SIGKILL), its GCS left running; how many were killed (1)."""
        def raylets() -> list[int]:
            found = []
            for pid in marked_pids(self.marker):
                try:
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:  # gone meanwhile
                    continue
                if argv0.endswith(b"/raylet"):
                    found.append(pid)
            return found

        return kill_until_gone(raylets)

    def close(self) -> None:
        """Kill what is left (by process id) and remove the directory; safe twice."""
        for marker in self.workers:
            kill_marked(marker)
        kill_marked(self.marker)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
