"""compiled: derived gradients printed into cached Numba kernels.

    >>> from symgrad import compiled
    >>> k = compiled.kernels("softmax", dtype="float64")
    >>> s = k.forward(x=x)["s"]
    >>> dx = k.backward(g=g, s=s)["x"]
    >>> print(k.source_path)      # the generated .py file, readable, Numba-cached

Pipeline: derive's index expressions -> `lower` (BLAS contractions: `products`; scatter-adds:
`accumulations`; loop bounds: `bounds`; temporaries) into the statements of `nest`
-> `writer`/`printer` (loop nests, hoisted accumulators, CSE) -> a `.py` file in the cache dir
(`cache`) -> `njit(cache=True)` functions wrapped with argument checks (`api`).
"""

from .version import GENERATOR_VERSION
from .api import KernelError, Kernels, kernels
from .cache import cache_dir
from .threads import set_blas_threads, set_threads

__all__ = ["kernels", "Kernels", "KernelError", "cache_dir", "set_blas_threads", "set_threads", "GENERATOR_VERSION"]
