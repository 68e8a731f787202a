"""How late the paced engine's tokens reach their clients (`PaceMonitor`), for `serving.EngineLoop`
on the paced clock: its figures go to /v1/cent/status and the `cent:pace_*` metrics, its warnings to the
log (under `cent.serving`, the engine loop's name, as before they had a module of their own)."""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("cent.serving")


PACE_LAG_WARN_S = 0.5
"""Paced mode: how late a token may reach its client before the log warns (once per episode of
lag; `cent:pace_lag_seconds` shows the lag at any time), in wall seconds at pace factor 1 or more,
and below 1 in simulated seconds (`PaceMonitor.warn_s`): a client divides the wall times it
measures by the pace factor, so a token L wall seconds late is L / pace factor of error in its
figures (0.5 wall s at pace 0.1 would be 5 s of TTFT)."""
PACE_LATE_FRAC = 0.1
"""Paced mode: a request is late when one of its tokens reaches its client more than this fraction
of its paced latency (that token's simulated time from the request's arrival, times the pace factor:
what the client's clock should read) after its time. A lag far below PACE_LAG_WARN_S can still be
most of a short request's latency: the tiny model's 64-token completions at pace factor 10 took
0.36 to 0.68 wall s where 10 x their 0.0146 s simulated e2e is 0.146 s, with the lag under 0.5 s."""


