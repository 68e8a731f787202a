"""Driver for test_ray_head.py's lost-head removal test, in its own process (it joins a cluster of its
own): a placement group never granted, the head lost, a thread removing the group (as a re-creation
given up does, `ray_placement.place_devices`), Ray shut down after BLOCKED_S under that thread, then
the last line. Prints one line per step: `removing blocked` or `removed`, `shut down`, `last line`."""
from __future__ import annotations

import threading
import time

BLOCKED_S = 5.0
"""How long the main thread waits for the removal before shutting Ray down (replicas.EXIT_JOIN_S)."""
SETTLE_S = 3.0
"""Wait after the head's loss, so the removal meets a GCS known gone."""


def main() -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from tests.cluster.ray_head import RayHead

    with RayHead(devices=1) as head:
        ray.init(address=head.address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        pg = placement_group([{"cent_device": 1}] * 2)  # never granted: the head has 1 unit
        head.kill()
        time.sleep(SETTLE_S)

        def remove() -> None:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - an error is an answer too: not blocked
                pass
            print("removed", flush=True)

        thread = threading.Thread(target=remove, daemon=True)
        thread.start()
        thread.join(BLOCKED_S)
        if thread.is_alive():
            print("removing blocked", flush=True)
        ray.shutdown()
        print("shut down", flush=True)
        time.sleep(BLOCKED_S)  # the thread's chance to return into a Ray shut down, and end the process
        print("last line", flush=True)


if __name__ == "__main__":
    main()
