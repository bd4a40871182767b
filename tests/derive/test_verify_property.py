"""A wrong candidate is never reported as right: correct candidates, mutated (a term dropped, a
sign flipped, a term or the whole scaled by 1 + 1e-3), are every one rejected."""

from __future__ import annotations

import numpy as np
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad.derive.verify import verify
from tests.layers import spec

# Correct SymPy candidates, written by hand in the layer's index notation (not the engine's form).
SYMPY_RIGHT = [
    ("softmax", "x", "s[i, j]*g[i, j] - s[i, j]*Sum(g[i, k]*s[i, k], (k, 0, n - 1))"),
    ("log_softmax", "x", "g[i, j] - exp(x[i, j] - lse[i])*Sum(g[i, k], (k, 0, n - 1))"),
    ("linear", "x", "Sum(g[n, j]*W[k, j], (j, 0, O - 1))"),
    ("linear", "W", "Sum(x[l, k]*g[l, j], (l, 0, N - 1))"),
    ("layernorm", "x", "rstd[i]*gamma[j]*g[i, j] - rstd[i]/C*Sum(gamma[k]*g[i, k], (k, 0, C - 1))"
                       " - (x[i, j] - mean[i])*rstd[i]**3/C*Sum(gamma[k]*g[i, k]*(x[i, k] - mean[i]),"
                       " (k, 0, C - 1))"),
    ("layernorm", "gamma", "Sum(g[k, j]*(x[k, j] - mean[k])*rstd[k], (k, 0, N - 1))"),
    ("cross_entropy", "logits", "g/N*exp(logits[n, k] - lse[n]) - g/N*KroneckerDelta(k, targets[n])"),
    ("mse", "pred", "2*g*pred[i, j]/(N*C) - 2*g*target[i, j]/(N*C)"),
    ("tanh", "x", "g[i, j] - g[i, j]*y[i, j]**2"),
    ("sigmoid", "x", "g[i, j]*y[i, j] - g[i, j]*y[i, j]**2"),
    ("gelu_erf", "x", "g[i, j]/2 + g[i, j]*erf(x[i, j]/sqrt(2))/2 + g[i, j]*x[i, j]*exp(-x[i, j]**2/2)/sqrt(2*pi)"),
]
FAST = ("linear", "relu", "tanh", "sigmoid", "gelu", "gelu_erf", "softmax", "log_softmax",
        "cross_entropy", "mse", "layernorm", "embedding", "residual")
FUNCTION_RIGHT = [(name, wrt, fn) for name in FAST for wrt, fn, _ in spec(name).RIGHT]


def _value_adds(expr):
    """Add nodes in value positions (not inside an index or a Sum's limits)."""
    out = []

    def walk(e):
        if isinstance(e, sp.Indexed):
            return
        if isinstance(e, sp.Sum):
            walk(e.function)
            return
        if isinstance(e, sp.Add):
            out.append(e)
        for a in e.args:
            walk(a)
    walk(expr)
    return out


def _mutate(expr, kind, pick_add, pick_term):
    adds = _value_adds(expr)
    if kind == "scale_all":
        return expr * sp.Float(1 + 1e-3)
    add = adds[pick_add % len(adds)]
    terms = list(add.args)
    t = pick_term % len(terms)
    if kind == "drop":
        new = sp.Add(*(terms[:t] + terms[t + 1:]))
    elif kind == "flip":
        new = sp.Add(*(terms[:t] + [-terms[t]] + terms[t + 1:]))
    else:  # scale one term
        new = sp.Add(*(terms[:t] + [terms[t] * sp.Float(1 + 1e-3)] + terms[t + 1:]))
    return expr.xreplace({add: new})


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(SYMPY_RIGHT),
       kind=st.sampled_from(["drop", "flip", "scale_term", "scale_all"]),
       pick_add=st.integers(0, 50), pick_term=st.integers(0, 50), seed=st.integers(0, 1000))
def test_every_mutation_of_a_correct_sympy_candidate_is_rejected(case, kind, pick_add, pick_term, seed):
    name, wrt, text = case
    from symgrad.derive.verify import candidate_symbols

    expr = sp.sympify(text, locals=candidate_symbols(name, wrt))
    if kind != "scale_all" and not _value_adds(expr):
        kind = "scale_all"
    mutant = _mutate(expr, kind, pick_add, pick_term)
    report = verify(name, wrt, mutant, trials=2, seed=seed, symbolic_timeout=3)
    assert report.verdict == "wrong", f"{kind} mutation of {text}:\n{report}"
    assert report.counterexample is not None


def test_the_unmutated_sympy_candidates_are_right():
    from symgrad.derive.verify import candidate_symbols

    for name, wrt, text in SYMPY_RIGHT:
        expr = sp.sympify(text, locals=candidate_symbols(name, wrt))
        report = verify(name, wrt, expr, trials=2)
        assert report.ok, str(report)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(FUNCTION_RIGHT), kind=st.sampled_from(["flip", "scale", "drop_element"]),
       where=st.floats(0, 1), seed=st.integers(0, 1000))
def test_every_mutation_of_a_correct_function_candidate_is_rejected(case, kind, where, seed):
    name, wrt, fn = case

    def mutant(**kw):
        out = np.array(fn(**{k: v for k, v in kw.items() if k in fn.__code__.co_varnames}), dtype=float)
        if kind == "flip":
            return -out
        if kind == "scale":
            return out * (1 + 1e-3)
        flat = out.reshape(-1)  # drop the largest term of one row of the output
        if flat.size:
            flat[int(np.argmax(np.abs(flat)))] = 0.0
        return out
    report = verify(name, wrt, mutant, trials=2, seed=seed)
    assert report.verdict == "wrong", f"{kind} mutation of {fn.__name__}:\n{report}"
