"""The fuzzer's checker: derive, compile (float64), run and compare one generated case against the
reference forward, central differences and torch.autograd; each case gets one class (ok, refused,
crash, disagree; see tests/fuzz/__init__.py)."""

from __future__ import annotations

import math
import re
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .generator import Case


RTOL_FORWARD = 1e-10  # compiled float64 forward vs the NumPy reference
RTOL_TORCH = 1e-9  # compiled float64 backward vs torch.autograd (both exact up to rounding)
RTOL_FD = 1e-6  # compiled float64 backward vs central differences (eps 1e-6, bounded values)
PAD = 16  # NaN elements on either side of every array the kernels read or write


@dataclass
class Result:
    seed: int
    kind: str  # ok, refused, crash, disagree
    reason: str = ""
    family: str = ""
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # stage -> seconds
    detail: str = ""  # a traceback or the full comparison messages

    def as_dict(self):
        return dict(self.__dict__)


class _Refused(Exception):
    pass


class _Disagree(Exception):
    pass


class _Timeout(BaseException):
    pass


def _padded(a):
    """A C-contiguous copy of a inside a NaN-padded buffer: (view, buffer)."""
    a = np.asarray(a, np.float64)
    buf = np.full(a.size + 2 * PAD, np.nan)
    view = buf[PAD:PAD + a.size].reshape(a.shape)
    view[...] = a
    return view, buf


def _canary_intact(buf):
    return bool(np.isnan(buf[:PAD]).all() and np.isnan(buf[-PAD:]).all())


