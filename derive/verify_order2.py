"""Check a Hessian or a Hessian-vector product someone derived by hand (`verify(..., order=2)`).

    >>> from symgrad.derive.verify import verify
    >>> def H(logits):                           # cross-entropy: (diag(p) - p p^T) / N per row
    ...     p = np.exp(logits - logits.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    ...     N, V = p.shape
    ...     rows = (np.einsum("nk,kt->nkt", p, np.eye(V)) - np.einsum("nk,nt->nkt", p, p)) / N
    ...     return np.einsum("nkt,nr->nkrt", rows, np.eye(N))
    >>> print(verify("cross_entropy", "logits", H, order=2))      # verdict: matches

H is the Hessian of L = sum(g * y) over the layer's arguments (for a scalar output, a loss, the
Hessian of the output itself); order 2 checks its (wrt, wrt) block: H v for a direction v of the
argument `wrt` alone, the other arguments held fixed. A candidate is one of

- an **HVP** `candidate(g, v, **inputs) -> ndarray`: the upstream gradient `g` (a float for a
  scalar output; `g_<output>` for each of several outputs) and the layer's arguments by name, as
  at order 1, and `v`, a direction shaped like `wrt`; it returns H v, shaped like `wrt`. Where
  the layer has an argument named `v` (attention) the direction is `<wrt>_dot` (`q_dot`), a name
  every layer accepts.
- a **full Hessian** `candidate(**inputs) -> ndarray` shaped `wrt.shape + wrt.shape`, for a layer
  with a scalar output: `H[p.., r..] = d2 y / (d wrt[p..] d wrt[r..])`. It gets the arguments only.
- a **SymPy expression**: the Hessian block in index form, where derive writes one
  (`derive.second_order(d).hessians[(wrt, wrt)]`: layers with a scalar output, elementwise ones).
  Its free indices are those of the derived block, row indices then column ones
  (`candidate_symbols(target, wrt, order=2)` hands them out with the layer's names; or pass
  `indices=` with the candidate's own); it reads tensors by name as at order 1, the derivation's
  abbreviations (cross-entropy's `p[n, k]`) and, for an elementwise layer, `g`.

The signature tells a function's form: one that declares the direction (`v` or `<wrt>_dot`) is
an HVP, one that does not is a full Hessian (an error for a layer whose output is not a scalar,
unless it takes `**inputs`: an HVP then). The report's `form` says which was seen.

The numbers, every case in float64 (the cases of order 1, from the same seed, without the ties of
a max, where there is no second derivative: that case is left out and listed as skipped): the
candidate's H v (an HVP's own; a Hessian's contracted with v) is compared with the derived HVP, the
compiled float64 kernel of derive.second_order's forward-over-reverse program
(`compiled.second_order`), `max|cand - derived| <= vjp_rtol * max|derived| + 1e-12`; and both with
central differences of the derived VJP (derive.reference) along v,
`(VJP(x + eps v) - VJP(x - eps v)) / (2 eps)`, elementwise `|a - fd| <= atol + rtol * |fd|`.
A full Hessian of an argument with at most FULL_MAX elements is also compared whole, with the
derived HVP of each unit vector. Verdicts, the symbolic proof (of the index form), the smallest
counterexample (with `v` for an H v; the whole matrix for a Hessian) and the report are those of
`derive.verify`; the report has `order=2`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import finite_differences, reference
from .equivalence import CandidateError, namespace, normalize, parse
from .errors import DeriveError
from .steps import text as _text
from .verify import _bad_option, _check_wrt, _resolve, _settings, _symbolic
from .verify_candidates import _CandidateFailed, _describe, _FunctionCandidate, _real_array
from .verify_cases import _cases, _point, _simple
from .verify_check import _compare, _dims_dict, _fd_error, _Point, _run, _Unreliable, _VJPCheck
from .verify_report import CaseResult, VerifyReport

__all__ = ["verify_order2", "hessian_symbols", "FULL_MAX"]

FULL_MAX = 64  # a full Hessian of an argument with at most this many elements is compared whole


def verify_order2(target, wrt, candidate, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, trials: int = 4, seed: int = 0, dtype="float64",
                  shapes=None, indices=None, vjp_rtol: float = 1e-7,
                  symbolic_timeout: float = 10.0, timeout: float = 60.0) -> VerifyReport:
    """Check `candidate`, a hand-derived HVP or Hessian of layer `target` in the (wrt, wrt) block.
    The options are those of `derive.verify`; `indices` names a SymPy Hessian's free indices."""
    name = target if isinstance(target, str) else getattr(target, "name", "?")
    shown = ",".join(map(str, wrt)) if isinstance(wrt, (tuple, list)) else str(wrt)
    settings = _settings(eps, atol, rtol, vjp_rtol, trials, seed, dtype, timeout)

    def error(msg, cand=None):
        return VerifyReport(name, shown, "error", msg, getattr(cand, "kind", ""),
                            cand.describe() if cand else "", settings=settings, order=2,
                            form=getattr(cand, "form", ""))

    if not isinstance(wrt, str) or "," in wrt:
        return error(f"order 2 checks one argument at a time (the (wrt, wrt) block of the "
                     f"Hessian), got wrt '{shown}'; name a single argument")
    bad = _bad_option(eps, atol, rtol, vjp_rtol, trials, dtype, timeout)
    if bad:
        return error(bad)
    cand = None
    try:
        d = _resolve(target)
        name = d.name
        _check_wrt(d, wrt)
        cand = _candidate(candidate, d, wrt, indices, timeout)
        cases = _cases(d, trials, seed, shapes)
        kernels = _hvp_kernels(d)
    except (DeriveError, CandidateError) as e:
        return error(str(e), cand)

    report = VerifyReport(d.name, wrt, "matches", "", cand.kind, cand.describe(),
                          settings=settings, order=2, form=cand.form)
    for c in cases:
        if c.kind == "ties":
            report.skipped.append(f"case '{c.label}': a max has no second derivative at a tie; "
                                  f"order 2 leaves it out")
    proof = _symbolic(report, cand, getattr(cand, "derived", None), d, wrt, symbolic_timeout,
                      getattr(cand, "extents", None))
    if proof is not None and proof.difference is not None:
        report.difference = _abbreviated(proof.difference, d)
    check = _HVPCheck(d, wrt, cand, kernels, eps=eps, atol=atol, rtol=rtol, seed=seed,
                      vjp_rtol=vjp_rtol)
    return _run(report, check, [c for c in cases if c.kind != "ties"], proof)


