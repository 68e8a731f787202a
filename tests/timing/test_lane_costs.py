"""`SystemTimer.lane_costs` (vector pass over context tables, filled ahead) equals adding
`block_cost`s one token at a time, bit for bit, whatever the lanes and the order contexts come in."""
from __future__ import annotations

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer


def _by_hand(timer: SystemTimer, lanes, starts) -> dict[str, list]:
    """The definition: per lane, the block costs of each of its tokens added in order."""
    out = {k: [] for k in ("pim", "acc", "energy", "step", "hop", "tokens", "seqs", "seq_energy")}
    k = 0
    for lane in lanes:
        p_sum = a_sum = e_sum = 0.0
        n_tok = 0
        for _, num in lane:
            s_e = 0.0
            for L in range(starts[k] + 1, starts[k] + num + 1):
                p, a, e = timer.block_cost(L)
                p_sum, a_sum, e_sum, s_e = p_sum + p, a_sum + a, e_sum + e, s_e + e
            out["seq_energy"].append(s_e)
            n_tok += num
            k += 1
        out["pim"].append(p_sum)
        out["acc"].append(a_sum)
        out["energy"].append(e_sum)
        out["step"].append(p_sum + a_sum * timer.mapping.tb + timer.collectives_s(n_tok))
        out["hop"].append(timer.hop_s(n_tok))
        out["tokens"].append(n_tok)
        out["seqs"].append(len(lane))
    return out


def _random_round(rng, max_context: int):
    lanes, starts, sid = [], [], 0
    for _ in range(int(rng.integers(1, 12))):
        lane = []
        for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.3 else 1):
            num = int(rng.integers(1, 40)) if rng.random() < 0.3 else 1
            starts.append(int(rng.integers(0, max_context - num)))
            lane.append((sid, num))
            sid += 1
        lanes.append(tuple(lane))
    return tuple(lanes), starts


def test_lane_costs_equal_block_costs_added_token_by_token():
    for parallel in (ParallelConfig(32, 80, 1), ParallelConfig(32, 8, 4)):  # pipeline; hybrid (collectives)
        cfg = CentConfig(model=model_preset("llama2-70b"), parallel=parallel, numerics="off")
        timer, fresh = SystemTimer.from_config(cfg), SystemTimer.from_config(cfg)
        rng = np.random.default_rng(7)
        for round_id in range(60):  # contexts jump around: the table grows, fills ahead, and is reused
            lanes, starts = _random_round(rng, 3000)
            got = timer.lane_costs(round_id, lanes, np.array(starts))
            want = _by_hand(fresh, lanes, starts)
            for name, arr in (("pim", got.pim_s), ("acc", got.acc_s), ("energy", got.energy_j),
                              ("step", got.block_s), ("hop", got.hop_s), ("tokens", got.tokens),
                              ("seqs", got.seqs), ("seq_energy", got.seq_energy_j)):
                assert arr.tolist() == want[name], (parallel, round_id, name)
            assert got.num_tokens == sum(want["tokens"])


def test_one_round_is_computed_once_and_a_new_layout_is_not_mistaken_for_the_last():
    cfg = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1), numerics="off")
    timer = SystemTimer.from_config(cfg)
    a = timer.lane_costs(1, (((0, 1),), ((1, 1),)), np.array([10, 20]))
    assert timer.lane_costs(1, (((0, 1),), ((1, 1),)), np.array([10, 20])) is a  # same round: shared
    b = timer.lane_costs(2, (((0, 3),), ((1, 1),)), np.array([11, 21]))  # lane 0 now prefills 3 tokens
    assert b.tokens.tolist() == [3, 1] and b.num_tokens == 4
    assert b.pim_s[0] == sum((timer.block_cost(L)[0] for L in (12, 13, 14)), 0.0)
