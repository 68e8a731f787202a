"""The timers' per-context memos: packed (`cent_serve.timing.memo.ContextMemo`), and what they hold
read back as computed."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer
from cent_serve.timing.energy import TERMS, energy_model
from cent_serve.timing.memo import ContextMemo

BYTES_PER_CONTEXT = 160
"""What a timer may hold by context beyond its context table: its memos' values (a block's PIM cycles,
its accelerator seconds and its energy's terms: 2 + len(TERMS) float64) and their masks, 139 bytes.
Dictionaries of small objects held about 800."""


def _timer(max_seq_len: int) -> SystemTimer:
    return SystemTimer.from_config(CentConfig(model=model_preset("tiny", max_seq_len=max_seq_len),
                                              parallel=ParallelConfig(8, 0, 1)))


def test_memos_hold_few_bytes_a_context():
    contexts = 2048
    timer = _timer(contexts)
    timer.fill_contexts(np.array([1]))  # the energy model and the first columns: not by context
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for L in range(2, contexts + 1):  # one new context a round, as decoding asks for them
            timer.fill_contexts(np.array([L]))
        gc.collect()  # what the rounds left in reference cycles is not held
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    table, filled = timer.context_table()
    assert filled[1:contexts + 1].all()
    assert (held - table.nbytes - filled.nbytes) / contexts < BYTES_PER_CONTEXT, held


def test_memos_read_back_what_a_fresh_timer_computes():
    timer = _timer(4096)
    for L in (1, 63, 64, 65, 1000, 4096, 2):  # across the memos' growth, and back
        timer.block_cost(L)
    fresh = _timer(4096)
    for L in (2, 63, 64, 65, 1000, 4096, 1):
        assert timer.block_cost(L) == fresh.block_cost(L), L
        assert all(type(x) is float for x in timer.block_cost(L)), timer.block_cost(L)
        assert timer.pim.breakdown(L) == fresh.pim.breakdown(L), L
        assert np.array_equal(energy_model(timer).block(L), energy_model(fresh).block(L)), L
        assert energy_model(timer).block(L).shape == (len(TERMS),)


def test_context_memo_grows_to_its_limit_and_keeps_rows():
    memo = ContextMemo(2, 100)
    assert memo.get(0) is None and memo.get(5) is None
    memo.put(3, (1.5, 2.5))
    assert memo.values.shape == (64, 2)  # a first block of rows
    memo.put(70, (3.0, 4.0))
    assert memo.values.shape == (100, 2)  # doubled, but no more than the limit
    assert memo.get(3).tolist() == [1.5, 2.5] and memo.get(70).tolist() == [3.0, 4.0]
    assert memo.get(4) is None and memo.get(99) is None and memo.get(100) is None
    memo.put(250, (5.0, 6.0))  # past the limit: as far as asked
    assert memo.values.shape == (251, 2) and memo.get(3).tolist() == [1.5, 2.5]
    with pytest.raises(ValueError):
        memo.get(3)[0] = 0.0  # a read-only view: a caller cannot change what the memo holds
    assert memo.nbytes == 251 * 2 * 8 + 251
