"""A device's ends of the round chain: the links its rounds arrive on and leave by.

Plain Python over `fabric.link.Link`s (the actor in `actor.py` makes the links and runs `serve`
on a thread). A round reaches a device as one message on its input link: from the host for the
first unit, else from the previous unit's leader. The device runs it on its `DeviceWorker` (with
tp > 1 and full numerics its exchanges go through the switch, whose `Rendezvous` keeps the
unit's ranks in lockstep). A rank that is not its unit's leader sends its output to the leader;
the leader combines the unit's outputs and hands the round on (`fabric.rounds.hand_on`): over
its own switch port (`Fabric.hop`, clocked here, at the sending end: each port receives from one
sender) to the next unit's devices, or after the last unit to the host. A failure travels the
same way, as an "error" message, so the host hears of it whichever device failed; a device
whose input link breaks says so downstream, then stops.

A round that brings a device nothing but times (the same layout as the link's last round, no
new or finished sequences, no token ids, logits or activations: steady timing-only decoding) is
a "tick": [ready times | the round's joules so far] as raw float64 bytes. A one-device unit
answers ticks in compiled code (`device_worker.steady`: its time pass, its joules and its
port's hop, `cent_serve.timing.clock.tick`) and sends ticks on; the same floats as the "run"
path, which every other round takes.

  host or previous leader -> device: {"kind": "run", plan fields, "ready", "energy"?, "hidden"?}
                                     | {"kind": "tick", "round", "x"} | {"kind": "error", "error"}
                                     | {"kind": "stop"}: the executor shuts down (`HostEnd.stop`);
                                       a leader hands it on, and the device ends without a warning
  rank -> its leader: {"kind": "done", `RoundOutput.to_wire`} | {"kind": "error", "error"}
  last leader -> host: the same, or {"kind": "tick", "round", "x": [ready | joules | sampled]}

Only a one-device unit sends ticks on; a unit of several devices (tp > 1) takes a tick in on the
general path and sends "run" messages.
  device <-> switch: {"kind": "exchange", "round", "tag", "data"} -> {"kind": "full", "data"}
                     | {"kind": "abort", "reason"};  {"kind": "failed", "round"}: this rank failed

The layout travels only when it changes; each end of a link keeps the last one it carried.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from cent_serve.messages import Layout, RoundOutput, RoundPlan
from device_worker.kv_cache import KVCacheFull
from cent_serve.timing.clock import hand_on_tick
from device_worker.steady import CROSSED, NEED, SEND_FAILED, buffers, steady_loop
from device_worker.worker import DeviceWorker
from fabric.link import HEADER, Link, LinkClosed
from fabric.listener import LinkBook
from fabric.rounds import STOP_MESSAGE, Place, RoundAborted, chain_message, combine, hand_on, tick_message
from fabric.switch import Fabric
from fabric.wire import RECV_CHUNK_BYTES, WireError, encode, error_message, register_error, remote_error

log = logging.getLogger("cent.device")

PORT_TIMEOUT_S = 60.0
"""Longest wait for a link this device needs to come up."""

register_error(KVCacheFull)
register_error(RoundAborted)
register_error(LinkClosed)


class DevicePort:
    """Runs the rounds that reach one device (see the module docstring)."""

    def __init__(self, worker: DeviceWorker, place: Place, links: LinkBook, switch: Link,
                 lock: threading.Lock) -> None:
        self.worker, self.place, self.links, self.switch, self.lock = worker, place, links, switch, lock
        self.fabric = Fabric(worker.cfg)
        """This device's switch ports: the hops it sends (merged with the others' for stats)."""
        self.exchanges = worker.numerics and worker.tp > 1
        """Whether this device's rounds meet its unit's other ranks at the switch."""
        self.wait_s = worker.cfg.server.peer_wait_s
        """Longest wait within a round for the other ranks of an exchange, or (a leader) for another
        rank's output: the host's `server.round_timeout_s` with a margin (`ServerConfig.peer_wait_s`),
        so a round that is merely long ends by the host's limit, raised or lowered, not by a fixed
        one here, and the host's timeout (which names its field) comes first for a stalled peer."""
        self.sent = np.zeros(2, dtype=np.int64)
        """Messages and bytes (frames with their headers) this device sent on its links."""
        self.fast = not worker.numerics and len(place.peers) == 1
        """Whether ticks run in one compiled call here (timing-only, a one-device unit)."""
        if self.fast and not place.is_last:
            worker.clock.set_route(place.device_id, place.next_ids, self.fabric.port.latency_s,
                                   self.fabric.port.flit_bytes)

    def serve(self, outputs: list[Link]) -> None:
        """Answer rounds until the input link closes or a stop comes. `outputs`: where this device's results go
        (the next unit's devices, its unit's leader, or the host)."""
        p = self.place
        try:
            inp = self.links.wait(("host",) if p.is_first else ("hop", p.prev_leader), PORT_TIMEOUT_S)
            ranks = [self.links.wait(("rank", d), PORT_TIMEOUT_S) for d in p.peers[1:]] if p.is_leader else []
            if p.is_leader and p.is_last:
                outputs = [self.links.wait(("host",), PORT_TIMEOUT_S)]
        except TimeoutError as exc:
            log.error("device %d cannot serve rounds: %s", p.device_id, exc)
            return
        self._last_in: Layout | None = None
        self._last_out: Layout | None = None
        self._tick_args: tuple | None = None
        self._out_fds = np.array([link.fileno() for link in outputs], dtype=np.int64)
        while True:
            if self._tick_args is not None and not inp.buffered() and not self._steady(inp, outputs):
                return
            try:
                msg = inp.recv()
            except LinkClosed as exc:
                source = "the host" if p.is_first else f"device {p.prev_leader}"
                self._send(outputs, encode(_error(LinkClosed(
                    f"device {p.device_id}'s input link from {source} closed ({source} or the link is gone): {exc}"))))
                return
            except WireError as exc:
                msg = _error(exc)
            kind = msg.get("kind")
            if kind == "stop":  # the executor shuts down (`HostEnd.stop`): hand it on and end, no warning
                if p.is_leader:
                    self._send(outputs, STOP_MESSAGE, quiet=True)
                return
            if kind in ("run", "tick"):
                try:
                    out = self._round(msg, ranks)
                except Exception as exc:  # noqa: BLE001 - an output that cannot be sent fails the round
                    out = encode(_error(exc))
            elif p.is_leader:  # a failure upstream: pass it on, run nothing
                out = encode(msg if kind == "error" else _error(
                    WireError(f"device {p.device_id} got a {kind!r} message on its input link")))
            else:
                continue
            if not self._send(outputs, out):
                return

    def _steady(self, inp: Link, outputs: list[Link]) -> bool:
        """Ticks in compiled code (`device_worker.steady`) until a message that is not one, which
        is left for the link to read; False when this device must stop (an output is gone)."""
        w, have = self.worker, 0
        while True:
            try:
                status, have, rid, y, n_crossed, where = steady_loop(
                    inp.fileno(), self._out_fds, self.sent, self._inbuf, have, self._outbuf, *w.timer.context_table(),
                    *self._tick_args)
                if status == NEED:
                    w.fill_table(self._lanes)
                    continue
                if status == CROSSED:
                    blob = self._after_crossing(rid, y, w.seqs.state[2, :n_crossed])
                    if not self._send(outputs, blob):
                        return False
                    continue
                if status == SEND_FAILED:
                    return self._finish_send(outputs, *where.tolist())
            except Exception as exc:  # noqa: BLE001 - a failure here goes down the chain like any other
                self._tick_args = None  # the general path from now on
                return self._send(outputs, encode(_error(exc)))
            # OTHER, CLOSED, FAILED: the link reads on (and says what happened)
            inp.unread(self._inbuf[:have].tobytes())
            return True

    def _after_crossing(self, rid: int, y: np.ndarray, crossed: np.ndarray) -> bytes:
        """A tick whose sequences (`crossed`) crossed into new KV blocks, its device's output `y`: the
        blocks first (KVCacheFull fails the round before it is handed on, as on the general path),
        then the hand-on (`hand_on_tick`); the message to send."""
        try:
            self.worker.grow_kv(crossed)
        except Exception as exc:  # noqa: BLE001
            return encode(_error(exc))
        w, lp = self.worker, self._lanes
        return tick_message(rid, hand_on_tick(y, lp.ints, lp.floats, w.clock.f, w.clock.i, self.fabric.ports,
                                              self.fabric.counts))

    def _finish_send(self, outputs: list[Link], index: int, done_bytes: int, length: int) -> bool:
        """A send from compiled code failed (an interrupt, or the peer is gone): send the rest of the
        frame to that output, and the whole frame to the ones after it, the Python way."""
        frame = self._outbuf[:length].tobytes()
        try:
            outputs[index].sock.sendall(frame[done_bytes:])
            for k, link in enumerate(outputs[index + 1:], start=index + 1):
                self.sent += (1, length)
                link.sock.sendall(frame)
        except OSError as exc:
            log.warning("device %d stops: an output link is gone (%s)", self.place.device_id, exc)
            return False
        return True

    def _round(self, msg: dict, ranks: list[Link]) -> bytes:
        """A round on the general path (any unit, numerics, a changed layout); the message to
        send on (a rank that is not its unit's leader sends it to the leader)."""
        p = self.place
        self._tick_args = None  # no tick runs on the fast path until this round has laid its state out
        try:
            if msg["kind"] == "tick":
                n = len(self._last_in)
                x = np.frombuffer(msg["x"])
                if x.shape != (n + len(self._last_in.seq_ids),):
                    raise WireError(f"a tick of {x.shape[0]} values for {n} lanes and {len(self._last_in.seq_ids)} "
                                    "sequences")
                plan = RoundPlan(self._last_in, x[:n], int(msg["round"]))
                x = RoundOutput(plan.ready_s, x[n:])
            else:
                plan = RoundPlan.from_wire(msg, self._last_in)
                energy = msg["energy"] if "energy" in msg else np.zeros(len(plan.layout.seq_ids))
                x = RoundOutput(plan.ready_s, energy, msg.get("hidden"))
            self._last_in = plan.layout
        except Exception as exc:  # noqa: BLE001 - a malformed plan fails the round, not the device
            result = exc
        else:
            result = self._run(plan, x)
            if self.fast and not isinstance(result, BaseException):
                w = self.worker  # what the next ticks take: this layout's, and the positions it laid out
                self._lanes = lp = w.timer.lane_plan(plan.layout)
                self._tick_args = (w.seqs.state, lp.ints, lp.floats, w.clock.f, w.clock.i, self.fabric.ports,
                                   self.fabric.counts)
                self._inbuf, self._outbuf = buffers(len(plan.layout), w.seqs.state.shape[1], RECV_CHUNK_BYTES)
        if not p.is_leader:
            reply = _error(result) if isinstance(result, BaseException) else {"kind": "done", **result.to_wire()}
            return encode(reply)
        results = [result] + [self._from_rank(d, link) for d, link in zip(p.peers[1:], ranks)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            real = [e for e in failed if not isinstance(e, RoundAborted)]
            return encode(_error((real or failed)[0]))
        with self.lock:
            z = hand_on(x.energy_j, combine(results), self.fabric, self.worker.timer, plan.layout, p.peers, p.next_ids)
        if p.is_last:
            return encode({"kind": "done", **z.to_wire()})
        out = chain_message(plan, z, self._last_out)
        self._last_out = plan.layout
        return encode(out)

    def _run(self, plan: RoundPlan, x: RoundOutput) -> RoundOutput | BaseException:
        """This rank's output of the round, or its error (exchanges relayed by the switch)."""
        with self.lock:
            gen = self.worker.run(plan, x)
            value, throw = None, None
            try:
                while True:
                    msg = gen.throw(throw) if throw is not None else gen.send(value)
                    kind, payload = self._exchange(plan.round_id, msg[1], msg[2])
                    value, throw = (payload, None) if kind == "full" else (None, RoundAborted(
                        f"device {self.place.device_id}: {payload}"))
            except StopIteration as stop:
                return stop.value
            except Exception as exc:  # noqa: BLE001 - every failure goes down the chain
                if self.exchanges and not isinstance(exc, RoundAborted):
                    try:  # release the unit's other ranks waiting at the switch
                        self.switch.send({"kind": "failed", "round": plan.round_id})
                    except LinkClosed:
                        pass
                return exc

    def _exchange(self, round_id: int, tag: str, data: np.ndarray) -> tuple[str, object]:
        self.switch.send({"kind": "exchange", "round": round_id, "tag": tag, "data": data})
        try:
            reply = self.switch.recv(self.wait_s)
        except TimeoutError:
            raise TimeoutError(f"device {self.place.device_id}: the other ranks of exchange {tag!r} gave nothing "
                               f"{self._waited()}") from None
        return ("full", reply["data"]) if reply.get("kind") == "full" else ("abort", reply.get("reason"))

    def _from_rank(self, device_id: int, link: Link) -> RoundOutput | BaseException:
        """Another rank's output for the leader (waited for up to `wait_s`), or its error."""
        try:
            msg = link.recv(self.wait_s)
        except TimeoutError:
            return TimeoutError(f"device {self.place.device_id}: no output from device {device_id} (a rank of its "
                                f"unit) {self._waited()}")
        except (LinkClosed, WireError) as exc:
            return exc
        if msg.get("kind") == "done":
            return RoundOutput.from_wire(msg)
        return remote_error(msg.get("error"))

    def _waited(self) -> str:
        """How long a wait that ran out was, and what sets it (a timeout's message)."""
        return (f"within {self.wait_s:g} s (server.round_timeout_s={self.worker.cfg.server.round_timeout_s:g} "
                "with a margin): a device stopped or hung")

    def _send(self, outputs: list[Link], blob: bytes, quiet: bool = False) -> bool:
        """One message to every output; False once an output is gone (this device stops, with a
        warning unless `quiet`: the chain is stopping, its next devices may be gone already)."""
        try:
            for link in outputs:
                self.sent += (1, HEADER.size + len(blob))  # counted first: a reader of stats after the round sees it
                link.send_bytes(blob)
        except LinkClosed as exc:
            if not quiet:
                log.warning("device %d stops: %s", self.place.device_id, exc)
            return False
        return True


def _error(exc: BaseException) -> dict:
    return {"kind": "error", "error": error_message(exc)}
