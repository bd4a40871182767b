"""Folding a derived gradient onto the bindings the forward pass saves, and tidying it.

After the chain rule, a gradient reads intermediate bindings (softmax's e and z). `fold` rewrites
it to read only arguments, saved bindings and upstream gradients: a read of an unsaved binding is
expressed through a saved binding's definition solved for it (e = s*z, after which z cancels) or,
failing that, replaced by its own definition. Verbatim occurrences of a definition are folded back
to the binding's name (exp(S - m)[j <= i] -> e, sum_k x[i,k] -> C*mean[i]).
"""

from __future__ import annotations

import sympy as sp

from . import deltas
from .errors import DeriveError
from .functions import MaxOver
from .graph import Graph, Tensor


def reads(expr, tensor: Tensor):
    """Whether expr reads the tensor."""
    if not tensor.shape:
        return expr.has(tensor.symbol)
    return any(str(ix.base.label) == tensor.name for ix in expr.atoms(sp.Indexed))


def referenced_bindings(expr, graph: Graph) -> set:
    names = {b.name for b in graph.bindings}
    out = {str(ix.base.label) for ix in expr.atoms(sp.Indexed)} & names
    out |= {str(s) for s in expr.free_symbols if isinstance(s, sp.Symbol)} & \
        {b.name for b in graph.bindings if not b.indices}
    return out


def instantiate(graph, name, idx):
    b = graph.binding(name)
    body = deltas.rename_bound(b.expr)
    return body.xreplace(dict(zip(b.indices, idx))) if b.indices else body


def replace_reads(expr, name, fn, scalar=False):
    """Replace every read name[idx] (or the scalar name) by fn(idx)."""
    def is_read(e):
        return (isinstance(e, sp.Indexed) and str(e.base.label) == name) or \
               (scalar and isinstance(e, sp.Symbol) and e.name == name)
    return expr.replace(is_read, lambda e: fn(e.indices if isinstance(e, sp.Indexed) else ()))


def tidy(expr, refold=lambda e: e):
    """The shorter of two clean forms: distributed-then-factored (where cancellations happen,
    e.g. softmax's z) and as-is with constant factors moved out of sums (where expansion would
    only add terms and lose the factored form, e.g. attention's P (g_P - sum_l P g_P)). `refold`
    is applied to both before they are compared (layernorm's sum_k x[i,k] -> C mean[i] only shows
    in the distributed form)."""
    expanded = sp.expand_mul(sp.expand_multinomial(expr))
    expanded = expanded.replace(lambda e: isinstance(e, sp.Sum), _tidy_sum)
    expanded = sp.factor_terms(refold(sp.powsimp(expanded, combine="exp")))
    kept = sp.factor_terms(refold(expr.replace(lambda e: isinstance(e, sp.Sum),
                                               lambda e: deltas.make_sum(e.function, e.limits))))
    return min((kept, expanded), key=sp.count_ops)  # a tie keeps the unexpanded form


def _tidy_sum(s):
    terms = sp.Add.make_args(sp.expand_mul(s.function))
    return sp.Add(*[deltas.make_sum(t, s.limits) for t in terms])


def _solve_for(graph, saved, unsaved_name, expr):
    """Rewrite reads of `unsaved_name` through the definition of saved binding `saved`."""
    reads_ = [ix for ix in saved.expr.atoms(sp.Indexed) if str(ix.base.label) == unsaved_name]
    if len(reads_) != 1 or any(s.has(reads_[0]) for s in saved.expr.atoms(sp.Sum, MaxOver)):
        return None
    (r,) = reads_
    if len(set(r.indices)) != len(r.indices) or not all(isinstance(i, sp.Symbol) for i in r.indices) \
            or not set(saved.indices) <= set(r.indices):
        return None
    unknown = sp.Dummy("u", real=True)
    sols = sp.solve(sp.Eq(saved.lhs, saved.expr.xreplace({r: unknown})), unknown)
    if len(sols) != 1:
        return None
    sol = sols[0]
    return replace_reads(expr, unsaved_name, lambda idx: sol.xreplace(dict(zip(r.indices, idx))))


def fold_definitions(expr, graph: Graph, skip=frozenset()):
    """Replace each verbatim occurrence of a function-valued binding's definition by the binding
    (d exp(u)/du = exp(u) reads e; d tanh(u)/du = 1 - tanh(u)**2 reads 1 - h**2)."""
    for b in reversed(graph.bindings):
        if not b.indices or b.expr.atoms(sp.Sum, MaxOver) or b.name in skip:
            continue
        wild = {i: sp.Wild(f"w_{i}") for i in b.indices}
        if isinstance(b.expr, sp.Function):
            expr = expr.replace(b.expr.xreplace(wild), b.tensor.ref([wild[i] for i in b.indices]))
        elif isinstance(b.expr, sp.Mul):
            expr = _fold_product(expr, b, wild)
    for b in reversed(graph.bindings):
        if b.save:
            expr = _fold_sum_definition(expr, b)
            expr = _fold_power(expr, b)
    return expr


