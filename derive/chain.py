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

from . import budget, deltas
from .errors import DeriveError
from .fold import fold, fold_definitions, reads
from .functions import NoDerivative
from .graph import Graph, Tensor
from .names import Names
from .steps import Step

_TARGET_POOL = "p q r t u v w".split()


def upstream_name(graph: Graph, name: str) -> str:
    """The upstream gradient a caller passes for output `name`: `g`, or `g_<name>` for several
    (mangled where the layer has a name like it: see derive.names)."""
    return Names.of(graph).upstream[name]


def adjoint_name(graph: Graph, name: str) -> str:
    """The total adjoint of a binding: the upstream gradient itself for an output that nothing
    else reads, otherwise `g_<name>` (`gtotal_<name>` where that is an upstream name)."""
    return Names.of(graph).adjoint[name]


def grad_name(graph: Graph, name: str) -> str:
    """The gradient of argument `name`: `d<name>`, mangled where the layer has that name."""
    return Names.of(graph).grad[name]


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
        self.folded = {}  # binding name -> its adjoint through the saved bindings (see through_unsaved)
        self.raw = {}  # argument name -> its adjoint as the chain rule gives it (reads consumers' g_*)
        self.names = Names.of(graph)  # upstream, gradient and adjoint names (derive.names)

    def adj_ref(self, name, idx, base=None):
        t = self.g.tensor(name)
        base = base or self.names.adjoint[name]
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
        # b's own value at its own indices first (d exp(u)/du = exp(u) is b[i, j]): a binding
        # that ignores one of its indices (h[i,j] = exp(w[j])) then still reads as h[i,j] under
        # the sum over i, where folding exp(w[q]) later could not tell which h[?, q]
        if body.args and not isinstance(body, sp.Indexed):
            partial = partial.xreplace({body: b.tensor.ref([renamed[i] for i in b.indices])})
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
        shown = sp.diff(b.expr, target)
        if b.expr.args and not isinstance(b.expr, sp.Indexed):
            shown = shown.xreplace({b.expr: b.lhs})
        shown = fold_definitions(deltas.piecewise_to_iverson(shown), self.g)
        return Step("partial", b.name, sp.Derivative(b.lhs, target), self.named(shown))

    def named(self, expr):
        """expr with readable bound-index names that no tensor of the layer has."""
        return deltas.canonical_names(expr, avoid={t.name for t in self.g.tensors()})

    def extents(self, name):
        """Extents of the target indices of tensor `name`."""
        return dict(zip(self.tidx[name], self.g.tensor(name).shape))

    # --- the whole graph ------------------------------------------------------------------
    def run(self):
        g = self.g
        contrib = defaultdict(list)
        for out in g.outputs:
            contrib[out.name].append(self.adj_ref(out.name, self.tidx[out.name],
                                                  self.names.upstream[out.name]))
        for b in reversed(g.bindings):
            if b.name not in contrib or b.stop_gradient:
                continue
            budget.at(b.name, "chain rule")
            self.adjoint[b.name] = sp.Add(*contrib[b.name])
            if self.names.adjoint[b.name] != self.names.upstream.get(b.name) or len(contrib[b.name]) > 1:
                self.steps.append(Step("chain", b.name, self.adj_ref(b.name, self.tidx[b.name]),
                                       self.named(self.adjoint[b.name])))
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
            budget.at(t.name, "gradient")
            raw = sp.Add(*contrib[t.name])
            self.steps.append(Step("chain", t.name, self.adj_ref(t.name, self.tidx[t.name]),
                                   self.named(raw)))
            inlined = self.inline(raw, t.name)
            self.steps.append(Step("inlined", t.name, self.grad_lhs(t), self.named(inlined)))
            grads[t.name] = self.named(fold(inlined, g))
            self.steps.append(Step("simplified", t.name, self.grad_lhs(t), grads[t.name]))
            self.raw[t.name] = raw
        return grads, self.steps

    # --- the backward program the kernels compute ---------------------------------------------
    def uses(self):
        """binding -> the arguments whose gradient reads its adjoint (directly or through others)."""
        names = {self.names.adjoint[b]: b for b in self.adjoint}

        def refs(expr):
            out = {names[_label(a)] for a in expr.atoms(sp.Indexed) if _label(a) in names}
            return out | {names[a.name] for a in expr.free_symbols
                          if isinstance(a, sp.Symbol) and a.name in names}

        out = defaultdict(set)
        for arg, raw in self.raw.items():
            todo, seen = list(refs(raw)), set()
            while todo:
                b = todo.pop()
                if b in seen:
                    continue
                seen.add(b)
                out[b].add(arg)
                todo += refs(self.adjoint[b])
        return out

    def program(self, grads):
        """The backward as a kernel computes it: the adjoint of a binding is materialized where
        the gradients of two or more arguments read it and no binding it reads is read by exactly
        the same ones (so the one nearest the arguments: attention's g_S, an LSTM's g_z, the
        multi-head q, k, v); every other adjoint is inlined. Returns [(name, indices, expr)],
        intermediates first; each gradient is named d<argument> (see derive.names)."""
        g, uses = self.g, self.uses()
        upstream = set(self.names.upstream.values())
        keep = []
        for b in g.bindings:
            if len(uses[b.name]) < 2 or self.names.adjoint[b.name] in upstream:
                continue
            below = [c for c in uses if c != b.name and reads(b.expr, g.tensor(c))]
            if all(uses[c] != uses[b.name] for c in below):
                keep.append(b.name)
        inline_only = set(self.adjoint) - set(keep)
        eqs = []
        for name in reversed(keep):  # readers (later bindings) first
            budget.at(name, "backward program")
            expr = fold(self.inline(self.adjoint[name], name, only=inline_only), g)
            eqs.append((self.names.adjoint[name], self.tidx[name], self.named(expr)))
        for arg, raw in self.raw.items():
            if any(arg in uses[k] for k in keep):
                budget.at(arg, "backward program")
                expr = self.named(fold(self.inline(raw, arg, only=inline_only), g))
            else:
                expr = grads[arg]  # reads no kept adjoint: the same as the inlined gradient
            eqs.append((self.names.grad[arg], self.tidx[arg], expr))
        return eqs

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
        self.folded[b.name] = expr
        self.steps.append(Step("chain", b.name, self.adj_ref(b.name, self.tidx[b.name]),
                               self.named(expr), note="through the saved bindings"))

    def grad_lhs(self, t: Tensor):
        idx = self.tidx[t.name]
        name = self.names.grad[t.name]
        return sp.Symbol(name, real=True) if not t.shape else sp.IndexedBase(name, real=True)[idx]

    def inline(self, expr, target, only=None):
        """Replace every intermediate adjoint g_B[..] (of B in `only`, if given) by its own
        (inlined) expression."""
        names = {self.names.adjoint[b]: b for b in self.adjoint
                 if self.names.adjoint[b] != self.names.upstream.get(b) and (only is None or b in only)}
        for _ in range(len(self.g.bindings) + 1):
            budget.check()
            hits = [a for a in expr.atoms(sp.Indexed) if _label(a) in names]
            hits += [a for a in expr.free_symbols if isinstance(a, sp.Symbol) and a.name in names
                     and not self.g.tensor(names[a.name]).shape]
            if not hits:
                return expr
            sub = {}
            for a in hits:
                name = names[_label(a)]
                # a folded adjoint keeps its factored form: attention's P * (g_P - sum_l P g_P)
                # cancels where the expanded form would subtract two large products
                body = deltas.rename_bound(self.folded.get(name, self.adjoint[name]))
                if isinstance(a, sp.Indexed):
                    body = body.xreplace(dict(zip(self.tidx[name], a.indices)))
                sub[a] = body
            expr = deltas.eliminate_deltas(expr.xreplace(sub), self.extents(target))
        raise DeriveError(self.g.name, "adjoint inlining did not terminate")


def _label(a):
    return str(a.base.label) if isinstance(a, sp.Indexed) else str(a)