def _abbreviated(diff, d) -> str:
    """derived - candidate as text, with the derivation's abbreviations (p[n, k] for
    exp(logits[n, k] - lse[n])) where it reads them at two index positions."""
    from .second_order import abbreviate

    try:
        expr, where = abbreviate(diff, d, d.graph)
    except Exception:  # noqa: BLE001 - abbreviating is cosmetic
        return _text(diff)
    defs = "; ".join(f"{_text(ref)} = {_text(definition)}" for ref, definition in where)
    return _text(expr) + (f"  (where {defs})" if defs else "")


def _hvp_kernels(d):
    """The compiled float64 JVP/HVP kernels of `d` (DeriveError naming the layer if they fail)."""
    from symgrad.compiled import KernelError
    from symgrad.compiled.second_order import second_order_kernels

    try:
        return second_order_kernels(d, "float64")
    except KernelError as e:
        raise DeriveError(d.name, f"the derived HVP kernel: {e}") from None


# --- the numbers ------------------------------------------------------------------------------

@dataclass
class _Point2(_Point):
    whole: np.ndarray | None = None  # the derived Hessian block whole (a small full Hessian)


class _HVPCheck(_VJPCheck):
    """One case at order 2: the candidate's H v against the derived HVP kernel, both against
    central differences of the derived VJP along v; a small full Hessian also whole."""

    what = "Hessian"

    def __init__(self, d, wrt, cand, kernels, **options):
        super().__init__(d, wrt, cand, **options)
        self.kernels = kernels

    def hvp(self, args, upstream, v) -> np.ndarray:
        try:
            out = self.kernels.hvp(args, {self.wrt: np.ascontiguousarray(v, np.float64)}, upstream)
        except ValueError as e:  # compiled.KernelError
            raise DeriveError(self.d.name, f"the derived HVP kernel: {e}") from None
        return np.asarray(out[self.wrt], np.float64).reshape(np.shape(v))

    def point(self, inst, case) -> _Point:
        args, upstream = _point(inst, case, self.int_ranges)
        if self.cand.unit_upstream:  # a Hessian of the output itself
            upstream = {u: 1.0 for u in upstream}
        rng = np.random.default_rng(case.seed + 11)
        v = rng.standard_normal(inst.shape[self.wrt])
        if case.kind == "simple":
            v = _simple(v, rng)
        vals = inst.forward(args)
        with np.errstate(all="ignore"):
            expected = self.hvp(args, upstream, v)
            whole = self.whole(inst, args, upstream) if self.cand.full else None
        return _Point2(args, upstream, vals, expected, self.finite(vals, expected),
                       {self.cand.direction: v}, whole)

    def whole(self, inst, args, upstream):
        """The derived Hessian block, column by column (H e_r), for a small argument; else None."""
        shape = inst.shape[self.wrt]
        n = int(np.prod(shape, dtype=int))
        if n > FULL_MAX:
            return None
        cols = [self.hvp(args, upstream, np.eye(n)[r].reshape(shape)) for r in range(n)]
        return np.stack(cols, axis=-1).reshape(shape + shape) if n else np.zeros(shape + shape)

    def call(self, inst, pt: _Point) -> np.ndarray:
        return self.cand(inst, pt)

    def counterexample(self, inst, case):
        ce = super().counterexample(inst, case)
        if ce is not None and self.cand.unit_upstream:  # the candidate never saw g (= 1)
            ce.upstream = {}
        return ce

    def quantity(self, got) -> str:
        return "H" if self.cand.full else "Hv"

    def along(self, inst, pt: _Point) -> np.ndarray:
        """Central differences of the derived VJP along v."""
        x, v, eps = pt.args[self.wrt], self._v(pt), self.eps

        def vjp(xv):
            a = dict(pt.args)
            a[self.wrt] = xv
            return inst.expr_value(self.d.grads[self.wrt], dict(inst.forward(a), **pt.upstream))
        return finite_differences.directional(vjp, x, v, eps)

    def _v(self, pt):
        return pt.direction[self.cand.direction]

    def result(self, inst, case, pt: _Point, got) -> CaseResult:
        fd = self.along(inst, pt)
        fd_derived, ok_derived = _fd_error("elementwise", fd, pt.expected, self.atol, self.rtol)
        if not ok_derived:
            raise _Unreliable(f"the derived HVP disagrees with finite differences of the derived "
                              f"VJP (max abs error {fd_derived:.3g})")
        hv = self.cand.times(got, self._v(pt))
        ok, worst, rel, index = _compare(pt.expected, hv, self.vjp_rtol)
        fd_cand, ok_fd = _fd_error("elementwise", fd, hv, self.atol, self.rtol)
        ok = ok and ok_fd
        mode = "VJP along v"
        if pt.whole is not None:  # every element of the matrix, not only its product with v
            ok_h, worst_h, rel_h, index_h = _compare(pt.whole, got, self.vjp_rtol)
            if not ok_h:
                ok, index = False, index_h
            worst, rel, mode = max(worst, worst_h), max(rel, rel_h), "VJP along v; H whole"
        return CaseResult(case.label, _dims_dict(case.dims), worst, rel, fd_cand, mode, ok,
                          None if ok else index)

    def mismatch(self, pt: _Point, got):
        if pt.whole is not None:
            ok, _, _, index = _compare(pt.whole, got, self.vjp_rtol)
            if not ok:
                return pt.whole, got, index, "H", {}
        hv = self.cand.times(got, self._v(pt))
        ok, _, _, index = _compare(pt.expected, hv, self.vjp_rtol)
        return None if ok else (pt.expected, hv, index, "Hv", pt.direction)


