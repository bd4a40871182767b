"""The matrix products of the generated kernels: Intel MKL's cblas_sgemm / cblas_dgemm when the
`mkl` package (libmkl_rt) is installed, else `np.dot` (SciPy's OpenBLAS, which Numba calls).

    gemm(a, b, out, alpha=1)      out = alpha * a @ b   (alpha: a scalar factor, 1/sqrt(D))
    gemm_acc(a, b, out, alpha=1)  out += alpha * a @ b  (beta = 1: accumulated in place)
    gemm1(a, b, out, alpha=1)     gemm on the calling thread alone (inside a prange loop)

a, b are 2-D float32 or float64 arrays whose rows or columns are contiguous (a C array, its
transpose `x.T`, a slice of rows); out is C-contiguous, as np.dot's out must be. The layout of a
and b is read from their strides at run time (a few integer operations beside a GEMM) and
becomes CBLAS's transpose flags and leading dimensions; anything else goes to `np.dot`.
`SYMGRAD_BLAS=openblas` keeps `np.dot` with MKL installed.

MKL is reached through Numba's `ExternalFunction` on a symbol registered with llvmlite, not a
ctypes pointer: a ctypes pointer is a "dynamic global" and would stop every kernel calling
gemm from being cached (`njit(cache=True)`); a symbol is resolved again in each process.

Threading: Intel OpenMP (MKL's own layer) with KMP_BLOCKTIME=0, unless MKL_THREADING_LAYER
says otherwise; the thread count is set per step by models/threads.py, which runs one thread
when the machine is busy. Measured on the 2-vCPU Xeon (AVX-512), 2026-12-01, the reference GPT
step: sequential MKL 57 ms (one thread does every GEMM), intel 2 threads 41 ms. Under load no
threaded layer beat one thread (hence the per-step choice), and each had a cost. Intel OpenMP (MKL's default) spin-waits after a
call (KMP_BLOCKTIME=200 ms): a 1x128 @ 128x384 product, 2-3 us on one thread, took 4 us at 2
threads back to back on free cores but 1.36 ms with two busy processes (KMP_BLOCKTIME=0: no
spin, a wake-up instead: 15 us, 29 us under load). GNU OpenMP took ~20 ms a call under load. TBB
stayed close to one thread but ignores mkl_set_num_threads (two threads ran after
set_threads(1)), so `--threads 1` could not be honoured. What one thread gives up: on a quiet
machine the GEMMs of a GPT step ran 1.3-1.7x faster at 2 threads (intel, tbb). With the intel
layer, KMP_BLOCKTIME defaults to 0 here (no spinning after a call), and set_threads(n) applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.metadata
import os
from pathlib import Path

import llvmlite.binding as ll
import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums
_LP64 = 0  # MKL_INTERFACE_LP64: 32-bit integers, as the signatures below declare
_LAYERS = {"intel": 0, "sequential": 1, "gnu": 3, "tbb": 4}  # MKL_THREADING_*
_LAYER = "intel"  # the default: see the module docstring


def _wheel_lib(dist, prefix):
    """A shared library shipped by a wheel (the mkl and tbb wheels put theirs in sys.prefix/lib,
    off the loader's path); None without it."""
    try:
        for f in importlib.metadata.distribution(dist).files or ():
            if f.name.startswith(prefix):
                return str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def _load():
    if os.environ.get("SYMGRAD_BLAS", "").lower() == "openblas":
        return None
    path = _wheel_lib("mkl", "libmkl_rt.so") or ctypes.util.find_library("mkl_rt")
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    if lib.MKL_Set_Interface_Layer(_LP64) != _LP64:
        return None
    layer = os.environ.get("MKL_THREADING_LAYER", "").lower()
    if not layer:
        layer = _LAYER
        lib.MKL_Set_Threading_Layer(_LAYERS[_LAYER])
    if layer == "intel":
        os.environ.setdefault("KMP_BLOCKTIME", "0")  # read when libiomp5 starts, at the first call
    elif layer == "tbb" and _wheel_lib("tbb", "libtbb.so.12"):  # else MKL exits at the first call
        ctypes.CDLL(_wheel_lib("tbb", "libtbb.so.12"))         # ("Cannot load libmkl_tbb_thread")
    for name in ("cblas_sgemm", "cblas_dgemm", "MKL_Set_Num_Threads_Local"):
        ll.add_symbol(f"symgrad_{name}", ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    if layer == "intel":
        _start_threads(lib)
    return lib


def _start_threads(lib):
    """One product on two threads now, so that Intel OpenMP starts its threads at import: started
    after PyTorch's GNU OpenMP had started its own, it ran the reference step's GEMMs at 2 threads
    1.6x slower (65 ms against 41 ms a step, measured 2026-12-01); started first, both run at
    full speed. Import compiled (or symgrad, models) before torch."""
    n = 256
    a = np.zeros((n, n), np.float32)
    c = np.zeros((n, n), np.float32)
    p = ctypes.c_void_p
    lib.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, p, ctypes.c_int, p, ctypes.c_int,
                                                      ctypes.c_float, p, ctypes.c_int]
    lib.MKL_Set_Num_Threads(ctypes.c_int(2))
    lib.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n, n, n, 1.0, a.ctypes.data, n, a.ctypes.data, n, 0.0,
                    c.ctypes.data, n)


