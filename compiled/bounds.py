"""Loop bounds and loop order: the ranges a sum's brackets allow (`bound_sums`), a guard's bound
on its loop variable (`affine_bound`, `affine_range`; compiled.lower splits a causal mask's loop
with them), and the best order of an accumulation's loops (`loop_order`)."""

from __future__ import annotations

import sympy as sp

from symgrad.derive.functions import Iverson

from .nest import free_indices, reductions


def bound_sums(expr):
    """Each sum whose body is multiplied by a bracket on its own variable, affine in it,
    `sum_j [0 <= r - 2 j <= 1] f(j)`, as a sum over the range the bracket allows,
    `sum_{j = max(0, ceil((r - 1)/2))}^{min(J - 1, floor(r/2))} f(j)` (an empty range is an empty
    loop). A convolution's dx and a pooling's backward visit each input's few windows instead of
    testing every output position against it (max_pool2d's dx: every window per element).
    Brackets that relate two variables of the same sum, or are not affine with integer
    coefficients, stay as they are. Only the printed loops change; the derived expression, which
    docs and the reference evaluator read, does not."""
    def visit(e):
        if isinstance(e, (sp.Indexed, sp.IndexedBase)) or not e.args:
            return e
        new = [visit(a) for a in e.args]
        e = e.func(*new) if new != list(e.args) else e
        if not isinstance(e, sp.Sum):
            return e
        body, limits, changed = e.function, [list(l) for l in e.limits], False
        for n, lim in enumerate(limits):
            v = lim[0]
            inner = {l[0] for l in limits[:n]}
            factors = list(sp.Mul.make_args(body))
            for f in [f for f in factors if isinstance(f, Iverson)]:
                kept, bounds = [], []
                for rel in _conjuncts(f.args[0]):
                    b = _bound_of(rel, v) if v in rel.free_symbols and not rel.free_symbols & inner else None
                    (kept if b is None else bounds).append(rel if b is None else b)
                if not bounds:
                    continue
                for upper, bnd in bounds:
                    lim[2 if upper else 1] = sp.Min(lim[2], bnd) if upper else sp.Max(lim[1], bnd)
                factors[factors.index(f)] = Iverson(sp.And(*kept)) if kept else sp.Integer(1)
                changed = True
            body = sp.Mul(*factors)
        return sp.Sum(body, *map(tuple, limits)) if changed else e

    return visit(expr)


def _conjuncts(cond):
    return list(cond.args) if isinstance(cond, sp.And) else [cond]


def _bound_of(rel, v):
    """(upper?, bound): `rel`, an affine relation c v + rest (<=, <, >=, >) 0 with c an integer,
    as v <= floor(-rest / c) or v >= ceiling(rest / -c); None otherwise."""
    kind = {sp.LessThan: (1, 0), sp.StrictLessThan: (1, 1), sp.GreaterThan: (-1, 0),
            sp.StrictGreaterThan: (-1, 1)}.get(type(rel))
    if kind is None:
        return None
    sign, strict = kind
    d = sp.expand(sign * (rel.lhs - rel.rhs) + strict)  # the relation is d <= 0 (integers)
    c = d.coeff(v)
    rest = sp.expand(d - c * v)
    if not c.is_Integer or c == 0 or v in rest.free_symbols or \
            not all(t.is_integer for t in rest.free_symbols):
        return None
    return (True, sp.floor(-rest / c)) if c > 0 else (False, sp.ceiling(rest / -c))


def affine_bound(guard, v):
    """(upper?, f) when Iverson `guard` holds exactly for v <= f (upper) or v >= f, f free of v;
    None for any other condition."""
    cond = guard.args[0]
    rel = {sp.LessThan: (1, 0), sp.StrictLessThan: (1, 1), sp.GreaterThan: (-1, 0),
           sp.StrictGreaterThan: (-1, 1)}.get(type(cond))
    if rel is None:
        return None
    sign, strict = rel
    d = sp.expand(sign * (cond.lhs - cond.rhs) + strict)  # the condition is d <= 0
    c = d.coeff(v)
    rest = sp.expand(d - c * v)
    if c not in (1, -1) or v in rest.free_symbols:
        return None
    return (True, -rest) if c == 1 else (False, rest)


def affine_range(f, extents):
    """(max, min) of f over indices u in [0, extent_u - 1]; (None, None) unless f is affine
    with numeric coefficients in them."""
    top = bottom = f
    for u, ext in extents.items():
        c = sp.expand(f).coeff(u)
        if not c.is_Number or sp.expand(f - c * u).has(u):
            return None, None
        hi_u = sp.sympify(ext) - 1
        top = top.xreplace({u: hi_u if c > 0 else 0})
        bottom = bottom.xreplace({u: 0 if c > 0 else hi_u})
    return sp.expand(top), sp.expand(bottom)


def loop_order(order, body, extents):
    """The best order of an accumulation's loops `order` ([(var, lo, hi)]) around `body` (all
    over fixed ranges, so any order computes the same sum; `extents`: the kernel's indices).
    Candidates: the given order, and each array read's index order
    followed by the other loops. Ranked by: fewest inner reductions recomputed under a loop
    they do not depend on (multi-head attention's dbq: a row sum over u inside the loop over
    j recomputed it T times), then most reads contiguous in the innermost loop, then most
    reads walked in row-major order."""
    by_var = {v: (v, lo, hi) for v, lo, hi in order}
    names = [v for v, _, _ in order]
    cands = [names]
    for ix in sorted(body.atoms(sp.Indexed), key=lambda x: (-len(x.indices), str(x.base.label))):
        seq = [i for i in ix.indices if i in by_var]
        seq = list(dict.fromkeys(seq))
        cand = seq + [v for v in names if v not in seq]
        if cand not in cands:
            cands.append(cand)
    reads = [[i for i in ix.indices if i in by_var] for ix in body.atoms(sp.Indexed)]
    reds = [free_indices(r, extents) & set(names) for r in reductions(body)]

    def rank(cand):
        pos = {v: n for n, v in enumerate(cand)}
        wasted = 0
        for free in reds:
            depth = max((pos[v] + 1 for v in free), default=0)
            wasted += depth - len(free)
        inner = sum(1 for r in reads if r and r[-1] == cand[-1])
        rowmajor = sum(1 for r in reads if r and [pos[i] for i in r] == sorted(pos[i] for i in r))
        return (wasted, -inner, -rowmajor)

    best = min(range(len(cands)), key=lambda n: (rank(cands[n]), n))
    return [by_var[v] for v in cands[best]]


__all__ = ["bound_sums", "affine_bound", "affine_range", "loop_order"]
