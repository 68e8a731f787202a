"""The Ray actor of the CXL switch: a thin async wrapper of `Fabric`.

Async so that the tp ranks of a stage can wait in it together for an
all-gather; every other method is quick and runs on its event loop.
"""
from __future__ import annotations

import asyncio

import ray

from cent_serve.config import CentConfig
from cent_serve.messages import MicroBatch
from fabric.switch import Fabric

GATHER_TIMEOUT_S = 120.0
"""Longest wait inside the switch for the last rank of an all-gather."""


@ray.remote(num_cpus=0)
class FabricActor:
    def __init__(self, cfg: CentConfig) -> None:
        self.fabric = Fabric(cfg)
        self.pending: dict[tuple, dict] = {}

    async def ready(self) -> bool:
        return True

    async def transfer(self, srcs: tuple[int, ...], dsts: tuple[int, ...], mbs: list[MicroBatch]) -> list[MicroBatch]:
        return self.fabric.transfer(srcs, dsts, mbs)

    async def all_gather(self, group: tuple[int, ...], seq_no: int, rank: int, local):
        key = (group, seq_no)
        entry = self.pending.setdefault(key, {"slices": [None] * len(group), "n": 0, "taken": 0,
                                              "event": asyncio.Event()})
        entry["slices"][rank] = local
        entry["n"] += 1
        if entry["n"] == len(group):
            entry["result"] = self.fabric.exchange(entry["slices"])
            entry["event"].set()
        else:
            await asyncio.wait_for(entry["event"].wait(), timeout=GATHER_TIMEOUT_S)
        entry["taken"] += 1
        if entry["taken"] == len(group):
            del self.pending[key]
        return entry["result"]

    async def stats(self) -> dict:
        return self.fabric.stats()
