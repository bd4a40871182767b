"""JVP and HVP kernels: the tangent programs of derive.second_order, printed as forward kernels.

`second_order_kernels(name, dtype)` compiles a layer's JVP graph and HVP graph with the same
printer, cache and argument checks as every other kernel (compiled.api.kernels): each is a
Derivation with no gradients of its own, so each is one forward function in a cached module
(float32 and float64 from the same source). Only the forward function is ever called, and Numba
compiles lazily, so the empty backward printed beside it costs nothing.

    k = second_order_kernels("softmax", "float64")
    y, y_dot = k.jvp({"x": x}, {"x": v})          # outputs and their tangents, by output name
    hv = k.hvp({"x": x}, {"x": v}, {"g": g})      # H v for each argument, by argument name

A tangent not given is zero; a scalar output's upstream gradient defaults to 1 (a loss).
"""

from __future__ import annotations

import numpy as np

from .api import KernelError, kernels

_DTYPES = {"float32": np.float32, "float64": np.float64}
# Serial loops (no prange): Numba compiles them 3-5x faster (attention's HVP: 7 s instead of 40 s
# on the 2-core VM), and a layer's HVP is called at verification sizes, not in a training step.
PARALLEL = False


class SecondOrderKernels:
    """The compiled JVP and HVP of one layer for one dtype (see the module docstring)."""

    def __init__(self, so, dtype: str):
        self.so, self.dtype = so, dtype
        self.name = so.name
        self.jvp_kernels = kernels(so.jvp, dtype, parallel=PARALLEL)
        self.hvp_kernels = kernels(so.hvp, dtype, parallel=PARALLEL)

    @property
    def source_paths(self):
        return [self.jvp_kernels.source_path, self.hvp_kernels.source_path]

    def _tangents(self, args, tangents, names, kernel):
        dt = _DTYPES[self.dtype]
        out = {}
        for a in tangents:
            if a not in names:
                raise KernelError(f"{self.name}.{kernel}: no tangent for '{a}' (the differentiable "
                                  f"arguments are {', '.join(names)})")
        for a, dot in names.items():
            if a in tangents:
                out[dot] = tangents[a]
            else:
                if a not in args:
                    raise KernelError(f"{self.name}.{kernel}: missing argument '{a}'")
                out[dot] = np.zeros(np.shape(args[a]), dt)
        return out

    def jvp(self, args: dict, tangents: dict):
        """(outputs, output tangents), each keyed by output name."""
        so = self.so
        res = self.jvp_kernels.forward(**args, **self._tangents(args, tangents, so.tangent_inputs, "jvp"))
        return ({o: res[o] for o in so.output_tangents}, {o: res[t] for o, t in so.output_tangents.items()})

    def hvp(self, args: dict, tangents: dict, upstream: dict | None = None):
        """H v for each differentiable argument (H: the Hessian of sum g·y over all arguments
        together, v: the tangents), keyed by argument name."""
        return self.jvp_and_hvp(args, tangents, upstream)[1]

    def jvp_and_hvp(self, args: dict, tangents: dict, upstream: dict | None = None):
        """(output tangents by output name, H v by argument name) from the one HVP kernel, which
        computes the tangents of the forward on its way to those of the backward."""
        so, d = self.so, self.so.first
        upstream = dict(upstream or {})
        for o in d.outputs:
            if not o.shape:
                upstream.setdefault(d.upstream(o.name), 1.0)
        res = self.hvp_kernels.forward(**args, **upstream,
                                       **self._tangents(args, tangents, so.hvp_inputs, "hvp"))
        return ({o.name: res[so.hvp_tangents[o.name]] for o in d.outputs},
                {a: res[n] for a, n in so.hvp_outputs.items()})


_loaded: dict = {}


def second_order_kernels(name_or_derivation, dtype: str = "float32") -> SecondOrderKernels:
    """The compiled JVP and HVP of a built-in layer (by name) or of any derive.define derivation."""
    from symgrad.derive.second_order import second_order

    if isinstance(dtype, type) or isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype).name
    if dtype not in _DTYPES:
        raise KernelError(f"second_order_kernels: dtype must be 'float32' or 'float64', got {dtype!r}")
    so = second_order(name_or_derivation)
    key = (id(so), dtype)
    if key not in _loaded:
        _loaded[key] = SecondOrderKernels(so, dtype)
    return _loaded[key]


__all__ = ["second_order_kernels", "SecondOrderKernels"]