def _compare(what, got, want, rtol, problems):
    """Append a message to `problems` unless |got - want| <= rtol * max(1, max |want|) everywhere
    (tests/gradcheck.py's rule); the message names the element and both values."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        problems.append(f"{what}: shape {got.shape}, expected {want.shape}")
        return
    if not np.isfinite(want).all():
        problems.append(f"{what}: the expected value is not finite (a fuzzer fault: values are bounded)")
        return
    bad = ~np.isfinite(got)
    if bad.any():
        ix = tuple(int(v) for v in np.argwhere(bad)[0])
        problems.append(f"{what}{list(ix)} = {float(got[ix])!r} where {float(want[ix])!r} is expected (an "
                        f"out-of-bounds read of the NaN padding, or an element never written)")
        return
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = np.abs(got - want)
    if err.size and err.max() > rtol * scale:
        ix = tuple(int(v) for v in np.unravel_index(int(np.argmax(err)), err.shape))
        problems.append(f"{what}{list(ix)} = {float(got[ix])!r}, expected {float(want[ix])!r} "
                        f"(|diff| {err[ix]:.2e} > {rtol:.0e} * {scale:.3g})")


def torch_forward(graph, values: dict, dims: dict, torch):
    """Every binding of the graph evaluated on torch tensors (float64), with autograd.

    The same broadcasting scheme as derive/reference.py, written again on torch so that the
    gradient oracle shares no code with derive: every index symbol of the graph owns one axis; a
    value is a tensor that broadcasts over the axes of the indices it depends on; a Sum masks its
    limits and sums its axis; a binding is stored compact (the axes of its own indices), and a
    `stop_gradient` binding is detached."""
    syms = list(graph.extents)
    nd = len(syms)
    axis = {s: n for n, s in enumerate(syms)}
    ext = {s: int(sp.sympify(e).subs(dims)) for s, e in graph.extents.items()}
    grid = {s: torch.arange(ext[s]).reshape([ext[s] if a == axis[s] else 1 for a in range(nd)])
            for s in syms}
    f64 = torch.float64

    def t(v):
        return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=f64)

    unary = {sp.exp: torch.exp, sp.log: torch.log, sp.tanh: torch.tanh, sp.sin: torch.sin,
             sp.cos: torch.cos, sp.erf: torch.erf, sp.Abs: torch.abs, sp.sign: torch.sign}

    def reduce(val, var, lo, hi, is_max):
        """val (broadcast over the axis of var) masked to [lo, hi] and reduced over that axis."""
        mask = (grid[var] >= ev(lo)) & (grid[var] <= ev(hi))
        val = torch.where(mask, t(val).to(f64), torch.tensor(-math.inf if is_max else 0.0, dtype=f64))
        return val.amax(axis[var], keepdim=True) if is_max else val.sum(axis[var], keepdim=True)

    def ev(e):
        from symgrad.derive import Iverson, MaxOver
        if isinstance(e, sp.Indexed):
            idx = [t(ev(i)).long() for i in e.indices]
            return values[str(e.base.label)][tuple(idx)]
        if isinstance(e, sp.Symbol):
            return grid[e] if e in grid else values[e.name]
        if e.is_Integer:
            return int(e)
        if e.is_Number:
            return float(e)
        if isinstance(e, sp.Add):
            return sum((ev(a) for a in e.args[1:]), ev(e.args[0]))
        if isinstance(e, sp.Mul):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out * ev(a)
            return out
        if isinstance(e, sp.Pow):
            return t(ev(e.base)).to(f64) ** ev(e.exp)
        if isinstance(e, sp.Sum):
            val = ev(e.function)
            for var, lo, hi in e.limits:  # innermost first
                val = reduce(val, var, lo, hi, False)
            return val
        if isinstance(e, MaxOver):
            body, var, lo, hi = e.args
            return reduce(ev(body), var, lo, hi, True)
        if isinstance(e, (sp.Max, sp.Min)):
            f = torch.maximum if isinstance(e, sp.Max) else torch.minimum
            out = t(ev(e.args[0])).to(f64)
            for a in e.args[1:]:
                out = f(out, t(ev(a)).to(f64))
            return out
        if isinstance(e, Iverson):
            return t(ev(e.args[0])).to(f64)
        if isinstance(e, sp.Rel):
            return {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge,
                    "==": torch.eq, "!=": torch.ne}[e.rel_op](t(ev(e.lhs)), t(ev(e.rhs)))
        if e.func in unary:
            return unary[e.func](t(ev(e.args[0])).to(f64))
        raise NotImplementedError(f"torch_forward has no rule for {e.func.__name__}: {e}")

    out = {}
    for b in graph.bindings:
        v = t(ev(b.expr.subs(dims))).to(f64)
        v = v.reshape((1,) * nd) if v.ndim == 0 else v
        v = v.expand([ext[s] if s in b.indices else 1 for s in syms])
        v = v[tuple(slice(None) if s in b.indices else 0 for s in syms)]
        order = [s for s in syms if s in b.indices]
        v = v.permute([order.index(s) for s in b.indices]) if b.indices else v.reshape(())
        v = v.detach() if b.stop_gradient else v
        values[b.name] = out[b.name] = v
    return out


def _torch():
    try:
        import torch
        return torch
    except ImportError:  # the FD oracle alone
        return None


def inputs_for(case: Case, d, rng):
    """Random float64 values for every input and parameter (constants keep their defaults)."""
    dims = {s: case.sizes[str(s)] for s in d.graph.dims_}
    args = {}
    for a in d.arguments:
        if a.role == "const":
            continue
        shape = tuple(int(sp.sympify(s).subs(dims)) for s in a.shape)
        lo, hi = (0.5, 2.0) if a.name in case.positive else (-1.2, 1.2)
        args[a.name] = rng.uniform(lo, hi, shape)
    return dims, args


def _gist(e) -> str:
    """The first line of an error (the first three of a Numba typing error, which says what
    failed only on its second and third), without terminal colour codes."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    return " | ".join(lines[:3] if lines and lines[0].startswith("Failed in") else lines[:1])


class _Clock:
    """Seconds per stage of one case; `stage` is where it is now (named in a crash's reason)."""

    def __init__(self, res):
        self.res, self.stage, self.t = res, "setup", time.perf_counter()

    def __call__(self, stage):
        now = time.perf_counter()
        self.res.stages[self.stage] = self.res.stages.get(self.stage, 0.0) + now - self.t
        self.stage, self.t = stage, now


