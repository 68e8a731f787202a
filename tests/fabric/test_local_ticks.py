"""Ticks through units of one timing-only device each run in one process as on Ray, one compiled
`tick` per device (`fabric.rounds.tick_round`): the same outputs, state, stats and errors, bit for
bit, as the general loop, over new, chunked, decoding and finished sequences, equal layouts that
are not the same object, KV blocks crossed (a sliding window's too) and a device whose KV pool runs
out."""
from __future__ import annotations

import pytest

import fabric.rounds
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from device_worker.kv_cache import KVCacheFull
from tests.fabric.test_lockstep import _plans, _same


def _pair(model: str, devices: int, pp: int) -> tuple[LocalExecutor, LocalExecutor]:
    """(ticks compiled, every round through the general loop)."""
    cfg = CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, 1), numerics="off")
    on, off = LocalExecutor(cfg), LocalExecutor(cfg)
    assert on.chain is not None
    off.chain = None
    return on, off


def _counting(monkeypatch) -> list[int]:
    ran = [0]
    real = fabric.rounds.tick_round

    def counted(*args):
        out = real(*args)
        ran[0] += out is not None
        return out
    monkeypatch.setattr("cent_serve.executor.local.tick_round", counted)
    return ran


@pytest.mark.parametrize("model,devices,pp,start", [
    ("llama2-7b", 1, 1, 100),
    ("llama2-7b", 8, 8, 100),
    ("llama2-7b", 32, 32, 300),
    ("mistral-7b", 4, 4, 4200),  # past its sliding window's cap: KV blocks reused from there on
])
def test_compiled_ticks_give_the_general_loops_rounds_bit_for_bit(monkeypatch, model, devices, pp, start):
    on, off = _pair(model, devices, pp)
    ran = _counting(monkeypatch)
    for make in _plans(start):
        _same(on.run(make()), off.run(make()))
        assert [w.seqs.state.tolist() for w in on.workers.values()] == [
            w.seqs.state.tolist() for w in off.workers.values()]
    assert ran[0] == 38 + 18  # every round whose layout held (the first of a new one lays it out)
    assert on.stats() == off.stats()
    assert [w.kv.usage for w in on.workers.values()] == [w.kv.usage for w in off.workers.values()]


def test_a_device_out_of_kv_blocks_fails_the_tick_as_the_general_loop():
    on, off = _pair("llama2-7b", 4, 4)
    errors = []
    for ex in (on, off):
        for r, make in enumerate(_plans(100)):
            if r == 3:
                w = ex.workers[ex.units[2].device_ids[0]]
                w.kv.num_blocks = w.kv._next_unused
            try:
                ex.run(make())
            except KVCacheFull as exc:
                errors.append((r, str(exc)))
                break
    assert len(errors) == 2 and errors[0] == errors[1]
    assert on.stats() == off.stats()


def test_tensor_parallel_and_numerics_units_keep_the_general_loop():
    assert LocalExecutor(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 2, 4),
                                    numerics="off")).chain is None
    assert LocalExecutor(CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1),
                                    numerics="full")).chain is None
