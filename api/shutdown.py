"""How `cent serve` answers signals outside uvicorn's run: the first stops it, a second exits at once.

The first SIGINT or SIGTERM stops the server in order: while it starts (Ray, the device actors) by
KeyboardInterrupt (`cent serve` exits 130, "interrupted"), while it serves through uvicorn
(`api.server._Uvicorn`: the running generations aborted, then the teardown). From then on, a second
signal, whenever it comes (while the responses drain, the devices stop, Ray shuts down, a start-up is
undone), exits at once (`exit_now`), as uvicorn and vLLM exit on a second Ctrl-C: one log line, no
traceback, exit code 128 + the signal's number, after killing every process this one started (a local
Ray's GCS, raylet and agents, and the device actors it runs: they would outlive an exit that skips
`ray.shutdown`), as vLLM kills its process tree. A cluster's actors elsewhere end with this driver.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("cent.server")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command's name (state first), None once it is gone:
    "pid (comm) state ppid ...", where comm may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def own_processes(root: int | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of every live process `root` (default: this one) started, and theirs,
    parents before children: from /proc's parent links (Linux; [] where there is no /proc). Read
    once, so a process that leaves its parent afterwards (the raylet's agents once it is killed)
    is still in the list. The start time (clock ticks after boot) tells a process from a later one
    given its number."""
    root = os.getpid() if root is None else root
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for d in entries:
        if not d.isdigit():
            continue
        fields = _stat(d)
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(d), int(fields[19])))
    found, todo = [], [root]
    while todo:
        for proc in children.get(todo.pop(), []):
            found.append(proc)
            todo.append(proc[0])
    return found


def _is_listed(pid: int, started: int) -> bool:
    """Whether `pid` is still the process listed with start time `started` (not gone, not reused)."""
    fields = _stat(pid)
    return fields is not None and int(fields[19]) == started


def pinned(procs: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
    """(pid, pidfd) of the processes `procs` listed: each pinned by a pidfd (always the same process,
    whatever later takes its number) whose start time is then checked, so a number another process
    took after the listing is dropped, not killed. Without pidfds (not Linux 5.3+): (pid, None),
    killed by number."""
    out = []
    for pid, started in procs:
        try:
            fd = os.pidfd_open(pid)
        except AttributeError:  # no pidfds here
            out.append((pid, None))
            continue
        except OSError as e:  # gone already (nothing to kill), or pidfds refused (an old kernel, no fd left):
            if e.errno != errno.ESRCH and _is_listed(pid, started):  # by number, if still the one listed
                out.append((pid, None))
            continue
        if _is_listed(pid, started):
            out.append((pid, fd))
        else:  # ended, its number maybe reused, before it was pinned
            os.close(fd)
    return out


def _kill(pid: int, fd: int | None) -> None:
    try:
        if fd is None:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:  # gone already
        pass
    finally:
        if fd is not None:
            os.close(fd)


def ray_processes(root: int | None = None, package: str | None = None) -> list[tuple[int, int]]:
    """`own_processes(root)` started by Ray: `root`'s children whose command runs from Ray's package
    directory `package` (default: the installed one's; the GCS, the raylet, its agents and monitors) and
    every process under them; not the rest (a log pipe a wrapper script left under the server, a user's
    subprocess, whatever directory the project sits in)."""
    if package is None:
        import ray
        package = os.path.dirname(ray.__file__) + os.sep
    root = os.getpid() if root is None else root
    found, mine = [], set()
    for pid, started in own_processes(root):  # parents before children
        fields = _stat(pid)
        if fields is None:
            continue
        parent = int(fields[1])
        if parent in mine or (parent == root and package in _cmdline(pid)):
            mine.add(pid)
            found.append((pid, started))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_and_reap(stop: Callable[[], None], root: int | None = None, package: str | None = None) -> int:
    """Run `stop` (`ray.shutdown` of a local Ray), then SIGKILL the Ray processes `root` (default: this
    process) had started before it that outlived it (`ray_processes`); the number killed.
    `ray.shutdown` stops the GCS and the raylet, but worker processes still starting (a replica's
    devices being re-created when the server was stopped: 27 for Llama2-70B) lose their parent and
    live on for a minute or more, tens of MB each, after "stopped: ... device actors are gone".
    Listed (and pinned) before `stop`, as they are reparented once the raylet is gone. A cluster the
    server joined (`--ray-address`) runs under no process of the server's: nothing of it is touched."""
    listed = ray_processes(root, package)
    started = dict(listed)
    procs = pinned(listed)
    try:
        stop()
    finally:
        killed = 0
        for pid, fd in procs:
            fields = _stat(pid)  # gone, a zombie its parent has not reaped, or (by number) another process now
            if fields is None or fields[0] == "Z" or int(fields[19]) != started[pid]:
                if fd is not None:
                    os.close(fd)
                continue
            killed += 1
            _kill(pid, fd)
    return killed


def exit_now(signum: int, frame=None, said: bool = False) -> None:
    """A signal after the first: kill every process this one started (SIGKILL: nothing is waited
    for; each pinned first, `pinned`) and exit with 128 + `signum`, as a process the signal ended.
    One log line unless `said` (the caller logged it)."""
    procs = pinned(own_processes())
    if not said:
        log.warning("%s again: exiting now, without waiting for the shutdown (%d processes it started killed)",
                    signal.Signals(signum).name, len(procs))
    for pid, fd in procs:
        _kill(pid, fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(128 + signum)


def current_handlers() -> dict:
    """SIGINT's and SIGTERM's handlers now (from the main thread; {} elsewhere), for `restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def restore(handlers: dict) -> None:
    """Put back what `current_handlers` saw: a server run from a library, or a test, must not leave
    `exit_now` (which kills what the process started) on its caller's Ctrl-C."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def on_signals(handler: Callable) -> None:
    """`handler` for SIGINT and SIGTERM (from the main thread only, where signals are handled)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, handler)


def stop_starting(signum: int, frame) -> None:
    """The first signal before the server serves: undo the start-up as Ctrl-C does (KeyboardInterrupt;
    `cent serve` exits 130), and let a second exit at once (`exit_now`)."""
    on_signals(exit_now)
    raise KeyboardInterrupt(signal.Signals(signum).name)
