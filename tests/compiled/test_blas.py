"""compiled.blas: gemm and gemm_acc agree with numpy for every transpose of a and b, through MKL
when it is installed and through the np.dot fallback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from symgrad.compiled import blas

DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def operands(dtype, ta, tb, m=7, k=5, n=3, seed=0):
    """a (m, k) and b (k, n), each a C array or the transposed view of one (`x.T`)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return (a.T if ta else a), (b.T if tb else b)


def close(got, want, dtype):
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(want).max())


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemm", [blas.gemm, blas.dot_gemm], ids=["gemm", "np.dot fallback"])
def test_gemm_matches_numpy_for_every_transpose(gemm, dtype, ta, tb):
    a, b = operands(dtype, ta, tb)
    out = np.full((7, 3), np.nan, dtype)
    gemm(a, b, out)
    close(out, a.astype(np.float64) @ b, dtype)
    gemm(a, b, out, dtype(0.25))  # alpha: a scalar factor of the product (1/sqrt(D))
    close(out, 0.25 * (a.astype(np.float64) @ b), dtype)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemm_acc", [blas.gemm_acc, blas.dot_gemm_acc],
                         ids=["gemm_acc", "np.dot fallback"])
def test_gemm_acc_adds_the_product_to_out(gemm_acc, dtype, ta, tb):
    a, b = operands(dtype, ta, tb)
    start = np.random.default_rng(1).standard_normal((7, 3)).astype(dtype)
    out = start.copy()
    gemm_acc(a, b, out)
    close(out, start + a.astype(np.float64) @ b, dtype)
    gemm_acc(a, b, out, dtype(-2))
    close(out, start - a.astype(np.float64) @ b, dtype)


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")  # np.dot's copy
def test_gemm_takes_row_slices_strided_views_and_batch_slices():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    out = np.empty((6, 4), np.float32)
    blas.gemm(x[1], w, out)  # a batch element
    close(out, x[1] @ w, np.float32)
    wide = rng.standard_normal((8, 10)).astype(np.float32)
    blas.gemm(x[0], wide[:, 2:6], out)  # rows padded: leading dimension 10
    close(out, x[0] @ wide[:, 2:6], np.float32)
    blas.gemm(x[0][:, ::2], w[::2], out)  # no unit stride: copied, then the same product
    close(out, x[0][:, ::2] @ w[::2], np.float32)


def test_an_output_whose_rows_are_not_contiguous_is_written_and_accumulated_through_a_copy():
    a, b = operands(np.float64, False, False)
    out_t = np.zeros((3, 7))  # out = out_t.T: columns contiguous, which CBLAS cannot write
    blas.gemm(a, b, out_t.T)
    close(out_t.T, a @ b, np.float64)
    blas.gemm_acc(a, b, out_t.T, 2.0)
    close(out_t.T, 3 * (a @ b), np.float64)


@pytest.mark.parametrize("gemm", [blas.gemm, blas.dot_gemm], ids=["gemm", "np.dot fallback"])
def test_gemm_writes_a_heads_rows_of_a_strided_output_and_nothing_else(gemm):
    """q[b, :, h, :] of a (B, T, H, D) array: rows of D contiguous elements, H * D apart."""
    rng = np.random.default_rng(3)
    B, T, H, D = 2, 5, 3, 4
    q = rng.standard_normal((B, T, H, D)).astype(np.float32)
    k = rng.standard_normal((B, T, H, D)).astype(np.float32)
    y = np.full((B, T, H, D), np.nan, np.float32)
    s = rng.standard_normal((T, T)).astype(np.float32)
    gemm(s, k[1, :, 2, :], y[1, :, 2, :])  # y[b, :, h, :] = s @ k[b, :, h, :]
    close(y[1, :, 2, :], s.astype(np.float64) @ k[1, :, 2, :], np.float32)
    y[1, :, 2, :] = np.nan
    assert np.isnan(y).all()  # no element outside the head's rows was written
    out = np.empty((T, T), np.float32)
    gemm(q[0, :, 1, :], k[0, :, 1, :].T, out)  # S = q k.T of one head, both operands strided
    close(out, q[0, :, 1, :].astype(np.float64) @ k[0, :, 1, :].T, np.float32)


def test_gemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        blas.gemm(np.ones((4, 5)), np.ones((4, 2)), np.empty((4, 2)))


def test_backend_is_named_in_the_cache_tag_and_mkl_runs_on_the_calling_thread():
    assert blas.backend() in ("mkl", "openblas")
    assert blas.CACHE_TAG.startswith(blas.backend())
    if blas.backend() == "mkl":  # sequential: the kernels' only thread pool is Numba's
        assert blas._MKL.MKL_Get_Max_Threads() == 1


def test_symgrad_blas_openblas_selects_the_np_dot_fallback():
    code = ("import numpy as np; from symgrad.compiled import blas; a = np.arange(6.).reshape(2, 3); "
            "o = np.empty((2, 2)); blas.gemm(a, a.T, o); assert np.allclose(o, a @ a.T), o; "
            "print(blas.backend())")
    env = dict(os.environ, SYMGRAD_BLAS="openblas")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "openblas"
