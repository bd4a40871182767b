"""The statements lowering gives the writer (`compiled.lower` makes them, `compiled.writer`
prints them):

* `Nest`: a loop nest that writes (or accumulates into) one array element per iteration;
* `Dot`: a (batched) matrix product sent to BLAS;
* `Temp`: a temporary array the kernel allocates;
* `Lowered`: one kernel's temporaries and statements, in order.

And the few questions both sides ask of them: the outermost reductions of an expression, whether
a statement reads an array, a key for a reduction blind to the names of its bound indices.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from symgrad.derive.functions import REDUCTIONS, rename_bound


@dataclass
class Nest:
    """for order...: target[write] (=|+=) expr."""

    target: str
    write: tuple
    order: list  # [(var, lo, hi)]
    expr: sp.Expr
    accumulate: bool = False
    note: str = ""


@dataclass
class Dot:
    """out[batch, M, N] = sum_K a[...] b[...] through np.dot per batch element."""

    out: str
    out_idx: tuple
    a: str
    a_idx: tuple
    b: str
    b_idx: tuple
    batch: tuple
    M: tuple
    N: tuple
    K: tuple
    note: str = ""
    alpha: sp.Expr = sp.Integer(1)  # out = alpha * a @ b: a scalar factor of the sum (1/sqrt(D))


@dataclass
class Temp:
    """A temporary array of the kernel."""

    name: str
    shape: tuple  # extent expressions in the dims


@dataclass
class Lowered:
    """One kernel's temporaries and statements, in order."""

    temps: list = field(default_factory=list)
    stmts: list = field(default_factory=list)


def free_indices(expr, extents):
    """The index symbols of a kernel (the keys of `extents`) free in expr."""
    return {s for s in expr.free_symbols if s in extents}


def reductions(expr):
    """Outermost Sum / MaxOver nodes of expr (not those nested inside another)."""
    out = []

    def walk(e):
        if isinstance(e, REDUCTIONS):
            out.append(e)
            return
        if isinstance(e, (sp.Indexed, sp.IndexedBase)):
            return
        for a in e.args:
            walk(a)

    walk(expr)
    return out


def reads(st, name):
    """Does statement st read array `name`?"""
    if isinstance(st, Dot):
        return st.a == name or st.b == name
    return any(str(ix.base.label) == name for ix in st.expr.atoms(sp.Indexed))


def canon_bound(expr):
    """Rename bound indices to _b0, _b1, ... in traversal order."""
    counter = itertools.count()
    return rename_bound(expr, lambda v, lo, hi, st: (sp.Symbol(f"_b{next(counter)}", integer=True), st))


__all__ = ["Nest", "Dot", "Temp", "Lowered", "free_indices", "reductions", "reads", "canon_bound"]
