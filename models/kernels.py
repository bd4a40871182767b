"""Where models/ gets its numbers: the kernels printed from derive/'s derivations.

Every forward and backward computation of a layer, and every optimizer update rule, is a call
to a kernel obtained here. `Op` wraps one layer's kernels with the bookkeeping a model needs:
it remembers, per call, the arguments and the saved forward bindings (a `Ctx`), and hands
them back to the backward kernel together with the upstream gradient.

    op = Op("linear", "float32")
    out, ctx = op(x=x, W=W, b=b)          # out["y"]
    grads = op.backward(ctx, g=dy)        # grads["x"], grads["W"], grads["b"]

The kernels come from `compiled.kernels(name, dtype)`: Numba functions printed from the derived
expressions, float32 for training and float64 for verification.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp

import compiled
import derive

__all__ = ["kernels", "Op", "Ctx", "profile"]


def _derivation(name_or_derivation):
    if isinstance(name_or_derivation, str):
        return derive.layer(name_or_derivation)
    return name_or_derivation


@lru_cache(maxsize=None)
def _kernels_by_name(name, dtype):
    return compiled.kernels(name, dtype=dtype)


_BY_ID: dict = {}  # id(derivation) -> (derivation, kernels): the derivation is kept alive with its id


def kernels(name_or_derivation, dtype="float32"):
    """The forward/backward kernels of a built-in layer (by name) or of a `derive.define`d one."""
    dtype = np.dtype(dtype).name
    if isinstance(name_or_derivation, str):
        return _kernels_by_name(name_or_derivation, dtype)
    key = (id(name_or_derivation), dtype)
    if key not in _BY_ID:
        _BY_ID[key] = (name_or_derivation, compiled.kernels(name_or_derivation, dtype=dtype))
    return _BY_ID[key][1]


class _Profile:
    """Seconds spent in each kernel (`layer.forward` / `layer.backward`), when enabled."""

    def __init__(self):
        self.enabled = False
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def reset(self):
        self.seconds.clear()
        self.calls.clear()

    def add(self, key, dt):
        self.seconds[key] += dt
        self.calls[key] += 1

    def table(self) -> list[tuple[str, float, int]]:
        return sorted(((k, s, self.calls[k]) for k, s in self.seconds.items()), key=lambda r: -r[1])


profile = _Profile()


@dataclass
class Ctx:
    """What one forward call keeps for its backward: arguments and saved bindings."""

    values: dict = field(default_factory=dict)


class Op:
    """One layer's kernels, called by argument name (see the module docstring)."""

    def __init__(self, name_or_derivation, dtype="float32"):
        self.derivation = _derivation(name_or_derivation)
        self.name = self.derivation.name
        self.dtype = np.dtype(dtype)
        self.k = kernels(name_or_derivation, self.dtype.name)
        self.saved = [t.name for t in self.derivation.saved]
        self.outputs = [t.name for t in self.derivation.outputs]
        self.upstream = {o: self.derivation.upstream(o) for o in self.outputs}
        # The backward kernel gets the arguments and those saved bindings its program reads.
        read = set()
        for _, _, e in self.derivation.program:
            read |= {str(ix.base.label) for ix in e.atoms(sp.Indexed)}
            read |= {s.name for s in e.free_symbols}
        self._keep = {a.name for a in self.derivation.arguments} | (set(self.saved) & read)

    def __call__(self, save=True, out=None, **args):
        if profile.enabled:
            t0 = time.perf_counter()
            res = self.k.forward(out=out, **args)
            profile.add(f"{self.name}.forward", time.perf_counter() - t0)
        else:
            res = self.k.forward(out=out, **args)
        ctx = Ctx(dict(args, **{s: res[s] for s in self.saved if s in res and s in self._keep})) \
            if save else None
        return res, ctx

    def backward(self, ctx: Ctx, out=None, **upstream):
        if profile.enabled:
            t0 = time.perf_counter()
            res = self.k.backward(out=out, **upstream, **ctx.values)
            profile.add(f"{self.name}.backward", time.perf_counter() - t0)
            return res
        return self.k.backward(out=out, **upstream, **ctx.values)
