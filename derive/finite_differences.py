"""Central finite differences in float64: the oracle every check of a derivation compares with
(derive.verify, the docs' numeric checks, the tests). One place, so every check takes the same
difference the same way.

    elementwise(f, x, eps)           d f / d x[i] for every element i (f scalar-valued)
    directional(f, x, v, eps)        (f(x + eps v) - f(x - eps v)) / 2 eps

`directional` takes arrays or dicts of them (several arguments moved together) and returns the
same kind f does (a number, an array, or a dict of arrays: a gradient's directional derivative
is a Hessian-vector product).
"""

from __future__ import annotations

import numpy as np


def elementwise(f, x, eps: float, indices=None):
    """Central differences of scalar f at every element of x (an array of x's shape), or at
    `indices` only (a list, in their order). f gets a float64 copy of x with one element moved."""
    x = np.array(x, dtype=np.float64)
    at = list(np.ndindex(x.shape)) if indices is None else list(indices)
    out = []
    for i in at:
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        out.append((f(xp) - f(xm)) / (2 * eps))
    return np.array(out, dtype=np.float64).reshape(x.shape) if indices is None else out


def directional(f, x, v, eps: float):
    """(f(x + eps v) - f(x - eps v)) / (2 eps); x, v arrays or dicts with the same keys."""
    def moved(s):
        if isinstance(x, dict):
            return {k: (np.asarray(x[k], np.float64) + s * v[k]) if k in v else x[k] for k in x}
        return np.asarray(x, np.float64) + s * np.asarray(v)
    up, down = f(moved(eps)), f(moved(-eps))
    if isinstance(up, dict):
        return {k: (np.asarray(up[k], np.float64) - np.asarray(down[k], np.float64)) / (2 * eps) for k in up}
    return (np.asarray(up, np.float64) - np.asarray(down, np.float64)) / (2 * eps)


__all__ = ["elementwise", "directional"]
