"""A real two-node Ray cluster on this machine: devices placed over both nodes by their
`cent_device` resource give the single-node numerics and simulated times; a cluster that
lacks the devices fails fast with a clear error; nothing is left behind.

The numerics and times are checked here only where test_hosts.py cannot run (not root, no
network namespaces): there, test_two_and_three_hosts_serve_the_single_host_tokens checks the same
(greedy tokens and simulated times over 2 and 3 hosts equal one process's, the devices spread
over every host) on a cluster whose hosts are apart, and this test checks the placements alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from tests.cluster.multinode_run import HELD_WAIT_S, PROMPTS, REFUSAL_WAIT_S
from tests.cluster.netns import available

HOSTS_CHECK_TOKENS = available() is None
"""test_hosts.py runs here and checks the tokens over hosts (the module docstring)."""

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("devices, pp, tp", [(8, 2, 4)])
def test_two_node_cluster_equals_one_process(devices, pp, tp):
    from cent_serve.executor.generate import generate_batch

    what = "placement" if HOSTS_CHECK_TOKENS else "tokens"
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.multinode_run", str(devices), str(pp), str(tp), what],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    if not HOSTS_CHECK_TOKENS:
        cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
        local = generate_batch(LocalExecutor(cfg), PROMPTS, 8)
        assert out["tokens"] == local.token_ids
        assert out["times"] == local.token_times_s  # bit-identical simulated time across nodes
        assert len(out["nodes"]) == 2  # spread: the stages span both nodes
    # refused at once, not after waiting for room: a wait would last REFUSAL_WAIT_S (60 s); a refusal takes under
    # 0.03 s here, so a tenth of the wait (6 s) leaves load a 200x margin and still tells the two apart
    refused_by = REFUSAL_WAIT_S / 10
    assert "needs 16 cent_device units; the cluster has 8" in out["too_many_error"]
    assert out["too_many_s"] < refused_by, out["too_many_s"]
    assert "needs 16 cent_device units (2 replicas of 8); the cluster has 8" in out["copies_error"]
    assert "or use --devices 8" in out["copies_error"] and out["copies_s"] < refused_by, out["copies_s"]
    assert out["two_replicas"] == "placed"  # both replicas' groups (they had one name: the second failed)
    # placement replica: each replica on one node, the first two on different nodes (a node's loss fails
    # only its replica); the third shares one, as no node is free; none held after shutdown
    first, second, third = out["replica_nodes"]
    assert len(first) == len(second) == len(third) == 1 and first != second and third in (first, second)
    assert out["replica_hosts_held"] == 0
    assert "puts a replica's 6 devices on one host; no host advertises 6 cent_device units" in out["whole_error"]
    assert "or use --placement spread" in out["whole_error"] and out["whole_s"] < refused_by, out["whole_s"]
    # held by another job: refused once its own timeout has passed (load can only lengthen the wait, so the lower
    # bound holds; the message's figure is the one read from the config); the upper bound is a hang guard
    assert f"did not grant 8 cent_device bundles (spread) within {HELD_WAIT_S:g} s" in out["held_error"]
    assert HELD_WAIT_S <= out["held_s"] < 20 * HELD_WAIT_S, out["held_s"]
    assert "2 of the cluster's 8 units are free now" in out["held_error"]  # free, not the totals per node
    assert out["alive_actors"] == 0 and out["live_pgs"] == 0
