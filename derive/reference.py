"""A float64 NumPy evaluator for index expressions: derive/'s own reference, independent of Numba.

Each index symbol gets an axis; an expression evaluates to an array that broadcasts over the axes
of the indices it depends on. A `Sum` (or `MaxOver`) adds an axis for its variable, masks the
values outside its (possibly index-dependent) limits, and reduces it. Slow and simple on purpose:
it is what the compiled kernels and hand-derived gradients are checked against.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp
from scipy import special

from .chain import grad_name
from .errors import DeriveError
from .functions import REDUCTIONS, Iverson, MaxOver, body_of, limits_of

_UNARY = {sp.exp: np.exp, sp.log: np.log, sp.tanh: np.tanh, sp.erf: special.erf, sp.sin: np.sin,
          sp.cos: np.cos, sp.sqrt: np.sqrt, sp.Abs: np.abs, sp.sign: np.sign, sp.sinh: np.sinh,
          sp.cosh: np.cosh, sp.atan: np.arctan}


class _Env:
    """Values of tensors and scalars, and the axis of every index in scope."""

    def __init__(self, values: dict, axes: dict, ndim: int):
        self.values, self.axes, self.ndim = values, axes, ndim

    def with_axis(self, var):
        axes = dict(self.axes)
        axes[var] = self.ndim
        return _Env(self.values, axes, self.ndim + 1)


def _shape_index(n, axis, ndim):
    shape = [1] * ndim
    shape[axis] = n
    return np.arange(n).reshape(shape)


def _pad(a, ndim):
    a = np.asarray(a)
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def _ev(e, env: _Env):
    if isinstance(e, sp.Indexed):
        arr = env.values[str(e.base.label)]
        idx = [np.asarray(_ev(i, env)).astype(np.int64) for i in e.indices]
        idx = [_pad(i, env.ndim) for i in idx]
        for i, n in zip(idx, arr.shape):
            if i.size and (i.min() < 0 or i.max() >= n):
                i.clip(0, n - 1, out=i)  # out-of-range only where a mask zeroes the value anyway
        return arr[tuple(idx)]
    if isinstance(e, sp.Symbol):
        if e in env.axes:
            return env.values["__idx__"][e]
        if e.name in env.values:
            return _pad(np.asarray(env.values[e.name], dtype=np.float64), env.ndim)
        raise DeriveError("reference", f"no value for symbol {e}")
    if e.is_Number:
        return float(e) if not e.is_Integer else int(e)
    if e is sp.pi:
        return math.pi
    if e is sp.E:
        return math.e
    if isinstance(e, sp.Add):
        out = 0
        for a in e.args:
            out = out + _ev(a, env)
        return out
    if isinstance(e, sp.Mul):
        out = 1
        for a in e.args:
            out = out * _ev(a, env)
        return out
    if isinstance(e, sp.Pow):
        b, x = _ev(e.base, env), _ev(e.exp, env)
        return np.power(np.asarray(b, dtype=np.float64), x)
    if isinstance(e, REDUCTIONS):
        return _reduce(body_of(e), limits_of(e), env, isinstance(e, MaxOver))
    if isinstance(e, Iverson):
        return np.asarray(_ev(e.args[0], env), dtype=np.float64)
    if isinstance(e, sp.KroneckerDelta):
        return (np.asarray(_ev(e.args[0], env)) == np.asarray(_ev(e.args[1], env))).astype(np.float64)
    if isinstance(e, sp.Piecewise):
        out = None
        for val, cond in reversed(e.args):
            v = np.asarray(_ev(val, env), dtype=np.float64)
            out = v if out is None else np.where(_ev(cond, env), v, out)
        return out
    if isinstance(e, sp.Rel):
        a, b = _ev(e.lhs, env), _ev(e.rhs, env)
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "==": np.equal, "!=": np.not_equal}[e.rel_op](a, b)
    if isinstance(e, sp.And):  # pairwise, broadcasting (operands over different indices)
        return functools.reduce(np.logical_and, [np.asarray(_ev(a, env)) for a in e.args])
    if isinstance(e, sp.Or):
        return functools.reduce(np.logical_or, [np.asarray(_ev(a, env)) for a in e.args])
    if isinstance(e, sp.Not):
        return np.logical_not(_ev(e.args[0], env))
    if e is sp.true:
        return True
    if e is sp.false:
        return False
    if e.func in _UNARY:
        return _UNARY[e.func](np.asarray(_ev(e.args[0], env), dtype=np.float64))
    if isinstance(e, sp.Heaviside):  # SymPy's derivative of Max/Abs: H0 (1/2 unless given) at 0
        h0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        return np.heaviside(np.asarray(_ev(e.args[0], env), dtype=np.float64), float(h0))
    if isinstance(e, sp.DiracDelta):  # the derivative of a step: 0 almost everywhere
        return np.zeros_like(np.asarray(_ev(e.args[0], env), dtype=np.float64))
    if isinstance(e, (sp.Max, sp.Min)):  # pairwise, broadcasting: max(x[i], 0) is an array and a number
        op = np.maximum if isinstance(e, sp.Max) else np.minimum
        return functools.reduce(op, [np.asarray(_ev(a, env), dtype=np.float64) for a in e.args])
    raise DeriveError("reference", f"the reference evaluator cannot evaluate {e.func.__name__}: {e}")


def _reduce(body, limits, env, is_max):
    var, lo, hi = limits[0]
    lo_v, hi_v = np.asarray(_ev(lo, env)), np.asarray(_ev(hi, env))
    start, stop = int(lo_v.min()), int(hi_v.max())
    inner = env.with_axis(var)
    n = max(stop - start + 1, 0)
    idx = dict(env.values["__idx__"])
    vals = _shape_index(n, inner.ndim - 1, inner.ndim) + start
    idx = {k: _pad(v, inner.ndim) for k, v in idx.items()}
    idx[var] = vals
    inner.values = dict(env.values, __idx__=idx)
    rest = sp.Sum(body, *limits[1:]) if len(limits) > 1 and not is_max else body
    val = np.asarray(_ev(rest, inner), dtype=np.float64)
    mask = (vals >= _pad(lo_v, inner.ndim)) & (vals <= _pad(hi_v, inner.ndim))
    val, mask = np.broadcast_arrays(val, mask)
    if is_max:
        return np.where(mask, val, -np.inf).max(axis=-1) if n else np.full(val.shape[:-1], -np.inf)
    return np.where(mask, val, 0.0).sum(axis=-1)


def evaluate(expr, indices, values: dict, extents: dict):
    """Evaluate `expr` over the grid of `indices` (symbols), with tensor/scalar `values` and the
    numeric `extents` of those indices. Returns an array of shape [extent of each index]."""
    ndim = len(indices)
    idx = {i: _shape_index(int(extents[i]), a, ndim) for a, i in enumerate(indices)}
    env = _Env(dict(values, __idx__=idx), {i: a for a, i in enumerate(indices)}, ndim)
    out = np.asarray(_ev(sp.sympify(expr), env), dtype=np.float64)
    shape = tuple(int(extents[i]) for i in indices)
    return np.broadcast_to(out, shape + out.shape[ndim:] if out.ndim > ndim else shape).copy()


def dims_of(derivation, args: dict) -> dict:
    """Numeric values of the layer's dims (shape symbols) read off the argument arrays."""
    pairs = []
    for t in derivation.arguments:
        if not t.shape or t.name not in args:
            continue
        arr = np.asarray(args[t.name])
        if arr.ndim != len(t.shape):
            raise DeriveError(derivation.name, f"argument '{t.name}' must have rank {len(t.shape)} "
                                               f"{t.shape}, got shape {arr.shape}")
        pairs += [(t.name, arr.shape, s, n) for s, n in zip(t.shape, arr.shape)]
    dims = {}
    for _ in range(len(pairs) + 1):  # solve the extents with one unknown first (C = H*D last)
        for _, _, s, n in pairs:
            unknown = s.free_symbols - set(dims)
            if s.is_Symbol and unknown:  # a plain dim: read off, no solve (one per call adds up)
                dims[s] = int(n)
            elif len(unknown) == 1:
                (sym,) = unknown
                sol = sp.solve(sp.Eq(s.subs(dims), n), sym)
                if len(sol) == 1 and sol[0].is_integer:
                    dims[sym] = int(sol[0])
    for name, shape, s, n in pairs:
        if s.free_symbols - set(dims) or int(_at(s, dims)) != n:
            raise DeriveError(derivation.name, f"inconsistent shapes: argument '{name}' has shape "
                                               f"{shape}, expected {derivation.graph.tensor(name).shape} "
                                               f"with {dims}")
    return dims


