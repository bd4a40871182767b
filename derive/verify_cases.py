"""The numeric cases `derive.verify` checks a candidate in, and the inputs of each.

`_cases` lists them (random shapes, all dims 1, each dim 1 in turn, and where the definition
calls for it large logits, near-constant rows, masked positions and ties of a max); `_Instance`
is the derivation at one case's dims (its forward values, the loss, a derived expression's
value); `_point` draws a case's inputs and upstream gradients from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import reference
from .derivation import Derivation
from .equivalence import CandidateError
from .functions import Iverson, MaxOver


@dataclass
class _Case:
    label: str
    dims: dict  # dim symbol -> int
    kind: str  # "normal", "large", "near_constant", "simple"
    seed: int


class _Instance:
    """A derivation at fixed numeric dims: forward values, the loss, the derived VJP."""

    def __init__(self, d: Derivation, dims: dict, wrt: str):
        self.d, self.dims, self.wrt = d, dims, wrt
        self.ext = {i: int(sp.sympify(e).xreplace(dims)) for i, e in d.graph.extents.items()}
        self.shape = {t.name: tuple(int(sp.sympify(s).xreplace(dims)) for s in t.shape)
                      for t in d.graph.tensors()}
        self.bindings = [(b.name, b.indices, b.expr.xreplace(dims)) for b in d.graph.bindings]
        self.gidx = d.grad_indices[wrt]
        self.gext = dict(self.ext)
        self.gext.update(zip(self.gidx, self.shape[wrt]))
        self.ups = {d.upstream(o.name): o.name for o in d.outputs}

    def values(self, args):
        vals = {}
        for t in self.d.arguments:
            if t.name in args:
                vals[t.name] = args[t.name] if t.shape else float(args[t.name])
            elif t.role == "const":
                vals[t.name] = float(t.default)
        return vals

    def forward(self, args) -> dict:
        vals = self.values(args)
        with np.errstate(all="ignore"):
            for name, idx, expr in self.bindings:
                v = reference.evaluate(expr, idx, vals, self.ext)
                vals[name] = v if idx else float(v)
        return vals

    def loss(self, args, upstream) -> float:
        vals = self.forward(args)
        return float(sum(np.sum(np.asarray(upstream[u]) * np.asarray(vals[o]))
                         for u, o in self.ups.items()))

    def expr_value(self, expr, vals):
        with np.errstate(all="ignore"):
            out = reference.evaluate(sp.sympify(expr).xreplace(self.dims), self.gidx, vals, self.gext)
        return np.asarray(out, dtype=np.float64).reshape(self.shape[self.wrt])


def _has(d, test) -> bool:
    return any(any(test(a) for a in sp.preorder_traversal(b.expr)) for b in d.graph.bindings)


def _features(d):
    # large logits matter where the definition subtracts a max before exp (softmax, log-sum-exp);
    # elsewhere (sigmoid gates) +-1e3 only saturates and leaves rounding noise to compare
    large = _has(d, lambda a: isinstance(a, MaxOver))
    near = _has(d, lambda a: isinstance(a, sp.Pow) and not a.exp.is_integer
                and bool(a.base.atoms(sp.Indexed)) and a.exp.is_number)
    masked = _has(d, lambda a: isinstance(a, (Iverson, sp.Piecewise)))
    return large, near, masked


def _through_max(d) -> bool:
    """Does the gradient flow through a max (max pooling; not softmax's stop_gradient max)?"""
    return any(not b.stop_gradient and b.expr.has(MaxOver) for b in d.graph.bindings)


def _dim_roles(d) -> dict:
    """'batch of one' for the first axis and 'feature size one' for the last axis of the first
    floating input; other dims are named by their symbol."""
    roles = {}
    floats = [t for t in d.arguments if t.shape and not t.integer]
    if floats:
        shp = floats[0].shape
        if shp[0].is_Symbol:
            roles[shp[0]] = "batch of one"
        if len(shp) > 1 and shp[-1].is_Symbol and shp[-1] not in roles:
            roles[shp[-1]] = "feature size one"
    return roles


def _valid(d, dims) -> bool:
    """Does every index run over at least one value at these dims (a pooling window or a
    convolution's kernel no larger than its padded input)?"""
    return all(int(sp.sympify(e).subs(dims)) >= 1 for e in d.graph.extents.values())


def _cases(d, trials, seed, shapes) -> list[_Case]:
    dims = list(d.graph.dims_)
    rng = np.random.default_rng(seed)

    def rand(fixed=None):
        """Dims from 2..4 (`fixed` kept), drawn again until every index has a range; None if
        50 draws found none."""
        for _ in range(50):
            dd = {s: int(rng.integers(2, 5)) for s in dims}
            dd.update(fixed or {})
            if _valid(d, dd):
                return dd
        return None

    cases = []
    if shapes:
        by_name = {str(s): s for s in dims}
        for n, sh in enumerate(shapes):
            fixed = {}
            for k, v in dict(sh).items():
                key = by_name.get(str(k))
                if key is None:
                    raise CandidateError(f"shapes= names dim '{k}' but {d.name} has dims "
                                         f"{', '.join(by_name) or '(none)'}")
                fixed[key] = int(v)
            dd = rand(fixed)
            if dd is None:
                raise CandidateError(f"shapes= {dict(sh)} leaves an index of {d.name} with no "
                                     f"range (a window larger than its input?)")
            cases.append(_Case(f"shape {n + 1}", dd, "normal", seed * 1000 + n))
        return cases

    def add(label, dd, kind, k):
        if dd is not None and _valid(d, dd):  # a case that cannot exist (pool of 2 over 1) is left out
            cases.append(_Case(label, dd, kind, seed * 1000 + k))
    for n in range(trials):
        add(f"random {n + 1}", rand(), "normal", n)
    if dims:
        add("all dims 1", {s: 1 for s in dims}, "normal", 100)
    roles = _dim_roles(d)
    if len(dims) > 1:
        for n, s in enumerate(dims):
            add(roles.get(s, f"{s}=1"), rand({s: 1}), "normal", 200 + n)
    large, near, masked = _features(d)
    if large:
        add("large logits (+-1e3)", rand(), "large", 300)
    if near:
        add("near-constant rows", rand(), "near_constant", 400)
    if masked:
        add("masked positions", {s: int(rng.integers(3, 5)) for s in dims}, "normal", 500)
    if _through_max(d):
        add("ties (inputs in -1, 0, 1)", {s: int(rng.integers(3, 5)) for s in dims}, "ties", 600)
    return cases


def _simple(a, rng):
    """Values with one decimal, never exactly 0 (kinks such as relu's sit at 0)."""
    v = np.round(np.asarray(a, dtype=np.float64), 1)
    return np.where(v == 0, 0.1, v)


def _point(inst: _Instance, case: _Case, int_ranges):
    rng = np.random.default_rng(case.seed)
    args = {}
    for t in inst.d.arguments:
        if t.role == "const":
            continue
        shape = inst.shape[t.name]
        if t.integer:
            hi = int(sp.sympify(int_ranges.get(t.name, 2)).xreplace(inst.dims))
            args[t.name] = rng.integers(0, max(hi, 1), size=shape).astype(np.int64)
            continue
        a = rng.standard_normal(shape)
        if case.kind == "large" and t.role == "input":
            # rows offset by +-1e3: exp overflows (or underflows to 0/0) unless stabilized,
            # while the softmax itself stays well conditioned
            a = a + 1e3 * rng.choice([-1.0, 1.0], size=shape[:-1] + (1,) if shape else ())
        elif case.kind == "near_constant" and t.role == "input" and a.ndim:
            a = rng.standard_normal(shape[:-1] + (1,)) + 1e-4 * a
        elif case.kind == "simple":
            a = _simple(a, rng)
        elif case.kind == "ties" and t.role == "input":
            # every max over a few of these has ties: the gradient must go where the layer's
            # tie rule sends it (max pooling: the first maximum, as PyTorch)
            a = rng.integers(-1, 2, size=shape).astype(np.float64)
        args[t.name] = np.asarray(a, dtype=np.float64) if shape else float(a)
    upstream = {}
    for u, o in inst.ups.items():
        a = rng.standard_normal(inst.shape[o])
        if case.kind == "simple":
            a = _simple(a, rng)
        upstream[u] = np.asarray(a, dtype=np.float64) if inst.shape[o] else float(a)
    return args, upstream
