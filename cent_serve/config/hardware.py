"""The CENT hardware sections: one device (`DeviceConfig`), its energy (`EnergyConfig`) and the CXL
fabric (`FabricConfig`). Constants cite docs/hardware_model.md (the CENT paper, ASPLOS 2025, and its
artifact) by section."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cent_serve.config.checks import _check, _check_numbers
from cent_serve.config.fields import _from_dict


PAPER_TCO_PER_DEVICE = 0.73 / 32
"""The paper's CENT device in the artifact's TCO units: 0.73 per 32 devices (docs/hardware_model.md section 9)."""


@dataclass
class EnergyConfig:
    """Energy constants of one CENT device (docs/hardware_model.md section 8). Source: the CENT
    artifact's power calculator (`cent_power_calculator.py`); the per-command energies are
    derived from these powers and times (`cent_serve.timing.energy.command_energies_j`)."""

    # DRAM (the calculator's GDDR6 powers, which it halves from the data sheet's)
    act_mw: float = 66.3
    """Power of one bank's activate-precharge cycle, mW (x t_rc_ns: 2.95 nJ a row opened), quoted for
    the paper's 2 KB row; an activation scales with the row's bytes (row_elements x bytes_per_element)."""
    rd_mw: float = 438.15
    """Power while a read burst streams, mW (x t_burst_ns: 0.548 nJ a burst)."""
    wr_mw: float = 553.15
    """Power while a write burst streams, mW (x t_burst_ns: 0.691 nJ a burst)."""
    act_standby_mw: float = 263.75
    """Active standby power, mW: charged per device for the share of channel-cycles that have a
    row open (the artifact's accounting; per channel it would be `num_channels` times more)."""
    pre_standby_mw: float = 183.15
    """Precharged standby power, mW, for the share of channel-cycles with every bank closed."""
    t_rc_ns: float = 44.5
    """Row cycle time tRC, ns: how long an activation draws act_mw. Energy only, as every timing
    of this section: the time model counts device cycles (device.gemv_row_cycles, ...)."""
    t_burst_ns: float = 1.25
    """Burst time tBL of a 32 B burst, ns: how long a read or write draws rd_mw / wr_mw (a burst of
    device.burst_elements x bytes_per_element bytes costs its share of 32 B)."""
    t_ccd_ns: float = 1.0
    """Column-to-column delay tCCD_L, ns: how long an all-bank MAC step of 32 B a bank draws its power.
    Energy only: the time model's interval is device.column_cycles at device.clock_hz (2 cycles,
    the artifact's: docs/hardware_model.md section 4)."""
    mac_bank_read_share: float = 0.1875
    """Power of one bank's MAC unit during a MAC step, as a share of rd_mw (the artifact charges
    an all-bank MAC of 16 banks 3 x rd_mw: 1.314 nJ)."""
    ewmul_mac_share: float = 0.25
    """Energy of an all-bank elementwise product as a share of an all-bank MAC step."""
    precharge_ns: float = 16.0
    """Time a channel stays precharged after closing all its banks (tRP; 32 cycles at 2 GHz), for
    standby energy only."""
    write_precharge_ns: float = 36.5
    """Time a channel stays precharged after an all-bank write with auto-precharge (tCWL + tBL +
    tWR + tRP; 73 cycles at 2 GHz), for standby energy only."""
    access_clock_hz: float = 2e9
    """The clock the per-access powers below are quoted at (controller, buffers, accelerator units):
    an access costs its power for one cycle of it, whatever device.clock_hz is (a faster device
    clock does not make an access cheaper)."""
    # interfaces
    external_pj_per_bit: float = 5.5
    """DRAM data pins (DQ) energy, pJ/bit: a burst across the interface (1.408 nJ for 32 B)."""
    controller_trx_mw: float = 267.7082056
    """Memory controller's transaction engine, mW: one cycle of it per data command."""
    controller_phy_mw: float = 381.0445262
    """Memory controller's PHY, mW: one cycle of it per DRAM command of any kind."""
    channels_per_controller: int = 2
    """Channels one memory controller serves (the controller's power is shared by them)."""
    pcie_pj_per_bit: float = 4.4
    """PCIe / CXL link energy, pJ/bit."""
    # SRAM buffers: global buffer (one per channel), shared buffer and instruction buffer (one a device)
    global_buffer_static_mw: float = 0.06702101898
    """Global buffer leakage, mW per channel."""
    global_buffer_read_mw: float = 0.2785010052
    """Global buffer read power, mW (one cycle of it per bank <- buffer copy)."""
    global_buffer_write_mw: float = 0.3254884575
    """Global buffer write power, mW (one cycle of it per burst written to the buffer)."""
    shared_buffer_static_mw: float = 0.6917736525
    """Shared buffer (accelerator side) leakage, mW."""
    shared_buffer_read_mw: float = 3.207188769
    """Shared buffer read power, mW (one cycle of it per access)."""
    shared_buffer_write_mw: float = 3.754155771
    """Shared buffer write power, mW (one cycle of it per access)."""
    instruction_buffer_static_mw: float = 18.81731768
    """Instruction buffer leakage, mW."""
    instruction_buffer_read_mw: float = 70.13266856
    """Instruction buffer read power, mW (one cycle of it per instruction)."""
    # near-memory accelerator, one unit per channel, and its control logic
    reduction_mw: float = 0.2882
    """Reduction tree dynamic power (switching + internal), mW, one cycle a reduction."""
    exp_mw: float = 0.5939
    """Exponent unit dynamic power, mW, one cycle a SIMD pass."""
    vector_mw: float = 0.381
    """Vector adder dynamic power, mW, one cycle a SIMD pass."""
    reduction_leak_mw: float = 0.00562
    """Reduction tree leakage, mW per channel (5.62 uW)."""
    exp_leak_mw: float = 0.0128
    """Exponent unit leakage, mW per channel (12.8 uW)."""
    vector_leak_mw: float = 0.00654
    """Vector adder leakage, mW per channel (6.54 uW)."""
    riscv_core_mw: float = 3.96
    """One RISC-V core of the accelerator, mW, for the cycles it works."""
    device_controller_mw: float = 3.014
    """PIM dispatcher, CXL controller, decoder, load/store unit and accelerator controller, mW
    while the device steps: half their 5.98 mW dynamic plus 0.046 mW leakage, as the artifact
    charges them."""

    _positive = frozenset({"channels_per_controller", "access_clock_hz"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check_numbers(self, "device.energy")


@dataclass
class DeviceConfig:
    """One CENT device: 32 GDDR6-AiM channels with near-bank PIM (docs/hardware_model.md section 1)."""

    num_channels: int = 32
    """GDDR6-AiM channels per device (16 controllers x 2)."""
    banks_per_channel: int = 16
    """Banks per channel (4 bank groups x 4): a multiple of 4, the bank groups of equal size."""
    rows_per_bank: int = 16384
    """DRAM rows per bank (with the row size and the channels and banks: the capacity)."""
    row_elements: int = 1024
    """Elements per DRAM row of a bank, each device.bytes_per_element bytes (the paper's 2 KB row: 1024 bf16
    elements; 2048 for an 8-bit type on the same row)."""
    burst_elements: int = 16
    """Elements per burst, each device.bytes_per_element bytes, and the MACs a bank's unit does per column
    command (the paper's 32 B burst: 16 bf16 elements; 32 for an 8-bit type on the same burst)."""
    bytes_per_element: int = 2
    """Bytes per stored element, 2 (bf16, CENT's type): the weights, KV cache (unless
    device.kv_bytes_per_element sets it apart), capacity and DMA lines are counted in it, the PIM cycles per element (docs/hardware_model.md section 1, "The data type"). Alone
    it resizes the rows, bursts and capacity in bytes too; a narrower type on the same DRAM (2 KB rows,
    32 B bursts) also sets row_elements and burst_elements to hold more elements."""
    kv_bytes_per_element: int | None = None
    """Bytes per element of the KV cache alone, 1, 2 or 4; unset: device.bytes_per_element (weights and KV
    alike). On the same DRAM rows and bursts, so 1 on a 16-bit device holds twice the keys a row and a
    burst: twice the tokens fit, and q.K^T's and score x V's MAC columns and the K append's DMA lines
    halve (docs/hardware_model.md section 1, "The KV cache's own type")."""
    clock_hz: float = 2e9
    """PIM command clock: one cycle is 0.5 ns. Every PIM cycle count of the time model is at it, the
    DRAM's included (a column command every column_cycles, a row switch in gemv_row_cycles), so 4e9
    is a DRAM twice as fast, not a faster controller beside the same DRAM (whose tCCD_L of 1 ns
    would keep a column every 4 cycles: raise column_cycles with it)."""
    column_cycles: float = 2.0
    """Cycles from one column command of a streamed row to the next (tCCD_L at clock_hz: 2 cycles,
    1 ns): an all-bank MAC step, an elementwise product, a burst into the global buffer. The GEMV,
    score, softmax, rotary and score x V passes stream at it (docs/hardware_model.md section 4); their
    fixed per-row and per-group cycles do not change with it. Time only: a MAC step's energy is
    device.energy.t_ccd_ns's."""
    accumulator_registers: int = 32
    """Per-bank accumulator registers: GEMV outputs per mode-switch group (reuse size)."""
    # GEMV cost terms (docs/hardware_model.md section 4).
    gemv_row_cycles: float = 103.0
    """Per output and input row: row switch plus register traffic."""
    gemv_group_cycles: float = 54.5
    """Per group of outputs and input row: two mode switches."""
    gemv_af_cycles: float = 72.4
    """Per output of the gate projection: activation-function lookup."""
    gemv_af_group_size: int = 16
    """Outputs per group in the activation ('AF') GEMV variant."""
    # Other per-op constants (docs/hardware_model.md section 4).
    norm_fixed_cycles: float = 850.0
    """RMSNorm fixed cost (reduction + rsqrt round trip)."""
    rotary_fixed_cycles: float = 98.0
    """Rotary fixed cost per vector."""
    kv_head_cycles: float = 1008.0
    """KV append: cycles per KV head per channel group."""
    score_head_cycles: float = 81.0
    """q.K^T: per key row, bank-slot and head in the row, beyond its MAC columns: the bias write,
    the result read and two mode switches (first query head of a GQA group; 904 cycles a
    1024-element row of 128-wide heads)."""
    score_rep_head_cycles: float = 70.0
    """q.K^T: the same for each further query head of the group (816 cycles a row); unread where each query
    head has its own KV head (llama2-7b), and the commands warn so."""
    softmax_dma_passes: int = 6
    """Times a score vector crosses the DMA in softmax."""
    softmax_fixed_cycles: float = 98.0
    """Softmax fixed cost per head-group and row."""
    sv_row_cycles: float = 158.0
    """score x V: per-row switch cost."""
    silu_cycles_per_burst: float = 4.0
    """SiLU x up: cycles per burst."""
    silu_fixed_cycles: float = 400.0
    """SiLU x up: fixed cost."""
    # Near-memory accelerator (docs/hardware_model.md section 5): one unit per channel, pipelined.
    acc_clock_hz: float = 2e9
    """Accelerator clock (the artifact runs it at the PIM clock)."""
    acc_simd_lanes: int = 16
    """SIMD lanes of one accelerator unit (exp units, vector adders, reduction trees)."""
    acc_exp_cycles: float = 11.0
    """Cycles of one exp through a SIMD lane."""
    acc_buffer_cycles: float = 1.0
    """Cycles of one read or write of the shared buffer."""
    acc_riscv_cores: int = 8
    """RISC-V cores beside the units (rsqrt, softmax's division, rotary tables)."""
    acc_norm_riscv_cycles: float = 26.0
    """RISC-V cycles of one RMSNorm's rsqrt."""
    acc_rotary_riscv_cycles: float = 3.0
    """RISC-V cycles per rotated element of q and k (spread over the cores)."""
    acc_softmax_riscv_cycles: float = 2.0
    """RISC-V cycles per attention head of softmax's division (spread over the cores)."""
    acc_softmax_writes: int = 16
    """Shared-buffer writes per head of softmax's result."""
    host_sample_s: float = 0.15e-3
    """Host CPU sampling cost per generated token (0.15 ms)."""
    dma_bytes_per_cycle: float = 32.0
    """DMA engine width: one 32 B line per cycle, serialized device-wide (the RMSNorm, rotary,
    KV-append, softmax and SiLU passes move their data through it). The artifact's engine decodes one
    line instruction a cycle, so a width above a burst's bytes models an engine that does more."""
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    """Energy constants."""
    unit_cost_usd: float = 2.69 + 1.10 + 24.38
    """Per device: die $2.69 + packaging $1.10 + NRE $24.38 at 1M units (section 9), for the
    paper's 32 channels: a fixed figure that does not follow `num_channels` or the bank geometry,
    so a sweep over those gets capacity and speed at the same price unless it sets this too. It
    prices the devices (`tok_s_per_usd`); tokens per dollar against GPUs count device.tco_per_device
    instead, which this does not move."""
    tco_per_device: float | None = None
    """A device's cost in the CENT artifact's TCO units, which tokens per dollar against GPUs count in
    (`tokens_per_dollar_ratio`, `tokens_per_tco`; docs/hardware_model.md section 9), against 1.76 per 4
    A100s (gpu.tco_per_gpu); None = the paper's device, 0.73 per 32 (0.0228125). A positive number; it does
    not follow unit_cost_usd, num_channels or the capacity: a device priced otherwise sets this too (set,
    even to 0.0228125, it is this device's price, and no note says the ratio prices the paper's device)."""

    @property
    def capacity_bytes(self) -> int:
        """DRAM per device: channels x banks x rows x row size (32 x 16 x 16384 x 2 KB = 16 GiB)."""
        return (self.num_channels * self.banks_per_channel * self.rows_per_bank * self.row_elements
                * self.bytes_per_element)

    @property
    def tco(self) -> float:
        """A device's TCO units: tco_per_device, or the paper's device's (`PAPER_TCO_PER_DEVICE`) when unset."""
        return PAPER_TCO_PER_DEVICE if self.tco_per_device is None else self.tco_per_device

    @property
    def kv_element_bytes(self) -> int:
        """Bytes of one KV cache element: kv_bytes_per_element, or bytes_per_element when unset."""
        return self.bytes_per_element if self.kv_bytes_per_element is None else self.kv_bytes_per_element

    @property
    def kv_burst_elements(self) -> int:
        """KV elements one burst holds and a bank's unit MACs per column command: a burst's bytes
        (burst_elements x bytes_per_element, 32 B) over the KV element's (16 bf16 keys, 32 8-bit ones)."""
        return self.burst_elements * self.bytes_per_element // self.kv_element_bytes

    @property
    def kv_row_elements(self) -> int:
        """KV elements one DRAM row of a bank holds: its bytes over the KV element's (1024 bf16, 2048 8-bit)."""
        return self.row_elements * self.bytes_per_element // self.kv_element_bytes

    @property
    def row_column_ops(self) -> int:
        """Column commands that stream one full row: row_elements / burst_elements (1024 / 16)."""
        return self.row_elements // self.burst_elements

    @property
    def peak_pim_bytes_per_s(self) -> float:
        """Weights streamed per second by all banks: each bank reads a burst per all-bank MAC,
        one every column_cycles (2: 512 GB/s a channel, 16.4 TB/s a device)."""
        return self.peak_macs_per_s * self.bytes_per_element  # a weight element per MAC

    @property
    def peak_macs_per_s(self) -> float:
        """MACs a second of all banks' units: burst_elements each per all-bank MAC, one every
        column_cycles (16 a bank every 1 ns: 8.2 TMAC/s a device, docs/hardware_model.md section 1)."""
        return self.num_channels * self.banks_per_channel * self.burst_elements * self.clock_hz / self.column_cycles

    @property
    def dma_line_cycles(self) -> float:
        """Cycles the DMA engine takes per 32 B line (a burst): burst bytes / its width."""
        return self.burst_elements * self.bytes_per_element / self.dma_bytes_per_cycle

    _positive = frozenset({"num_channels", "banks_per_channel", "rows_per_bank", "row_elements", "burst_elements",
                           "bytes_per_element", "kv_bytes_per_element", "clock_hz", "column_cycles", "accumulator_registers",
                           "gemv_af_group_size", "acc_clock_hz", "acc_simd_lanes", "acc_riscv_cores",
                           "dma_bytes_per_cycle", "tco_per_device"})
    """Numbers that must be > 0 (every other one, the cycle, time and cost terms, >= 0: `_number_fix`)."""
    _fixes = {"tco_per_device": "use a positive cost in TCO units (a zero cost makes tokens per dollar infinite; "
                                "the paper's device: 0.0228125, 0.73 per 32)"}
    """Fixes worded for their field."""

    def __post_init__(self) -> None:
        _check_numbers(self, "device")
        _check(self.row_elements % self.burst_elements == 0, "device.row_elements", self.row_elements,
               f"it is not a multiple of device.burst_elements={self.burst_elements} (a row is whole bursts): set "
               "the one you meant to change so it is, or both")
        # The time and energy models spread a block's elementwise work over its banks / 4 and / 2 and
        # softmax's heads over a channel's 4 bank groups (cent_serve.timing.pim.BANK_GROUPS): fewer
        # than 4 banks a block would divide by zero, and a count not a multiple of 4 drops banks.
        _check(self.banks_per_channel % 4 == 0, "device.banks_per_channel", self.banks_per_channel,
               "make it a multiple of 4 (a channel's 4 bank groups of equal size, e.g. 8, 16 or 32)")
        _check(self.bytes_per_element in (1, 2, 4), "device.bytes_per_element", self.bytes_per_element,
               "use 1 (int8), 2 (bfloat16) or 4 (float32): a burst holds whole elements")
        kv = self.kv_bytes_per_element
        _check(kv is None or kv in (1, 2, 4), "device.kv_bytes_per_element", kv,
               "use 1 (int8), 2 (bfloat16) or 4 (float32), or leave it unset (null: device.bytes_per_element)")
        if kv is not None and kv > self.bytes_per_element:
            _check(self.burst_elements * self.bytes_per_element % kv == 0, "device.kv_bytes_per_element", kv,
                   f"a burst of device.burst_elements={self.burst_elements} x bytes_per_element="
                   f"{self.bytes_per_element} B does not hold whole {kv}-byte KV elements: use at most "
                   f"{self.bytes_per_element}, or make device.burst_elements a multiple of {kv // self.bytes_per_element}")
        if self.gemv_af_group_size > self.accumulator_registers:  # name the one changed from its default
            if self.accumulator_registers != DeviceConfig.accumulator_registers:
                _check(False, "device.accumulator_registers", self.accumulator_registers,
                       f"an activation GEMV group's device.gemv_af_group_size={self.gemv_af_group_size} outputs sit in "
                       f"the accumulator registers: use at least {self.gemv_af_group_size}, or lower that")
            _check(False, "device.gemv_af_group_size", self.gemv_af_group_size,
                   f"a group's outputs sit in the accumulator registers: use at most "
                   f"device.accumulator_registers={self.accumulator_registers}, or raise that")
        if isinstance(self.energy, dict):
            self.energy = _from_dict(EnergyConfig, self.energy, "device.energy")
        _check(isinstance(self.energy, EnergyConfig), "device.energy", self.energy,
               "it is a section of fields: set them, e.g. device.energy.rd_mw=438.15")
        # A controller serves whole channels: its power is shared by channels_per_controller of them
        # (cent_serve.timing.energy), so a count that does not divide the channels would leave a
        # fraction of a controller.
        per, channels = self.energy.channels_per_controller, self.num_channels
        if channels % per:  # name the one changed from its default first, and offer both fixes
            multiples = " or ".join(str(m) for m in (channels // per * per, channels // per * per + per) if m)
            small = [d for d in range(1, math.isqrt(channels) + 1) if channels % d == 0]
            divisors = sorted({*small, *(channels // d for d in small)}, key=lambda d: (abs(d - per), d))
            near = " or ".join(str(d) for d in sorted(divisors[:2]))
            both = (f"set device.num_channels to a multiple of {per} ({multiples}) or "
                    f"device.energy.channels_per_controller to a divisor of {channels} ({near})")
            if per == EnergyConfig.channels_per_controller and channels != DeviceConfig.num_channels:
                _check(False, "device.num_channels", channels,
                       f"device.energy.channels_per_controller={per} does not divide it (a controller serves whole "
                       f"channels): {both}")
            _check(False, "device.energy.channels_per_controller", per,
                   f"it does not divide device.num_channels={channels} (a controller serves whole channels): {both}")


@dataclass
class FabricConfig:
    """The CXL switch (docs/hardware_model.md section 6)."""

    cxl_port_latency_ns: float = 25.0
    """One CXL port crossing."""
    num_cxl_ports: int = 4
    """CXL ports crossed on a one-hop round trip."""
    pcie_latency_ns: float = 30.0
    """One PCIe PHY crossing."""
    num_pcie_crossings: int = 2
    """PCIe crossings on a one-hop round trip."""
    switch_latency_ns: float = 20.0
    """Switch traversal."""
    switch_lanes: int = 144
    """Lanes of the switch, shared equally by the devices."""
    lane_gbps: float = 8.0
    """Bytes per second per lane, in GiB/s (2^30 bytes a second; not gigabits)."""
    multicast: bool = True
    """CENT always multicasts, which halves the per-lane bandwidth; false: the whole bandwidth, and a
    payload for k devices is sent k times (docs/hardware_model.md section 6)."""
    flit_bytes: int = 256
    """PBR flit size on the wire."""
    flit_payload_bytes: int = 192
    """Payload per flit: 3 x 64 B messages."""
    activation_bytes: int = 2
    """Bytes of one activation value on the switch: 2, bf16, as CENT sends them whatever the banks
    hold; 1 or 4 to ask what an 8-bit or a float32 wire format would do. It sizes every payload's
    flits (a block's output hop, the tensor-parallel exchanges, the MoE combine) and the links'
    energy; the devices still compute and store in `device.bytes_per_element`."""
    charge_local_hops: bool = True
    """Charge a block's output a switch hop even when the next block sits on the same device (as
    the artifact does); false: the device's DMA engine moves it (tokens x D values at
    `device.dma_bytes_per_cycle`, drawing no link energy under the `cent` energy convention)."""

    _positive = frozenset({"switch_lanes", "lane_gbps", "flit_bytes", "flit_payload_bytes", "activation_bytes"})
    """Numbers that must be > 0 (every other one, the latencies and crossings, >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.switch_lanes >= 1, "fabric.switch_lanes", self.switch_lanes,
               "use a positive lane count")
        _check(self.lane_gbps > 0, "fabric.lane_gbps", self.lane_gbps, "use a positive bandwidth")
        _check(0 < self.flit_payload_bytes <= self.flit_bytes, "fabric.flit_payload_bytes",
               self.flit_payload_bytes, f"use a value in (0, fabric.flit_bytes={self.flit_bytes}]")
        _check(self.activation_bytes in (1, 2, 4), "fabric.activation_bytes", self.activation_bytes,
               "use 1 (8-bit), 2 (bfloat16, CENT's) or 4 (float32): a value crosses the switch whole")
        _check_numbers(self, "fabric")

    @property
    def hop_latency_s(self) -> float:
        """One-hop round trip: 4 x 25 + 2 x 30 + 20 = 180 ns."""
        ns = (self.num_cxl_ports * self.cxl_port_latency_ns
              + self.num_pcie_crossings * self.pcie_latency_ns + self.switch_latency_ns)
        return ns * 1e-9
