"""A round through the units of a mapping: the chain of units, the one lockstep relay, and the
steps every driver of a round shares.

A unit is the devices that take one call each per round, in lockstep: one device holding
consecutive pipeline stages, or the tp devices of a tensor-parallel stage (`execution_units`).
A round runs the units in stage order. For each unit:

1. every rank runs the round on its device (`DeviceWorker.run`); with tp > 1 and full numerics
   the ranks meet at exchange points, where the one lockstep relay (`Rendezvous`) hands each the
   concatenation of their slices (`Fabric.all_gather_data`), or releases them when a rank fails;
2. the unit's output is its first rank's (the ranks agree on time) with every rank's energy
   (`combine`);
3. `hand_on` adds the unit's energy to the round's and moves the output to the next unit over
   the switch (`Fabric.hop`: a multicast per lane from the unit's first device), or, after the
   last unit, adds the host's sampling time (`sampled_s`: the only place host time is added).

Two drivers run these steps. In one process `run_round` loops over the units (`run_unit` drives
the ranks' generators through a `Rendezvous`, or, for a timing-only tensor-parallel unit, runs
its first rank's time pass once for its twin ranks: `Lockstep`; a tick through units of one
timing-only device each runs as on Ray, the compiled `tick` per device: `tick_round`). Through Ray the round is a chain of links
(`device_worker.port`): each unit's first device (its leader) receives the round, gathers its
ranks' outputs, combines, hops and sends the round on to the next unit's devices; the fabric
actor runs the units' `Rendezvous` for the exchanges. `chain_places` says where each device sits.
Both give the same floats: the same functions in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import msgpack
import numpy as np

from cent_serve.messages import Layout, RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from cent_serve.timing.clock import hand_on_tick, ranks_joules, tick
from cent_serve.timing.mapping import Mapping
from fabric.wire import encode, remote_error
from fabric.switch import Fabric


class RoundAborted(RuntimeError):
    """Another rank of this device's stage failed mid-round (or the ranks left lockstep)."""


@dataclass(frozen=True)
class Unit:
    """Devices that take one call each, in lockstep, per round."""

    device_ids: tuple[int, ...]


def execution_units(mp: Mapping) -> list[Unit]:
    """Units in stage order; consecutive stages on one device merge into one unit."""
    units: list[Unit] = []
    for stage in mp.stages:
        if units and units[-1].device_ids == stage.device_ids:
            continue
        units.append(Unit(stage.device_ids))
    seen = [d for u in units for d in u.device_ids]
    assert len(seen) == len(set(seen)), f"a device in two units: {[u.device_ids for u in units]}"
    return units


@dataclass(frozen=True)
class Place:
    """Where a device sits in its replica's chain of units."""

    device_id: int
    unit: int
    """Index of its unit, in stage order."""
    peers: tuple[int, ...]
    """Its unit's devices, rank order (the first is the unit's leader)."""
    next_ids: tuple[int, ...]
    """The next unit's devices; () for the last unit (its leader answers the host)."""
    prev_leader: int | None
    """The previous unit's leader, which sends this device its rounds (None: the host does)."""

    @property
    def rank(self) -> int:
        return self.peers.index(self.device_id)

    @property
    def is_leader(self) -> bool:
        return self.peers[0] == self.device_id

    @property
    def leader(self) -> int:
        return self.peers[0]

    @property
    def is_first(self) -> bool:
        return self.unit == 0

    @property
    def is_last(self) -> bool:
        return not self.next_ids


def chain_places(units: list[Unit]) -> dict[int, Place]:
    """Every device's place. Each device port receives from one sender per round (the host, or
    the previous unit's leader), so a hop's switch ports can be clocked at the sending end."""
    places = {}
    for k, u in enumerate(units):
        nxt = units[k + 1].device_ids if k + 1 < len(units) else ()
        prev = units[k - 1].device_ids[0] if k else None
        for d in u.device_ids:
            places[d] = Place(d, k, u.device_ids, nxt, prev)
    return places


Reply = tuple[str, object]
"""What the relay answers a rank at an exchange: ("full", the concatenation) or ("abort", reason)."""


