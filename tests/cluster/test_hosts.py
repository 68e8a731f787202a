"""A real multi-host cluster: hosts are network namespaces on a bridge the test makes
(`tests.cluster.netns`), Ray joined with token auth, everything between hosts over veths.

- greedy tokens and simulated times over 2 and 3 hosts equal one process's;
- the switch runs on the head (where `cent serve` runs), the devices spread over every host, and
  the status says where each runs;
- faults under 16 concurrent streams, on one server in turn: a device actor killed on a worker
  host, a worker host lost (every process in its namespace killed; the replica is re-created on
  what remains, then Ray restarted there), a worker host cut off for 10 s. Every stream ends
  (none hangs past the client's timeout), with 200 and its tokens (a stream whose devices died is
  recomputed on the re-created ones, or another replica), or an error: the device fault's (a hung
  device), or 503 no_replica's once no replica can come back soon; /health says 503 with the reason
  while the system is short (a request sent then waits, or gets 503 no_replica); the next requests
  complete.

One cluster for the module (2 devices a host, one CPU each), one server for the faults: a
cluster's start and a server's are the expensive parts on a busy 2-core machine.

Skipped where namespaces cannot be made (not root, no `ip`): CI runs as root.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from tests.cluster.multinode_run import PROMPTS
from tests.cluster.netns import Hosts, available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]
STREAMS = 16
SERVE_PORT = 8000  # inside host 1's namespace: no other process can hold it
DEVICES = 4
PACE = 500.0
"""Wall seconds per simulated second of the faults' server. A fault is injected once every stream
has a token, and must find streams still running: on the virtual clock the 16 x 48 tokens ended
1-2.5 s after that here, and at 6 tokens a stream (a machine 8x faster) they had ended before it.
Paced, the streams' 20 simulated ms last ~10 s on any machine, their first tokens come after ~2.5 s,
and some 7 s are left when the fault comes (its client says so within ~0.6 s)."""
FAULT_TIMEOUT_S = 900.0
"""Hang guards, not performance bounds: a recovery takes 6-8 s here quiet and about 80 s beside two
busy processes; the client waits up to 600 s for /health and for a stream (netns_load.py)."""


def _result(proc_or_run) -> dict:
    out = proc_or_run.stdout if isinstance(proc_or_run.stdout, str) else ""
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    assert lines, f"no result:\n{out[-3000:]}\n{proc_or_run.stderr[-3000:] if proc_or_run.stderr else ''}"
    return json.loads(lines[-1][len("RESULT "):])


def _local(devices: int, pp: int, tp: int):
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
    return generate_batch(LocalExecutor(cfg), PROMPTS, 8)


@pytest.fixture(scope="module")
def hosts():
    with Hosts(2, devices_per_host=2) as h:
        yield h


def test_two_and_three_hosts_serve_the_single_host_tokens(hosts):
    h = hosts
    for n, (devices, pp, tp) in ((2, (4, 2, 2)), (3, (6, 3, 2))):
        if n == 3:
            h.add_host(3)
        out = _result(h.run(1, [sys.executable, "-m", "tests.cluster.netns_run", h.address, str(devices),
                                str(pp), str(tp)], timeout=600))
        local = _local(devices, pp, tp)
        assert out["tokens"] == local.token_ids
        assert out["times"] == local.token_times_s  # bit for bit across hosts
        assert out["nodes"] == n and out["device_hosts"] == sorted(h.ip(i) for i in range(1, n + 1))
        assert out["switch_host"] == out["driver_host"] == h.ip(1)  # pinned to the head


class Served:
    """`cent serve` on host 1 (DEVICES devices, one a stage, spread over the hosts; four sequences
    a stage, so all the streams run at once; on the paced clock, `PACE`) and load clients beside it."""

    def __init__(self, h: Hosts, pp: int = DEVICES, placement: str = "spread") -> None:
        self.h = h
        self.url = f"http://127.0.0.1:{SERVE_PORT}"
        self.proc = h.spawn(1, [sys.executable, "-m", "cent_serve.cli", "serve", "--ray-address", h.address,
                                "--devices", str(DEVICES), "--pp", str(pp), "--port", str(SERVE_PORT),
                                "--placement", placement, "--set", "scheduler.max_seqs_per_stage=4",
                                "--clock", "paced", "--pace-factor", str(PACE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def load(self, streams: int, max_tokens: int, wait_s: float = 600.0) -> subprocess.Popen:
        return self.h.spawn(1, [sys.executable, "-m", "tests.cluster.netns_load", self.url, str(streams),
                                str(max_tokens), str(wait_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def health(self) -> tuple[int, str]:
        r = self.h.run(1, [sys.executable, "-c", "import httpx,sys; r=httpx.get("
                           f"'{self.url}/health', timeout=30); sys.stdout.write(f'{{r.status_code}} {{r.text}}')"],
                       timeout=120)
        code, _, text = r.stdout.partition(" ")
        return int(code), text

    def status(self) -> dict:
        r = self.h.run(1, [sys.executable, "-c", "import httpx,sys; sys.stdout.write(httpx.get("
                           f"'{self.url}/v1/cent/status', timeout=30).text)"], timeout=120)
        return json.loads(r.stdout)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def _serve(s: Served) -> Served:
    """`s` once it answers (a first request completes)."""
    warm = _result(subprocess.CompletedProcess([], 0, *s.load(1, 2).communicate(timeout=FAULT_TIMEOUT_S)))
    if warm["waited_s"] is None:
        s.stop()
        raise AssertionError(f"cent serve did not come up on the cluster: {warm}")
    return s


@pytest.fixture(scope="module")
def served(hosts):
    if len(hosts.hosts) < 3:
        hosts.add_host(3)  # the faults run on three hosts: one can go while two serve
    s = _serve(Served(hosts))
    yield s
    s.stop()


def _under_fault(s: Served, fault) -> tuple[dict, dict, float]:
    """Start the streams, inject `fault` once every stream has a token, wait for them; then a
    second load that waits for /health 200 (the recovery) and must complete in full. Returns
    (first load, second load, wall seconds from the fault to healthy again)."""
    load = s.load(STREAMS, 48)
    for line in load.stdout:
        if line.startswith("STREAMING"):
            break
    else:
        raise AssertionError(f"the streams never started: {load.stderr.read()[-3000:]}")
    t_fault = time.monotonic()
    fault()
    rest, err = load.communicate(timeout=FAULT_TIMEOUT_S)
    first = _result(subprocess.CompletedProcess([], 0, rest, err))
    after = s.load(4, 8)
    out, err = after.communicate(timeout=FAULT_TIMEOUT_S)
    second = _result(subprocess.CompletedProcess([], 0, out, err))
    return first, second, time.monotonic() - t_fault - second["wall_s"]


def _check(first: dict, second: dict, may_fail: bool, replica: int = 0) -> None:
    """`may_fail` False: every stream of the first load completed (those whose devices died were
    recomputed); True: some may end with the device fault's error (a hung device) or, queued again for a
    replica none of which can come back soon, 503 no_replica's."""
    res = first["results"]
    assert len(res) == STREAMS
    completed = [r for r in res if r["done"] and r["finish"] == "length" and r["error"] is None]
    failed = [r for r in res if r["error"] is not None]
    print(f"{len(completed)} completed, {len(failed)} failed of {STREAMS}; the load took {first['wall_s']:.1f} s; "
          f"sent while short: {second['probes']}")
    assert len(completed) + len(failed) == STREAMS  # none aborted by this client, none left hanging
    assert all(r["status"] == 200 for r in res), [r["status"] for r in res]  # no 5xx for a reported fault
    assert all(f"emulated devices of replica {replica} failed" in r["error"]
               or "no replica of the emulated devices can serve" in r["error"] for r in failed), [r["error"] for r in failed]
    if not may_fail:
        assert not failed, [r["error"] for r in failed]
    assert all(code in (200, 503) for _, code, _ in first["health"] + second["health_before"])
    # a request sent while /health said 503 waits for the devices while their first re-creation runs, or, once
    # every replica's has failed (no host left with room), is refused with 503 no_replica: never a 500
    assert all(status == 200 or (status == 503 and why.endswith("retry later")) for status, why in second["probes"]), \
        second["probes"]
    assert second["waited_s"] is not None, "the replica was not re-created"
    assert all(r["done"] and r["error"] is None for r in second["results"]) and len(second["results"]) == 4