def _contract(H, v):
    """H v for a Hessian shaped v.shape + v.shape."""
    v = np.asarray(v)
    return np.tensordot(H, v, axes=v.ndim) if v.ndim else H * v


# --- candidates -------------------------------------------------------------------------------

def _candidate(candidate, d, wrt, indices, timeout):
    """The candidate object for its form (see the module docstring); CandidateError if none fits."""
    scalar = all(not o.shape for o in d.outputs)
    if isinstance(candidate, (sp.Basic, str)):
        return _SympyHessian(candidate, d, wrt, indices, scalar)
    if not callable(candidate):
        raise CandidateError(f"a candidate at order 2 is a function candidate(g, v, **inputs) "
                             f"(an HVP), candidate(**inputs) (a full Hessian) or a SymPy "
                             f"expression (the Hessian in index form), got "
                             f"{type(candidate).__name__}")
    if indices is not None:
        raise CandidateError("indices= applies to SymPy candidates only")
    names = {a.name for a in d.arguments}
    default = "v" if "v" not in names else f"{wrt}_dot"
    try:
        params = inspect.signature(candidate).parameters.values()
        declared = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # builtins and the like
        declared, var_kw = [], True
    for direction in (default, f"{wrt}_dot"):
        if direction in declared:
            return _HVPFunction(candidate, d, wrt, timeout, direction)
    if scalar:
        return _HessianFunction(candidate, d, wrt, timeout)
    if var_kw:
        return _HVPFunction(candidate, d, wrt, timeout, default)
    raise CandidateError(f"wrong signature: {_describe(candidate)} does not take the direction "
                         f"'{default}'; an HVP candidate is candidate(g, {default}, **inputs) "
                         f"(a full Hessian candidate(**inputs) is for a layer with a scalar "
                         f"output, which {d.name} is not)")


