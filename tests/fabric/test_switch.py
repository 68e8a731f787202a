"""The switch's stage-to-stage hop must be its timed primitives, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cent_serve.config import CentConfig, ParallelConfig, apply_overrides, model_preset
from cent_serve.messages import Layout, RoundOutput
from fabric.switch import Fabric

CFG = CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 4, 2), numerics="off")
UNICAST = apply_overrides(CFG, ["fabric.multicast=false"])


def _round(ready: list[float], tokens: list[int]) -> tuple[Layout, RoundOutput]:
    lanes = tuple(range(len(ready)))
    layout = Layout(lanes, tuple(((100 + i, n),) for i, n in zip(lanes, tokens)))
    return layout, RoundOutput(np.array(ready), np.zeros(len(ready)))


columns = st.lists(st.tuples(st.floats(0.0, 1e-3, allow_nan=False), st.integers(1, 40)), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(columns, columns, st.floats(0.0, 1e-3), st.floats(0.0, 1e-3), st.sampled_from([CFG, UNICAST]))
def test_a_hop_is_one_multicast_per_lane_in_arrival_order(first, second, out_busy, in_busy, cfg):
    fast, slow = Fabric(cfg), Fabric(cfg)
    for fab in (fast, slow):  # ports already busy for a while, on either side
        fab.egress_free_s[2] = out_busy
        fab.ingress_free_s[5] = in_busy
    src, dsts = (2, 3), (4, 5)
    for cols in (first, second):  # two rounds: the clocks carry over
        layout, x = _round([r for r, _ in cols], [n for _, n in cols])
        got = fast.hop(src, dsts, layout, x)
        want = {}
        for i in np.argsort(x.ready_s, kind="stable"):  # arrival order, ties to the lower lane
            want[i] = slow.multicast(src[0], dsts, layout.lane_tokens[i] * CFG.model.hidden_size, x.ready_s[i])
        assert got.ready_s.tolist() == [want[i] for i in range(len(cols))]  # exact floats
    assert fast.stats() == slow.stats()
    assert fast.egress_free_s.tolist() == slow.egress_free_s.tolist()
    assert fast.ingress_free_s.tolist() == slow.ingress_free_s.tolist()


def test_without_multicast_a_hop_sends_once_to_each_device_of_the_next_unit():
    """Two lanes to 3 devices, fabric.multicast false: 6 sends back to back from the sender at the
    whole lane bandwidth, lane by lane; a lane arrives with its last copy; every destination
    receives each lane once."""
    fab, dsts = Fabric(UNICAST), (4, 5, 6)
    layout, x = _round([0.0, 1e-3], [1, 1])
    got = fab.hop((2,), dsts, layout, x)
    ser, lat = fab.port.serialize_s(1), fab.port.latency_s
    flits = -(-2 * 4096 // 192)
    assert got.ready_s.tolist() == pytest.approx([3 * flits * ser + lat, 1e-3 + 3 * flits * ser + lat], rel=1e-12)
    ports = fab.stats()["ports"]
    assert ports[2]["messages_out"] == 6 and ports[2]["bytes_out"] == 6 * flits * 256
    assert all(ports[d]["messages_in"] == 2 and ports[d]["bytes_in"] == 2 * flits * 256 for d in dsts)
    assert Fabric(CFG).port.serialize_s(1) == 2 * ser  # multicast halves the lane bandwidth


def test_an_empty_round_moves_nothing():
    fab = Fabric(CFG)
    layout, x = _round([], [])
    assert fab.hop((0,), (2,), layout, x) is x and fab.stats()["wire_bytes"] == 0
