"""The names a derivation makes up, chosen so that no name of the layer can collide with them.

A derivation invents three kinds of names beside the layer's own (its tensors, dims and index
symbols):

- the upstream gradient of each output: `g`, or `g_<output>` for several outputs;
- the gradient of each argument: `d<argument>`;
- the total adjoint of each binding and argument: `g_<name>` (`gtotal_<name>` where that is
  already an upstream name); an output no other binding reads has its upstream as its adjoint.

These are the preferred names. Where one is already taken (an input named `g`, an input `dx`
beside an input `x`), the made-up name gives way, never the user's: an upstream becomes
`g_<output>`, then gets a trailing `_`; a gradient gets a trailing `_` (`dx_`); an adjoint a longer
prefix (`gg_h`, so that what follows the first `_` is still the binding's name). Before, an input
named `g` *was* the upstream gradient (`dg = 2*g**2` for y = g**2), and `dx` beside `x` named two
kernel arguments alike. Consumers ask `Derivation.upstream`, `.grad_name`, `.gradient_of`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fold import reads


@dataclass(frozen=True)
class Names:
    upstream: dict  # output name -> its upstream gradient's name
    grad: dict  # argument name -> its gradient's name
    adjoint: dict  # binding name -> its total adjoint's name

    @classmethod
    def of(cls, graph) -> "Names":
        taken = user_names(graph)
        outputs = [o.name for o in graph.outputs]
        upstream = {}
        for o in outputs:  # an input named g: the upstream is g_<output>
            first = "g" if len(outputs) == 1 and "g" not in taken else f"g_{o}"
            upstream[o] = _fresh(first, taken, suffix="_")
        grad = {a.name: _fresh(f"d{a.name}", taken, suffix="_") for a in graph.args}
        adjoint = {}
        for t in graph.tensors():  # an argument's adjoint names its chain-rule step (g_x = ...)
            if t.name in upstream and not any(reads(c.expr, t) for c in graph.bindings
                                              if c.name != t.name):
                adjoint[t.name] = upstream[t.name]
                continue
            prefix = "g"
            while f"{prefix}_{t.name}" in taken:
                prefix = "gtotal" if prefix == "g" else ("gg" if prefix == "gtotal" else prefix + "g")
            adjoint[t.name] = f"{prefix}_{t.name}"
            taken.add(adjoint[t.name])
        return cls(upstream, grad, adjoint)

    def gradient_of(self, name: str):
        """The argument whose gradient is called `name`, or None (an intermediate adjoint)."""
        return next((a for a, n in self.grad.items() if n == name), None)

    def adjoint_of(self, name: str):
        """The binding whose adjoint is called `name`, or None."""
        return next((b for b, n in self.adjoint.items() if n == name), None)


def user_names(graph) -> set:
    """Every name the layer's author chose: tensors, dims and index symbols."""
    return {t.name for t in graph.tensors()} | {str(d) for d in graph.dims_} | \
        {str(i) for i in graph.extents}


def _fresh(name, taken, suffix):
    while name in taken:
        name += suffix
    taken.add(name)
    return name