def _upstreams(d) -> list:
    return [d.upstream(o.name) for o in d.outputs]


class _HVPFunction(_FunctionCandidate):
    """candidate(g, v, **inputs) -> H v, shaped like wrt."""

    full = False
    unit_upstream = False

    def __init__(self, fn, d, wrt, timeout, direction):
        self.direction = direction
        self.role = f"the upstream gradient, the direction {direction}"
        super().__init__(fn, d, wrt, timeout)
        self.form = (f"HVP candidate({', '.join(_upstreams(d))}, {direction}, **inputs) -> "
                     f"H {direction}, shaped like {wrt}")

    def _allowed(self) -> list:
        return _upstreams(self.d) + [self.direction] + [a.name for a in self.d.arguments]

    def _quantity(self, wrt: str) -> str:
        return "H v"

    def _several(self, out) -> str:
        return ""

    def __call__(self, inst, pt: _Point):
        return self._gradient(self.invoke({**pt.upstream, **pt.direction,
                                           **inst.values(pt.args)}), inst)

    @staticmethod
    def times(got, v):
        return got


class _HessianFunction(_FunctionCandidate):
    """candidate(**inputs) -> the Hessian block, shaped wrt.shape + wrt.shape (scalar outputs)."""

    full = True
    unit_upstream = True
    direction = "v"

    def __init__(self, fn, d, wrt, timeout):
        super().__init__(fn, d, wrt, timeout)
        self.form = f"full Hessian candidate(**inputs), shaped {wrt}.shape + {wrt}.shape"

    def _allowed(self) -> list:
        return [a.name for a in self.d.arguments]

    def _unknown(self, param: str, allowed) -> str:
        why = ("no upstream gradient (it is the Hessian of the output itself)"
               if param in _upstreams(self.d) else f"'{param}' is not one of them")
        return (f"wrong signature: parameter '{param}' of {self.describe()}: a full Hessian "
                f"candidate(**inputs) takes {self.d.name}'s arguments ({', '.join(allowed)}), "
                f"{why}; an HVP candidate takes the direction too: candidate(g, v, **inputs)")

    def __call__(self, inst, pt: _Point):
        arr = _real_array(self.invoke(inst.values(pt.args)), "the candidate returned")
        shape = inst.shape[self.wrt]
        if arr.shape != shape + shape:
            raise _CandidateFailed(f"the candidate returned shape {arr.shape}; a full Hessian by "
                                   f"{self.wrt} has shape {self.wrt}.shape + {self.wrt}.shape = "
                                   f"{shape + shape}")
        return arr.astype(np.float64)

    times = staticmethod(_contract)


