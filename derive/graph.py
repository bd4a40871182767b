"""The tensor-index language: a layer's forward definition as a small graph of named bindings.

A layer is written once, forward only, with a `Graph` builder:

    G = Graph("softmax", "Softmax over the last axis.")
    N, n = G.dims("N n")
    x = G.input("x", (N, n))
    i, j, k = G.indices(i=N, j=n, k=n)
    m = G.bind("m", (i,), MaxOver(x[i, k], k, 0, n - 1), stop_gradient=True)
    e = G.bind("e", (i, j), exp(x[i, j] - m[i]))
    z = G.bind("z", (i,), G.sum(e[i, k], k))
    s = G.bind("s", (i, j), e[i, j] / z[i], save=True)
    G.output(s)

Tensors are SymPy `IndexedBase`s with symbolic shapes; index symbols carry an extent (the
range 0..extent-1 they run over; an extent may be an expression of the dims, W - K + 1);
reductions are SymPy `Sum`s. Each binding is checked when it is made: every tensor is used with
its rank, every plain index with the extent of its axis, and every index expression (an offset
x[i + 1], a window x[i + k]) provably inside its axis (derive.indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import indices as indices_
from .errors import DeriveError
from .functions import MaxOver


@dataclass(frozen=True)
class Tensor:
    """A named tensor: a layer argument or a binding's value."""

    name: str
    shape: tuple
    role: str  # "input", "param", "const", "binding", "grad"
    integer: bool = False
    default: object = None
    positive: bool = False  # known > 0 (rstd): lets SymPy simplify sqrt(rstd**-2) to 1/rstd

    @property
    def base(self) -> sp.IndexedBase:
        if self.integer:
            return sp.IndexedBase(self.name, integer=True)
        return sp.IndexedBase(self.name, positive=True) if self.positive else sp.IndexedBase(self.name, real=True)

    @property
    def symbol(self) -> sp.Symbol:
        """A scalar tensor (rank 0) is a plain symbol."""
        return sp.Symbol(self.name, positive=True) if self.positive else sp.Symbol(self.name, real=True)

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if not self.shape:
            raise DeriveError(self.name, f"'{self.name}' is a scalar and takes no index")
        return self.base[idx]

    def ref(self, idx=()):
        """The tensor read at `idx` (a symbol for a scalar)."""
        return self.symbol if not self.shape else self.base[tuple(idx)]

    @property
    def differentiable(self) -> bool:
        return self.role in ("input", "param") and not self.integer


@dataclass
class Binding:
    """`name[indices] = expr`: a named intermediate (or output) of the forward pass."""

    tensor: Tensor
    indices: tuple
    expr: sp.Expr
    save: bool = False
    stop_gradient: bool = False

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def lhs(self):
        return self.tensor.ref(self.indices)