def _at(expr, dims: dict):
    """expr with the dims' values substituted (memoized: finite differences evaluate the same
    forward at the same shapes hundreds of times, and subs was most of each call)."""
    return _subs(sp.sympify(expr), tuple(sorted(dims.items(), key=lambda kv: str(kv[0]))))


@functools.lru_cache(maxsize=4096)
def _subs(expr, dims: tuple):
    return expr.subs(dict(dims))


def _values(derivation, args):
    vals = {}
    for t in derivation.arguments:
        if t.name in args:
            vals[t.name] = np.asarray(args[t.name], dtype=np.int64 if t.integer else np.float64)
        elif t.role == "const":
            vals[t.name] = float(t.default)
        else:
            raise DeriveError(derivation.name, f"missing argument '{t.name}'")
    return vals


def _extents(derivation, dims):
    g = derivation.graph
    return {i: int(_at(e, dims)) for i, e in g.extents.items()}


def forward(derivation, args: dict) -> dict:
    """Every binding of the forward pass, in float64, by name."""
    dims = dims_of(derivation, args)
    vals = _values(derivation, args)
    ext = _extents(derivation, dims)
    for b in derivation.graph.bindings:
        vals[b.name] = evaluate(_at(b.expr, dims), b.indices, vals, ext) if b.indices \
            else float(evaluate(_at(b.expr, dims), (), vals, ext))
    return {b.name: vals[b.name] for b in derivation.graph.bindings}


def vjp(derivation, upstream: dict, args: dict) -> dict:
    """Evaluate every derived gradient: {argument name: array of the argument's shape}."""
    dims = dims_of(derivation, args)
    vals = _values(derivation, args)
    vals.update(forward(derivation, args))
    for o in derivation.outputs:
        name = derivation.upstream(o.name)
        if name not in upstream:
            raise DeriveError(derivation.name, f"missing upstream gradient '{name}'")
        vals[name] = np.asarray(upstream[name], dtype=np.float64)
    out = {}
    for a, expr in derivation.grads.items():
        t = derivation.graph.tensor(a)
        idx = derivation.grad_indices[a]
        ext = {i: int(_at(s, dims)) for i, s in zip(idx, t.shape)}
        ext.update(_extents(derivation, dims))
        ext.update({i: int(_at(s, dims)) for i, s in zip(idx, t.shape)})
        res = evaluate(_at(expr, dims), idx, vals, ext)
        out[a] = res if t.shape else float(res)
    return out


__all__ = ["evaluate", "forward", "vjp", "dims_of", "grad_name"]
