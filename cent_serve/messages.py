"""The round: one message from the scheduler to the devices, one answer back (as vLLM's
`SchedulerOutput` / `ModelRunnerOutput`).

- `Layout`: which sequences run in which lane and with how many tokens. It holds while the
  batch's composition holds, so the links send it only when it changes.
- `RoundPlan`: one replica's round: the layout, when each lane's input exists (`ready_s`), the
  sequences new to the devices (with their first position, once), the ids that finished, and
  with full numerics the input token ids and which sequences want logits. Devices and the switch
  keep each sequence's position across rounds, so a plan never repeats what they know.
- `RoundOutput`: what a unit of devices hands on, and finally back: when each lane's output
  exists, the activations (or, after the LM head, the logits of the sequences that want them),
  and the energy each sequence's step has cost so far. Simulated time and energy travel with the
  data (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

LaneSeqs = tuple[tuple[int, int], ...]
"""A lane's sequences this round: ((seq id, tokens), ...)."""


@dataclass(frozen=True)
class Layout:
    """The lanes of a round and their sequences; compared by value (the links send it when it
    differs from the last one)."""

    lanes: tuple[int, ...]
    """Lane ids, ascending."""
    seqs: tuple[LaneSeqs, ...]
    """Per lane, its sequences and their tokens this round."""

    def __post_init__(self) -> None:
        assert len(self.lanes) == len(self.seqs), (self.lanes, self.seqs)
        assert list(self.lanes) == sorted(set(self.lanes)), f"lanes must be distinct and ascending: {self.lanes}"

    def __len__(self) -> int:
        return len(self.lanes)

    @cached_property
    def seq_ids(self) -> list[int]:
        """Every sequence, lane by lane (the order of `RoundOutput.energy_j` and token ids)."""
        return [sid for lane in self.seqs for sid, _ in lane]

    @cached_property
    def seq_lanes(self) -> list[int]:
        """Every sequence's lane index (0, 1, ... in `lanes`' order), in `seq_ids`' order."""
        return [i for i, lane in enumerate(self.seqs) for _ in lane]

    @cached_property
    def lane_tokens(self) -> list[int]:
        return [sum(n for _, n in lane) for lane in self.seqs]

    @cached_property
    def seq_tokens(self) -> list[int]:
        return [n for lane in self.seqs for _, n in lane]

    def to_wire(self) -> dict:
        return {"lanes": list(self.lanes), "seqs": [[list(s) for s in lane] for lane in self.seqs]}

    @classmethod
    def from_wire(cls, d: dict) -> "Layout":
        return cls(tuple(d["lanes"]), tuple(tuple((int(a), int(b)) for a, b in lane) for lane in d["seqs"]))


EMPTY_LAYOUT = Layout((), ())


@dataclass
class RoundPlan:
    """One replica's round, scheduler -> executor -> devices (see the module docstring)."""

    layout: Layout
    ready_s: np.ndarray
    """(lanes,) float64: simulated time each lane's input exists."""
    round_id: int = 0
    """Names the round on the links (a non-negative int): the replies of rounds in flight and the
    tensor-parallel exchanges of a unit are matched by it."""
    new_seqs: dict[int, int] = field(default_factory=dict)
    """Sequences the devices have not seen: seq id -> position of its first token this round."""
    finished: tuple[int, ...] = ()
    """Sequences to forget (finished, aborted, preempted) before the round runs."""
    token_ids: np.ndarray | None = None
    """Full numerics: every sequence's input ids this round, concatenated in layout order (int64)."""
    wants_logits: np.ndarray | None = None
    """Full numerics: (sequences,) int, how many of each sequence's last positions this round the
    LM head's logits are wanted for: 1 for the position the host samples from, all of the step's
    for prompt log-probabilities, 0 mid-prompt (`scheduler.logit_rows`)."""

    def __post_init__(self) -> None:
        self.ready_s = np.asarray(self.ready_s, dtype=np.float64)
        assert self.ready_s.shape == (len(self.layout),), (self.ready_s.shape, len(self.layout))

    @property
    def is_empty(self) -> bool:
        """No lane runs: the plan only carries finished ids."""
        return len(self.layout) == 0

    def to_wire(self, last_layout: Layout | None) -> dict:
        """As a link message; the layout only if it differs from `last_layout`."""
        msg = {"round": self.round_id, "ready": self.ready_s}
        if self.layout != last_layout:
            msg["layout"] = self.layout.to_wire()
        if self.new_seqs:
            msg["new"] = [[k, v] for k, v in self.new_seqs.items()]
        if self.finished:
            msg["free"] = list(self.finished)
        if self.token_ids is not None:
            msg["tokens"] = self.token_ids
        if self.wants_logits is not None:
            msg["logits"] = self.wants_logits
        return msg

    @classmethod
    def from_wire(cls, msg: dict, last_layout: Layout | None) -> "RoundPlan":
        layout = Layout.from_wire(msg["layout"]) if "layout" in msg else last_layout
        assert layout is not None, "the first plan on a link must carry its layout"
        return cls(layout, np.asarray(msg["ready"], dtype=np.float64), int(msg["round"]),
                   {int(k): int(v) for k, v in msg.get("new", ())}, tuple(msg.get("free", ())),
                   msg.get("tokens"), msg.get("logits"))


@dataclass
class RoundOutput:
    """What a unit of devices hands on (see the module docstring)."""

    ready_s: np.ndarray
    """(lanes,) float64: simulated time each lane's output exists at its holder."""
    energy_j: np.ndarray
    """(sequences,) float64: joules charged to each sequence's step so far this round."""
    hidden: list[np.ndarray] | None = None
    """Full numerics, before the LM head: per lane its tokens' (tokens, D) float32 activations."""
    logits: np.ndarray | None = None
    """Full numerics, after the LM head: (wanted positions, vocab) float32, layout order."""
    sampled_s: np.ndarray | None = None
    """After the last unit: (lanes,) when the host has sampled each lane's tokens."""

    @classmethod
    def start(cls, plan: RoundPlan) -> "RoundOutput":
        """The input of a round's first unit."""
        return cls(plan.ready_s.copy(), np.zeros(len(plan.layout.seq_ids)))

    def to_wire(self) -> dict:
        msg = {"ready": self.ready_s, "energy": self.energy_j}
        if self.hidden is not None:
            msg["hidden"] = self.hidden
        if self.logits is not None:
            msg["logits"] = self.logits
        if self.sampled_s is not None:
            msg["sampled"] = self.sampled_s
        return msg

    @classmethod
    def from_wire(cls, msg: dict) -> "RoundOutput":
        return cls(np.asarray(msg["ready"], dtype=np.float64), np.asarray(msg["energy"], dtype=np.float64),
                   msg.get("hidden"), msg.get("logits"), msg.get("sampled"))
