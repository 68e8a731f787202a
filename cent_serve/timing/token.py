"""Closed-form token latency, throughput and the paper's phase averages (docs/hardware_model.md section 7).

This is "paper mode": the same per-op functions the device actors charge,
added up the way the CENT artifact does with a perfect pipeline. The
emulated system is checked against it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from cent_serve.config import CentConfig, DeviceConfig, FabricConfig, ModelConfig
from cent_serve.timing.accelerator import accelerator_cycles
from cent_serve.timing.fabric import pipeline_block_s, port_model, tensor_block_s, tensor_collectives_s
from cent_serve.timing.mapping import Mapping, resolve_mapping
from cent_serve.timing.pim import BlockTimer, gemv_cycles


class SystemTimer:
    """Every per-token time of one (model, mapping, device, fabric); built once, queried often.

    Seconds per block for one token at context L: `block_pim_s(L)`,
    `block_acc_s(L)` (one block's own PNM time; multiply by the blocks that
    share the PNM), `block_cxl_s` (per-block communication), plus
    `embedding_s` and `host_s` once per token.
    """

    def __init__(self, model: ModelConfig, mapping: Mapping, device: DeviceConfig,
                 fabric: FabricConfig) -> None:
        self.model, self.mapping, self.device, self.fabric = model, mapping, device, fabric
        self.pim = BlockTimer(model, mapping.geometry, device)
        self.port = port_model(fabric, mapping.num_devices)
        if mapping.mode == "pipeline":
            self.block_cxl_s = pipeline_block_s(model.hidden_size, self.port, fabric)
        else:
            self.block_cxl_s = tensor_block_s(model.hidden_size, model.intermediate_size, mapping.tp,
                                              self.port, fabric)
        self.embedding_s = self.pim.embedding_cycles / device.clock_hz
        # The emulation runs the embedding lookup on the first stage and the LM head (with the
        # final norm) on the last; together they are embedding_s.
        self.embed_lookup_s = gemv_cycles(model.vocab_size, model.hidden_size, mapping.geometry.banks,
                                          device) / device.clock_hz
        self.lm_head_s = self.embedding_s - self.embed_lookup_s
        self.host_s = device.host_sample_s
        self._acc: dict[int, float] = {}
        self._hop: dict[int, float] = {}
        self._coll: dict[int, float] = {}
        self.block_costs: dict[int, tuple[float, float, float]] = {}
        """Context -> (PIM s, accelerator s, energy J per tp device) of one block for one token;
        filled by the device workers, shared by all that use this timer (one per executor)."""

    @classmethod
    def from_config(cls, cfg: CentConfig) -> "SystemTimer":
        return cls(cfg.model, resolve_mapping(cfg.model, cfg.parallel, cfg.device), cfg.device,
                   cfg.fabric)

    def block_pim_s(self, context: int) -> float:
        return self.pim.cycles(context) / self.device.clock_hz

    def block_acc_s(self, context: int) -> float:
        hit = self._acc.get(context)
        if hit is None:
            hit = self._acc[context] = accelerator_cycles(self.model, self.device, context) / self.device.clock_hz
        return hit

    def hop_s(self, tokens: int) -> float:
        """A block's output (tokens x D) moving to the next block: t(flits(tokens D))."""
        hit = self._hop.get(tokens)
        if hit is None:
            hit = self._hop[tokens] = pipeline_block_s(self.model.hidden_size, self.port, self.fabric, tokens)
        return hit

    def collectives_s(self, tokens: int) -> float:
        """In-block tensor-parallel exchanges for `tokens` tokens (0 in pure pipeline)."""
        if self.mapping.mode == "pipeline":
            return 0.0
        hit = self._coll.get(tokens)
        if hit is None:
            m = self.model
            hit = self._coll[tokens] = tensor_collectives_s(m.hidden_size, m.intermediate_size,
                                                            self.mapping.tp, self.port, self.fabric, tokens)
        return hit

    def block_s(self, context: int) -> float:
        """One block's step for one token in the closed form: PIM + CXL + ACC x tb."""
        return self.block_pim_s(context) + self.block_cxl_s + self.block_acc_s(context) * self.mapping.tb

    def token_s(self, context: int) -> float:
        """token = N blocks + embedding + host sampling."""
        return self.model.num_layers * self.block_s(context) + self.embedding_s + self.host_s


