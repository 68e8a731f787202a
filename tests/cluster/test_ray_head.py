"""`cent serve` joined to a Ray cluster of its own (`tests.cluster.ray_head`), as a user runs it:
a cluster without room for the devices is refused before anything starts, in one line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster.ray_head import CLIENT_ENV, RayHead

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFUSE_TIMEOUT_S = 120.0
"""A hang guard: the refusal comes in 2-4 s (Python's imports, joining the cluster)."""


def _cent(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **CLIENT_ENV)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "cent_serve.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=REFUSE_TIMEOUT_S, env=env)


@pytest.fixture(scope="module")
def head():
    with RayHead(devices=8) as h:
        yield h


def test_a_cluster_without_room_for_every_replica_is_refused_first_and_alone(head):
    """16 devices are two replicas of tiny's 8-stage pipeline; the cluster advertises 8 units. The
    refusal came after 'joined the Ray cluster' and 'starting replica 0 (1 of 2)' (the first
    replica's placement found it); now it is the only line, as every refusal is."""
    proc = _cent("serve", "--ray-address", head.address, "--devices", "16", "--numerics", "off", "--port", "0")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cent serve: error: the mapping needs 16 cent_device units (2 replicas of 8); "
                               "the cluster has 8 ("), lines[0]
    assert lines[0].endswith("or use --devices 8"), lines[0]


def test_a_driver_of_another_ray_is_refused_in_one_line_naming_both_versions(head):
    """The driver claims Ray 2.59.0 (ray.__version__ is what Ray's join compares with the cluster's):
    the refusal named neither version ("... could not join it: Version mismatch: The cluster was
    started with:: check `ray status` where it runs")."""
    code = ("import sys, ray; ray.__version__ = '2.59.0'; from cent_serve.cli import main; "
            f"sys.exit(main(['serve', '--ray-address', '{head.address}', '--devices', '8', '--numerics', 'off', "
            "'--port', '0']))")
    env = dict(os.environ, **CLIENT_ENV)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=REFUSE_TIMEOUT_S, env=env)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    import ray  # this process's Ray is the cluster's

    assert f"the cluster runs Ray {ray.__version__} on Python" in lines[0], lines[0]
    assert "this process Ray 2.59.0" in lines[0] and f'"ray[default]=={ray.__version__}"' in lines[0], lines[0]


LOST_AFTER_S = 5.0
"""`server.cluster_lost_s` for the test: the server gives the cluster up 5 s after its head stops answering."""
HANG_GUARD_S = 90.0
"""Longest wait for what the server does by itself once the head is gone (a few seconds: the 5 s, then
Ray's shutdown, about 5 s without its GCS); past Ray's own 60 s, when its core ends a driver that lost
its GCS with an error of its own."""

def _serve_on(head: RayHead, *sets: str):
    """`cent serve` of 2 timing-only devices on `head`'s cluster, giving it up after LOST_AFTER_S
    (`sets`: more config fields, `name=value`)."""
    from tests.serving.utils import serve_process

    return serve_process(["--ray-address", head.address, "--devices", "2", "--numerics", "off",
                          *(x for kv in (f"server.cluster_lost_s={LOST_AFTER_S:g}", *sets) for x in ("--set", kv))],
                         **CLIENT_ENV)


def _watch_health(proc, health: list[tuple[int, str]]) -> None:
    """/health's (status, reason) into `health` every 0.1 s until the server has gone."""
    import time

    import httpx

    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        try:
            r = httpx.get(proc.url + "/health", timeout=30)
        except httpx.HTTPError:
            return
        health.append((r.status_code, r.json().get("reason", "")))
        time.sleep(0.1)



