"""Continuous batching in simulated time: who runs in the next round, and with how many tokens.

The devices are split into lanes: with pipeline parallelism a replica has
`mapping.lanes` (= pp) lanes, groups of sequences that circulate through the
stages at the same time, each of up to `max_seqs_per_stage` sequences (the
paper's choice is one); with tensor parallelism the lanes are the pp
micro-batches of the tp groups. Data-parallel replicas multiply the lanes.

Policy (vLLM's, in rounds): running sequences first, each with one decode
token or its next prefill chunk; KV blocks are reserved before a round (on every
kind of device of the replica: `cent_serve.kv_room`, a windowed block keeping a
sequence's window only); when
the pool runs dry the most recently admitted sequence of the same replica is
preempted (its KV freed, recomputed later from its prompt and output so far).
Then waiting requests, first come first served, that have arrived by the
round's clock, each on the emptiest lane of a replica where its whole prompt
fits; the whole prompt's blocks are reserved at admission.

`schedule` returns the round as one `RoundPlan` per replica (`cent_serve.messages`), with the
sequences new to the devices and the ids the devices may forget (finished, aborted, preempted),
each sent once: the one route freed sequences take. A replica with nothing to run but ids to
free still gets a plan (empty lanes), so its devices' caches empty at once.
"""
from __future__ import annotations

import itertools
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.kv_room import KVRoom
from cent_serve.messages import Layout, RoundPlan
from cent_serve.request import Request, RequestRefused, Status
from cent_serve.timing.mapping import Mapping
from cent_serve.timing.mapping import kv_room as mapping_kv_room


class QueueFull(RequestRefused):
    """The waiting queue is at `scheduler.max_waiting` (the API answers 429)."""

    def __init__(self, message: str) -> None:
        super().__init__("queue_full", message)


def kv_room(cfg: CentConfig, mp: Mapping) -> KVRoom:
    """What a replica's devices hold of KV (`KVRoom`), each device's count as its paged cache makes it
    (`timing.mapping.device_kv_blocks`): what DRAM holds after its weight shard, in blocks of
    `scheduler.kv_block_tokens` tokens of every block it holds. Not capped by the override."""
    return mapping_kv_room(cfg.model, mp, cfg.device, cfg.scheduler.kv_block_tokens, cfg.kv_tokens_cap)


@dataclass
class ReplicaRound:
    """One replica's part of a round: the plan for its devices, and the engine's side of it."""

    replica: int
    plan: RoundPlan
    steps: list[tuple[Request, int]] = field(default_factory=list)
    """(request, tokens this round), in the layout's sequence order."""


@dataclass
class SchedulerOutput:
    rounds: list[ReplicaRound]
    start_s: float
    """The round's boundary: the engine's clock, moved to the next arrival if nothing ran."""