def _hessian(d, wrt):
    """The derived (wrt, wrt) Hessian block in index form; CandidateError where there is none."""
    from .second_order import second_order

    h = second_order(d).hessians.get((wrt, wrt))
    if h is None:
        raise CandidateError(f"a SymPy candidate at order 2 is a Hessian in index form, which "
                             f"derive writes for layers with a scalar output and elementwise "
                             f"ones; {d.name} is neither: pass a function candidate(g, v, "
                             f"**inputs) returning H v")
    return h


def _abbreviations(h) -> dict:
    """The names of a Hessian's abbreviations (cross-entropy's p) -> their IndexedBase."""
    return {str(ref.base.label): ref.base for ref, _ in h.where}


def _expand(expr, where):
    """Every read of an abbreviation (p[n, t]) replaced by its definition at those indices."""
    for ref, definition in where:
        name = str(ref.base.label)
        reads = {ix for ix in expr.atoms(sp.Indexed) if str(ix.base.label) == name}
        expr = expr.xreplace({ix: definition.xreplace(dict(zip(ref.indices, ix.indices)))
                              for ix in reads})
    return expr


class _SympyHessian:
    """A Hessian block in index form, proved against the derived one and evaluated whole."""

    kind = "sympy"
    full = True
    direction = "v"

    def __init__(self, candidate, d, wrt, indices, scalar):
        h = _hessian(d, wrt)
        self.d, self.wrt, self.unit_upstream = d, wrt, scalar
        self.indices = tuple(h.a_indices) + tuple(h.b_indices)
        extra = {str(i): i for i in self.indices} | _abbreviations(h)
        expr = parse(candidate, d, wrt, extra) if isinstance(candidate, str) else candidate
        self.shown = _text(expr)  # as written, abbreviations and all
        expr = normalize(_expand(expr, h.where), d, wrt, indices, free=self.indices,
                         what=f"the Hessian {_text(h.lhs)}")
        if scalar:  # the Hessian of a loss: g = 1, as in the derived block
            expr = expr.xreplace({sp.Symbol(u, real=True): sp.S.One for u in _upstreams(d)})
        self.expr = expr
        self.derived = _expand(h.expr, h.where)
        shape = tuple(d.graph.tensor(wrt).shape)
        self.extents = dict(zip(self.indices, shape + shape))
        self.form = f"SymPy Hessian in index form, {_text(h.lhs)}"

    def describe(self):
        return self.shown

    def __call__(self, inst, pt: _Point):
        shape = inst.shape[self.wrt]
        ext = dict(inst.ext)
        ext.update(zip(self.indices, shape + shape))
        try:
            with np.errstate(all="ignore"):
                out = reference.evaluate(self.expr.xreplace(inst.dims), self.indices,
                                         dict(pt.vals, **pt.upstream), ext)
        except (DeriveError, KeyError, IndexError, TypeError, ValueError) as e:
            raise _CandidateFailed(f"the candidate expression cannot be evaluated: {e}") from None
        return np.asarray(out, dtype=np.float64).reshape(shape + shape)

    times = staticmethod(_contract)


def hessian_symbols(target, wrt: str) -> dict:
    """The SymPy objects to write `target`'s (wrt, wrt) Hessian block with: the layer's names (as
    `candidate_symbols`), the block's free indices and the derivation's abbreviations."""
    d = _resolve(target)
    _check_wrt(d, wrt)
    h = _hessian(d, wrt)
    ns = namespace(d, wrt)
    ns.update({str(i): i for i in (*h.a_indices, *h.b_indices)})
    ns.update(_abbreviations(h))
    return ns
