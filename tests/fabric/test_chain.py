"""The round chain over real authenticated links, with the devices on threads instead of Ray
actors (`device_worker.port`, the switch's `fabric.router.Relay`): the same tokens, simulated
times and switch counters as the local executor; errors reach the host whichever device raised
them, and the links stay in step."""
from __future__ import annotations

import itertools
import logging
import socket
import threading

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.emulate import run_workload
from cent_serve.executor import LocalExecutor
from cent_serve.executor.base import Done, Executor
from cent_serve.executor.generate import generate_batch
from cent_serve.model.hf_checkpoint import load_weights
from cent_serve.messages import Layout, RoundPlan
from cent_serve.timing import SystemTimer
from device_worker.port import DevicePort
from device_worker.worker import DeviceWorker
from fabric.link import Link, LinkClosed
from fabric.listener import LinkBook
from fabric.rounds import HostEnd, chain_places, execution_units
from fabric.router import Relay
from fabric.switch import Fabric, merge_stats

SECRET = b"s" * 32
STOP_JOIN_S = 30.0
"""Longest wait for a stopped chain's device threads to end (a bound for a busy machine, not a figure)."""
_made: list = []


@pytest.fixture(autouse=True)
def _shut_down_the_chains():
    yield
    while _made:
        _made.pop().shutdown()


def _pair() -> tuple[Link, Link]:
    """Two authenticated ends of a socket pair (the handshake of a real link)."""
    a, b = socket.socketpair()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("server", Link.accept(b, SECRET)))
    t.start()
    client = Link.connect_socket(a, {"role": "test"}, SECRET)
    t.join()
    return client, box["server"][0]


class ThreadedChain(Executor):
    """An executor whose devices serve their chain links on threads of this process, wired as
    `RayExecutor` wires its actors."""

    def __init__(self, cfg: CentConfig) -> None:
        # one load of the weights; a timer for each device, as each actor has its own: threads sharing one
        # (a LocalExecutor's devices do, run one at a time) raced on its memos (a context's row written while
        # another thread grew them)
        weights = load_weights(cfg.model) if cfg.resolved_numerics == "full" else None
        self.timer = SystemTimer.from_config(cfg)
        units = execution_units(self.timer.mapping)
        places = chain_places(units)
        self.relay = Relay(Fabric(cfg), [u.device_ids for u in units])
        books = {d: LinkBook() for d in places}
        self.ports = {}
        for d, p in places.items():
            worker = DeviceWorker(cfg, d, weights=weights)
            to_switch, at_switch = _pair()
            self.relay.attach(d, at_switch)
            self.ports[d] = DevicePort(worker, p, books[d], to_switch, threading.Lock())
        outputs = {d: [] for d in places}
        for d, p in places.items():
            for peer, key in ([(n, ("hop", d)) for n in p.next_ids] if p.is_leader else [(p.leader, ("rank", d))]):
                mine, theirs = _pair()
                books[peer].add(key, theirs)
                outputs[d].append(mine)
        first, last = units[0].device_ids, units[-1].device_ids[0]
        self.inputs = []
        for d in first:
            mine, theirs = _pair()
            books[d].add(("host",), theirs)
            self.inputs.append(mine)
        if last in first:
            self.output = self.inputs[first.index(last)]
        else:
            self.output, theirs = _pair()
            books[last].add(("host",), theirs)
        self.outputs = outputs
        self.threads = [threading.Thread(target=self.ports[d].serve, args=(outputs[d],), daemon=True) for d in places]
        for t in self.threads:
            t.start()
        self.host = HostEnd()
        _made.append(self)

    def submit(self, plan: RoundPlan):
        blob = self.host.message(plan)
        for link in self.inputs:
            link.send_bytes(blob)
        return Done(self.host.output(self.output.recv(60.0), plan.layout))

    def shutdown(self) -> None:
        """As `RayExecutor.shutdown`: tell the devices the chain stops (`HostEnd.stop`) and close the
        host's links; then, the devices' threads given STOP_JOIN_S to end, close every link."""
        self.host.stop(self.inputs)
        for link in [*self.inputs, self.output]:
            link.close()
        for t in self.threads:
            t.join(STOP_JOIN_S)
        for link in (x for outs in self.outputs.values() for x in outs):
            link.close()
        for port in self.ports.values():
            port.links.close()
            port.switch.close()

    def kill(self) -> None:
        """As `ray.kill` of every device after a fault: every link closes first, so a device waiting on an
        upstream that is gone ends too (a stop cannot reach it), then the threads are joined."""
        links = [*self.inputs, self.output, *(x for outs in self.outputs.values() for x in outs)]
        for link in links:
            link.close()
        for port in self.ports.values():
            port.links.close()
            port.switch.close()
        for t in self.threads:
            t.join(STOP_JOIN_S)

    def stats(self) -> dict:
        return dict(devices=[p.worker.stats() for p in self.ports.values()],
                    fabric=merge_stats([p.fabric.stats() for p in self.ports.values()] + [self.relay.fabric.stats()]))


