"""Executors: run one round of micro-batches through the device and fabric actors.

`LocalExecutor` keeps every device and the fabric in this process (tests,
paper mode); `RayExecutor` puts each device in a Ray actor and the switch in
a fabric actor. Both run the same `DeviceWorker` and `Fabric` code, so their
simulated times are identical.
"""
from cent_serve.executor.local import LocalExecutor
from cent_serve.executor.plan import Unit, execution_units

__all__ = ["LocalExecutor", "Unit", "execution_units", "make_executor"]


def make_executor(cfg, kind: str = "local", **kwargs):
    """`local` or `ray` executor for a resolved config."""
    if kind == "local":
        return LocalExecutor(cfg, **kwargs)
    if kind == "ray":
        from cent_serve.executor.ray_executor import RayExecutor
        return RayExecutor(cfg, **kwargs)
    raise ValueError(f"executor={kind!r} is invalid: use 'local' or 'ray'")
