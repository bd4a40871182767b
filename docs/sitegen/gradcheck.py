"""The numeric checks each layer page reports, run at build time in float64.

First order (`run`): for random arguments and a random upstream gradient `g`, the scalar
`L = sum_o <g_o, y_o>` (one term per output) has `dL/d(arg) = VJP(arg)`. Its central finite
difference `(L(arg + h e) - L(arg - h e)) / 2h` is compared with the VJP that
`derive.reference.vjp` evaluates from the derived expressions, at every element (or a random
sample of MAX_ELEMENTS elements of a large argument). Both sides come from `derive.reference`, a
plain float64 NumPy evaluator of the forward definition and of the derived gradients.

Second order (`run_hvp`): for a random direction `v` (one tangent per differentiable argument,
all moved together), `H v` from a Hessian-vector product (the printed HVP kernel, passed in) is
compared with the central difference of the derived gradient along v,
`(VJP(args + h v) - VJP(args - h v)) / 2h`, by `derive.reference.vjp` again, at every element.
The upstream gradient is random, 1 for a scalar output (the Hessian of a loss).

Both use the same dims, arguments, step and tolerance (`ATOL + RTOL * |fd|` per element);
nothing here knows any layer's gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from symgrad.derive import finite_differences, reference

# Small, distinct dims (a transposed index shows up as a shape error or a wrong value).
CHECK_DIMS = (3, 4, 5, 2, 6, 7)
H = 1e-6
RTOL = 1e-5
ATOL = 1e-6
MAX_ELEMENTS = 24


@dataclass
class ArgCheck:
    arg: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple
    fd: float          # at worst_index: the finite difference ...
    derived: float     # ... and the derived value (the VJP, or H v)
    failures: int = 0  # elements outside ATOL + RTOL * |fd|

    @property
    def ok(self) -> bool:
        return self.failures == 0


@dataclass
class CheckResult:
    layer: str
    dims: dict
    seed: int
    args: list = field(default_factory=list)
    scale: float | None = None  # run_hvp: max |fd| over every argument (what max_rel_err divides by)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.args)


def check_dims(d) -> dict:
    """{dim symbol: small value} for a layer's dims, in declaration order; a dim that leaves an
    index with no range (conv2d's 5x5 kernel over 3 rows) is raised until every index has one."""
    import sympy as sp

    dims = {s: CHECK_DIMS[n % len(CHECK_DIMS)] for n, s in enumerate(d.graph.dims_)}
    for _ in range(16):
        empty = [sp.sympify(e) for e in d.graph.extents.values() if int(sp.sympify(e).subs(dims)) < 1]
        if not empty:
            break
        e = empty[0]
        for s in e.free_symbols & set(dims):  # grow the sizes the extent grows with (W, not K)
            if int(e.subs({**dims, s: dims[s] + 2})) > int(e.subs(dims)):
                dims[s] += 2
    return dims


def _value(shape, dims):
    return tuple(int(np.asarray(s.subs(dims) if hasattr(s, "subs") else s)) for s in shape)


def random_args(d, dims, rng) -> dict:
    """Random float64 arguments; integer inputs (token ids, targets) in [0, smallest dim)."""
    low = min(dims.values()) if dims else 2
    args = {}
    for a in d.arguments:
        shape = _value(a.shape, dims)
        if a.role == "const":
            args[a.name] = float(a.default)
        elif a.integer:
            args[a.name] = rng.integers(0, low, size=shape)
        else:
            args[a.name] = rng.standard_normal(shape)
    return args


def compare(arg: str, shape: tuple, indices: list, fd, derived, scale: float | None = None) -> ArgCheck:
    """The finite differences `fd` and the derived values at `indices` of argument `arg`: an element
    fails outside ATOL + RTOL * |fd|. The relative error is |error| / |fd| per element, or
    |error| / scale when a scale is given (H v: the largest element of the whole product, so an
    argument whose H v is zero, multihead attention's key bias, is not judged by its rounding)."""
    fd, derived = np.asarray(fd, dtype=np.float64), np.asarray(derived, dtype=np.float64)
    err = np.abs(fd - derived)
    excess = err - (ATOL + RTOL * np.abs(fd))
    rel = err / (np.maximum(np.abs(fd), 1e-12) if scale is None else max(scale, 1e-300))
    w = int(np.argmax(excess)) if err.size else 0
    return ArgCheck(arg, tuple(shape), len(indices), float(err.max(initial=0.0)),
                    float(rel.max(initial=0.0)), tuple(int(i) for i in indices[w]) if indices else (),
                    float(fd[w]) if err.size else 0.0, float(derived[w]) if err.size else 0.0,
                    int(np.sum(excess > 0)))


def run(d, seed: int = 0) -> CheckResult:
    """Central finite differences against derive.reference.vjp for every differentiable argument."""
    ref = reference
    rng = np.random.default_rng(seed)
    dims = check_dims(d)
    args = random_args(d, dims, rng)
    outputs = d.outputs
    upstream = {d.upstream(o.name): rng.standard_normal(_value(o.shape, dims)) for o in outputs}

    def loss(a):
        out = ref.forward(d, a)
        return sum(float(np.sum(np.asarray(upstream[d.upstream(o.name)]) * np.asarray(out[o.name])))
                   for o in outputs)

    grads = ref.vjp(d, upstream, args)
    result = CheckResult(d.name, {str(k): v for k, v in dims.items()}, seed)
    for name in d.grads:
        x = args[name]
        an = np.asarray(grads[name], dtype=np.float64)
        if an.shape != np.shape(x):
            raise AssertionError(f"{d.name}: reference vjp for '{name}' has shape {an.shape}, "
                                 f"argument has {np.shape(x)}")
        every = list(itertools.product(*(range(s) for s in np.shape(x))))
        if len(every) > MAX_ELEMENTS:
            pick = rng.choice(len(every), size=MAX_ELEMENTS, replace=False)
            every = [every[p] for p in sorted(pick)]
        fds = finite_differences.elementwise(lambda xv, name=name: loss({**args, name: xv}), x, H, every)
        result.args.append(compare(name, np.shape(x), every, fds, [an[idx] for idx in every]))
    return result


def run_hvp(d, hvp, seed: int = 0) -> CheckResult:
    """H v from `hvp(args, tangents, upstream) -> {argument: H v}` (a layer's printed HVP kernel)
    against central differences of derive.reference.vjp along v, for every differentiable
    argument, at every element. A scalar output's upstream gradient is 1 (the Hessian of a loss)."""
    ref = reference
    rng = np.random.default_rng(seed)
    dims = check_dims(d)
    args = random_args(d, dims, rng)
    upstream = {d.upstream(o.name): rng.standard_normal(_value(o.shape, dims)) if o.shape else 1.0
                for o in d.outputs}
    wrt = [a.name for a in d.arguments if a.differentiable]
    v = {a: rng.standard_normal(np.shape(args[a])) for a in wrt}
    got = hvp(args, v, upstream)
    fd = finite_differences.directional(lambda a: ref.vjp(d, upstream, a), args, v, H)
    result = CheckResult(d.name, {str(k): val for k, val in dims.items()}, seed)
    result.scale = max((float(np.max(np.abs(f), initial=0.0)) for f in fd.values()), default=0.0)
    for name in d.grads:
        hv = np.asarray(got[name], dtype=np.float64)
        if hv.shape != fd[name].shape:
            raise AssertionError(f"{d.name}: H v for '{name}' has shape {hv.shape}, argument has "
                                 f"{fd[name].shape}")
        every = list(itertools.product(*(range(s) for s in hv.shape)))
        result.args.append(compare(name, hv.shape, every, fd[name].ravel(), hv.ravel(), result.scale))
    return result
