"""Check a gradient someone derived by hand against the derivation.

    >>> from symgrad import derive
    >>> from symgrad.derive.verify import verify
    >>> def dx(g, x):                          # softmax backward via the explicit Jacobian
    ...     s = np.exp(x - x.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    ...     J = s[:, :, None] * (np.eye(x.shape[1]) - s[:, None, :])
    ...     return np.einsum("ij,ijk->ik", g, J)
    >>> print(verify("softmax", "x", dx))      # verdict: matches

A candidate is either

- a **SymPy expression** in the layer's index notation (see `derive.equivalence` for the names
  it may use: free indices `d.grad_indices[wrt]`, tensors by name, `g` / `g_<output>`; or pass
  `indices=` to name its free indices; `candidate_symbols(target, wrt)` hands out the objects), or
- a **Python function** `candidate(g, **inputs) -> ndarray`: it gets the upstream gradient `g`
  (for a layer with several outputs, `g_<output>` for each instead; for a scalar output, a float)
  and the layer's arguments by their names (integer arguments as int64 arrays, constants such as
  `eps` as floats); it may declare only the ones it needs, or take `**inputs`. It returns the
  gradient with respect to `wrt`, shaped like that argument. It gets copies, so it may scribble.

A backward pass that returns several gradients at once, `(dx, dW, db)`, is checked with
`wrt="x,W,b"`: each gradient as here, one verdict over all (see `derive.verify_many`). With
`order=2` the candidate is a Hessian-vector product `candidate(g, v, **inputs)`, a full Hessian
`candidate(**inputs)` (scalar outputs) or a SymPy Hessian in index form, judged against the
derived HVP with the same verdicts and report (see `derive.verify_order2`).

The verdicts:

- `equivalent`: `derived - candidate` was proved to be 0 by exact rewrites (SymPy candidates
  only) *and* no numeric case disagrees (a case where the expression, evaluated as written,
  overflows to inf/NaN - exp(x) without the max subtracted - is named in the message);
- `matches`: every numeric case agrees (not proved symbolically);
- `wrong`: some case disagrees: the report carries the smallest counterexample found (shapes
  shrunk, simple input values tried first), the offending element, both values, and for a SymPy
  candidate `derived - candidate` tidied, which is the missing term;
- `error`: the candidate could not be checked (it raised, called `sys.exit`, did not return
  within `timeout` seconds, returned the wrong shape, a NaN or an inf, has a signature that does
  not fit the layer, reads unknown names) or the options are bad.

The numbers, every case in float64: the candidate is compared with the derived vector-Jacobian
product evaluated by `derive.reference` (exact up to rounding, so the comparison is tight:
`max|cand - derived| <= vjp_rtol * max|derived| + 1e-12`, default `vjp_rtol=1e-7`), and both are
compared with central finite differences of `L = sum(g * output)` with step `eps`, like
torch.autograd.gradcheck: `|a - fd| <= atol + rtol * |fd|` (all elements for a small argument,
three random directions `u . grad` for a larger one). Cases: `trials` random shapes and points,
all dims 1, each dim 1 in turn (batch of one, feature size one), and where the definition calls
for it large logits (rows offset by +-1e3, for max-subtracted exps), near-constant rows (normalizations) and masked positions
(indicators such as a causal mask). Where the gradient goes through a max (max pooling), a case of
ties (inputs in -1, 0, 1): a max has no derivative at a tie, so that case is judged against the
derivation's tie rule (the first maximum, as PyTorch) alone, without finite differences. A shape at
which an index has no range (a pooling window larger than its input) is never a case.

This module is the entry point (the options, the symbolic proof, the verdict's assembly); the
pieces live beside it: `derive.verify_cases` (the cases and their inputs),
`derive.verify_candidates` (a SymPy or function candidate, called), `derive.verify_check` (one
case judged, every case run to a verdict), `derive.verify_shrink` (the smallest counterexample)
and `derive.verify_report` (the report and its text).
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .derivation import Derivation
from .equivalence import CandidateError, namespace, normalize, prove
from .errors import DeriveError
from .steps import text as _text
from .verify_candidates import _FunctionCandidate, _SympyCandidate
from .verify_cases import _cases
from .verify_check import _run, _VJPCheck
from .verify_report import VERDICTS, CaseResult, Counterexample, VerifyReport

__all__ = ["verify", "VerifyReport", "CaseResult", "Counterexample", "candidate_symbols",
           "VERDICTS"]


def candidate_symbols(target, wrt: str, order: int = 1) -> dict:
    """The SymPy objects to write a candidate for `target`'s gradient by `wrt` with:
    `ns = candidate_symbols("softmax", "x"); s, g, i, j = ns["s"], ns["g"], ns["i"], ns["j"]`
    (`order=2`: for its Hessian in index form, with the block's free indices)."""
    if order == 2:
        from .verify_order2 import hessian_symbols
        return hessian_symbols(target, wrt)
    d = _resolve(target)
    _check_wrt(d, wrt)
    return namespace(d, wrt)


def _resolve(target) -> Derivation:
    from . import resolve  # derive/__init__ imports this module first
    return resolve(target)


def _check_wrt(d, wrt):
    diff = [a.name for a in d.arguments if a.differentiable]
    if wrt not in diff:
        names = {a.name: a for a in d.arguments}
        why = ("has no argument '%s'" % wrt) if wrt not in names else \
            f"'{wrt}' is not differentiable ({'integer' if names[wrt].integer else names[wrt].role})"
        raise CandidateError(f"{d.name} {why}; the differentiable arguments are {', '.join(diff)}")


def verify(target, wrt, candidate, *, order: int = 1, eps: float = 1e-6, atol: float = 1e-5,
           rtol: float = 1e-3, trials: int = 4, seed: int = 0, dtype="float64", shapes=None,
           indices=None, vjp_rtol: float = 1e-7, symbolic_timeout: float = 10.0,
           timeout: float = 60.0):
    """Check `candidate`, a hand-derived gradient of layer `target` by its argument `wrt`
    (`order=2`: a hand-derived Hessian or Hessian-vector product, see `derive.verify_order2`).

    target: a built-in layer name or a Derivation (also from `derive.define`).
    wrt: an argument's name; or several, "x,W,b" or ("x", "W", "b"), for a candidate that
        returns one gradient per name in that order (see `derive.verify_many`; the report is then
        a `GradientsReport`).
    candidate: a SymPy expression (or its string) in the layer's index notation, or a function
        `candidate(g, **inputs)`; see the module docstring.
    order: 1, a gradient; 2, a Hessian-vector product `candidate(g, v, **inputs)`, a full
        Hessian `candidate(**inputs)` (scalar outputs) or a SymPy Hessian in index form, of the
        (wrt, wrt) block (see `derive.verify_order2`).
    eps, atol, rtol: central-difference step and tolerances (as torch gradcheck).
    vjp_rtol: tolerance against the derived VJP, relative to its largest element.
    trials: random cases besides the edge cases; seed: makes every case reproducible.
    dtype: must be float64 (the numeric comparison is done in float64 only).
    shapes: optional list of {dim name: size} to use instead of the generated cases.
    indices: the candidate expression's free indices in axis order, when they are not named
        like `d.grad_indices[wrt]`.
    timeout: seconds one call of a function candidate may take (verdict error beyond it).
    """
    options = dict(eps=eps, atol=atol, rtol=rtol, trials=trials, seed=seed, dtype=dtype,
                   shapes=shapes, indices=indices, vjp_rtol=vjp_rtol,
                   symbolic_timeout=symbolic_timeout, timeout=timeout)
    if order not in (1, 2) or isinstance(order, bool):
        name = target if isinstance(target, str) else getattr(target, "name", "?")
        return VerifyReport(name, str(wrt), "error", f"order={order!r}: verify checks a gradient "
                            f"(order 1) or a Hessian / Hessian-vector product (order 2)",
                            settings=_settings(eps, atol, rtol, vjp_rtol, trials, seed, dtype,
                                               timeout))
    if order == 2:
        from .verify_order2 import verify_order2
        return verify_order2(target, wrt, candidate, **options)
    if not isinstance(wrt, str) or "," in wrt:
        from .verify_many import verify_many
        return verify_many(target, wrt, candidate, **options)
    name = target if isinstance(target, str) else getattr(target, "name", "?")
    settings = _settings(eps, atol, rtol, vjp_rtol, trials, seed, dtype, timeout)

    def error(msg, kind="", cand=""):
        return VerifyReport(name, wrt, "error", msg, kind, cand, settings=settings)

    bad = _bad_option(eps, atol, rtol, vjp_rtol, trials, dtype, timeout)
    if bad:
        return error(bad)
    try:
        d = _resolve(target)
        name = d.name
        _check_wrt(d, wrt)
    except (DeriveError, CandidateError) as e:
        return error(str(e))

    # the candidate
    try:
        if isinstance(candidate, (sp.Basic, str)):
            cand = _SympyCandidate(normalize(candidate, d, wrt, indices))
        elif callable(candidate):
            if indices is not None:
                return error("indices= applies to SymPy candidates only")
            cand = _FunctionCandidate(candidate, d, wrt, timeout)
        else:
            return error(f"a candidate must be a SymPy expression or a function "
                         f"candidate(g, **inputs), got {type(candidate).__name__}")
        cases = _cases(d, trials, seed, shapes)
    except CandidateError as e:
        return error(str(e), getattr(candidate, "__name__", ""))
    return _judge(d, wrt, cand, cases, settings, eps=eps, atol=atol, rtol=rtol, seed=seed,
                  vjp_rtol=vjp_rtol, symbolic_timeout=symbolic_timeout)


def _settings(eps, atol, rtol, vjp_rtol, trials, seed, dtype, timeout) -> dict:
    return {"eps": eps, "atol": atol, "rtol": rtol, "vjp_rtol": vjp_rtol, "trials": trials,
            "seed": seed, "dtype": str(dtype), "timeout": timeout}


def _bad_option(eps, atol, rtol, vjp_rtol, trials, dtype, timeout) -> str | None:
    """What is wrong with the options, in one line; None when nothing is."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return f"unknown dtype {dtype!r}; the numeric comparison runs in float64"
    if dt != np.float64:
        return (f"dtype {dt} requested: the comparison needs float64 (finite differences "
                f"and the reference are float64 only); pass dtype='float64'")
    for opt, val in (("eps", eps), ("atol", atol), ("rtol", rtol), ("vjp_rtol", vjp_rtol)):
        if not (isinstance(val, (int, float)) and val >= 0 and math.isfinite(val)) or \
                (opt == "eps" and val == 0):
            return (f"{opt}={val!r} must be a finite number > 0" if opt == "eps" else
                    f"{opt}={val!r} must be a finite number >= 0")
    if not isinstance(trials, int) or trials < 0:
        return f"trials={trials!r} must be an integer >= 0"
    if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        return f"timeout={timeout!r} must be a finite number of seconds > 0"
    return None


def _judge(d, wrt, cand, cases, settings, *, eps, atol, rtol, seed, vjp_rtol,
           symbolic_timeout) -> VerifyReport:
    """The verdict on `cand` (a _SympyCandidate or _FunctionCandidate for `d`'s gradient by
    `wrt`): symbolic where it applies, then every numeric case, then the smallest
    counterexample."""
    report = VerifyReport(d.name, wrt, "matches", "", cand.kind, cand.describe(), settings=settings)
    proof = _symbolic(report, cand, d.grads[wrt], d, wrt, symbolic_timeout)
    check = _VJPCheck(d, wrt, cand, eps=eps, atol=atol, rtol=rtol, seed=seed, vjp_rtol=vjp_rtol)
    return _run(report, check, cases, proof)


def _symbolic(report, cand, derived, d, wrt, timeout, extents=None):
    """Try to prove a SymPy candidate equal to `derived` (noted in the report); the Proof, or
    None for a function candidate."""
    if cand.kind != "sympy":
        report.symbolic = "not applicable (a function candidate is checked numerically)"
        return None
    proof = prove(derived, cand.expr, d, wrt, timeout, extents)
    report.symbolic = ("proved: " if proof.proved else "not proved: ") + proof.note
    if proof.difference is not None:
        report.difference = _text(proof.difference)
    return proof
