"""A fuzzer for the whole pipeline: random valid layer definitions through derive -> compile -> run.

    python -m tests.fuzz --budget 300            # fresh seeds until 300 s are spent
    python -m tests.fuzz --budget 60 --seed 7    # seeds 7, 8, 9, ... (a run is reproducible)
    python -m tests.fuzz --seed 1234 --one       # one case: its source, its verdict, a traceback
    python -m tests.fuzz --budget 300 --isolate  # each case in its own process (survives a segfault)

It has three parts, one after the other in this file:

1. **The generator** (`generate(seed)`). A seed fully determines one *valid* layer definition,
   printed as the source of a `build(G)` function exactly as a user would write it (see
   tests/defined_layers.py), plus the sizes of its dims. A definition is 1-3 *steps*, each
   reading the layer's inputs or earlier bindings and adding one or more bindings:

   - elementwise compositions of tanh, sin, erf, exp, sigmoid, log of positive things,
     sqrt of positive things, powers, products, sums, quotients with safe denominators, and
     sometimes ReLU (`sp.Max(e, 0)`) or `sp.Abs`; a binding may broadcast over an axis it does
     not read (`h[i, j] = exp(w[j])`);
   - reductions: sums and means over an index, prefix (causal) sums `sum_{k<=i}`, a full sum to
     a scalar output;
   - max-subtracted normalisations: softmax and log-sum-exp with `G.max(..., stop_gradient=True)`
     (only s and lse are read afterwards: the exponentials and their sum depend on the max, and
     reading them elsewhere would make stop_gradient change the function's gradient), layernorm
     and rmsnorm with a saved positive `rstd`;
   - matrix products: a sum over an index shared by two tensors, square or not;
   - offset reads that stay in range: a window `y[i] = sum_k x[i + k] w[k]` with i over
     `W - K + 1`, a difference `x[i + 1] - x[i]` with i over `N - 1`; and, rarely and on
     purpose, one that does not (i over `N`): such a case is marked `invalid` and must be refused;
   - saved and unsaved intermediates (`save=True` at random); outputs: mostly every binding
     nothing else reads, sometimes also one that a later binding reads;
   - names that clash with the names a kernel uses (`g`, `dx`, `N`, `F`, `np`, `out`, `self`,
     `range`, ...) for inputs, parameters, bindings, dims, indices and constants.

   Values are bounded by construction (inputs in [-1.2, 1.2], positive inputs in [0.5, 2],
   every generated expression has an estimated bound it may not exceed) so that float64 finite
   differences are accurate to far better than the tolerance: a disagreement is a fault, not noise.

2. **The checker** (`check(case)`). It derives the definition, compiles float64 kernels, and
   runs forward and backward on random inputs. The arrays it passes are views into buffers
   padded with NaN (and the outputs it passes are NaN before the call), so an out-of-bounds read
   or an unwritten output element shows up as a NaN. It compares
     - the compiled forward (every saved binding) with `derive.reference.forward`;
     - the compiled backward with float64 central differences of the reference forward
       (tests/gradcheck.py) and, when torch is importable, with torch.autograd on an
       evaluation of the same forward in torch (`torch_forward`: a small interpreter of the
       graph's SymPy bindings on torch tensors, independent of derive/reference.py).
   Each case gets one class:
     ok        everything agrees;
     refused   `derive.define` or `compiled.kernels` raised a DeriveError (allowed: a clear
               refusal naming the layer);
     crash     any other exception anywhere (a raw Numba, SymPy or Python error, a PrintError,
               a KernelError on a call built from the derivation's own arguments, a name clash that
               makes the kernels impossible to call, a time-out, a dead subprocess);
     disagree  a number differs beyond the tolerance (also: a gradient the backward does not
               return, a write into the padding, an invalid definition accepted).

3. **The CLI** (`main`). It runs seeds until the budget is spent, then prints the counts per
   class, the time per definition (median, p99), the reasons for refusals, and for every crash
   or disagreement its seed and a one-line reason. The kernels go to a temporary cache
   directory (removed at the end) unless `SYMGRAD_CACHE_DIR` is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

# --------------------------------------------------------------------------------------------
# 1. The generator
# --------------------------------------------------------------------------------------------

# Names a kernel, its wrapper or the chain rule also uses: upstream gradients, gradients, dims,
# the dtype alias, modules and helpers of the printed file, Python builtins the loops call, the
# API's own parameters, accumulator and adjoint names.
CLASH_NAMES = ("g", "dx", "dw", "dy", "N", "y", "out", "F", "np", "math", "self", "prange", "njit",
               "range", "e", "s", "g_y", "gtotal_y", "sum_x", "maximum", "pool_threads",
               "PARALLEL_MIN", "FAST", "ir", "types", "d", "float", "int", "p", "q")
_PLAIN = {
    "input": ("x", "u", "v", "z"),
    "param": ("w", "b", "A", "W", "gamma", "c"),
    "dim": ("N", "C", "D", "T", "M", "H"),
    "index": ("i", "j", "k", "l", "a", "n", "c", "t"),
    "const": ("eps", "alpha"),
}
_RESERVED = {"G", "sp", "build"}  # the names the generated source itself uses
BOUND = 40.0  # no generated expression may exceed this (estimated) magnitude


@dataclass
class Case:
    """One generated definition: `source` is a `def build(G)` a user could have written."""

    seed: int
    name: str
    family: str  # the steps, e.g. "normalise+matmul"
    source: str
    sizes: dict  # dim name -> size
    positive: tuple = ()  # inputs whose values must be > 0 (they are read under log, sqrt, 1/x)
    invalid: str = ""  # why the definition is invalid on purpose (it must be refused), else ""

    def builder(self):
        ns = {"sp": sp}
        exec(compile(self.source, f"<fuzz seed {self.seed}>", "exec"), ns)
        return ns["build"]


@dataclass(eq=False)  # compared (and hashed) by identity: two axes of one size are still two
class _Axis:
    """An axis kind: a dim (`N`) or a derived extent (`W - K + 1`), with its index names."""

    extent: str
    size: int
    indices: dict = field(default_factory=dict)  # slot -> name; 0: the free index, 1: a summed one


@dataclass
class _T:
    """A tensor the generated source can read: an argument or a binding."""

    name: str
    axes: tuple
    role: str  # input, param, binding
    hi: float  # bound on |value|
    lo: float  # lower bound on the value
    hidden: bool = False  # not to be read by later steps nor be an output (see step_normalise)
    line: str = ""  # a binding's line of source

    def read(self, idx):
        return f"{self.name}[{', '.join(idx)}]" if self.axes else f"{self.name}.ref()"


@dataclass
class _E:
    """A generated expression: its source and bounds (lo > 0.04 counts as safely positive)."""

    src: str
    hi: float
    lo: float

    @property
    def pos(self):
        return self.lo > 0.04


class Generator:
    """Builds one definition from a seeded `np.random.Generator`; see the module docstring."""

    STEPS = ("elementwise", "reduce", "normalise", "matmul", "window", "prefix", "fullsum")
    WEIGHTS = (3, 2, 2.5, 2, 1.5, 1, 1)

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.used = set(_RESERVED)
        self.dims, self.args, self.consts, self.indices, self.body = [], [], [], [], []
        self.tensors: list[_T] = []
        self.axes: list[_Axis] = []
        self.sizes, self.positive = {}, []
        self.clash_p = 0.06
        self.invalid = ""  # set when the definition deliberately reads out of range

    # --- names, dims, indices ---------------------------------------------------------------
    def chance(self, p):
        return bool(self.rng.random() < p)

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def name(self, kind, stem=None):
        """A fresh name: the conventional one, or (sometimes) one that clashes with the kernels."""
        if self.chance(self.clash_p):
            free = [n for n in CLASH_NAMES if n not in self.used and  # G.indices(self=N) is not Python
                    not (kind == "index" and n == "self")]
            if free:
                n = self.pick(free)
                self.used.add(n)
                return n
        stems = [stem] if stem else list(_PLAIN.get(kind, ("h",)))
        for s in stems + [f"{s}{n}" for n in range(2, 9) for s in stems]:
            if s not in self.used:
                self.used.add(s)
                return s
        raise AssertionError("fuzz generator ran out of names")  # never: 8 copies of each stem

    def dim(self, lo=2, hi=4) -> _Axis:
        n = self.name("dim")
        self.dims.append(n)
        self.sizes[n] = int(self.rng.integers(lo, hi + 1))
        ax = _Axis(n, self.sizes[n])
        self.axes.append(ax)
        return ax

    def index(self, ax: _Axis, slot: int) -> str:
        if slot not in ax.indices:
            n = self.name("index")
            ax.indices[slot] = n
            self.indices.append((n, ax.extent))
        return ax.indices[slot]

    def free(self, axes):
        return [self.index(a, 0) for a in axes]

    # --- arguments and bindings ---------------------------------------------------------------
    def arg(self, role, axes, positive=False) -> _T:
        n = self.name(role)
        shape = ", ".join(a.extent for a in axes) + ("," if len(axes) == 1 else "")
        self.args.append(f'{n} = G.{role}("{n}", ({shape}))')
        if positive:
            self.positive.append(n)
        t = _T(n, tuple(axes), role, 2.0 if positive else 1.2, 0.5 if positive else -1.2)
        self.tensors.append(t)
        return t

    def const(self, stem, value):
        n = self.name("const", stem)
        self.consts.append(f'{n} = G.const("{n}", {value!r})')
        return n

    def bind(self, stem, axes, expr: _E, idx=None, save=None, stop=False, positive=False) -> _T:
        n = self.name("binding", stem)
        axes = list(dict.fromkeys(axes))  # a square tensor read on its diagonal gives one axis
        idx = self.free(axes) if idx is None else idx
        save = self.chance(0.4) if save is None else save
        flags = (", save=True" if save else "") + (", stop_gradient=True" if stop else "") + \
                (", positive=True" if positive else "")
        tup = ", ".join(idx) + ("," if len(idx) == 1 else "")
        line = f'{n} = G.bind("{n}", ({tup}), {expr.src}{flags})'
        self.body.append(line)
        t = _T(n, tuple(axes), "binding", expr.hi, expr.lo, hidden=stop, line=line)
        self.tensors.append(t)
        return t

    # --- expressions ----------------------------------------------------------------------------
    def leaf(self, t: _T, scope) -> _E:
        """A read of t at the scope's index for each of its axes; a positive input sometimes
        under log, sqrt or 1/x."""
        e = _E(t.read([scope[a] for a in t.axes]), t.hi, t.lo)
        if t.name in self.positive and self.chance(0.6):
            op = self.pick(("log", "sqrt", "inv", "pow"))
            return {"log": _E(f"sp.log({e.src})", 0.7, -0.7),
                    "sqrt": _E(f"sp.sqrt({e.src})", 1.5, 0.7),
                    "inv": _E(f"1/{e.src}", 2.0, 0.5),
                    "pow": _E(f"{e.src}**sp.Rational(3, 2)", 2.9, 0.35)}[op]
        return e

    def unary(self, e: _E) -> _E:
        s, b = e.src, e.hi
        ops = {
            "tanh": lambda: _E(f"sp.tanh({s})", 1, -1),
            "sin": lambda: _E(f"sp.sin({s})", 1, -1),
            "erf": lambda: _E(f"sp.erf({s})", 1, -1),
            "sigmoid": lambda: _E(f"1/(1 + sp.exp(-({s})))", 1, 1 / (1 + math.exp(b))),
            "log1p_sq": lambda: _E(f"sp.log(1 + ({s})**2)", math.log1p(b * b), 0),
            "sqrt1p_sq": lambda: _E(f"sp.sqrt(({s})**2 + 1)", math.sqrt(b * b + 1), 1),
            "scale": lambda: _E(f"{self.pick(('2', '-3', 'sp.Rational(1, 2)'))}*({s})", 3 * b, -3 * b),
        }
        if b <= 2.5:
            ops["exp"] = lambda: _E(f"sp.exp({s})", math.exp(b), math.exp(-b))
            ops["softplus"] = lambda: _E(f"sp.log(1 + sp.exp({s}))", b + 0.7, math.log1p(math.exp(-b)))
        if b * b <= BOUND:
            ops["square"] = lambda: _E(f"({s})**2", b * b, 0)
        if b ** 3 <= BOUND:
            ops["cube"] = lambda: _E(f"({s})**3", b ** 3, -b ** 3)
        if e.pos:
            ops["log"] = lambda: _E(f"sp.log({s})", max(-math.log(e.lo), abs(math.log(b))), math.log(e.lo))
            ops["sqrt"] = lambda: _E(f"sp.sqrt({s})", math.sqrt(b), math.sqrt(e.lo))
        ops = {k: v for k, v in ops.items() if k != "scale" or 3 * b <= BOUND}
        rare = {"relu": lambda: _E(f"sp.Max({s}, 0)", b, 0), "abs": lambda: _E(f"sp.Abs({s})", b, 0)}
        if self.chance(0.08):
            return self.pick(list(rare.values()))()
        return self.pick(list(ops.values()))()

    def binary(self, a: _E, b: _E) -> _E:
        ops = {"add": lambda: _E(f"{a.src} + {b.src}", a.hi + b.hi, a.lo + b.lo),
               "sub": lambda: _E(f"{a.src} - ({b.src})", a.hi + b.hi, a.lo - b.hi),
               "div1p": lambda: _E(f"({a.src})/(1 + ({b.src})**2)", a.hi, min(a.lo, 0))}
        if a.hi * b.hi <= BOUND:
            lo = a.lo * b.lo if a.lo >= 0 and b.lo >= 0 else -a.hi * b.hi
            ops["mul"] = lambda: _E(f"({a.src})*({b.src})", a.hi * b.hi, lo)
        if b.pos and a.hi / b.lo <= BOUND:
            ops["div"] = lambda: _E(f"({a.src})/({b.src})", a.hi / b.lo, min(a.lo / b.hi, -a.hi / b.lo))
        if b.hi <= 2.5:
            ops["div1pexp"] = lambda: _E(f"({a.src})/(1 + sp.exp({b.src}))", a.hi, min(a.lo, 0))
        return self.pick(list(ops.values()))()

    def compose(self, leaves: list[_E], depth=2) -> _E:
        """Every leaf used once: unary functions on some, binary operations joining them."""
        es = [self.unary(e) if self.chance(0.5) else e for e in leaves]
        while len(es) > 1:
            a = es.pop(int(self.rng.integers(len(es))))
            b = es.pop(int(self.rng.integers(len(es))))
            es.append(self.binary(a, b))
        e = es[0]
        for _ in range(int(self.rng.integers(0 if len(leaves) > 1 else 1, depth + 1))):
            e = self.unary(e)
        return e

    # --- steps -------------------------------------------------------------------------------
    def operand(self, need_axes=1, exclude=()):
        cands = [t for t in self.tensors if not t.hidden and len(t.axes) >= need_axes and t not in exclude]
        bindings = [t for t in cands if t.role == "binding"]
        if bindings and self.chance(0.7):
            return bindings[-1]
        return self.pick(cands) if cands else None

    def step_elementwise(self):
        t = self.operand(0)
        leaves = [t]
        if self.chance(0.6):  # a second operand: another tensor or a new broadcast parameter
            other = self.operand(0, exclude=(t,))
            if other is None or self.chance(0.4):
                axes = [a for a in t.axes if self.chance(0.6)] or list(t.axes[-1:])
                other = self.arg("param", axes)
            leaves.append(other)
        axes = []
        for u in leaves:
            axes += [a for a in u.axes if a not in axes]
        if self.chance(0.3):  # broadcast over an axis the expression does not read
            extra = [a for a in self.axes if a not in axes and  # one an argument has: its size is known
                     any(a in t.axes for t in self.tensors if t.role != "binding")]
            if extra:
                axes.insert(int(self.rng.integers(len(axes) + 1)), self.pick(extra))
        scope = {a: self.index(a, 0) for a in axes}
        e = self.compose([self.leaf(u, scope) for u in leaves])
        return self.bind("h", axes, e, positive=e.pos and self.chance(0.3))

    def _reduce_scope(self, t, a):
        others = [x for x in t.axes if x is not a]
        scope = {x: self.index(x, 0) for x in others}
        scope[a] = self.index(a, 1)
        return others, scope

    def step_reduce(self):
        t = self.operand(1)
        a = self.pick(t.axes)
        others, scope = self._reduce_scope(t, a)
        k = scope[a]
        leaves = [self.leaf(t, scope)]
        if self.chance(0.4):  # a weighted sum: a second tensor along the same axis
            leaves.append(self.leaf(self.arg("param", [a]), scope))
        body = self.compose(leaves, depth=1)
        mean = self.chance(0.4)
        src = f"G.sum({body.src}, {k})" + (f"/({a.extent})" if mean else "")
        n = 1 if mean else a.size
        lo = body.lo * n if body.lo >= 0 else -body.hi * n
        return self.bind("r", others, _E(src, body.hi * n, lo))

    def step_prefix(self):
        """A causal (prefix) sum: y[i] = sum_{k=0..i} f(x[k])."""
        t = self.operand(1)
        a = self.pick(t.axes)
        _, scope = self._reduce_scope(t, a)
        body = self.compose([self.leaf(t, scope)], depth=1)
        src = f"G.sum({body.src}, {scope[a]}, 0, {self.index(a, 0)})"
        return self.bind("cum", t.axes, _E(src, body.hi * a.size, -body.hi * a.size))

    def step_fullsum(self):
        t = self.operand(1)
        scope = {a: self.index(a, 1) for a in t.axes}
        body = self.compose([self.leaf(t, scope)], depth=1)
        src, n = body.src, 1
        for a in reversed(t.axes):
            src, n = f"G.sum({src}, {scope[a]})", n * a.size
        return self.bind("L", [], _E(src, body.hi * n, -body.hi * n))

    def step_normalise(self):
        t = self.operand(1)
        a = self.pick(t.axes)
        others, scope = self._reduce_scope(t, a)
        k, j = scope[a], self.index(a, 0)
        full = dict(scope)
        full[a] = j
        x_k, x_j = t.read([scope[x] for x in t.axes]), t.read([full[x] for x in t.axes])
        o = self.free(others)
        kind = self.pick(("softmax", "softmax", "logsumexp", "layernorm", "rmsnorm"))
        if kind in ("softmax", "logsumexp"):
            m = self.bind("m", others, _E(f"G.max({x_k}, {k})", t.hi, -t.hi), idx=o, stop=True,
                          save=self.chance(0.3))
            m_r = m.read(o)
            if self.chance(0.5):
                e = self.bind("e", t.axes, _E(f"sp.exp({x_j} - {m_r})", 1, 0), idx=None)
                e.hidden = True
                e_k = e.read([scope[x] for x in t.axes])
                e_j = e.read([full[x] for x in t.axes])
            else:
                e_k, e_j = f"sp.exp({x_k} - {m_r})", f"sp.exp({x_j} - {m_r})"
            z = self.bind("z", others, _E(f"G.sum({e_k}, {k})", a.size, 1), idx=o, positive=self.chance(0.5))
            z.hidden = True  # e and z depend on the stop-gradient m: only s and lse do not
            if kind == "softmax":
                return self.bind("s", t.axes, _E(f"{e_j}/{z.read(o)}", 1, 0))
            return self.bind("lse", others, _E(f"{m_r} + sp.log({z.read(o)})", t.hi + 2, -t.hi))
        eps = self.const("eps", 0.25)
        if kind == "rmsnorm":
            r = self.bind("rstd", others, _E(f"1/sp.sqrt(G.sum({x_k}**2, {k})/({a.extent}) + {eps})", 2, 0.3),
                          idx=o, save=self.chance(0.7), positive=True)
            return self.bind("yn", t.axes, _E(f"{x_j}*{r.read(o)}", 2 * t.hi, -2 * t.hi))
        mean = self.bind("mean", others, _E(f"G.sum({x_k}, {k})/({a.extent})", t.hi, t.lo), idx=o)
        var = self.bind("var", others, _E(f"G.sum(({x_k} - {mean.read(o)})**2, {k})/({a.extent})",
                                          4 * t.hi ** 2, 0), idx=o)
        r = self.bind("rstd", others, _E(f"1/sp.sqrt({var.read(o)} + {eps})", 2, 0.1), idx=o,
                      save=self.chance(0.7), positive=True)
        return self.bind("xhat", t.axes, _E(f"({x_j} - {mean.read(o)})*{r.read(o)}", 4 * t.hi, -4 * t.hi))

    def step_matmul(self):
        """y[.., j] = sum_k t[.., k] W[k, j]: a contraction with a new parameter, or with an
        existing tensor that shares the axis."""
        t = self.operand(1)
        a = self.pick(t.axes)
        others, scope = self._reduce_scope(t, a)
        k = scope[a]
        partner = [u for u in self.tensors if u is not t and not u.hidden and a in u.axes and
                   not set(u.axes) & set(others)]
        if partner and self.chance(0.4):
            u = self.pick(partner)
            at = u.axes.index(a)  # the contracted axis of u
        else:  # a new parameter (a, b) or (b, a); b may be a itself (a square matrix)
            choices = [x for x in self.axes if x not in others]
            b = self.dim() if self.chance(0.4) or not choices else self.pick(choices)
            at = 0 if self.chance(0.7) else 1
            u = self.arg("param", [a, b] if at == 0 else [b, a])
        rest = [x for n, x in enumerate(u.axes) if n != at]
        u_idx = [k if n == at else self.index(x, 0) for n, x in enumerate(u.axes)]
        src = f"G.sum({t.read([scope[x] for x in t.axes])}*{u.read(u_idx)}, {k})"
        e = _E(src, t.hi * u.hi * a.size, -t.hi * u.hi * a.size)
        if self.chance(0.5):
            e = self.compose([e], depth=1) if e.hi <= 2.5 else _E(f"sp.tanh({e.src})", 1, -1)
        return self.bind("mm", others + rest, e)

    def step_window(self):
        """Offset reads that stay in range: a convolution window or a difference of neighbours."""
        cands = [t for t in self.tensors if not t.hidden and any(x.size >= 3 for x in t.axes)]
        if not cands:
            return self.step_elementwise()
        t = self.pick(cands)
        a = self.pick([x for x in t.axes if x.size >= 3])
        others = [x for x in t.axes if x is not a]
        if self.chance(0.6):
            K = self.dim(2, a.size - 1)
            out = _Axis(f"{a.extent} - {K.extent} + 1", a.size - K.size + 1)
            self.axes.append(out)
            i, kk = self.index(out, 0), self.index(K, 1)
            w = self.arg("param", [K])
            x_ik = t.read([f"{i} + {kk}" if x is a else self.index(x, 0) for x in t.axes])
            body = self.compose([_E(x_ik, t.hi, t.lo)], depth=1) if self.chance(0.4) else _E(x_ik, t.hi, t.lo)
            e = _E(f"G.sum({body.src}*{w.read([kk])}, {kk})", body.hi * 1.2 * K.size, -body.hi * 1.2 * K.size)
        elif self.chance(0.9):
            out = _Axis(f"{a.extent} - 1", a.size - 1)
            self.axes.append(out)
            i = self.index(out, 0)
            nxt = t.read([f"{i} + 1" if x is a else self.index(x, 0) for x in t.axes])
            cur = t.read([i if x is a else self.index(x, 0) for x in t.axes])
            e = self.binary(_E(nxt, t.hi, t.lo), _E(cur, t.hi, t.lo))
        else:  # on purpose out of range: i runs over all of the axis, so t[i + 1] reads past it
            out = a
            i = self.index(out, 0)
            self.invalid = f"{t.name}[{i} + 1] with {i} over {a.extent} reads past the end"
            nxt = t.read([f"{i} + 1" if x is a else self.index(x, 0) for x in t.axes])
            cur = t.read([i if x is a else self.index(x, 0) for x in t.axes])
            e = self.binary(_E(nxt, t.hi, t.lo), _E(cur, t.hi, t.lo))
        axes = [out if x is a else x for x in t.axes]
        return self.bind("win", axes, e)

    # --- the whole definition ------------------------------------------------------------------
    def drop_unused(self):
        """Arguments no binding reads are mostly left out (sometimes kept: an unused input is
        valid, and an edge case of its own), unless one carries a dim nothing else tells the
        size of; dims nothing uses are left out."""
        read = _words("\n".join(self.body))
        for line in list(self.args):
            n = line.split(" = ", 1)[0]
            if n in read or not self.chance(0.9):
                continue
            rest = self.args[:]
            rest.remove(line)
            needed = _words("\n".join(e for _, e in self.indices)) & set(self.dims)
            if needed <= _words("\n".join(a.split(" = ", 1)[1] for a in rest)):
                self.args = rest
                self.tensors = [t for t in self.tensors if t.name != n]
        used = _words("\n".join(self.args + [e for _, e in self.indices]))
        for d in list(self.dims):
            if d not in used:
                self.dims.remove(d)
                del self.sizes[d]

    def generate(self) -> Case:
        base = [self.dim() for _ in range(int(self.rng.integers(1, 4)))]
        n_steps = int(self.rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        steps = [str(self.rng.choice(self.STEPS, p=np.array(self.WEIGHTS) / sum(self.WEIGHTS)))
                 for _ in range(n_steps)]
        if "window" in steps and base[0].size < 3:  # room for a window on the first axis
            base[0].size = self.sizes[base[0].extent] = int(self.rng.integers(3, 6))
        for _ in range(int(self.rng.integers(1, 3))):
            axes = [a for a in base if self.chance(0.6)] or [self.pick(base)]
            self.arg("input", axes, positive=self.chance(0.15))
        outs = []
        for s in steps:
            outs.append(getattr(self, f"step_{s}")())
        # outputs: the last binding, mostly also every other one nothing reads (a dead binding
        # is valid but rare in real layers), sometimes one that a later binding also reads
        bindings = [t for t in self.tensors if t.role == "binding" and not t.hidden]
        later = {t.name: _words("\n".join(self.body[self.body.index(t.line) + 1:])) for t in bindings}
        outputs = [t for t in bindings if t.name not in later[t.name] and t is not outs[-1]]
        outputs = (outputs if self.chance(0.85) else []) + [outs[-1]]
        read = [t for t in bindings if t not in outputs]
        if read and self.chance(0.3):
            outputs.insert(0, self.pick(read))
        self.drop_unused()
        comma = "," if len(self.dims) == 1 else ""
        lines = [f'{", ".join(self.dims)}{comma} = G.dims("{" ".join(self.dims)}")']
        lines += self.args + self.consts
        idx = ", ".join(n for n, _ in self.indices)
        lines.append(f'{idx}{"," if len(self.indices) == 1 else ""} = G.indices('
                     + ", ".join(f"{n}={e}" for n, e in self.indices) + ")")
        lines += self.body
        lines.append(f"G.output({', '.join(t.name for t in outputs)})")
        family = "+".join(steps)
        src = f'def build(G):\n    """fuzz seed {self.seed}: {family}"""\n' + \
              "".join(f"    {line}\n" for line in lines)
        return Case(self.seed, f"fuzz_{self.seed}", family, src, dict(self.sizes), tuple(self.positive),
                    self.invalid)


def _words(text):
    return set(re.findall(r"\b[A-Za-z_]\w*", text))


def generate(seed: int) -> Case:
    """The definition of one seed (a pure function of the seed)."""
    return Generator(seed).generate()


# --------------------------------------------------------------------------------------------
# 2. The checker
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# 3. The CLI
# --------------------------------------------------------------------------------------------

KINDS = ("ok", "refused", "crash", "disagree")


def check_isolated(seed: int, timeout: float) -> Result:
    """check(generate(seed)) in a fresh interpreter: a segfault or a hang is a crash, not the end."""
    cmd = [sys.executable, "-m", "tests.fuzz", "--one", "--seed", str(seed), "--json",
           "--timeout", str(timeout)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return Result(seed, "crash", f"subprocess: no answer after {timeout + 60:g} s",
                      seconds=time.perf_counter() - t0)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return Result(**json.loads(line))
    why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}"
    tail = (p.stderr.strip().splitlines() or [""])[-1]
    return Result(seed, "crash", f"subprocess: {why}: {tail}"[:300], seconds=time.perf_counter() - t0,
                  detail=p.stderr[-4000:])


def run(seeds, budget: float, isolate=False, timeout=120.0, progress=None) -> list[Result]:
    """Check seeds in order until the budget (seconds) is spent; returns the results."""
    out, t0 = [], time.perf_counter()
    for seed in seeds:
        if time.perf_counter() - t0 >= budget:
            break
        r = check_isolated(seed, timeout) if isolate else check(generate(seed), timeout)
        out.append(r)
        if progress:
            progress(r)
    return out


def summary(results, elapsed) -> str:
    counts = {k: sum(r.kind == k for r in results) for k in KINDS}
    times = np.array([r.seconds for r in results]) if results else np.zeros(1)
    seeds = f", seeds {results[0].seed}..{results[-1].seed}" if results else ""
    lines = ["  ".join(f"{k} {counts[k]}" for k in KINDS) +
             f"   ({len(results)} definitions in {elapsed:.0f} s, {60 * len(results) / max(elapsed, 1e-9):.1f}/min{seeds})",
             f"time per definition: median {np.median(times):.2f} s, p99 {np.percentile(times, 99):.2f} s"]
    for st in ("define", "compile", "forward", "backward", "differences", "torch"):
        ts = [r.stages[st] for r in results if st in r.stages]
        if ts:
            lines[-1] += f"; {st} {np.median(ts):.2f}"
    refusals = {}
    for r in results:
        if r.kind == "refused":
            refusals.setdefault(r.reason.split(":", 2)[-1].strip()[:120], []).append(r.seed)
    for why, seeds in sorted(refusals.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"refused  x{len(seeds)}  seeds {seeds[:5]}  {why}")
    for r in results:
        if r.kind in ("crash", "disagree"):
            lines.append(f"{r.kind:8s} seed {r.seed}  [{r.family}]  {r.reason}")
    if any(r.kind in ("crash", "disagree") for r in results):
        lines.append("reproduce one: python -m tests.fuzz --seed SEED --one")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="seconds to run (default 60)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    p.add_argument("--one", action="store_true", help="check only --seed, print its source and verdict")
    p.add_argument("--isolate", action="store_true", help="each case in its own subprocess")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case (default 120)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --one's answer to --isolate
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time() * 1000) % 10 ** 9
    own_cache = None
    if not os.environ.get("SYMGRAD_CACHE_DIR"):
        own_cache = tempfile.mkdtemp(prefix="symgrad-fuzz-")
        os.environ["SYMGRAD_CACHE_DIR"] = own_cache
    try:
        if a.one:
            case = generate(seed)
            r = check(case, a.timeout)
            if a.json:
                print(json.dumps(r.as_dict()))
            else:
                print(case.source)
                print(f"sizes {case.sizes}" + (f", positive inputs {list(case.positive)}" if case.positive else ""))
                print(f"{r.kind}: {r.reason}" if r.reason else r.kind)
                print(f"{r.seconds:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items()) + ")")
                if r.detail:
                    print(r.detail)
            return 0 if r.kind in ("ok", "refused") else 1
        print(f"fuzz: seeds {seed}.., budget {a.budget:g} s{', isolated' if a.isolate else ''}, "
              f"kernel cache {os.environ['SYMGRAD_CACHE_DIR']}", flush=True)
        t0 = time.perf_counter()

        def progress(r):
            mark = {"ok": ".", "refused": "r", "crash": "C", "disagree": "D"}[r.kind]
            print(mark, end="", flush=True)

        results = run(range(seed, seed + 10 ** 9), a.budget, a.isolate, a.timeout, progress)
        print()
        print(summary(results, time.perf_counter() - t0))
        return 1 if any(r.kind in ("crash", "disagree") for r in results) else 0
    finally:
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
