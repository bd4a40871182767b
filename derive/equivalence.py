"""Symbolic equivalence of two index expressions for the same gradient.

`derive.verify` uses this to decide whether a hand-derived SymPy candidate equals the derived
vector-Jacobian product. The contract for a candidate expression:

- its free indices are the gradient's indices `d.grad_indices[wrt]` (same names; or pass
  `indices=` to say which of the candidate's symbols is which axis);
- it reads tensors by name: the layer's arguments, any binding of the forward graph (saved or
  not), and the upstream gradient(s) `g` / `g_<output>`; scalars (eps, a scalar loss's `g`)
  are plain symbols; reductions are `Sum(body, (k, 0, extent - 1))` with the layer's dims;
- symbols are matched *by name*: `Symbol("i")` and `Symbol("i", integer=True)` are the same
  index here, and `IndexedBase("s")[i, j]` reads the binding `s`.

Deciding equality is conservative: `prove` answers `True` only when a chain of exact rewrites
(delta elimination, expansion, pulling factors out of sums, renaming bound indices, inlining
binding definitions) turns `derived - candidate` into 0. Anything else is "not proved", never
"different" - the numeric check decides that.
"""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import sympy as sp

from . import deltas, fold
from .functions import REDUCTIONS, Iverson, body_of, limits_of, remake


class CandidateError(ValueError):
    """A candidate that cannot be checked at all; the message is the one line a user sees."""


# --- the names a candidate may use ----------------------------------------------------------

def namespace(d, wrt: str) -> dict:
    """The canonical SymPy objects of a layer, by name, for writing a candidate for `wrt`:
    tensors as IndexedBase, scalars and dims as symbols, the gradient's free indices and the
    graph's index symbols, upstream gradients, and `Sum`, `exp`, `log`, `sqrt`, `tanh`, ... ."""
    g = d.graph
    ns = {str(s): s for s in g.dims_}
    ns.update({str(s): s for s in g.extents})
    ns.update({str(s): s for s in d.grad_indices.get(wrt, ())})
    for t in g.tensors():
        ns[t.name] = t.base if t.shape else t.symbol
    for o in d.outputs:
        up = d.upstream(o.name)
        ns[up] = sp.IndexedBase(up, real=True) if o.shape else sp.Symbol(up, real=True)
    ns.update({"Sum": sp.Sum, "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "tanh": sp.tanh,
               "erf": sp.erf, "pi": sp.pi, "KroneckerDelta": sp.KroneckerDelta,
               "Iverson": Iverson, "Piecewise": sp.Piecewise, "Max": sp.Max})
    return ns


def _tensor_names(d) -> dict:
    names = {t.name: t for t in d.graph.tensors()}
    return names


def parse(text: str, d, wrt: str, extra=None):
    """A candidate written as a string, parsed with the layer's names (and `extra` names);
    a tensor it reads that the layer lacks is kept, for normalize to name in its error."""
    local = namespace(d, wrt)
    local.update(extra or {})
    for name in re.findall(r"([A-Za-z_]\w*)\s*\[", text):  # unknown tensors: named in the error
        local.setdefault(name, sp.IndexedBase(name))
    try:
        return sp.sympify(text, locals=local)
    except (sp.SympifyError, SyntaxError, TypeError) as e:
        raise CandidateError(f"cannot parse the candidate expression: {e}") from None


