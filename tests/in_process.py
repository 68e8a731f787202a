"""A `cent` command run in the test's process, seen as its subprocess would be seen: for the many
refusals of a command that also has a test through the real entry point (a new interpreter's start
is most of a refusal's cost)."""
from __future__ import annotations

import logging
import subprocess
import warnings


def cent_in_process(*args: str, capfd, caplog) -> subprocess.CompletedProcess:
    """`python -m cent_serve.cli ARGS` without a new interpreter, as a finished process: its exit code
    and stdout, and as its stderr what went to fd 2, each log record at INFO or above (the level
    `cent simulate`'s `basicConfig` prints, which pytest's own root handlers make a no-op in this
    process) and each warning Python shows by default (not the Deprecation, Import and Resource
    warnings it hides), so a check of its stderr lines counts the same lines. A traceback is raised."""

    from cent_serve.cli import main

    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors exit from inside the parser
            code = exc.code
    out, err = capfd.readouterr()
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    err += "".join(f"{r.name}: {r.getMessage()}\n" for r in caplog.records if r.levelno >= logging.INFO)
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in shown if not issubclass(w.category, hidden))
    return subprocess.CompletedProcess(["cent", *args], code, out, err)
