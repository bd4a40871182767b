"""The built-in layers by name. A layer module registers its forward definitions with `@layer`."""

from __future__ import annotations

import importlib

from .errors import DeriveError
from .graph import Graph

_BUILDERS: dict = {}
_MODULES = ("linear", "activations", "softmax", "losses", "layernorm", "embedding", "attention",
            "recurrent", "residual")


def layer(fn):
    """Register `fn(G)` as the forward definition of the built-in layer named `fn.__name__`
    (a trailing underscore dropped)."""
    _BUILDERS[fn.__name__.rstrip("_")] = fn  # tanh_ -> tanh (no clash with sympy.tanh)
    return fn


def _load():
    for m in _MODULES:
        importlib.import_module(f"derive.builtin.{m}")


def names() -> list[str]:
    _load()
    return list(_BUILDERS)


def build(name: str) -> Graph:
    _load()
    if name not in _BUILDERS:
        raise DeriveError(name, f"unknown layer; the built-in layers are: {', '.join(_BUILDERS)}")
    fn = _BUILDERS[name]
    graph = Graph(name, (fn.__doc__ or "").strip())
    fn(graph)
    return graph
