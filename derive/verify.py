"""Check a gradient someone derived by hand against the derivation.

    >>> import derive
    >>> from derive.verify import verify
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
"""

from __future__ import annotations

import inspect
import itertools
import math
import traceback
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import finite_differences, reference
from .derivation import Derivation
from .equivalence import CandidateError, namespace, normalize, prove, time_limit
from .errors import DeriveError
from .functions import Iverson, MaxOver
from .indices import integer_ranges
from .steps import text as _text

__all__ = ["verify", "VerifyReport", "CaseResult", "Counterexample", "candidate_symbols",
           "VERDICTS"]

VERDICTS = ("equivalent", "matches", "wrong", "error")
FD_FULL_MAX = 16  # arguments with at most this many elements get an elementwise finite difference
SHRINK_BUDGET = 60  # candidate evaluations spent looking for a smaller counterexample


# --- the report -------------------------------------------------------------------------------

@dataclass
class CaseResult:
    """One numeric case: its shapes, the candidate's errors against the derived VJP and against
    finite differences, and the worst element."""

    label: str
    dims: dict
    max_abs: float
    max_rel: float
    fd_abs: float
    fd_mode: str
    ok: bool
    index: tuple | None = None

    def as_dict(self) -> dict:
        return {"label": self.label, "dims": self.dims, "max_abs_error": _num(self.max_abs),
                "max_rel_error": _num(self.max_rel), "fd_max_abs_error": _num(self.fd_abs),
                "fd_mode": self.fd_mode, "ok": self.ok,
                "worst_index": list(self.index) if self.index is not None else None}


