"""Issue #11, item 4: a layer may name its tensors anything; the names derive makes up (upstream
gradients, gradients, adjoints) are mangled around them (derive.names). An input named g was the
upstream gradient itself (dg = 2*g**2 for y = g**2); one named dx beside x, or N beside the dim N,
named two kernel arguments alike."""

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from tests.derive.kernel_check import assert_kernels_match_finite_differences


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))


def _product(*names, dims="N C"):
    """y[i,j] = the product of inputs `names`, plus their squares (every gradient reads them)."""
    def build(G):
        N, C = G.dims(dims)[:2]
        ts = [G.input(n, (N, C)) for n in names]
        i, j = G.indices(i=N, j=C)
        reads = [t[i, j] for t in ts]
        G.output(G.bind("y", (i, j), sp.Mul(*reads) + sum(r ** 2 for r in reads)))
    return build


def _generated(d):
    names = d.names
    return [*names.upstream.values(), *names.grad.values(),
            *(a for b, a in names.adjoint.items() if a not in names.upstream.values())]


def square_of_g(G):
    """y = g**2, the input being named g."""
    N, C = G.dims("N C")
    g = G.input("g", (N, C))
    i, j = G.indices(i=N, j=C)
    G.output(G.bind("y", (i, j), g[i, j] ** 2))


def test_input_named_g_gets_its_own_gradient_not_the_upstream_gradient():
    d = derive.define("named_g", square_of_g)
    assert d.upstream("y") != "g"
    up = sp.IndexedBase(d.upstream("y"), real=True)
    g = sp.IndexedBase("g", real=True)
    i, j = d.grad_indices["g"]
    assert sp.simplify(d.grads["g"] - 2 * g[i, j] * up[i, j]) == 0, d.grads["g"]  # was 2*g**2
    rng = np.random.default_rng(0)
    assert_kernels_match_finite_differences(d, {"g": rng.standard_normal((3, 4))}, rng)


@pytest.mark.parametrize("names", [("g", "g_y", "g_"), ("x", "dx", "ddx", "dx_"),
                                   ("y_in", "g_y", "gtotal_y")])
def test_generated_names_never_collide_with_user_names_or_each_other(names):
    d = derive.define("names_" + "_".join(names), _product(*names))
    generated = _generated(d)
    assert len(set(generated)) == len(generated), d.names
    assert not set(generated) & derive.names.user_names(d.graph), d.names
    for a in names:  # every gradient is still the right one
        assert d.gradient_of(d.grad_name(a)) == a


def test_inputs_named_like_generated_names_get_correct_gradients_by_reference_evaluation():
    from symgrad.derive import reference
    from tests.gradcheck import assert_close, central_differences

    d = derive.define("named_like_generated", _product("x", "dx", "g", "N"))
    rng = np.random.default_rng(1)
    args = {n: rng.standard_normal((3, 4)) for n in ("x", "dx", "g", "N")}
    up = rng.standard_normal((3, 4))
    got = reference.vjp(d, {d.upstream("y"): up}, args)
    for a in args:
        want = central_differences(lambda v: float(np.sum(up * reference.forward(d, v)["y"])), args, a)
        assert_close(d.name, a, got[a], want, 1e-7, "central differences")


def test_input_named_dx_beside_x_gets_correct_gradients_through_compiled_kernels():
    d = derive.define("named_dx", _product("x", "dx"))
    rng = np.random.default_rng(2)
    assert_kernels_match_finite_differences(d, {"x": rng.standard_normal((3, 4)),
                                                "dx": rng.standard_normal((3, 4))}, rng)


def test_input_named_like_a_dim_gets_correct_gradient_through_compiled_kernels():
    d = derive.define("named_N", _product("N"))
    rng = np.random.default_rng(3)
    assert_kernels_match_finite_differences(d, {"N": rng.standard_normal((3, 4))}, rng)
