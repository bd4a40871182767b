"""derive.reference on max/min of an array and a number (ReLU written sp.Max(x[i], 0)) and on the
Heaviside step SymPy gives as its derivative: found by the fuzzer (tests/fuzz/), where the
reference raised ValueError on np.maximum.reduce over operands of different shapes."""

import numpy as np
import sympy as sp

from symgrad import compiled
from symgrad import derive
from symgrad.derive import reference


def _relu_max(G):
    N, = G.dims("N")
    x = G.input("x", (N,))
    i, = G.indices(i=N)
    G.output(G.bind("y", (i,), sp.Max(x[i], 0) + sp.Min(x[i], -1)))


def test_reference_evaluates_max_of_an_array_and_a_number_and_its_step_gradient():
    d = derive.define("t_relu_max", _relu_max)
    x = np.array([-3.0, -0.5, 2.0, 4.0])
    y = reference.forward(d, {"x": x})["y"]
    np.testing.assert_array_equal(y, np.maximum(x, 0) + np.minimum(x, -1))
    dx = reference.vjp(d, {d.upstream("y"): np.ones(4)}, {"x": x})["x"]
    np.testing.assert_array_equal(dx, (x > 0) + (x < -1))
    np.testing.assert_array_equal(compiled.kernels(d, "float64").backward(g=np.ones(4), x=x)["x"], dx)
