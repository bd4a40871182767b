"""The numeric gradient check each layer page reports, run at build time in float64.

For random arguments and a random upstream gradient `g`, the scalar `L = sum_o <g_o, y_o>` (one
term per output) has `dL/d(arg) = VJP(arg)`. Its central finite difference
`(L(arg + h e) - L(arg - h e)) / 2h` is compared with the VJP that `derive.reference.vjp` evaluates
from the derived expressions, at every element (or a random sample of MAX_ELEMENTS elements of a
large argument). Both sides come from `derive.reference`, a plain float64 NumPy evaluator of the
forward definition and of the derived gradients; nothing here knows any layer's gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

# Small, distinct dims (a transposed index shows up as a shape error or a wrong value).
CHECK_DIMS = (3, 4, 5, 2, 6, 7)
H = 1e-6
RTOL = 1e-5
ATOL = 1e-6
MAX_ELEMENTS = 24


class ReferenceMissing(Exception):
    """derive.reference (forward / vjp) is not available in this checkout."""


@dataclass
class ArgCheck:
    arg: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple
    fd: float          # at worst_index: the finite difference ...
    vjp: float         # ... and the derived VJP
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

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.args)


def _reference():
    try:
        from derive import reference
    except ImportError as e:
        raise ReferenceMissing(f"derive.reference is not importable ({e})") from None
    for fn in ("forward", "vjp"):
        if not callable(getattr(reference, fn, None)):
            raise ReferenceMissing(f"derive.reference has no function {fn}()")
    return reference


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


def run(d, seed: int = 0) -> CheckResult:
    """Central finite differences against derive.reference.vjp for every differentiable argument."""
    ref = _reference()
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
        max_abs = max_rel = 0.0
        worst = None  # (excess over tolerance, index, fd, vjp)
        bad = 0
        for idx in every:
            plus, minus = dict(args), dict(args)
            xp = np.array(x, dtype=np.float64, copy=True)
            xm = np.array(x, dtype=np.float64, copy=True)
            xp[idx] += H
            xm[idx] -= H
            plus[name], minus[name] = xp, xm
            fd = (loss(plus) - loss(minus)) / (2 * H)
            v = float(an[idx])
            err = abs(fd - v)
            excess = err - (ATOL + RTOL * abs(fd))
            bad += excess > 0
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(abs(fd), 1e-12))
            if worst is None or excess > worst[0]:
                worst = (excess, idx, fd, v)
        result.args.append(ArgCheck(name, np.shape(x), len(every), max_abs, max_rel, worst[1],
                                    worst[2], worst[3], bad))
    return result