def test_a_lost_head_fails_the_requests_and_the_server_exits_in_one_line():
    """The head dies (every process of the one-node cluster killed, device actors included). /health
    says 503 naming the head while it is silent; a request the dead devices were to run fails at once
    (500 device_fault, naming the head), and one waiting for the devices' re-creation, which cannot come, ends with a
    503 naming the head once it has been silent for server.cluster_lost_s; then `cent serve` exits 1
    with one line. Before, /health said 're-creating the devices of replica(s) [0]' and the waiting
    request hung until Ray's core ended the process 60 s later (an error line of Ray's, the
    connection cut)."""
    import threading

    import httpx

    from tests.serving.utils import stop_serve

    given_up = f"has not answered for {LOST_AFTER_S:g} s (server.cluster_lost_s)"
    with RayHead(devices=8) as head:
        proc = _serve_on(head)
        health: list[tuple[int, str]] = []

        try:
            body = {"model": "tiny", "prompt": "CENT", "max_tokens": 4, "ignore_eos": True}
            assert httpx.post(proc.url + "/v1/completions", json=body, timeout=60).status_code == 200
            head.kill()
            prober = threading.Thread(target=_watch_health, args=(proc, health), daemon=True)
            prober.start()
            r = httpx.post(proc.url + "/v1/completions", json=body, timeout=HANG_GUARD_S)
            if r.status_code == 500:  # it ran on the dead devices (the engine had not met them yet): this one waits
                assert r.json()["error"]["cent"]["code"] == "device_fault", r.text  # its cause named
                assert r.json()["error"]["message"].startswith("the Ray cluster's head (its GCS at "), r.text
                r = httpx.post(proc.url + "/v1/completions", json=body, timeout=HANG_GUARD_S)
            error = r.json()["error"]
            assert (r.status_code, error["cent"]["code"]) == (503, "engine_stopped"), r.text
            assert error["message"].startswith("the Ray cluster's head (its GCS at ") and given_up in error["message"]
            proc.wait(HANG_GUARD_S)
            prober.join(HANG_GUARD_S)
        finally:
            out = stop_serve(proc, hang_fails=False)
    silent = [reason for status, reason in health if status == 503 and reason.startswith(
        "the Ray cluster's head (its GCS at ") and reason.endswith(f"gives it up at {LOST_AFTER_S:g} s "
                                                                  "(server.cluster_lost_s)")]
    assert silent, health
    lines = [x for x in out.splitlines() if x.strip()]
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert lines[-1].startswith("cent serve: error: the Ray cluster's head (its GCS at "), out
    assert lines[-1].endswith(f"{given_up}: the cluster and its devices are gone; start the cluster's head again "
                              "(ray start --head), then the server"), out


def test_a_lost_raylet_of_the_servers_node_fails_the_requests_and_the_server_exits_in_one_line():
    """The raylet of the node `cent serve` runs on dies alone (the head's GCS still answers): /health
    says 503 naming it while it is silent, a request that meets the dead devices fails naming it, and
    once it has been silent for server.cluster_lost_s `cent serve` exits 1 with one line, as for a
    lost head. Before, nothing asked the raylet: /health said 're-creating the devices of replica(s)
    [0]', the re-creation failed ('The placement group corresponding to this task has been removed')
    and was retried every 10 s for ever, each request failing with it."""
    import threading
    import time

    import httpx

    from tests.serving.utils import stop_serve

    given_up = f"has not answered for {LOST_AFTER_S:g} s (server.cluster_lost_s)"
    with RayHead(devices=8) as head:
        proc = _serve_on(head)
        health: list[tuple[int, str]] = []

        failed = []
        try:
            body = {"model": "tiny", "prompt": "CENT", "max_tokens": 4, "ignore_eos": True}
            assert httpx.post(proc.url + "/v1/completions", json=body, timeout=60).status_code == 200
            assert head.kill_raylet() == 1
            prober = threading.Thread(target=_watch_health, args=(proc, health), daemon=True)
            prober.start()
            deadline = time.monotonic() + HANG_GUARD_S
            while time.monotonic() < deadline:  # the devices run on until they see their raylet gone
                try:
                    r = httpx.post(proc.url + "/v1/completions", json=body, timeout=HANG_GUARD_S)
                except httpx.HTTPError:  # the server has given the cluster up and gone
                    break
                if r.status_code != 200:
                    failed.append(r)
                    break
                time.sleep(0.2)
            proc.wait(HANG_GUARD_S)
            prober.join(HANG_GUARD_S)
        finally:
            out = stop_serve(proc, hang_fails=False)
    for r in failed:  # a 500 device_fault (it ran on the dead devices) or a 503: it waited for their re-creation,
        # or came once it had failed (Ray's GCS may mark the node dead, its placement group removed, first)
        error = r.json()["error"]
        assert (r.status_code, error["cent"]["code"]) in ((500, "device_fault"), (503, "engine_stopped"),
                                                          (503, "no_replica")), r.text
        assert error["message"].startswith("this node's raylet (at "), r.text
    silent = [reason for status, reason in health if status == 503 and reason.startswith(
        "this node's raylet (at ") and reason.endswith(f"gives it up at {LOST_AFTER_S:g} s (server.cluster_lost_s)")]
    assert silent, health
    lines = [x for x in out.splitlines() if x.strip()]
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert lines[-1].startswith("cent serve: error: this node's raylet (at "), out
    assert lines[-1].endswith(f"{given_up}: the server's Ray node and the devices on it are gone; start Ray on this "
                              "node again (ray start), then the server"), out


FAST_RETRY = ("server.replica_retry_s=2", "server.placement_timeout_s=10")
"""A re-creation retried every 2 s, its placement given up after 10 s: the replica waits for units the
same way, without waiting out the defaults (10 s and 30 s): the test took 42 s here alone, not 71 s."""
NO_UNITS = "the node(s) that advertised cent_device units are gone: "
"""The reason a replica waits while only the head, which advertises no units, is left."""


