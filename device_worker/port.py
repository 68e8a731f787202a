"""A device's end of its switch port: runs the rounds that arrive on the link.

Plain Python over a `fabric.link.Link` (the actor in `actor.py` starts it on a thread). The link
carries msgpack maps (`fabric.link`), the device's end of `fabric.rounds`' protocol:

  switch -> device: {"kind": "run", plan fields (`RoundPlan.to_wire`), "ready": input times, "hidden"?}
  device -> switch: {"kind": "done", `RoundOutput.to_wire`} | {"kind": "error", "error": {...}}
  device -> switch: {"kind": "exchange", "tag", "data"}   switch -> device: {"kind": "full", "data"} | {"kind": "abort"}

The layout travels only when it changes; the device keeps the last one it was sent.
"""
from __future__ import annotations

import threading

import numpy as np

from cent_serve.messages import RoundOutput, RoundPlan
from device_worker.kv_cache import KVCacheFull
from device_worker.worker import DeviceWorker
from fabric.link import Link, LinkClosed, error_message, register_error
from fabric.rounds import RoundAborted

EXCHANGE_TIMEOUT_S = 120.0
"""Longest wait for the other ranks of a tensor-parallel exchange."""

register_error(KVCacheFull)
register_error(RoundAborted)


def serve(worker: DeviceWorker, link: Link, lock: threading.Lock) -> None:
    """Answer "run" messages until the switch hangs up."""
    last_layout = None
    while True:
        try:
            msg = link.recv()
        except LinkClosed:
            return
        assert msg.get("kind") == "run", msg.get("kind")
        with lock:
            try:
                plan = RoundPlan.from_wire(msg, last_layout)
                last_layout = plan.layout
                x = RoundOutput(plan.ready_s, np.zeros(0), msg.get("hidden"))
                reply = run_one(worker, link, plan, x)
            except Exception as e:  # noqa: BLE001 - a malformed plan fails the round, not the device
                reply = {"kind": "error", "error": error_message(e)}
        try:
            link.send(reply)
        except LinkClosed:
            return


def run_one(worker: DeviceWorker, link: Link, plan: RoundPlan, x: RoundOutput) -> dict:
    """One call of the worker, its exchanges relayed through the switch; the reply to send."""
    gen = worker.run(plan, x)
    try:
        msg = next(gen)
        while True:
            _, tag, local = msg
            link.send({"kind": "exchange", "tag": tag, "data": local})
            reply = link.recv(EXCHANGE_TIMEOUT_S)
            if reply["kind"] == "abort":
                gen.close()
                return {"kind": "error", "error": error_message(
                    RoundAborted(f"device {worker.device_id}: a peer failed at {tag!r}"))}
            msg = gen.send(reply["data"])
    except StopIteration as stop:
        return {"kind": "done", **stop.value.to_wire()}
    except Exception as e:  # noqa: BLE001 - every failure goes back to the switch
        return {"kind": "error", "error": error_message(e)}
