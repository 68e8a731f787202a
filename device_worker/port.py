"""A device's end of its switch port: runs the rounds that arrive on the link.

Plain Python over a `fabric.link.Link` (the actor in `actor.py` starts it on a thread).
At a tensor-parallel exchange point the worker's generator yields a slice; it goes to
the switch, which answers with the whole once every rank of the stage has sent its part.
"""
from __future__ import annotations

import threading

from device_worker.worker import DeviceWorker
from fabric.link import Link, LinkClosed, sendable_error

EXCHANGE_TIMEOUT_S = 120.0
"""Longest wait for the other ranks of a tensor-parallel exchange."""


class RoundAborted(RuntimeError):
    """Another rank of this device's stage failed mid-round."""


def serve(worker: DeviceWorker, link: Link, lock: threading.Lock) -> None:
    """Answer ("run", wave, free_seq_ids) messages until the switch hangs up."""
    while True:
        try:
            kind, wave, free_seq_ids = link.recv()
        except LinkClosed:
            return
        assert kind == "run", kind
        with lock:
            reply = run_one(worker, link, wave, free_seq_ids)
        try:
            link.send(reply)
        except LinkClosed:
            return


def run_one(worker: DeviceWorker, link: Link, wave, free_seq_ids) -> tuple:
    """One call of the worker, its exchanges relayed through the switch."""
    gen = worker.run_wave(wave, free_seq_ids)
    try:
        msg = next(gen)
        while True:
            _, tag, local = msg
            link.send(("exchange", tag, local))
            reply = link.recv(EXCHANGE_TIMEOUT_S)
            if reply[0] == "abort":
                gen.close()
                return ("error", RoundAborted(f"device {worker.device_id}: a peer failed at {tag!r}"))
            msg = gen.send(reply[1])
    except StopIteration as stop:
        return ("done", stop.value)
    except Exception as e:  # noqa: BLE001 - every failure goes back to the switch
        return ("error", sendable_error(e))
