"""derive.verify(..., order=2) and `symgrad verify --order 2`: hand-derived Hessians and
Hessian-vector products accepted when right, rejected with a counterexample when wrong (the
missing -p p^T of cross-entropy, the dropped half of x^T A x's A + A^T, a factor 2), symbolic
equivalence of a SymPy Hessian, signature errors, the CLI's exit status.

The hand-derived Hessians are written here, from the math alone; nothing in the library writes
one. Each layer's HVP kernel compiles once (about a second), so the layers are few and small:
cross_entropy, softmax, mse and the matrixcalculus.org examples of tests/second_order_cases.py."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from symgrad import derive
from symgrad.derive.verify import candidate_symbols, verify
from symgrad.verify_cmd import main
from tests import second_order_cases as soc
from tests.verify_cli import candidates_file, run_cli


def probs(logits):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def block_diagonal(rows):
    """(N, V, V) per-row Hessians -> the (N, V, N, V) Hessian, zero between rows."""
    return np.einsum("nkt,nr->nkrt", rows, np.eye(rows.shape[0]))


# --- cross-entropy: H = (diag(p) - p p^T) / N per row ------------------------------------------

def ce_hessian(logits):
    p = probs(logits)
    N, V = p.shape
    return block_diagonal((np.einsum("nk,kt->nkt", p, np.eye(V)) - np.einsum("nk,nt->nkt", p, p)) / N)


def ce_hessian_without_outer_product(logits):
    """diag(p) / N: the -p p^T term forgotten."""
    p = probs(logits)
    return block_diagonal(np.einsum("nk,kt->nkt", p, np.eye(p.shape[1])) / p.shape[0])


def ce_hvp(g, v, logits):
    p = probs(logits)
    return g * p * (v - (p * v).sum(-1, keepdims=True)) / p.shape[0]


def ce_hvp_without_outer_product(g, v, logits):
    return g * probs(logits) * v / logits.shape[0]


def test_cross_entropy_full_hessian_diag_p_minus_p_pt_over_n_is_accepted():
    report = verify("cross_entropy", "logits", ce_hessian, order=2)
    assert report.verdict == "matches", str(report)
    assert report.order == 2 and report.form.startswith("full Hessian candidate(**inputs)")
    assert all("H whole" in c.fd_mode for c in report.cases)  # small: compared element by element
    assert "large logits (+-1e3)" in [c.label for c in report.cases]


def test_cross_entropy_hvp_is_accepted_and_says_it_saw_an_hvp():
    report = verify("cross_entropy", "logits", ce_hvp, order=2)
    assert report.verdict == "matches", str(report)
    assert report.form.startswith("HVP candidate(g, v, **inputs)")
    assert "form: HVP candidate(g, v, **inputs)" in str(report)
    assert report.max_abs_error < 1e-12 and report.fd_max_abs_error < 1e-6


def test_cross_entropy_hessian_missing_minus_p_pt_is_rejected_with_a_counterexample():
    report = verify("cross_entropy", "logits", ce_hessian_without_outer_product, order=2)
    assert report.verdict == "wrong", str(report)
    ce = report.counterexample
    assert ce.quantity == "H" and ce.got.shape == ce.expected.shape == 2 * ce.inputs["logits"].shape
    # the counterexample is a true one: the hand-written matrix disagrees with p p^T put back
    np.testing.assert_allclose(ce.expected, ce_hessian(ce.inputs["logits"]), atol=1e-12)
    assert ce.got_value != pytest.approx(ce.expected_value)
    assert "candidate H = " in str(report) and ce.upstream == {}  # a Hessian's candidate sees no g


def test_cross_entropy_hvp_missing_minus_p_pt_is_rejected_showing_the_direction():
    report = verify("cross_entropy", "logits", ce_hvp_without_outer_product, order=2)
    assert report.verdict == "wrong"
    ce = report.counterexample
    assert ce.quantity == "Hv" and set(ce.direction) == {"v"} and set(ce.upstream) == {"g"}
    want = ce_hvp(ce.upstream["g"], ce.direction["v"], ce.inputs["logits"])
    np.testing.assert_allclose(ce.expected, want, atol=1e-12)
    assert "  v = " in str(report) and "at Hv[" in str(report)


def test_cross_entropy_sympy_hessian_is_proved_and_the_missing_term_is_shown():
    right = "KroneckerDelta(n, r)*(p[n, k]*KroneckerDelta(k, t) - p[n, k]*p[n, t])/N"
    report = verify("cross_entropy", "logits", right, order=2)
    assert report.verdict == "equivalent", str(report)
    assert report.form.startswith("SymPy Hessian in index form")
    wrong = verify("cross_entropy", "logits", "KroneckerDelta(n, r)*p[n, k]*KroneckerDelta(k, t)/N",
                   order=2)
    assert wrong.verdict == "wrong" and wrong.counterexample is not None
    assert "-p[n, k]*p[n, t]*delta(n,r)/N" in wrong.difference, wrong.difference


# --- softmax and mse: HVPs --------------------------------------------------------------------

def softmax_hvp(g, v, x):
    """The tangent of dx = s (g - <g, s>) along v: ds = s (v - <s, v>)."""
    s = probs(x)
    ds = s * (v - (s * v).sum(-1, keepdims=True))
    return ds * (g - (g * s).sum(-1, keepdims=True)) - s * (g * ds).sum(-1, keepdims=True)


def test_softmax_hvp_is_accepted_and_one_without_the_tangent_of_the_sum_is_not():
    assert verify("softmax", "x", softmax_hvp, order=2).verdict == "matches"

    def forgot(g, v, x):  # d<g, s> treated as a constant
        s = probs(x)
        return s * (v - (s * v).sum(-1, keepdims=True)) * (g - (g * s).sum(-1, keepdims=True))
    report = verify("softmax", "x", forgot, order=2)
    assert report.verdict == "wrong" and report.counterexample.quantity == "Hv"


def test_mse_hvp_is_accepted_a_factor_2_is_caught_and_the_index_form_is_proved():
    assert verify("mse", "pred", lambda g, v, pred: 2 * g * v / pred.size, order=2).ok
    report = verify("mse", "pred", lambda g, v, pred: g * v / pred.size, order=2)
    assert report.verdict == "wrong"
    ce = report.counterexample
    np.testing.assert_allclose(ce.got, ce.expected / 2)  # exactly half: the factor 2
    proved = verify("mse", "pred", "2*KroneckerDelta(i, r)*KroneckerDelta(j, t)/(N*C)", order=2)
    assert proved.verdict == "equivalent", str(proved)


# --- the matrixcalculus.org layers --------------------------------------------------------------

def test_quadratic_form_hessian_a_plus_at_is_proved_equivalent_symbolically():
    d = soc.layer("mc_quadratic")
    ns = candidate_symbols(d, "x", order=2)
    A, a, r = ns["A"], ns["a"], ns["r"]
    report = verify(d, "x", A[a, r] + A[r, a], order=2)
    assert report.verdict == "equivalent", str(report)
    assert report.symbolic.startswith("proved")
    # the candidate's own index names
    assert verify(d, "x", "A[p, q] + A[q, p]", order=2, indices=("p", "q")).verdict == "equivalent"


def test_quadratic_form_hessian_with_the_symmetric_half_dropped_is_rejected():
    d = soc.layer("mc_quadratic")
    report = verify(d, "x", "A[a, r]", order=2)
    assert report.verdict == "wrong" and report.difference == "A[r, a]", str(report)
    ce = report.counterexample
    np.testing.assert_allclose(ce.expected, ce.inputs["A"] + ce.inputs["A"].T)
    fn = verify(d, "x", lambda x, A: A, order=2)
    assert fn.verdict == "wrong" and fn.counterexample.quantity == "H"
    assert verify(d, "x", lambda x, A: A + A.T, order=2).verdict == "matches"
    twice = verify(d, "x", lambda x, A: 2 * A, order=2)  # right only for a symmetric A
    assert twice.verdict == "wrong"


def test_logistic_loss_hessian_xt_diag_p_one_minus_p_x_is_accepted():
    """sum_n log(1 + exp(-y_n x_n.w)): H = X^T diag(y^2 p (1 - p)) X, p = sigmoid(y X w); the
    matrixcalculus.org form X^T diag(p (1 - p)) X is the case y in {-1, 1}."""
    def hessian(X, y, w):
        p = 1 / (1 + np.exp(-y * (X @ w)))
        return X.T @ np.diag(y ** 2 * p * (1 - p)) @ X
    report = verify(soc.layer("mc_logistic"), "w", hessian, order=2)
    assert report.verdict == "matches", str(report)


def test_low_rank_hvps_in_u_and_v_are_accepted():
    """||T - U V^T||^2: H_UU v = 2 v V^T V, H_VV v = 2 v U^T U."""
    d = soc.layer("mc_lowrank")
    assert verify(d, "U", lambda g, v, V: 2 * g * v @ (V.T @ V), order=2).verdict == "matches"
    assert verify(d, "V", lambda g, v, U: 2 * g * v @ (U.T @ U), order=2).verdict == "matches"
    # the Gram matrix of the wrong factor: the same shape, the wrong curvature
    assert verify(d, "V", lambda g, v, V: 2 * g * v @ (V.T @ V), order=2).verdict == "wrong"


# --- the direction's name, ties, bad input ------------------------------------------------------

def scaled(G):
    """y = x * v, elementwise: a layer with an argument named v"""
    N = G.dims("N")[0]
    x, v = G.input("x", (N,)), G.input("v", (N,))
    (i,) = G.indices(i=N)
    G.output(G.bind("y", (i,), x[i] * x[i] * v[i]))


def test_a_layer_with_an_argument_named_v_takes_the_direction_as_wrt_dot():
    d = derive.define("t_scaled", scaled)
    report = verify(d, "x", lambda g, x_dot, v: 2 * g * v * x_dot, order=2)
    assert report.verdict == "matches" and "x_dot" in report.form, str(report)
    assert verify(d, "x", lambda g, v: 2 * g * v, order=2).verdict == "error"  # v: the argument


@pytest.mark.parametrize("layer, wrt, cand, needle", [
    ("softmax", "x", lambda g, x: g, "does not take the direction 'v'"),
    ("cross_entropy", "logits", lambda g, logits: g, "no upstream gradient"),
    ("cross_entropy", "logits", lambda logits: logits, "a full Hessian by logits has shape"),
    ("cross_entropy", "logits", lambda g, v, logits: v[:, :1], "H v must have the shape of logits"),
    ("cross_entropy", "logits", lambda g, v, logits: 1 / 0, "raised ZeroDivisionError"),
    ("cross_entropy", "logits", lambda g, v, logits: v * np.nan, "returned nan"),
    ("cross_entropy", "logits", lambda g, v, W: v, "wrong signature: parameter 'W'"),
    ("cross_entropy", "targets", ce_hvp, "'targets' is not differentiable (integer)"),
    ("mse", "pred,target", ce_hvp, "one argument at a time"),
    ("softmax", "x", "s[i, j]", "a Hessian in index form"),
    ("cross_entropy", "logits", "p[n, k]*p[n, q]", "free index q"),
    ("cross_entropy", "logits", 42, "got int"),
])
def test_bad_order_2_candidates_give_an_error_verdict_with_one_line(layer, wrt, cand, needle):
    report = verify(layer, wrt, cand, order=2)
    assert report.verdict == "error" and report.order == 2, str(report)
    assert needle in report.message and "\n" not in report.message, report.message


def test_order_other_than_1_or_2_is_an_error():
    report = verify("mse", "pred", ce_hvp, order=3)
    assert report.verdict == "error" and "order=3" in report.message


def test_report_as_dict_is_json_with_order_form_and_direction():
    out = json.loads(json.dumps(verify("cross_entropy", "logits", ce_hvp_without_outer_product,
                                       order=2).as_dict()))
    assert out["order"] == 2 and out["verdict"] == "wrong" and out["form"].startswith("HVP")
    assert out["counterexample"]["quantity"] == "Hv" and "v" in out["counterexample"]["direction"]
    assert verify("mse", "pred", lambda g, pred: g, order=1).as_dict()["order"] == 1


# --- the command line ---------------------------------------------------------------------------

CANDIDATES = textwrap.dedent('''
    import numpy as np

    def _p(logits):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def hessian(logits):
        p = _p(logits)
        N, V = p.shape
        rows = (np.einsum("nk,kt->nkt", p, np.eye(V)) - np.einsum("nk,nt->nkt", p, p)) / N
        return np.einsum("nkt,nr->nkrt", rows, np.eye(N))

    def no_outer(g, v, logits):
        return g * _p(logits) * v / logits.shape[0]

    def first_order(g, logits):
        return g
''')


@pytest.fixture
def cand(tmp_path):
    return candidates_file(tmp_path, CANDIDATES, "ce.py")


def run(capsys, *argv):
    return run_cli(capsys, main, *argv)


@pytest.mark.parametrize("func, extra, code, needle", [
    ("hessian", [], 0, "MATCHES"),
    ("no_outer", [], 1, "counterexample"),
    ("first_order", [], 2, "no upstream gradient"),
    ("hessian", ["--wrt", "logits,targets"], 2, "one argument at a time"),
    ("hessian", ["--order", "3"], 2, "invalid choice"),
])
def test_cli_order_2_exit_status(cand, capsys, func, extra, code, needle):
    argv = [f"{cand}:{func}", "--layer", "cross_entropy", "--wrt", "logits", "--order", "2"]
    for k in range(0, len(extra), 2):
        argv[argv.index(extra[k]) + 1] = extra[k + 1]
    got, out, err = run(capsys, *argv)
    assert got == code, out + err
    assert needle in (out if code < 2 else err)
    if code == 2:
        assert out == "" and len(err.strip().splitlines()) == 1
    else:
        assert "d2/(dlogits dlogits) (order 2)" in out


def test_cli_order_2_json(cand, capsys):
    code, out, _ = run(capsys, f"{cand}:no_outer", "--layer", "cross_entropy", "--wrt", "logits",
                       "--order", "2", "--json")
    data = json.loads(out)
    assert code == 1 and data["order"] == 2 and data["counterexample"]["quantity"] == "Hv"