def normalize(expr, d, wrt: str, indices=None, free=None, what=None):
    """The candidate rebuilt from the layer's canonical symbols (matched by name), with its free
    indices checked against the gradient's (or against `free`, in axis order, for the quantity
    named `what`: a Hessian's). Raises CandidateError with a one-line reason."""
    if isinstance(expr, str):
        expr = parse(expr, d, wrt)
    if not isinstance(expr, sp.Basic):
        raise CandidateError(f"a candidate must be a SymPy expression or a function, "
                             f"got {type(expr).__name__}")
    target = tuple(d.grad_indices[wrt] if free is None else free)
    what = what or f"d{wrt}"
    rename = {}
    if indices is not None:
        indices = [sp.Symbol(i) if isinstance(i, str) else i for i in indices]
        if len(indices) != len(target):
            raise CandidateError(f"indices= names {len(indices)} indices but {what} has "
                                 f"{len(target)}: {tuple(target)}")
        rename = {str(a): b for a, b in zip(indices, target)}
    tensors = _tensor_names(d)
    ups = {d.upstream(o.name): o for o in d.outputs}
    scalars = {t.name: t.symbol for t in d.graph.tensors() if not t.shape}
    scalars.update({u: sp.Symbol(u, real=True) for u, o in ups.items() if not o.shape})
    dims = {str(s): s for s in d.graph.dims_}
    index_syms = {str(s): s for s in d.graph.extents}
    index_syms.update({str(s): s for s in target})

    def sym(s, bound):
        if isinstance(s, sp.Dummy):
            return s
        name = s.name
        if name in bound:
            return bound[name]
        if name in rename:
            return rename[name]
        if name in scalars:
            return scalars[name]
        if name in dims:
            return dims[name]
        if name in index_syms:
            return index_syms[name]
        return sp.Symbol(name, integer=True)

    def base(ix):
        name = str(ix.base.label)
        if name in ups:
            o = ups[name]
            if not o.shape:
                raise CandidateError(f"'{name}' is a scalar (the layer's output is a scalar); "
                                     f"use it without an index, not as {ix}")
            rank = len(o.shape)
            b = sp.IndexedBase(name, real=True)
        elif name in tensors:
            t = tensors[name]
            if not t.shape:
                raise CandidateError(f"'{name}' is a scalar and takes no index, got {ix}")
            rank, b = len(t.shape), t.base
        else:
            known = sorted(set(tensors) | set(ups))
            raise CandidateError(f"the candidate reads unknown tensor '{name}' in {ix}; "
                                 f"{d.name} has: {', '.join(known)}")
        if len(ix.indices) != rank:
            raise CandidateError(f"'{name}' has rank {rank} but the candidate uses {ix}")
        return b

    def rebuild(e, bound):
        if isinstance(e, sp.Indexed):
            return base(e)[tuple(rebuild(i, bound) for i in e.indices)]
        if isinstance(e, sp.Symbol):
            return sym(e, bound)
        if isinstance(e, REDUCTIONS):
            inner, limits = dict(bound), []
            for v, lo, hi in limits_of(e):  # bound indices become fresh: no capture after renaming
                lo, hi = rebuild(lo, inner), rebuild(hi, inner)
                inner[str(v)] = deltas.fresh_index(str(v))
                limits.append((inner[str(v)], lo, hi))
            return remake(e, rebuild(body_of(e), inner), limits)
        if not e.args:
            return e
        return e.func(*[rebuild(a, bound) for a in e.args])

    out = rebuild(sp.sympify(expr), {})
    free = _free_indices(out)
    allowed = set(target) | set(d.graph.dims_)
    extra = sorted((s for s in free if s not in allowed and s.name not in scalars), key=str)
    if extra:
        raise CandidateError(
            f"the candidate has free index {', '.join(map(str, extra))} but {what} is indexed by "
            f"{', '.join(map(str, target)) or '(nothing: a scalar)'}; use those names or pass indices=")
    return out


def _free_indices(e) -> set:
    """Free plain symbols of e (bound Sum/MaxOver variables excluded; tensor labels excluded)."""
    if isinstance(e, sp.Indexed):
        out = set()
        for i in e.indices:
            out |= _free_indices(i)
        return out
    if isinstance(e, sp.Symbol):
        return {e}
    if isinstance(e, REDUCTIONS):
        out = _free_indices(body_of(e))
        for v, lo, hi in limits_of(e):
            out = (out - {v}) | _free_indices(lo) | _free_indices(hi)
        return out
    out = set()
    for a in e.args:
        out |= _free_indices(a)
    return out


