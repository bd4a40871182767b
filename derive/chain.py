"""The chain rule over a layer's bindings: forward definition in, vector-Jacobian products out.

For every binding B (last first) and every tensor T that B reads, SymPy differentiates B's
definition by T at fresh indices; the contribution to T's adjoint is

    g_T[t] += Sum_{B's indices b} g_B[b] * dB[b]/dT[t]

after which `deltas.eliminate_deltas` removes the Kronecker deltas. The adjoints are then inlined
into one expression per layer argument and folded onto the bindings the forward pass saves
(softmax's `s`, layernorm's `mean` and `rstd`), so results read like a textbook and kernels reuse
saved values. Every step is recorded as a `steps.Step`.
"""

from __future__ import annotations

from collections import defaultdict

import sympy as sp

from . import deltas
from .errors import DeriveError
from .functions import MaxOver, NoDerivative
from .graph import Graph, Tensor
from .steps import Step

_TARGET_POOL = "p q r t u v w".split()


def upstream_name(graph: Graph, name: str) -> str:
    """The upstream gradient a caller passes for output `name`: `g`, or `g_<name>` for several."""
    return "g" if len(graph.outputs) == 1 else f"g_{name}"


def adjoint_name(graph: Graph, name: str) -> str:
    """The total adjoint of a binding: the upstream gradient itself for an output that nothing
    else reads, otherwise `g_<name>` (`gtotal_<name>` where that is an upstream name)."""
    outputs = {o.name for o in graph.outputs}
    consumed = any(reads(b.expr, graph.tensor(name)) for b in graph.bindings if b.name != name)
    if name in outputs and not consumed:
        return upstream_name(graph, name)
    n = f"g_{name}"
    return f"gtotal_{name}" if n in {upstream_name(graph, o) for o in outputs} else n


def grad_name(name: str) -> str:
    return f"d{name}"


def reads(expr, tensor: Tensor):
    """Whether expr reads the tensor."""
    if not tensor.shape:
        return expr.has(tensor.symbol)
    return any(str(ix.base.label) == tensor.name for ix in expr.atoms(sp.Indexed))


def _target_indices(graph: Graph, t: Tensor):
    """Readable indices for T's gradient: those of its first plain read, else p, q, r, ..."""
    for free_only in (True, False):
        for b in graph.bindings:
            for ix in sorted(b.expr.atoms(sp.Indexed), key=str):
                if str(ix.base.label) == t.name and all(i in graph.extents for i in ix.indices) \
                        and len(set(ix.indices)) == len(ix.indices) \
                        and (not free_only or set(ix.indices) <= set(b.indices)):
                    return tuple(ix.indices)
    if t.role == "binding":
        return graph.binding(t.name).indices
    used = {str(s) for s in graph.extents} | {a.name for a in graph.tensors()}
    pool = [n for n in _TARGET_POOL if n not in used]
    return tuple(sp.Symbol(n, integer=True) for n in pool[: len(t.shape)])


def _ensure_derivable(graph, where, expr):
    for d in expr.atoms(sp.Derivative, sp.Subs):
        raise DeriveError(graph.name, f"no derivative is defined for a term in {where}: {d}")