def _cfg(devices: int, pp: int, tp: int, numerics: str = "full", model: str = "tiny") -> CentConfig:
    return CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp), numerics=numerics)


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (8, 2, 4), (4, 2, 2)])
def test_the_chain_equals_the_local_executor(devices, pp, tp):
    cfg = _cfg(devices, pp, tp)
    prompts = [[1, 9, 8, 7], [1, 50], [3, 4, 5]]
    local, chain = LocalExecutor(cfg), ThreadedChain(cfg)
    want = generate_batch(local, prompts, 6, prefill_chunk=2)
    got = generate_batch(chain, prompts, 6, prefill_chunk=2)
    assert got.token_ids == want.token_ids
    assert got.token_times_s == want.token_times_s  # bit-identical simulated time
    assert chain.stats() == local.stats()  # the devices' and the switch's counters, merged over the ports


@pytest.mark.parametrize("devices, pp, tp", [(32, 80, 1), (8, 2, 4)])
def test_the_paper_workload_on_the_chain_is_the_local_one_bit_for_bit(devices, pp, tp):
    """45 rounds: KV blocks crossed every 16 tokens, the cost table filled in the compiled loop
    (each device's own, 32 contexts at a time); pp 2 x tp 4 takes ticks on the general path."""
    cfg = _cfg(devices, pp, tp, "off", "llama2-70b" if tp == 1 else "llama2-7b")
    local, chain = LocalExecutor(cfg), ThreadedChain(cfg)
    a = run_workload(cfg, local, 500, 45, energy_marks=(3,), prompt=3)
    b = run_workload(cfg, chain, 500, 45, energy_marks=(3,), prompt=3)
    assert b.done_s.tolist() == a.done_s.tolist() and b.energy_j_at == a.energy_j_at
    assert chain.stats() == local.stats()


def _plan(lane: int, seq: int, ids: list[int], round_id: int) -> RoundPlan:
    return RoundPlan(Layout((lane,), (((seq, len(ids)),),)), np.zeros(1), round_id, {seq: 0}, (),
                     np.array(ids, dtype=np.int64), np.array([True]))


@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (8, 2, 4)])
def test_a_device_error_reaches_the_host_and_the_links_stay_in_step(devices, pp, tp):
    chain = ThreadedChain(_cfg(devices, pp, tp))
    rounds = itertools.count()
    with pytest.raises(ValueError, match="vocabulary"):
        chain.run(_plan(0, 0, [1, 10_000], next(rounds)))  # id outside the vocabulary: the first unit raises
    out = chain.run(_plan(1, 1, [1, 5], next(rounds)))
    assert out.logits.shape == (1, 259) and out.ready_s[0] > 0


def test_an_error_then_the_same_layout_keeps_every_link_in_step():
    """After a failed round the layout is not sent again where it did not change: every end of
    every link must still agree on it."""
    chain, local = ThreadedChain(_cfg(8, 0, 1)), LocalExecutor(_cfg(8, 0, 1))
    layout = Layout((0, 1), (((0, 1),), ((1, 1),)))  # the same in every round

    def plan(r: int, ids: list[int]) -> RoundPlan:
        return RoundPlan(layout, np.zeros(2), r, {0: 0, 1: 0} if r == 0 else {}, (), np.array(ids), np.ones(2, bool))

    for ex in (chain, local):
        ex.run(plan(0, [1, 5]))
        with pytest.raises(ValueError, match="vocabulary"):
            ex.run(plan(1, [1, 10_000]))  # the first unit fails; the others never see this round
    for r in (2, 3):
        got, want = chain.run(plan(r, [7, 8])), local.run(plan(r, [7, 8]))
        assert got.ready_s.tolist() == want.ready_s.tolist()
        assert (got.logits.argmax(-1) == want.logits.argmax(-1)).all()


def test_a_kv_pool_that_runs_full_in_a_steady_round_charges_no_hop():
    """On the compiled path a sequence crossing into a new KV block stops the round before its
    hop; a device whose pool is full fails the round there, as in one process: the same
    counters and clocks after it (ticks: the layout holds, nothing new)."""
    from device_worker.kv_cache import KVCacheFull

    cfg = _cfg(8, 0, 1, "off", "llama2-7b")
    chain, local = ThreadedChain(cfg), LocalExecutor(cfg)
    lanes = 32
    layout = Layout(tuple(range(lanes)), tuple(((q, 1),) for q in range(lanes)))
    for ex in (chain, local):
        ready = np.zeros(lanes)
        for r in range(40):  # positions 100..139: blocks crossed at 112 and 128
            if r == 5:
                w = ex.ports[3].worker if ex is chain else ex.workers[3]
                w.kv.num_blocks = w.kv._next_unused  # device 3's pool is full from now on
            plan = RoundPlan(layout, ready, r, {q: 100 for q in range(lanes)} if r == 0 else {})
            try:
                ready = ex.run(plan).sampled_s
            except KVCacheFull:
                break
        else:
            raise AssertionError("device 3 never ran out of KV blocks")
        assert r == 12  # the round that crosses into the block of positions 112..127
    assert chain.stats() == local.stats()
    assert chain.ports[3].sent[0] > 0  # device 3 did answer ticks on the compiled path before


