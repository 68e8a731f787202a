"""cent-serve: serve LLMs on emulated CENT devices (CXL memory with near-bank PIM)."""
import os as _os

# Emulated devices are many small processes doing small matmuls: BLAS thread pools only add
# spin-up cost (measured 6x slower for decode-sized GEMMs on a 2-core machine). A user's own
# setting wins; this must run before numpy loads BLAS, hence here.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
