"""The switch's fast stage-to-stage path must be the timed primitives, bit for bit."""
from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.messages import Wave
from fabric.switch import Fabric

CFG = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 4, 2), numerics="off")


def _wave(ready: list[float], tokens: list[int], ids: list[int]) -> Wave:
    seqs = tuple(((100 + i, 5, n, None, True),) for i, n in zip(ids, tokens))
    return Wave(tuple(ids), seqs, list(ready))


columns = st.lists(st.tuples(st.floats(0.0, 1e-3, allow_nan=False), st.integers(1, 40)), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(columns, columns, st.floats(0.0, 1e-3), st.floats(0.0, 1e-3), st.booleans())
def test_transfer_wave_is_one_multicast_per_column_in_arrival_order(first, second, out_busy, in_busy,
                                                                    shuffle_ids):
    fast, slow = Fabric(CFG), Fabric(CFG)
    for fab in (fast, slow):  # ports already busy for a while, on either side
        fab.egress_free_s[2] = out_busy
        fab.ingress_free_s[5] = in_busy
    src, dsts = (2, 3), (4, 5)
    for cols in (first, second):  # two rounds: the clocks carry over
        ids = list(range(len(cols)))[::-1] if shuffle_ids else list(range(len(cols)))
        w = _wave([r for r, _ in cols], [n for _, n in cols], ids)
        got = fast.transfer_wave(src, dsts, w)
        want = {}
        for i in w.arrival_order():
            want[w.mb_ids[i]] = slow.multicast(src[0], dsts, w.tokens[i] * CFG.model.hidden_size, w.ready_s[i])
        assert list(got.mb_ids) == sorted(ids)
        assert got.ready_s == [want[m] for m in got.mb_ids]  # exact floats
    assert fast.stats() == slow.stats()
    assert dict(fast.egress_free_s) == dict(slow.egress_free_s)
    assert dict(fast.ingress_free_s) == dict(slow.ingress_free_s)


def test_wave_costs_stay_in_process():
    w = _wave([0.0, 1.0], [1, 1], [0, 1])
    w.costs = (object(), [("a",), ("b",)])
    assert pickle.loads(pickle.dumps(w)).costs is None  # a device in another process recomputes
    assert w.take([1, 0], [0.5, 0.25]).costs[1] == [("b",), ("a",)]
    assert w.take([0, 1], [0.5, 0.25]).costs is w.costs
