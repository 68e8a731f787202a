"""Driver run on host 1 of a `tests.cluster.netns.Hosts` cluster: Llama2-70B timing-only on 32
devices (pp 80) over the hosts; runs `steps` rounds after a warm-up and prints `MARK` lines
around them (the caller reads the veths' byte counters there) and a `RESULT {json}`."""
from __future__ import annotations

import json
import sys

import ray

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.emulate import run_workload
from cent_serve.executor.ray_executor import RayExecutor, ensure_ray


def main() -> None:
    address, steps = sys.argv[1], int(sys.argv[2])
    ensure_ray(address)
    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(32, 80, 1), numerics="off")
    ex = RayExecutor(cfg)
    try:
        run_workload(cfg, ex, 512, 16)  # warm: links up, steady path compiled
        print("MARK start", flush=True)
        sys.stdin.readline()
        run_workload(cfg, ex, 528, steps)
        print("MARK end", flush=True)
        sys.stdin.readline()
        st = ex.stats()
        out = dict(device_hosts={h: sum(d["host"] == h for d in st["devices"]) for h in {d["host"] for d in st["devices"]}},
                   switch_host=st["fabric"]["host"], links=st["links"])
    finally:
        ex.shutdown()
        ray.shutdown()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
