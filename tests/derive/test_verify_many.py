"""derive.verify with several wrt (`derive.verify_many`): a backward pass returning (dx, dW, db)
at once, as hand-written ones do, is judged gradient by gradient; one verdict over all, the wrong
ones named with a counterexample each; one-line errors for a tuple that does not fit; the CLI's
`--wrt x,W,b` with exit status 0 / 1 / 2 and its JSON."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from symgrad.derive.verify import verify
from symgrad.derive.verify_many import GradientsReport
from symgrad.testing import assert_gradient
from symgrad.verify_cmd import main
from tests.layers.layernorm import layernorm_dbeta, layernorm_dgamma, layernorm_dgamma_no_xhat, layernorm_dx
from tests.verify_cli import candidates_file, run_cli

SQUARE = [{"N": 3, "I": 2, "O": 3}, {"N": 2, "I": 4, "O": 2}, {"N": 4, "I": 1, "O": 4}]  # N == O


# CS231n-style affine_backward(dout, cache), with the cache passed by name
def linear_backward(g, x, W):
    return g @ W.T, x.T @ g, g.sum(axis=0)


def linear_backward_db_wrong_axis(g, x, W):
    return g @ W.T, x.T @ g, g.sum(axis=1)  # mistake: sums over the features, not the batch


def linear_backward_db_mean(g, x, W):
    return g @ W.T, x.T @ g, g.mean(axis=0)  # mistake: a spurious 1/N


def layernorm_backward(g, x, gamma, eps):
    return layernorm_dx(g, x, gamma, eps), layernorm_dgamma(g, x, eps), layernorm_dbeta(g)


# --- function candidates ------------------------------------------------------------------------

def test_right_linear_backward_returning_dx_dW_db_is_accepted():
    report = verify("linear", "x,W,b", linear_backward)
    assert isinstance(report, GradientsReport)
    assert report.verdict == "matches" and report.ok, str(report)
    assert report.wrt == ("x", "W", "b") and list(report.gradients) == ["x", "W", "b"]
    assert all(r.verdict == "matches" and r.max_abs_error < 1e-12
               for r in report.gradients.values())
    assert verify("linear", ("x", "W", "b"), lambda g, x, W: list(linear_backward(g, x, W))).ok


def test_gradients_may_be_named_in_any_order_and_any_subset():
    report = verify("linear", "b,x", lambda g, W: (g.sum(0), g @ W.T))
    assert report.ok and report.wrt == ("b", "x"), str(report)


def test_right_layernorm_backward_returning_dx_dgamma_dbeta_is_accepted():
    report = verify("layernorm", "x, gamma, beta", layernorm_backward)  # spaces are allowed
    assert report.ok and report.wrt == ("x", "gamma", "beta"), str(report)


def test_db_summed_over_the_wrong_axis_is_rejected_naming_db_with_a_counterexample():
    # at N == O the shapes fit, so only the numbers can tell
    report = verify("linear", "x,W,b", linear_backward_db_wrong_axis, shapes=SQUARE)
    assert report.verdict == "wrong" and not report.ok
    assert report.wrong == ["b"] and report.message == "db is wrong; dx and dW are right"
    assert report["x"].ok and report["W"].ok and report["x"].counterexample is None
    ce = report["b"].counterexample
    assert ce is not None and ce.wrt == "b" and ce.dims == {"N": 2, "I": 1, "O": 2}
    np.testing.assert_allclose(ce.expected, ce.upstream["g"].sum(axis=0))
    np.testing.assert_allclose(ce.got, ce.upstream["g"].sum(axis=1))
    text = str(report)
    assert text.startswith("verify linear dx, dW, db: WRONG\n  db is wrong; dx and dW are right")
    db = text[text.index("  db: WRONG"):]
    assert "counterexample (" in db and "at db[" in db and "candidate db =" in db
    assert "counterexample" not in text[:text.index("  db: WRONG")]  # only the wrong one has one


def test_db_summed_over_the_wrong_axis_at_other_shapes_is_an_error_naming_db_and_its_shape():
    report = verify("linear", "x,W,b", linear_backward_db_wrong_axis)
    assert report.verdict == "error"
    assert "as db (element 3 of 3), shape (4,); db must have the shape of b, (3,)" in report.message


def test_two_wrong_gradients_are_both_named_each_with_its_counterexample():
    def backward(g, x, W):
        return -g @ W.T, x.T @ g, g.mean(axis=0)  # dx sign, db 1/N
    report = verify("linear", "x,W,b", backward)
    assert report.wrong == ["x", "b"] and report.message == "dx and db are wrong; dW is right"
    assert report["x"].counterexample is not None and report["b"].counterexample is not None
    assert str(report).count("counterexample (") == 2


def test_wrong_layernorm_dgamma_is_named():
    def backward(g, x, gamma, eps):
        return layernorm_dx(g, x, gamma, eps), layernorm_dgamma_no_xhat(g, x, eps), g.sum(0)
    report = verify("layernorm", "x,gamma,beta", backward)
    assert report.verdict == "wrong" and report.wrong == ["gamma"], str(report)


def test_each_gradient_is_judged_exactly_as_a_single_wrt_would_judge_it():
    many = verify("linear", "x,W,b", linear_backward_db_mean, seed=5)
    one = verify("linear", "b", lambda g: g.mean(axis=0), seed=5)
    a, b = many["b"].as_dict(), one.as_dict()
    for key in ("verdict", "cases", "counterexample", "errors", "message"):
        assert a[key] == b[key], key


# --- errors, one line each ----------------------------------------------------------------------

@pytest.mark.parametrize("cand, needle", [
    (lambda g, x, W: (g @ W.T, x.T @ g), "returned a tuple of 2 arrays; wrt 'x,W,b' needs 3: "
                                         "(dx, dW, db), in that order"),
    (lambda g, x, W: g @ W.T, "returned an array of shape (4, 3), not a tuple"),
    (lambda g, x, W: (g @ W.T, x.T @ g[:, :1], g.sum(0)), "as dW (element 2 of 3), shape (3, 1); "
                                                         "dW must have the shape of W, (3, 3)"),
    (lambda g, x, W: (g @ W.T, x.T @ g, None), "as db (element 3 of 3), None"),
    (lambda g, x, W: 1 / 0, "raised ZeroDivisionError"),
    (lambda g, dW: g, "wrong signature: parameter 'dW'"),
])
def test_a_candidate_that_does_not_fit_is_an_error_in_one_line(cand, needle):
    report = verify("linear", "x,W,b", cand)
    assert report.verdict == "error" and not report.ok
    assert needle in report.message, report.message
    assert "\n" not in report.message


def test_misshapen_element_is_reported_before_any_gradient_is_judged():
    report = verify("linear", "x,W,b", lambda g, x, W: (g @ W.T, x.T @ g, g.sum(0, keepdims=True)))
    assert report.verdict == "error" and "as db (element 3 of 3), shape (1, 3)" in report.message
    assert report.gradients["x"].cases == [] and report.not_checked == ["W", "b"]
    assert "dW: not checked" in str(report)


@pytest.mark.parametrize("wrt, needle", [
    ("x,W,x", "wrt 'x,W,x' names 'x' twice"),
    ("x,W,q", "linear has no argument 'q'; the differentiable arguments are x, W, b"),
    ("x,,b", "has an empty name"),
    (("x", 3), "wrt must name an argument"),
    ((), "has an empty name"),
])
def test_bad_wrt_list_is_an_error(wrt, needle):
    report = verify("linear", wrt, linear_backward)
    assert report.verdict == "error" and needle in report.message, report.message


def test_a_tuple_checked_against_one_wrt_suggests_naming_them_all():
    report = verify("linear", "x", linear_backward)
    assert report.verdict == "error" and "pass wrt='x,W,b'" in report.message, report.message


# --- SymPy candidates: a tuple of expressions, each proved ---------------------------------------

LINEAR_SYMPY = ("Sum(g[n, j]*W[k, j], (j, 0, O - 1))", "Sum(x[l, k]*g[l, j], (l, 0, N - 1))",
                "Sum(g[l, j], (l, 0, N - 1))")


def test_tuple_of_sympy_expressions_is_proved_gradient_by_gradient():
    report = verify("linear", "x,W,b", LINEAR_SYMPY)
    assert report.verdict == "equivalent" and report.kind == "sympy", str(report)
    assert all(r.symbolic.startswith("proved") for r in report.gradients.values())


def test_wrong_sympy_db_shows_its_difference():
    report = verify("linear", "x,W,b", LINEAR_SYMPY[:2] + ("Sum(g[l, j], (l, 0, N - 1))/N",))
    assert report.verdict == "wrong" and report.wrong == ["b"]
    assert report["b"].difference is not None and "derived - candidate" in str(report)


@pytest.mark.parametrize("cand, kwargs, needle", [
    (LINEAR_SYMPY[0], {}, "a single SymPy expression is the gradient by one argument"),
    (LINEAR_SYMPY[:2], {}, "tuple of 2 expressions; wrt 'x,W,b' needs 3"),
    (LINEAR_SYMPY[:2] + (linear_backward,), {}, "element 3 of the candidate (db) is a function"),
    (LINEAR_SYMPY[:2] + ("h[j]",), {}, "db (element 3 of the candidate): "),
    (LINEAR_SYMPY, {"indices": ("a", "b")}, "indices= maps a name"),
    (linear_backward, {"indices": {"x": ("a", "b")}}, "indices= applies to SymPy candidates only"),
])
def test_bad_sympy_tuple_is_an_error(cand, kwargs, needle):
    report = verify("linear", "x,W,b", cand, **kwargs)
    assert report.verdict == "error" and needle in report.message, report.message


def test_sympy_tuple_with_its_own_index_names_via_an_indices_dict():
    cand = LINEAR_SYMPY[:2] + ("Sum(g[l, a], (l, 0, N - 1))",)
    assert verify("linear", "x,W,b", cand, indices={"b": ("a",)}).verdict == "equivalent"


# --- the report as JSON, and assert_gradient ------------------------------------------------------

def test_as_dict_carries_one_entry_per_gradient():
    data = json.loads(json.dumps(
        verify("linear", "x,W,b", linear_backward_db_wrong_axis, shapes=SQUARE).as_dict()))
    assert data["wrt"] == ["x", "W", "b"] and data["verdict"] == "wrong" and data["ok"] is False
    assert data["wrong"] == ["b"] and data["not_checked"] == []
    assert list(data["gradients"]) == ["x", "W", "b"] and list(data["errors"]) == ["x", "W", "b"]
    assert [g["verdict"] for g in data["gradients"].values()] == ["matches", "matches", "wrong"]
    assert data["gradients"]["b"]["counterexample"]["dims"] == {"N": 2, "I": 1, "O": 2}
    assert data["gradients"]["x"]["counterexample"] is None
    assert data["errors"]["b"]["max_abs_error"] > 0.01


def test_assert_gradient_with_several_wrt():
    assert assert_gradient("linear", "x,W,b", linear_backward).ok
    with pytest.raises(AssertionError, match="db is wrong"):
        assert_gradient("linear", "x,W,b", linear_backward_db_mean)


# --- the command line ---------------------------------------------------------------------------

CANDIDATES = textwrap.dedent('''
    def right(g, x, W):
        return g @ W.T, x.T @ g, g.sum(axis=0)

    def wrong_db(g, x, W):
        return g @ W.T, x.T @ g, g.mean(axis=0)

    def two_arrays(g, x, W):
        return g @ W.T, x.T @ g

    sympy_right = ("Sum(g[n, j]*W[k, j], (j, 0, O - 1))", "Sum(x[l, k]*g[l, j], (l, 0, N - 1))",
                   "Sum(g[l, j], (l, 0, N - 1))")
''')


@pytest.fixture
def cand(tmp_path):
    return candidates_file(tmp_path, CANDIDATES, "backward.py")


def run(capsys, *argv):
    return run_cli(capsys, main, *argv)


def test_cli_right_backward_exits_0(cand, capsys):
    code, out, _ = run(capsys, f"{cand}:right", "--layer", "linear", "--wrt", "x,W,b")
    assert code == 0 and out.startswith("verify linear dx, dW, db: MATCHES")
    code, out, _ = run(capsys, f"{cand}:sympy_right", "--layer", "linear", "--wrt", "x,W,b")
    assert code == 0 and "EQUIVALENT" in out


def test_cli_wrong_db_exits_1_naming_db_with_a_counterexample(cand, capsys):
    code, out, _ = run(capsys, f"{cand}:wrong_db", "--layer", "linear", "--wrt", "x,W,b")
    assert code == 1 and "db is wrong; dx and dW are right" in out
    assert "  db: WRONG" in out and "counterexample" in out[out.index("  db: WRONG"):]


@pytest.mark.parametrize("spec, wrt, needle", [
    ("two_arrays", "x,W,b", "returned a tuple of 2 arrays; wrt 'x,W,b' needs 3"),
    ("right", "x,W,W", "names 'W' twice"),
    ("right", "x,W,z", "has no argument 'z'"),
])
def test_cli_candidate_or_wrt_that_does_not_fit_exits_2_with_one_line(cand, capsys, spec, wrt,
                                                                       needle):
    code, out, err = run(capsys, f"{cand}:{spec}", "--layer", "linear", "--wrt", wrt)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_cli_json_has_the_per_gradient_results(cand, capsys):
    code, out, _ = run(capsys, f"{cand}:wrong_db", "--layer", "linear", "--wrt", "x,W,b", "--json")
    data = json.loads(out)
    assert code == 1 and data["verdict"] == "wrong" and data["wrong"] == ["b"]
    assert data["gradients"]["b"]["counterexample"]["index"] is not None
    assert data["gradients"]["W"]["verdict"] == "matches"
    code, out, _ = run(capsys, f"{cand}:two_arrays", "--layer", "linear", "--wrt", "x,W,b",
                       "--json")
    data = json.loads(out)
    assert code == 2 and data["verdict"] == "error" and "needs 3" in data["message"]