def _short(first: dict, second: dict) -> list[str]:
    """What /health said while the system was short."""
    return [text for _, code, text in first["health"] + second["health_before"] if code == 503]


def test_device_actor_killed_on_a_worker_host(served):
    h = served.h
    st = served.status()
    assert st["fabric"][0]["host"] == h.ip(1)  # the switch on the head, where cent serve runs
    on = {d["device_id"]: d["host"] for d in st["devices"]}
    assert len(set(on.values())) > 1, on  # spread over the hosts
    worker = next(i for i in (2, 3) if h.ip(i) in on.values())

    def kill_device():
        import os
        import signal
        victims = h.actor_pids(worker, "DeviceActor")
        assert victims, f"no device actor on host {worker}"
        os.kill(victims[0], signal.SIGKILL)

    first, second, recovered_s = _under_fault(served, kill_device)
    _check(first, second, may_fail=False)  # recomputed on the re-created devices
    assert served.status()["num_recoveries"] >= 1
    print(f"device killed: healthy again {recovered_s:.1f} s after; health said {_short(first, second)[-1:]}")


def test_worker_host_lost_then_back(served):
    h = served.h
    lost = next(i for i in (3, 2) if h.ip(i) in {d["host"] for d in served.status()["devices"]})

    def lose_host():
        assert h.kill_host(lost) > 0

    first, second, recovered_s = _under_fault(served, lose_host)
    _check(first, second, may_fail=True)  # no_replica if the first re-creation on what remains fails
    assert _short(first, second), "health never said the system was short"
    hosts_now = {d["host"] for d in served.status()["devices"]}
    assert h.ip(lost) not in hosts_now  # re-created on what remains
    print(f"host {lost} lost: serving again {recovered_s:.1f} s after on {sorted(hosts_now)}; health said "
          f"{_short(first, second)[-1]!r}")
    t0 = time.monotonic()
    h.start_ray(lost)  # the host comes back: the cluster has its capacity again
    print(f"host {lost} back in the cluster in {time.monotonic() - t0:.1f} s")


