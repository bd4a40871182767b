"""Matrix products: which sums are (batched) matrix products BLAS can compute, and in what
layout.

`match` splits a sum into coeff * A * B over batch, M, N and K index groups; `plan` orders
them (the operand whose rows lead the target first, the batch as a plain read keeps it) into a
`Product`. `layout_ok` and `full_axes` say when an array read is usable as an operand as it is
(else compiled.lower copies it into a temporary, its indices in `natural_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.derive.functions import MaxOver, limits_of

from .nest import free_indices


@dataclass(frozen=True)
class Product:
    """A sum that is a (batched) matrix product: coeff * sum_K A[batch, M, K] B[batch, K, N].

    `match` gives batch, M and N as sets (which indices, unordered); `plan` gives every group as
    a tuple, in the order the product's loops and reshapes take them."""

    coeff: sp.Expr  # the scalar factors (no index): the product's alpha
    A: sp.Expr  # the factors of the left operand
    B: sp.Expr  # the factors of the right operand
    batch: tuple | set  # indices both operands and the result carry (looped over)
    M: tuple | set  # the result's rows: A's free indices
    N: tuple | set  # the result's columns: B's free indices
    K: tuple  # the summed indices


def match(s, extents):
    """Split Sum s into coeff * A * B, a batched matrix product (batch, M, N as sets); or None.
    `extents`: the extent of every index of the kernel."""
    lims = limits_of(s)
    K = tuple(v for v, lo, hi in lims)
    for v, lo, hi in lims:
        if lo != 0 or not _const_extent(v, extents):
            return None
    coeff, factors = [], []
    for f in sp.Mul.make_args(s.function):
        (factors if free_indices(f, extents) else coeff).append(f)
    if len(factors) < 2 or len(factors) > 6:
        return None
    free = free_indices(s, extents) - set(K)
    if not all(_const_extent(v, extents) for v in free):
        return None
    if any(f.has(MaxOver) for f in factors):
        return None
    if any(isinstance(f, sp.KroneckerDelta) and f.atoms(sp.Indexed) for f in factors):
        return None  # delta(ids[n], p): a scatter-add, not a product with a one-hot matrix
    sets = [free_indices(f, extents) for f in factors]
    best = None
    for mask in range(2 ** (len(factors) - 1)):
        A = [factors[0]] + [f for n, f in enumerate(factors[1:]) if (mask >> n) & 1]
        B = [f for n, f in enumerate(factors[1:]) if not (mask >> n) & 1]
        if not B:
            continue
        av = set().union(*[sets[factors.index(f)] for f in A])
        bv = set().union(*[sets[factors.index(f)] for f in B])
        if not set(K) <= (av & bv):
            continue
        M, N = av - bv, bv - av
        if not M or not N:
            continue
        batch = (av & bv) - set(K)
        best = (A, B, batch, M, N)
        break
    if best is None:
        return None
    A, B, batch, M, N = best
    return Product(sp.Mul(*coeff), sp.Mul(*A), sp.Mul(*B), batch, M, N, K)


def plan(s, extents, hint=()):
    """The product Sum s is (`match`), each group ordered: A the operand whose group leads the
    equation's own indices (`hint`, those of the target), the batch in the order a plain read
    keeps it; or None."""
    m = match(s, extents)
    if m is None:
        return None
    A, B, batch, M, N = m.A, m.B, m.batch, m.M, m.N
    hint = [v for v in hint if v in (batch | M | N)]
    if len(hint) == len(batch | M | N):
        rest = [v for v in hint if v not in batch]
        if rest and rest[0] in N:
            A, B, M, N = B, A, N, M
    # batch order from the first plain read that has them all
    border = None
    for ix in sorted(s.atoms(sp.Indexed), key=lambda x: -len(x.indices)):
        seq = [i for i in ix.indices if i in batch]
        if len(seq) == len(batch) and all(isinstance(i, sp.Symbol) for i in ix.indices):
            border = tuple(seq)
            break
    if border is None:
        border = tuple(sorted(batch, key=str))
    return Product(m.coeff, A, B, border, _ordered(A, M), _ordered(B, N), _ordered(A, m.K))


def full_axes(f, arrays, extents):
    """Every index of the read runs over its whole axis (W[k,q,u] with k < I of an (H+I)-row
    W is a block, not the array: it is copied into a temporary instead)."""
    shape = arrays.get(str(f.base.label))
    if shape is None or len(shape) != len(f.indices):
        return False
    return all(sp.simplify(sp.sympify(extents[i]) - sp.sympify(s)) == 0
               for i, s in zip(f.indices, shape))


def layout_ok(idx, batch, groups):
    """idx = batch (in order) + one group + the other, each group contiguous; or, each group
    a single index, the batch indices anywhere: per batch element a strided 2-D slice (a
    head's rows q[b, :, h, :] of a (B, T, H, D) array, compiled/blas.py takes its row
    stride), no copy."""
    nb = len(batch)
    g0, g1 = tuple(groups[0]), tuple(groups[1])
    if tuple(idx[:nb]) == tuple(batch):
        # each group in the order of the product's own (the writer reshapes the two groups to
        # a matrix: a group stored in another order would be read as a different matrix)
        return tuple(idx[nb:]) in (g0 + g1, g1 + g0)
    rest = tuple(i for i in idx if i not in set(batch))
    return nb > 0 and len(g0) == len(g1) == 1 and rest in (g0 + g1, g1 + g0)


def _const_extent(v, extents):
    e = extents.get(v)
    return e is not None and not (sp.sympify(e).free_symbols & set(extents))


def _ordered(expr, vars_):
    """vars_ in the order they appear in expr's highest-rank plain reads."""
    seen = []
    for ix in sorted(expr.atoms(sp.Indexed), key=lambda x: (-len(x.indices), str(x.base.label))):
        for i in ix.indices:
            if i in vars_ and i not in seen:
                seen.append(i)
    for v in sorted(vars_, key=str):
        if v not in seen:
            seen.append(v)
    return tuple(seen)


def natural_order(f, want, batch, groups):
    """Index order for materializing operand f: batch first, then its groups in the order its
    reads keep them (so two kernels needing the same operand share one temporary)."""
    seq = _ordered(f, want)
    rest = [i for i in seq if i not in batch]
    first, second = (groups[0], groups[1]) if rest and rest[0] in set(groups[0]) else (groups[1], groups[0])
    # within a group, the product's own order (a convolution's x[n, c, i + kh, j + kw] names
    # (n, i, j) in no plain read: sorted by name they were (n, j, i), and read as another matrix)
    return tuple(batch) + tuple(first) + tuple(second)


__all__ = ["Product", "match", "plan", "full_axes", "layout_ok", "natural_order"]