class ChainRule:
    """Runs the chain rule for one graph; `run()` returns (grads, steps)."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.steps: list[Step] = []
        self.tidx = {t.name: _target_indices(graph, t) for t in graph.tensors()}
        self.adjoint = {}  # tensor name -> expression in its target indices, reading consumers' g_*

    def adj_ref(self, name, idx, base=None):
        t = self.g.tensor(name)
        base = base or adjoint_name(self.g, name)
        return sp.Symbol(base, real=True) if not t.shape else sp.IndexedBase(base, real=True)[tuple(idx)]

    # --- one edge of the chain rule -------------------------------------------------------
    def contribution(self, b, t: Tensor):
        at = self.tidx[t.name]
        target = t.ref(at)
        renamed = {i: deltas.fresh_index(str(i)) for i in b.indices}
        body = deltas.rename_bound(b.expr).xreplace(renamed)
        try:
            partial = sp.diff(body, target)
        except NoDerivative as e:
            raise DeriveError(self.g.name, f"{e} (binding '{b.name}' = {b.expr})") from None
        _ensure_derivable(self.g, f"binding '{b.name}'", partial)
        partial = fold_definitions(deltas.piecewise_to_iverson(partial), self.g)
        self.steps.append(self.partial_step(b, t))
        term = self.adj_ref(b.name, [renamed[i] for i in b.indices]) * partial
        for i in reversed(b.indices):
            term = sp.Sum(term, (renamed[i], 0, self.g.extents[i] - 1))
        return deltas.eliminate_deltas(term, self.extents(t.name))

    def partial_step(self, b, t: Tensor) -> Step:
        """dB[b]/dT[p,q,..] as printed: target indices distinct from the binding's own."""
        used = {str(x) for x in self.g.extents} | {str(x) for x in self.tidx[t.name]} | \
            {a.name for a in self.g.tensors()}
        names = [n for n in _TARGET_POOL if n not in used] + [f"p{i}" for i in range(9)]
        at = tuple(sp.Symbol(n, integer=True) for n in names[: len(t.shape)])
        target = t.ref(at)
        shown = fold_definitions(deltas.piecewise_to_iverson(sp.diff(b.expr, target)), self.g)
        return Step("partial", b.name, sp.Derivative(b.lhs, target), deltas.canonical_names(shown))

    def extents(self, name):
        """Extents of the target indices of tensor `name`."""
        return dict(zip(self.tidx[name], self.g.tensor(name).shape))

    # --- the whole graph ------------------------------------------------------------------
    def run(self):
        g = self.g
        contrib = defaultdict(list)
        for out in g.outputs:
            contrib[out.name].append(self.adj_ref(out.name, self.tidx[out.name],
                                                  upstream_name(g, out.name)))
        for b in reversed(g.bindings):
            if b.name not in contrib or b.stop_gradient:
                continue
            self.adjoint[b.name] = sp.Add(*contrib[b.name])
            if adjoint_name(g, b.name) != upstream_name(g, b.name) or len(contrib[b.name]) > 1:
                self.steps.append(Step("chain", b.name, self.adj_ref(b.name, self.tidx[b.name]),
                                       deltas.canonical_names(self.adjoint[b.name])))
                self.through_unsaved(b)
            for t in g.tensors():
                if t.name == b.name or not reads(b.expr, t):
                    continue
                if t.role == "binding" and g.binding(t.name).stop_gradient:
                    continue
                if t.role == "binding" or t.differentiable:
                    contrib[t.name].append(self.contribution(b, t))
        grads = {}
        for t in g.args:
            if not t.differentiable:
                continue
            if t.name not in contrib:
                grads[t.name] = sp.Integer(0)
                continue
            raw = sp.Add(*contrib[t.name])
            self.steps.append(Step("chain", t.name, self.adj_ref(t.name, self.tidx[t.name]),
                                   deltas.canonical_names(raw)))
            inlined = self.inline(raw, t.name)
            self.steps.append(Step("inlined", t.name, self.grad_lhs(t), deltas.canonical_names(inlined)))
            grads[t.name] = deltas.canonical_names(fold(inlined, g))
            self.steps.append(Step("simplified", t.name, self.grad_lhs(t), grads[t.name]))
        return grads, self.steps

    def through_unsaved(self, b):
        """Where every reader of binding b is an unsaved intermediate, also record b's adjoint with
        those intermediates inlined and folded: attention's g_S reads as the softmax VJP
        P * (g_P - sum_l g_P P) instead of through exponentials and their sum."""
        readers = [c for c in self.g.bindings if c.name != b.name and reads(c.expr, b.tensor)
                   and not c.stop_gradient]
        if not readers or any(c.save for c in readers):
            return
        unsaved = {c.name for c in self.g.bindings if not c.save}
        expr = fold(self.inline(self.adjoint[b.name], b.name, only=unsaved), self.g)
        self.steps.append(Step("chain", b.name, self.adj_ref(b.name, self.tidx[b.name]),
                               deltas.canonical_names(expr), note="through the saved bindings"))

    def grad_lhs(self, t: Tensor):
        idx = self.tidx[t.name]
        return sp.Symbol(grad_name(t.name), real=True) if not t.shape \
            else sp.IndexedBase(grad_name(t.name), real=True)[idx]

    def inline(self, expr, target, only=None):
        """Replace every intermediate adjoint g_B[..] (of B in `only`, if given) by its own
        (inlined) expression."""
        names = {adjoint_name(self.g, b): b for b in self.adjoint
                 if (adjoint_name(self.g, b) != upstream_name(self.g, b) or
                     b not in {o.name for o in self.g.outputs}) and (only is None or b in only)}
        for _ in range(len(self.g.bindings) + 1):
            hits = [a for a in expr.atoms(sp.Indexed) if _label(a) in names]
            hits += [a for a in expr.free_symbols if isinstance(a, sp.Symbol) and a.name in names
                     and not self.g.tensor(names[a.name]).shape]
            if not hits:
                return expr
            sub = {}
            for a in hits:
                name = names[_label(a)]
                body = deltas.rename_bound(self.adjoint[name])
                if isinstance(a, sp.Indexed):
                    body = body.xreplace(dict(zip(self.tidx[name], a.indices)))
                sub[a] = body
            expr = deltas.eliminate_deltas(expr.xreplace(sub), self.extents(target))
        raise DeriveError(self.g.name, "adjoint inlining did not terminate")


