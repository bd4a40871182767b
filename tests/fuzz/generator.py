"""The fuzzer's generator: a seed fully determines one valid layer definition, the source of a
`build(G)` a user could have written, plus the sizes of its dims (see tests/fuzz/__init__.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import sympy as sp


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
