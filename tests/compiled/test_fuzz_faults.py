"""Crashes the property fuzzer (tests/fuzz/) found in compiled/, each as a small explicit
definition (seeds renumber when the generator changes). Each either computes the gradients
that float64 central differences give, or is refused with a DeriveError naming the layer, the
term and the function before Numba compiles anything."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symgrad import compiled
from symgrad import derive
from tests.gradcheck import assert_close, central_differences


def _matches_differences(d, args, rtol=1e-6):
    """The float64 backward against central differences of sum(G_o * o) over the outputs; each
    gradient the derivation lists is returned."""
    k = compiled.kernels(d, "float64")
    outs = [o.name for o in d.outputs]
    fwd = k.forward(**args)
    rng = np.random.default_rng(1)
    ups = {o: rng.standard_normal(np.shape(fwd[o])) for o in outs}

    def loss(a):
        f = k.forward(**a)
        return float(sum(np.sum(ups[o] * f[o]) for o in outs))

    grads = k.backward(**{d.upstream(o): ups[o] for o in outs}, **args, **fwd)
    assert set(grads) == set(d.grads), f"{d.name}: backward returned {sorted(grads)}"
    for name in args:
        assert_close(d.name, name, grads[name], central_differences(loss, args, name), rtol,
                     "central differences")
    return k, grads


def test_conv1d_backward_indexes_with_an_int_offset_not_a_float():
    def build(G):
        W, K = G.dims("W K")
        x, w = G.input("x", (W,)), G.param("w", (K,))
        i, a = G.indices(i=W - K + 1, a=K)
        G.output(G.bind("y", (i,), G.sum(x[i + a] * w[a], a)))
    rng = np.random.default_rng(0)
    _matches_differences(derive.define("t_fuzz_conv1d", build),
                         {"x": rng.standard_normal(7), "w": rng.standard_normal(3)})


def test_window_on_an_inner_axis_hoists_without_recursing():
    def build(G):
        N, W, K = G.dims("N W K")
        x, w = G.input("x", (N, W)), G.param("w", (K,))
        i, l, a = G.indices(i=N, l=W - K + 1, a=K)
        G.output(G.bind("y", (i, l), G.sum(x[i, l + a] * w[a], a)))
    rng = np.random.default_rng(0)
    _matches_differences(derive.define("t_fuzz_inner_window", build),
                         {"x": rng.standard_normal((2, 6)), "w": rng.standard_normal(3)})


def test_lstm_cell_float32_source_without_blas_prints():
    from symgrad.compiled.build import module_source

    src, _, bwd = module_source(derive.layer("lstm_cell"), "float32", "test", blas=False)
    compile(src, "lstm_cell", "exec")
    assert "gemm" not in bwd.source


def test_scalar_intermediate_adjoint_is_a_local_not_an_empty_shaped_array():
    def build(G):
        N, = G.dims("N")
        x, u, w = G.input("x", (N,)), G.input("u", (N,)), G.param("w", ())
        i, = G.indices(i=N)
        mm = G.bind("mm", (), G.sum(x[i] * u[i], i))
        G.output(G.bind("h", (), sp.sqrt((2 * (sp.tanh(w.ref()) - mm.ref()))**2 + 1), save=True))
    d = derive.define("t_fuzz_scalar_adjoint", build)
    assert any(name != "dw" and not idx for name, idx, _ in d.program[:-1])  # g_mm: scalar
    rng = np.random.default_rng(0)
    k, _ = _matches_differences(d, {"x": rng.standard_normal(3), "u": rng.standard_normal(3),
                                    "w": 0.3})
    assert "np.empty((,)" not in k.source


def test_zero_gradients_are_returned_filled_with_zeros_and_take_out_arrays():
    def build(G):
        N, M = G.dims("N M")
        x, u, v = G.input("x", (N,)), G.input("u", (M,)), G.param("v", ())
        i, m = G.indices(i=N, m=M)
        G.bind("dead", (m,), sp.exp(u[m]) * v.ref())  # feeds no output
        G.output(G.bind("y", (i,), sp.sin(x[i])))
    d = derive.define("t_fuzz_zero_grads", build)
    assert d.grads["u"] == 0 and d.grads["v"] == 0
    rng = np.random.default_rng(0)
    args = {"x": rng.standard_normal(4), "u": rng.standard_normal(3), "v": 0.5}
    k, grads = _matches_differences(d, args)
    assert grads["v"] == 0.0
    du = np.full(3, np.nan)
    res = k.backward(g=np.ones(4), **args, **k.forward(**args), out={"u": du})
    assert res["u"] is du and not du.any()


def test_an_argument_named_self_is_passed_as_a_keyword():
    def build(G):
        N, = G.dims("N")
        s = G.input("self", (N,))
        i, = G.indices(i=N)
        G.output(G.bind("y", (i,), s[i]**2))
    _matches_differences(derive.define("t_fuzz_self", build),
                         {"self": np.random.default_rng(0).standard_normal(3)})


def test_atan2_from_the_gradient_of_abs_sqrt_prints_as_arctan2():
    def build(G):
        N, = G.dims("N")
        u = G.input("u", (N,))
        i, = G.indices(i=N)
        G.output(G.bind("y", (i,), sp.Abs(sp.sqrt(u[i]))))
    d = derive.define("t_fuzz_abs_sqrt", build)
    assert d.grads["u"].has(sp.atan2)
    _matches_differences(d, {"u": np.random.default_rng(0).uniform(0.5, 2.0, 4)})


def test_erfinv_is_refused_naming_the_layer_term_and_function_before_compiling():
    def build(G):
        N, = G.dims("N")
        x = G.input("x", (N,))
        i, = G.indices(i=N)
        G.output(G.bind("y", (i,), sp.erfinv(x[i])))
    d = derive.define("t_fuzz_erfinv", build)
    with pytest.raises(derive.DeriveError, match=r"^t_fuzz_erfinv: y needs erfinv .*cannot compute"):
        compiled.kernels(d, "float64")


# --- found by the 20-minute fuzzer run (seeds 152452611..152453033) ------------------------------

def _two_products(index_name):
    """mm = s.T x over a sum index named `index_name`, then mm2 = tanh(s mm): the saved output is
    named mm2, like the kernels' product temporaries."""
    def build(G):
        N, C, D = G.dims("N C D")
        s = G.input("s", (N, D))
        x = G.input("x", (N, C))
        i, p, j, k, l = G.indices(**{"i": D, index_name: N, "j": C, "k": N, "l": D})
        mm = G.bind("mm", (i, j), G.sum(s[p, i] * x[p, j], p))
        G.output(G.bind("mm2", (k, j), sp.tanh(G.sum(s[k, l] * mm[l, j], l))))
    return build