@dataclass
class Counterexample:
    """The smallest input found on which the candidate disagrees with the derivation."""

    label: str
    dims: dict
    inputs: dict
    upstream: dict
    expected: np.ndarray
    got: np.ndarray
    index: tuple
    wrt: str = ""
    direction: dict = field(default_factory=dict)  # order 2: the direction v of H v
    quantity: str = ""  # what expected and got are: d<wrt> (the default), "Hv", "H"

    @property
    def what(self) -> str:
        return self.quantity or f"d{self.wrt}"

    @property
    def expected_value(self) -> float:
        return float(np.asarray(self.expected)[self.index])

    @property
    def got_value(self) -> float:
        return float(np.asarray(self.got)[self.index])

    def as_dict(self) -> dict:
        return {"case": self.label, "dims": self.dims,
                "inputs": {k: _list(v) for k, v in self.inputs.items()},
                "upstream": {k: _list(v) for k, v in self.upstream.items()},
                "direction": {k: _list(v) for k, v in self.direction.items()},
                "quantity": self.what, "expected": _list(self.expected), "got": _list(self.got),
                "index": list(self.index), "expected_value": _num(self.expected_value),
                "got_value": _num(self.got_value)}

    def __str__(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        lines = [f"counterexample ({self.label}; {dims}):"]
        for k, v in {**self.inputs, **self.upstream, **self.direction}.items():
            lines.append(_arr_line(k, v))
        lines.append(_arr_line(f"expected {self.what}", self.expected))
        lines.append(_arr_line(f"candidate {self.what}", self.got))
        at = ",".join(map(str, self.index))
        lines.append(f"  at {self.what}[{at}]: expected {self.expected_value:.10g}, "
                     f"candidate gave {self.got_value:.10g}")
        return "\n".join(lines)


@dataclass
class VerifyReport:
    """What `verify` found; `str(report)` reads as text, `report.as_dict()` is JSON-ready."""

    layer: str
    wrt: str
    verdict: str
    message: str
    kind: str = ""  # "sympy" | "function" | ""
    candidate: str = ""
    cases: list = field(default_factory=list)
    symbolic: str = ""  # what the symbolic check concluded
    difference: str | None = None  # derived - candidate (wrong SymPy candidates)
    counterexample: Counterexample | None = None
    settings: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # cases where the layer itself is not finite
    order: int = 1  # 2: a Hessian or HVP (derive.verify_order2)
    form: str = ""  # order 2: which candidate form was seen

    @property
    def ok(self) -> bool:
        """True when the candidate is right (equivalent or matches)."""
        return self.verdict in ("equivalent", "matches")

    @property
    def max_abs_error(self) -> float | None:
        vals = [c.max_abs for c in self.cases]
        return max(vals) if vals else None

    @property
    def max_rel_error(self) -> float | None:
        vals = [c.max_rel for c in self.cases]
        return max(vals) if vals else None

    @property
    def fd_max_abs_error(self) -> float | None:
        vals = [c.fd_abs for c in self.cases if c.fd_abs is not None]  # None: a case of ties
        return max(vals) if vals else None

    def as_dict(self) -> dict:
        return {"layer": self.layer, "wrt": self.wrt, "order": self.order, "verdict": self.verdict,
                "ok": self.ok, "message": self.message, "kind": self.kind, "form": self.form,
                "candidate": self.candidate,
                "errors": {self.wrt: {"max_abs_error": _num(self.max_abs_error),
                                      "max_rel_error": _num(self.max_rel_error),
                                      "fd_max_abs_error": _num(self.fd_max_abs_error)}},
                "symbolic": self.symbolic, "difference": self.difference,
                "cases": [c.as_dict() for c in self.cases],
                "counterexample": self.counterexample.as_dict() if self.counterexample else None,
                "skipped": list(self.skipped), "settings": self.settings}

    def __str__(self) -> str:
        what = f"d{self.wrt}" if self.order == 1 else f"d2/(d{self.wrt} d{self.wrt}) (order 2)"
        return "\n".join([f"verify {self.layer} {what}: {self.verdict.upper()}"] + self.details())

    def details(self, candidate: bool = True) -> list:
        """The report's lines after its head, each indented by two spaces (`candidate=False`
        leaves out the candidate's line)."""
        lines = [f"  {self.message}"]
        if self.candidate and candidate:
            lines.append(f"  candidate: {self.candidate}")
        if self.form:
            lines.append(f"  form: {self.form}")
        if self.symbolic:
            lines.append(f"  symbolic: {self.symbolic}")
        if self.difference is not None:
            lines.append(f"  derived - candidate = {self.difference}")
        if self.cases:
            ref, fd = ("VJP", "") if self.order == 1 else ("HVP", " of the derived VJP")
            lines.append(f"  numeric: {len(self.cases)} cases, max abs error "
                         f"{_fmt(self.max_abs_error)}, max rel error {_fmt(self.max_rel_error)} "
                         f"(vs the derived {ref}); vs finite differences{fd} "
                         f"{_fmt(self.fd_max_abs_error)}")
            for c in self.cases:
                dims = " ".join(f"{k}={v}" for k, v in c.dims.items())
                mark = "ok" if c.ok else "FAIL at [" + ",".join(map(str, c.index or ())) + "]"
                lines.append(f"    {c.label:<28} {dims:<24} abs {_fmt(c.max_abs)}  rel "
                             f"{_fmt(c.max_rel)}  fd {_fmt(c.fd_abs)} ({c.fd_mode})  {mark}")
        for note in self.skipped:
            lines.append(f"  skipped: {note}")
        if self.counterexample is not None:
            lines.extend("  " + ln for ln in str(self.counterexample).split("\n"))
        return lines


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _list(v):
    a = np.asarray(v)
    if a.dtype.kind in "iub":
        return a.tolist()
    return np.vectorize(_num, otypes=[object])(a).tolist() if a.size else a.tolist()


def _arr_line(name, v) -> str:
    a = np.asarray(v)
    body = np.array2string(a, precision=6, separator=", ", suppress_small=False,
                           max_line_width=1000, threshold=200)
    pad = " " * (len(name) + 5)
    return f"  {name} = " + body.replace("\n", "\n" + pad)


# --- numeric machinery ------------------------------------------------------------------------

@dataclass
class _Case:
    label: str
    dims: dict  # dim symbol -> int
    kind: str  # "normal", "large", "near_constant", "simple"
    seed: int


class _CandidateFailed(Exception):
    """The candidate raised or returned something unusable (-> verdict error)."""


class _CandidateTimedOut(_CandidateFailed):
    """The candidate did not return within the per-call limit (ends the search for a smaller
    counterexample too: each further call could take as long)."""


class _Alarm(BaseException):
    """Raised inside the candidate by SIGALRM; a BaseException so that a candidate's own
    `except Exception` cannot swallow it."""


class _Instance:
    """A derivation at fixed numeric dims: forward values, the loss, the derived VJP."""

    def __init__(self, d: Derivation, dims: dict, wrt: str):
        self.d, self.dims, self.wrt = d, dims, wrt
        self.ext = {i: int(sp.sympify(e).xreplace(dims)) for i, e in d.graph.extents.items()}
        self.shape = {t.name: tuple(int(sp.sympify(s).xreplace(dims)) for s in t.shape)
                      for t in d.graph.tensors()}
        self.bindings = [(b.name, b.indices, b.expr.xreplace(dims)) for b in d.graph.bindings]
        self.gidx = d.grad_indices[wrt]
        self.gext = dict(self.ext)
        self.gext.update(zip(self.gidx, self.shape[wrt]))
        self.ups = {d.upstream(o.name): o.name for o in d.outputs}

    def values(self, args):
        vals = {}
        for t in self.d.arguments:
            if t.name in args:
                vals[t.name] = args[t.name] if t.shape else float(args[t.name])
            elif t.role == "const":
                vals[t.name] = float(t.default)
        return vals

    def forward(self, args) -> dict:
        vals = self.values(args)
        with np.errstate(all="ignore"):
            for name, idx, expr in self.bindings:
                v = reference.evaluate(expr, idx, vals, self.ext)
                vals[name] = v if idx else float(v)
        return vals

    def loss(self, args, upstream) -> float:
        vals = self.forward(args)
        return float(sum(np.sum(np.asarray(upstream[u]) * np.asarray(vals[o]))
                         for u, o in self.ups.items()))

    def expr_value(self, expr, vals):
        with np.errstate(all="ignore"):
            out = reference.evaluate(sp.sympify(expr).xreplace(self.dims), self.gidx, vals, self.gext)
        return np.asarray(out, dtype=np.float64).reshape(self.shape[self.wrt])


def _has(d, test) -> bool:
    return any(any(test(a) for a in sp.preorder_traversal(b.expr)) for b in d.graph.bindings)


def _features(d):
    # large logits matter where the definition subtracts a max before exp (softmax, log-sum-exp);
    # elsewhere (sigmoid gates) +-1e3 only saturates and leaves rounding noise to compare
    large = _has(d, lambda a: isinstance(a, MaxOver))
    near = _has(d, lambda a: isinstance(a, sp.Pow) and not a.exp.is_integer
                and bool(a.base.atoms(sp.Indexed)) and a.exp.is_number)
    masked = _has(d, lambda a: isinstance(a, (Iverson, sp.Piecewise)))
    return large, near, masked


def _through_max(d) -> bool:
    """Does the gradient flow through a max (max pooling; not softmax's stop_gradient max)?"""
    return any(not b.stop_gradient and b.expr.has(MaxOver) for b in d.graph.bindings)


def _dim_roles(d) -> dict:
    """'batch of one' for the first axis and 'feature size one' for the last axis of the first
    floating input; other dims are named by their symbol."""
    roles = {}
    floats = [t for t in d.arguments if t.shape and not t.integer]
    if floats:
        shp = floats[0].shape
        if shp[0].is_Symbol:
            roles[shp[0]] = "batch of one"
        if len(shp) > 1 and shp[-1].is_Symbol and shp[-1] not in roles:
            roles[shp[-1]] = "feature size one"
    return roles


def _valid(d, dims) -> bool:
    """Does every index run over at least one value at these dims (a pooling window or a
    convolution's kernel no larger than its padded input)?"""
    return all(int(sp.sympify(e).subs(dims)) >= 1 for e in d.graph.extents.values())


def _cases(d, trials, seed, shapes) -> list[_Case]:
    dims = list(d.graph.dims_)
    rng = np.random.default_rng(seed)

    def rand(fixed=None):
        """Dims from 2..4 (`fixed` kept), drawn again until every index has a range; None if
        50 draws found none."""
        for _ in range(50):
            dd = {s: int(rng.integers(2, 5)) for s in dims}
            dd.update(fixed or {})
            if _valid(d, dd):
                return dd
        return None

    cases = []
    if shapes:
        by_name = {str(s): s for s in dims}
        for n, sh in enumerate(shapes):
            fixed = {}
            for k, v in dict(sh).items():
                key = by_name.get(str(k))
                if key is None:
                    raise CandidateError(f"shapes= names dim '{k}' but {d.name} has dims "
                                         f"{', '.join(by_name) or '(none)'}")
                fixed[key] = int(v)
            dd = rand(fixed)
            if dd is None:
                raise CandidateError(f"shapes= {dict(sh)} leaves an index of {d.name} with no "
                                     f"range (a window larger than its input?)")
            cases.append(_Case(f"shape {n + 1}", dd, "normal", seed * 1000 + n))
        return cases

    def add(label, dd, kind, k):
        if dd is not None and _valid(d, dd):  # a case that cannot exist (pool of 2 over 1) is left out
            cases.append(_Case(label, dd, kind, seed * 1000 + k))
    for n in range(trials):
        add(f"random {n + 1}", rand(), "normal", n)
    if dims:
        add("all dims 1", {s: 1 for s in dims}, "normal", 100)
    roles = _dim_roles(d)
    if len(dims) > 1:
        for n, s in enumerate(dims):
            add(roles.get(s, f"{s}=1"), rand({s: 1}), "normal", 200 + n)
    large, near, masked = _features(d)
    if large:
        add("large logits (+-1e3)", rand(), "large", 300)
    if near:
        add("near-constant rows", rand(), "near_constant", 400)
    if masked:
        add("masked positions", {s: int(rng.integers(3, 5)) for s in dims}, "normal", 500)
    if _through_max(d):
        add("ties (inputs in -1, 0, 1)", {s: int(rng.integers(3, 5)) for s in dims}, "ties", 600)
    return cases


def _simple(a, rng):
    """Values with one decimal, never exactly 0 (kinks such as relu's sit at 0)."""
    v = np.round(np.asarray(a, dtype=np.float64), 1)
    return np.where(v == 0, 0.1, v)


def _point(inst: _Instance, case: _Case, int_ranges):
    rng = np.random.default_rng(case.seed)
    args = {}
    for t in inst.d.arguments:
        if t.role == "const":
            continue
        shape = inst.shape[t.name]
        if t.integer:
            hi = int(sp.sympify(int_ranges.get(t.name, 2)).xreplace(inst.dims))
            args[t.name] = rng.integers(0, max(hi, 1), size=shape).astype(np.int64)
            continue
        a = rng.standard_normal(shape)
        if case.kind == "large" and t.role == "input":
            # rows offset by +-1e3: exp overflows (or underflows to 0/0) unless stabilized,
            # while the softmax itself stays well conditioned
            a = a + 1e3 * rng.choice([-1.0, 1.0], size=shape[:-1] + (1,) if shape else ())
        elif case.kind == "near_constant" and t.role == "input" and a.ndim:
            a = rng.standard_normal(shape[:-1] + (1,)) + 1e-4 * a
        elif case.kind == "simple":
            a = _simple(a, rng)
        elif case.kind == "ties" and t.role == "input":
            # every max over a few of these has ties: the gradient must go where the layer's
            # tie rule sends it (max pooling: the first maximum, as PyTorch)
            a = rng.integers(-1, 2, size=shape).astype(np.float64)
        args[t.name] = np.asarray(a, dtype=np.float64) if shape else float(a)
    upstream = {}
    for u, o in inst.ups.items():
        a = rng.standard_normal(inst.shape[o])
        if case.kind == "simple":
            a = _simple(a, rng)
        upstream[u] = np.asarray(a, dtype=np.float64) if inst.shape[o] else float(a)
    return args, upstream


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


# --- candidates -------------------------------------------------------------------------------

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


# --- comparison -------------------------------------------------------------------------------

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


# --- verify -----------------------------------------------------------------------------------

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


def _shrink(check, failing: _Case) -> Counterexample | None:
    """The smallest failing input found: dims shrunk towards 1, simple values tried first."""
    d = check.d
    syms = list(failing.dims)
    options = [sorted({1, 2, failing.dims[s]} & set(range(1, failing.dims[s] + 1))) for s in syms]
    configs = sorted(itertools.product(*options), key=lambda c: (math.prod(c), sum(c)))
    budget = SHRINK_BUDGET
    kinds = ["simple"] if failing.kind == "normal" else ["simple", failing.kind]
    try:
        for cfg in configs:
            dims = dict(zip(syms, cfg))
            if not _valid(d, dims):
                continue
            try:
                inst = check.instance(dims)
            except (DeriveError, ValueError, TypeError):
                continue
            for kind in kinds:
                for s in range(2):
                    if budget <= 0:
                        break
                    budget -= 1
                    case = _Case(failing.label if kind == failing.kind else "simple values",
                                 dims, kind, failing.seed * 7 + 13 * s + 1)
                    ce = check.counterexample(inst, case)
                    if ce is not None:
                        return ce
        return check.counterexample(check.instance(failing.dims), failing)
    except _CandidateTimedOut:  # the verdict stands; each further call could take as long
        return None
