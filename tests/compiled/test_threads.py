"""compiled.set_blas_threads reaches the OpenBLAS that Numba's np.dot calls, after it loaded."""

import ctypes
import sys

import pytest

from symgrad import compiled
from symgrad.compiled.threads import _openblas_libs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_set_blas_threads_sets_scipys_openblas_after_it_loaded():
    libs = [p for p in _openblas_libs() if hasattr(ctypes.CDLL(p), "scipy_openblas_get_num_threads")]
    if not libs:
        pytest.skip("no SciPy OpenBLAS in this process")
    get = ctypes.CDLL(libs[0]).scipy_openblas_get_num_threads
    before = get()
    try:
        assert compiled.set_blas_threads(1) >= 1
        assert get() == 1
    finally:
        compiled.set_blas_threads(before)