def _fold_power(expr, b):
    """For a binding b = base**e with a fractional e, replace every base'**k with base' equal to
    base up to the names of its indices by b**(k/e) (an RMS norm's r = (sum x^2/C + eps)**(-1/2):
    (sum x^2/C + eps)**(-3/2) -> r**3)."""
    base, e = b.expr.as_base_exp()
    if not (e.is_Rational and not e.is_integer) or not b.indices:
        return expr
    wild = {i: sp.Wild(f"w_{i}") for i in b.indices}
    pattern = deltas.canonical_names(base.xreplace(wild))

    def match(p):
        if not isinstance(p, sp.Pow):
            return None
        m = deltas.canonical_names(p.base).match(pattern)
        if m is None or any(w not in m for w in wild.values()):
            return None
        return b.tensor.ref([m[wild[i]] for i in b.indices]) ** (p.exp / e)

    return expr.replace(lambda p: match(p) is not None, match)


def _fold_product(expr, b, wild):
    """Replace the factors of a product-valued definition found inside any product of expr
    (attention's e = exp(S - m) [j <= i] inside g_S = g_e exp(S - m) [j <= i])."""
    factors = sp.Mul.make_args(b.expr.xreplace(wild))
    lead = max(factors, key=lambda f: len(f.free_symbols))

    def fold_mul(m):
        args = list(sp.Mul.make_args(m))
        for cand in args:
            binding = cand.match(lead)
            if not binding or not all(w in binding for w in wild.values()):
                continue
            need = [f.xreplace(binding) for f in factors]
            rest = list(args)
            try:
                for f in need:
                    rest.remove(f)
            except ValueError:
                continue
            return sp.Mul(*rest) * b.tensor.ref([binding[wild[i]] for i in b.indices])
        return m

    return expr.replace(lambda e: isinstance(e, sp.Mul), fold_mul)


def _fold_sum_definition(expr, b):
    """For a binding b = c * Sum_k f(k), replace every Sum_k' f(k') in expr by b / c
    (layernorm: sum_k x[i,k] -> C * mean[i])."""
    c, s = b.expr.as_independent(sp.Sum, as_Add=False)
    if not isinstance(s, sp.Sum) or len(s.limits) != 1 or c == 0:
        return expr
    (v, lo, hi), = s.limits

    def match(cand):
        if not isinstance(cand, sp.Sum) or len(cand.limits) != 1:
            return None
        (v2, lo2, hi2), = cand.limits
        wild = {i: sp.Wild(f"w_{i}", exclude=[v2]) for i in b.indices}
        m = cand.function.match(s.function.xreplace({v: v2}).xreplace(wild))
        if m is None or any(w not in m for w in wild.values()):
            return None
        if sp.simplify(lo.xreplace(wild).xreplace(m) - lo2) != 0 or \
                sp.simplify(hi.xreplace(wild).xreplace(m) - hi2) != 0:
            return None
        return b.tensor.ref([m[wild[i]] for i in b.indices]) / c

    return expr.replace(lambda e: match(e) is not None, match)


def denominators(expr) -> set:
    """Non-constant bases raised to negative powers."""
    return {p.base for p in expr.atoms(sp.Pow) if p.exp.is_negative and not p.base.is_number}


def fold(expr, graph: Graph):
    """Express a gradient through saved bindings; inline the definitions of the others.

    A read of an unsaved binding U is rewritten through a saved binding's definition solved for U
    when that strictly shrinks the set of unsaved bindings read (softmax: e = s*z, after which z
    cancels); otherwise the latest unsaved binding is replaced by its definition. Both moves make
    progress, so this terminates with only arguments, saved bindings and upstream gradients.
    """
    saved = [b for b in graph.bindings if b.save]
    inlined = set()  # bindings replaced by their definitions: never folded back

    def clean(e):
        return tidy(fold_definitions(e, graph, inlined), lambda x: fold_definitions(x, graph, inlined))

    expr = clean(expr)
    for _ in range(4 * len(graph.bindings) + 4):
        unsaved = referenced_bindings(expr, graph) - {b.name for b in saved}
        if not unsaved:
            return clean(expr)
        order = [b.name for b in graph.bindings]
        best = None  # (number of unsaved bindings left, expression)
        for name in unsaved:
            for sb in saved:
                if not reads(sb.expr, graph.tensor(name)):
                    continue
                cand = _solve_for(graph, sb, name, expr)
                if cand is None:
                    continue
                cand = clean(cand)
                after = referenced_bindings(cand, graph) - {b.name for b in saved}
                if not denominators(sp.expand_mul(cand)) <= denominators(sp.expand_mul(expr)):
                    continue  # e.g. GELU's t = 2y/x - 1: a new division, NaN at x = 0
                if after < unsaved and (best is None or len(after) < best[0]):
                    best = (len(after), cand)
        if best is not None:
            expr = clean(best[1])
            continue
        name = max(unsaved, key=order.index)
        inlined.add(name)
        scalar = not graph.tensor(name).shape
        expr = clean(replace_reads(expr, name, lambda idx: instantiate(graph, name, idx), scalar))
    raise DeriveError(graph.name, "folding onto saved bindings did not terminate")