# --- the normal form --------------------------------------------------------------------------

def _split_sums(e):
    """Nested single-limit Sums of products, constant factors outside, bodies expanded."""
    if isinstance(e, sp.Sum):
        body = sp.expand(_split_sums(e.function))
        return sp.Add(*[deltas.make_sum(t, list(e.limits)) for t in sp.Add.make_args(body)])
    if isinstance(e, (sp.Indexed, sp.Symbol)) or not e.args:
        return e
    return e.func(*[_split_sums(a) for a in e.args])


def normal_form(expr, extents: dict):
    """An exact rewrite of expr towards a canonical shape (equal forms prove equality)."""
    e = deltas.piecewise_to_iverson(expr)
    e = deltas.eliminate_deltas(e, extents)
    for _ in range(2):
        e = sp.expand(sp.powsimp(_split_sums(sp.expand(e)), combine="exp"))
        e = deltas.canonical_names(e)
    return e


def _is_zero(diff) -> bool:
    if diff == 0:
        return True
    num, _ = sp.fraction(sp.together(diff))
    return sp.expand(num) == 0


def inline_bindings(expr, d):
    """Replace every read of a binding by its definition, until only arguments are read."""
    g = d.graph
    names = [b.name for b in g.bindings]
    for _ in range(len(names) + 1):
        hit = fold.referenced_bindings(expr, g)
        if not hit:
            return expr
        for name in hit:
            scalar = not g.tensor(name).shape
            expr = fold.replace_reads(expr, name, lambda idx, n=name: fold.instantiate(g, n, idx),
                                        scalar)
    return expr


# --- the decision -----------------------------------------------------------------------------

@dataclass
class Proof:
    proved: bool
    difference: object  # derived - candidate, tidied (None when proved or not computed)
    note: str = ""


class _Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds, error=_Timeout):
    """Raise `error` in the code inside after `seconds` (SIGALRM, main thread only; elsewhere,
    and for code stuck in C without returning to Python, there is no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise error()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def difference(derived, candidate, d, extents):
    """derived - candidate, tidied for reading (the missing term of a wrong candidate)."""
    cand = deltas.eliminate_deltas(deltas.piecewise_to_iverson(candidate), extents)
    diff = fold.tidy(derived - cand)
    try:
        folded = fold.tidy(fold.fold(diff, d.graph))
        if sp.count_ops(folded) < sp.count_ops(diff):
            diff = folded
    except Exception:  # noqa: BLE001 - folding is cosmetic here
        pass
    return deltas.canonical_names(diff)


def prove(derived, candidate, d, wrt: str, timeout: float = 10.0, extents=None) -> Proof:
    """Try to prove derived == candidate by exact rewrites; see the module docstring.
    `extents`: the free indices' extents (default: those of the gradient by `wrt`)."""
    if extents is None:
        extents = dict(zip(d.grad_indices[wrt], d.graph.tensor(wrt).shape))
    diff = None
    try:
        with time_limit(timeout):
            diff = difference(derived, candidate, d, extents)
            if _is_zero(diff):
                return Proof(True, None, "derived - candidate tidies to 0")
            a, b = normal_form(derived, extents), normal_form(candidate, extents)
            if _is_zero(a - b):
                return Proof(True, None, "equal normal forms")
            a = normal_form(inline_bindings(derived, d), extents)
            b = normal_form(inline_bindings(candidate, d), extents)
            if _is_zero(a - b):
                return Proof(True, None, "equal after inlining every binding's definition")
            return Proof(False, diff, "derived - candidate does not simplify to 0")
    except _Timeout:
        return Proof(False, diff, f"not decided within {timeout:g} s")
    except (RecursionError, TypeError, ValueError, NotImplementedError, AttributeError) as e:
        return Proof(False, diff, f"not decided ({type(e).__name__} in SymPy)")
