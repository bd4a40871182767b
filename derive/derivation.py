"""A Derivation: a layer's forward graph with every gradient SymPy derived for it, and the steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import chain, indices
from .errors import DeriveError
from .graph import Graph, Tensor
from .names import Names
from .steps import Step


@dataclass
class Derivation:
    """What `derive.layer(name)` returns.

    `grads` maps each differentiable argument to its vector-Jacobian product: an index expression
    (free indices `grad_indices[name]`) reading the layer's arguments, its saved bindings and the
    upstream gradients (`g`, or `g_<output>` for several outputs).

    The names of upstream gradients, gradients and adjoints are made up by derive and never
    collide with the layer's own names (an input may be called `g` or `dx`): ask `upstream(out)`,
    `grad_name(arg)`, `gradient_of(program name)` rather than building a name (derive.names).

    `program` is the same backward as the kernels compute it: adjoints that several gradients
    read (attention's g_S, an LSTM's g_z) computed once, as equations before the gradients
    (`d<argument>`) that read them.
    """

    graph: Graph
    grads: dict
    steps: list = field(default_factory=list)
    grad_indices: dict = field(default_factory=dict)
    program: list = field(default_factory=list)  # [(name, indices, expr)]: see chain.ChainRule.program
    names: Names = None  # every generated name (derive.names)

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
        """The name of output's upstream gradient: `g`, `g_<output>`, or those mangled."""
        return self.names.upstream[output]

    def grad_name(self, arg: str) -> str:
        """The name of arg's gradient in `program` and the backward kernel: `d<arg>` unless the
        layer already has that name."""
        return self.names.grad[arg]

    def gradient_of(self, name: str):
        """The argument whose gradient the program entry `name` is; None for an adjoint."""
        return self.names.gradient_of(name)

    def adjoint_of(self, name: str):
        """The binding whose adjoint the program entry `name` is; None for a gradient."""
        return self.names.adjoint_of(name)

    def grad(self, arg: str) -> sp.Eq:
        t = self.graph.tensor(arg)
        name = self.grad_name(arg)
        lhs = sp.IndexedBase(name)[self.grad_indices[arg]] if t.shape else sp.Symbol(name)
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
                          "srepr": sp.srepr(e),
                          "latex": Step("simplified", a, sp.Symbol(self.grad_name(a)), e).latex,
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
    """Run the chain rule on a forward graph and package the result (checked: check_backward)."""
    rule = chain.ChainRule(graph)
    grads, steps = rule.run()
    definitions = [Step("definition", b.name, b.lhs, b.expr) for b in graph.bindings]
    d = Derivation(graph, grads, definitions + steps, {a: rule.tidx[a] for a in grads},
                   rule.program(grads), rule.names)
    check_backward(d)
    return d


def check_backward(d: Derivation):
    """Refuse, before anything is printed, a backward that could not run: an equation of the
    program (or a gradient) that reads a value the backward kernel is not given - a binding the
    forward does not save, or no tensor at all - or uses an index nothing binds, or reads out
    of range (derive.indices). Each is a DeriveError naming the layer and the term."""
    g, names = d.graph, d.names
    shapes = {a.name: a.shape for a in g.args} | {b.name: b.tensor.shape for b in g.bindings if b.save}
    shapes |= {names.upstream[o.name]: o.tensor.shape for o in g.outputs}
    scalars = {n for n, s in shapes.items() if not s} | {str(x) for x in g.dims_}
    bindings = {b.name for b in g.bindings}
    unsaved = {b.name for b in g.bindings if not b.save}
    eqs = [(n, idx, e, "program") for n, idx, e in d.program]
    eqs += [(d.grad_name(a), d.grad_indices[a], e, "gradient") for a, e in d.grads.items()]
    for name, idx, expr, _ in eqs:
        owner = d.gradient_of(name)
        shape = g.tensor(owner or d.adjoint_of(name)).shape
        term = f"{name}[{', '.join(map(str, idx))}] = {expr}" if idx else f"{name} = {expr}"
        read = {str(ix.base.label) for ix in expr.atoms(sp.Indexed)}
        read |= {s.name for s in expr.free_symbols if s.name in bindings}  # scalar bindings
        for r in sorted(read - set(shapes)):
            why = "a binding the forward pass does not save" if r in unsaved else "no tensor of the layer"
            raise DeriveError(g.name, f"the backward could not run: {name} reads '{r}', {why}: {term}")
        indices.check_reads(g.name, f"the gradient {name}" if owner else f"the adjoint {name}", expr,
                            dict(zip(idx, shape)), shapes, scalars)
        shapes[name] = shape  # an adjoint the program computes is read by the equations after it
        if not shape:
            scalars.add(name)