def test_saved_output_named_like_a_product_temporary_is_not_overwritten_and_pool_threads_is_an_index():
    """Seed 152452665: the backward allocated its product temporary mm2 over the saved output
    mm2 (a wrong gradient), and a sum index named pool_threads shadowed the thread helper."""
    from tests.derive.kernel_check import assert_kernels_match_finite_differences
    rng = np.random.default_rng(5)
    for index_name in ("p", "pool_threads"):
        d = derive.define(f"t_two_products_{index_name}", _two_products(index_name))
        assert_kernels_match_finite_differences(
            d, {"s": rng.standard_normal((3, 4)), "x": rng.standard_normal((3, 2))}, rng)


def test_relu_of_a_product_is_not_folded_through_an_inverse_that_max_does_not_have():
    """Seed 152452960: fold solved h = Max(mm, 0) for mm as mm = h, turning the gradient's
    Heaviside(mm) into Heaviside(h), 1/2 where mm < 0 instead of 0."""
    from tests.derive.kernel_check import assert_kernels_match_finite_differences

    def build(G):
        N, C, D = G.dims("N C D")
        u = G.input("u", (C, D))
        w = G.param("w", (C, N))
        i, j, k = G.indices(i=D, j=C, k=N)
        mm = G.bind("mm", (i, k), G.sum(u[j, i] * w[j, k], j))
        G.output(G.bind("h", (i, k), sp.Max(mm[i, k], 0)))

    d = derive.define("t_relu_of_product", build)
    assert "Heaviside(h" not in str(d.grad("w"))
    rng = np.random.default_rng(6)
    assert_kernels_match_finite_differences(d, {"u": rng.standard_normal((3, 3)),
                                                "w": rng.standard_normal((3, 3))}, rng)
