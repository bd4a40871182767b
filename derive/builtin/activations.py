"""Elementwise activations on x (N, C)."""

from sympy import erf, pi, sqrt, tanh

from ..functions import Iverson
from ..registry import layer


def _elementwise(G, f, save=False, inner=None, save_inner=False):
    """y[i,j] = f(x[i,j]); with `inner`, y = f(t, x) for a named intermediate t[i,j] = inner(x)
    (saved with `save_inner`: GELU's backward then reads t instead of recomputing a tanh)."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    arg = x[i, j] if inner is None else G.bind("t", (i, j), inner(x[i, j]), save=save_inner)[i, j]
    y = G.bind("y", (i, j), f(arg, x[i, j]) if inner else f(arg), save=save)
    G.output(y)


@layer
def relu(G):
    """Rectified linear unit: y = x * [x > 0] (slope 0 at x = 0)."""
    _elementwise(G, lambda x: x * Iverson(x > 0))


@layer
def tanh_(G):
    """Hyperbolic tangent: y = tanh(x); the backward reads the saved output."""
    _elementwise(G, tanh, save=True)


@layer
def sigmoid(G):
    """Logistic sigmoid 1/(1 + exp(-x)), written y = (1 + t)/2 with t = tanh(x/2): the same
    function, with no exp to overflow; the backward reads the saved output."""
    _elementwise(G, lambda t, x: (1 + t) / 2, save=True, inner=lambda x: tanh(x / 2))


@layer
def gelu(G):
    """GELU, tanh approximation: y = x/2 * (1 + t), t = tanh(sqrt(2/pi) * (x + 0.044715 x^3))."""
    _elementwise(G, lambda t, x: x / 2 * (1 + t), save_inner=True,
                 inner=lambda x: tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))


@layer
def gelu_erf(G):
    """GELU, exact form: y = x/2 * (1 + erf(x / sqrt(2)))."""
    _elementwise(G, lambda x: x / 2 * (1 + erf(x / sqrt(2))))