class Rendezvous:
    """The lockstep relay of one unit's exchanges (the one copy: `run_unit` and the fabric actor
    use it). Each rank offers its slice at an exchange point; once all `tp` ranks offered the
    same tag, every one gets the concatenation. A rank that fails, finishes while others wait, or
    offers another tag breaks the round: the ranks waiting are released with ("abort", reason), and
    later offers in that round are answered the same at once. Not thread-safe: callers serialize."""

    def __init__(self, fabric: Fabric, tp: int) -> None:
        self.fabric, self.tp = fabric, tp
        self._round: object = None
        self._tag: str | None = None
        self._slices: dict[int, np.ndarray] = {}
        self._broken: dict[object, str] = {}  # round id -> why (the last few rounds)
        self._closed: str | None = None

    def close(self, reason: str) -> dict[int, Reply]:
        """A rank is gone for good (its device died): release the ranks waiting, and answer every
        later offer with abort (the replica is re-created)."""
        self._closed = reason
        return self.break_round(None, reason)

    def offer(self, rank: int, round_id, tag: str, data: np.ndarray) -> dict[int, Reply]:
        """Rank `rank` reached exchange `tag` of round `round_id`: the replies to deliver now."""
        if self._closed is not None:
            return {rank: ("abort", self._closed)}
        if round_id in self._broken:
            return {rank: ("abort", self._broken[round_id])}
        if self._slices and (round_id != self._round or tag != self._tag):
            reason = (f"ranks left lockstep: rank {rank} at {tag!r} of round {round_id}, others at {self._tag!r} of "
                      f"round {self._round}")
            self._broken[round_id] = reason
            return self.break_round(self._round, reason, also=rank)
        assert rank not in self._slices, f"rank {rank} offered twice at {tag!r}"
        self._round, self._tag = round_id, tag
        self._slices[rank] = data
        if len(self._slices) < self.tp:
            return {}
        full = self.fabric.all_gather_data([self._slices[r] for r in range(self.tp)])
        replies = {r: ("full", full) for r in self._slices}
        self._slices = {}
        return replies

    def done(self, rank: int, round_id) -> dict[int, Reply]:
        """Rank `rank` finished round `round_id`: ranks still waiting in it can never complete."""
        if self._slices and self._round == round_id and rank not in self._slices:
            return self.break_round(round_id, f"ranks left lockstep: rank {rank} finished while others "
                                              f"wait at {self._tag!r}")
        return {}

    def break_round(self, round_id, reason: str, also: int | None = None) -> dict[int, Reply]:
        """The round failed (a rank raised, or left lockstep; `round_id` None: whatever round is
        waiting): release the ranks waiting, remember it for the ranks still to come."""
        if round_id is None:
            if not self._slices:
                return {}
            round_id = self._round
        self._broken[round_id] = reason
        while len(self._broken) > 8:
            del self._broken[next(iter(self._broken))]
        waiting = {}
        if round_id == self._round:  # a late report of an earlier round leaves a later one alone
            waiting = {r: ("abort", reason) for r in self._slices}
            self._slices = {}
        if also is not None:
            waiting[also] = ("abort", reason)
        return waiting