def check(case: Case, timeout: float = 120.0) -> Result:
    """Derive, compile (float64), run and compare one case; returns its Result, never raises.
    A case over `timeout` seconds is stopped by SIGALRM (in the main thread) and is a crash."""
    res = Result(case.seed, "ok", family=case.family)
    t0 = time.perf_counter()
    clock = _Clock(res)
    alarm = bool(timeout) and hasattr(signal, "SIGALRM") and \
        threading.current_thread() is threading.main_thread()
    if alarm:
        def on_alarm(signum, frame):
            raise _Timeout()
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        _run_case(case, clock)
    except _Refused as e:
        res.kind, res.reason = "refused", f"{clock.stage}: {e}"
    except _Disagree as e:
        res.kind, res.reason, res.detail = "disagree", str(e).splitlines()[0], str(e)
    except _Timeout:
        res.kind, res.reason = "crash", f"{clock.stage}: timed out after {timeout:g} s"
    except Exception as e:
        res.kind = "crash"
        res.reason = f"{clock.stage}: {type(e).__name__}: {_gist(e)}"
        res.detail = traceback.format_exc()
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    clock("done")
    res.seconds = time.perf_counter() - t0
    res.reason = res.reason[:300]
    return res


def _run_case(case, enter):
    """The stages of one case, in order; `enter(stage)` names the stage a failure happens in."""
    from symgrad import compiled
    from symgrad import derive
    from symgrad.derive import reference
    from tests.gradcheck import central_differences

    enter("define")
    try:
        d = derive.define(case.name, case.builder())
        enter("compile")
        k = compiled.kernels(d, "float64")
    except derive.DeriveError as e:
        raise _Refused(str(e).splitlines()[0]) from None
    if case.invalid:
        raise _Disagree(f"accepted a definition that must be refused: {case.invalid}")

    enter("reference")
    rng = np.random.default_rng(case.seed)
    dims, args = inputs_for(case, d, rng)
    ref = reference.forward(d, args)
    ups = {d.upstream(o.name): (rng.standard_normal(np.shape(ref[o.name])) if np.ndim(ref[o.name])
                                else float(rng.standard_normal())) for o in d.outputs}
    got, grads, problems = _call_kernels(k, d, args, ups, ref, enter)

    enter("compare")
    saved = [t.name for t in d.saved]
    if set(got) != set(saved):
        problems.append(f"forward returns {sorted(got)}, the saved bindings are {sorted(saved)}")
    for n in set(got) & set(saved):
        _compare(f"forward '{n}'", got[n], ref[n], RTOL_FORWARD, problems)
    if set(grads) != set(d.grads):
        problems.append(f"backward returns gradients of {sorted(grads)}, the differentiable arguments "
                        f"are {sorted(d.grads)} (derive's gradient of "
                        + ", ".join(f"{a} is {d.grads[a]}" for a in sorted(set(d.grads) - set(grads))) + ")")

    def loss(a):
        f = reference.forward(d, a)
        return sum(float(np.sum(np.asarray(ups[d.upstream(o.name)]) * f[o.name])) for o in d.outputs)

    enter("differences")
    want_fd = {a: central_differences(loss, args, a) for a in d.grads}
    enter("torch")  # a crash here is the fuzzer's own torch evaluator failing: a fuzzer fault
    want_torch = _torch_oracle(d, args, ups, dims, ref, problems)

    enter("compare")
    n_forward = len(problems)
    for a in set(grads) & set(d.grads):
        if a in want_torch:
            _compare(f"d{a} vs torch.autograd", grads[a], want_torch[a], RTOL_TORCH, problems)
        _compare(f"d{a} vs central differences", grads[a], want_fd[a], RTOL_FD, problems)
    if not problems:
        return
    where = ""
    if len(problems) > n_forward:  # a gradient is wrong: in the derivation, or in its kernel?
        try:
            rv = reference.vjp(d, ups, args)
            bad = [a for a in rv if a in want_fd and np.abs(np.asarray(rv[a]) - want_fd[a]).max(initial=0) >
                   RTOL_FD * max(1.0, float(np.abs(want_fd[a]).max(initial=0)))]
            where = f"; in the derivation (reference.vjp of d{', d'.join(bad)} is wrong too)" if bad \
                else "; in the kernel (reference.vjp of the derivation agrees with finite differences)"
        except Exception as e:
            where = f"; reference.vjp raised {type(e).__name__}: {e}"
    raise _Disagree(f"{problems[0]} ({len(problems)} problem(s){where})\n" + "\n".join(problems))


