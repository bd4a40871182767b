"""Forward mode from the same definitions: the tangent of every binding, by differentiating again.

The tangent (JVP) of a binding `b[idx] = e` for tangents Ṫ of the tensors it reads is

    ḃ[idx] = d/dε e(T + ε Ṫ) |_{ε=0}

obtained by replacing every read T[..] of a tensor with a tangent by T[..] + ε Ṫ[..] and letting
SymPy differentiate by the scalar ε: no Kronecker deltas appear, so none need eliminating. A
stop-gradient binding (softmax's row max) has tangent 0, exactly as it has no adjoint: the layer's
value does not depend on it. Integer arguments (targets, ids) have no tangent.

`tangent_graph` turns a forward graph into a new Graph that computes, after every original binding,
the tangents of those that have one; its outputs are tangents, so the kernel printer compiles it as
an ordinary forward kernel. derive.second_order applies it to a layer's forward (the JVP) and to
the forward followed by its derived backward program (the HVP, forward-over-reverse).
"""

from __future__ import annotations

import sympy as sp

from . import budget, deltas
from .fold import fold_definitions
from .functions import NoDerivative
from .errors import DeriveError
from .graph import Binding, Graph, Tensor


def dot_name(name: str, taken: set) -> str:
    """The tangent of `name`: `<name>_dot` (a trailing `_` while that name is taken)."""
    out = f"{name}_dot"
    while out in taken:
        out += "_"
    taken.add(out)
    return out


def tangent_of(expr, dots: dict):
    """d/dε expr(T + ε Ṫ) at ε = 0, for every tensor T in `dots` (name -> its tangent Tensor)."""
    eps = sp.Dummy("epsilon", real=True)
    sub = {}
    for ix in expr.atoms(sp.Indexed):
        t = dots.get(str(ix.base.label))
        if t is not None:
            sub[ix] = ix + eps * t.ref(ix.indices)
    for s in expr.free_symbols:
        t = dots.get(getattr(s, "name", None))
        if t is not None and isinstance(s, sp.Symbol) and not t.shape:
            sub[s] = s + eps * t.symbol
    if not sub:
        return sp.S.Zero
    try:
        out = sp.diff(expr.xreplace(sub), eps)
    except NoDerivative as e:
        raise DeriveError("tangent", f"{e}: in {expr}") from None
    return out.xreplace({eps: sp.S.Zero})


def tangent_graph(graph: Graph, name: str, doc: str, wrt: list, fixed=(), outputs=None,
                  keep_outputs=True):
    """A new Graph: `graph`'s arguments, a tangent argument <a>_dot for each name in `wrt`, every
    binding of `graph` (saves dropped), then the tangent of every binding that has one.

    `fixed`: names of tensors held constant (an upstream gradient). Outputs: the tangents of
    `outputs` (default: graph's outputs), after the primal outputs where `keep_outputs`.
    Returns (graph, {tensor name: its tangent's name}, [tangent steps as (binding, lhs, rhs)])."""
    g = Graph(name, doc)
    g.dims_ = list(graph.dims_)
    g.extents = dict(graph.extents)
    g.args = list(graph.args)
    taken = {t.name for t in graph.tensors()} | {str(d) for d in graph.dims_} | \
        {str(i) for i in graph.extents}
    dots = {}
    for a in graph.args:
        if a.name in wrt and a.differentiable and a.name not in fixed:
            dots[a.name] = Tensor(dot_name(a.name, taken), a.shape, "input")
            g.args.append(dots[a.name])
    for b in graph.bindings:
        g.bindings.append(Binding(b.tensor, b.indices, b.expr, save=False, stop_gradient=b.stop_gradient))
    outputs = [o.name for o in graph.outputs] if outputs is None else list(outputs)
    rows = []
    for b in graph.bindings:
        if b.stop_gradient or b.name in fixed:
            continue
        budget.at(b.name, "tangent")
        expr = tangent_of(b.expr, dots)
        if expr == 0 and b.name not in outputs:
            continue
        if b.expr.args and not isinstance(b.expr, sp.Indexed):  # d exp(u) = exp(u) du reads e itself
            expr = expr.xreplace({b.expr: b.lhs})
        expr = fold_definitions(deltas.piecewise_to_iverson(expr), graph)
        # bound indices made fresh first: a program's sums are already named l, r, and renaming
        # an outer l to r inside an inner sum over r would capture it
        expr = deltas.canonical_names(sp.factor_terms(deltas.rename_bound(expr)), avoid=taken)
        dots[b.name] = Tensor(dot_name(b.name, taken), b.tensor.shape, "binding")
        g.bindings.append(Binding(dots[b.name], b.indices, expr))
        rows.append((b.name, dots[b.name].ref(b.indices), expr))
    if keep_outputs:
        for o in graph.outputs:
            g.binding(o.name).save = True
            g.outputs.append(g.binding(o.name))
    for o in outputs:
        out = g.binding(dots[o].name)
        out.save = True
        g.outputs.append(out)
    prune(g)
    return g, {n: t.name for n, t in dots.items()}, rows


def prune(g: Graph):
    """Drop the bindings no output needs (the backward's gradients themselves, in an HVP graph
    that only returns their tangents)."""
    needed = {o.name for o in g.outputs}
    bindings = {b.name for b in g.bindings}
    for b in reversed(g.bindings):
        if b.name in needed:
            needed |= {str(ix.base.label) for ix in b.expr.atoms(sp.Indexed)}
            needed |= {s.name for s in b.expr.free_symbols if getattr(s, "name", None) in bindings}
    g.bindings = [b for b in g.bindings if b.name in needed]
