"""Second order from the same derivation: JVPs, Hessian-vector products and small Hessians.

Nothing here is written by hand for any layer; everything is the tangent transform of
derive.tangent applied to expressions derive/ already has:

- the JVP: the tangent of every binding of the forward definition, for a tangent of each
  differentiable argument (`<x>_dot`); its graph's outputs are the output tangents (`<y>_dot`).
- the HVP (forward-over-reverse): the first-order backward program (derive.chain) appended to the
  forward as bindings, the upstream gradient `g` held fixed, and the tangent of every equation
  taken again: the tangent `d<x>_dot` of gradient `d<x>` is H v for argument x, where
  H = d²(sum g·y) and v is the tangent of all arguments together.
- the Hessian in index form, for layers with a scalar output and elementwise ones: the HVP with
  every tangent binding inlined is linear in v, so d(H v)[p..] / d v_b[r..] gives Kronecker deltas,
  which deltas.eliminate_deltas removes as in the first-order chain rule; then fold.fold writes it
  through the saved bindings.

Both tangent programs are Derivations with no gradients of their own, so compiled/ prints each as
an ordinary forward kernel (compiled.second_order). Results are cached on disk (derive.cache),
keyed by the layer's definition, the source of derive/ and the SymPy version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sympy as sp

from . import budget, cache, deltas
from .derivation import Derivation, lhs_of
from .fold import fold, instantiate, replace_reads
from .graph import Binding, Graph, Tensor
from .names import Names
from .steps import Step, latex, text
from .tangent import tangent_graph

KINDS = ("definition", "tangent", "program", "hvp", "hessian")  # a SecondOrder's steps, in order
_TARGET_POOL = "r t u w a c e f".split()


class SecondDerivative(sp.Expr):
    """d²f / dA[..] dB[..]: the left side of a Hessian step (printed, never evaluated)."""

    def _sympystr(self, printer):
        f, a, b = self.args
        return "d2%s/(d%s d%s)" % (printer._print(f), printer._print(a), printer._print(b))

    def _latex(self, printer):
        f, a, b = self.args
        return r"\frac{\partial^2 %s}{\partial %s \, \partial %s}" % (printer._print(f), printer._print(a),
                                                                    printer._print(b))


@dataclass
class Hessian:
    """d²(sum g·y)/dA[a_idx] dB[b_idx] = expr (for a scalar output: d²loss, g = 1)."""

    a: str
    b: str
    a_indices: tuple
    b_indices: tuple
    expr: sp.Expr
    lhs: sp.Basic
    where: list = field(default_factory=list)  # [(p[n,k], exp(logits[n,k] - lse[n]))]: abbreviations


@dataclass
class SecondOrder:
    """What `derive.second_order(name)` returns.

    `jvp`: a forward-only Derivation whose arguments are the layer's plus `tangent_inputs[x]`
    (`x_dot`) and whose outputs are the layer's outputs and their tangents `output_tangents[y]`.
    `hvp`: a forward-only Derivation whose arguments are the layer's, the upstream gradients and
    `hvp_inputs[x]`; its outputs `hvp_outputs[x]` (`dx_dot`) are H v for each argument x, then the
    output tangents `hvp_tangents[y]` (the JVP again, which the HVP computes on its way).
    `hessians[(a, b)]`: the Hessian block in index form (scalar-output and elementwise layers)."""

    first: Derivation
    jvp: Derivation
    hvp: Derivation
    tangent_inputs: dict
    output_tangents: dict
    hvp_inputs: dict
    hvp_outputs: dict
    hvp_tangents: dict = field(default_factory=dict)  # every tensor of the HVP graph -> its tangent
    steps: list = field(default_factory=list)
    hessians: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.first.name

    def steps_of(self, kind: str) -> list:
        return [s for s in self.steps if s.kind == kind]

    def as_dict(self) -> dict:
        return {"name": self.name, "doc": self.first.doc,
                "tangent_inputs": self.tangent_inputs, "output_tangents": self.output_tangents,
                "hvp_inputs": self.hvp_inputs, "hvp_outputs": self.hvp_outputs,
                "steps": [s.as_dict() for s in self.steps],
                "hessians": [{"wrt": [h.a, h.b], "a_indices": [str(i) for i in h.a_indices],
                              "b_indices": [str(i) for i in h.b_indices], "text": f"{text(h.lhs)} = {text(h.expr)}",
                              "latex": f"{latex(h.lhs)} = {latex(h.expr)}", "srepr": sp.srepr(h.expr)}
                             for h in self.hessians.values()]}


# --- the backward program as bindings ---------------------------------------------------------

def backward_graph(d: Derivation) -> Graph:
    """d's forward followed by its backward program as bindings; the upstream gradients are inputs.

    A gradient index that a forward index of the same letter but another extent already names
    gets a symbol of its own (as compiled.build does for the backward kernel)."""
    g = d.graph
    bg = Graph(f"{g.name}_backward", g.doc)
    bg.dims_, bg.extents, bg.args = list(g.dims_), dict(g.extents), list(g.args)
    bg.args += [Tensor(d.upstream(o.name), o.tensor.shape, "input") for o in g.outputs]
    bg.bindings = [Binding(b.tensor, b.indices, b.expr, stop_gradient=b.stop_gradient) for b in g.bindings]
    program = list(d.program)
    listed = {n for n, _, _ in program}
    program += [(d.grad_name(a), tuple(d.grad_indices[a]), sp.S.Zero) for a in d.grads
                if d.grad_name(a) not in listed]
    for name, idx, expr in program:
        shape = g.tensor(d.gradient_of(name) or d.adjoint_of(name)).shape
        ren = {}
        for i, s in zip(idx, shape):
            if i in bg.extents and sp.simplify(bg.extents[i] - s) != 0:
                ren[i] = sp.Symbol(f"{i}_", integer=True)
        new_idx = tuple(ren.get(i, i) for i in idx)
        for i, s in zip(new_idx, shape):
            bg.extents[i] = s
        bg.bindings.append(Binding(Tensor(name, tuple(shape), "binding"), new_idx,
                                   sp.sympify(expr).xreplace(ren) if ren else sp.sympify(expr)))
    return bg


def _forward_only(graph: Graph, steps) -> Derivation:
    """A Derivation with no gradients: compiled/ prints its forward (the tangent program)."""
    defs = [Step("definition", b.name, b.lhs, b.expr) for b in graph.bindings]
    return Derivation(graph, {}, defs + list(steps), {}, [], Names.of(graph))


# --- the derivation ------------------------------------------------------------------------------

def derive_second_order(d: Derivation) -> SecondOrder:
    g = d.graph
    wrt = [a.name for a in g.args if a.differentiable]
    jg, jdots, jrows = tangent_graph(g, f"{g.name}_jvp", f"JVP of {g.name}: the tangent of every "
                                     "binding for tangents of its arguments.", wrt)
    tangent_steps = [Step("tangent", n, lhs, rhs) for n, lhs, rhs in jrows]
    bg = backward_graph(d)
    grads = [d.grad_name(a) for a in d.grads]
    hg, hdots, hrows = tangent_graph(bg, f"{g.name}_hvp", f"HVP of {g.name}: the tangent of the "
                                     "derived backward program (forward-over-reverse), upstream held "
                                     "fixed.", wrt, fixed={d.upstream(o.name) for o in g.outputs},
                                     outputs=grads + [o.name for o in g.outputs], keep_outputs=False)
    program = {n for n, _, _ in d.program} | set(grads)
    program_steps = [Step("program", n, lhs_of(n, idx), e) for n, idx, e in d.program]
    hvp_steps = [Step("hvp", n, lhs, rhs) for n, lhs, rhs in hrows if n in program]
    so = SecondOrder(d, _forward_only(jg, tangent_steps), _forward_only(hg, hvp_steps),
                     {a: jdots[a] for a in wrt}, {o.name: jdots[o.name] for o in g.outputs},
                     {a: hdots[a] for a in wrt}, {a: hdots[d.grad_name(a)] for a in d.grads}, hdots)
    so.steps = [s for s in d.steps if s.kind == "definition"] + tangent_steps + program_steps + hvp_steps
    if has_small_hessian(g):
        for a in wrt:
            for b in wrt:
                budget.at(f"{a},{b}", "hessian")
                h = hessian(so, a, b)
                so.hessians[(a, b)] = h
                note = "; ".join(f"{text(n)} = {text(v)}" for n, v in h.where)
                so.steps.append(Step("hessian", f"{a},{b}", h.lhs, h.expr,
                                     note=f"where {note}" if note else ""))
    return so


def has_small_hessian(g: Graph) -> bool:
    """A scalar-output layer, or an elementwise one (every binding and every read at the output's
    own indices, no reduction): the layers whose Hessian is printed in index form."""
    if all(not o.tensor.shape for o in g.outputs):
        return True
    if len(g.outputs) != 1:
        return False
    idx = g.outputs[0].indices
    for b in g.bindings:
        if b.indices != idx or b.expr.atoms(sp.Sum):
            return False
        if any(tuple(ix.indices) != idx for ix in b.expr.atoms(sp.Indexed)):
            return False
    return True


def hessian(so: SecondOrder, a: str, b: str) -> Hessian:
    """The (a, b) block of the Hessian of sum g·y (d²loss for a scalar output, g = 1), in index
    form: d(H v)_a[p..] / d v_b[r..], deltas eliminated, folded onto the saved bindings."""
    d, hg = so.first, so.hvp.graph
    g = d.graph
    hv = hg.binding(so.hvp_outputs[a])
    expr = hv.expr
    inputs = set(so.hvp_inputs.values())
    # the tangent bindings, and the adjoints the backward program keeps (low-rank's g_res)
    tangent_bindings = set(so.hvp_tangents.values()) - inputs
    tangent_bindings |= {n for n, _, _ in d.program if d.gradient_of(n) is None}
    for _ in range(len(hg.bindings) + 1):  # inline every tangent binding: H v in v alone
        budget.check()
        hits = [n for n in tangent_bindings if _reads_name(expr, hg, n)]
        if not hits:
            break
        for n in hits:
            expr = replace_reads(expr, n, lambda idx, n=n: instantiate(hg, n, idx), not hg.tensor(n).shape)
    for other in inputs - {so.hvp_inputs[b]}:
        expr = replace_reads(expr, other, lambda idx: sp.S.Zero)
    ta, tb = g.tensor(a), g.tensor(b)
    a_idx = tuple(hv.indices)
    used = {str(x) for x in g.extents} | {str(x) for x in a_idx} | {t.name for t in hg.tensors()}
    names = [n for n in _TARGET_POOL if n not in used] + [f"r{i}" for i in range(9)]
    b_idx = tuple(sp.Symbol(n, integer=True) for n in names[: len(tb.shape)])
    target = hg.tensor(so.hvp_inputs[b]).ref(b_idx)
    expr = sp.diff(deltas.rename_bound(expr), target)
    extents = dict(zip(a_idx, ta.shape)) | dict(zip(b_idx, tb.shape))
    expr = deltas.eliminate_deltas(expr, extents)
    scalar_out = all(not o.tensor.shape for o in g.outputs)
    if scalar_out:  # d²loss itself: the upstream gradient of a loss is 1
        expr = expr.xreplace({sp.Symbol(d.upstream(o.name), real=True): sp.S.One for o in g.outputs})
    expr = deltas.canonical_names(fold(expr, g), avoid={t.name for t in g.tensors()})
    expr, where = abbreviate(expr, d, hg)
    f = sp.Symbol(g.outputs[0].name) if scalar_out else sp.Symbol(f"(sum {d.upstream(g.outputs[0].name)}*"
                                                                  f"{g.outputs[0].name})")
    return Hessian(a, b, a_idx, b_idx, expr, SecondDerivative(f, ta.ref(a_idx), tb.ref(b_idx)), where)


def abbreviate(expr, d: Derivation, graph: Graph):
    """Name a value the first-order gradient reads (cross_entropy's exp(logits - lse), the
    probabilities) where the Hessian reads it at two index positions (p[n,k] and p[n,t]); an
    exp(-2 lse[n] + ...) that powsimp merged is split back into p[n,k] p[n,t]. Returns
    (expr, [(p[idx], definition)]). Only exp(u) is split (exp(a + b) = exp(a) exp(b)); nothing
    changes unless the value is read at two or more index positions."""
    taken = {t.name for t in graph.tensors()} | {str(x) for x in graph.dims_} | \
        {str(s) for s in expr.free_symbols} | {str(x) for x in graph.extents}
    names = iter(n for n in ("p", "q", "P", "Q", "pv") if n not in taken)
    where = []
    patterns = {e for gr in d.grads.values() for e in sp.sympify(gr).atoms(sp.exp)}
    for pat in sorted(patterns, key=sp.default_sort_key):
        lead = [ix for ix in pat.args[0].atoms(sp.Indexed) if len(set(ix.indices)) == len(ix.indices)
                and all(isinstance(i, sp.Symbol) for i in ix.indices)]
        if not lead:
            continue
        lead = max(lead, key=lambda ix: len(ix.indices))
        name = next(names, None)
        if name is None:
            break
        base = sp.IndexedBase(name, positive=True)
        sub, instances = {}, set()
        for e in expr.atoms(sp.exp):
            rem, factors = sp.expand(e.args[0]), []
            for ix in [ix for ix in rem.atoms(sp.Indexed) if ix.base == lead.base]:
                c = rem.coeff(ix)
                inst = pat.args[0].xreplace(dict(zip(lead.indices, ix.indices)))
                rem = sp.expand(rem - c * inst)
                factors.append((ix.indices, c))
            if factors and rem == 0:
                sub[e] = sp.Mul(*[base[idx] ** c for idx, c in factors])
                instances |= {idx for idx, _ in factors}
        if len(instances) > 1:  # read at two places: p[n,k] and p[n,t]
            expr = sp.factor_terms(sp.expand(expr.xreplace(sub)))
            where.append((base[lead.indices], pat))
    return expr, where


def _reads_name(expr, graph, name):
    t = graph.tensor(name)
    return expr.has(t.symbol) if not t.shape else any(str(ix.base.label) == name
                                                      for ix in expr.atoms(sp.Indexed))


# --- the cache -------------------------------------------------------------------------------------

_memo: dict = {}


def second_order(name_or_derivation) -> SecondOrder:
    """The second-order derivation of a built-in layer (by name) or of any derive.define
    Derivation: derived once per definition, then read from the on-disk cache."""
    from symgrad import derive
    d = derive.resolve(name_or_derivation)
    key = f"{_safe(d.name)}-order2-{definition_key(d.graph)}"
    if key not in _memo:
        _memo[key] = cache.load_or_derive(key, lambda: derive_second_order(d))
    return _memo[key]


def definition_key(graph: Graph) -> str:
    """A hash of everything the forward definition says (the cache adds derive/'s source)."""
    return hashlib.sha256(cache.canonical(graph).encode()).hexdigest()[:16]


def _safe(name):
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