def _call_kernels(k, d, args, ups, ref, enter):
    """Forward, then backward on the forward's saved values. Every array passed in or out lies
    in a NaN-padded buffer, outputs start as NaN. Returns (saved values, gradients, problems
    with the padding)."""
    names = list(args) + [t.name for t in d.saved] + list(ups)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RuntimeError(f"name clash: {dup} is both an argument or saved binding and an upstream "
                           f"gradient of the backward kernel, which cannot be called with both")
    can_out = "out" not in names  # a tensor named `out` takes the place of the out= dict

    def pad(values):
        return {n: _padded(v) if np.ndim(v) else (v, None) for n, v in values.items()}

    enter("forward")
    fw_in = {n: _padded(v) for n, v in args.items()}
    fw_out = {t.name: _padded(np.full(np.shape(ref[t.name]), np.nan)) for t in d.saved
              if np.ndim(ref[t.name])} if can_out else {}
    kw = {n: v for n, (v, _) in fw_in.items()}
    if can_out:
        kw["out"] = {n: v for n, (v, _) in fw_out.items()}
    got = k.forward(**kw)

    enter("backward")
    sv, up = pad(got), pad(ups)
    # the gradients the kernel writes into arrays (not those it returns as scalars, nor any it
    # lacks: a missing gradient is reported by the caller, not made a KernelError here)
    written = {k.grad_names.get(p.name, p.name) for p in k.backward_spec.params if p.kind == "out"}
    bw_out = {a: _padded(np.full(np.shape(args[a]), np.nan)) for a in d.grads
              if a in written and np.ndim(args[a])} if can_out else {}
    kw = {n: v for n, (v, _) in {**fw_in, **sv, **up}.items()}
    if can_out:
        kw["out"] = {a: v for a, (v, _) in bw_out.items()}
    grads = k.backward(**kw)

    problems = []
    for what, bufs in (("an input", fw_in), ("a saved value", sv), ("an upstream gradient", up),
                       ("a forward output", fw_out), ("a gradient output", bw_out)):
        for n, (_, buf) in bufs.items():
            if buf is not None and not _canary_intact(buf):
                problems.append(f"a kernel wrote outside {what} '{n}' (its NaN padding changed)")
    return got, grads, problems


def _torch_oracle(d, args, ups, dims, ref, problems):
    """torch.autograd's gradient of sum(g * y) through `torch_forward` ({} without torch); the
    torch forward is checked against the reference forward too (into `problems`)."""
    torch = _torch()
    if torch is None:
        return {}
    vals = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in args.items()}
    vals.update({c.name: float(c.default) for c in d.constants})
    tv = torch_forward(d.graph, dict(vals), dims, torch)
    for t in d.saved:
        _compare(f"torch forward '{t.name}'", tv[t.name].detach().numpy(), ref[t.name], RTOL_FORWARD,
                 problems)
    total = sum((torch.as_tensor(ups[d.upstream(o.name)], dtype=torch.float64) * tv[o.name]).sum()
                for o in d.outputs)
    diff = [a for a in d.grads if a in vals]
    tg = torch.autograd.grad(total, [vals[a] for a in diff], allow_unused=True) if diff else []
    return {a: (np.zeros(np.shape(args[a])) if g is None else g.numpy()) for a, g in zip(diff, tg)}
