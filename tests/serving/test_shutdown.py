"""A second Ctrl-C's kill (`api.shutdown.exit_now`): the processes the server started, each pinned
before it is killed, and nothing that took one's number after the listing (Linux: /proc, pidfds)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api import shutdown

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
WAIT_S = 30.0
"""Longest wait for a killed child to be reaped (it takes milliseconds; a hang fails here)."""


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(WAIT_S)


def _started(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _exit_now(monkeypatch, listed) -> int:
    """`exit_now` on the listing `listed` (as `own_processes` would return it); its exit code."""
    monkeypatch.setattr(shutdown, "own_processes", lambda: listed)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit) as ended:
        shutdown.exit_now(signal.SIGINT, said=True)
    return ended.value.code


def test_the_processes_this_one_started_are_listed_with_their_start_times(child):
    assert (child.pid, _started(child.pid)) in shutdown.own_processes()
    assert shutdown.own_processes(child.pid) == []  # it started none


def test_a_second_signal_kills_what_was_listed_and_exits_128_plus_the_signal(monkeypatch, child):
    assert _exit_now(monkeypatch, [(child.pid, _started(child.pid))]) == 128 + signal.SIGINT
    assert child.wait(WAIT_S) == -signal.SIGKILL


def test_a_number_another_process_took_after_the_listing_is_not_killed(monkeypatch, child):
    """The listed process ended and its number went to another before the kill (simulated: the
    listing's start time is not the live process's): the live one is left alone."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here: processes are killed by number")
    stale = [(child.pid, _started(child.pid) - 1)]
    assert shutdown.pinned(stale) == []
    assert _exit_now(monkeypatch, stale) == 128 + signal.SIGINT
    assert child.poll() is None


def test_a_process_gone_before_it_is_pinned_is_skipped():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    listed = [(proc.pid, _started(proc.pid))]
    proc.wait(WAIT_S)
    assert shutdown.pinned(listed) == []


def test_a_pinned_process_reaped_before_the_kill_leaves_no_fd_open():
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    [(pid, fd)] = shutdown.pinned([(proc.pid, _started(proc.pid))])
    proc.wait(WAIT_S)  # reaped: the signal fails with ESRCH
    shutdown._kill(pid, fd)
    with pytest.raises(OSError):
        os.fstat(fd)


_SLEEP = "import time; time.sleep(300)"
# a "raylet" (its command names Ray's package) that starts a "worker" and prints its pid; killed, the worker is orphaned
_RAYLET = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', %r]); "
           "print(w.pid, flush=True); time.sleep(300)" % _SLEEP)
# the "server": its raylet, and a process of its own that is not Ray's (a wrapper's log pipe, run from a
# directory named ray); prints every pid
_SERVER = ("import subprocess, sys, time; "
           "r = subprocess.Popen([sys.executable, '-c', %r, '/venv/site-packages/ray/core/raylet'], "
           "stdout=subprocess.PIPE, text=True); w = r.stdout.readline().strip(); "
           "p = subprocess.Popen([sys.executable, '-c', %r, '/home/u/ray/cent-serve']); "  # a project under a ray/
           "print(r.pid, w, p.pid, flush=True); time.sleep(300)"
           % (_RAYLET, _SLEEP))
REAP_WAIT_S = 10.0
"""A killed process leaves /proc within milliseconds; 10 s for a loaded machine."""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + REAP_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_ray_processes_that_outlive_the_ray_shutdown_are_killed_and_nothing_else():
    """A SIGTERM while a replica's devices were being re-created: ray.shutdown stopped the local Ray's
    GCS and raylet, but the 27 workers still starting (Llama2-70B on 32 devices) were reparented to init
    and lived on for about a minute after "stopped: ... device actors are gone". The server kills the Ray
    processes it started that outlived the shutdown (`stop_and_reap`), and only those: not a log pipe
    a wrapper script left under it."""
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    raylet, worker, pipe = map(int, server.stdout.readline().split())
    try:
        def ray_shutdown():  # the raylet goes, its worker still starting does not
            os.kill(raylet, signal.SIGKILL)
            assert _gone(raylet)

        assert shutdown.stop_and_reap(ray_shutdown, root=server.pid, package="/venv/site-packages/ray/") == 1
        assert _gone(worker), "the orphaned worker outlived the shutdown"
        assert _alive(pipe), "a process that is not Ray's was killed"
    finally:
        for pid in (worker, raylet, pipe, server.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server.wait()
