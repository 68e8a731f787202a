"""Processes a test started, found by a marker in their environment (inherited by every process
they start, whoever its parent is by then), so a test kills its own by process id and never another's."""
from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Callable

MARKER = "CENT_TEST_MARKER"


def new_marker() -> dict[str, str]:
    """Environment entries that mark a process and everything it starts."""
    return {MARKER: secrets.token_hex(8)}


def marked_pids(marker: dict[str, str]) -> list[int]:
    """Live processes (not zombies) whose environment has `marker` (from `new_marker`)."""
    needle = f"{MARKER}={marker[MARKER]}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        out.append(int(d))
    return out


def kill_until_gone(find: Callable[[], list[int]], rounds: int = 20, pause_s: float = 0.1) -> int:
    """SIGKILL the processes `find` lists, again while it lists any (a process may start another while
    we kill), at most `rounds` times; how many were killed."""
    killed = 0
    for _ in range(rounds):
        pids = find()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(pause_s)
    return killed


def kill_marked(marker: dict[str, str]) -> int:
    """SIGKILL every process carrying `marker`, until none is left; how many were killed."""
    return kill_until_gone(lambda: marked_pids(marker))
