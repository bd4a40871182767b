"""Definitions that derived but could not run (issue #11, item 3, the printer's side) and two
small faults of the kernels API and CLI (item 9).

Max, Min and Abs differentiate into Heaviside, sign into DiracDelta: the kernels compute their
values almost everywhere, and the gradients are checked against finite differences away from
the kinks. A symbol nobody declared is refused when the binding is made.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symgrad import compiled
from symgrad import derive
from symgrad.compiled.printer import NumbaPrinter, PrintError
from symgrad.kernels_cmd import kernels_main
from tests.gradcheck import assert_close, central_differences


def _elementwise(name, f, inputs=("x",)):
    def build(G):
        N, C = G.dims("N C")
        ts = [G.input(n, (N, C)) for n in inputs]
        i, j = G.indices(i=N, j=C)
        G.output(G.bind("y", (i, j), f(*[t[i, j] for t in ts])))
    return derive.define(name, build)


def _check_against_differences(d, args, rtol=1e-7):
    """The float64 kernels' VJP of sum(G * y) against central differences at args."""
    k = compiled.kernels(d, "float64")
    G = np.random.default_rng(1).standard_normal(args["x"].shape)

    def loss(a):
        return float(np.sum(G * k.forward(**a)["y"]))

    grads = k.backward(g=G, **args, **k.forward(**args))
    for name in args:
        assert_close(d.name, name, grads[name], central_differences(loss, args, name), rtol,
                     "central differences")
    return k, G


def _away_from_zero(shape, seed=0):
    x = np.random.default_rng(seed).uniform(0.1, 2.0, shape)
    return x * np.where(np.random.default_rng(seed + 1).random(shape) < 0.5, -1, 1)


def test_max_in_a_definition_gets_its_derivative_as_a_comparison_not_a_heaviside_call():
    relu = _elementwise("t_relu_by_max", lambda x: sp.Max(x, 0))
    assert relu.grads["x"].has(sp.Heaviside)  # what SymPy derives; the kernel computes its value
    x = _away_from_zero((3, 5))
    k, G = _check_against_differences(relu, {"x": x})
    at_kink = k.backward(g=G, x=np.zeros_like(x), y=np.zeros_like(x))["x"]
    np.testing.assert_array_equal(at_kink, G / 2)  # Heaviside(0) = 1/2, SymPy's value
    pair = _elementwise("t_max_of_two", lambda x, w: sp.Max(x, w) * x, inputs=("x", "w"))
    _check_against_differences(pair, {"x": _away_from_zero((3, 5)), "w": _away_from_zero((3, 5), 7)})
    y = compiled.kernels(pair, "float32").forward(x=np.float32([[1, -2]]), w=np.float32([[0, 3]]))["y"]
    np.testing.assert_array_equal(y, [[1, -6]])


def test_sign_in_a_definition_has_derivative_zero_almost_everywhere_not_a_print_error():
    d = _elementwise("t_x_abs_x", lambda x: sp.sign(x) * x**2)  # x*|x|: derivative 2|x|
    assert d.grads["x"].has(sp.DiracDelta)
    _check_against_differences(d, {"x": _away_from_zero((3, 5))})
    step = _elementwise("t_sign", sp.sign)
    k = compiled.kernels(step, "float32")
    x = np.float32([[-1.5, 0, 2]])
    np.testing.assert_array_equal(k.backward(g=np.ones_like(x), x=x, **k.forward(x=x))["x"], 0)


_LOCALS = {"x": sp.IndexedBase("x", real=True), "i": sp.Symbol("i", integer=True),
           "j": sp.Symbol("j", integer=True), "k": sp.Symbol("k", integer=True), "a": sp.Symbol("a")}


@pytest.mark.parametrize("term, symbol", [("k*x[i, j]", "k"), ("x[i, k]", "k"), ("a*x[i, j]", "a")])
def test_undeclared_index_symbol_is_a_derive_error_naming_the_layer_and_the_term(term, symbol):
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, j = G.indices(i=N, j=C)
        G.output(G.bind("y", (i, j), sp.sympify(term, locals={**_LOCALS, "x": x.base, "i": i, "j": j})))

    with pytest.raises(derive.DeriveError) as e:  # was: a PrintError when the kernel was printed
        derive.define("t_undeclared", build)
    msg = str(e.value)
    assert msg.startswith("t_undeclared: ") and "\n" not in msg
    assert f"reads {symbol}," in msg and str(sp.sympify(term, locals=_LOCALS)) in msg, msg


_x = sp.Symbol("x")


@pytest.mark.parametrize("expr", [sp.Heaviside(_x), sp.Derivative(_x**2, _x), sp.nan],
                         ids=["Heaviside", "Derivative", "nan"])
def test_printer_refuses_a_node_it_has_no_rule_for_instead_of_printing_sympy_text(expr):
    with pytest.raises(PrintError, match="no rule for"):  # was: SymPy's text, a NameError in Numba
        NumbaPrinter({_x: "x"}).doprint(expr)


def test_kernels_help_names_the_layers_not_a_missing_derive_list_flag(capsys):
    with pytest.raises(SystemExit) as e:
        kernels_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--list" not in out
    assert all(name in out for name in ("linear", "softmax", "embedding")), out


def test_ids_near_2_63_are_reported_as_given_not_as_negative_bounds():
    k = compiled.kernels("embedding", "float64")
    table = np.zeros((4, 3))
    big = np.array([0, 2**63], dtype=np.uint64)  # was: [-9223372036854775808, ...] after the int64 cast
    with pytest.raises(compiled.KernelError, match=r"holds indices in \[0, 9223372036854775808\], "
                                                   r"outside \[0, 3\]$"):
        k.forward(ids=big, table=table)
    with pytest.raises(compiled.KernelError, match=r"in \[0, 0\], but the axis they index is empty$"):
        k.forward(ids=np.array([0]), table=np.zeros((0, 3)))  # was: outside [0, -1]
