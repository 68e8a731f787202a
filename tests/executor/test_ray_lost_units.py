"""`ray_placement._lost_units`, the history that refuses a one-node cluster without `cent_device` units,
read from a stubbed Ray (no cluster): which records are a lost node with units and which are not, so a
plain Ray is never refused for a record that says nothing of units (review of 455ae19)."""
from __future__ import annotations

import importlib

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset

ALIVE = {"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 2.0}}
DEAD = {"NodeID": "d" * 56, "NodeManagerAddress": "10.0.0.2", "Alive": False, "Resources": {}}


def _group(bundle: dict, latency_ms: float) -> dict:
    """A `placement_group_table()` entry, in Ray 2.60's shape, of one bundle."""
    return {"bundles": {0: bundle}, "stats": {"end_to_end_creation_latency_ms": latency_ms}}


@pytest.fixture
def stub(monkeypatch):
    """Set (nodes, groups, units seen by this process) for `_lost_units`; returns the module."""
    from cent_serve.executor import ray_placement as rx

    rpg = importlib.import_module("ray.util.placement_group")  # the module: ray.util's attribute is its function

    def set_(nodes, groups, seen):
        monkeypatch.setattr(rx.ray, "nodes", lambda: nodes)
        monkeypatch.setattr(rpg, "placement_group_table", lambda pg=None: dict(enumerate(groups)))
        monkeypatch.setattr(rx, "_units_seen", dict(seen))
        return rx
    return set_


def _cfg() -> CentConfig:
    return CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="off", executor="ray")


@pytest.mark.parametrize("groups, seen", [
    ([], {}),  # a plain Ray that lost a node: nothing says it had units
    ([_group({"cent_device": 1.0}, 0.0)], {}),  # a group of units never granted (pending, removed)
    ([_group({"CPU": 1.0}, 12.5)], {}),  # granted, of other resources
    ([], {"e" * 56: 2}),  # a node with units this process saw on another cluster (ids are unique)
])
def test_records_that_say_nothing_of_lost_units_leave_a_one_node_ray_plain(stub, groups, seen):
    rx = stub([ALIVE, DEAD], groups, seen)
    assert rx._lost_units(_cfg()) == ""
    assert rx.check_cluster_holds(_cfg(), 2)[0] == {ALIVE["NodeID"]: 0}


def test_a_granted_group_of_units_or_a_dead_node_seen_with_units_is_a_lost_node(stub):
    rx = stub([ALIVE, DEAD], [_group({"cent_device": 1.0}, 12.5)], {})
    assert rx._lost_units(_cfg()) == ("10.0.0.2 (dddddddd) (units not seen by this server: the cluster granted a "
                                      "placement group of cent_device bundles before it joined)")
    rx = stub([ALIVE, DEAD], [], {DEAD["NodeID"]: 4})
    assert rx._lost_units(_cfg()) == "10.0.0.2 (dddddddd): 4"
    with pytest.raises(rx.PlacementError, match=r"^the node\(s\) that advertised cent_device units are gone: "
                                                r"10\.0\.0\.2 \(dddddddd\): 4, and the live node\(s\) advertise none"):
        rx.check_cluster_holds(_cfg(), 2)