def _status_nodes(url: str) -> tuple[set[str], str]:
    """(the Ray node ids the devices run on, the switch's: the server's node) from /v1/cent/status."""
    import httpx

    st = httpx.get(url + "/v1/cent/status", timeout=30).json()
    return {d["node_id"] for d in st["devices"]}, st["fabric"][0]["node_id"]


def _until(check, what: str):
    """Ask `check()` every 0.5 s until it returns something true (returned), at most HANG_GUARD_S."""
    import time

    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"not within the hang guard: {what}")


def test_a_lost_worker_with_the_units_is_waited_for_never_replaced_on_a_head_without_units():
    """The head advertises no cent_device units, its one worker 2; the server's replica runs on the
    worker, which is lost. The replica was re-created on the head at once, its devices placed with
    no placement group (a one-node cluster without units was taken for a plain Ray), silently. Now
    it waits for units: /health 503 naming them, a request 503 no_replica; once a worker with units
    joins, the replica comes back there and serves."""
    import httpx

    from tests.serving.utils import stop_serve

    body = {"model": "tiny", "prompt": "CENT", "max_tokens": 4, "ignore_eos": True}
    with RayHead(devices=0, fast_health_check=True) as head:
        head.add_worker(2)
        proc = _serve_on(head, *FAST_RETRY)
        try:
            assert httpx.post(proc.url + "/v1/completions", json=body, timeout=60).status_code == 200
            devices, server = _status_nodes(proc.url)
            assert server not in devices and len(devices) == 1, (devices, server)  # on the worker
            assert head.kill_worker(0) > 0
            # one that meets the dead devices (500 device_fault), or waits for their re-creation
            first = httpx.post(proc.url + "/v1/completions", json=body, timeout=HANG_GUARD_S)

            def waiting_or_back():
                r = httpx.get(proc.url + "/health", timeout=30)
                if r.status_code == 503 and NO_UNITS in r.json().get("reason", ""):
                    return "waiting"
                st = httpx.get(proc.url + "/v1/cent/status", timeout=30).json()
                return "back" if st["num_recoveries"] else None

            assert _until(waiting_or_back, "the replica neither waited for units nor came back") == "waiting", \
                (first.status_code, _status_nodes(proc.url), "".join(proc.log[-20:]))  # back: on the head
            r = httpx.post(proc.url + "/v1/completions", json=body, timeout=HANG_GUARD_S)
            error = r.json()["error"]
            assert (r.status_code, error["cent"]["code"]) == (503, "no_replica") and NO_UNITS in error["message"], r.text
            lost = _cent("serve", "--ray-address", head.address, "--devices", "2", "--numerics", "off", "--port", "0")
            # a second server joining now reads the cluster's own record (the group granted, its node dead)
            refusal = [x for x in lost.stderr.splitlines() if x.strip()]
            assert proc.poll() is None and lost.returncode == 2 and len(refusal) == 1, lost.stderr
            assert refusal[0].startswith(f"cent serve: error: {NO_UNITS}") and "units not seen by this server" in \
                refusal[0], refusal[0]
            head.add_worker(2)
            _until(lambda: httpx.get(proc.url + "/health", timeout=30).status_code == 200, "the replica came back")
            assert httpx.post(proc.url + "/v1/completions", json=body, timeout=60).status_code == 200
            devices, server = _status_nodes(proc.url)
            assert server not in devices, (devices, server)  # on the new worker, never the head
        finally:
            out = stop_serve(proc, hang_fails=False)
    assert proc.returncode == 0 and "Traceback" not in out, out


def test_a_joined_one_node_cluster_without_units_places_the_devices_anywhere():
    """A driver joining a one-node `ray start --head` started without --resources (`--ray-address`,
    `ray job submit`): a plain Ray, as on one machine, never a node with units lost. It was refused
    ("the cluster's 1 node advertises no cent_device units") since only a Ray this process started
    was taken for a plain one; now it serves as before."""
    import httpx

    from tests.serving.utils import stop_serve

    body = {"model": "tiny", "prompt": "CENT", "max_tokens": 4, "ignore_eos": True}
    with RayHead(devices=0) as head:
        proc = _serve_on(head)
        try:
            r = httpx.post(proc.url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, (r.text, "".join(proc.log[-20:]))
            devices, server = _status_nodes(proc.url)
            assert devices == {server}, (devices, server)  # the head's node, the only one
        finally:
            out = stop_serve(proc, hang_fails=False)
    assert proc.returncode == 0 and "Traceback" not in out, out