class Lockstep:
    """A timing-only tensor-parallel unit in one process: its ranks are twins (equal clocks and
    positions, one timer: `DeviceWorker.is_twin`), and a time pass over equal state and inputs
    is the same computation, so the first rank runs it and the others copy its clocks and
    positions instead of running it again (that was seven eighths of a tp 8 replay's time). The
    ranks' clocks and positions are rows of stacked arrays (`DeviceClock.keep_in`,
    `SeqTable.keep_in`), copied in one assignment each; a round that changes the layout or brings
    new or finished sequences (about 1 round in 250 of the Azure replay) goes through each rank's
    `DeviceWorker.follow`, and the positions are stacked anew. Each rank still frees and grows its
    own KV cache, and the unit's output is `combine`'s: the first rank's, with its joules added
    once per rank in rank order (every rank's are equal). Holds while every round of the unit runs
    through it (`run_unit`); a round that fails ends it (the general loop drives the unit's rounds
    from then on)."""

    def __init__(self, workers: list) -> None:
        self.on = len(workers) > 1 and all(w.is_twin(workers[0]) for w in workers[1:])
        if self.on:
            self._f = np.stack([w.clock.f for w in workers])
            self._i = np.stack([w.clock.i for w in workers])
            for w, f, i in zip(workers, self._f, self._i):
                w.clock.keep_in(f, i)
            self._stack_positions(workers)

    def _stack_positions(self, workers: list) -> None:
        """The ranks' positions as rows of one array, for the layout they hold now."""
        self._s = np.stack([w.seqs.state for w in workers])
        for w, s in zip(workers, self._s):
            w.seqs.keep_in(s)
        self._layout = workers[0].seqs.layout

    def run(self, workers: list, plan: RoundPlan, x: RoundOutput, relay: Rendezvous) -> RoundOutput:
        """`run_unit` of the twins `workers` (the ones it was made with): the same output, state
        and error."""
        lead = workers[0]
        steady = plan.layout is self._layout and not plan.new_seqs and not plan.finished  # positions stay put
        try:
            y, crossed, n_crossed = lead.run_time(plan, x)
        except Exception as exc:  # noqa: BLE001 - the others run as they would have, then it is raised
            self.on = False
            relay.break_round(plan.round_id, f"rank 0 failed: {type(exc).__name__}: {exc}")
            for r, w in enumerate(workers[1:], 1):
                try:
                    for _ in w.run(plan, x):  # timing-only: never yields
                        pass
                except Exception as other:  # noqa: BLE001
                    relay.break_round(plan.round_id, f"rank {r} failed: {type(other).__name__}: {other}")
            raise
        self._f[1:] = self._f[0]
        self._i[1:] = self._i[0]
        if steady:
            self._s[1:] = self._s[0]
        else:
            for w in workers[1:]:
                w.follow(lead, plan)
            self._stack_positions(workers)
        if n_crossed:  # after the copies: with a sliding window, growing may mark a rank's positions
            crossed = crossed[:n_crossed]
            wanted, first = lead.kv_wanted(crossed), None  # the same blocks wanted on every rank
            for r, w in enumerate(workers):
                try:
                    w.grow_kv(crossed, wanted)
                except Exception as exc:  # noqa: BLE001 - as `_drive`: every rank's round, the first error
                    self.on = False
                    relay.break_round(plan.round_id, f"rank {r} failed: {type(exc).__name__}: {exc}")
                    if first is None:
                        first = exc
            if first is not None:
                raise first
        y.energy_j = ranks_joules(y.energy_j, len(workers))
        return y


def run_unit(workers: list, plan: RoundPlan, x: RoundOutput, relay: Rendezvous,
             lockstep: Lockstep | None = None) -> RoundOutput:
    """One unit in this process: every rank's generator driven through `relay`, in rank order;
    the unit's output (`combine`), or the first failing rank's error. Twin ranks go through
    `lockstep` while it is on."""
    if lockstep is not None and lockstep.on:
        return lockstep.run(workers, plan, x, relay)
    if len(workers) == 1:  # one rank (no tensor parallelism): nothing to exchange, no relay to drive
        gen = workers[0].run(plan, x)
        try:
            msg = gen.send(None)
        except StopIteration as stop:
            relay.done(0, plan.round_id)
            return stop.value
        except Exception as exc:  # as the general loop: the round marked broken, the error raised
            relay.break_round(plan.round_id, f"rank 0 failed: {type(exc).__name__}: {exc}")
            raise
        gens: dict[int, Generator] = {0: gen}  # it offered an exchange: the general loop from there
        todo: dict[int, Reply] = relay.offer(0, plan.round_id, msg[1], msg[2])
        return _drive(gens, todo, plan, relay)
    gens = {r: w.run(plan, x) for r, w in enumerate(workers)}
    return _drive(gens, {r: ("full", None) for r in gens}, plan, relay)