@dataclass
class TokenFigures:
    """One context length's figures, as `cent simulate --seqlen` prints them."""

    model: str
    devices: int
    pp: int
    tp: int
    seqlen: int
    mode: str
    token_latency_ms: float
    throughput_tok_s: float
    block_pim_ms: float
    block_cxl_ms: float
    block_acc_ms: float
    block_ms: float
    embedding_ms: float
    host_ms: float
    token_energy_mj: float
    power_w: float
    devices_used: int
    channels_per_block: int
    blocks_per_device: int
    batch: int
    breakdown_cycles: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def token_figures(timer: SystemTimer, context: int) -> TokenFigures:
    """Latency, throughput, energy and power of one token at `context` (section 7 and 8)."""
    from cent_serve.timing.energy import token_energy_j

    mp, m = timer.mapping, timer.model
    token_s = timer.token_s(context)
    energy_j = token_energy_j(timer, context)
    # Power as the artifact reports it: a token's energy over one pipeline step, the PIM time
    # of one stage's blocks (pp tokens are in flight, one per stage).
    step_s = -(-m.num_layers // mp.pp) * timer.block_pim_s(context)
    return TokenFigures(
        model=m.name, devices=mp.num_devices, pp=mp.pp, tp=mp.tp, seqlen=context, mode=mp.mode,
        token_latency_ms=token_s * 1e3, throughput_tok_s=mp.batch / token_s,
        block_pim_ms=timer.block_pim_s(context) * 1e3, block_cxl_ms=timer.block_cxl_s * 1e3,
        block_acc_ms=timer.block_acc_s(context) * mp.tb * 1e3, block_ms=timer.block_s(context) * 1e3,
        embedding_ms=timer.embedding_s * 1e3, host_ms=timer.host_s * 1e3,
        token_energy_mj=energy_j * 1e3, power_w=energy_j / step_s,
        devices_used=mp.devices_used, channels_per_block=mp.channels_per_block,
        blocks_per_device=mp.blocks_per_device, batch=mp.batch,
        breakdown_cycles=timer.pim.breakdown(context).as_dict())


PHASES = ("prefill", "decoding", "end2end")


def phase_figures(timer: SystemTimer, prompt: int, decode: int, gap: int = 128) -> dict[str, dict]:
    """The paper's averaging: L = gap, 2 gap, ..., prompt + decode; prefill is L <= prompt,
    decoding prompt < L, end2end all. Throughput, energy and power are plain means over
    the L in a phase; latency = mean token time x the phase's token count."""
    if prompt < 1 or decode < 0 or gap < 1:
        raise ValueError(f"--prompt {prompt} --decode {decode} --seqlen-gap {gap}: use prompt >= 1, "
                         "decode >= 0, gap >= 1")
    total = prompt + decode
    rows = [token_figures(timer, L) for L in range(gap, total + 1, gap)]
    groups = {"prefill": [r for r in rows if r.seqlen <= prompt],
              "decoding": [r for r in rows if r.seqlen > prompt],
              "end2end": rows}
    counts = {"prefill": prompt, "decoding": decode, "end2end": total}
    out: dict[str, dict] = {}
    for phase in PHASES:
        group = groups[phase]
        if not group:
            continue
        mean = lambda key: sum(getattr(r, key) for r in group) / len(group)  # noqa: E731
        out[phase] = dict(latency_s=mean("token_latency_ms") * counts[phase] / 1000,
                          throughput_tok_s=mean("throughput_tok_s"),
                          energy_per_token_mj=mean("token_energy_mj"), power_w=mean("power_w"),
                          token_latency_ms=mean("token_latency_ms"), num_seqlens=len(group))
    return out
