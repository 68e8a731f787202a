"""Hosts made of network namespaces: a real multi-host Ray cluster on one machine.

`Hosts(n)` makes n namespaces joined by veth pairs to a bridge the test creates, each with one
private address of 10.231.S.0/24 (S from the process id, so two runs on one machine do not meet;
no other address is touched), starts a Ray head on host 1 and workers on the others with
`ray start` and token authentication (a token generated for the run, in the run's own HOME), each
advertising `cent_device` units (the head with the test clusters' health-check period,
`tests.cluster.ray_head.HEAD_ENV`). Everything crossing hosts crosses the veths: the links between
device actors, Ray's own traffic.

Faults as a cluster has them: `kill_host(i)` kills every process in host i's namespace
(SIGKILL), `start_ray(i)` brings it back, `partition(i)` / `heal(i)` set its veth down and up.
`close()` kills what is left by process id and namespace and deletes the namespaces and the
bridge; it is safe to call twice. `available()` says why the harness cannot run here (not root,
no `ip`, namespaces refused) so the tests skip with that reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cluster.ray_head import HEAD_ENV
from tests.processes import kill_until_gone

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6379
START_TIMEOUT_S = 120.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"centprobe{os.getpid() % 100000}"
    probe = _ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"network namespaces refused: {probe.stderr.strip()}"
    _ip("netns", "delete", name, check=False)
    return None


class Hosts:
    def __init__(self, n: int, devices_per_host: int = 4, cpus_per_host: int = 1) -> None:
        self.tag = f"c{os.getpid() % 10000}"
        self.subnet = 1 + os.getpid() % 250
        self.bridge = f"{self.tag}br"
        self.devices_per_host, self.cpus_per_host = devices_per_host, cpus_per_host
        self.home = tempfile.mkdtemp(prefix="cent-hosts-")
        self.hosts: list[int] = []
        self.env = dict(os.environ, HOME=self.home, RAY_AUTH_MODE="token", PYTHONPATH=str(ROOT),
                        RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, capture_output=True, check=True,
                           timeout=60)
            for i in range(1, n + 1):
                self.add_host(i)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ naming

    def ns(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def ip(self, i: int) -> str:
        return f"10.231.{self.subnet}.{i}"

    @property
    def address(self) -> str:
        return f"{self.ip(1)}:{PORT}"

    # ------------------------------------------------------------------ hosts

    def add_host(self, i: int) -> None:
        """Namespace, veth to the bridge, address, loopback; then Ray (head on host 1)."""
        ns, outer, inner = self.ns(i), f"{self.tag}v{i}", f"{self.tag}p{i}"
        _ip("netns", "add", ns)
        self.hosts.append(i)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.start_ray(i)

    def start_ray(self, i: int) -> None:
        args = ["--node-ip-address", self.ip(i), "--num-cpus", str(self.cpus_per_host), "--disable-usage-stats",
                "--resources", f'{{"cent_device": {self.devices_per_host}}}', "--temp-dir",
                f"{self.home}/ray{i}"]
        args = ["--head", "--port", str(PORT), *args] if i == 1 else ["--address", self.address, *args]
        r = self.run(i, [RAY, "start", *args], timeout=START_TIMEOUT_S, env=HEAD_ENV if i == 1 else {})
        if r.returncode != 0:
            raise RuntimeError(f"ray start on host {i} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def run(self, i: int, cmd: list[str], timeout: float = 300.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run `cmd` on host i to its end (`env`: entries added to the hosts' environment)."""
        return subprocess.run(["ip", "netns", "exec", self.ns(i), *cmd], env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def spawn(self, i: int, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start `cmd` on host i in its own process group."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(i), *cmd], env=self.env, cwd=ROOT,
                                start_new_session=True, **kwargs)

    def pids(self, i: int) -> list[int]:
        r = _ip("netns", "pids", self.ns(i), check=False)
        return [int(p) for p in r.stdout.split()]

    def kill_host(self, i: int) -> int:
        """SIGKILL every process of host i (its Ray, its device actors), as a lost machine; returns
        how many were killed."""
        return kill_until_gone(lambda: self.pids(i), rounds=5, pause_s=0.2)

    def partition(self, i: int) -> None:
        _ip("link", "set", f"{self.tag}v{i}", "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", f"{self.tag}v{i}", "up")

    def actor_pids(self, i: int, name: str) -> list[int]:
        """Processes of host i whose command line names `name` (a Ray actor: `ray::DeviceActor`)."""
        out = []
        for pid in self.pids(i):
            try:
                if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(pid)
            except OSError:
                pass
        return out

    def close(self) -> None:
        for i in list(self.hosts):
            self.kill_host(i)
            _ip("netns", "delete", self.ns(i), check=False)
            _ip("link", "delete", f"{self.tag}v{i}", check=False)
        self.hosts = []
        _ip("link", "delete", self.bridge, check=False)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
