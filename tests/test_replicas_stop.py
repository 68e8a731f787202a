"""`Replicas.stop_recreating` with a re-creation that does not hear the stop: one blocked inside a Ray
call that does not ask `check_start` (a lost cluster's are given up without asking Ray more:
tests/test_replicas_cluster_lost.py). No Ray here: the re-creation is a fake that blocks until the
test lets it go."""
from __future__ import annotations

import threading

from cent_serve.replicas import Replicas

HANG_GUARD_S = 60.0
"""Hang guards only: every wait here ends as soon as the thread it waits for does."""


class _Executor:
    def __init__(self, shut: list) -> None:
        self.shut = shut

    def shutdown(self) -> None:
        self.shut.append(self)


def test_a_recreation_deaf_to_the_stop_is_left_after_the_join_and_stops_what_it_builds(caplog):
    """The stop gives the re-creation `join_s` and goes on (`run_server` then shuts Ray down: the
    server's last line must not wait on a dead GCS), saying so once; the re-creation, when its call
    returns, shuts down what it built (it is never swapped in) and nothing else."""
    shut: list = []
    entered, release = threading.Event(), threading.Event()

    def remake():
        entered.set()
        assert release.wait(HANG_GUARD_S)  # inside Ray, deaf to check_start
        return _Executor(shut)

    replicas = Replicas(lambda: _Executor(shut), 1, remake=remake)
    old = replicas.executors[0]
    replicas.fail(0, RuntimeError("a device actor died"))
    assert entered.wait(HANG_GUARD_S)
    thread = replicas._threads[0]
    with caplog.at_level("INFO", logger="cent.replicas"):
        replicas.stop_recreating(join_s=0.0)
    assert thread.is_alive()
    assert caplog.text.count("replica 0 is still being re-created: not waiting for it") == 1, caplog.text
    assert shut == [old]  # the failed one, shut down first on the thread
    release.set()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and len(shut) == 2 and shut[1] is not old  # what it built, by itself
    assert replicas.poll() == [] and replicas.executors == [None]
    assert not replicas._start(0)  # stopping: no re-creation starts again
