"""A timing-only tensor-parallel unit in one process runs its time pass once (`fabric.rounds.Lockstep`):
the same outputs, stats and errors, bit for bit, as every rank running its own round, over new,
chunked, decoding and finished sequences, KV blocks crossed (a sliding window's too), a rank
whose KV pool runs out and a plan the devices refuse."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.messages import Layout, RoundPlan
from cent_serve.timing.clock import ranks_joules
from device_worker.kv_cache import KVCacheFull
from device_worker.seqs import FOREVER


def _cfg(model: str = "llama2-7b", devices: int = 8, pp: int = 2, tp: int = 4, numerics: str = "off") -> CentConfig:
    return CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp), numerics=numerics)


def _pair(cfg: CentConfig) -> tuple[LocalExecutor, LocalExecutor]:
    """(lockstep on, every rank on its own)."""
    on, off = LocalExecutor(cfg), LocalExecutor(cfg)
    assert all(ls.on for ls in on.locksteps)
    for ls in off.locksteps:
        ls.on = False
    return on, off


def _plans(start: int):
    """Rounds as the engine sends them: two lanes of new sequences in chunks, then decoding across
    KV blocks, a lane's sequences finished and new ones taking their place, a round of frees only."""
    ready = np.zeros(2)
    lanes = (0, 1)
    seqs = {0: ((1, 5), (2, 3)), 1: ((3, 7),)}
    yield lambda: RoundPlan(Layout(lanes, (seqs[0], seqs[1])), ready, 0, {1: start, 2: start, 3: start})
    decode = Layout(lanes, (((1, 1), (2, 1)), ((3, 1),)))
    for r in range(1, 40):
        yield lambda r=r: RoundPlan(decode, ready + 1e-3 * r, r)
    fresh = Layout(lanes, (((1, 1), (2, 1)), ((4, 2),)))
    yield lambda: RoundPlan(fresh, ready + 0.05, 40, {4: start + 3}, (3,))
    for r in range(41, 60):
        yield lambda r=r: RoundPlan(Layout(lanes, (((1, 1), (2, 1)), ((4, 1),))), ready + 1e-3 * r, r)
    yield lambda: RoundPlan(Layout((), ()), np.zeros(0), 60, {}, (1, 2, 4))


def _same(a, b) -> None:
    for k in ("ready_s", "energy_j", "sampled_s"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes(), k


@pytest.mark.parametrize("model,devices,pp,tp,start", [
    ("llama2-7b", 8, 2, 4, 100),
    ("llama2-70b", 32, 4, 8, 300),
    ("mistral-7b", 8, 2, 4, 4200),  # past its sliding window's cap: KV blocks reused from there on
])
def test_a_lockstep_unit_gives_every_rank_its_own_round_bit_for_bit(model, devices, pp, tp, start):
    on, off = _pair(_cfg(model, devices, pp, tp))
    marked = False
    for make in _plans(start):
        _same(on.run(make()), off.run(make()))
        positions = [w.seqs.state.tolist() for w in on.workers.values()]
        assert positions == [w.seqs.state.tolist() for w in off.workers.values()]
        marked = marked or any(FOREVER in held for _, held, _ in positions)
    assert marked == (model == "mistral-7b")
    assert all(ls.on for ls in on.locksteps)
    assert on.stats() == off.stats()


def test_a_rank_out_of_kv_blocks_fails_the_round_as_it_would_alone():
    on, off = _pair(_cfg())
    errors = []
    for ex in (on, off):
        for r, make in enumerate(_plans(100)):
            if r == 3:
                w = ex.workers[ex.units[1].device_ids[2]]  # a follower of the second unit
                w.kv.num_blocks = w.kv._next_unused
            try:
                ex.run(make())
            except KVCacheFull as exc:
                errors.append((r, str(exc)))
                break
    assert len(errors) == 2 and errors[0] == errors[1]
    assert not on.locksteps[1].on and on.locksteps[0].on
    assert on.stats() == off.stats()


def test_a_plan_the_devices_refuse_fails_on_every_rank_alike():
    on, off = _pair(_cfg())
    bad = RoundPlan(Layout((0,), (((9, 1),),)), np.zeros(1), 0)  # a sequence the devices never saw
    for ex in (on, off):
        with pytest.raises(KeyError):
            ex.run(bad)
    assert not on.locksteps[0].on and on.locksteps[1].on  # the first unit failed; the round went no further
    assert on.stats() == off.stats()


def test_only_twin_ranks_go_in_lockstep():
    assert LocalExecutor(_cfg(pp=8, tp=1)).locksteps is None  # one rank a unit
    assert LocalExecutor(_cfg("tiny", 4, 1, 4, "full")).locksteps is None  # the ranks' numerics exchange


def test_the_ranks_joules_are_combines_additions():
    rng = np.random.default_rng(7)
    own = np.concatenate([rng.random(50) * 10.0 ** rng.integers(-12, 3, 50), [0.0, 1e-300, 0.1, 1 / 3]])
    for n in (2, 3, 7, 8, 16):
        want = own
        for _ in range(n - 1):
            want = want + own
        assert ranks_joules(own, n).tobytes() == want.tobytes()

