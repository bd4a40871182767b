"""How `derive.verify` judges a candidate numerically: `_VJPCheck` judges one case (the
candidate against the derived VJP, both against central differences of L = sum(g * out)), and
`_run` takes every case through a check and turns what it found into the verdict (the smallest
counterexample of a wrong candidate from derive.verify_shrink). derive.verify_order2 judges a
Hessian-vector product with the same `_run` and a check of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import finite_differences
from .errors import DeriveError
from .indices import integer_ranges
from .verify_candidates import _CandidateFailed, _CandidateTimedOut
from .verify_cases import _Instance, _point
from .verify_report import CaseResult, Counterexample, VerifyReport
from .verify_shrink import _shrink

FD_FULL_MAX = 16  # arguments with at most this many elements get an elementwise finite difference


@dataclass
class _Point:
    """One case's input, the forward values there and what the derivation gives."""

    args: dict
    upstream: dict
    vals: dict
    expected: np.ndarray
    finite: bool  # the layer's own outputs and `expected` are finite
    direction: dict = field(default_factory=dict)  # order 2: {"v": the direction}


class _Unreliable(Exception):
    """The derivation itself disagrees with finite differences in a case (-> verdict error)."""


class _VJPCheck:
    """How one case is judged at order 1: the candidate against the derived VJP, both against
    central differences of L = sum(g * out). derive.verify_order2 judges H v the same way."""

    what = "gradient"  # what a proof proves the candidate equal to

    def __init__(self, d, wrt, cand, *, eps, atol, rtol, seed, vjp_rtol):
        self.d, self.wrt, self.cand = d, wrt, cand
        self.eps, self.atol, self.rtol, self.vjp_rtol = eps, atol, rtol, vjp_rtol
        self.int_ranges = integer_ranges(d)
        self.fd_rng = np.random.default_rng(seed + 7)

    def instance(self, dims) -> _Instance:
        return _Instance(self.d, dims, self.wrt)

    def finite(self, vals, expected) -> bool:
        return bool(np.all(np.isfinite(expected)) and
                    all(np.all(np.isfinite(np.asarray(vals[o.name]))) for o in self.d.outputs))

    def point(self, inst, case) -> _Point:
        args, upstream = _point(inst, case, self.int_ranges)
        vals = inst.forward(args)
        expected = inst.expr_value(self.d.grads[self.wrt], dict(vals, **upstream))
        return _Point(args, upstream, vals, expected, self.finite(vals, expected))

    def call(self, inst, pt: _Point) -> np.ndarray:
        return self.cand(inst, pt.args, pt.upstream, pt.vals)

    def quantity(self, got) -> str:
        return f"d{self.wrt}"

    def result(self, inst, case, pt: _Point, got) -> CaseResult:
        """The case's errors; _Unreliable when the derivation disagrees with finite differences."""
        if case.kind == "ties":  # a max has no derivative at a tie: the derived rule is the reference
            ok, worst, rel, index = _compare(pt.expected, got, self.vjp_rtol)
            return CaseResult(case.label, _dims_dict(case.dims), worst, rel, None, "none at ties",
                              ok, None if ok else index)
        mode, fd = _finite_differences(inst, pt.args, pt.upstream, self.wrt, self.eps, self.fd_rng)
        fd_derived, ok_derived = _fd_error(mode, fd, pt.expected, self.atol, self.rtol)
        if not ok_derived:
            raise _Unreliable(f"the derived gradient disagrees with finite differences (max abs "
                              f"error {fd_derived:.3g})")
        ok, worst, rel, index = _compare(pt.expected, got, self.vjp_rtol)
        fd_cand, ok_fd = _fd_error(mode, fd, got, self.atol, self.rtol)
        ok = ok and ok_fd
        return CaseResult(case.label, _dims_dict(case.dims), worst, rel, fd_cand, mode, ok,
                          None if ok else index)

    def mismatch(self, pt: _Point, got):
        """(expected, got, worst index, quantity, direction) where the candidate disagrees with
        the derivation at this point; None where it agrees."""
        ok, _, _, index = _compare(pt.expected, got, self.vjp_rtol)
        return None if ok else (pt.expected, got, index, "", pt.direction)

    def counterexample(self, inst, case) -> Counterexample | None:
        try:
            pt = self.point(inst, case)
            if not pt.finite:
                return None
            got = self.call(inst, pt)
        except _CandidateTimedOut:
            raise
        except (_CandidateFailed, DeriveError):
            return None
        if not np.all(np.isfinite(got)):
            return None
        bad = self.mismatch(pt, got)
        if bad is None:
            return None
        expected, got, index, quantity, direction = bad
        return Counterexample(case.label, _dims_dict(case.dims), pt.args, pt.upstream, expected,
                              got, index, self.wrt, direction, quantity)


