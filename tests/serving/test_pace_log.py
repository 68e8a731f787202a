"""The paced clock's lag warnings over hours: after the quiet time, a lighter episode is logged again,
but the climb back to the factor said before is not news (counted, not logged)."""
from __future__ import annotations

import logging

from cent_serve.pace_monitor import PaceMonitor


def test_a_climb_back_to_a_factor_said_before_is_counted_not_logged(caplog):
    caplog.set_level(logging.WARNING, logger="cent.serving")
    now = [0.0]
    mon = PaceMonitor(pace_factor=0.02, clock=lambda: now[0])

    def episode(wall_per_round: float) -> None:  # 3 rounds of 1 simulated s each, said as it ends
        for _ in range(3):
            mon.delivered(1.0, 1e6, 0.0)  # 1 s late: past warn_s, on a paced latency only warn_s can judge
            mon.stepped(wall_per_round, 1.0)
        mon.on_schedule()
        now[0] += 0.1

    episode(0.1)  # needs 0.12: said
    now[0] += PaceMonitor.QUIET_S
    episode(0.03)  # the quiet time over: said (0.036), with nothing left unsaid
    episode(0.05)  # 0.06: higher than 0.036 but not than the 0.12 said before: counted
    episode(0.09)  # 0.108: likewise
    episode(0.2)  # 0.24: higher than any said: news
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split("--pace-factor ")[1].split(" or more")[0] for m in msgs] == ["0.12", "0.036", "0.24"], msgs
    assert "(2 more episodes of lag since the last warning went unlogged" in msgs[2]
    assert mon.num_episodes == 5


def _monitor():
    now = [0.0]
    mon = PaceMonitor(pace_factor=0.02, clock=lambda: now[0])

    def episode(wall_per_round: float) -> None:  # 3 rounds of 1 simulated s each, said as it ends
        for _ in range(3):
            mon.delivered(1.0, 1e6, 0.0)
            mon.stepped(wall_per_round, 1.0)
        mon.on_schedule()
        now[0] += 0.1

    return mon, now, episode


def _factors(caplog) -> list[str]:
    return [r.getMessage().split("--pace-factor ")[1].split(" or more")[0] for r in caplog.records]


def test_a_steadily_worsening_lag_is_logged_at_each_higher_factor_within_the_quiet_time(caplog):
    caplog.set_level(logging.WARNING, logger="cent.serving")
    mon, now, episode = _monitor()
    for wall in (0.1, 0.2, 0.4, 0.8):
        episode(wall)
    assert _factors(caplog) == ["0.12", "0.24", "0.48", "0.96"]


def test_a_lag_that_returns_hours_later_at_the_same_factor_is_logged_again(caplog):
    """The highest factor said is the bar for news only within the quiet time: after it, the same lag
    is logged again (an operator reading the log hours later sees it is back)."""
    caplog.set_level(logging.WARNING, logger="cent.serving")
    mon, now, episode = _monitor()
    episode(0.1)
    episode(0.1)  # within the quiet time, nothing new: counted
    now[0] += 3 * 3600.0
    episode(0.1)
    assert _factors(caplog) == ["0.12", "0.12"]
    assert "(1 more episode of lag since the last warning went unlogged" in caplog.records[1].getMessage()
