"""Driver for test_multinode.py, run in its own process: a two-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`), each node advertising `cent_device`; prints JSON results.
Arguments: devices, pp, tp, and `tokens` (generate on the devices spread over both nodes) or
`placement` (only the placements and their refusals)."""
from __future__ import annotations

import json
import os
import sys
import time

import ray
from ray.cluster_utils import Cluster

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor.generate import generate_batch
from cent_serve.executor.ray_executor import WORKER_NICENESS_ENV, PlacementError, RayExecutor, _replica_hosts

PROMPTS = [[1, 9, 8, 7], [1, 50, 60]]
REFUSAL_WAIT_S = 60.0
"""`server.placement_timeout_s` of the configs that must be refused before any wait for room: a refusal that
waited for the group would take this long (test_multinode bounds each refusal at a tenth of it), and would still
fail inside the driver's 300 s timeout, its cleanup run."""
HELD_WAIT_S = 3.0
"""`server.placement_timeout_s` of the config whose group cannot be granted while another job holds the units."""


def main() -> None:
    devices, pp, tp = (int(x) for x in sys.argv[1:4])
    tokens = sys.argv[4] == "tokens"
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # as ensure_ray's local Ray: devices not starved
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, resources={"cent_device": 4}))
    cluster.add_node(num_cpus=1, resources={"cent_device": 4})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    out = {}
    try:
        if tokens:
            cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
            ex = RayExecutor(cfg)
            try:
                gen = generate_batch(ex, PROMPTS, 8)
                out.update(tokens=gen.token_ids, times=gen.token_times_s,
                           nodes=sorted(set(ex.placement().values())))
            finally:
                ex.shutdown()
        pair = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 2, 2), numerics="off")
        replicas = []
        try:  # two replicas of one config, as the engine places them: each its own placement group
            replicas = [RayExecutor(pair), RayExecutor(pair)]
            out["two_replicas"] = "placed"
        except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
            out["two_replicas"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            for ex in replicas:
                ex.shutdown()
        apart = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="off")
        apart.server.placement = "replica"
        replicas = []
        try:  # a node per replica while one is free, then a shared one (with a warning); each on one node
            for _ in range(3):
                replicas.append(RayExecutor(apart))
                out.setdefault("replica_nodes", []).append(sorted(set(replicas[-1].placement().values())))
        finally:
            for ex in replicas:
                ex.shutdown()
        out["replica_hosts_held"] = sum(_replica_hosts.values())
        whole = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(6, 6, 1), numerics="off")
        whole.server.placement = "replica"
        whole.server.placement_timeout_s = REFUSAL_WAIT_S
        t0 = time.monotonic()
        try:
            RayExecutor(whole)
        except PlacementError as exc:
            out["whole_error"], out["whole_s"] = str(exc), time.monotonic() - t0
        too_many = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(16, 2, 8), numerics="off")
        too_many.server.placement_timeout_s = REFUSAL_WAIT_S
        t0 = time.monotonic()
        try:
            RayExecutor(too_many)
        except PlacementError as exc:
            out["too_many_error"], out["too_many_s"] = str(exc), time.monotonic() - t0
        copies = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(16, 8, 1), numerics="off")
        copies.server.placement_timeout_s = REFUSAL_WAIT_S
        t0 = time.monotonic()
        try:  # two replicas of 8 (the engine builds both): the first fits, so it is the whole system's 16 that
            RayExecutor(copies, replicas=2)  # must be refused
        except PlacementError as exc:
            out["copies_error"], out["copies_s"] = str(exc), time.monotonic() - t0
        hog = ray.util.placement_group([{"cent_device": 1}] * 6)  # another job holds 6 of the 8 units
        ray.get(hog.ready(), timeout=60)
        held = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="off")
        held.server.placement_timeout_s = HELD_WAIT_S
        t0 = time.monotonic()
        try:
            RayExecutor(held)
        except PlacementError as exc:
            out["held_error"], out["held_s"] = str(exc), time.monotonic() - t0
        ray.util.remove_placement_group(hog)
        time.sleep(0.5)
        out["alive_actors"] = sum(1 for a in ray._private.state.actors().values() if a["State"] == "ALIVE")
        out["live_pgs"] = sum(1 for p in ray.util.placement_group_table().values() if p["state"] != "REMOVED")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
