"""From a Derivation to the source of its kernel module: a forward and a backward `@njit` function.

The forward kernel computes every binding in order (saved ones into output arrays, the others
into temporaries allocated inside the kernel, scalars into locals). The backward kernel computes
every argument's gradient in one function, so a temporary shared by several gradients (the
attention's dS, a row sum) is computed once; it reads the saved forward bindings and never
recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import keyword
from dataclasses import dataclass, field

import sympy as sp

from derive import steps
from derive.derivation import lhs_of
from derive.functions import MaxOver

from . import elementary
from .lower import Lowerer
from .version import GENERATOR_VERSION
from .writer import KernelWriter

FASTMATH = "{'arcp', 'contract', 'afn', 'reassoc', 'nsz'}"  # never nnan/ninf: NaN checks stay right
RESERVED = {"np", "math", "F", "njit", "range", "max", "min", "abs", "FAST", "prange", "numba",
            "ir", "types", "intrinsic"} | set(elementary.HELPERS)
# error_model="numpy": a float division by zero gives inf/NaN as IEEE says instead of a Python
# ZeroDivisionError check, which kept every loop with a division from vectorizing
JIT = '@njit(cache=True, fastmath=FAST, error_model="numpy")'


@dataclass
class Param:
    """One argument of a generated kernel function."""

    name: str  # tensor/dim name as the API knows it
    kind: str  # "array", "int_array", "scalar", "const", "dim", "out"
    shape: tuple = ()  # symbolic shape (arrays)
    default: object = None


@dataclass
class KernelSpec:
    """One generated function: its name, parameters (in call order) and what it returns."""

    func: str
    params: list = field(default_factory=list)
    returns: list = field(default_factory=list)  # names of scalars returned (in order)
    elementwise_alias: dict = field(default_factory=dict)  # out name -> inputs it may alias
    source: str = ""


def ident(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    if not s or s[0].isdigit():
        s = "_" + s
    if keyword.iskeyword(s) or s in RESERVED:
        s += "_"
    return s


def layer_key(d, dtype: str) -> str:
    """Hash of the expressions, the argument specs, dtype and generator version."""
    h = hashlib.sha256()
    h.update(f"{GENERATOR_VERSION}|{dtype}|{d.name}|".encode())
    for a in d.graph.args:
        h.update(f"{a.name}:{a.role}:{a.integer}:{a.default}:{sp.srepr(sp.Tuple(*a.shape))};".encode())
    for b in d.graph.bindings:
        h.update(f"{b.name}:{b.save}:{b.stop_gradient}:{sp.srepr(b.lhs)}={sp.srepr(b.expr)};".encode())
    h.update(("|".join(o.name for o in d.graph.outputs)).encode())
    for name, idx, e in d.program:  # what the backward kernel is printed from
        h.update(f"{name}:{sp.srepr(sp.Tuple(*idx))}={sp.srepr(e)};".encode())
    return h.hexdigest()[:16]


class ModuleBuilder:
    """Builds the forward and backward kernels of one derivation for one dtype."""

    def __init__(self, d, dtype: str, blas: bool = True):
        self.d, self.g, self.dtype, self.blas = d, d.graph, dtype, blas
        self.fname = ident(d.name)
        # float32: exp/tanh/erf print as compiled.elementary's vectorizable helpers
        self.calls = elementary.FLOAT32_CALLS if dtype == "float32" else None
        self.used = set()  # helpers the kernels call

    # --- names shared by both kernels --------------------------------------------------------
    def base_names(self):
        names, taken = {}, set()
        for t in self.g.tensors():
            names[t.name] = ident(t.name)
            if not t.shape:
                names[t.symbol] = ident(t.name)
            taken.add(names[t.name])
        for dim in self.g.dims_:
            nm = ident(str(dim))
            while nm in taken:
                nm += "_"
            names[dim] = nm
            taken.add(nm)
        return names, taken

    def index_names(self, names, taken, symbols):
        for s in sorted(symbols, key=str):
            if s in names:
                continue
            nm = ident(str(s).lstrip("_") or "k")
            base, n = nm, 0
            while nm in taken:
                n += 1
                nm = f"{base}{n}"
            names[s] = nm
            taken.add(nm)

    # --- forward -----------------------------------------------------------------------------
    def forward(self) -> KernelSpec:
        g = self.g
        spec = KernelSpec(f"{self.fname}_forward")
        spec.params += [tensor_param(a) for a in g.args]
        for dim in g.dims_:
            spec.params.append(Param(str(dim), "dim"))
        arrays = {a.name: tuple(a.shape) for a in g.args if a.shape}
        temps = []
        for b in g.bindings:
            if b.indices and b.save:
                spec.params.append(Param(b.name, "out", b.tensor.shape))
            elif b.indices:
                temps.append(b)
            elif b.save:
                spec.returns.append(b.name)
            arrays[b.name] = tuple(b.tensor.shape)
        low = Lowerer(dict(g.extents), arrays, blas=self.blas)
        for b in g.bindings:
            low.lower(b.name, tuple(b.indices), b.expr)
        spec.elementwise_alias = self.alias_safe()
        spec.source = self.emit(spec, low, [(b.name, b.tensor.shape) for b in temps])
        return spec

    def alias_safe(self):
        """out binding -> inputs it may overwrite in place (`out={"p_new": p}`): the update is
        purely elementwise for that pair. The binding reads the input at exactly the element it
        writes; every other binding reads the input only at that same element (never inside a
        reduction); no later binding reads it."""
        out = {}
        bs = self.g.bindings

        def reads_of(b, name):
            return [ix for ix in b.expr.atoms(sp.Indexed) if str(ix.base.label) == name]

        def in_reduction(b, name):
            return any(str(ix.base.label) == name for r in b.expr.atoms(sp.Sum, MaxOver)
                       for ix in r.atoms(sp.Indexed))

        for n, b in enumerate(bs):
            if not b.save or not b.indices:
                continue
            ok = []
            for a in self.g.args:
                if tuple(a.shape) != tuple(b.tensor.shape) or a.integer or not reads_of(b, a.name):
                    continue
                if any(any(tuple(ix.indices) != tuple(b.indices) for ix in reads_of(o, a.name)) or
                       in_reduction(o, a.name) for o in bs[:n + 1]):
                    continue
                if any(reads_of(later, a.name) for later in bs[n + 1:]):
                    continue
                ok.append(a.name)
            out[b.name] = ok
        return out

    # --- backward ----------------------------------------------------------------------------
    def backward(self) -> KernelSpec:
        d, g = self.d, self.g
        spec = KernelSpec(f"{self.fname}_backward")
        exprs = [sp.sympify(e) for _, _, e in d.program]
        read = set()
        for e in exprs:
            read |= {str(ix.base.label) for ix in e.atoms(sp.Indexed)}
            read |= {s.name for s in e.free_symbols if isinstance(s, sp.Symbol)}
        for o in g.outputs:
            up = d.upstream(o.name)
            if o.tensor.shape:
                spec.params.append(Param(up, "array", o.tensor.shape))
            else:
                spec.params.append(Param(up, "scalar"))
        for t in g.tensors():
            if t.name not in read:
                continue
            spec.params.append(tensor_param(t))
        # sizes the gradients need but nothing read carries (embedding's V: only the table has it)
        have = {str(x) for p in spec.params for x in p.shape if sp.sympify(x).is_Symbol}
        for a in g.args:
            need = {str(x) for s in a.shape for x in sp.sympify(s).free_symbols} - have
            if a.name in d.grads and need:
                for t in g.args:
                    if t.shape and t.name not in read and need & {str(x) for x in t.shape}:
                        spec.params.append(Param(t.name, "int_array" if t.integer else "array", t.shape))
                        have |= {str(x) for x in t.shape if sp.sympify(x).is_Symbol}
                        read.add(t.name)
        for dim in g.dims_:
            spec.params.append(Param(str(dim), "dim"))
        # the backward program: adjoints several gradients read (attention's g_S, an LSTM's g_z)
        # are temporaries computed once, then every gradient d<arg>
        extents = dict(g.extents)
        eqs = []
        for name, idx, expr in d.program:
            shape = g.tensor(name[1:]).shape if name[1:] in d.grads and name.startswith("d") \
                else self._adjoint_shape(name)
            new_idx, ren = [], {}
            for i, s_ in zip(idx, shape):
                if i in extents and sp.simplify(extents[i] - s_) != 0:
                    # the same letter runs over another range elsewhere: a symbol of its own
                    ren[i] = sp.Dummy(str(i), integer=True)
                    i = ren[i]
                extents[i] = s_
                new_idx.append(i)
            expr = sp.sympify(expr)
            eqs.append((name, tuple(new_idx), expr.xreplace(ren) if ren else expr, tuple(shape)))
        arrays = {p.name: tuple(p.shape) for p in spec.params if p.kind in ("array", "int_array")}
        temps = []
        for name, idx, expr, shape in eqs:
            arrays[name] = shape
            if name.startswith("d") and name[1:] in d.grads:
                if shape:
                    spec.params.append(Param(name, "out", shape))
                else:
                    spec.returns.append(name)
            else:
                temps.append((name, shape))
        low = Lowerer(extents, arrays, blas=self.blas)
        for name, idx, expr, shape in eqs:
            low.lower(name, idx if shape else (), expr)
        spec.source = self.emit(spec, low, temps)
        return spec

    def _adjoint_shape(self, name):
        """The shape of an intermediate adjoint g_<binding> (or gtotal_<binding>)."""
        binding = name.split("_", 1)[1]
        return tuple(self.g.tensor(binding).shape)

    # --- source ------------------------------------------------------------------------------
    def emit(self, spec: KernelSpec, low: Lowerer, temps) -> str:
        names, taken = self.base_names()
        for p in spec.params:
            names.setdefault(p.name, ident(p.name))
            if p.kind in ("scalar", "const"):
                names[sp.Symbol(p.name, real=True)] = names[p.name]
                names[sp.Symbol(p.name)] = names[p.name]
            taken.add(names[p.name])
        for t in low.out.temps:
            names[t.name] = ident(t.name)
            taken.add(names[t.name])
        for name, _ in temps:  # the backward program's intermediate adjoints (g_S, g_z)
            names.setdefault(name, ident(name))
            taken.add(names[name])
        for r in spec.returns:
            names.setdefault(r, ident(r))
            names[sp.Symbol(r, real=True)] = names[r]
            taken.add(names[r])
        index_syms = set(low.extents)
        self.index_names(names, taken, index_syms)
        w = KernelWriter(names, index_syms, low.extents, self.calls, self.used)
        w.taken |= taken
        body = w.write(low.out.stmts)
        args = ", ".join(names[p.name] for p in spec.params)
        lines = [JIT, f"def {spec.func}({args}):"]
        doc = self.docstring(spec)
        lines.append(f'    """{doc}"""')
        for name, shape in temps:
            shp = ", ".join(w_index(s, names) for s in shape)
            lines.append(f"    {names[name]} = np.empty(({shp},), F)")
        for t in low.out.temps:
            shp = ", ".join(w_index(s, names) for s in t.shape)
            lines.append(f"    {names[t.name]} = np.empty(({shp},), F)")
        lines.extend(body.render(1))
        for r in spec.returns:
            if not any(line.strip().startswith(f"{names[r]} ") for line in lines):
                lines.append(f"    {names[r]} = F(0)")
        if spec.returns:
            lines.append("    return (" + ", ".join(names[r] for r in spec.returns) + ",)")
        return "\n".join(lines) + "\n"

    def docstring(self, spec):
        if spec.func.endswith("forward"):
            text = [s.text for s in self.d.steps_of("definition")]
            head = f"Forward of {self.d.name}: every binding in order."
        else:
            text = [f"{steps.text(lhs_of(n, idx))} = {steps.text(e)}" for n, idx, e in self.d.program]
            head = (f"Backward of {self.d.name}: the derived vector-Jacobian products, adjoints that "
                    f"several gradients read computed once.")
        body = "\n".join("    " + t.replace("\\", "\\\\").replace('"""', "'''") for t in text)
        return f"{head}\n\n{body}\n    "


