"""The KroneckerDelta elimination pass on its own."""

import sympy as sp

from symgrad.derive.deltas import eliminate_deltas
from symgrad.derive.functions import Iverson

i, j, k, p, q = sp.symbols("i j k p q", integer=True)
N, n, m, T = sp.symbols("N n m T", integer=True, positive=True)
x, W, g, ids = (sp.IndexedBase(s, real=True) for s in ("x", "W", "g", "ids_r"))
idsI = sp.IndexedBase("ids", integer=True)


def vjp(y, wrt, free):
    body = g[free] * sp.diff(y, wrt)
    for v, hi in reversed(list(zip(free, (N, m)))):
        body = sp.Sum(body, (v, 0, hi - 1))
    return body


def test_matmul_vjp_collapses_to_a_single_contraction():
    y = sp.Sum(x[i, k] * W[k, j], (k, 0, n - 1))
    dx = eliminate_deltas(vjp(y, x[p, q], (i, j)), {p: N, q: n})
    assert not dx.has(sp.KroneckerDelta)
    assert dx == sp.Sum(W[q, j] * g[p, j], (j, 0, m - 1))


def test_delta_with_the_full_range_needs_no_bracket():
    e = sp.Sum(sp.KroneckerDelta(k, q) * x[i, k], (k, 0, n - 1))
    assert eliminate_deltas(e, {q: n}) == x[i, q]


def test_delta_outside_the_summation_range_keeps_a_bracket():
    e = sp.Sum(sp.KroneckerDelta(k, q) * x[i, k], (k, 0, i))
    assert eliminate_deltas(e, {q: T}) == x[i, q] * Iverson(q <= i)


def test_offset_index_is_solved_with_its_range():
    e = sp.Sum(sp.KroneckerDelta(k + n, q) * x[i, k], (k, 0, m - 1))
    out = eliminate_deltas(e, {q: n + m})
    assert not out.has(sp.Sum)
    assert out == x[i, q - n] * Iverson(q - n >= 0)


def test_unsolvable_delta_stays_as_an_indicator():
    e = sp.Sum(sp.KroneckerDelta(idsI[k], p) * g[k, q], (k, 0, N - 1))
    out = eliminate_deltas(e, {p: n, q: m})
    assert out.has(sp.KroneckerDelta) and out.has(sp.Sum)


def test_nested_sums_eliminate_inner_then_outer():
    e = sp.Sum(sp.Sum(g[i, j] * sp.KroneckerDelta(i, p) * sp.Sum(sp.KroneckerDelta(k, q) * W[k, j],
                                                                 (k, 0, n - 1)), (i, 0, N - 1)), (j, 0, m - 1))
    assert eliminate_deltas(e, {p: N, q: n}) == sp.Sum(W[q, j] * g[p, j], (j, 0, m - 1))


def test_delta_not_involving_the_summation_variable_is_left_alone():
    e = sp.Sum(sp.KroneckerDelta(i, p) * x[i, k], (k, 0, n - 1))
    out = eliminate_deltas(e, {p: N})
    assert out == sp.KroneckerDelta(i, p) * sp.Sum(x[i, k], (k, 0, n - 1))


def test_delta_solvable_only_for_the_outer_variable_is_solved_through_the_inner_sum():
    """A dilated convolution's dx: delta(q, j + 2k) has no unit coefficient on the inner tap k,
    so the two sums are merged and j (the output position) is solved instead."""
    Wd, K = sp.symbols("Wd K", integer=True, positive=True)
    e = sp.Sum(g[j] * sp.Sum(W[k] * sp.KroneckerDelta(q, j + 2 * k), (k, 0, K - 1)), (j, 0, Wd - 2 * K + 1))
    out = eliminate_deltas(e, {q: Wd})
    assert not out.has(sp.KroneckerDelta)
    assert out == sp.Sum(W[k] * g[q - 2 * k] * Iverson(sp.And(q - 2 * k >= 0, q - 2 * k <= Wd - 2 * K + 1)),
                         (k, 0, K - 1))


def test_bracket_that_holds_over_the_free_indices_is_dropped():
    """Zero padding's guard [0 <= r <= W - 1] at the gradient's own index r over W is always 1;
    so is a flattened index's range."""
    C, H, Wd = sp.symbols("C H Wd", integer=True, positive=True)
    r, c, h, w = sp.symbols("r c h w", integer=True)
    f = sp.Symbol("f", integer=True)
    pad = sp.Sum(x[i, k] * sp.KroneckerDelta(k - 1, r) * Iverson(sp.And(k - 1 >= 0, k - 1 <= Wd - 1)),
                 (k, 0, Wd + 1))
    assert eliminate_deltas(pad, {r: Wd}) == x[i, r + 1]
    flat = sp.Sum(g[f] * sp.KroneckerDelta(f, c * H * Wd + h * Wd + w), (f, 0, C * H * Wd - 1))
    assert eliminate_deltas(flat, {c: C, h: H, w: Wd}) == g[c * H * Wd + h * Wd + w]
