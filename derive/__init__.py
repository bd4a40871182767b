"""derive: SymPy derives every layer's gradient from its forward definition.

    >>> from symgrad import derive
    >>> d = derive.layer("softmax")
    >>> print(d.grad("x"))          # dx[i,j] = s[i,j]*(g[i,j] - Sum(g[i,j']*s[i,j']))

Public API: `layers()`, `layer(name)`, `define(name, build, budget=, progress=)`, `Graph`,
`Derivation`, `DeriveError`, `verify(target, wrt, candidate)` for hand-derived gradients, and the
float64 NumPy reference evaluator `derive.reference`.

What a definition that derives is promised (else a one-line DeriveError naming the layer and the
term): every index it and its gradients read is proved in range (derive.indices); the backward
reads only arguments, saved bindings and upstream gradients and binds every index it uses
(derivation.check_backward); the names derive makes up never collide with the layer's
(derive.names); it finishes within its time budget (derive.budget).
"""

from __future__ import annotations

import time

from . import cache, registry
from .budget import Budget
from .derivation import Derivation, derive_graph
from .errors import DeriveError
from .functions import Iverson, MaxOver
from .graph import Graph, Tensor
from .verify import VerifyReport, candidate_symbols, verify

__all__ = ["layers", "layer", "resolve", "define", "Graph", "Tensor", "Derivation", "DeriveError",
           "Iverson", "MaxOver", "derive_all", "verify", "VerifyReport", "candidate_symbols"]

_cache: dict[str, Derivation] = {}


def layers() -> list[str]:
    """Names of the built-in layers."""
    return registry.names()


def layer(name: str, **constants) -> Derivation:
    """The derivation of a built-in layer (derived once, then read from the on-disk cache).

    A configurable layer takes its integer constants by keyword: `layer("conv2d", stride=2,
    padding=1)` is the layer named `conv2d_s2_p1` (see derive.registry)."""
    if constants:
        name = registry.variant(name, **constants)
    if name not in _cache:
        graph = registry.build(name)  # raises DeriveError for an unknown name
        _cache[name] = cache.load_or_derive(name, lambda: derive_graph(graph))
    return _cache[name]


def resolve(target) -> Derivation:
    """A Derivation given as itself or by a built-in layer's name (what every API that takes
    "a layer" accepts); anything else is a DeriveError."""
    if isinstance(target, Derivation):
        return target
    if isinstance(target, str):
        return layer(target)
    raise DeriveError(getattr(target, "name", type(target).__name__),
                      f"expected a layer name or a Derivation, got {type(target).__name__}")


def define(name: str, build, budget: float | None = None, progress=None) -> Derivation:
    """Derive a new layer from its forward definition alone.

    `build(G)` receives an empty `Graph` named `name` and declares dims, arguments, indices,
    bindings and outputs on it (see `derive.graph`). Nothing about the gradient is given.

    `budget`: seconds the derivation may take (default `$SYMGRAD_DERIVE_BUDGET`, else 60; 0: no
    limit); past it a DeriveError names the binding it was at. `progress`: None prints a line per
    step to stderr once it has run 5 s, False is silent, a callable gets
    `(layer, binding, stage, seconds)` at every step (see derive.budget).
    """
    graph = Graph(name, (build.__doc__ or "").strip())
    build(graph)
    if not graph.outputs:
        raise DeriveError(name, "the definition declares no output (call G.output(...))")
    with Budget(name, budget, progress):
        return derive_graph(graph)


def derive_all() -> dict[str, float]:
    """Derive every built-in layer; returns seconds per layer."""
    times = {}
    for n in layers():
        t0 = time.perf_counter()
        layer(n)
        times[n] = time.perf_counter() - t0
    return times
