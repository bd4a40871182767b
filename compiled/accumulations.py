"""Accumulating loop nests for two kinds of sum that are no matrix product:

* `scatter`: `Sum_n body * delta(ids[n], p)` (embedding's gradient) is a scatter-add, a loop
  over n that accumulates into row ids[n], not an O(V*N*C) loop with a test;
* `leading_axis_sum`: `out[j] = Sum_n body` whose arrays keep n on an earlier axis than j (bias
  and layernorm parameter gradients) accumulates with n as the outer loop, reading rows
  contiguously (`merge_sums` first makes one sum of a sum of such sums).
"""

from __future__ import annotations

import sympy as sp

from .bounds import loop_order
from .nest import Nest, free_indices


def scatter(target, idx, expr, extents):
    """`target[idx] = Sum_n body * delta(ids[n], p)`, p one of idx (embedding's gradient), as a
    loop over n that accumulates into row ids[n]: the Nest, or None when expr is no such sum."""
    if not isinstance(expr, sp.Sum) or not idx:
        return None
    deltas = [f for f in sp.Mul.make_args(expr.function) if isinstance(f, sp.KroneckerDelta)]
    K = [v for v, lo, hi in expr.limits]
    for d in deltas:
        a, b = d.args
        for p, val in ((a, b), (b, a)):
            if p in idx and not val.has(p) and (free_indices(val, extents) & set(K)) and \
                    not (free_indices(val, extents) & set(idx)):
                body = sp.Mul(*[f for f in sp.Mul.make_args(expr.function) if f is not d])
                body = body.xreplace({p: val})
                for v, lo, hi in expr.limits:
                    extents.setdefault(v, hi - lo + 1)
                order = [tuple(l) for l in expr.limits] + \
                        [(v, 0, extents[v] - 1) for v in idx if v != p]
                write = tuple(val if v == p else v for v in idx)
                return Nest(target, write, order, body, accumulate=True, note="scatter-add")
    return None


def merge_sums(expr, extents):
    """c1*Sum(f1, lims) + c2*Sum(f2, lims') + ... -> Sum(c1*f1 + c2*f2', lims) when every term
    is a sum over the same ranges (dgamma = sum_n(g*x*rstd) - sum_n(g*mean*rstd))."""
    terms = sp.Add.make_args(expr)
    if len(terms) < 2:
        return expr
    parts = []
    for t in terms:
        sums = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Sum)]
        if len(sums) != 1:
            return expr
        c = t / sums[0]
        if free_indices(c, extents):
            return expr
        parts.append((c, sums[0]))
    lims0 = [tuple(l) for l in parts[0][1].limits]
    bodies = []
    for c, s in parts:
        lims = [tuple(l) for l in s.limits]
        if len(lims) != len(lims0) or any(l[1:] != l0[1:] for l, l0 in zip(lims, lims0)):
            return expr
        bodies.append(c * s.function.xreplace({l[0]: l0[0] for l, l0 in zip(lims, lims0)}))
    return sp.Sum(sp.Add(*bodies), *lims0)


def leading_axis_sum(target, idx, expr, extents):
    """`out[j] = c * Sum_n body` whose arrays keep n on an earlier axis than j (bias and
    layernorm parameter gradients) as an accumulation with n as the outer loop, reading rows
    contiguously: the Nest (its loops in `loop_order`), or None when expr is no such sum."""
    expr = merge_sums(expr, extents)
    coeff, s = sp.S.One, expr
    if isinstance(expr, sp.Mul):
        sums = [f for f in expr.args if isinstance(f, sp.Sum)]
        if len(sums) != 1 or free_indices(expr / sums[0], extents):
            return None
        s, coeff = sums[0], expr / sums[0]
    if not isinstance(s, sp.Sum) or not idx:
        return None
    lims = [tuple(l) for l in s.limits]
    if any(lo != 0 or (hi.free_symbols & set(extents)) for v, lo, hi in lims):
        return None
    K = [v for v, lo, hi in lims]
    earlier = False
    for ix in s.function.atoms(sp.Indexed):
        pos = {i: n for n, i in enumerate(ix.indices)}
        kp = [pos[k] for k in K if k in pos]
        tp = [pos[t] for t in idx if t in pos]
        if kp and tp and min(kp) < max(tp):
            earlier = True
    if not earlier:
        return None
    for v, lo, hi in lims:
        extents.setdefault(v, hi - lo + 1)
    order = lims + [(v, 0, extents[v] - 1) for v in idx]
    body = coeff * s.function
    order = loop_order(order, body, extents)
    return Nest(target, tuple(idx), order, body, accumulate=True,
                note="reduction over a leading axis")


__all__ = ["scatter", "merge_sums", "leading_axis_sum"]
