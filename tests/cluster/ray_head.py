"""A one-node Ray cluster of this test's own: `ray start --head` on free ports, in a temporary
directory and HOME, token authentication off (no ~/.ray/auth_token read or written), advertising
`cent_device` units.

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
CLIENT_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
"""What a process joining the head needs in its environment (the head runs without token auth)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, devices: int = 8) -> None:
        self.marker = new_marker()
        self.dir = tempfile.mkdtemp(prefix="cent-rh-")  # short: Ray's socket paths must fit 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = dict(os.environ, HOME=self.dir, **CLIENT_ENV, **self.marker)
        env.pop("RAY_ADDRESS", None)
        ports = [f"--{name}={free_port()}" for name in (
            "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")]
        try:
            r = subprocess.run([RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                                "--num-cpus=1", f"--resources={{\"cent_device\": {devices}}}",
                                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.dir}/t",
                                *ports], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
            if r.returncode != 0:
                raise RuntimeError(f"ray start --head failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        except BaseException:
            self.close()
            raise

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
        kill_marked(self.marker)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
