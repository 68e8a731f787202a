"""The CENT timing, energy and cost model: the only source of simulated seconds.

- `pim`: PIM cycles per operation of a block (docs/hardware_model.md section 4)
- `accelerator`: near-memory accelerator and host time (sections 1, 5)
- `fabric`: CXL switch latency, flits, lanes, collectives (section 6)
- `mapping`: stages, channels per block, devices, capacity (section 3)
- `token`: closed-form token latency and the paper's phases (section 7)
- `energy`: energy, power, cost and GPU comparison (sections 8, 9)
"""
from cent_serve.timing.mapping import Mapping, Stage, check_capacity, resolve_mapping
from cent_serve.timing.pipeline import TokenFigures, phase_figures, token_figures
from cent_serve.timing.token import SystemTimer

__all__ = ["Mapping", "Stage", "check_capacity", "hardware_timer", "resolve_mapping", "SystemTimer", "TokenFigures",
           "phase_figures", "token_figures"]


def hardware_timer(cfg):
    """The timing model of the configured hardware (a `CentConfig`'s): CENT devices (`SystemTimer`) or
    GPUs (`GpuTimer`); both give `.mapping` with the lanes and replicas the scheduler needs."""
    if cfg.on_gpus:
        from cent_serve.gpu.timing import GpuTimer
        return GpuTimer(cfg)
    return SystemTimer.from_config(cfg)
