"""Busy-until clocks over a round's lanes: the emulator's hot loops, compiled.

A resource (a channel group, the embedding unit, the LM head, a switch port) serves the lanes of
a round in arrival order: a lane starts at max(the resource's free time, its input's ready time)
and ends `cost` later (docs/architecture.md: an op starts at max(resource.free_at_s,
inputs.ready_s)). Lanes are taken in arrival order, ties to the lower lane (a stable sort by
ready time).

The kernels, each one call per round:

- `device_round`: a device's whole time pass. Each lane's block costs are read from the timer's
  context table (`SystemTimer.context_table`: PIM s, own accelerator s, joules of one block for
  one token at context L; a block with a window of its own, `model.layer_types`, at min(L, window))
  and added token by token, once per kind of block on the device; a lane's block step is PIM + accelerator x tb
  + the in-block collectives; the lanes then go through the device's clocks; its sequences'
  positions move on, and the sequences whose KV cache crosses into a new block are reported.
- `transfer`: a switch transfer from one port to a group of ports (`fabric.switch.Fabric`), the
  one transfer function of the fabric: every primitive and a round's hops are made of it.
- `tick`: a steady round of a one-device unit in one call (`device_worker.steady`):
  `device_round`, the round's energy so far plus this device's, then `hand_on_tick`: `transfer` to
  the next unit (or the host's sampling time after the last).
- `ranks_joules`: a tensor-parallel unit's joules when its ranks are twins (`fabric.rounds.Lockstep`).

They run once per device and per hop for every round, in every device process, so they are
compiled with numba (`njit`): the same IEEE double operations in the same order as the plain
Python they are written in (no fast-math), hence the same floats bit for bit as the Python
(checked in tests/timing/test_clock.py against a run with numba's compiler off) and as the recorded golden results
(tests/executor/test_sim_golden.py). With dozens of device processes taking turns on a core,
every call starts with cold caches, where each Python statement and each argument of a compiled
call costs microseconds: so a device's state is two packed arrays (`DeviceClock`), a layout's
what `SystemTimer.lane_plan` packs, and a round is one call.

`warm()` compiles them (numba caches the machine code on disk, so later processes, such as the
device actors, load it instead of compiling).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from cent_serve.timing.energy import TERMS

# busy slots of a device, in its busy array: then one per channel group
EMBEDDING, LM_HEAD, ACCELERATOR, DMA, GROUPS = 0, 1, 2, 3, 4
# a switch port's counters, in the columns of `Fabric.counts`
BYTES_OUT, BYTES_IN, FLITS_OUT, MESSAGES_OUT, MESSAGES_IN = 0, 1, 2, 3, 4
# a device's float state (`DeviceClock.f`): scalars, then the embedding unit [has, s, clock] and the
# LM head [has, s, clock, joules, on the last group's channels], then the busy seconds (4 + groups),
# the channel groups' clocks (groups), the joules charged by term (NUM_TERMS) and the LM head's joules
# a sequence by term (NUM_TERMS)
F_TB, F_JOULES, F_HOST_S, F_LATENCY, F_EMBED, F_HEAD, F_BUSY = 0, 1, 2, 3, 4, 7, 12
# a device's int state (`DeviceClock.i`): counters, sizes, then blocks per group (groups), whether
# each block's output leaves the device (blocks), the windows of its kinds of block (kinds: 0, the
# table's context as it is), each block's kind (blocks), and the next unit's devices (its route)
(I_CALLS, I_TOKENS, I_BLOCK_STEPS, I_BLOCK_TOKENS, I_GROUPS, I_BLOCKS, I_SRC, I_DSTS, I_FLIT_BYTES, I_KINDS,
 I_REST) = range(11)
NUM_TERMS = len(TERMS)


@njit(cache=True)
def _unit(f, at, t, count, busy, slot):  # pragma: no cover - compiled; tested through device_round
    """One lane through a once-per-token or once-per-sequence unit: f[at:at + 3] = [has it,
    seconds per item, clock] (clock updated), `count` items, arriving at `t`; returns when it leaves."""
    free = f[at + 2]
    start = t if t > free else free
    t = start + f[at + 1] * count
    f[at + 2] = t
    busy[slot] += t - start
    return t


@njit(cache=True)
def _missing_context(starts, seq_tokens, filled, windows):  # pragma: no cover - compiled; tested through device_round
    """The largest context a round needs if the table lacks any it needs (a windowed kind of block's
    min(L, w) too: `SystemTimer.fill_contexts` fills those with L), else 0."""
    need = 0
    for k in range(starts.shape[0]):
        for L in range(starts[k] + 1, starts[k] + seq_tokens[k] + 1):
            lacks = L >= filled.shape[0] or not filled[L]
            for w in windows:
                lacks = lacks or (w > 0 and L > w and (w >= filled.shape[0] or not filled[w]))
            if lacks:
                need = max(need, starts[k] + seq_tokens[k])
                break
    return need


@njit(cache=True)
def _lane_costs(table, starts, seq_tokens, lanes_i, lanes_f, tb, windows, kind_blocks, head_j, terms):  # pragma: no cover
    """Each lane's block step, own accelerator s and joules of one block of each kind (kinds,
    lanes), and tokens; each sequence's joules on the device (its blocks, and its share of the LM
    head): the sequences' tokens added in order (a lane of one token: its table row). A kind of
    block with window w > 0 reads the table at min(L, w), the keys it attends to (the table's costs
    depend on the context through those only); `kind_blocks`: the device's blocks of each kind.
    `terms`: the device's joules by term (`DeviceClock.terms`), each token's blocks' added from the
    table's term rows when it has them (a table of three rows charges none), which hold context
    after context (`token.ContextTable`)."""
    n_lanes, n_kinds = lanes_f.shape[1], windows.shape[0]
    n_terms = terms.shape[0]
    flat = table.reshape(table.size)
    base = 3 * table.shape[1]
    step, acc, energy = np.empty((n_kinds, n_lanes)), np.empty((n_kinds, n_lanes)), np.empty((n_kinds, n_lanes))
    tokens = np.empty(n_lanes, dtype=np.int64)
    own = np.full(starts.shape[0], head_j)
    for kd in range(n_kinds):
        w = windows[kd]
        for a in range(n_lanes):
            p_sum = 0.0
            a_sum = 0.0
            e_sum = 0.0
            n_tok = 0
            for k in range(lanes_i[a], lanes_i[a + 1]):
                s_e = 0.0
                for L in range(starts[k] + 1, starts[k] + seq_tokens[k] + 1):
                    c = L if w == 0 or L < w else w
                    p_sum = p_sum + table[0, c]
                    a_sum = a_sum + table[1, c]
                    e_sum = e_sum + table[2, c]
                    s_e = s_e + table[2, c]
                    at = base + c * n_terms
                    for q in range(n_terms):  # the same joules by term, where the total is charged
                        terms[q] += flat[at + q] * kind_blocks[kd]
                own[k] = s_e * kind_blocks[kd] + own[k] if kd else s_e * kind_blocks[kd] + head_j
                n_tok += seq_tokens[k]
            step[kd, a] = p_sum + a_sum * tb + lanes_f[0, a]
            acc[kd, a] = a_sum
            energy[kd, a] = e_sum
            tokens[a] = n_tok
    return step, acc, energy, tokens, own


@njit(cache=True)
def _through_clocks(ready, step, acc, energy, tokens, lanes_i, lanes_f, f, i, kind_blocks, terms,
                    head_terms):  # pragma: no cover
    """The lanes through the device's clocks, in arrival order; returns when each leaves. A block's
    step is its kind's (`_lane_costs`); the LM head's joules by term (`head_terms`) are added to
    `terms` as its joules to the total."""
    groups, blocks, kinds = i[I_GROUPS], i[I_BLOCKS], i[I_KINDS]
    group_blocks = i[I_REST:I_REST + groups]
    block_last = i[I_REST + groups:I_REST + groups + blocks]
    block_kind = i[I_REST + groups + blocks + kinds:I_REST + groups + 2 * blocks + kinds]
    busy = f[F_BUSY:F_BUSY + 4 + groups]
    group_free = f[F_BUSY + 4 + groups:F_BUSY + 4 + 2 * groups]
    done = np.empty(ready.shape[0])
    joules = f[F_JOULES]
    for a in np.argsort(ready, kind="mergesort"):
        t = ready[a]
        hop = lanes_f[1, a]
        if f[F_EMBED]:
            t = _unit(f, F_EMBED, t, tokens[a], busy, EMBEDDING)
        b = 0
        for j in range(groups):
            free = group_free[j]
            held = 0.0  # the group's steps, of blocks of more than one kind
            for _ in range(group_blocks[j]):
                start = free if free > t else t
                free = start + step[block_kind[b], a]
                held += step[block_kind[b], a]
                if block_last[b]:
                    t = free
                else:
                    t = free + hop
                    busy[DMA] += hop
                b += 1
            group_free[j] = free
            if kinds == 1:
                busy[GROUPS + j] += step[0, a] * group_blocks[j]
            else:
                busy[GROUPS + j] += held
        for kd in range(kinds):
            busy[ACCELERATOR] += acc[kd, a] * kind_blocks[kd]
            joules += energy[kd, a] * kind_blocks[kd]
        if f[F_HEAD]:
            n_lane_seqs = lanes_i[a + 1] - lanes_i[a]
            if f[F_HEAD + 4]:  # on the last stage's channel group: held from its last block's end (the
                # output's hop to the head included: the lanes go through in order) to the head's
                last = groups - 1
                start = group_free[last] if group_free[last] > t else t
                t = start + f[F_HEAD + 1] * n_lane_seqs
                group_free[last] = t
                busy[LM_HEAD] += t - start  # the head's work, done by the group's channels: counted for both
                busy[GROUPS + last] += t - start
            else:
                t = _unit(f, F_HEAD, t, n_lane_seqs, busy, LM_HEAD)
            joules += f[F_HEAD + 3] * n_lane_seqs
            for q in range(head_terms.shape[0]):  # (not `t`: the lane's time)
                terms[q] += head_terms[q] * n_lane_seqs
        done[a] = t
        i[I_TOKENS] += tokens[a]
        i[I_BLOCK_STEPS] += blocks
    f[F_JOULES] = joules
    return done


@njit(cache=True)
def _advance(seq, seq_tokens, block_tokens):  # pragma: no cover - compiled; tested through device_round
    """Positions move on; a sequence past the tokens its KV blocks hold needs a new block: their
    indexes are listed in seq's third row; returns how many."""
    n_crossed = 0
    for k in range(seq.shape[1]):
        end = seq[0, k] + seq_tokens[k]
        if end > seq[1, k]:
            seq[2, n_crossed] = k
            n_crossed += 1
            seq[1, k] = -(-end // block_tokens) * block_tokens
        seq[0, k] = end
    return n_crossed


@njit(cache=True)
def device_round(ready, table, filled, seq, lanes_i, lanes_f, f, i):  # pragma: no cover - compiled; tested
    """One device's time pass for a round; returns (done (lanes,), own joules (seqs,), the number
    of sequences crossed into a new KV block, the context needed).

    ready: (lanes,) float64, when each lane's input exists. table: (3, n) float64, one block at
    context L for one token: PIM s, own accelerator s, joules on one tp device; filled: (n,) bool,
    which contexts the table holds. seq: (3, seqs) int64, each sequence's position and the tokens
    its KV blocks hold (both updated), and the indexes of the sequences the round takes into a new
    KV block, listed in its first n_crossed entries (so a round returns no array of them). lanes_i:
    [offsets (lanes + 1) | tokens per sequence], lane k's sequences being offsets[k]:offsets[k + 1]
    in layout order; lanes_f: (3, lanes) float64, rows the in-block collectives and the
    block-to-block hop for the lane's tokens (`LanePlan`). f, i: the device's state (`DeviceClock`;
    clocks, busy seconds, joules and counters updated).

    If the table lacks a context the round needs, nothing is changed and the last value returned
    is that context (else 0): fill the table and call again."""
    n_lanes, n_seqs = ready.shape[0], seq.shape[1]
    seq_tokens = lanes_i[n_lanes + 1:n_lanes + 1 + n_seqs]
    groups, blocks, kinds = i[I_GROUPS], i[I_BLOCKS], i[I_KINDS]
    windows = i[I_REST + groups + blocks:I_REST + groups + blocks + kinds]
    need = _missing_context(seq[0], seq_tokens, filled, windows)
    if need:
        return np.empty(n_lanes), np.empty(n_seqs), 0, need
    head_j = f[F_HEAD + 3] if f[F_HEAD] else 0.0
    block_kind = i[I_REST + groups + blocks + kinds:I_REST + groups + 2 * blocks + kinds]
    kind_blocks = np.zeros(kinds, dtype=np.int64)
    for b in range(blocks):
        kind_blocks[block_kind[b]] += 1
    # the joules by term (`DeviceClock.terms`): after the busy seconds and clocks, then the LM head's
    at = F_BUSY + 4 + 2 * groups
    n_terms = min((f.shape[0] - at) // 2, table.shape[0] - 3)
    terms, head_terms = f[at:at + n_terms], f[at + n_terms:at + 2 * n_terms]
    step, acc, energy, tokens, own = _lane_costs(table, seq[0], seq_tokens, lanes_i, lanes_f, f[F_TB], windows,
                                                 kind_blocks, head_j, terms)
    done = _through_clocks(ready, step, acc, energy, tokens, lanes_i, lanes_f, f, i, kind_blocks, terms,
                           head_terms)
    n_crossed = _advance(seq, seq_tokens, i[I_BLOCK_TOKENS])
    i[I_CALLS] += 1
    return done, own, n_crossed, 0


@njit(cache=True)
def transfer(src, dsts, flits, ser, ready, latency, flit_bytes, ports, counts):  # pragma: no cover - compiled; tested
    """Transfers of each lane's payload from port `src` to every port of `dsts` (one
    serialization at the source), in arrival order: each starts when its payload exists and the
    ports are free, holds them `ser[i]` seconds, and arrives `latency` later. Returns the arrival
    times (in the order given).

    flits (lanes,) int64, ser (lanes,) float64, ready (lanes,) float64. Port state: ports (3, n)
    float64, rows egress free time, ingress free time, egress busy seconds (updated; busy added
    lane by lane); counts (n, 5) int64 (`BYTES_OUT` ... `MESSAGES_IN`; updated).

    After a transfer every destination's ingress is busy exactly as long as the source's egress,
    so one clock (the latest of them) decides each start, as the max over all would."""
    n = ready.shape[0]
    arrival = np.empty(n)
    if n == 0:
        return arrival
    free = ports[0, src]
    for d in dsts:
        if ports[1, d] > free:
            free = ports[1, d]
    b = ports[2, src]
    for a in np.argsort(ready, kind="mergesort"):
        start = ready[a]
        if free > start:
            start = free
        free = start + ser[a]
        b += ser[a]
        arrival[a] = start + ser[a] + latency
    ports[2, src] = b
    ports[0, src] = free
    n_flits = 0
    for a in range(n):
        n_flits += flits[a]
    n_bytes = n_flits * flit_bytes
    counts[src, BYTES_OUT] += n_bytes
    counts[src, FLITS_OUT] += n_flits
    counts[src, MESSAGES_OUT] += n
    for d in dsts:
        ports[1, d] = free
        counts[d, BYTES_IN] += n_bytes
        counts[d, MESSAGES_IN] += n
    return arrival


@njit(cache=True)
def hand_on_tick(y, lanes_i, lanes_f, f, i, ports, counts):  # pragma: no cover - compiled; tested
    """The end of a one-device unit's round, from its output y = [when each lane leaves the device
    (lanes) | the round's joules so far, the device's included (seqs)]: `transfer` from its port to
    the next unit's (its route in `i`; per-lane flits and serialization seconds from the lane plan:
    lanes_i's last `lanes` entries, lanes_f's third row), or after the last unit (no route) the
    host's sampling time. Returns [the next unit's ready | joules so far] (or [ready | joules |
    sampled])."""
    n_lanes = lanes_f.shape[1]
    n_seqs = y.shape[0] - n_lanes
    n_dsts = i[I_DSTS]
    out = np.empty(n_lanes + n_seqs + (0 if n_dsts else n_lanes))
    out[n_lanes:n_lanes + n_seqs] = y[n_lanes:]
    done = y[:n_lanes]
    if n_dsts:
        at = I_REST + i[I_GROUPS] + 2 * i[I_BLOCKS] + i[I_KINDS]
        dsts = i[at:at + n_dsts]
        flits = lanes_i[lanes_i.shape[0] - n_lanes:]
        out[:n_lanes] = transfer(i[I_SRC], dsts, flits, lanes_f[2], done, f[F_LATENCY], i[I_FLIT_BYTES], ports,
                                 counts)
    else:
        for a in range(n_lanes):
            out[a] = done[a]
            out[n_lanes + n_seqs + a] = done[a] + f[F_HOST_S]
    return out


@njit(cache=True)
def tick(x, table, filled, seq, lanes_i, lanes_f, f, i, ports, counts):  # pragma: no cover - compiled; tested
    """A steady round of a one-device unit: x = [ready (lanes) | the round's joules so far
    (seqs)]: `device_round`, this device's joules added, then `hand_on_tick`. Returns (out, the
    number of sequences crossed into a new KV block, the context needed), one array: a call from
    Python pays for each array it returns. When sequences cross into new KV blocks it stops before
    handing on: out is the device's output, `hand_on_tick`'s input, and the device grows their KV
    cache first (the sequences listed in seq's third row; growing may fail the round, as in the
    general path, where a failing device hands nothing on), then calls `hand_on_tick`. With a
    context needed nothing is changed (`device_round`) and out is empty."""
    n_lanes = lanes_f.shape[1]
    done, own, n_crossed, need = device_round(x[:n_lanes], table, filled, seq, lanes_i, lanes_f, f, i)
    if need:
        return np.empty(0), 0, need
    y = np.empty(x.shape[0])
    y[:n_lanes] = done
    for k in range(own.shape[0]):
        y[n_lanes + k] = x[n_lanes + k] + own[k]
    if n_crossed:
        return y, n_crossed, 0
    return hand_on_tick(y, lanes_i, lanes_f, f, i, ports, counts), 0, 0


@njit(cache=True)
def ranks_joules(own, n):  # pragma: no cover - compiled; tested against combine's additions
    """A tensor-parallel unit's joules when its `n` ranks each charged `own` (`fabric.rounds.Lockstep`):
    `own` added to itself rank after rank, the additions `fabric.rounds.combine` makes, in its
    order (one call, not n - 1 array additions)."""
    out = np.empty(own.shape[0])
    for k in range(own.shape[0]):
        e = own[k]
        for _ in range(n - 1):
            e = e + own[k]
        out[k] = e
    return out


class DeviceClock:
    """A device's clocks and counters in two packed arrays (what the kernels take), with views
    that name the parts. `route`: the device's port and the next unit's devices for `tick`'s hop
    (none for the last unit: its output goes to the host)."""

    def __init__(self, group_blocks: list[int], block_last: list[bool], tb: int, block_tokens: int,
                 embed: tuple[bool, float], head: tuple[bool, float, float] | tuple[bool, float, float, bool],
                 host_s: float = 0.0,
                 route: tuple[int, tuple[int, ...], float, int] | None = None,
                 block_windows: list[int] | None = None, head_terms: np.ndarray | None = None) -> None:
        """`block_windows`: each block's window as the timer's table reads it (`SystemTimer.table_windows`;
        None: 0 for every block, the table's context as it is). `head_terms`: the LM head's joules a
        sequence by term (`energy.TERMS`; they add up to `head`'s joules; None: zeros)."""
        groups, blocks = len(group_blocks), len(block_last)
        windows = list(block_windows) if block_windows is not None else [0] * blocks
        kinds = sorted(set(windows))
        assert len(windows) == blocks, (windows, blocks)
        src, dsts, latency, flit_bytes = route or (0, (), 0.0, 0)
        self.f = np.zeros(F_BUSY + 4 + 2 * groups + 2 * NUM_TERMS)
        if head_terms is not None:
            self.f[F_BUSY + 4 + 2 * groups + NUM_TERMS:] = head_terms
        self.f[[F_TB, F_HOST_S, F_LATENCY]] = tb, host_s, latency
        self.f[F_EMBED:F_EMBED + 2] = embed
        self.f[F_HEAD:F_HEAD + 2] = head[:2]
        self.f[F_HEAD + 3] = head[2]
        self.f[F_HEAD + 4] = len(head) > 3 and head[3]  # on the last channel group's channels
        self.i = np.zeros(I_REST + groups + 2 * blocks + len(kinds) + len(dsts), dtype=np.int64)
        self.i[[I_BLOCK_TOKENS, I_GROUPS, I_BLOCKS, I_SRC, I_DSTS, I_FLIT_BYTES, I_KINDS]] = (
            block_tokens, groups, blocks, src, len(dsts), flit_bytes, len(kinds))
        self.i[I_REST:] = [*group_blocks, *block_last, *kinds, *(kinds.index(w) for w in windows), *dsts]
        self._views()

    def _views(self) -> None:
        groups = int(self.i[I_GROUPS])
        self.busy = self.f[F_BUSY:F_BUSY + 4 + groups]
        """Busy seconds: embedding, LM head, accelerator, DMA, then each channel group."""
        self.group_free = self.f[F_BUSY + 4 + groups:F_BUSY + 4 + 2 * groups]
        """Each channel group's busy-until clock."""
        self.terms = self.f[F_BUSY + 4 + 2 * groups:F_BUSY + 4 + 2 * groups + NUM_TERMS]
        """The joules charged by term (`energy.TERMS`), beside `joules` (`device_round`): they add up to it."""

    def keep_in(self, f: np.ndarray, i: np.ndarray) -> None:
        """Hold the state in `f` and `i` from now on, its values copied there: rows of the state
        of a tensor-parallel unit's twin ranks, stacked, which `fabric.rounds.Lockstep` copies
        from the first rank to the others in one assignment."""
        f[:] = self.f
        i[:] = self.i
        self.f, self.i = f, i
        self._views()

    def set_route(self, src: int, dsts: tuple[int, ...], latency_s: float, flit_bytes: int) -> None:
        """Where `tick` hands a round on: from port `src` to the ports `dsts` (the next unit)."""
        rest = self.i[:I_REST + self.i[I_GROUPS] + 2 * self.i[I_BLOCKS] + self.i[I_KINDS]]
        self.i = np.concatenate([rest, np.array(dsts, dtype=np.int64)])
        self.i[[I_SRC, I_DSTS, I_FLIT_BYTES]] = src, len(dsts), flit_bytes
        self.f[F_LATENCY] = latency_s

    @property
    def joules(self) -> float:
        return float(self.f[F_JOULES])

    @property
    def clock_s(self) -> float:
        """The device's latest busy-until time."""
        return max([*self.group_free.tolist(), float(self.f[F_EMBED + 2]), float(self.f[F_HEAD + 2])])

    def counters(self) -> dict[str, int]:
        c = self.i[:3].tolist()
        return dict(calls=c[I_CALLS], tokens=c[I_TOKENS], block_steps=c[I_BLOCK_STEPS])


def warm() -> None:
    """Compile (or load from numba's on-disk cache) every kernel here, for arrays as they come
    from a link too (read-only)."""
    clock = DeviceClock([1], [True], 1, 16, (False, 0.0), (False, 0.0, 0.0), route=(0, (1,), 1e-7, 256))
    lanes_i, lanes_f = np.array([0, 1, 1, 1], dtype=np.int64), np.zeros((3, 1))
    table, filled = np.zeros((3 + NUM_TERMS, 3)), np.ones(3, dtype=np.bool_)
    ports, counts = np.zeros((3, 2)), np.zeros((2, 5), dtype=np.int64)
    for x in (np.zeros(2), np.frombuffer(np.zeros(2).tobytes())):
        device_round(x[:1], table, filled, np.zeros((3, 1), dtype=np.int64), lanes_i, lanes_f, clock.f, clock.i)
        tick(x, table, filled, np.zeros((3, 1), dtype=np.int64), lanes_i, lanes_f, clock.f, clock.i, ports, counts)
        transfer(0, lanes_i[1:2], lanes_i[1:2], lanes_f[2], x[:1], 0.0, 256, ports, counts)
        ranks_joules(x, 2)