_MKL = _load()


def backend() -> str:
    """"mkl" when the kernels' products call MKL, else "openblas" (np.dot)."""
    return "mkl" if _MKL is not None else "openblas"


def set_threads(n: int) -> bool:
    """Use n threads in MKL's products (every thread of this process); False without MKL. Only a
    threaded MKL_THREADING_LAYER (intel, gnu) has more than one: see the module docstring."""
    if _MKL is None:
        return False
    _MKL.MKL_Set_Num_Threads(ctypes.c_int(int(n)))
    return True


# Part of every kernel's cache key: a kernel compiled against another backend or another
# version of this file is not reused (Numba's own cache looks at the kernel's file only).
CACHE_TAG = f"{backend()}.{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]}"


# --- the kernels' side ---------------------------------------------------------------------
def _signature(real):
    i, p = types.intc, types.voidptr
    #                order ta tb m  n  k  alpha a  lda b  ldb beta c  ldc
    return types.void(i, i, i, i, i, i, real, p, i, p, i, real, p, i)


# MKL's thread count for calls from this thread alone (0: the global count); returns the old one
_set_local = types.ExternalFunction("symgrad_MKL_Set_Num_Threads_Local", types.intc(types.intc))
_sgemm = types.ExternalFunction("symgrad_cblas_sgemm", _signature(types.float32))
_dgemm = types.ExternalFunction("symgrad_cblas_dgemm", _signature(types.float64))
_XGEMM = {types.float32: (_sgemm, np.float32), types.float64: (_dgemm, np.float64)}


@njit
def _storage(m):
    """(rows contiguous?, leading dimension) of a 2-D array as CBLAS reads it (a C array: rows;
    its `.T`: columns); leading dimension 0 when neither is (a size-1 axis has any stride)."""
    rows, cols = m.shape
    s0, s1 = m.strides[0] // m.itemsize, m.strides[1] // m.itemsize
    if (s1 == 1 or cols == 1) and (s0 >= cols or rows == 1):
        return True, max(s0, cols, 1)
    if (s0 == 1 or rows == 1) and (s1 >= rows or cols == 1):
        return False, max(s1, rows, 1)
    return True, 0


def _cblas_gemm(a, b, out, alpha, beta):
    """out = alpha * a @ b + beta * out through MKL; False (nothing done) for what CBLAS cannot
    take."""


@overload(_cblas_gemm)
def _cblas_gemm_typed(a, b, out, alpha, beta):
    if out.layout != "C":
        raise TypingError("gemm: out must be C-contiguous (as np.dot's out)")
    if _MKL is None or not a.dtype == b.dtype == out.dtype or out.dtype not in _XGEMM:
        return lambda a, b, out, alpha, beta: False
    xgemm, real = _XGEMM[out.dtype]

    def impl(a, b, out, alpha, beta):
        m, k = a.shape
        n = b.shape[1]
        if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError("gemm: shapes do not match")
        a_rows, lda = _storage(a)
        b_rows, ldb = _storage(b)
        if lda == 0 or ldb == 0:
            return False
        xgemm(ROW_MAJOR, NO_TRANS if a_rows else TRANS, NO_TRANS if b_rows else TRANS, m, n, k,
              real(alpha), a.ctypes, lda, b.ctypes, ldb, real(beta), out.ctypes, max(n, 1))
        return True
    return impl


@njit
def gemm(a, b, out, alpha=1.0):
    """out = alpha * a @ b (MKL when installed, else np.dot)."""
    if not _cblas_gemm(a, b, out, alpha, 0.0):
        np.dot(a, b, out)
        if alpha != 1.0:
            out *= alpha


def _one_thread(on):
    """Hold this thread's MKL calls to one thread (on) or give them back the global count."""


@overload(_one_thread)
def _one_thread_typed(on):
    if _MKL is None:
        return lambda on: 0
    return lambda on: _set_local(1 if on else 0)


@njit
def gemm1(a, b, out, alpha=1.0):
    """gemm on the calling thread alone: inside a prange loop each thread does its own batch
    elements' products (attention's per-sequence S[b] = q[b] @ k[b].T), where a threaded call
    would start a second thread pool under the first. Without MKL: gemm."""
    _one_thread(True)
    gemm(a, b, out, alpha)
    _one_thread(False)


@njit
def gemm_acc(a, b, out, alpha=1.0):
    """out += alpha * a @ b (MKL's beta = 1 when installed, else np.dot into a temporary)."""
    if not _cblas_gemm(a, b, out, alpha, 1.0):
        out += alpha * np.dot(a, b)


@njit
def dot_gemm(a, b, out, alpha=1.0):
    """gemm without MKL: np.dot."""
    np.dot(a, b, out)
    if alpha != 1.0:
        out *= alpha


@njit
def dot_gemm_acc(a, b, out, alpha=1.0):
    """gemm_acc without MKL: np.dot into a temporary."""
    out += alpha * np.dot(a, b)


__all__ = ["gemm", "gemm1", "gemm_acc", "dot_gemm", "dot_gemm_acc", "backend", "set_threads", "CACHE_TAG"]
