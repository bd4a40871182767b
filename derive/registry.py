"""The built-in layers by name. A layer module registers its forward definitions with `@layer`.

A layer with integer constants that shape its index expressions (a convolution's stride, padding
and dilation; a pooling window) is registered with `@layer(stride=1, padding=0, ...)`: its
builder takes them as keyword arguments, and each configuration is a layer of its own, named by
the constants that differ from the defaults - `conv2d` (stride 1, padding 0, dilation 1),
`conv2d_s2_p1` (stride 2, padding 1), `max_pool2d_k3_s1`. A constant is written by its first letter.
The constants are Python integers in the definition, so every index expression is affine with
integer coefficients and the index checker proves it in range (derive.indices).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re

from .errors import DeriveError
from .graph import Graph

_BUILDERS: dict = {}
_CONSTANTS: dict = {}  # layer name -> {constant: default} for a configurable layer


def layer(fn=None, **constants):
    """Register `fn(G)` as the forward definition of the built-in layer named `fn.__name__`
    (a trailing underscore dropped). With keyword arguments, `fn(G, **constants)` is a layer
    configured by those integer constants (their defaults given here): see the module docstring."""
    if fn is None:
        return lambda f: layer(f, **constants)
    name = fn.__name__.rstrip("_")  # tanh_ -> tanh (no clash with sympy.tanh)
    _BUILDERS[name] = fn
    if constants:
        letters = [c[0] for c in constants]
        assert len(set(letters)) == len(letters), f"{name}: constants must differ in their first letter"
        _CONSTANTS[name] = dict(constants)
    return fn


def variant(name: str, **constants) -> str:
    """The name of layer `name` configured by `constants` (the defaults left out of the name):
    variant("conv2d", stride=2, padding=1) == "conv2d_s2_p1"."""
    _load()
    defaults = _CONSTANTS.get(name)
    if defaults is None:
        raise DeriveError(name, "unknown configurable layer; they are: " + ", ".join(_CONSTANTS))
    unknown = sorted(set(constants) - set(defaults))
    if unknown:
        raise DeriveError(name, f"no constant {', '.join(unknown)}; it has {', '.join(defaults)}")
    for c, v in constants.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DeriveError(name, f"{c} must be an integer >= 0, got {v!r}")
    values = {**defaults, **constants}
    return name + "".join(f"_{c[0]}{values[c]}" for c in defaults if values[c] != defaults[c])


def _configured(name: str):
    """(layer, {constant: value}) for a configured name such as conv2d_s2_p1, or None."""
    m = re.fullmatch(r"(.+?)((?:_[a-z]\d+)+)", name)
    if m is None or m.group(1) not in _CONSTANTS:
        return None
    base, defaults = m.group(1), _CONSTANTS[m.group(1)]
    by_letter = {c[0]: c for c in defaults}
    values = {}
    for letter, value in re.findall(r"_([a-z])(\d+)", m.group(2)):
        if letter not in by_letter:
            raise DeriveError(name, f"'{letter}' names no constant of {base}; its constants are "
                                    + ", ".join(f"{c} ({c[0]})" for c in defaults))
        values[by_letter[letter]] = int(value)
    canonical = variant(base, **values)
    if canonical != name:
        raise DeriveError(name, f"write this configuration of {base} as '{canonical}' (constants in "
                                f"the order {', '.join(defaults)}, defaults left out)")
    return base, values


def part_of(layer_name: str):
    """Mark a helper that binds (part of) built-in layer `layer_name`'s graph: a layer whose
    definition calls it reuses that layer's derivation, and says so in `G.uses` (the docs link
    it). Recorded at the call, so the list cannot drift from what a definition really calls."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(G, *args, **kwargs):
            if G.name != layer_name and layer_name not in G.uses:
                G.uses.append(layer_name)
            return fn(G, *args, **kwargs)
        return call
    return wrap


def _load():
    """Import every module of derive/builtin (each registers its layers with @layer)."""
    from . import builtin
    for m in sorted(i.name for i in pkgutil.iter_modules(builtin.__path__)):
        importlib.import_module(f"symgrad.derive.builtin.{m}")


def names() -> list[str]:
    _load()
    return list(_BUILDERS)


def constants(name: str) -> dict:
    """{constant: value} of a built-in layer (its defaults for a configurable layer's own name,
    the configured values for a name such as conv2d_s2_p1; {} for a layer with none)."""
    _load()
    if name in _BUILDERS:
        return dict(_CONSTANTS.get(name, {}))
    found = _configured(name)
    if found is None:
        raise DeriveError(name, f"unknown layer; the built-in layers are: {', '.join(_BUILDERS)}")
    return {**_CONSTANTS[found[0]], **found[1]}


def build(name: str) -> Graph:
    _load()
    found = (name, {}) if name in _BUILDERS else _configured(name)
    if found is None:
        raise DeriveError(name, f"unknown layer; the built-in layers are: {', '.join(_BUILDERS)}")
    fn = _BUILDERS[found[0]]
    graph = Graph(name, (fn.__doc__ or "").strip())
    if found[0] in _CONSTANTS:
        fn(graph, **{**_CONSTANTS[found[0]], **found[1]})
    else:
        fn(graph)
    return graph
