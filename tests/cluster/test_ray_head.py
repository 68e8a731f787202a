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
