"""The thread count of the BLAS under the kernels' `np.dot` (SciPy's OpenBLAS), set at run time.

`OPENBLAS_NUM_THREADS` is read only when the library loads, and importing SciPy (which derive
does) loads it, so setting the variable later has no effect. On a busy 2-core machine a 2-thread
OpenBLAS spins against the other load: multi-head attention's backward, ~400 small GEMMs, took
190 ms instead of 13 ms. `set_blas_threads` calls OpenBLAS's own setter in this process.
"""

from __future__ import annotations

import ctypes
import os

_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")


def _openblas_libs():
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls: load it)
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f if "openblas" in line.lower()
                           and line.split()[-1].startswith("/")})
    except OSError:  # not Linux: nothing to do here
        return []


def set_blas_threads(n: int) -> int:
    """Use n threads in every loaded OpenBLAS with a 32-bit-int setter (SciPy's, which Numba's
    np.dot uses); returns how many libraries were set."""
    done = 0
    for path in _openblas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(int(n)))
                done += 1
                break
    return done


def cores() -> int:
    """Cores this process may use (its CPU affinity: `mpirun` binds a rank to one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def set_threads(n: int) -> int:
    """Use n threads everywhere the kernels can: Numba's parallel loops (this thread's count,
    capped at NUMBA_NUM_THREADS), which also run the row blocks of MKL's products (MKL itself is
    sequential: compiled/blas.py), and SciPy's OpenBLAS, which `np.dot` calls without MKL.
    Returns the count set."""
    import numba

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    set_blas_threads(n)
    return n


__all__ = ["cores", "set_blas_threads", "set_threads"]
