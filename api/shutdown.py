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

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("cent.server")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def own_processes(root: int | None = None) -> list[int]:
    """Every live process `root` (default: this one) started, and theirs, parents before children:
    from /proc's parent links (Linux; [] where there is no /proc). Read once, so a process that
    leaves its parent afterwards (the raylet's agents once it is killed) is still in the list."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for d in entries:
        if not d.isdigit():
            continue
        try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(d))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def exit_now(signum: int, frame=None, said: bool = False) -> None:
    """A signal after the first: kill every process this one started (SIGKILL: nothing is waited
    for) and exit with 128 + `signum`, as a process the signal ended. One log line unless `said`
    (the caller logged it)."""
    pids = own_processes()
    if not said:
        log.warning("%s again: exiting now, without waiting for the shutdown (%d processes it started killed)",
                    signal.Signals(signum).name, len(pids))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already
            pass
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