def tensor_param(t) -> Param:
    """How a kernel takes a layer tensor: a constant with its default, a scalar, or an array."""
    if t.role == "const":
        return Param(t.name, "const", (), t.default)
    if not t.shape:
        return Param(t.name, "scalar")
    return Param(t.name, "int_array" if t.integer else "array", t.shape)


def w_index(s, names):
    from .printer import print_index
    return print_index(sp.sympify(s), names)


def module_source(d, dtype: str, key: str, blas: bool = True):
    """The full text of the generated module and its two kernel specs."""
    mb = ModuleBuilder(d, dtype, blas)
    fwd = mb.forward()
    bwd = mb.backward()
    formulas = "\n".join(f"    {s.text}" for s in d.steps_of("simplified")) or "    (no gradients)"
    doc = formulas.replace("\\", "\\\\").replace('"""', "'''")
    src = [
        f"# Generated from derive/{d.name} (symgrad compiled generator {GENERATOR_VERSION}, key {key}). Do not edit.",
        f'"""Kernels of {d.name} ({dtype}), printed from the derivation.',
        "",
        "Simplified gradients:",
        "",
        doc,
        '"""',
        "import math",
        "",
        "import numpy as np",
        "from numba import njit",
        *elementary.imports(mb.used),
        "",
        f"F = np.{dtype}",
        f"FAST = {FASTMATH}  # no nnan/ninf: isnan/isfinite stay correct",
        "# error_model=\"numpy\": x/0 gives inf or NaN as IEEE says (no ZeroDivisionError check, so",
        "# loops with a division vectorize)",
        "",
        "",
        *(["# Vectorizable float32 elementary functions (compiled/elementary.py); libm is called",
           "# one element at a time without a vector math library.", "",
           elementary.source(mb.used)] if mb.used else []),
        fwd.source,
        "",
        bwd.source,
        "",
        "# How compiled.api calls the two functions (read on a warm start instead of re-printing).",
        f"SPECS = {json.dumps([spec_dict(fwd), spec_dict(bwd)])!r}",
    ]
    return "\n".join(src) + "\n", fwd, bwd


def spec_dict(spec: KernelSpec) -> dict:
    return {"func": spec.func, "returns": spec.returns, "alias": spec.elementwise_alias,
            "params": [[p.name, p.kind, [str(x) for x in p.shape], p.default] for p in spec.params]}


def spec_from_dict(data: dict, dims) -> KernelSpec:
    loc = {str(d): d for d in dims}
    params = [Param(n, k, tuple(sp.sympify(x, locals=loc) for x in shape), default)
              for n, k, shape, default in data["params"]]
    return KernelSpec(data["func"], params, list(data["returns"]), dict(data["alias"]))


__all__ = ["module_source", "layer_key", "KernelSpec", "Param", "ModuleBuilder"]