class PaceMonitor:
    """How late the paced engine's tokens reach their clients, and the pace factor it could keep.

    Every lateness here is a token's: when the engine thread hands it to its client against when its
    paced time says it should (the request's arrival plus the token's simulated latency times the
    pace factor; `delivered`, once a round per request with new tokens). A round's start is not a
    token: a long round (a 0.65 s chunked prefill at pace factor 1) leaves the engine's clock at its
    start, so the round after it starts as late as the long one took to compute, while every token
    of both was early. `lag_s` (wall seconds) is how late the latest tokens delivered were (the
    latest of the last round that delivered any: its requests' first new tokens): 0 when they were
    on time, while the engine waits for the wall clock, and once nothing is in flight
    (`on_schedule`). An episode of lag starts when a token is more than `warn_s`
    (PACE_LAG_WARN_S) late, or more than PACE_LATE_FRAC of its paced latency late, and ends when
    the engine is on schedule again; `num_late_requests` and `late_frac_max` (the most a token was
    late, as a fraction of its paced latency) stay. The round that made the lag (a stall: a first
    round's warm-up, a busy machine) ran before its tokens were delivered and is not in the
    episode; the pace factor the engine could keep is measured over the episode's rounds, as wall
    seconds spent per simulated second with 20% headroom, and said once `ESTIMATE_ROUNDS` rounds or
    `ESTIMATE_WALL_S` of them have run (not after one: a round after a stall may still be slow),
    or, for a shorter episode, as it ends. `needed_factor` is never below what the log said for the
    episode (its later, lighter rounds do not talk it down)."""

    HEADROOM = 1.2
    ESTIMATE_ROUNDS = 8
    ESTIMATE_WALL_S = 1.0
    QUIET_S = 30.0
    """Wall seconds after a warning in which one that tells nothing new (a stall again, or a pace factor
    no higher than the highest said so far) is counted, not logged: the next warning says how many were not. A
    busy machine stalls a low pace factor's rounds often (the soak audit: 63 lines in 47 s at 0.02)."""

    def __init__(self, pace_factor: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.pace_factor = pace_factor
        self._clock = clock
        self._last_warn_at: float | None = None
        self._last_need: float | None = None  # the highest factor a logged warning gave (None: none yet)
        self._unsaid = 0
        self.warn_s = PACE_LAG_WARN_S * min(1.0, pace_factor)
        """How late (wall s) a token may be before an episode starts: PACE_LAG_WARN_S, simulated below
        pace factor 1."""
        self._said: float | None = None  # the pace factor the log gave for this episode
        self.lag_s = 0.0
        self._round_delivered = False  # whether `lag_s` already holds a token of the latest round
        self.num_episodes = 0
        self.num_late_requests = 0
        """Requests a token of which reached its client more than PACE_LATE_FRAC of its paced latency late."""
        self.late_frac_max = 0.0
        """The most any request's token was late, as a fraction of its paced latency (1.5: a client
        timed 2.5x the simulated latency times the pace factor)."""
        self._worst_frac = 0.0  # this episode's
        self._in_episode = self._warn_pending = False
        self._wall_s = self._sim_s = 0.0
        self._rounds = 0
        self._worst_s = 0.0

    def on_schedule(self) -> None:
        """The engine waits for the wall clock, or nothing is in flight: no lag."""
        if self._warn_pending:  # a short episode: said as it ends
            self._warn()
        self.lag_s, self._in_episode = 0.0, False

    def delivered(self, late_s: float, paced_s: float, worst_frac: float) -> float:
        """A request's token reached its client `late_s` wall seconds after its time (negative: early),
        which lies `paced_s` wall seconds after the request's arrival (engine thread, paced mode, once a
        round per request with new tokens: its first new one, the latest of them). `worst_frac`: the
        most the request's tokens were late before, as a fraction of their paced latency; returns it
        with this one, so that the request is counted late once, when it first passes PACE_LATE_FRAC."""
        late = max(0.0, late_s)
        self.lag_s = max(self.lag_s, late) if self._round_delivered else late
        self._round_delivered = True
        if late <= 0.0:
            return worst_frac
        frac = late / paced_s if paced_s > 0.0 else 0.0
        self.late_frac_max = max(self.late_frac_max, frac)
        is_late = frac > PACE_LATE_FRAC
        self.num_late_requests += is_late and worst_frac <= PACE_LATE_FRAC
        self._late(late, frac, is_late or late > self.warn_s)
        return max(worst_frac, frac)

    def _late(self, late_s: float, frac: float, starts: bool) -> None:
        """Tokens run `late_s` wall s (`frac` of a paced latency) late; `starts`: enough for an episode."""
        if not self._in_episode:
            if not starts:
                return
            self._in_episode, self._wall_s, self._sim_s, self._rounds, self._said = True, 0.0, 0.0, 0, None
            self._worst_s = self._worst_frac = 0.0
            self.num_episodes += 1
            self._warn_pending = True
        self._worst_s, self._worst_frac = max(self._worst_s, late_s), max(self._worst_frac, frac)

    def stepped(self, wall_s: float, sim_s: float) -> None:
        """One round took `wall_s` of wall time and advanced the clock by `sim_s` (before its tokens
        are `delivered`)."""
        self._round_delivered = False
        if not self._in_episode:
            return
        self._wall_s += wall_s
        self._sim_s += sim_s
        self._rounds += 1
        if self._warn_pending and (self._rounds >= self.ESTIMATE_ROUNDS or self._wall_s >= self.ESTIMATE_WALL_S):
            self._warn()

    def _warn(self) -> None:
        self._warn_pending = False
        need = self.needed_factor()
        stall = need is None or need <= self.pace_factor  # the rounds keep up: something stalled them once
        if not stall:
            self._said = need
        now = self._clock()
        news = not stall and (self._last_need is None or need > self._last_need)
        if self._last_warn_at is not None and now - self._last_warn_at < self.QUIET_S and not news:
            self._unsaid += 1
            return
        unsaid = (f" ({self._unsaid} more episode{'s' if self._unsaid > 1 else ''} of lag since the last warning "
                  "went unlogged: /v1/cent/status counts them in pace_lag_episodes)") if self._unsaid else ""
        # the highest factor said stays the bar for news: after the quiet time a lighter episode's lower
        # factor is logged, but it must not let every climb back to the figure said before be news again
        # (a 7-minute soak at pace 0.5 logged 2.76, 4.05, 10.8 and 25.2 within 1.2 s that way)
        self._last_warn_at, self._unsaid = now, 0
        if news:
            self._last_need = need
        # what a client's own figures are off by: the worst token's lateness over its paced latency
        share = (f", {self._worst_frac:.0%} of a request's paced latency: a client times it "
                 f"{1 + self._worst_frac:.3g}x the simulated latency x pace factor") if self._worst_frac else ""
        if stall:
            log.warning("paced mode fell behind: tokens reached clients up to %.2f s late (%.3g s of simulated "
                        "time%s) after a stall (a first round, a busy machine); the rounds themselves keep up at pace "
                        "factor %g%s", self._worst_s, self._worst_s / self.pace_factor, share, self.pace_factor, unsaid)
            return
        log.warning("paced mode cannot keep up: tokens reach clients %.2f s late (%.3g s of simulated time at pace "
                    "factor %g%s); the rounds run at %.3g wall s per simulated s, so use --pace-factor %.3g or more%s",
                    self._worst_s, self._worst_s / self.pace_factor, self.pace_factor, share,
                    self._wall_s / self._sim_s, need, unsaid)

    def needed_factor(self) -> float | None:
        """The smallest pace factor that kept up with this episode's rounds (None before one), at
        least the one the log gave for it."""
        if self._sim_s <= 0:
            return None
        return max(self.HEADROOM * self._wall_s / self._sim_s, self._said or 0.0)
