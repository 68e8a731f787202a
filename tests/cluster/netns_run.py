"""Driver run on host 1 of a `tests.cluster.netns.Hosts` cluster: joins it, serves greedy tokens on
Ray device actors spread over the hosts, prints one `RESULT {json}` line (tokens, simulated
times, which host each device and the switch ran on)."""
from __future__ import annotations

import json
import sys

import ray

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor.generate import generate_batch
from cent_serve.executor.ray_executor import RayExecutor, ensure_ray
from tests.cluster.multinode_run import PROMPTS


def main() -> None:
    address, devices, pp, tp = sys.argv[1], *(int(x) for x in sys.argv[2:5])
    ensure_ray(address)
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics="full")
    ex = RayExecutor(cfg)
    try:
        gen = generate_batch(ex, PROMPTS, 8)
        st = ex.stats()
        out = dict(tokens=gen.token_ids, times=gen.token_times_s,
                   device_hosts=sorted({d["host"] for d in st["devices"]}),
                   switch_host=st["fabric"]["host"], driver_host=ray.util.get_node_ip_address(),
                   nodes=len([n for n in ray.nodes() if n["Alive"]]))
    finally:
        ex.shutdown()
        ray.shutdown()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