def _run(report, check, cases, proof) -> VerifyReport:
    """Every numeric case through `check` (a _VJPCheck), then the verdict."""
    failing = None
    nonfinite = None  # the first NaN/inf the candidate returned where the derivation is finite
    for case in cases:
        try:
            inst = check.instance(case.dims)
            pt = check.point(inst, case)
        except DeriveError as e:
            report.verdict, report.message = "error", f"case '{case.label}': {e}"
            return report
        if not pt.finite:
            report.skipped.append(f"case '{case.label}' ({_dims_text(case.dims)}): the layer's own "
                                  f"forward or {check.what} is not finite there")
            continue
        try:
            got = check.call(inst, pt)
        except _CandidateFailed as e:
            report.verdict = "error"
            report.message = f"{e} [case '{case.label}', {_dims_text(case.dims)}]"
            return report
        if not np.all(np.isfinite(got)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(got))[0])
            if nonfinite is None:
                gives = (f" where the derivation gives {pt.expected[bad]:.6g}"
                         if pt.expected.shape == got.shape else "")
                nonfinite = (f"the candidate returned {got[bad]} at {check.quantity(got)}"
                             f"[{','.join(map(str, bad))}]{gives} [case '{case.label}', "
                             f"{_dims_text(case.dims)}]")
            report.cases.append(CaseResult(case.label, _dims_dict(case.dims), math.inf, math.inf,
                                           math.inf, "-", False, bad))
            continue
        try:
            result = check.result(inst, case, pt, got)
        except _Unreliable as e:
            report.verdict = "error"
            report.message = (f"{e} in case '{case.label}', {_dims_text(case.dims)}: the layer "
                              f"may not be differentiable there, or this is a bug in symgrad")
            return report
        report.cases.append(result)
        if not result.ok and failing is None:
            failing = case

    if failing is not None:
        report.verdict = "wrong"
        report.counterexample = _shrink(check, failing)
        n_bad = sum(not c.ok for c in report.cases)
        report.message = (f"the candidate disagrees with the derivation in {n_bad} of "
                          f"{len(report.cases)} cases")
        if nonfinite is not None:
            report.message += "; also " + nonfinite
        return report
    if nonfinite is not None and not (proof is not None and proof.proved):
        report.verdict, report.message = "error", nonfinite
        return report
    if proof is not None and proof.proved:
        report.verdict = "equivalent"
        n_ok = sum(c.ok for c in report.cases)
        report.message = (f"proved equal to the derived {check.what}, and agrees numerically in "
                          f"{n_ok} cases")
        if nonfinite is not None:  # right, but not safe to evaluate as written
            report.message += ("; but evaluated as written it is not finite: " + nonfinite +
                               " (use a numerically stable form)")
    else:
        report.verdict = "matches"
        report.message = f"agrees with the derivation numerically in {len(report.cases)} cases"
        if report.kind == "sympy":
            report.message += " (equality not proved symbolically)"
    return report


def _dims_text(dims) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items())


def _dims_dict(dims) -> dict:
    return {str(k): int(v) for k, v in dims.items()}


def _compare(expected, got, vjp_rtol):
    err = np.abs(got - expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    worst = float(err.max()) if err.size else 0.0
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape)) if err.size else ()
    ok = worst <= vjp_rtol * scale + 1e-12
    rel = 0.0 if worst <= 1e-12 else (worst / scale if scale > 0 else math.inf)
    return ok, worst, rel, index


def _finite_differences(inst, args, upstream, wrt, eps, rng):
    """Central differences of L = sum(g * out): ('elementwise', array) or ('directional',
    [(u, value)])."""
    x = np.asarray(args[wrt], dtype=np.float64)
    scalar = not inst.shape[wrt]

    def at(xv):
        a = dict(args)
        a[wrt] = float(xv) if scalar else xv
        return inst.loss(a, upstream)

    if x.size <= FD_FULL_MAX:
        return "elementwise", finite_differences.elementwise(at, x, eps)
    dirs = []
    for _ in range(3):
        u = rng.standard_normal(x.shape)
        dirs.append((u, float(finite_differences.directional(at, x, u, eps))))
    return "directional", dirs


def _fd_error(mode, fd, grad, atol, rtol):
    """(max abs error, ok) of grad against finite differences."""
    if mode == "elementwise":
        err = np.abs(grad - fd)
        return float(err.max()) if err.size else 0.0, bool(np.all(err <= atol + rtol * np.abs(fd)))
    worst, ok = 0.0, True
    for u, val in fd:
        dot = float(np.sum(u * grad))
        e = abs(dot - val)
        worst = max(worst, e)
        ok &= e <= atol * float(np.sum(np.abs(u))) + rtol * abs(val)
    return worst, ok
