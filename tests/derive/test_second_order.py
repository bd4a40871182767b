"""The second-order derivation (derive.second_order): the JVP and HVP tangent programs of every
built-in and test-only layer, evaluated by derive's float64 NumPy reference, against torch.autograd;
the Hessians in index form, symbolically and numerically; the on-disk cache."""

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import reference
from symgrad.derive.second_order import definition_key, has_small_hessian, second_order
from tests.gradcheck import assert_close, torch_or_skip
from tests import second_order_cases as soc

ALL = [(name, label, args) for name in soc.NAMES for label, args in soc.cases(name)]
IDS = [f"{n}-{label}" for n, label, _ in ALL]


def reference_jvp_hvp(so, args, tangents, ups):
    """(output tangents from the JVP graph, output tangents and H v from the HVP graph), float64."""
    d = so.first
    jvp = reference.forward(so.jvp, {**args, **{so.tangent_inputs[a]: v for a, v in tangents.items()}})
    hvp = reference.forward(so.hvp, {**args, **ups, **{so.hvp_inputs[a]: v for a, v in tangents.items()}})
    return ({o.name: jvp[so.output_tangents[o.name]] for o in d.outputs},
            {o.name: hvp[so.hvp_tangents[o.name]] for o in d.outputs},
            {a: hvp[n] for a, n in so.hvp_outputs.items()})


@pytest.mark.parametrize("name,label,args", ALL, ids=IDS)
def test_jvp_and_hvp_match_torch_autograd_for_every_argument_pair(name, label, args):
    """For a tangent on each argument b alone: every output tangent (torch.func.jvp) and every
    argument's H v (double backward), within 1e-10 relative."""
    torch_or_skip()
    d = soc.layer(name)
    so = second_order(d)
    tangents, ups = soc.directions(d, args, reference.forward(d, args))
    for b in soc.differentiable(d):
        v = soc.only(tangents, b)
        jvp, jvp_again, hv = reference_jvp_hvp(so, args, v, ups)
        want_jvp, want_hv = soc.torch_jvp_hvp(name, d, args, v, ups)
        for o, want in want_jvp.items():
            assert_close(name, f"{o}_dot (JVP graph, tangent on {b})", jvp[o], want, 1e-10, f"torch.func.jvp ({label})")
            assert_close(name, f"{o}_dot (HVP graph, tangent on {b})", jvp_again[o], want, 1e-10,
                         f"torch.func.jvp ({label})")
        for a, want in want_hv.items():
            assert_close(name, f"{a} H v (tangent on {b})", hv[a], want, 1e-10, f"double backward ({label})")


def test_every_layer_has_second_order_outputs_named_by_its_arguments():
    for name in ("softmax", "linear", "lstm_cell"):
        so = second_order(name)
        d = so.first
        assert set(so.hvp_outputs) == set(d.grads), name
        assert set(so.tangent_inputs) == {a.name for a in d.arguments if a.differentiable}, name
        assert set(so.output_tangents) == {o.name for o in d.outputs}, name


def test_stop_gradient_bindings_have_no_tangent():
    so = second_order("softmax")
    assert "m" not in so.tangent_inputs and "m" not in {s.about for s in so.steps_of("tangent")}
    assert {s.about for s in so.steps_of("tangent")} == {"e", "z", "s"}


# --- Hessians in index form -----------------------------------------------------------------------

def _hessian_values(so, h, args, ups=None):
    """Evaluate a Hessian block h over its (a, b) index grid, float64 (upstream `ups`: for a layer
    whose output is not a scalar)."""
    d = so.first
    dims = reference.dims_of(d, args)
    vals = {**{k: np.asarray(v, np.int64 if d.graph.tensor(k).integer else np.float64) for k, v in args.items()},
            **reference.forward(d, args), **(ups or {})}
    for o in d.outputs:
        vals.setdefault(d.upstream(o.name), 1.0)
    ext = {i: int(sp.sympify(e).subs(dims)) for i, e in d.graph.extents.items()}
    ext |= {i: int(sp.sympify(s).subs(dims)) for i, s in zip(h.a_indices, d.graph.tensor(h.a).shape)}
    ext |= {i: int(sp.sympify(s).subs(dims)) for i, s in zip(h.b_indices, d.graph.tensor(h.b).shape)}
    for ref, definition in h.where:  # p[n, k] = exp(logits[n, k] - lse[n])
        vals[str(ref.base.label)] = reference.evaluate(definition.subs(dims), ref.indices, vals, ext)
    return reference.evaluate(h.expr.subs(dims), h.a_indices + h.b_indices, vals, ext)


SMALL = [n for n in soc.NAMES if has_small_hessian(soc.layer(n).graph)]


@pytest.mark.parametrize("name", SMALL)
def test_hessian_index_form_matches_torch_hessian(name):
    """Every block of the printed Hessian of sum g·y (of the loss, for a scalar output) equals
    torch.autograd.functional.hessian."""
    torch = torch_or_skip()
    d = soc.layer(name)
    so = second_order(d)
    label, args = soc.cases(name)[0]
    diff = soc.differentiable(d)
    _, ups = soc.directions(d, args, reference.forward(d, args))
    fixed = {k: torch.tensor(v) for k, v in args.items() if k not in diff}

    def total(*xs):
        outs = soc.torch_forward(name, {**fixed, **dict(zip(diff, xs))})
        return sum((torch.as_tensor(ups[d.upstream(o.name)], dtype=torch.float64) * outs[o.name]).sum()
                   for o in d.outputs)

    want = torch.autograd.functional.hessian(total, tuple(torch.tensor(np.asarray(args[a], np.float64))
                                                          for a in diff))
    for (a, b), h in so.hessians.items():
        upstream = {} if all(not o.shape for o in d.outputs) else ups  # d²loss: g = 1
        got = _hessian_values(so, h, args, upstream)
        assert_close(name, f"{a},{b} Hessian", got, want[diff.index(a)][diff.index(b)].numpy(), 1e-10,
                     f"torch.autograd.functional.hessian ({label})")


