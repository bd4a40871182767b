"""Folding a derived gradient onto the bindings the forward pass saves, and tidying it.

After the chain rule, a gradient reads intermediate bindings (softmax's e and z). `fold` rewrites
it to read only arguments, saved bindings and upstream gradients: a read of an unsaved binding is
expressed through a saved binding's definition solved for it (e = s*z, after which z cancels) or,
failing that, replaced by its own definition. Verbatim occurrences of a definition are folded back
to the binding's name (exp(S - m)[j <= i] -> e, sum_k x[i,k] -> C*mean[i]).
"""

from __future__ import annotations

import functools

import sympy as sp

from . import budget, deltas
from .errors import DeriveError
from .functions import REDUCTIONS
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
    in the distributed form).

    The distributed form is skipped where it would have more than EXPAND_MAX_TERMS terms: a deep
    elementwise nesting distributes into thousands of terms that factor back to the kept form
    (tanh(sin(e) e + exp(-e^2)) nested 3 deep: 47,561 nodes from 1,685, 8 s a call)."""
    budget.check()
    kept = sp.factor_terms(refold(expr.replace(lambda e: isinstance(e, sp.Sum),
                                               lambda e: deltas.make_sum(e.function, e.limits))))
    if deltas.distributed_terms(expr) > EXPAND_MAX_TERMS:
        return kept
    budget.check()
    expanded = sp.expand_mul(sp.expand_multinomial(expr))
    expanded = expanded.replace(lambda e: isinstance(e, sp.Sum), _tidy_sum)
    expanded = sp.factor_terms(refold(sp.powsimp(expanded, combine="exp")))
    return min((kept, expanded), key=sp.count_ops)  # a tie keeps the unexpanded form


# Measured over the built-in layers: the distributed form won only where it had at most 5 terms
# (sigmoid, layernorm, cross_entropy); the largest distributed form tried had 17 (lstm_cell).
EXPAND_MAX_TERMS = deltas.EXPAND_MAX_TERMS


def _tidy_sum(s):
    terms = sp.Add.make_args(sp.expand_mul(s.function))
    return sp.Add(*[deltas.make_sum(t, s.limits) for t in terms])


def _solve_for(graph, saved, unsaved_name, expr):
    """Rewrite reads of `unsaved_name` through the definition of saved binding `saved`."""
    reads_ = [ix for ix in saved.expr.atoms(sp.Indexed) if str(ix.base.label) == unsaved_name]
    if len(reads_) != 1 or any(s.has(reads_[0]) for s in saved.expr.atoms(*REDUCTIONS)):
        return None
    (r,) = reads_
    if len(set(r.indices)) != len(r.indices) or not all(isinstance(i, sp.Symbol) for i in r.indices) \
            or not set(saved.indices) <= set(r.indices):
        return None
    sols = _solutions(saved.lhs, saved.expr.xreplace({r: _UNKNOWN}))
    if len(sols) != 1:
        return None
    sol = sols[0]
    return replace_reads(expr, unsaved_name, lambda idx: sol.xreplace(dict(zip(r.indices, idx))))


def _shape(e, memo):
    """A hash of e's tree with index expressions and argument order left out: a cheap filter
    before the substitution that decides (two expressions equal up to indices have one shape)."""
    if e not in memo:
        if isinstance(e, sp.Indexed):
            memo[e] = hash(("read", e.base.label))
        elif isinstance(e, sp.Symbol) and e.is_integer:
            memo[e] = hash("index")
        elif not e.args:
            memo[e] = hash(e)
        else:
            memo[e] = hash((e.func, tuple(sorted(_shape(a, memo) for a in e.args))))
    return memo[e]


def instance(b, pattern, cand, memo=None):
    """The indices idx at which `pattern` (b's definition or a factor of it) is `cand`, or None.

    The indices are read off cand's tensor reads at the positions where the pattern reads b's
    own indices, then checked by substituting them (one xreplace and a comparison: matching with
    Wilds tried every subexpression and took minutes on deep nestings). None also where cand does
    not determine every index: h[i,j] = exp(w[j]) says nothing about i, and folding exp(w[q])
    into h[?, q] would leave a dangling index. `memo` (a dict kept over one pass) enables the
    shape filter."""
    if cand.func is not pattern.func or (memo is not None and _shape(cand, memo) != _shape(pattern, memo)):
        return None
    reads_ = {}
    for ix in cand.atoms(sp.Indexed):
        reads_.setdefault(ix.base.label, []).append(ix)
    for r in pattern.atoms(sp.Indexed):
        for c in reads_.get(r.base.label, ()):
            m = {}
            for pi, ci in zip(r.indices, c.indices):
                if pi in b.indices and m.setdefault(pi, ci) != ci:
                    break
            else:
                if set(m) == set(b.indices) and pattern.xreplace(m) == cand:
                    return tuple(m[i] for i in b.indices)
    return None


_UNKNOWN = sp.Dummy("u", real=True)


@functools.lru_cache(maxsize=1024)
def _solutions(lhs, rhs) -> tuple:
    """The solutions u of lhs = rhs(u), or () where SymPy has no closed form.

    Solved only where that can succeed quickly: u read once (s = e/z, g = (1 + t)/2: an inverse
    chain) or rhs a rational function of u. tanh(u)/(u^2 + 1) = s went through Lambert-W
    attempts for seconds and found nothing; each fold asked again (now cached)."""
    if rhs.count(_UNKNOWN) > 1 and not rhs.is_rational_function(_UNKNOWN):
        return ()
    try:
        sols = sp.solve(sp.Eq(lhs, rhs), _UNKNOWN)
    except (NotImplementedError, ValueError):  # s = t + sin(t): no closed form; or SymPy fails
        return ()  # inside (a Max of arguments it cannot compare: fuzzer seed 154640202): inline
    # only a solution that holds for every value: solve gives u = h for h = Max(u, 0), true only
    # where u > 0 (that fold turned a ReLU's Heaviside(u) into Heaviside(h), 1/2 where u < 0:
    # a wrong gradient, found by the fuzzer, seed 152452960); sqrt(u) = s gives u = s**2, true
    # only for s >= 0. Such a binding is inlined instead.
    return tuple(u for u in sols if sp.simplify(rhs.xreplace({_UNKNOWN: u}) - lhs) == 0)


def fold_definitions(expr, graph: Graph, skip=frozenset()):
    """Replace each verbatim occurrence of a function-valued binding's definition by the binding
    (d exp(u)/du = exp(u) reads e; d tanh(u)/du = 1 - tanh(u)**2 reads 1 - h**2)."""
    for b in reversed(graph.bindings):
        if not b.indices or b.expr.atoms(*REDUCTIONS) or b.name in skip:
            continue
        if isinstance(b.expr, sp.Function):
            expr = _fold_function(expr, b)
        elif isinstance(b.expr, sp.Mul):
            expr = _fold_product(expr, b)
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


def _fold_function(expr, b):
    """Replace every occurrence of b's function-valued definition, at any indices, by b."""
    found, memo = {}, {}

    def hit(e):
        found[e] = instance(b, b.expr, e, memo)
        return found[e] is not None

    return expr.replace(hit, lambda e: b.tensor.ref(found[e]))


def _fold_product(expr, b):
    """Replace the factors of a product-valued definition found inside any product of expr
    (attention's e = exp(S - m) [j <= i] inside g_S = g_e exp(S - m) [j <= i])."""
    factors = sp.Mul.make_args(b.expr)
    lead = max(factors, key=lambda f: len(f.free_symbols))
    memo = {}

    def fold_mul(m):
        args = list(sp.Mul.make_args(m))
        for cand in args:
            idx = instance(b, lead, cand, memo)
            if idx is None:
                continue
            at = dict(zip(b.indices, idx))
            rest = list(args)
            try:
                for f in factors:
                    rest.remove(f.xreplace(at))
            except ValueError:
                continue
            return sp.Mul(*rest) * b.tensor.ref(idx)
        return m

    return expr.replace(lambda e: isinstance(e, sp.Mul), fold_mul)


def _fold_sum_definition(expr, b):
    """For a binding b = c * Sum_k f(k), replace every Sum_k' f(k') in expr by b / c
    (layernorm: sum_k x[i,k] -> C * mean[i])."""
    c, s = b.expr.as_independent(sp.Sum, as_Add=False)
    if not isinstance(s, sp.Sum) or len(s.limits) != 1 or c == 0:
        return expr
    (v, lo, hi), = s.limits
    memo, found = {}, {}

    def match(cand):
        if not isinstance(cand, sp.Sum) or len(cand.limits) != 1 or \
                _shape(cand.function, memo) != _shape(s.function, memo):  # the cheap test first
            return None
        (v2, lo2, hi2), = cand.limits
        wild = {i: sp.Wild(f"w_{i}", exclude=[v2]) for i in b.indices}
        m = cand.function.match(s.function.xreplace({v: v2}).xreplace(wild))
        if m is None or any(w not in m for w in wild.values()):
            return None
        if not _equal(lo.xreplace(wild).xreplace(m), lo2) or not _equal(hi.xreplace(wild).xreplace(m), hi2):
            return None
        return b.tensor.ref([m[wild[i]] for i in b.indices]) / c

    def hit(e):
        found[e] = match(e)
        return found[e] is not None

    return expr.replace(hit, lambda e: found[e])


def _equal(a, b) -> bool:
    """a == b as expressions of the dims (simplify only where expanding does not decide)."""
    d = sp.expand(a - b)
    return d == 0 or sp.simplify(d) == 0


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
    done = None  # the latest form that reads no unsaved binding
    for _ in range(4 * len(graph.bindings) + 4):
        budget.check()
        unsaved = referenced_bindings(expr, graph) - {b.name for b in saved}
        if not unsaved:
            # one more pass can fold a definition that only the last tidy made verbatim
            # (cos(x)/(x^2+1) of an unsaved t0): go on then, through the saved bindings
            done, expr = expr, clean(expr)
            if not referenced_bindings(expr, graph) - {b.name for b in saved}:
                return expr
            continue
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
    if done is not None:
        return done
    raise DeriveError(graph.name, "folding onto saved bindings did not terminate")
