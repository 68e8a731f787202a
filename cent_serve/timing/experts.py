"""Where a mixture of experts sends its tokens, for the time model (docs/hardware_model.md section 10).

The time a MoE block takes depends on which experts its tokens chose, but with numerics off there
are no router logits. So the time model routes by a seeded draw, and does so with numerics on too:
simulated time never depends on whether numerics run (the reference model's tokens use the real
router; the clocks use this one).

`RoutingTable` draws `PATTERNS` k-expert choices once from the model's seed, each k distinct experts
drawn without replacement with the expert of rank r in a seeded order weighted 1 / (r +
1)^model.expert_skew (the Gumbel top-k trick: the k largest of log w_e + Gumbel noise); a token's choice in a block is the pattern its
(sequence, position, block) hashes to. Cheap per round (one hash per token and block), the same on
every process that builds it from the same config, and as uniform or as skewed as asked.

`ExpertLoad` counts what the experts did: assignments (token x expert) per expert, summed over
blocks, and the seconds each expert's banks computed them.
"""
from __future__ import annotations

import numpy as np

from cent_serve.config import ModelConfig

PATTERNS = 16384
"""k-expert choices drawn per model: enough that every expert's share is within a few percent of its
weight's (128 experts, top 8: 1,024 draws each on average)."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hot_order(m: ModelConfig) -> np.ndarray:
    """(E,) the experts from the hottest to the coldest under `model.expert_skew`: a permutation
    seeded by the model's seed, so the hot experts are not the low ids, which the placement (expert
    e on device e mod tp) would spread one per device; which device they share is the draw's, as
    a real router's favourites are unrelated to where the experts sit."""
    return np.random.Generator(np.random.PCG64([m.seed, 0x686F74])).permutation(m.num_experts)


def expert_weights(m: ModelConfig) -> np.ndarray:
    """(E,) each expert's share of the draws before top-k: the expert of rank r in `hot_order`
    weighs 1 / (r + 1)^skew, normalised (skew 0: uniform)."""
    w = np.empty(m.num_experts)
    w[hot_order(m)] = 1.0 / np.arange(1, m.num_experts + 1, dtype=np.float64) ** m.expert_skew
    return w / w.sum()


class RoutingTable:
    """The time model's router for one model (see the module docstring)."""

    def __init__(self, m: ModelConfig) -> None:
        assert m.is_moe, "a routing table is for a mixture of experts"
        self.num_experts, self.k = m.num_experts, m.num_experts_per_tok
        rng = np.random.Generator(np.random.PCG64([m.seed, 0x6D6F65]))
        gumbel = -np.log(-np.log(rng.random((PATTERNS, m.num_experts))))
        scores = np.log(expert_weights(m))[None, :] + gumbel
        self.patterns = np.argsort(-scores, axis=1, kind="stable")[:, :self.k].astype(np.int64)  # (P, k)
        self._seed = np.uint64(m.seed * int(_GOLDEN) % 2**64)

    def experts(self, seq_ids, starts, tokens, blocks) -> np.ndarray:
        """(tokens in all, len(blocks), k) the experts each token of each sequence (ids `seq_ids`,
        positions starts[i] .. starts[i] + tokens[i] - 1) chose in each of `blocks`."""
        tokens = np.asarray(tokens, dtype=np.int64)
        seq = np.repeat(np.asarray(seq_ids, dtype=np.int64), tokens).astype(np.uint64)
        first = np.repeat(np.asarray(starts, dtype=np.int64) - np.cumsum(tokens) + tokens, tokens)
        pos = (first + np.arange(int(tokens.sum()))).astype(np.uint64)
        key = _mix(self._seed ^ _mix(seq * _GOLDEN + pos))  # (n,)
        blk = np.asarray(blocks, dtype=np.uint64)
        h = _mix(key[:, None] ^ ((blk[None, :] + np.uint64(1)) * _GOLDEN))  # (n, blocks)
        return self.patterns[(h % np.uint64(PATTERNS)).astype(np.int64)]

    def mean_max_load(self, tp: int, samples: int = PATTERNS) -> float:
        """The expected busiest device's assignments for one token in one block, with expert e on
        device e mod tp: the closed form's expert time per token is this x one expert's time."""
        ranks = self.patterns[:samples] % tp  # (samples, k)
        counts = np.stack([(ranks == r).sum(axis=1) for r in range(tp)], axis=1)
        return float(counts.max(axis=1).mean())


def lane_max_loads(experts: np.ndarray, lane_of_token: np.ndarray, lanes: int, tp: int) -> np.ndarray:
    """(lanes,) per lane the sum over blocks of its busiest device's assignments: experts (n,
    blocks, k) as `RoutingTable.experts` gives them, lane_of_token (n,) each token's lane, expert e
    on device e mod tp. The tokens of a lane reach a block together and a device's experts share its
    banks, so its assignments there run one after the other and the block waits for the busiest."""
    n, blocks, k = experts.shape
    cell = (lane_of_token[:, None, None] * blocks + np.arange(blocks)[None, :, None]) * tp + experts % tp
    counts = np.bincount(cell.ravel(), minlength=lanes * blocks * tp).reshape(lanes, blocks, tp)
    return counts.max(axis=2).sum(axis=1).astype(np.float64)


class ExpertLoad:
    """What the experts of a MoE model did: assignments per expert (summed over blocks) and the
    seconds of bank time they took (`expert_s` each)."""

    def __init__(self, m: ModelConfig, expert_s: float | None) -> None:
        self.routing = RoutingTable(m)
        self.blocks = np.arange(m.num_layers)
        self.expert_s = expert_s
        self.num_layers = m.num_layers
        self.tokens = np.zeros(m.num_experts, dtype=np.int64)

    def add(self, seq_ids, starts, tokens) -> None:
        """A round's tokens: sequence ids, their first positions and their token counts."""
        if len(seq_ids):
            chosen = self.routing.experts(seq_ids, starts, tokens, self.blocks)
            self.tokens += np.bincount(chosen.ravel(), minlength=self.tokens.shape[0])

    def figures(self, elapsed_s: float, replicas: int = 1) -> dict:
        """Per expert: tokens (assignments, over all blocks), and where one expert's time is known
        (CENT: `SystemTimer.expert_s`) its busy seconds and busy fraction (those seconds over the
        elapsed simulated time of its copies, one per block and replica). imbalance: the busiest
        expert's tokens over the mean."""
        mean = float(self.tokens.mean())
        out = dict(num_experts=int(self.tokens.shape[0]), top_k=self.routing.k, tokens=self.tokens.tolist(),
                   imbalance=float(self.tokens.max() / mean) if mean else 0.0)
        if self.expert_s is not None:
            busy = self.tokens * self.expert_s
            span = elapsed_s * self.num_layers * replicas
            out.update(busy_s=busy.tolist(), busy_fraction=(busy / span if span > 0 else busy * 0.0).tolist())
        return out