def test_cross_entropy_hessian_reads_diag_p_minus_p_p_transpose_over_n():
    h = second_order("cross_entropy").hessians[("logits", "logits")]
    (p, definition), = h.where
    n, k = h.a_indices
    r, t = h.b_indices
    base = p.base
    assert sp.srepr(definition) == sp.srepr(sp.exp(sp.IndexedBase("logits", real=True)[n, k]
                                                   - sp.IndexedBase("lse", real=True)[n]))
    N = sp.Symbol("N", integer=True, positive=True)
    want = sp.KroneckerDelta(n, r) * (base[n, k] * sp.KroneckerDelta(k, t) - base[n, k] * base[n, t]) / N
    assert sp.expand(h.expr - want) == 0, h.expr
    assert "p[n, k]" in sp.sstr(h.expr) or "p[n,k]" in str(h.expr)


def test_mse_hessian_is_two_over_nc_delta():
    hs = second_order("mse").hessians
    N, C = (sp.Symbol(s, integer=True, positive=True) for s in "NC")
    for (a, b), sign in {("pred", "pred"): 1, ("pred", "target"): -1, ("target", "target"): 1}.items():
        h = hs[(a, b)]
        (i, j), (r, t) = h.a_indices, h.b_indices
        want = sign * 2 * sp.KroneckerDelta(i, r) * sp.KroneckerDelta(j, t) / (N * C)
        assert sp.simplify(h.expr - want) == 0, (a, b, h.expr)


def test_quadratic_form_hessian_is_a_plus_a_transpose_symbolically():
    h = second_order(soc.layer("mc_quadratic")).hessians[("x", "x")]
    (a,), (b,) = h.a_indices, h.b_indices
    A = sp.IndexedBase("A", real=True)
    assert sp.simplify(h.expr - (A[a, b] + A[b, a])) == 0, h.expr


def test_logistic_loss_hessian_is_xt_diag_p_one_minus_p_x():
    d = soc.layer("mc_logistic")
    so = second_order(d)
    _, args = soc.cases("mc_logistic")[0]
    got = _hessian_values(so, so.hessians[("w", "w")], args)
    X, y, w = args["X"], args["y"], args["w"]
    p = 1 / (1 + np.exp(-y * (X @ w)))
    assert_close("mc_logistic", "w,w Hessian", got, X.T @ np.diag(p * (1 - p)) @ X, 1e-12, "X^T diag(p(1-p)) X")


def test_layers_with_reductions_get_no_index_form_hessian():
    assert not second_order("softmax").hessians and not second_order("linear").hessians
    assert second_order("tanh").hessians and second_order("cross_entropy").hessians


# --- steps and cache ------------------------------------------------------------------------------

def test_steps_are_recorded_as_data_in_order():
    so = second_order("cross_entropy")
    kinds = [s.kind for s in so.steps]
    assert kinds == sorted(kinds, key=["definition", "tangent", "program", "hvp", "hessian"].index)
    data = so.as_dict()
    assert [s["kind"] for s in data["steps"]] == kinds
    assert data["hvp_outputs"] == {"logits": "dlogits_dot"}
    assert "where p[n, k] = exp(-lse[n] + logits[n, k])" in so.steps_of("hessian")[0].note


def test_cli_order_2_prints_tangents_hvp_and_hessian(capsys):
    from symgrad.derive_cmd import main

    assert main(["cross_entropy", "--order", "2"]) == 0
    out = capsys.readouterr().out
    assert "tangent     lse_dot[n] = z_dot[n]/z[n]" in out
    assert "hvp         dlogits_dot[n, k]" in out
    assert "hessian     d2loss/(dlogits[n, k] dlogits[r, t]) = " in out
    assert "where p[n, k] = exp(-lse[n] + logits[n, k])" in out


def test_a_changed_definition_gets_its_own_second_order_derivation(tmp_path, monkeypatch):
    """The cache key is the definition itself: the same name with another forward derives again."""
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))

    def square(G):
        N = G.dims("N")[0]
        x = G.input("x", (N,))
        (i,) = G.indices(i=N)
        G.output(G.bind("y", (i,), x[i] ** 2))

    def cube(G):
        N = G.dims("N")[0]
        x = G.input("x", (N,))
        (i,) = G.indices(i=N)
        G.output(G.bind("y", (i,), x[i] ** 3))

    d2, d3 = derive.define("t_power", square), derive.define("t_power", cube)
    assert definition_key(d2.graph) != definition_key(d3.graph)
    assert definition_key(d2.graph) == definition_key(derive.define("t_power", square).graph)
    x = np.array([0.5, -2.0])
    for d, second in ((d2, 2.0 + 0 * x), (d3, 6 * x)):
        so = second_order(d)
        hv = reference.forward(so.hvp, {"x": x, "g": np.ones(2), "x_dot": np.ones(2)})["dx_dot"]
        np.testing.assert_allclose(hv, second)
    assert len(list((tmp_path / "derivations").glob("t_power-order2-*.pickle"))) == 2
