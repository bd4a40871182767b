"""A Derivation: a layer's forward graph with every gradient SymPy derived for it, and the steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import chain
from .graph import Graph, Tensor
from .steps import Step


@dataclass
class Derivation:
    """What `derive.layer(name)` returns.

    `grads` maps each differentiable argument to its vector-Jacobian product: an index expression
    (free indices `grad_indices[name]`) reading the layer's arguments, its saved bindings and the
    upstream gradients (`g`, or `g_<output>` for several outputs).

    `program` is the same backward as the kernels compute it: adjoints that several gradients
    read (attention's g_S, an LSTM's g_z) computed once, as equations before the gradients
    (`d<argument>`) that read them.
    """

    graph: Graph
    grads: dict
    steps: list = field(default_factory=list)
    grad_indices: dict = field(default_factory=dict)
    program: list = field(default_factory=list)  # [(name, indices, expr)]: see chain.ChainRule.program

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def doc(self) -> str:
        return self.graph.doc

    @property
    def arguments(self) -> list[Tensor]:
        return list(self.graph.args)

    @property
    def inputs(self) -> list[Tensor]:
        return [a for a in self.graph.args if a.role == "input"]

    @property
    def parameters(self) -> list[Tensor]:
        return [a for a in self.graph.args if a.role == "param"]

    @property
    def constants(self) -> list[Tensor]:
        return [a for a in self.graph.args if a.role == "const"]

    @property
    def outputs(self) -> list[Tensor]:
        return [o.tensor for o in self.graph.outputs]

    @property
    def saved(self) -> list[Tensor]:
        """Bindings the forward pass keeps for the backward pass (outputs included)."""
        return [b.tensor for b in self.graph.bindings if b.save]

    @property
    def forward(self) -> list[sp.Eq]:
        """The forward definition: one equation per binding, in order."""
        return [sp.Eq(b.lhs, b.expr, evaluate=False) for b in self.graph.bindings]

    def upstream(self, output: str) -> str:
        return chain.upstream_name(self.graph, output)

    def grad(self, arg: str) -> sp.Eq:
        t = self.graph.tensor(arg)
        lhs = sp.IndexedBase(chain.grad_name(arg))[self.grad_indices[arg]] if t.shape \
            else sp.Symbol(chain.grad_name(arg))
        return sp.Eq(lhs, self.grads[arg], evaluate=False)

    def steps_of(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.kind == kind]

    def as_dict(self) -> dict:
        def shape(t):
            return [str(s) for s in t.shape]

        return {
            "name": self.name,
            "doc": self.doc,
            "arguments": [{"name": a.name, "role": a.role, "shape": shape(a), "integer": a.integer,
                           "differentiable": a.differentiable,
                           **({"default": a.default} if a.role == "const" else {})} for a in self.arguments],
            "outputs": [{"name": o.name, "shape": shape(o), "upstream": self.upstream(o.name)}
                        for o in self.outputs],
            "saved": [t.name for t in self.saved],
            "forward": [{"text": f"{s.text}", "latex": s.latex} for s in self.steps_of("definition")],
            "grads": {a: {"indices": [str(i) for i in self.grad_indices[a]],
                          "srepr": sp.srepr(e), "latex": Step("simplified", a, sp.Symbol("d" + a), e).latex,
                          "text": Step("simplified", a, self.grad(a).lhs, e).text}
                      for a, e in self.grads.items()},
            "steps": [s.as_dict() for s in self.steps],
            "program": [{"name": n, "indices": [str(i) for i in idx], "srepr": sp.srepr(e),
                         "text": Step("program", n, lhs_of(n, idx), e).text,
                         "latex": Step("program", n, lhs_of(n, idx), e).latex} for n, idx, e in self.program],
            "notes": list(self.graph.notes),
        }


def lhs_of(name, idx):
    """name[idx] (a plain symbol when idx is empty): the left side of a program equation."""
    return sp.IndexedBase(name, real=True)[tuple(idx)] if idx else sp.Symbol(name, real=True)


def derive_graph(graph: Graph) -> Derivation:
    """Run the chain rule on a forward graph and package the result."""
    rule = chain.ChainRule(graph)
    grads, steps = rule.run()
    definitions = [Step("definition", b.name, b.lhs, b.expr) for b in graph.bindings]
    return Derivation(graph, grads, definitions + steps, {a: rule.tidx[a] for a in grads},
                      rule.program(grads))
