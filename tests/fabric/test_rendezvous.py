"""The one lockstep relay of a unit's exchanges (`fabric.rounds.Rendezvous`): all ranks get the
concatenation once all offered; a failure releases exactly the ranks waiting in its round, at
once or when they arrive, and never those of another round."""
from __future__ import annotations

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from fabric.rounds import Rendezvous
from fabric.switch import Fabric

CFG = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 1, 4), numerics="full")


def _rv() -> Rendezvous:
    return Rendezvous(Fabric(CFG), 3)


def _slice(r: int) -> np.ndarray:
    return np.full((2, 2), float(r), dtype=np.float32)


def test_the_last_offer_hands_every_rank_the_concatenation():
    rv = _rv()
    assert rv.offer(0, 5, "attn", _slice(0)) == {} and rv.offer(2, 5, "attn", _slice(2)) == {}
    replies = rv.offer(1, 5, "attn", _slice(1))
    assert sorted(replies) == [0, 1, 2] and all(kind == "full" for kind, _ in replies.values())
    assert replies[0][1].tolist() == np.concatenate([_slice(0), _slice(1), _slice(2)], axis=-1).tolist()
    assert rv.offer(0, 5, "o_proj", _slice(0)) == {}  # the next exchange starts afresh


def test_a_failed_rank_releases_the_waiting_and_those_still_to_come():
    rv = _rv()
    rv.offer(0, 5, "attn", _slice(0))
    released = rv.break_round(5, "rank 1 failed")
    assert released == {0: ("abort", "rank 1 failed")}
    assert rv.offer(2, 5, "attn", _slice(2)) == {2: ("abort", "rank 1 failed")}  # arrives later: at once
    assert rv.offer(0, 6, "attn", _slice(0)) == {}  # the next round is a new one


def test_a_late_failure_report_leaves_a_later_round_alone():
    """Seen under load through Ray: a rank's report that round 5 failed reaches the switch after
    the others have started round 6's exchange; it must not release them (the round would hang)."""
    rv = _rv()
    rv.offer(0, 6, "attn", _slice(0))
    rv.offer(1, 6, "attn", _slice(1))
    assert rv.break_round(5, "rank 2 failed in round 5") == {}
    replies = rv.offer(2, 6, "attn", _slice(2))
    assert sorted(replies) == [0, 1, 2] and all(kind == "full" for kind, _ in replies.values())


def test_ranks_out_of_lockstep_are_all_released():
    rv = _rv()
    rv.offer(0, 5, "attn", _slice(0))
    replies = rv.offer(1, 5, "act", _slice(1))
    assert sorted(replies) == [0, 1] and all(kind == "abort" for kind, _ in replies.values())
    assert rv.offer(2, 5, "attn", _slice(2))[2][0] == "abort"
    rv.offer(0, 7, "attn", _slice(0))
    assert rv.done(1, 7) == {0: ("abort", "ranks left lockstep: rank 1 finished while others wait at 'attn'")}


def test_a_gone_rank_releases_everyone_for_good():
    rv = _rv()
    rv.offer(0, 5, "attn", _slice(0))
    assert rv.close("device 9 is gone") == {0: ("abort", "device 9 is gone")}
    assert rv.offer(1, 8, "attn", _slice(1)) == {1: ("abort", "device 9 is gone")}
