"""Rewrite passes over index expressions: the KroneckerDelta elimination and its helpers.

SymPy's `diff` of an `Indexed` by an `Indexed` gives `KroneckerDelta`s (and, with `doit`, index
range `Piecewise`s). Every index here is known to be in range, so

    Sum_{k=lo..hi} delta(k, q) * f(k)  ->  f(q) * [lo <= q <= hi]

where the bracket is dropped whenever the range of q provably lies in [lo, hi]. A delta whose
summation variable cannot be solved for (an embedding's `delta(ids[n], p)`) stays, as an indicator
the kernel printer turns into a scatter. Every pass here is pure: expression in, expression out.
"""

from __future__ import annotations

import itertools

import sympy as sp

from . import budget
from . import functions
from .functions import REDUCTIONS, Iverson, MaxOver, limits_of

_fresh = itertools.count()


def fresh_index(stem: str = "k") -> sp.Symbol:
    """A new integer index symbol that cannot clash with any other."""
    return sp.Dummy(f"{stem}", integer=True)


def bound_vars(expr) -> set:
    return {lim[0] for r in expr.atoms(*REDUCTIONS) for lim in limits_of(r)}


def rename_bound(expr):
    """Alpha-rename every bound index (of Sum and MaxOver) to a fresh symbol."""
    return functions.rename_bound(expr, lambda v, lo, hi, st: (fresh_index(str(v).lstrip("_")), st))


def piecewise_to_iverson(expr):
    """Piecewise((a, c1), (b, c2), ..., (z, True)) -> a*[c1] + b*[~c1 & c2] + ...: deltas inside
    a branch become ordinary factors the elimination can see."""

    def conv(pw):
        terms, taken = [], sp.false
        for val, cond in pw.args:
            here = sp.And(cond, sp.Not(taken)) if taken is not sp.false else cond
            if val != 0:
                terms.append(val if here is sp.true else val * Iverson(here))
            taken = sp.Or(taken, cond)
        return sp.Add(*terms)

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), conv)


def _solve_delta(delta, v):
    """If delta is delta(v + c, b) (or the mirror), return the value of v that makes it 1."""
    a, b = delta.args
    d = sp.expand(a - b)
    indep, dep = d.as_independent(v, as_Add=True)
    if dep == v:
        return -indep
    if dep == -v:
        return indep
    return None


def _range(value, extents):
    """A (lo, hi) range of an index expression, or None when unknown: value affine in the free
    indices, each coefficient of known sign (a flattened index c*H*W + h*W + w: (0, C*H*W - 1))."""
    value = sp.expand(value)
    base = value.xreplace({v: 0 for v in extents})
    coeffs = {v: value.coeff(v) for v in extents if value.has(v)}
    if sp.expand(value - base - sum(c * v for v, c in coeffs.items())) != 0:
        return None  # not affine in the indices (i*j, i**2)
    lo = hi = base
    for v, c in coeffs.items():
        if c.has(*extents) or not (c.is_positive or c.is_negative):
            return None
        if c.is_positive:
            hi += c * (extents[v] - 1)
        else:
            lo += c * (extents[v] - 1)
    return lo, hi


def _provably(rel) -> bool:
    try:
        return bool(sp.simplify(rel) is sp.true)
    except TypeError:
        return False


def range_indicator(value, lo, hi, extents):
    """[lo <= value <= hi], with every provably true part dropped."""
    conds = []
    rng = _range(value, extents)
    if not (rng and _provably(sp.Ge(rng[0] - lo, 0))):
        conds.append(sp.Ge(value, lo))
    if not (rng and _provably(sp.Ge(hi - rng[1], 0))):
        conds.append(sp.Le(value, hi))
    return Iverson(sp.And(*conds)) if conds else sp.Integer(1)


def pull_out(body, v):
    """Split a product into (factors free of v, factors with v)."""
    indep, dep = [], []
    for f in sp.Mul.make_args(body):
        (dep if f.has(v) else indep).append(f)
    return sp.Mul(*indep), sp.Mul(*dep)


def make_sum(term, limits):
    """Sum of term over limits (innermost first); factors free of a variable stay outside it."""
    for v, lo, hi in limits:
        c, dep = pull_out(term, v)
        term = c * (sp.Sum(dep, (v, lo, hi)) if dep.has(v) else dep * (hi - lo + 1))
    return term


def eliminate_deltas(expr, extents: dict):
    """Remove every KroneckerDelta that a summation can absorb; see the module docstring.

    `extents` maps free index symbols to their extents (they run over 0..extent-1); the
    bound variables' ranges come from their Sum limits.
    """
    if isinstance(expr, sp.Sum):
        body = eliminate_deltas(expr.function, extents)
        inner = dict(extents)
        for v, lo, hi in expr.limits:
            if _provably(sp.Eq(lo, 0)):
                inner[v] = hi + 1
        body = eliminate_deltas(body, inner) if inner != extents else body
        return _absorb(body, list(expr.limits), extents)
    if isinstance(expr, (sp.Indexed, sp.IndexedBase, sp.Symbol)) or not expr.args:
        return expr
    if isinstance(expr, (Iverson, MaxOver)) or isinstance(expr, sp.logic.boolalg.Boolean):
        return expr
    return expr.func(*[eliminate_deltas(a, extents) for a in expr.args])


