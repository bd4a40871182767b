"""The two kinds of candidate `derive.verify` checks, behind one call
`cand(inst, args, upstream, vals) -> ndarray`: a SymPy expression (`_SympyCandidate`, evaluated
by derive.reference) and a Python function (`_FunctionCandidate`: its signature checked against
the layer, called with copies within a time limit, its result checked for shape and dtype). A
candidate that cannot be evaluated raises `_CandidateFailed` (the verdict `error`).
"""

from __future__ import annotations

import inspect
import traceback

import numpy as np

from .derivation import Derivation
from .equivalence import CandidateError, time_limit
from .errors import DeriveError
from .steps import text as _text
from .verify_cases import _Instance


class _CandidateFailed(Exception):
    """The candidate raised or returned something unusable (-> verdict error)."""


class _CandidateTimedOut(_CandidateFailed):
    """The candidate did not return within the per-call limit (ends the search for a smaller
    counterexample too: each further call could take as long)."""


class _Alarm(BaseException):
    """Raised inside the candidate by SIGALRM; a BaseException so that a candidate's own
    `except Exception` cannot swallow it."""


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


class _SympyCandidate:
    kind = "sympy"

    def __init__(self, expr):
        self.expr = expr

    def describe(self):
        return _text(self.expr)

    def __call__(self, inst: _Instance, args, upstream, vals):
        try:
            out = inst.expr_value(self.expr, dict(vals, **upstream))
        except (DeriveError, KeyError, IndexError, TypeError, ValueError) as e:
            raise _CandidateFailed(f"the candidate expression cannot be evaluated: {e}") from None
        return out


class _FunctionCandidate:
    kind = "function"
    role = "the upstream gradient"  # what a parameter may be besides an argument of the layer

    def __init__(self, fn, d: Derivation, wrt: str, timeout: float | None = None):
        self.fn, self.d, self.wrt, self.timeout = fn, d, wrt, timeout
        self.names = self._check_signature(self._allowed())

    def describe(self):
        return _describe(self.fn)

    def _allowed(self) -> list:
        """The names a call may pass: the upstream gradients, then the layer's arguments."""
        return [self.d.upstream(o.name) for o in self.d.outputs] + [a.name for a in self.d.arguments]

    def _unknown(self, param: str, allowed) -> str:
        """The message for a parameter that is none of `allowed`."""
        return (f"wrong signature: parameter '{param}' of {self.describe()} is neither {self.role} "
                f"nor an argument of {self.d.name} (it takes {', '.join(allowed)})")

    def _check_signature(self, allowed):
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return allowed  # builtins and the like: pass everything
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return allowed
        takes = []
        for p in params:
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
                raise CandidateError(f"wrong signature: parameter '{p.name}' is positional-only; "
                                     f"a candidate is called with keyword arguments "
                                     f"{', '.join(allowed)}")
            if p.name in allowed:
                takes.append(p.name)
            elif p.default is p.empty:
                raise CandidateError(self._unknown(p.name, allowed))
        return takes

    def __call__(self, inst: _Instance, args, upstream, vals):
        return self._gradient(self.invoke({**upstream, **inst.values(args)}), inst)

    def invoke(self, values: dict):
        """What the function returns when called with the `values` it declares (copies, so it
        may scribble), within the time limit; _CandidateFailed if it does not return."""
        kw = {k: _copy(v) for k, v in values.items() if k in self.names}
        try:
            with np.errstate(all="ignore"), time_limit(self.timeout, _Alarm):
                return self.fn(**kw)
        except _Alarm:
            raise _CandidateTimedOut(f"the candidate did not return within {self.timeout:g} s "
                                     f"(the time limit per call)") from None
        except KeyboardInterrupt:  # Ctrl-C stops verify itself (exit 130, never a verdict)
            raise
        except BaseException as e:  # noqa: BLE001 - any failure of user code is reported, not
            # raised; SystemExit too: sys.exit(0) inside a candidate must not end verify with 0
            tb = traceback.extract_tb(e.__traceback__)
            where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
            what = (f"called sys.exit({e.code!r}) instead of returning" if isinstance(e, SystemExit)
                    else f"raised {type(e).__name__}: {e}")
            raise _CandidateFailed(f"the candidate {what}{where}") from None

    def _quantity(self, wrt: str) -> str:
        return f"d{wrt}"

    def _several(self, out) -> str:
        """A hint for a tuple (dx, dW, db) checked against one wrt."""
        diff = [a.name for a in self.d.arguments if a.differentiable]
        if isinstance(out, tuple) and len(diff) > 1:
            return (f" (several gradients at once? pass wrt={','.join(diff)!r}, one name per "
                    f"element, in order)")
        return ""

    def _gradient(self, out, inst: _Instance, what: str = "the candidate returned",
                  wrt: str | None = None):
        """The gradient by `wrt` (default `self.wrt`) in what the function returned, checked: a
        float64 array of the argument's shape. `what` starts each message."""
        wrt = wrt or self.wrt
        several = self._several(out)
        arr = _real_array(out, what, several)
        want = inst.shape[wrt]
        if arr.shape != want and not (want == () and arr.size == 1 and arr.ndim <= 1):
            raise _CandidateFailed(f"{what} shape {arr.shape}; {self._quantity(wrt)} must have "
                                   f"the shape of {wrt}, {want}{several}")
        return arr.astype(np.float64).reshape(want)


def _describe(fn) -> str:
    """A function's name and signature, as a report shows the candidate."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


def _real_array(out, what: str, several: str = "") -> np.ndarray:
    """What a function candidate returned as a real array; _CandidateFailed (its message starting
    with `what`) for None, a tuple, a string and the like."""
    if out is None:
        raise _CandidateFailed(f"{what} None (a missing `return`?)")
    try:
        arr = np.asarray(out)
    except Exception as e:  # noqa: BLE001
        if several:
            raise _CandidateFailed(f"{what} a tuple of {len(out)}, not an "
                                   f"array{several}") from None
        raise _CandidateFailed(f"{what} {type(out).__name__}, not an array: {e}") from None
    if arr.dtype.kind not in "fiub":
        raise _CandidateFailed(f"{what} a {type(out).__name__} of dtype {arr.dtype}, not a "
                               f"real array")
    return arr