class Scheduler:
    """Waiting and running queues over `num_replicas` x `lanes_per_replica` lanes."""

    @classmethod
    def from_config(cls, cfg: CentConfig, timer, num_replicas: int) -> Scheduler:
        """The scheduler of `cfg`'s hardware over `num_replicas` replicas of `timer.mapping` (the
        engine's): on GPUs vLLM's batching, many sequences a step, chunked prefill in a token budget."""
        mp, sc, full = timer.mapping, cfg.scheduler, cfg.resolved_numerics == "full"
        if cfg.on_gpus:
            g = cfg.gpu
            room = timer.kv_room(sc.kv_block_tokens)  # the override caps it in the scheduler
            return cls(num_replicas, mp.lanes, g.num_seqs, room, g.num_batched_tokens,
                       sc.max_waiting, full, max_batched_tokens=g.num_batched_tokens,
                       kv_blocks_override=sc.num_kv_blocks_override)
        return cls(num_replicas, mp.lanes, sc.max_seqs_per_stage, kv_room(cfg, mp),
                   sc.prefill_chunk_tokens, sc.max_waiting, full,
                   kv_blocks_override=sc.num_kv_blocks_override)

    def __init__(self, num_replicas: int, lanes_per_replica: int, seqs_per_lane: int,
                 kv: KVRoom, prefill_chunk_tokens: int, max_waiting: int, with_token_ids: bool = False,
                 max_batched_tokens: int | None = None, kv_blocks_override: int | None = None) -> None:
        self.block_tokens = kv.block_tokens
        self.kv_blocks_override = kv_blocks_override
        """scheduler.num_kv_blocks_override, or None: `kv` is what the devices hold, capped at it."""
        self.max_batched_tokens = max_batched_tokens
        """Tokens a lane (a micro-batch) runs at most in a round (GPUs: vLLM's max_num_batched_tokens;
        the decodes first, prefill chunks in what is left), or None (CENT: no budget)."""
        self.with_token_ids = with_token_ids
        """Full numerics: plans carry the input ids and which sequences want logits."""
        self._freed: dict[int, list[int]] = {}  # per replica with any, seq ids its devices may forget
        self._layouts: list[Layout | None] = [None] * num_replicas
        """Each replica's last plan's layout: an equal one is sent as that same object, so each device
        (and the timer, and the switch) knows it by identity, not by comparing it again."""
        self._round_ids = itertools.count()
        self.num_replicas, self.lanes_per_replica = num_replicas, lanes_per_replica
        self.seqs_per_lane = seqs_per_lane
        self.device_kv = kv
        """What a replica's devices hold, before `kv_blocks_override` (the refusal's fix names what caps it)."""
        self.kv = kv.capped(kv_blocks_override)
        """What admission counts against: every row of it (`KVRoom`), the blocks the devices' paged caches
        allocate, so what is admitted fits every device of the replica (exactly on a device of one kind of
        block; on one holding both kinds, at most one block a sequence above its bytes rounded up to a block:
        `kv_room.seq_blocks`)."""
        self._fits_alone: dict[int, bool] = {}
        """`fits_alone`'s answers, by length."""
        self.kv_blocks = self.kv.num_blocks
        """The fewest blocks a device of a replica holds (the status's and the API's pool size)."""
        self._free = [[r.blocks for r in self.kv.rows] for _ in range(num_replicas)]
        """Per replica, the free blocks of each row's devices."""
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_waiting = max_waiting
        self.waiting: deque[Request] = deque()
        self._requeued: set[Request] = set()
        """Waiting requests that were admitted before and are queued again, not admitted since: put back
        by `requeue` (their devices died) or `_preempt` (KV space). They count for no place of
        `max_waiting` (`is_full`)."""
        self.running: list[Request] = []  # in admission order (the last is preempted first)
        self.lanes: list[list[list[Request]]] = [[[] for _ in range(lanes_per_replica)]
                                                 for _ in range(num_replicas)]
        self._held: dict[Request, int] = {}  # per running request, its keys' blocks reserved (ceil(n / block))
        self._next_seq_id = 0
        self.num_preemptions = 0
        self.rounds_redone = 0
        """Request-rounds that preemptions and fault requeues added: a request recomputed from its prompt
        and output so far runs again the prefill chunks of what it had computed (a replay's progress
        bar counts them as work, `cent_serve.bench.runner.request_rounds`)."""
        self.up = [True] * num_replicas
        """Replicas whose devices can run; a down one (being re-created) takes no new requests."""

    # ------------------------------------------------------------------ queues

    def check_fits(self, num_prompt_tokens: int) -> None:
        """Raise ValueError when a request could never be served (its KV exceeds a replica)."""
        need, have = self.kv.tightest(num_prompt_tokens + 1)
        if need <= have:
            return
        mixed = self.kv.is_hybrid
        where = (f" on a device of its replica (a windowed block keeps {self.kv.cap} of its tokens, a full-attention "
                 "one all)" if mixed else "")
        said = (f"the prompt ({num_prompt_tokens} tokens) needs {need} KV blocks of {self.block_tokens} tokens "
                f"(scheduler.kv_block_tokens){where}; {'that device' if mixed else 'a replica'} holds {have}")
        override = self.kv_blocks_override
        if override is None or override >= need:  # the devices' own count is short: more of them hold more
            raise RequestRefused("kv_capacity", f"{said}: shorten the prompt or use more devices")
        # the override caps the blocks: more devices do not help while it is set
        devices = self.device_kv.rows[self.kv.tightest_row(num_prompt_tokens + 1)].blocks  # that row's own count
        fix = (f"raise scheduler.num_kv_blocks_override to {need} or more, or remove it"
               if self.device_kv.fits(num_prompt_tokens + 1) else
               "raise or remove scheduler.num_kv_blocks_override and use more devices")
        why = (f"capped by scheduler.num_kv_blocks_override={override} (its devices hold {devices})" if override < devices
               else f"its devices' (scheduler.num_kv_blocks_override={override} would cap more of them)")
        raise RequestRefused("kv_capacity", f"{said}, {why}: shorten the prompt, or {fix}")

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks a sequence of `num_tokens` tokens takes on the device it fills the most."""
        return self.kv.tightest(num_tokens)[0]

    def fits_alone(self, num_tokens: int) -> bool:
        """Whether a sequence of `num_tokens` tokens fits an empty replica. The engine asks at every
        token a sequence makes (`Engine._append_token`): the answer per length is kept, as `self.kv`
        never changes (a dict look-up where `KVRoom.fits` took 4 us, 4% of a whole-trace replay)."""
        fits = self._fits_alone.get(num_tokens)
        if fits is None:
            fits = self._fits_alone[num_tokens] = self.kv.fits(num_tokens)
        return fits

    @property
    def free_blocks(self) -> list[int]:
        """Per replica, the fewest free KV blocks of its rows (`KVRoom.rows`; one row: its free blocks)."""
        return [min(free) for free in self._free]

    def set_up(self, replica: int, up: bool) -> None:
        """Mark a replica up or down (its running sequences must be finished before it goes down;
        a replica that comes back has new devices, which know no sequence)."""
        assert up or not any(q.replica == replica for q in self.running), f"replica {replica} still runs"
        self.up[replica] = up
        self._freed.pop(replica, None)
        self._layouts[replica] = None  # new devices know no layout: the next plan's is sent as made

    def any_up(self) -> bool:
        return any(self.up)

    @property
    def num_requeued(self) -> int:
        """Waiting requests queued again after they were admitted: their replica's devices died
        (`requeue`), or they were preempted for KV space (`_preempt`)."""
        return len(self._requeued)

    @property
    def free_seats(self) -> int:
        """Lane places no running sequence holds on the replicas that are up: that many waiting
        requests take a lane at the next round (KV permitting), so they do not count against
        `max_waiting`."""
        places = sum(self.up) * self.lanes_per_replica * self.seqs_per_lane
        return max(0, places - len(self.running))

    @property
    def max_admitted(self) -> int:
        """Requests `is_full` lets in at once at most: every lane place of every replica free, and
        `max_waiting` left waiting. A request of more choices can never be admitted whole (the API's 400)."""
        return self.num_replicas * self.lanes_per_replica * self.seqs_per_lane + self.max_waiting

    def is_full(self, n: int = 1) -> bool:
        """Whether `n` new requests (a request's choices, admitted together) would exceed the
        waiting bound: more than `max_waiting` requests would be left waiting once the free lane
        places are taken. The one admission rule; the API's fast 429 asks it too. A request queued
        again after its devices died (`requeue`) or preempted (`_preempt`) was admitted already: it
        counts for no place of `max_waiting` (a fault does not turn new requests away), and takes a
        free place first (it is at the front of the queue). So the waiting stay bounded: at most
        `max_waiting` new ones, and the ones queued again, which held lane places. Without a fault a
        preempted request leaves a free place behind, so this is the rule of waiting minus free places;
        while requeued ones outnumber the free places, a preemption's place balances it as before."""
        waiting, seats = self._counted()
        return waiting + n > self.max_waiting + seats

    def _counted(self) -> tuple[int, int]:
        """(the waiting requests `max_waiting` counts, the free lane places left to them): the ones
        queued again after they were admitted (a device fault, a preemption) count for none, and take
        the free places first."""
        again = len(self._requeued)
        return len(self.waiting) - again, max(0, self.free_seats - again)

    def queue_full(self, n: int = 1) -> QueueFull:
        """The refusal `add` raises when `is_full(n)`."""
        more = "one more" if n == 1 else f"{n} more (a request's choices are admitted together)"
        waiting, seats = self._counted()
        again = len(self._requeued)
        first = (f" (after {again} queued again when their devices failed or they were preempted, which go "
                 "first and are not counted)" if again else "")
        return QueueFull(f"{waiting} requests are waiting for {seats} free lane places{first}; {more} "
                         f"would leave more than scheduler.max_waiting={self.max_waiting} waiting: retry later")

    def add(self, req: Request) -> None:
        if self.is_full():
            raise self.queue_full()
        self.waiting.append(req)

    def finish(self, req: Request) -> None:
        """Drop a finished or aborted request from the queues and release its KV blocks."""
        if req in self._held:
            self._release(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            self._requeued.discard(req)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def kv_usage(self) -> float:
        """The share of KV blocks in use on the fullest kind of device, over the replicas."""
        usage = 0.0
        for k, row in enumerate(self.kv.rows):
            total = row.blocks * self.num_replicas
            if total:
                usage = max(usage, 1.0 - sum(free[k] for free in self._free) / total)
        return usage

    def next_arrival_s(self) -> float | None:
        return min((r.arrival_s for r in self.waiting), default=None)

    def next_start_s(self, now_s: float) -> float:
        """When a round scheduled at `now_s` starts: then, or, with nothing running, at the first
        arrival waiting if that is later (idle devices wait for it)."""
        nxt = None if self.running else self.next_arrival_s()
        return now_s if nxt is None else max(now_s, nxt)

    # ------------------------------------------------------------------ a round

    def schedule(self, now_s: float) -> SchedulerOutput:
        """The next round. Requests arriving after its boundary wait for a later round."""
        now_s = self.next_start_s(now_s)
        plan: dict[Request, int] = {}
        budget = self._budget()
        running = list(self.running)
        if self.max_batched_tokens is not None:  # decodes before prefill chunks (vLLM's order)
            running.sort(key=lambda q: q.num_tokens - q.num_computed > 1)
        for req in running:
            if req not in self._held:  # preempted earlier in this loop
                continue
            n = self._tokens_for(req, budget)
            if n == 0:
                continue  # no budget left this round: its prefill goes on next round
            while not self._reserve(req, req.num_computed + n):
                # the latest admitted on the same replica: only its blocks help
                victim = next(q for q in reversed(self.running) if q.replica == req.replica)
                self._preempt(victim)
                n_back = plan.pop(victim, 0)
                if budget is not None:  # its tokens go back to its lane's budget
                    budget[victim.replica, victim.lane] += n_back
                if victim is req:
                    break
            else:
                self._take(plan, budget, req, n)
        admitted = []
        for req in self.waiting:
            if req.arrival_s > now_s:
                continue  # FCFS among arrived requests; later ones may still be ahead in the deque
            slot = self._free_lane(self.kv.need(len(req.all_ids) + 1), budget)
            if slot is None:
                break  # no lane, or the oldest arrived request does not fit yet: keep order
            admitted.append(req)
            self._admit(req, slot)
            self._reserve(req, len(req.all_ids) + 1)  # the whole prompt: admitted prompts never collide
            self._take(plan, budget, req, self._tokens_for(req, budget))
        for req in admitted:
            self.waiting.remove(req)
            self._requeued.discard(req)
        return SchedulerOutput(self._plans(plan, now_s), now_s)

    def _plans(self, steps: dict[Request, int], now_s: float) -> list[ReplicaRound]:
        """One plan per replica with lanes to run or sequences to free, in replica order (the
        replicas with neither are not visited: most of many replicas are idle in most rounds)."""
        lanes: dict[int, dict[int, list[tuple[Request, int]]]] = {}
        for req, n in steps.items():  # running first, then admitted: each lane's order
            lanes.setdefault(req.replica, {}).setdefault(req.lane, []).append((req, n))
        return [self._plan(r, lanes.get(r, {}), now_s) for r in sorted(lanes.keys() | self._freed.keys())]

    def free_rounds(self, now_s: float) -> list[ReplicaRound]:
        """Plans with no lanes, one per replica with ids its devices may forget (sent when the
        engine goes idle, so the devices' KV caches do not hold finished sequences until the
        next round)."""
        return [self._plan(r, {}, now_s) for r in sorted(self._freed)]

    def _plan(self, replica: int, by_lane: dict[int, list[tuple[Request, int]]], now_s: float) -> ReplicaRound:
        ready, seqs, steps, new = [], [], [], {}
        lanes = tuple(sorted(by_lane))
        for lane in lanes:
            t = 0.0
            for req, n in by_lane[lane]:
                if req.scheduled_s is None:
                    req.scheduled_s = max(req.ready_s, now_s)
                t = max(t, req.ready_s, now_s if req.num_computed == 0 else 0.0)
                if req.num_computed == 0:
                    new[req.seq_id] = 0
                steps.append((req, n))
            ready.append(t)
            seqs.append(tuple([(req.seq_id, n) for req, n in by_lane[lane]]))  # a list first: no generator
        freed = tuple(self._freed.pop(replica, ()))
        seqs, last = tuple(seqs), self._layouts[replica]
        if last is not None and last.lanes == lanes and last.seqs == seqs:
            layout = last  # the same value: one comparison here rather than one per device
        else:
            layout = self._layouts[replica] = Layout(lanes, seqs)
        plan = RoundPlan(layout, ready, next(self._round_ids), new, freed)
        if self.with_token_ids:
            ids = [t for req, n in steps for t in req.all_ids[req.num_computed:req.num_computed + n]]
            plan.token_ids = np.array(ids, dtype=np.int64)
            plan.wants_logits = np.array([logit_rows(req, n) for req, n in steps], dtype=np.int64)
        return ReplicaRound(replica, plan, steps)

    def _budget(self) -> dict[tuple[int, int], int] | None:
        """Each (replica, lane)'s tokens for this round (filled as lanes are touched), or None when
        there is no budget (CENT: not a dict of infinities, looked up twice a sequence)."""
        if self.max_batched_tokens is None:
            return None
        cap = self.max_batched_tokens
        return defaultdict(lambda: cap)

    def _tokens_for(self, req: Request, budget: dict[tuple[int, int], int] | None) -> int:
        """`req`'s step this round: one decode token or its next prefill chunk, within what its
        lane's `budget` has left (not taken from it)."""
        left = req.num_tokens - req.num_computed
        n = left if left <= 1 else min(left, self.prefill_chunk_tokens)
        return n if budget is None else min(n, budget[req.replica, req.lane])

    @staticmethod
    def _take(plan: dict[Request, int], budget: dict[tuple[int, int], int] | None, req: Request, n: int) -> None:
        """`req` runs `n` tokens this round: into the plan, and out of its lane's budget."""
        plan[req] = n
        if budget is not None:
            budget[req.replica, req.lane] -= n

    def _free_lane(self, need: tuple[int, ...], budget: dict[tuple[int, int], int] | None) -> tuple[int, int] | None:
        """The emptiest lane with room on a replica whose devices have the KV blocks `need` (one a
        row) free and tokens left in its round's budget (ties: the replica with the most free
        blocks on its row with the fewest, then the lowest ids)."""
        best, full = None, self.seqs_per_lane
        for r in range(self.num_replicas):
            free = self._free[r]
            if not self.up[r] or any(n > f for n, f in zip(need, free)):
                continue
            most_free = -min(free)  # once a replica, not once a lane
            for l_id, members in enumerate(self.lanes[r]):
                if len(members) >= full or (budget is not None and budget[r, l_id] < 1):
                    continue
                key = (len(members), most_free, r, l_id)
                if best is None or key < best:
                    best = key
        return None if best is None else (best[2], best[3])

    def _admit(self, req: Request, slot: tuple[int, int]) -> None:
        req.replica, req.lane = slot
        req.seq_id = self._next_seq_id
        self._next_seq_id += 1
        req.status = Status.RUNNING
        self.lanes[req.replica][req.lane].append(req)
        self.running.append(req)
        self._held[req] = 0

    def _reserve(self, req: Request, num_tokens: int) -> bool:
        blocks, held = -(-num_tokens // self.block_tokens), self._held[req]
        if blocks <= held:
            return True
        free = self._free[req.replica]
        extra = [a - b for a, b in zip(self.kv.need_blocks(blocks), self.kv.need_blocks(held))]
        if any(e > f for e, f in zip(extra, free)):
            return False
        free[:] = [f - e for e, f in zip(extra, free)]
        self._held[req] = blocks
        return True

    def _release(self, req: Request) -> None:
        free = self._free[req.replica]
        free[:] = [f + n for f, n in zip(free, self.kv.need_blocks(self._held.pop(req)))]
        self._freed.setdefault(req.replica, []).append(req.seq_id)  # the devices forget it with the next plan
        self.running.remove(req)
        self.lanes[req.replica][req.lane].remove(req)

    def requeue(self, reqs: list[Request]) -> None:
        """Running requests whose replica's devices died: back to the front of the queue, in the order
        given (the engine gives arrival order), to be recomputed from their prompt and output so far
        on a replica that is up (their KV went with the devices). A preemption's move, not counted as
        one (`num_preemptions` counts those for KV space, as vLLM's)."""
        for req in reversed(reqs):
            self._release(req)
            req.status = Status.WAITING
            self._recompute(req)
            self.waiting.appendleft(req)
            self._requeued.add(req)

    def _recompute(self, req: Request) -> None:
        """`req` starts over from its prompt and output so far: its rounds left grow from the chunks of
        its tokens not computed to the chunks of all of them (`rounds_redone`)."""
        chunk, total = self.prefill_chunk_tokens, req.num_tokens
        self.rounds_redone += -(-total // chunk) - -(-(total - req.num_computed) // chunk)
        req.num_computed = 0

    def _preempt(self, req: Request) -> None:
        """Recompute later: KV gone, back to the front of the queue with its output kept."""
        self._release(req)
        req.status = Status.WAITING
        self._recompute(req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        self._requeued.add(req)  # admitted before: the place it leaves is its own (`is_full`)


def logit_rows(req: Request, n: int) -> int:
    """How many of the last positions of `req`'s step of `n` tokens need logits: all of them while
    prompt tokens after the first still lack their log-probabilities (`prompt_logprobs`), else
    the last one if the step ends the known tokens (the host samples the next), else none. A
    recompute (a preemption, or `Engine._recover` after its devices died) of a request that has them
    all asks for none: the prompt prefilled again in other chunks gives float32 sums that differ in
    the last bits, and a stream sent the ones there were with the first token (`EngineLoop._deliver`)."""
    if (req.params.prompt_logprobs is not None and req.num_computed < len(req.prompt_ids) - 1
            and (req.prompt_logprobs is None or req.prompt_logprobs[-1] is None)):
        return n
    return int(req.num_computed + n == req.num_tokens)
