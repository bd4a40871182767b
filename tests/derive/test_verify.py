"""derive.verify: symbolic equivalence, numeric checks, counterexamples, bad input, the report,
and symgrad.testing.assert_gradient."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive.equivalence import Proof
from symgrad.derive.verify import VERDICTS, candidate_symbols, verify
from symgrad.testing import assert_gradient
from tests.defined_layers import bilinear, swish
from tests.layers.linear import linear_dW_outer_of_sums
from tests.layers.softmax import softmax_dx_jacobian, softmax_dx_no_cross_term

# the module, not the function `derive.verify` that derive/__init__ exports under the same name
verify_module = importlib.import_module("symgrad.derive.verify")


def ns(layer, wrt):
    return candidate_symbols(layer, wrt)


# --- SymPy candidates ---------------------------------------------------------------------------

def softmax_symbols():
    n = ns("softmax", "x")
    return n["s"], n["g"], n["x"], n["i"], n["j"], n["k"], n["n"]


def test_softmax_sympy_candidate_in_the_engines_names_is_proved_equivalent():
    s, g, x, i, j, k, n = softmax_symbols()
    cand = s[i, j] * g[i, j] - s[i, j] * sp.Sum(g[i, k] * s[i, k], (k, 0, n - 1))
    report = verify("softmax", "x", cand)
    assert report.verdict == "equivalent", str(report)
    assert report.ok and report.max_abs_error < 1e-12


def test_softmax_explicit_jacobian_with_kronecker_delta_and_plain_symbols_is_proved_equivalent():
    i, j, k, n = sp.symbols("i j k n")  # no assumptions: symbols are matched by name
    S, G = sp.IndexedBase("s"), sp.IndexedBase("g")
    cand = sp.Sum(G[i, k] * S[i, k] * (sp.KroneckerDelta(k, j) - S[i, j]), (k, 0, n - 1))
    report = verify("softmax", "x", cand)
    assert report.verdict == "equivalent", str(report)


def test_softmax_written_from_x_alone_is_proved_equivalent_by_inlining_definitions():
    i, j, k, l, n = sp.symbols("i j k l n")
    X, G = sp.IndexedBase("x"), sp.IndexedBase("g")
    s = lambda a, b: sp.exp(X[a, b]) / sp.Sum(sp.exp(X[a, l]), (l, 0, n - 1))  # noqa: E731
    cand = sp.Sum(G[i, k] * s(i, k) * (sp.KroneckerDelta(k, j) - s(i, j)), (k, 0, n - 1))
    report = verify("softmax", "x", cand)
    assert report.verdict == "equivalent", str(report)
    assert "inlining" in report.symbolic
    # exp(x) without the max subtracted overflows at large logits: right, but said so
    assert "not finite" in report.message and "large logits" in report.message


def test_layernorm_textbook_sympy_form_is_proved_equivalent():
    n = ns("layernorm", "x")
    i, j, k, C, x, g, gamma, mean, rstd = (n[v] for v in "i j k C x g gamma mean rstd".split())
    cand = (rstd[i] * gamma[j] * g[i, j] - rstd[i] / C * sp.Sum(gamma[k] * g[i, k], (k, 0, C - 1))
            - (x[i, j] - mean[i]) * rstd[i] ** 3 / C
            * sp.Sum(gamma[k] * g[i, k] * (x[i, k] - mean[i]), (k, 0, C - 1)))
    assert verify("layernorm", "x", cand).verdict == "equivalent"


def test_wrong_softmax_sympy_candidate_shows_the_missing_cross_term():
    s, g, x, i, j, k, n = softmax_symbols()
    report = verify("softmax", "x", s[i, j] * g[i, j])
    assert report.verdict == "wrong"
    assert report.difference is not None
    diff = report.difference.replace(" ", "")
    assert "-s[i,j]*sum_" in diff and "g[i,k]*s[i,k]" in diff, report.difference
    assert "derived - candidate = -s[i, j]*sum_k(" in str(report)
    ce = report.counterexample
    assert ce is not None and ce.dims == {"N": 1, "n": 1}  # the smallest shape already shows it


def test_wrong_layernorm_sympy_candidate_shows_the_dropped_variance_term():
    n = ns("layernorm", "x")
    i, j, k, C, g, gamma, rstd = (n[v] for v in "i j k C g gamma rstd".split())
    cand = rstd[i] * gamma[j] * g[i, j] - rstd[i] / C * sp.Sum(gamma[k] * g[i, k], (k, 0, C - 1))
    report = verify("layernorm", "x", cand)
    assert report.verdict == "wrong"
    assert "rstd[i]**3" in report.difference and "x[i, k]" in report.difference


def test_sympy_candidate_with_its_own_index_names_via_indices():
    a, b, c, n = sp.symbols("a b c n")
    S, G = sp.IndexedBase("s"), sp.IndexedBase("g")
    cand = S[a, b] * (G[a, b] - sp.Sum(G[a, c] * S[a, c], (c, 0, n - 1)))
    assert verify("softmax", "x", cand, indices=(a, b)).verdict == "equivalent"
    # a bound index named like a free one after renaming must not be captured
    j2 = sp.Symbol("j")
    cand2 = S[a, b] * (G[a, b] - sp.Sum(G[a, j2] * S[a, j2], (j2, 0, n - 1)))
    assert verify("softmax", "x", cand2, indices=("a", "b")).verdict == "equivalent"


def test_sympy_candidate_as_a_string():
    report = verify("mse", "pred", "2*g*(pred[i, j] - target[i, j])/(N*C)")
    assert report.verdict == "equivalent", str(report)
    assert verify("mse", "pred", "g*(pred[i, j] - target[i, j])/(N*C)").verdict == "wrong"


def test_cross_entropy_sympy_candidate_with_a_one_hot_delta_is_equivalent():
    report = verify("cross_entropy", "logits",
                    "g/N*(exp(logits[n, k])/Sum(exp(logits[n, l]), (l, 0, V - 1)) "
                    "- KroneckerDelta(k, targets[n]))")
    assert report.verdict == "equivalent", str(report)


def test_equivalent_is_never_reported_when_the_numbers_disagree(monkeypatch):
    """Even if the symbolic check (wrongly) claimed a proof, the numeric check overrules it."""
    monkeypatch.setattr(verify_module, "prove", lambda *a, **k: Proof(True, None, "claimed"))
    s, g, x, i, j, k, n = softmax_symbols()
    report = verify("softmax", "x", s[i, j] * g[i, j])
    assert report.verdict == "wrong"


# --- function candidates and the report ---------------------------------------------------------

def test_function_candidate_matches_and_report_lists_the_edge_cases():
    report = verify("softmax", "x", softmax_dx_jacobian)
    assert report.verdict == "matches"
    labels = [c.label for c in report.cases]
    for want in ("all dims 1", "batch of one", "feature size one", "large logits (+-1e3)"):
        assert want in labels
    assert verify("layernorm", "beta", lambda g: g.sum(0)).cases[-1].label == "near-constant rows"
    assert "masked positions" in [c.label for c in verify("attention", "v", lambda g, q, k, v: v).cases]


def test_counterexample_is_shrunk_to_the_smallest_failing_shape():
    report = verify("linear", "W", linear_dW_outer_of_sums)
    ce = report.counterexample
    assert report.verdict == "wrong"
    assert ce.dims["N"] == 2 and ce.dims["I"] == 1 and ce.dims["O"] == 1  # right at N = 1
    assert set(ce.inputs) == {"x", "W", "b"} and set(ce.upstream) == {"g"}
    assert ce.got_value != pytest.approx(ce.expected_value)
    expected = ce.inputs["x"].T @ ce.upstream["g"]
    np.testing.assert_allclose(ce.expected, expected)


def test_report_as_dict_is_json_and_carries_the_verdict_and_errors():
    for cand in (softmax_dx_jacobian, softmax_dx_no_cross_term, lambda g, x: 1 / 0):
        out = json.loads(json.dumps(verify("softmax", "x", cand).as_dict()))
        assert out["verdict"] in VERDICTS and "x" in out["errors"]
    out = verify("softmax", "x", softmax_dx_no_cross_term).as_dict()
    assert out["verdict"] == "wrong" and out["counterexample"]["index"] is not None
    assert out["errors"]["x"]["max_abs_error"] > 0.01


def test_seed_makes_the_report_reproducible():
    a = verify("linear", "W", linear_dW_outer_of_sums, seed=3).as_dict()
    b = verify("linear", "W", linear_dW_outer_of_sums, seed=3).as_dict()
    assert a == b


def test_explicit_shapes_option():
    report = verify("softmax", "x", softmax_dx_jacobian, shapes=[{"N": 1, "n": 7}, {"N": 5, "n": 2}])
    assert [c.dims for c in report.cases] == [{"N": 1, "n": 7}, {"N": 5, "n": 2}]
    assert verify("softmax", "x", softmax_dx_jacobian, shapes=[{"Q": 2}]).verdict == "error"


def test_scale_by_one_plus_1e3_is_caught_although_gradcheck_tolerances_would_pass_it():
    report = verify("softmax", "x", lambda g, x: softmax_dx_jacobian(g, x) * (1 + 1e-3))
    assert report.verdict == "wrong"


def test_unstable_candidate_returning_nan_at_large_logits_is_an_error_naming_the_case():
    def naive(g, x):
        s = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        return s * (g - (g * s).sum(-1, keepdims=True))
    report = verify("softmax", "x", naive)
    assert report.verdict == "error" and "large logits" in report.message


# --- layers defined by their forward alone ------------------------------------------------------

def test_defined_layer_swish_hand_derivation():
    d = derive.define("swish_t", swish)

    def dx(g, x):
        s = 0.5 * (1 + np.tanh(x / 2))
        return g * (s + x * s * (1 - s))
    assert verify(d, "x", dx).verdict == "matches"
    assert verify(d, "x", lambda g, x: g * 0.5 * (1 + np.tanh(x / 2))).verdict == "wrong"


def test_defined_layer_bilinear_transpose_mistake():
    d = derive.define("bilinear_t", bilinear)
    assert verify(d, "A", lambda g, x, y: np.einsum("n,ni,nj->ij", g, x, y)).verdict == "matches"
    report = verify(d, "x", lambda g, y, A: g[:, None] * (y @ A), shapes=[{"P": 2, "Q": 2}])
    assert report.verdict == "wrong"  # forgot A's transpose (square, so the shapes still fit)
    assert report.counterexample is not None


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cand, needle", [
    (lambda g, x: 1 / 0, "raised ZeroDivisionError"),
    (lambda g, x: g[:, :1], "returned shape"),
    (lambda g, x: g * np.nan, "returned nan"),
    (lambda g, x: None, "returned None"),
    (lambda g, x: "dx", "not a real array"),
    (lambda grad, x: grad, "wrong signature: parameter 'grad'"),
    (lambda g, x, W: g, "wrong signature: parameter 'W'"),
    (42, "SymPy expression or a function"),
])
def test_bad_candidate_gives_error_verdict_with_a_clear_message(cand, needle):
    report = verify("softmax", "x", cand)
    assert report.verdict == "error" and not report.ok
    assert needle in report.message, report.message
    assert "\n" not in report.message


@pytest.mark.parametrize("kwargs, needle", [
    ({"target": "nosuch"}, "unknown layer"),
    ({"wrt": "targets", "target": "cross_entropy"}, "'targets' is not differentiable"),
    ({"wrt": "y"}, "has no argument 'y'"),
    ({"dtype": "float32"}, "float64"),
    ({"dtype": "nonsense"}, "unknown dtype"),
    ({"eps": 0.0}, "eps"),
    ({"trials": -1}, "trials"),
    ({"target": 3.5}, "layer name or a Derivation"),
])
def test_bad_options_give_error_verdict(kwargs, needle):
    args = {"target": "softmax", "wrt": "x", **kwargs}
    report = verify(args.pop("target"), args.pop("wrt"), softmax_dx_jacobian, **args)
    assert report.verdict == "error" and needle in report.message, report.message


@pytest.mark.parametrize("cand, needle", [
    ("s[i, j]*h[i, j]", "unknown tensor 'h'"),
    ("s[i]*g[i, j]", "rank 2"),
    ("s[i, q]*g[i, q]", "free index q"),
    ("s[i, j] +* g", "cannot parse"),
])
def test_bad_sympy_candidate_gives_error_verdict(cand, needle):
    report = verify("softmax", "x", cand)
    assert report.verdict == "error" and needle in report.message, report.message


# --- assert_gradient ----------------------------------------------------------------------------

def test_assert_gradient_passes_and_returns_the_report():
    assert assert_gradient("softmax", "x", softmax_dx_jacobian).verdict == "matches"


def test_assert_gradient_fails_with_the_report_as_message():
    with pytest.raises(AssertionError) as e:
        assert_gradient("softmax", "x", softmax_dx_no_cross_term)
    assert "WRONG" in str(e.value) and "counterexample" in str(e.value)
    with pytest.raises(AssertionError, match="not proved symbolically"):
        assert_gradient("softmax", "x", softmax_dx_jacobian, require_equivalent=True)