@dataclass
class Graph:
    """A layer's forward definition: arguments, bindings in order, outputs."""

    name: str
    doc: str = ""
    dims_: list = field(default_factory=list)
    args: list = field(default_factory=list)  # Tensor, in canonical argument order
    bindings: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # Binding
    extents: dict = field(default_factory=dict)  # index symbol -> extent
    notes: list = field(default_factory=list)  # stable-form notes, links to other layers
    uses: list = field(default_factory=list)  # names of layers whose derivation this one reuses

    # --- declarations -------------------------------------------------------------
    def dims(self, names: str):
        out = [sp.Symbol(n, integer=True, positive=True) for n in names.split()]
        self.dims_.extend(out)
        return out

    def indices(self, **extents):
        out = []
        for name, extent in extents.items():
            if any(t.name == name for t in self.tensors()):
                raise DeriveError(self.name, f"index {name} has the name of a tensor")
            sym = sp.Symbol(name, integer=True)
            if sym in self.extents and self.extents[sym] != extent:
                raise DeriveError(self.name, f"index {name} declared twice with extents "
                                             f"{self.extents[sym]} and {extent}")
            self.extents[sym] = sp.sympify(extent)
            out.append(sym)
        return out

    def _arg(self, name, shape, role, integer=False, default=None) -> Tensor:
        if any(a.name == name for a in self.args) or any(b.name == name for b in self.bindings) \
                or any(str(i) == name for i in self.extents):
            raise DeriveError(self.name, f"the name '{name}' is used twice")
        t = Tensor(name, tuple(sp.sympify(s) for s in shape), role, integer, default)
        self.args.append(t)
        return t

    def input(self, name, shape, integer=False) -> Tensor:
        return self._arg(name, shape, "input", integer)

    def param(self, name, shape) -> Tensor:
        return self._arg(name, shape, "param")

    def const(self, name, default) -> sp.Symbol:
        """A scalar constant of the layer (eps, scale): an argument with a default, no gradient."""
        return self._arg(name, (), "const", default=default).symbol

    def sum(self, expr, var, lo=0, hi=None):
        """Sum of expr over var in [lo, hi] (hi defaults to the last value of var's extent)."""
        if var not in self.extents:
            raise DeriveError(self.name, f"sum over undeclared index {var}")
        hi = self.extents[var] - 1 if hi is None else hi
        return sp.Sum(expr, (var, lo, hi))

    def max(self, expr, var, lo=0, hi=None):
        hi = self.extents[var] - 1 if hi is None else hi
        return MaxOver(expr, var, lo, hi)

    def bind(self, name, indices, expr, save=False, stop_gradient=False, positive=False) -> Tensor:
        indices = tuple(indices)
        for i in indices:
            if i not in self.extents:
                raise DeriveError(self.name, f"binding '{name}' uses undeclared index {i}")
        if any(a.name == name for a in self.args) or any(b.name == name for b in self.bindings):
            raise DeriveError(self.name, f"the name '{name}' is used twice")
        if any(str(i) == name for i in self.extents):
            raise DeriveError(self.name, f"binding '{name}' has the name of an index")
        expr = sp.sympify(expr)
        self._check(name, indices, expr)
        t = Tensor(name, tuple(self.extents[i] for i in indices), "binding", positive=positive)
        self.bindings.append(Binding(t, indices, expr, save, stop_gradient))
        return t

    def output(self, *tensors: Tensor):
        for t in tensors:
            self.outputs.append(self.binding(t.name))
            self.binding(t.name).save = True

    # --- lookups ------------------------------------------------------------------
    def binding(self, name) -> Binding:
        for b in self.bindings:
            if b.name == name:
                return b
        raise KeyError(name)

    def tensor(self, name) -> Tensor:
        for a in self.args:
            if a.name == name:
                return a
        return self.binding(name).tensor

    def tensors(self):
        return list(self.args) + [b.tensor for b in self.bindings]

    # --- checks -------------------------------------------------------------------
    def _check(self, name, indices, expr):
        known = {t.name: t for t in self.tensors()}
        for f in expr.atoms(sp.Function):
            if isinstance(f, sp.core.function.AppliedUndef):
                raise DeriveError(self.name, f"binding '{name}' calls the undefined function "
                                             f"{f.func.__name__}: in {f}")
        for ix in expr.atoms(sp.Indexed):
            tname = str(ix.base.label)
            if tname not in known:
                raise DeriveError(self.name, f"binding '{name}' reads unknown tensor '{tname}' in {ix}")
            t = known[tname]
            if len(ix.indices) != len(t.shape):
                raise DeriveError(self.name, f"'{tname}' has rank {len(t.shape)} {t.shape} but is "
                                             f"used as {ix} in binding '{name}'")
            for axis, (i, extent) in enumerate(zip(ix.indices, t.shape)):
                if i in self.extents and not sp.simplify(extent - self.extents[i]).is_nonnegative:
                    raise DeriveError(self.name, f"inconsistent shapes: in {ix} (binding '{name}') "
                                                 f"index {i} runs over {self.extents[i]} but axis "
                                                 f"{axis} of '{tname}' has extent {extent}")
        for s in expr.free_symbols:
            if s.name in known and not known[s.name].shape:
                continue
            if s in self.extents and s not in indices:
                raise DeriveError(self.name, f"binding '{name}' has free index {s} that is not one of "
                                             f"its indices {indices}")
            # a symbol nobody declared has no range and no value: it would derive, then fail to print
            if not isinstance(s, sp.Indexed) and s.name not in known and \
                    all(s.name != str(x) for x in [*self.extents, *self.dims_]):
                raise DeriveError(self.name, f"binding '{name}' reads {s}, which is not a declared index, "
                                             f"dim or scalar argument: in {expr}")
        # offsets (x[i+1, j], x[n, c, i + k]) must provably stay inside the tensor: see indices
        indices_.check_reads(self.name, f"binding '{name}'", expr, {i: self.extents[i] for i in indices},
                             {t.name: t.shape for t in self.tensors()},
                             {t.name for t in self.tensors() if not t.shape} | {str(d) for d in self.dims_})
