"""A replay's progress bar (`Progress`, a tqdm bar): a tick per request that ended, and for an
in-process replay the fill and the time left by request-rounds (`request_rounds`, `work_eta_s`), the
work the engine still has, not by the requests ended.
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from cent_serve.bench.records import RequestRecord


@dataclass(frozen=True)
class WorkDone:
    """Where an in-process replay stood at `elapsed_s` wall seconds (`Progress`): request-rounds run
    (a request's step in an engine round: a prefill chunk or a decode token), request-rounds the
    requests the engine took need in all (`request_rounds`), and what was offered to it: the
    request-rounds of the requests offered, taken or not, when the replay's are known, else the
    requests."""

    elapsed_s: float
    done: int
    admitted: int
    offered: int


ETA_WINDOW_S = 10.0
"""`work_eta_s` takes the pace of the last third of the replay, at least this many wall seconds of it."""
MIN_PACE_INTERVALS = 3
"""`work_pace` has no pace from fewer redraw intervals: of one or two, a stall is half or more."""


def request_rounds(num_prompt_tokens: int, num_output_tokens: int, chunk_tokens: int) -> int:
    """Engine rounds a request runs in: its prompt in chunks of `chunk_tokens`
    (`Scheduler.prefill_chunk_tokens`), the last of which makes the first token, then a round per
    other output token. A replay's wall time goes by these, not by the tokens made: a round costs
    about the same per request in it whether it prefills or decodes, and with CENT's one-token
    prefill chunks the prompts are most of the rounds (1500 azure_conv_2023 requests on llama2-70b:
    1.53M request-rounds for 379k output tokens). GPUs share a chunk's budget with the decodes, so
    theirs can take a round or two more."""
    return -(-num_prompt_tokens // chunk_tokens) + num_output_tokens - 1


def work_left(now: WorkDone, then: WorkDone, total: float | None) -> float | None:
    """Request-rounds left at `now` of a replay that offers `total` in all (in `WorkDone.offered`'s
    unit): those the requests taken still need, and of what is still to come the share the engine
    took of what was offered since `then` (refusals take none: a full queue takes few, a prompt
    too long for the model nothing); since the start when nothing was offered since `then`. None
    when the total is not known."""
    if total is None:
        return None
    offered, admitted = now.offered - then.offered, now.admitted - then.admitted
    each = admitted / offered if offered else (now.admitted / now.offered if now.offered else 0.0)
    return max(0, now.admitted - now.done) + max(0, total - now.offered) * each


def work_pace(points: Sequence[WorkDone]) -> float | None:
    """Request-rounds a wall second, the median over the intervals between successive `points`
    (oldest first): a one-off stall is one slow interval, which a median passes over where the
    ratio of the window's sums carried it until it left the window (numba compiling its kernels
    on a cold cache took 22 s of the first two rounds of a 48 s replay, and the time left said
    then stayed twice the truth for the 10 s after). None from fewer than MIN_PACE_INTERVALS intervals
    (the first redraws after a stall said hours) or while the median ran none."""
    paces = sorted((b.done - a.done) / (b.elapsed_s - a.elapsed_s)
                   for a, b in itertools.pairwise(points) if b.elapsed_s > a.elapsed_s)
    if len(paces) < MIN_PACE_INTERVALS:
        return None
    mid = len(paces) // 2
    pace = paces[mid] if len(paces) % 2 else (paces[mid - 1] + paces[mid]) / 2
    return pace if pace > 0 else None


def work_eta_s(points: Sequence[WorkDone], total: float | None) -> float | None:
    """Wall seconds left of an in-process replay that offers `total` (`work_left`'s): `work_left` at the last of
    `points` (since the first of them) at `work_pace`, not the requests ended: a request the queue
    refuses (`QueueFull`) ends at once and costs nothing, so under overload the request count raced
    ahead and tqdm's estimate from it was optimistic. 0 when nothing is left; None without a pace or a total."""
    left = work_left(points[-1], points[0], total)
    if not left:  # None, or nothing left
        return left
    pace = work_pace(points)
    return None if pace is None else left / pace


class _Bar(tqdm):
    """tqdm whose fill is `progress()`'s fraction of the work, `{ended}` the requests ended (its `n`)
    and `{work_left}` the estimate of `eta` (callables of the elapsed seconds)."""

    eta = None
    progress = None

    @property
    def format_dict(self):
        d = super().format_dict
        left = self.eta(d["elapsed"]) if self.eta is not None else None
        d["work_left"] = "?" if left is None else self.format_interval(left)
        d["ended"] = d["n"]
        if self.progress is not None and d["total"]:
            if d["rate"] is None and d["elapsed"]:  # tqdm would take the rate from `n`: the requests' instead
                d["rate"] = (d["n"] - d["initial"]) / d["elapsed"]
            d["n"] = d["total"] * self.progress()
        return d


class Progress:
    """A replay's tqdm bar: one tick per request that ended, failed ones counted as `failed=N`. With
    `by_work` (an in-process replay, which tells it `offer`s and `advanced`), the fill and the time
    left go by request-rounds (`work_eta_s`), not by tqdm's count of the requests ended, which it
    still shows."""

    BAR_BY_WORK = ("{desc}: {percentage:3.0f}%|{bar}| {ended}/{total_fmt} [{elapsed}<{work_left}, "
                   "{rate_fmt}{postfix}]")

    def __init__(self, total: int | None, desc: str, enabled: bool = True, by_work: bool = False,
                 total_rounds: int | None = None) -> None:
        """`total`: the requests the replay offers; `total_rounds`: their `request_rounds` when they
        are known before (a list of requests), else the work still to come is what each request
        offered brought."""
        self.failed = 0
        self.total = total
        self.total_rounds = total_rounds
        self.offered = 0
        self.offered_work = 0
        """What was offered in `WorkDone.offered`'s unit: request-rounds with `total_rounds`, else requests."""
        self.admitted_work = 0
        self.done_work = 0
        self._points: deque[WorkDone] = deque([WorkDone(0.0, 0, 0, 0)])
        by_work = by_work and total is not None
        self.bar = _Bar(total=total, unit="req", desc=desc, disable=not enabled, mininterval=1.0,
                        bar_format=self.BAR_BY_WORK if by_work else None)
        if by_work:
            self.bar.eta, self.bar.progress = self.eta_s, self.fraction_done
        self.bar.set_postfix(failed=0, refresh=False)

    def offer(self, work: int | None, rounds: int = 0) -> None:
        """A request was offered to the engine: `work` the rounds it needs when taken
        (`request_rounds`), None when refused; `rounds` its rounds as `total_rounds` counted them."""
        self.offered += 1
        self.offered_work += rounds if self.total_rounds is not None else 1
        self.admitted_work += work or 0

    def redone(self, n: int) -> None:
        """The requests taken need `n` request-rounds more: preempted or requeued after a fault, they
        prefill again what they had computed (`Scheduler.rounds_redone`)."""
        self.admitted_work += n

    def dropped(self, n: int) -> None:
        """A request taken ended with `n` of its request-rounds not run (failed): they are no work to do."""
        self.admitted_work -= n

    def advanced(self, n: int) -> None:
        """`n` request-rounds ran (the requests in an engine round)."""
        self.done_work += n

    def eta_s(self, elapsed_s: float) -> float | None:
        """`work_eta_s` at `elapsed_s` over the points this has been asked at (one a redraw) within
        the last third of the replay or ETA_WINDOW_S, whichever is longer, and the last before them."""
        now = self._now(elapsed_s)
        points = self._points
        points.append(now)
        window = max(ETA_WINDOW_S, elapsed_s / 3)
        while len(points) > 2 and points[1].elapsed_s <= elapsed_s - window:
            points.popleft()
        return work_eta_s(points, self._total())

    def _now(self, elapsed_s: float) -> WorkDone:
        return WorkDone(elapsed_s, self.done_work, self.admitted_work, self.offered_work)

    def _total(self) -> int | None:
        return self.total_rounds if self.total_rounds is not None else self.total

    def fraction_done(self) -> float:
        """The request-rounds run of all the replay will run (`work_left` since the window's start);
        1 when nothing is left."""
        left = work_left(self._now(0.0), self._points[0], self._total()) or 0.0
        return self.done_work / (self.done_work + left) if left > 0 else 1.0

    def done(self, rec: RequestRecord) -> None:
        if not rec.ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
