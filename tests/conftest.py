"""Shared fixtures. Importing cent_serve first pins BLAS to one thread before numpy loads.

`make test` runs the suite in pytest-xdist workers (`-n auto --dist loadfile`): a file's tests stay on
one worker, so a module-scoped server or cluster starts once; each worker has its own session Ray.
A test marked `serial` runs while no other worker runs a test (see `pytest_runtest_protocol`)."""
import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import cent_serve  # noqa: F401
import pytest

RAY_NUM_CPUS = 2
"""Pinned so Ray tests behave the same on any machine."""

MAX_WORKERS = 4
"""`-n auto`'s cap: each worker starts its own Ray and device actors; most of a Ray test's time is
waiting (actor starts, cluster health checks, paced clocks), so a worker more than the CPUs pays (on
two cores, quiet, three workers ran the suite in 553 s, two in 686 and 716 s), and memory, not CPUs,
bounds more."""

LOCK_DIR_KEY = "cent_serial_lock_dir"
"""The workerinput key of the directory holding the run's two lock files (made by the controller)."""


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (tests that need it are marked `ray`)."""
    ray = pytest.importorskip("ray")
    from cent_serve.executor.ray_executor import ensure_ray

    ensure_ray(num_cpus=RAY_NUM_CPUS)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """In an xdist worker (every worker sorts alike, so the collections still agree): files with a
    `slow` or `ray` test (or one on the session's Ray) first, so the longest (a cluster's, a fault's) do not start last and leave one
    worker running alone at the end; files with a `serial` test last, where the other workers have
    little left to hold back. Within a rank, and within a file, collection order stays; with
    `--no-loadscope-reorder` xdist hands the files out in this order."""
    if not hasattr(config, "workerinput"):
        return
    marks: dict = {}
    for item in items:
        names = marks.setdefault(item.path, set())
        names.update(m.name for m in item.iter_markers())
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            names.add("ray")
    rank = {path: 2 if "serial" in names else 0 if names & {"slow", "ray"} else 1 for path, names in marks.items()}
    items.sort(key=lambda item: rank[item.path])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use and one more (the tests mostly wait), at least 2
    and at most `MAX_WORKERS`: 3 on two cores."""
    return min(MAX_WORKERS, max(2, len(os.sched_getaffinity(0)) + 1))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist's controller, for each worker: the run's lock directory, made once."""
    config = node.config
    if not hasattr(config, "_cent_lock_dir"):
        config._cent_lock_dir = tempfile.mkdtemp(prefix="cent-pytest-")
    node.workerinput[LOCK_DIR_KEY] = config._cent_lock_dir


def pytest_unconfigure(config):
    if hasattr(config, "_cent_lock_dir"):
        shutil.rmtree(config._cent_lock_dir, ignore_errors=True)


@contextlib.contextmanager
def _turn(lock_dir: str, exclusive: bool):
    """A reader-writer lock over the workers: a test holds it shared, a `serial` one exclusive. Whoever
    comes takes the turnstile first, and a serial test keeps it while it waits and runs, so the other
    workers' next tests queue behind it instead of starving it (flock favours no one)."""
    with open(Path(lock_dir) / "turnstile", "a") as turnstile, open(Path(lock_dir) / "run", "a") as run:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist, a test's setup (its module's fixtures when it is the first), call and teardown run
    under `_turn`: a `serial` test (one that compares a client's wall clock with simulated time within a
    few percent) runs alone; run without xdist, nothing changes."""
    lock_dir = getattr(item.config, "workerinput", {}).get(LOCK_DIR_KEY)
    if lock_dir is None:
        return (yield)
    with _turn(lock_dir, exclusive=item.get_closest_marker("serial") is not None):
        return (yield)