def _absorb(body, limits, extents):
    budget.check()
    if not body.has(sp.KroneckerDelta):
        return make_sum(body, limits)  # nothing to absorb: keep the factored form
    out = []
    for term in _delta_terms(body, {v for v, _, _ in limits}):
        term, lims = _flatten_for_deltas(term, list(limits))
        progress = True
        while progress:
            progress = False
            for n, (v, lo, hi) in enumerate(lims):
                for delta in [f for f in sp.Mul.make_args(term) if isinstance(f, sp.KroneckerDelta)]:
                    if not delta.has(v):
                        continue
                    value = _solve_delta(delta, v)
                    if value is None:
                        continue
                    rest = sp.Mul(*[f for f in sp.Mul.make_args(term) if f is not delta])
                    term = rest.xreplace({v: value}) * range_indicator(value, lo, hi, extents)
                    term = _resolve_brackets(term, extents)
                    del lims[n]
                    progress = True
                    break
                if progress:
                    break
        out.append(make_sum(term, lims))
    return sp.Add(*out)


def _flatten_for_deltas(term, limits):
    """Sum_j A * Sum_l B -> Sum_{j,l} A*B where a delta in B can be solved for j and only for j
    (a dilated convolution's delta(r, j + 2 l - 1): l has no unit coefficient, j has). The inner
    limits must not read the outer variables (then the two sums commute). Returns (term, limits)."""
    outer = {v for v, _, _ in limits}
    for f in sp.Mul.make_args(term):
        if not isinstance(f, sp.Sum) or any(lo.has(*outer) or hi.has(*outer) for _, lo, hi in f.limits):
            continue
        inner = {v for v, _, _ in f.limits}
        found = [d for d in sp.Mul.make_args(f.function) if isinstance(d, sp.KroneckerDelta)
                 and any(_solve_delta(d, v) is not None for v in outer if d.has(v))
                 and not any(_solve_delta(d, v) is not None for v in inner if d.has(v))]
        if found:
            rest = sp.Mul(*[a for a in sp.Mul.make_args(term) if a is not f])
            return _flatten_for_deltas(rest * f.function, list(f.limits) + limits)
    return term, limits


def _delta_terms(body, variables):
    """The terms of body, expanded so that its deltas over `variables` are plain factors.

    Where expanding would make more than EXPAND_MAX_TERMS terms, a delta nested in a term that
    vanishes with it (term = F(delta), F(0) = 0) is pulled out unexpanded instead: a delta is 0
    or 1, so F(delta) = delta * F(1). A deep elementwise partial (tanh(sin(e) e + exp(-e^2))
    nested three times) is thousands of operations times one delta pair; expanding it took
    seconds and left tidy an expression 30 times larger."""
    out = []
    for term in sp.Add.make_args(body):
        if distributed_terms(term) > EXPAND_MAX_TERMS:
            for delta in sorted(term.atoms(sp.KroneckerDelta), key=str):
                if delta.free_symbols & variables and delta not in sp.Mul.make_args(term) \
                        and term.xreplace({delta: sp.Integer(0)}) == 0:
                    term = delta * term.xreplace({delta: sp.Integer(1)})
            if all(d in sp.Mul.make_args(term) for d in term.atoms(sp.KroneckerDelta)
                   if d.free_symbols & variables):
                out.append(term)
                continue
        out += sp.Add.make_args(sp.expand_mul(term))
    return out


# Above this many terms a product is not distributed over its sums (here and in fold.tidy): the
# built-in layers never reach it (the most is 17, lstm_cell's gates); deep nestings do at once.
EXPAND_MAX_TERMS = 64


def distributed_terms(expr) -> int:
    """The most terms any subexpression of expr has once products are distributed over sums
    (what expand_mul would make of it), counted without expanding: a product multiplies its
    factors' counts, a sum adds them, a positive integer power raises its base's."""
    memo, worst = {}, [1]

    def count(e):
        if e in memo:
            return memo[e]
        inner = [count(a) for a in e.args]  # every argument, inside functions too
        if isinstance(e, sp.Add):
            n = sum(inner)
        elif isinstance(e, sp.Mul):
            n = 1
            for k in inner:
                n *= k
        elif isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            n = inner[0] ** min(int(e.exp), 64)
        else:
            n = 1
        memo[e] = n
        worst[0] = max(worst[0], n)
        return n

    count(expr)
    return worst[0]


def _resolve_brackets(term, extents):
    """Evaluate deltas and brackets made decidable by a substitution (delta(q, q) -> 1; a zero
    padding's guard [0 <= r <= W - 1] at the gradient's own index r over W -> 1)."""
    term = term.replace(lambda e: isinstance(e, sp.KroneckerDelta) and e.args[0] == e.args[1],
                        lambda e: sp.Integer(1))
    return term.replace(lambda e: isinstance(e, Iverson) and isinstance(e.args[0], (sp.And, sp.Rel)),
                        lambda e: Iverson(_drop_true(e.args[0], extents)))


def _drop_true(cond, extents):
    """cond (a relation or a conjunction of them) without the parts that hold at every value of
    the free indices (each over 0..extent-1)."""
    parts = cond.args if isinstance(cond, sp.And) else (cond,)
    keep = []
    for c in parts:
        if isinstance(c, (sp.GreaterThan, sp.LessThan)):
            big, small = (c.lhs, c.rhs) if isinstance(c, sp.GreaterThan) else (c.rhs, c.lhs)
            rng = _range(big - small, extents)
            if rng and _provably(sp.Ge(rng[0], 0)):
                continue
        keep.append(c)
    return sp.And(*keep)


def canonical_names(expr, avoid=(), pool=("j", "k", "l", "m", "r", "u", "w", "a", "c", "e")):
    """Rename bound indices to short readable names that clash with nothing free and with no
    name in `avoid` (a layer's tensor names: a sum over `k` beside a tensor `k` reads badly)."""
    names = list(pool) + [f"k{i}" for i in range(99)]

    def rename(v, lo, hi, taken):
        name = next(n for n in names if n not in taken)
        return sp.Symbol(name, integer=True), taken | {name}

    return functions.rename_bound(expr, rename, {str(s) for s in expr.free_symbols} | set(avoid))
