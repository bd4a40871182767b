"""Check a backward pass that returns several gradients at once, as hand-written ones do.

    >>> from symgrad.derive.verify import verify
    >>> def backward(g, x, W):                     # CS231n's backward(dout, cache), by name
    ...     return g @ W.T, x.T @ g, g.sum(axis=0)
    >>> print(verify("linear", "x,W,b", backward))  # one verdict, and one per gradient

`wrt` names the gradients in the order the candidate gives them: "x,W,b" or ("x", "W", "b").

- A **function** candidate `candidate(g, **inputs)` returns a tuple (or list) with one array per
  name, in that order; every call is checked whole (its length, each element's shape).
- A **SymPy** candidate is a tuple (or list) of expressions, one per name, each in the index
  notation of its own gradient (see `derive.verify`); each is proved separately. `indices=`, if
  given, maps a name to that expression's free indices.

Each gradient is judged exactly as `derive.verify` judges a single one: the same cases from the
same seed, symbolic equivalence where it applies, the smallest counterexample for a wrong one.
This module only splits the candidate and joins the verdicts: `equivalent` when every gradient
is proved, `matches` when every one is right, `wrong` when any is wrong, `error` as soon as one
cannot be checked (the gradients after it are left unchecked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .equivalence import CandidateError, normalize
from .errors import DeriveError
from .verify import _bad_option, _check_wrt, _judge, _resolve, _settings
from .verify_candidates import _CandidateFailed, _FunctionCandidate, _SympyCandidate
from .verify_cases import _cases
from .verify_report import _fmt, VerifyReport

__all__ = ["verify_many", "GradientsReport"]


@dataclass
class GradientsReport:
    """What `verify_many` found: `gradients` holds one `VerifyReport` per name checked, in the
    order of `wrt`; `str(report)` reads as text, `report.as_dict()` is JSON-ready."""

    layer: str
    wrt: tuple
    verdict: str
    message: str
    kind: str = ""  # "sympy" | "function" | ""
    candidate: str = ""
    gradients: dict = field(default_factory=dict)  # name -> VerifyReport
    settings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every gradient is right."""
        return self.verdict in ("equivalent", "matches")

    @property
    def wrong(self) -> list:
        """The names whose gradient is wrong."""
        return [w for w, r in self.gradients.items() if r.verdict == "wrong"]

    @property
    def not_checked(self) -> list:
        return [w for w in self.wrt if w not in self.gradients]

    def __getitem__(self, name) -> VerifyReport:
        return self.gradients[name]

    def as_dict(self) -> dict:
        grads = {w: r.as_dict() for w, r in self.gradients.items()}
        return {"layer": self.layer, "wrt": list(self.wrt), "verdict": self.verdict, "ok": self.ok,
                "message": self.message, "kind": self.kind, "candidate": self.candidate,
                "wrong": self.wrong, "not_checked": self.not_checked,
                "errors": {w: g["errors"][w] for w, g in grads.items()},
                "gradients": grads, "settings": self.settings}

    def __str__(self) -> str:
        names = ", ".join(f"d{w}" for w in self.wrt)
        lines = [f"verify {self.layer} {names}: {self.verdict.upper()}", f"  {self.message}"]
        if self.candidate and self.kind == "function":
            lines.append(f"  candidate: {self.candidate}")
        for w in self.wrt:
            r = self.gradients.get(w)
            if r is None:
                lines.append(f"  d{w}: not checked")
                continue
            if r.verdict == "error":  # its message is the report's
                lines.append(f"  d{w}: ERROR, see above")
                continue
            lines.append(f"  d{w}: {r.verdict.upper()}")
            if r.ok:  # right: the verdict and the largest errors are enough
                body = [f"  {r.message}"]
                if self.kind == "sympy":
                    body += [f"  candidate: {r.candidate}", f"  symbolic: {r.symbolic}"]
                body.append(f"  numeric: max abs error {_fmt(r.max_abs_error)} (vs the derived "
                            f"VJP); vs finite differences {_fmt(r.fd_max_abs_error)}")
            else:
                body = r.details(candidate=self.kind == "sympy")
            lines.extend("  " + ln for ln in body)
        return "\n".join(lines)


def verify_many(target, wrt, candidate, *, eps: float = 1e-6, atol: float = 1e-5,
                rtol: float = 1e-3, trials: int = 4, seed: int = 0, dtype="float64", shapes=None,
                indices=None, vjp_rtol: float = 1e-7, symbolic_timeout: float = 10.0,
                timeout: float = 60.0) -> GradientsReport:
    """Check `candidate`, a hand-derived backward pass of layer `target` giving the gradients by
    the arguments named in `wrt` ("x,W,b" or a sequence of names), in that order. The options are
    those of `derive.verify`, applied to each gradient; `indices` maps a name to its SymPy
    expression's free indices."""
    name = target if isinstance(target, str) else getattr(target, "name", "?")
    settings = _settings(eps, atol, rtol, vjp_rtol, trials, seed, dtype, timeout)
    report = GradientsReport(name, (), "error", "", settings=settings)

    def error(msg):
        report.verdict, report.message = "error", msg
        return report

    try:
        report.wrt = names = _names(wrt)
    except CandidateError as e:
        return error(str(e))
    bad = _bad_option(eps, atol, rtol, vjp_rtol, trials, dtype, timeout)
    if bad:
        return error(bad)
    try:
        d = _resolve(target)
        report.layer = d.name
        for w in names:
            _check_wrt(d, w)
        cands = _candidates(candidate, d, names, indices, timeout)
        cases = _cases(d, trials, seed, shapes)
    except (DeriveError, CandidateError) as e:
        return error(str(e))
    report.kind = cands[0].kind
    report.candidate = (cands[0].describe() if report.kind == "function" else
                        "(" + ", ".join(c.describe() for c in cands) + ")")

    for w, cand in zip(names, cands):
        r = _judge(d, w, cand, cases, settings, eps=eps, atol=atol, rtol=rtol, seed=seed,
                   vjp_rtol=vjp_rtol, symbolic_timeout=symbolic_timeout)
        report.gradients[w] = r
        if r.verdict == "error":
            return error(r.message)
    verdicts = [r.verdict for r in report.gradients.values()]
    right = [w for w in names if report.gradients[w].ok]
    if report.wrong:
        report.verdict = "wrong"
        report.message = _are(report.wrong, "wrong")
        if right:
            report.message += "; " + _are(right, "right")
    else:
        report.verdict = "equivalent" if all(v == "equivalent" for v in verdicts) else "matches"
        report.message = f"all {len(names)} gradients are right (" + ", ".join(
            f"d{w} {report.gradients[w].verdict}" for w in names) + ")"
    return report