def test_a_second_link_claiming_a_taken_place_is_closed_not_the_first():
    book = LinkBook()
    first, first_far = _pair()
    second, second_far = _pair()
    assert book.add(("host",), first) and not book.add(("host",), second)
    assert book.wait(("host",), 1) is first and not first.peer_closed()
    assert second_far.peer_closed() or second._closed


def test_a_rank_that_fails_mid_round_releases_the_others_and_the_next_round_runs():
    cfg = _cfg(8, 2, 4)
    chain = ThreadedChain(cfg)
    rounds = itertools.count()
    chain.run(_plan(0, 0, [1, 5], next(rounds)))
    victim = chain.ports[6].worker  # a rank of the second unit, not its leader
    victim.kv.num_blocks = victim.kv._next_unused  # full: its next new block fails, after the first unit ran
    from device_worker.kv_cache import KVCacheFull

    with pytest.raises(KVCacheFull):
        chain.run(_plan(1, 1, [1, 6], next(rounds)))
    victim.kv.num_blocks += 100
    assert chain.run(_plan(2, 2, [1, 7], next(rounds))).logits.shape == (1, 259)


@pytest.mark.parametrize("devices, pp, tp, numerics", [(4, 0, 1, "off"), (8, 2, 4, "off"), (4, 2, 2, "full")])
def test_a_chain_shut_down_ends_every_device_without_a_warning(caplog, devices, pp, tp, numerics):
    """A shutdown after rounds (ticks on the compiled path among them) is no failure: every device's
    thread ends and none logs that it stops (on a Ray user's own Ray, whose `log_to_driver` is on by
    default, each such line reached the user's console after every run)."""
    chain = ThreadedChain(_cfg(devices, pp, tp, numerics))
    generate_batch(chain, [[1, 9, 8, 7], [1, 50]], 6, prefill_chunk=2)
    _made.remove(chain)
    with caplog.at_level(logging.WARNING):
        chain.shutdown()
    assert [t.is_alive() for t in chain.threads] == [False] * devices
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("devices, pp, tp", [(4, 0, 1), (8, 2, 4)])
def test_a_stop_behind_a_round_the_host_gave_up_on_ends_the_chain_after_that_round(caplog, devices, pp, tp):
    """A shutdown after a round timeout: the round is still on its way down the chain when the stop
    follows it. Each device runs the round, then takes the stop as the end, not as a round (the
    last unit answers the round, then hands the stop to the host), and none logs a warning."""
    chain = ThreadedChain(_cfg(devices, pp, tp))
    _made.remove(chain)
    plan = _plan(0, 0, [1, 9, 8], 0)
    blob = chain.host.message(plan)
    with caplog.at_level(logging.WARNING):
        for link in chain.inputs:
            link.send_bytes(blob)  # sent, its answer never read: the host's wait timed out
        chain.host.stop(chain.inputs)
        for t in chain.threads:
            t.join(STOP_JOIN_S)
        assert [t.is_alive() for t in chain.threads] == [False] * devices
        answer = chain.output.recv(STOP_JOIN_S)
        assert chain.output.recv(STOP_JOIN_S) == {"kind": "stop"}
        chain.shutdown()
    assert chain.host.output(answer, plan.layout).logits.shape == (1, 259)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_stop_to_a_device_that_reads_nothing_does_not_wait_for_it():
    """A shutdown after a device hung (its input unread, the link's buffer full) tells the others and
    returns: the stop is sent only where it goes at once, not after the link's send stall limit."""
    host, device = _pair()
    host.sock.setblocking(False)
    try:
        while True:
            host.sock.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    host.sock.setblocking(True)
    ended = threading.Thread(target=HostEnd.stop, args=([host],), daemon=True)
    ended.start()
    ended.join(STOP_JOIN_S)  # a blocking send would wait the link's stall limit, 300 s by default
    assert not ended.is_alive()
    host.close()
    device.close()


def test_a_device_whose_input_link_breaks_says_so_down_the_chain():
    cfg = _cfg(8, 0, 1, "off")
    chain = ThreadedChain(cfg)
    _made.remove(chain)
    try:
        chain.run(_plan(0, 0, [1, 5], 0))
        chain.outputs[3][0].close()  # device 3's link to device 4 breaks (device 3 is gone)
        with pytest.raises(LinkClosed, match=r"device 4.s input link from device 3 closed \(device 3 or the link is gone\)"):
            chain.run(_plan(1, 1, [1, 6], 1))
    finally:
        # devices 5-7 wait on device 4, which ended: a stop cannot reach them (30 s a thread to find out)
        chain.kill()
    assert [t.is_alive() for t in chain.threads] == [False] * len(chain.threads)