def _drive(gens: dict[int, Generator], todo: dict[int, Reply], plan: RoundPlan, relay: Rendezvous) -> RoundOutput:
    """`run_unit`'s loop: each rank's generator driven through `relay` until every one returned."""
    outs: dict[int, RoundOutput] = {}
    errors: dict[int, BaseException] = {}
    while todo:
        r = min(todo)
        kind, value = todo.pop(r)
        try:
            msg = gens[r].send(value) if kind == "full" else gens[r].throw(RoundAborted(value))
        except StopIteration as stop:
            outs[r] = stop.value
            todo.update(relay.done(r, plan.round_id))
            continue
        except Exception as exc:  # noqa: BLE001 - the others are released, then the first error raised
            errors[r] = exc
            todo.update(relay.break_round(plan.round_id, f"rank {r} failed: {type(exc).__name__}: {exc}"))
            continue
        todo.update(relay.offer(r, plan.round_id, msg[1], msg[2]))
    if errors:
        real = [e for e in errors.values() if not isinstance(e, RoundAborted)]
        raise (real or list(errors.values()))[0]
    assert len(outs) == len(gens), f"ranks left lockstep: {sorted(outs)} finished of {sorted(gens)}"
    return combine([outs[r] for r in range(len(gens))])


def combine(outs: list[RoundOutput]) -> RoundOutput:
    """The unit's output: the first rank's (every rank has the same times and data), with every
    rank's energy (each charged its share), added in rank order."""
    first = outs[0]
    if len(outs) == 1:
        return first
    ready = first.ready_s.tolist()  # compared as lists: np.array_equal's overhead per rank was a fifth of a tp run
    assert all(o.ready_s.tolist() == ready for o in outs[1:]), "tensor-parallel ranks disagree on time"
    for o in outs[1:]:
        first.energy_j = first.energy_j + o.energy_j
    return first


def hand_on(energy_j: np.ndarray, y: RoundOutput, fabric: Fabric, timer: SystemTimer, layout: Layout,
            unit: tuple[int, ...], next_unit: tuple[int, ...]) -> RoundOutput:
    """After a unit: the round's energy so far (`energy_j`) plus the unit's (`y.energy_j`); then
    the hop to the next unit's devices, or after the last unit (`next_unit` empty) the host's
    sampling. Returns the next unit's input (or the round's output), carrying the energy so far."""
    energy_j = energy_j + y.energy_j
    if not next_unit:
        y.energy_j = energy_j
        y.sampled_s = timer.sampled_s(y.ready_s)
        return y
    z = fabric.hop(unit, next_unit, layout, y)
    z.energy_j = energy_j
    return z


def run_round(plan: RoundPlan, units: list[Unit], workers: dict[int, object], fabric: Fabric,
              timer: SystemTimer, relays: list[Rendezvous], locksteps: list[Lockstep] | None = None) -> RoundOutput:
    """Every lane of `plan` through every unit, in this process; returns the last unit's output
    with the energy of all units and the host's sampling time (`sampled_s`)."""
    x = RoundOutput.start(plan)
    for k, unit in enumerate(units):
        y = run_unit([workers[d] for d in unit.device_ids], plan, x, relays[k], locksteps and locksteps[k])
        nxt = units[k + 1].device_ids if k + 1 < len(units) else ()
        x = hand_on(x.energy_j, y, fabric, timer, plan.layout, unit.device_ids, nxt)
    return x


def is_tick(plan: RoundPlan) -> bool:
    """Whether `plan` brings its devices nothing but times (a tick): lanes, no new or finished
    sequences, no numerics. A one-device unit then runs it in one compiled call (`tick_round`)
    once its layout holds (`HostEnd.message` sends such a plan through Ray as a tick)."""
    return (len(plan.layout) > 0 and not plan.new_seqs and not plan.finished and plan.token_ids is None
            and plan.wants_logits is None)