def _label(a):
    return str(a.base.label) if isinstance(a, sp.Indexed) else str(a)


# --- folding onto saved bindings --------------------------------------------------------------

def referenced_bindings(expr, graph: Graph) -> set:
    names = {b.name for b in graph.bindings}
    out = {str(ix.base.label) for ix in expr.atoms(sp.Indexed)} & names
    out |= {str(s) for s in expr.free_symbols if isinstance(s, sp.Symbol)} & \
        {b.name for b in graph.bindings if not b.indices}
    return out


def _instantiate(graph, name, idx):
    b = graph.binding(name)
    body = deltas.rename_bound(b.expr)
    return body.xreplace(dict(zip(b.indices, idx))) if b.indices else body


def _replace_reads(expr, name, fn, scalar=False):
    """Replace every read name[idx] (or the scalar name) by fn(idx)."""
    def is_read(e):
        return (isinstance(e, sp.Indexed) and str(e.base.label) == name) or \
               (scalar and isinstance(e, sp.Symbol) and e.name == name)
    return expr.replace(is_read, lambda e: fn(e.indices if isinstance(e, sp.Indexed) else ()))


def tidy(expr):
    """The shorter of two clean forms: distributed-then-factored (where cancellations happen,
    e.g. softmax's z) and as-is with only sums tidied (where expansion would only add terms, e.g.
    GELU's chain of products)."""
    expanded = sp.expand_mul(expr)
    expanded = expanded.replace(lambda e: isinstance(e, sp.Sum), _tidy_sum)
    expanded = sp.factor_terms(sp.powsimp(expanded, combine="exp"))
    kept = sp.factor_terms(expr.replace(lambda e: isinstance(e, sp.Sum), _tidy_sum))
    return min((expanded, kept), key=sp.count_ops)


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
    return _replace_reads(expr, unsaved_name, lambda idx: sol.xreplace(dict(zip(r.indices, idx))))


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
    return expr


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
    expr = tidy(fold_definitions(expr, graph))
    for _ in range(4 * len(graph.bindings) + 4):
        unsaved = referenced_bindings(expr, graph) - {b.name for b in saved}
        if not unsaved:
            return tidy(fold_definitions(expr, graph, inlined))
        order = [b.name for b in graph.bindings]
        best = None  # (number of unsaved bindings left, expression)
        for name in unsaved:
            for sb in saved:
                if not reads(sb.expr, graph.tensor(name)):
                    continue
                cand = _solve_for(graph, sb, name, expr)
                if cand is None:
                    continue
                cand = tidy(cand)
                after = referenced_bindings(cand, graph) - {b.name for b in saved}
                if not denominators(cand) <= denominators(expr):
                    continue  # e.g. GELU's t = 2y/x - 1: a new division, NaN at x = 0
                if after < unsaved and (best is None or len(after) < best[0]):
                    best = (len(after), cand)
        if best is not None:
            expr = tidy(fold_definitions(best[1], graph, inlined))
            continue
        name = max(unsaved, key=order.index)
        inlined.add(name)
        scalar = not graph.tensor(name).shape
        expr = tidy(fold_definitions(
            _replace_reads(expr, name, lambda idx: _instantiate(graph, name, idx), scalar), graph, inlined))
    raise DeriveError(graph.name, "folding onto saved bindings did not terminate")
