"""Shared fixtures. Importing cent_serve first pins BLAS to one thread before numpy loads."""
import cent_serve  # noqa: F401
import pytest

RAY_NUM_CPUS = 2
"""Pinned so Ray tests behave the same on any machine."""


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (tests that need it are marked `ray`)."""
    ray = pytest.importorskip("ray")
    from cent_serve.executor.ray_executor import ensure_ray

    ensure_ray(num_cpus=RAY_NUM_CPUS)
    yield ray
    ray.shutdown()
