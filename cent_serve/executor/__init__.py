"""Executors: run one round of a replica through its device and fabric workers.

`LocalExecutor` keeps every device and the switch in this process (tests, paper mode);
`RayExecutor` puts each device in a Ray actor and the switch in a fabric actor. Both run the
same `DeviceWorker` and `Fabric` code and the same unit loop (`fabric.rounds`), so their
simulated times are identical.
"""
from cent_serve.executor.base import Executor
from cent_serve.executor.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor", "executor_factory"]


def make_executor(cfg, kind: str | None = None, **kwargs) -> Executor:
    """The executor `cfg.executor` names (or `kind`, a caller's override), for a resolved config;
    GPUs (`cfg.gpu.count` > 0) are a timing model in this process, whatever the executor."""
    if cfg.on_gpus:
        from cent_serve.gpu.executor import GpuExecutor
        return GpuExecutor(cfg, weights=kwargs.get("weights"))
    replicas = kwargs.pop("replicas", 1)
    if (kind or cfg.executor) == "ray":
        from cent_serve.executor.ray_executor import RayExecutor
        kwargs.pop("weights", None)  # each device actor loads its own shard
        return RayExecutor(cfg, replicas=replicas, **kwargs)
    return LocalExecutor(cfg, **kwargs)


def executor_factory(cfg, weights=None, replicas: int = 1):
    """A maker of `cfg`'s executor, `make(replicas)`: called once per replica (`replicas`: how many
    its caller builds, all of which a cluster must hold) and again with 1 to re-create a failed one;
    on Ray a cluster without room for the `replicas` copies is refused here, before any is built
    (`join_cluster`: no replica's start-up line precedes the refusal). In-process replicas with full
    numerics share one load of the weights (`weights`, or loaded here), and all of them one context
    table of block costs (`SystemTimer.share_table`: the first replica's)."""
    if cfg.executor == "ray" and not cfg.on_gpus:
        from cent_serve.executor.ray_executor import join_cluster
        join_cluster(cfg, replicas)
    if (cfg.executor == "local" or cfg.on_gpus) and cfg.resolved_numerics == "full" and weights is None:
        from cent_serve.model.hf_checkpoint import load_weights
        weights = load_weights(cfg.model)
    first: list[LocalExecutor] = []

    def make(replicas: int = 1) -> Executor:
        ex = make_executor(cfg, weights=weights, replicas=replicas)
        if isinstance(ex, LocalExecutor):
            if first:
                ex.timer.share_table(first[0].timer)
            else:
                first.append(ex)
        return ex
    return make
