"""The Makefile's install step, run for real on a stand-in `.venv/bin/python` that records what it is
asked (nothing is downloaded): uv first (pip installs it, then uv installs the project compiling its
bytecode), pip when uv fails, pip alone with INSTALLER=pip, and an unknown INSTALLER refused in one line
before anything runs. `make test` writes bytecode even where the shell says not to."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls"
case "$*" in *"uv pip install"*) [ -n "$FAIL_UV" ] && exit 1;; esac
case "$*" in "-m pip install -e"*) [ -n "$FAIL_PIP" ] && exit 1;; esac
exit 0
"""
"""What `.venv/bin/python` is here: it notes each call's arguments; `-m uv pip install` fails when FAIL_UV is set,
pip's install of the project when FAIL_PIP is."""
PIP = "-m pip install -e .[test]"
UV = ["-m pip install -q --only-binary uv uv", "-m uv pip install --compile-bytecode --python .venv/bin/python -e .[test]"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _install(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / "pyproject.toml").touch()
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "INSTALLER")}
    run = subprocess.run(["make", "install", *args], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(clean, **env), timeout=60)
    calls = tmp_path / ".venv" / "calls"
    return run, calls.read_text().splitlines() if calls.exists() else []


def test_uv_installs_the_project_compiling_its_bytecode(tmp_path):
    run, calls = _install(tmp_path)
    assert run.returncode == 0, run.stderr
    assert calls == UV and (tmp_path / ".venv" / ".installed").exists()


def test_pip_installs_it_when_uv_fails_and_says_so(tmp_path):
    run, calls = _install(tmp_path, FAIL_UV="1")
    assert run.returncode == 0, run.stderr
    assert calls == [*UV, PIP]
    assert "make: uv did not install the project (pip could not install uv, or uv failed); installing with pip" in run.stderr


def test_installer_pip_uses_pip_alone(tmp_path):
    run, calls = _install(tmp_path, "INSTALLER=pip")
    assert run.returncode == 0, run.stderr
    assert calls == [PIP]


@pytest.mark.parametrize("args, env, want", [((), dict(FAIL_UV="1", FAIL_PIP="1"), [*UV, PIP]),
                                             (("INSTALLER=pip",), dict(FAIL_PIP="1"), [PIP])],
                         ids=["uv-then-pip", "pip"])
def test_a_failing_pip_fails_make_and_leaves_nothing_marked_installed(tmp_path, args, env, want):
    """The last installer's failure is make's: no stamp, so the next `make run` / `make test` installs again
    rather than running on a half-installed .venv."""
    run, calls = _install(tmp_path, *args, **env)
    assert run.returncode != 0 and calls == want and not (tmp_path / ".venv" / ".installed").exists()


def test_an_unknown_installer_is_refused_before_anything_runs(tmp_path):
    run, calls = _install(tmp_path, "INSTALLER=conda")
    assert run.returncode != 0 and calls == [] and not (tmp_path / ".venv" / ".installed").exists()
    assert ("make: INSTALLER=conda is neither uv nor pip: set INSTALLER=uv (the default) or INSTALLER=pip"
            in run.stderr)


def test_make_test_writes_bytecode_where_the_shell_says_not_to():
    """PYTHONDONTWRITEBYTECODE set in the shell (as on some CI images) would have every device actor and
    server the tests start compile the project again: `make test` empties it for pytest."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(env, PYTHONDONTWRITEBYTECODE="1"), timeout=60).stdout
    assert out.splitlines()[-1].startswith("PYTHONDONTWRITEBYTECODE= .venv/bin/python -m pytest"), out
