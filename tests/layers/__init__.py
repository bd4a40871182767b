"""One test spec per built-in layer: `tests/layers/<layer>.py`, found by the layer's name.

A spec is written from the math alone, independently of derive/ (that is the point), and holds
everything the tests need to know about its layer:

- `cases(rng) -> [(label, {argument: value})]`: concrete inputs, edge cases included (batch of
  one, feature size one, logits around 1e3, near-constant rows, a single time step);
- `forward(t, **constants) -> {output: tensor}`: the layer written in PyTorch, the peer whose
  autograd the derived gradients are compared with (a configurable layer gets its constants
  as the registry gives them: conv2d_s2_p1 is conv2d's forward with stride=2, padding=1, dilation=1);
- `RIGHT` and `WRONG`: lists of (wrt, function, what it is), hand-derived backward candidates
  in NumPy, each in a form other than the engine's (explicit Jacobians, the expanded textbook
  layernorm, matrix calculus with einsum); `derive.verify` must accept every right one and
  reject every wrong one (at least two plausible mistakes) with a counterexample. A candidate
  receives the upstream gradient `g` (`g_<output>` for each of several outputs) and the layer's
  arguments by name;
- optionally `VERIFY_SHAPES`, dims for verify to use instead of generated ones (a layer whose
  generated shapes could leave no output position), and `VERIFY_TRIALS`, fewer random trials
  for a layer whose reference is slow (default 3).

A module whose name starts with `_` holds helpers several specs share; it is not a spec.
tests/derive/test_layer_specs.py checks that every built-in layer has a spec and every spec a layer.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np

from symgrad import derive
from symgrad.derive import registry

HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Where the spec of layer `name` is."""
    return HERE / f"{name}.py"


def names() -> list[str]:
    """The spec modules in this folder (helpers, `_*.py`, left out)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))


def missing() -> list[str]:
    """The built-in layers that have no spec."""
    have = set(names())
    return [n for n in derive.layers() if n not in have]


def unknown() -> list[str]:
    """The specs that name no built-in layer."""
    return [n for n in names() if n not in derive.layers()]


def specified() -> list[str]:
    """The built-in layers that have a spec, in derive's order: what the layer tests run over
    (a layer without one fails tests/derive/test_layer_specs.py alone)."""
    have = set(names())
    return [n for n in derive.layers() if n in have]


def _base(name: str) -> str:
    """The built-in layer a configured name such as conv2d_s2_p1 configures (itself for a layer's
    own name); derive.registry raises for a name it does not know."""
    if name in derive.layers():
        return name
    registry.constants(name)
    return max((b for b in derive.layers() if name.startswith(b + "_")), key=len)


def spec(name: str):
    """The spec module of layer `name` (of its layer, for a configured name); KeyError, naming the
    file to add, where there is none."""
    base = _base(name)
    if base not in names():
        raise KeyError(f"no test spec for layer '{base}': add {path(base).relative_to(HERE.parents[1])}")
    return importlib.import_module(f"{__name__}.{base}")


def cases(name: str, seed: int = 0) -> list[tuple[str, dict]]:
    """Layer `name`'s test inputs [(label, {argument: value})], drawn from `seed`."""
    if name not in derive.layers():
        raise KeyError(f"'{name}' is not a built-in layer's own name: the inputs in tests/layers/ are "
                       f"for each layer's default configuration")
    return spec(name).cases(np.random.default_rng(seed))


def forward(name: str, t: dict) -> dict:
    """{output name: tensor}: layer `name` (or a configuration of it, conv2d_s2_p1) in PyTorch."""
    return spec(name).forward(t, **registry.constants(name))
