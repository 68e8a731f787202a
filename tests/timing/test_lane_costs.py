"""What a device's compiled round charges a lane (`device_round` reading the timer's context table
and lane plan) equals adding `block_cost`s one token at a time, bit for bit: its block step, its
accelerator share and energy, each sequence's energy, whatever the lanes and the order contexts
come in (the table grows, fills ahead, and is reused)."""
from __future__ import annotations

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.messages import Layout
from cent_serve.timing import SystemTimer
from cent_serve.timing.clock import ACCELERATOR, DeviceClock, device_round
from cent_serve.timing.energy import TERMS, block_energy_by_op_j, token_energy_terms_j
from cent_serve.timing.token import TABLE_ROWS, context_terms


def _by_hand(timer: SystemTimer, lane, starts) -> dict:
    """The definition: a lane's block costs of each of its tokens added in order."""
    p_sum = a_sum = e_sum = 0.0
    n_tok, seq_energy = 0, []
    for (_, num), start in zip(lane, starts):
        s_e = 0.0
        for L in range(start + 1, start + num + 1):
            p, a, e = timer.block_cost(L)
            p_sum, a_sum, e_sum, s_e = p_sum + p, a_sum + a, e_sum + e, s_e + e
        seq_energy.append(s_e)
        n_tok += num
    return dict(step=p_sum + a_sum * timer.mapping.tb + timer.collectives_s(n_tok), acc=a_sum, energy=e_sum,
                seq_energy=seq_energy)


def _charged(timer: SystemTimer, lane, starts) -> dict:
    """One lane through a device of one block with fresh clocks, input ready at 0: its output
    time is its block step, the accelerator's busy time its share, the device's joules its energy."""
    lp = timer.lane_plan(Layout((0,), (lane,)))
    st = np.array(starts, dtype=np.int64)
    while True:
        clock = DeviceClock([1], [True], timer.mapping.tb, 16, (False, 0.0), (False, 0.0, 0.0))
        done, own, _, need = device_round(np.zeros(1), *timer.context_table(), np.stack([st, st, st]), lp.ints,
                                          lp.floats, clock.f, clock.i)
        if not need:
            return dict(step=float(done[0]), acc=float(clock.busy[ACCELERATOR]), energy=clock.joules,
                        seq_energy=own.tolist())
        timer.fill_contexts(np.concatenate([np.arange(a + 1, a + n + 1) for a, (_, n) in zip(starts, lane)]))


def test_lane_costs_equal_block_costs_added_token_by_token():
    for parallel in (ParallelConfig(32, 80, 1), ParallelConfig(32, 8, 4)):  # pipeline; hybrid (collectives)
        cfg = CentConfig(model=model_preset("llama2-70b"), parallel=parallel, numerics="off")
        timer, fresh = SystemTimer.from_config(cfg), SystemTimer.from_config(cfg)
        rng = np.random.default_rng(7)
        for _ in range(60):  # contexts jump around
            k = int(rng.integers(1, 4)) if rng.random() < 0.3 else 1
            lane = tuple((sid, int(rng.integers(1, 40)) if rng.random() < 0.3 else 1) for sid in range(k))
            starts = [int(rng.integers(0, 3000 - n)) for _, n in lane]
            assert _charged(timer, lane, starts) == _by_hand(fresh, lane, starts), (parallel, lane, starts)


def test_a_lane_plan_is_kept_while_the_layout_holds_and_a_new_one_is_not_mistaken_for_it():
    cfg = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    timer = SystemTimer.from_config(cfg)
    a = timer.lane_plan(Layout((0, 1), (((0, 1),), ((1, 1),))))
    assert timer.lane_plan(Layout((0, 1), (((0, 1),), ((1, 1),)))) is a  # an equal layout: the same plan
    b = timer.lane_plan(Layout((0, 1), (((0, 3),), ((1, 1),))))  # lane 0 now prefills 3 tokens
    assert b.ints[:3].tolist() == [0, 1, 2] and b.ints[3:5].tolist() == [3, 1] and b.num_tokens == 4
    assert b.floats[1].tolist() == [timer.hop_s(3), timer.hop_s(1)]


def test_timers_sharing_a_context_table_fill_it_once_and_a_loaded_table_unshares():
    """An engine's in-process replicas share one table (`share_table`): what one fills the other
    reads; a timer that loads a table (`load_table`, the device processes') takes its own."""
    cfg = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(32, 32, 1), numerics="off")
    a, b = SystemTimer.from_config(cfg), SystemTimer.from_config(cfg)
    b.share_table(a)
    a.fill_contexts(np.array([100]))
    table, filled = b.context_table()
    assert filled[100] and table[:3, 100].tolist() == list(a.block_cost(100))
    b.load_table(np.zeros((TABLE_ROWS, 8)), np.zeros(8, dtype=bool))
    assert b.context_table()[1].shape == (8,) and a.context_table()[1][100]  # a's table as it was


def test_a_devices_joules_by_term_add_up_to_its_joules_and_to_the_closed_forms_terms():
    """A device charges each block's joules by term beside the total (`DeviceClock.terms`): over a
    one-device pipeline of a tensor-parallel-free mapping they are the closed form's token terms, less
    the embedding's and LM head's (charged on the head's device only)."""
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(1, 1, 1), numerics="off")
    timer = SystemTimer.from_config(cfg)
    n = timer.model.num_layers
    timer.fill_contexts(np.array([40]))
    table = timer.context_table()[0]
    assert table.shape[0] == 3 + len(TERMS)
    assert abs(context_terms(table, 40).sum() / table[2, 40] - 1) < 1e-12
    before = context_terms(table, 40).tolist()
    timer.fill_contexts(np.array([400]))  # the table grows: each context keeps its terms
    assert context_terms(timer.context_table()[0], 40).tolist() == before
    timer.fill_contexts(np.array([40]))
    assert abs(sum(block_energy_by_op_j(timer, 40).values()) / table[2, 40] - 1) < 1e-12
    clock = DeviceClock([n], [False] * (n - 1) + [True], 1, 16, (False, 0.0), (False, 0.0, 0.0))
    lp = timer.lane_plan(Layout((0,), (((7, 1),),)))
    st = np.array([39], dtype=np.int64)
    *_, need = device_round(np.zeros(1), *timer.context_table(), np.stack([st, st, st]), lp.ints, lp.floats,
                            clock.f, clock.i)
    assert need == 0
    want = token_energy_terms_j(timer, 40)
    head = timer.__dict__["_energy"].head_terms()
    for k, term in enumerate(TERMS):
        assert abs(clock.terms[k] - (want[term] - head[k])) <= 1e-12 * clock.joules, term
    assert abs(clock.terms.sum() / clock.joules - 1) < 1e-12
