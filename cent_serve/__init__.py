"""cent-serve: serve LLMs on emulated CENT devices (CXL memory with near-bank PIM)."""
import os as _os

# Emulated devices are many small processes doing small matmuls: BLAS thread pools only add
# spin-up cost (measured 6x slower for decode-sized GEMMs on a 2-core machine). A user's own
# setting wins; this must run before numpy loads BLAS, hence here.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")


def _kernel_cache_dir() -> str:
    """numba's on-disk cache for the compiled kernels, in a directory named by a hash of their
    sources. numba keys a cached function by its own file only: a kernel calling one from another
    file (device_worker/steady.py calls cent_serve/timing/clock.py) would keep the old callee's
    machine code after an edit of that file. A new hash is a new, empty cache."""
    import hashlib

    here = _os.path.dirname(_os.path.abspath(__file__))
    digest = hashlib.sha256()
    for rel in ("timing/clock.py", "../device_worker/steady.py"):
        try:
            with open(_os.path.join(here, rel), "rb") as f:
                digest.update(f.read())
        except OSError:
            pass
    base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
    return _os.path.join(base, "cent-serve", "numba", digest.hexdigest()[:16])


# before numba loads (it reads its settings once); a user's own NUMBA_CACHE_DIR wins
_os.environ.setdefault("NUMBA_CACHE_DIR", _kernel_cache_dir())

__version__ = "0.1.0"
