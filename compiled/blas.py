"""The matrix products of the generated kernels: Intel MKL's cblas_sgemm / cblas_dgemm when the
`mkl` package (libmkl_rt) is installed, else `np.dot` (SciPy's OpenBLAS, which Numba calls).

    gemm(a, b, out, alpha=1)      out = alpha * a @ b   (alpha: a scalar factor, 1/sqrt(D))
    gemm_acc(a, b, out, alpha=1)  out += alpha * a @ b  (beta = 1: accumulated in place)

a, b are 2-D float32 or float64 arrays whose rows or columns are contiguous (a C array, its
transpose `x.T`, a slice of rows, a head's rows q[b, :, h, :] of a (B, T, H, D) array); out's
rows are contiguous (a C array, or such a slice: its row stride is CBLAS's ldc). The layouts
are read from the strides at run time (a few integer operations beside a GEMM) and become
CBLAS's transpose flags and leading dimensions; an operand with no unit stride, or an out
whose rows are not contiguous (`y.T`), goes through C copies.
`SYMGRAD_BLAS=openblas` keeps `np.dot` with MKL installed.

MKL is reached through Numba's `ExternalFunction` on a symbol registered with llvmlite, not a
ctypes pointer: a ctypes pointer is a "dynamic global" and would stop every kernel calling
gemm from being cached (`njit(cache=True)`); a symbol is resolved again in each process.

Threading: MKL runs sequentially (MKL_THREADING_LAYER=sequential, set here whatever the
environment says): every product runs on the thread that calls it, and the kernels' one thread
pool is Numba's (TBB, compiled/build.py), which splits a large product into row blocks, one per
thread (compiled/parallel.py), and runs attention's per-sequence products side by side. With
MKL's own OpenMP threads as a second pool, each switch between the pools woke sleeping threads:
measured 2026-12-06 on the 2-vCPU AMD EPYC (Zen 4) VM, the attention forward took 0.26 ms
alone and 0.45 ms right after a 2-thread MKL product; and MKL's own 2-thread split of the GPT's
products ran them at 114 GFLOP/s, against 133 as row blocks on one pool (a 1-thread product
reaches 80 here, the sgemm peak 102 on one core, 197 on two). A second pool is also what made
the import order matter (Intel OpenMP had to start before PyTorch's GNU OpenMP): no longer.
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
from numba.extending import overload

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums
_LP64 = 0  # MKL_INTERFACE_LP64: 32-bit integers, as the signatures below declare
_SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL


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
    lib.MKL_Set_Threading_Layer(_SEQUENTIAL)  # before the first call: see the module docstring
    for name in ("cblas_sgemm", "cblas_dgemm"):
        ll.add_symbol(f"symgrad_{name}", ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    return lib


_MKL = _load()


def backend() -> str:
    """"mkl" when the kernels' products call MKL, else "openblas" (np.dot)."""
    return "mkl" if _MKL is not None else "openblas"


# Part of every kernel's cache key: a kernel compiled against another backend or another
# version of this file is not reused (Numba's own cache looks at the kernel's file only).
CACHE_TAG = f"{backend()}.{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]}"


# --- the kernels' side ---------------------------------------------------------------------
def _signature(real):
    i, p = types.intc, types.voidptr
    #                order ta tb m  n  k  alpha a  lda b  ldb beta c  ldc
    return types.void(i, i, i, i, i, i, real, p, i, p, i, real, p, i)


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


@njit
def _c_copy(m):
    """m copied into a new C array (a plain loop: a few lines to compile for any layout)."""
    c = np.empty(m.shape, m.dtype)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            c[i, j] = m[i, j]
    return c


def _c_product(a, b, out, alpha):
    """out = alpha * a @ b for three C arrays, through MKL."""


@overload(_c_product)
def _c_product_typed(a, b, out, alpha):
    xgemm, real = _XGEMM[out.dtype]

    def impl(a, b, out, alpha):
        m, k = a.shape
        n = b.shape[1]
        xgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, real(alpha), a.ctypes, max(k, 1),
              b.ctypes, max(n, 1), real(0), out.ctypes, max(n, 1))
    return impl


@njit
def _gemm_copied(a, b, out, alpha, beta):
    """out = alpha * a @ b + beta * out for operands CBLAS cannot take: C copies, one product,
    the result written back."""
    m, n = out.shape
    ac, bc, c = _c_copy(a), _c_copy(b), np.empty((m, n), out.dtype)
    _c_product(ac, bc, c, alpha)
    for i in range(m):
        for j in range(n):
            out[i, j] = c[i, j] + beta * out[i, j] if beta != 0.0 else c[i, j]


def _gemm_into(a, b, out, alpha, beta):
    """out = alpha * a @ b + beta * out (beta is 0 or 1)."""


@overload(_gemm_into)
def _gemm_into_typed(a, b, out, alpha, beta):
    if _MKL is None or not a.dtype == b.dtype == out.dtype or out.dtype not in _XGEMM:
        def through_np_dot(a, b, out, alpha, beta):
            if beta == 0.0:
                dot_gemm(a, b, out, alpha)
            else:
                dot_gemm_acc(a, b, out, alpha)
        return through_np_dot
    xgemm, real = _XGEMM[out.dtype]

    def through_mkl(a, b, out, alpha, beta):
        m, k = a.shape
        n = b.shape[1]
        if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError("gemm: shapes do not match")
        a_rows, lda = _storage(a)
        b_rows, ldb = _storage(b)
        o_rows, ldc = _storage(out)
        if lda != 0 and ldb != 0 and ldc != 0 and o_rows:
            xgemm(ROW_MAJOR, NO_TRANS if a_rows else TRANS, NO_TRANS if b_rows else TRANS,
                  m, n, k, real(alpha), a.ctypes, lda, b.ctypes, ldb, real(beta), out.ctypes, ldc)
            return
        # No unit stride on an axis (x[:, ::2]), or out's rows not contiguous: through C copies.
        # `[::1, ::1]` erases the layout, so Numba compiles that path once per dtype, not once
        # per combination of layouts a kernel passes (about 0.3 s each on a cold cache).
        _gemm_copied(a[::1, ::1], b[::1, ::1], out[::1, ::1], real(alpha), real(beta))
    return through_mkl


def _dot_into(a, b, out):
    """out[...] = a @ b through np.dot (into out itself when it is C-contiguous)."""


@overload(_dot_into)
def _dot_into_typed(a, b, out):
    if out.layout == "C":
        return lambda a, b, out: np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b), out)

    def strided(a, b, out):  # a part of a larger array (a head's rows): np.dot writes C arrays only
        out[...] = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return strided


@njit
def dot_gemm(a, b, out, alpha=1.0):
    """gemm through np.dot (without MKL)."""
    _dot_into(a, b, out)
    if alpha != 1.0:
        out *= alpha


@njit
def dot_gemm_acc(a, b, out, alpha=1.0):
    """gemm_acc through np.dot, into a temporary."""
    out += alpha * np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))


@njit
def gemm(a, b, out, alpha=1.0):
    """out = alpha * a @ b (MKL on the calling thread when installed, else np.dot)."""
    _gemm_into(a, b, out, alpha, 0.0)


@njit
def gemm_acc(a, b, out, alpha=1.0):
    """out += alpha * a @ b (MKL's beta = 1 when installed, else np.dot into a temporary)."""
    _gemm_into(a, b, out, alpha, 1.0)


__all__ = ["gemm", "gemm_acc", "dot_gemm", "dot_gemm_acc", "backend", "CACHE_TAG"]
