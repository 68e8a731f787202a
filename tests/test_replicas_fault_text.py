"""A fault's description is one line: Ray's errors (colours, indented fields, a remote traceback)
must not reach /health, last_fault or the log as pages of text."""
from __future__ import annotations

import time

from cent_serve.replicas import Replicas, describe_fault

# What Ray 2.60 raised when a device actor's creation failed during a re-creation (seen under load).
CREATION_FAILED = (
    "The actor died because of an error raised in its creation task, \x1b[36mray::DeviceActor.__init__()"
    "\x1b[39m (pid=30249, ip=192.0.2.2, actor_id=4ec0, repr=<device_worker.actor.DeviceActor object>)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/x/device_worker/actor.py", line 49, in __init__\n'
    "    switch = switch_address.connect({...}, secret, self.node)\n"
    "             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/x/fabric/link.py", line 379, in connect\n'
    "    sock.connect(address)\n"
    "ConnectionRefusedError: [Errno 111] Connection refused")
ACTOR_DIED = ("The actor died unexpectedly before finishing this task.\n\tclass_name: DeviceActor\n\tpid: 30844\n"
              "The actor is dead because its worker process has died. " + "advice " * 200)


class ActorDiedError(RuntimeError):
    pass


def test_describe_fault_is_one_short_line_keeping_the_cause():
    text = describe_fault(ActorDiedError(CREATION_FAILED))
    assert "\n" not in text and "\x1b" not in text and "^^^" not in text and 'File "' not in text
    assert text.startswith("ActorDiedError: The actor died because of an error raised in its creation task")
    assert text.endswith("ConnectionRefusedError: [Errno 111] Connection refused")
    died = describe_fault(ActorDiedError(ACTOR_DIED))
    assert "\n" not in died and "\t" not in died and len(died) <= 600
    assert "class_name: DeviceActor pid: 30844" in died