def _are(names, what) -> str:
    listed = [f"d{w}" for w in names]
    text = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    return f"{text} {'is' if len(listed) == 1 else 'are'} {what}"


def _names(wrt) -> tuple:
    """("x", "W", "b") from "x,W,b" or a sequence of names; CandidateError naming what is wrong."""
    if isinstance(wrt, str):
        parts, shown = [p.strip() for p in wrt.split(",")], wrt
    elif isinstance(wrt, (tuple, list)) and all(isinstance(w, str) for w in wrt):
        parts, shown = [w.strip() for w in wrt], ",".join(wrt)
    else:
        raise CandidateError(f"wrt must name an argument, or several as 'x,W,b' or ('x', 'W', "
                             f"'b'), got {wrt!r}")
    if not parts or not all(parts):
        raise CandidateError(f"wrt '{shown}' has an empty name; list the arguments as 'x,W,b'")
    for i, p in enumerate(parts):
        if p in parts[:i]:
            raise CandidateError(f"wrt '{shown}' names '{p}' twice; name each gradient once")
    return tuple(parts)


def _order(names) -> str:
    return "(" + ", ".join(f"d{w}" for w in names) + ")"


def _candidates(candidate, d, names, indices, timeout) -> list:
    """One candidate object per name, for `derive.verify`'s judge."""
    n = len(names)
    if isinstance(candidate, (sp.Basic, str)):
        raise CandidateError(f"a single SymPy expression is the gradient by one argument; for "
                             f"wrt '{','.join(names)}' give a tuple of {n} expressions "
                             f"{_order(names)}, in that order")
    if isinstance(candidate, (tuple, list)):
        if len(candidate) != n:
            raise CandidateError(f"the candidate is a {type(candidate).__name__} of "
                                 f"{len(candidate)} expressions; wrt '{','.join(names)}' needs "
                                 f"{n}: {_order(names)}, in that order")
        if indices is not None and not (isinstance(indices, dict) and set(indices) <= set(names)):
            raise CandidateError(f"with several wrt, indices= maps a name in "
                                 f"{', '.join(names)} to that expression's free indices, e.g. "
                                 f"{{'{names[0]}': ('a', 'b')}}")
        out = []
        for k, (w, c) in enumerate(zip(names, candidate)):
            if not isinstance(c, (sp.Basic, str)):
                raise CandidateError(f"element {k + 1} of the candidate (d{w}) is a "
                                     f"{type(c).__name__}: a tuple candidate holds SymPy "
                                     f"expressions; a function candidate returns the tuple itself")
            try:
                out.append(_SympyCandidate(normalize(c, d, w, (indices or {}).get(w))))
            except CandidateError as e:
                raise CandidateError(f"d{w} (element {k + 1} of the candidate): {e}") from None
        return out
    if callable(candidate):
        if indices is not None:
            raise CandidateError("indices= applies to SymPy candidates only")
        return [_Element(candidate, d, names, k, timeout) for k in range(n)]
    raise CandidateError(f"a candidate must be a function candidate(g, **inputs) returning "
                         f"{_order(names)}, or a tuple of SymPy expressions, got "
                         f"{type(candidate).__name__}")


class _Element(_FunctionCandidate):
    """The gradient by `names[k]` in what a backward function returns: element k of its tuple.
    Every call checks the whole tuple, so a wrong length or a misshapen element is the first
    thing reported, whichever gradient is being judged."""

    def __init__(self, fn, d, names, k, timeout):
        super().__init__(fn, d, names[k], timeout)
        self.wrts, self.k = names, k

    def _gradient(self, out, inst, what="the candidate returned", wrt=None):
        n, spec = len(self.wrts), ",".join(self.wrts)
        if not isinstance(out, (tuple, list)):
            got = (f"an array of shape {out.shape}" if isinstance(out, np.ndarray) else
                   type(out).__name__)
            raise _CandidateFailed(f"the candidate returned {got}, not a tuple; wrt '{spec}' "
                                   f"needs {n} arrays {_order(self.wrts)}, in that order")
        if len(out) != n:
            raise _CandidateFailed(f"the candidate returned a {type(out).__name__} of {len(out)} "
                                   f"arrays; wrt '{spec}' needs {n}: {_order(self.wrts)}, in "
                                   f"that order")
        grads = [super(_Element, self)._gradient(o, inst, f"the candidate returned, as d{w} "
                                                 f"(element {j + 1} of {n}),", wrt=w)
                 for j, (w, o) in enumerate(zip(self.wrts, out))]
        return grads[self.k]