def tick_round(plan: RoundPlan, workers: list, fabric: Fabric, timer: SystemTimer,
               relays: list[Rendezvous]) -> RoundOutput | None:
    """`run_round` of a tick (`is_tick`) through units of one timing-only device each (`workers`,
    in stage order, each routed to the next: `DeviceClock.set_route`), in this process: each
    device's round is the compiled `cent_serve.timing.clock.tick` the Ray devices run
    (`device_worker.steady`), its time pass and its hand-on in one call, on the switch's ports
    (`fabric`). The same floats and state as `run_round`. None, with nothing changed, if a device
    does not hold the plan's layout (the general path lays it out)."""
    layout = plan.layout
    for w in workers:
        if w.seqs.layout is not layout:
            if w.seqs.layout != layout:
                return None
            w.seqs.layout = layout  # as `SeqTable.update`: compared by identity next time
    lp = timer.lane_plan(layout)
    ints, floats = lp.ints, lp.floats
    n, k = len(layout), len(layout.seq_ids)
    x = np.zeros(n + k)  # [ready | joules so far], as the host sends a tick (`HostEnd.message`)
    x[:n] = plan.ready_s
    for u, w in enumerate(workers):
        f, i, seq = w.clock.f, w.clock.i, w.seqs.state
        while True:
            out, n_crossed, need = tick(x, *timer.context_table(), seq, ints, floats, f, i, fabric.ports,
                                        fabric.counts)
            if not need:
                break
            w.fill_table(lp)
        if n_crossed:  # its KV blocks first (KVCacheFull fails the round before it is handed on)
            try:
                w.grow_kv(seq[2, :n_crossed])
            except Exception as exc:  # as `run_unit`: the round marked broken, the error raised
                relays[u].break_round(plan.round_id, f"rank 0 failed: {type(exc).__name__}: {exc}")
                raise
            out = hand_on_tick(out, ints, floats, f, i, fabric.ports, fabric.counts)
        x = out
    return RoundOutput(x[:n], x[n:n + k], sampled_s=x[n + k:])


def chain_message(plan: RoundPlan, x: RoundOutput | None, last_layout: Layout | None) -> dict:
    """The "run" message a unit's devices receive: the plan's fields (the layout only if it
    differs from `last_layout`) and the unit's input `x` (ready times, energy so far, activations;
    None for the first unit, which the host sends the plan itself, with its token ids)."""
    msg = plan.to_wire(last_layout)
    msg["kind"] = "run"
    if x is None:
        return msg
    msg.pop("tokens", None)  # only the first unit embeds them
    msg["ready"] = x.ready_s
    msg["energy"] = x.energy_j
    if x.hidden is not None:
        msg["hidden"] = x.hidden
    return msg


def tick_message(round_id: int, x: np.ndarray) -> bytes:
    """A tick on a link (`device_worker.port`): the round and its float64 times and joules, raw.
    `encode`'s bytes (str keys, an int and bytes need none of its checks), packed directly."""
    return msgpack.packb({"kind": "tick", "round": round_id, "x": x.tobytes()})


STOP_MESSAGE = encode({"kind": "stop"})
"""What the host sends down the chain when its executor shuts down (`HostEnd.stop`)."""


class HostEnd:
    """The host's end of a replica's chain: the message the first unit's devices get for a plan
    (a tick when the plan brings them nothing but times), and the round's output from the last
    unit's answer. One per chain: it keeps the last layout it sent."""

    def __init__(self) -> None:
        self._last_layout: Layout | None = None

    def message(self, plan: RoundPlan) -> bytes:
        layout, last = plan.layout, self._last_layout
        self._last_layout = layout
        if (len(layout) and not plan.new_seqs and not plan.finished and plan.token_ids is None
                and plan.wants_logits is None and (layout is last or layout == last)):
            return tick_message(plan.round_id, np.concatenate([plan.ready_s, np.zeros(len(layout.seq_ids))]))
        return encode(chain_message(plan, None, last))

    @staticmethod
    def stop(inputs: list) -> None:
        """Tell the first unit's devices, on the host's `inputs` links, that the chain stops (its
        executor shuts down): each device hands it on down the chain and ends without a warning
        (`DevicePort.serve`), where a closed input link alone reads as a failure. Best effort, never
        waiting (`Link.send_if_room`): a device gone or hung is no error here, and holds nothing up."""
        for link in inputs:
            link.send_if_room(STOP_MESSAGE)

    @staticmethod
    def output(msg: dict, layout: Layout) -> RoundOutput:
        """The round's output from the last unit's answer to a plan of `layout` (raises its error)."""
        kind = msg.get("kind")
        if kind == "tick":
            n, k = len(layout), len(layout.seq_ids)
            x = np.frombuffer(msg["x"])
            return RoundOutput(x[:n], x[n:n + k], sampled_s=x[n + k:])
        if kind == "done":
            return RoundOutput.from_wire(msg)
        raise remote_error(msg.get("error"))