def test_degraded_reason_of_a_failed_re_creation_is_one_line():
    calls = []

    def make():
        calls.append(1)
        if len(calls) > 1:  # the first build (start-up) works, the re-creation fails as Ray fails it
            raise ActorDiedError(CREATION_FAILED)
        return object()

    reps = Replicas(make, 1, retry_s=3600)
    reps.executors[0] = None  # taken out (fail() would shut the executor down first)
    reps._start(0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "could not" not in (reps.degraded or ""):
        time.sleep(0.01)
    reason = reps.degraded
    assert reason.startswith("replica 0: could not be re-created: ActorDiedError:")
    assert "\n" not in reason and "\x1b" not in reason
    reps._stopping = True


def test_frames_without_a_source_line_keep_the_cause_and_drop_the_code():
    """Ray's remote tracebacks start with frames of its .pyx files, which have no source line: the
    line after such a frame is the next frame or the exception, not code to drop."""
    text = ("ray::DeviceActor.__init__() (pid=1, ip=192.0.2.2)\n"
            '  File "python/ray/_raylet.pyx", line 1889, in ray._raylet.execute_task\n'
            '  File "/x/device_worker/actor.py", line 49, in __init__\n'
            "    self.worker = DeviceWorker(cfg, device_id, timer)\n"
            "ValueError: checkpoint tensor lm_head.weight has shape (3, 4)")
    assert describe_fault(ActorDiedError(text)) == ("ActorDiedError: ray::DeviceActor.__init__() (pid=1, ip=192.0.2.2) "
                                                    "ValueError: checkpoint tensor lm_head.weight has shape (3, 4)")
    last = 'ray::X.f() (pid=1)\n  File "python/ray/_raylet.pyx", line 1889, in ray._raylet.execute_task\nValueError: why'
    assert describe_fault(ActorDiedError(last)) == "ActorDiedError: ray::X.f() (pid=1) ValueError: why"


def test_a_failed_replica_is_shut_down_off_the_engine_thread_and_a_stopped_server_builds_none(monkeypatch):
    """Losing the Ray head, the failed replica's shutdown (Ray's kill) blocked the engine thread, so its
    failed requests were never answered: it now runs on the re-creating thread, first. A server that
    stops meanwhile builds nothing once that shutdown returns (it would start a Ray on the way out)."""
    import threading

    import cent_serve.replicas as replicas

    unblock, made = threading.Event(), []

    class Blocking:
        def shutdown(self) -> None:
            unblock.wait(30)

    def make():
        made.append(1)
        return Blocking()

    reps = Replicas(make, 1, retry_s=3600)
    assert made == [1]
    returned = threading.Event()
    threading.Thread(target=lambda: (reps.fail(0, RuntimeError("gone")), returned.set()), daemon=True).start()
    assert returned.wait(10), "fail waited for the old executor's shutdown"  # 10 s: a margin for a busy machine
    monkeypatch.setattr(replicas, "SHUTDOWN_JOIN_S", 0.1)
    reps.shutdown()  # the re-creating thread is still in the old executor's shutdown
    unblock.set()
    reps._threads[0].join(10)
    assert made == [1] and not reps._threads[0].is_alive()  # nothing built after the stop


def test_each_replica_s_start_is_logged_before_its_devices_progress_lines(caplog):
    """The devices' start-up lines ("6 of 32 up") restart for each replica: a line before each says
    which replica they are; one replica needs none."""
    import logging

    class Made:
        def shutdown(self):
            pass

    with caplog.at_level(logging.INFO, logger="cent.replicas"):
        Replicas(Made, 3).shutdown()
        Replicas(Made, 1).shutdown()
    assert [r.getMessage() for r in caplog.records] == [
        "starting replica 0 (1 of 3)", "starting replica 1 (2 of 3)", "starting replica 2 (3 of 3)"]


def test_a_shutdown_before_the_process_exits_does_not_wait_out_a_re_creation():
    """`cent serve` stopped while a replica's actors start (tens of seconds on Ray) waited for them
    (a Ctrl-C took 19 s): with a short `join_s` the shutdown returns, and the re-creation stops what
    it builds by itself."""
    import threading

    building, release, stopped = threading.Event(), threading.Event(), []

    class Made:
        def shutdown(self) -> None:
            stopped.append(self)

    def make():
        if made:  # the re-creation: blocks as a start-up does, until the test lets it finish
            building.set()
            release.wait(30)
        made.append(Made())
        return made[-1]

    made: list = []
    reps = Replicas(make, 1, retry_s=3600)
    reps.fail(0, RuntimeError("gone"))
    assert building.wait(10)
    reps.shutdown(join_s=0.0)
    assert reps._threads[0].is_alive() and stopped == [made[0]]  # returned while it still builds
    release.set()
    reps._threads[0].join(10)
    assert stopped == made and reps.executors == [None]  # the one it built, stopped by itself


def test_a_stop_ends_a_re_creation_s_start_up_where_it_asks(caplog):
    """A start-up that asks `check_start` (the Ray executor, while its actors come up) is given up
    once the replicas stop: the shutdown's wait ends with it, and no error is logged for it."""
    import logging
    import threading

    from cent_serve.executor.base import check_start

    asking, made = threading.Event(), []

    class Made:
        def shutdown(self) -> None:
            pass

    def make():
        if made:  # the re-creation: starts until told it is not wanted
            while True:
                asking.set()
                check_start()
                threading.Event().wait(0.01)
        made.append(Made())
        return made[-1]

    check_start()  # outside a cancellable start-up: nothing to give up
    reps = Replicas(make, 1, retry_s=3600)
    reps.fail(0, RuntimeError("gone"))
    assert asking.wait(10)
    with caplog.at_level(logging.INFO, logger="cent.replicas"):
        reps.shutdown()  # waits up to SHUTDOWN_JOIN_S, which the start-up ends well within
    assert not reps._threads[0].is_alive()
    assert "replica 0: its re-creation was given up (the server is stopping)" in caplog.messages
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR] and len(made) == 1