def test_worker_host_partitioned_for_10_s(served):
    h = served.h
    cut = next(i for i in (2, 3) if h.ip(i) in {d["host"] for d in served.status()["devices"]})

    def partition():
        h.partition(cut)
        time.sleep(10.0)
        h.heal(cut)

    first, second, recovered_s = _under_fault(served, partition)
    _check(first, second, may_fail=True)  # late, or failed by the named check timeout
    print(f"host {cut} cut off for 10 s: every stream ended; healthy {recovered_s:.1f} s after the cut")


DOWN_S = 10.0
"""How long both worker hosts stay lost: within the re-creation's wait for room (server.placement_timeout_s,
30 s), so the replica comes back by that wait, not a retry. It was 20 s: 10 s shortens the test by as much."""


def test_too_few_hosts_left_waits_for_capacity_then_recovers(served):
    """Both worker hosts lost: the head alone cannot hold the devices, so nothing is served (health
    503 with the reason; a request sent once the re-creation has failed gets 503 no_replica) until
    the hosts' Ray comes back, then the replica is re-created."""
    h = served.h
    seen: list = []

    def lose_both():
        for i in (2, 3):
            assert h.kill_host(i) > 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < DOWN_S:  # the re-creation waits for room (up to server.placement_timeout_s,
            # 30 s): /health must say all along that the system is short, and why
            seen.append(served.health())
            time.sleep(1.0)
        for i in (2, 3):
            h.start_ray(i)

    first, second, recovered_s = _under_fault(served, lose_both)
    _check(first, second, may_fail=True)  # no_replica once the re-creation has failed
    short = [text for code, text in seen if code == 503]
    assert all(code in (200, 503) for code, _ in seen) and short, seen
    assert seen[-1][0] == 503, seen  # still waiting for the hosts when they come back
    assert {d["host"] for d in served.status()["devices"]} - {h.ip(1)}  # back on the worker hosts
    print(f"both workers lost for {DOWN_S:g} s: serving again {recovered_s:.1f} s after the loss; health said {short[0]!r}, "
          f"then {short[-1]!r}")


def test_placement_replica_a_host_lost_takes_out_only_its_replica(served):
    """--placement replica: two replicas of two devices, each on a host of its own; losing one's host
    takes that replica out (its streams are recomputed on the other replica, or the re-created one, and
    every stream completes) and re-creates it on a host that has room.
    It runs last: it stops the module's server, whose devices would hold the units it needs."""
    h = served.h
    served.stop()
    s, lost = _serve(Served(h, pp=2, placement="replica")), None
    try:
        st = s.status()
        on = {}
        for d in st["devices"]:
            on.setdefault(d["replica"], set()).add(d["host"])
        assert sorted(map(len, on.values())) == [1, 1] and len(set.union(*on.values())) == 2, on  # apart
        replica, host = next((r, hs.pop()) for r, hs in sorted(on.items()) if h.ip(1) not in hs)  # a worker's
        lost = next(i for i in (2, 3) if h.ip(i) == host)

        def lose_host():
            assert h.kill_host(lost) > 0

        first, second, recovered_s = _under_fault(s, lose_host)
        _check(first, second, may_fail=False, replica=replica)
        hosts_now = {d["host"] for d in s.status()["devices"]}
        assert h.ip(lost) not in hosts_now
        print(f"placement replica, host {lost} lost: the {STREAMS} streams completed; serving again "
              f"{recovered_s:.1f} s after on {sorted(hosts_now)}")
    finally:
        s.stop()
        if lost is not None:
            h.start_ray(lost)
