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
import os
from dataclasses import dataclass, field

import sympy as sp

from symgrad.derive import steps
from symgrad.derive.cache import canonical  # one text of a graph, for cache keys (derive's too)
from symgrad.derive.derivation import lhs_of
from symgrad.derive.errors import DeriveError
from symgrad.derive.functions import REDUCTIONS, Iverson

from . import elementary
from .blas import CACHE_TAG as BLAS_TAG, backend as blas_backend
from .lower import Lowerer
from .printer import no_rule
from .version import GENERATOR_VERSION
from .helpers import helper_imports, helper_source
from .writer import KernelWriter

FASTMATH = "{'arcp', 'contract', 'afn', 'reassoc', 'nsz'}"  # never nnan/ninf: NaN checks stay right
RESERVED = {"np", "math", "F", "njit", "range", "max", "min", "abs", "FAST", "prange", "numba",
            "ir", "types", "intrinsic", "gemm", "PARALLEL_MIN", "PRANGE_ONLY", "ParallelOptions",
            "maximum", "pool_threads"} | set(elementary.HELPERS)
# error_model="numpy": a float division by zero gives inf/NaN as IEEE says instead of a Python
# ZeroDivisionError check, which kept every loop with a division from vectorizing
JIT = '@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")'
# a kernel with a prange loop (compiled/parallel.py: parallelize). PRANGE_ONLY turns Numba's
# other automatic conversions off: they would send a 128-element `dgamma[:] = 0` to the threads.
JIT_PARALLEL = '@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", parallel=PRANGE_ONLY)'


def _prange_layer():
    """The Numba threading layer the kernels' prange loops run on; None: print no prange.

    TBB, deliberately. On these 2-core VMs (measured, see PARALLEL_MIN): TBB's work-stealing
    lets the calling thread do all the work when the other core is busy, so a parallel loop
    costs about what the serial one does under load; OpenMP (libgomp, Numba's omp layer) hands
    each thread its half up front and waits for both, so with one core taken by another
    process a 3072 x 64 softmax backward took 6.3 ms (median) instead of 60 us, and its idle
    workers spin after each loop, slowing the next OpenBLAS call (224 -> 4150 us, 256^3 SGEMM)
    where TBB left it alone; workqueue costs 23 us to start a loop (a futex round trip per
    call) and aborts on concurrent calls from two Python threads. Without TBB (the `tbb` wheel)
    the kernels stay serial, unless NUMBA_THREADING_LAYER names a layer: then that one is used.
    """
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if chosen and chosen != "default":
        return chosen
    try:
        import numba
        from numba.np.ufunc.parallel import _check_tbb_version_compatible
        _check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401  (loads: the layer Numba would pick)
    except ImportError:
        return None
    numba.config.THREADING_LAYER = "tbb"  # the default priority also puts tbb first
    return "tbb"


PRANGE_LAYER = _prange_layer()
# The work (KernelWriter.work: element visits, 5 for one with an exp) from which a loop's rows
# are split over the threads; below it the serial copy runs. Measured on the 2-vCPU VM, TBB,
# quiet, serial vs prange per call (us, best of 25 rounds), the generated float32 kernels:
#                      rows:    64     256      768     3072      work at 768 rows
#   softmax fwd (n=64)       4.6/10.5 24.7/23.4 65/49   201/128   393k  (8*N*n)
#   softmax bwd (n=64)       1.1/4.8   5.6/12.5 15/17    71/34    98k  (2*N*n)
#   layernorm fwd (C=128)    3.7/8.0  15.2/17.4 43/31   136/80    295k  (3*C*N)
#   layernorm bwd (C=128)    4.9/10.1 25.4/27.1 72/60   283/205   295k  (3*C*N)
#   cross_entropy fwd (V=65) 5.0/11.0 24.6/21.9 68/45   215/134   300k  (6*N*V)
#   cross_entropy bwd (V=65) 4.4/13.3 24.1/25.3 58/41   174/123   250k  (5*N*V)
# Starting the threads costs ~6 us a loop; the parallel copy breaks even between 130k and 200k
# of work for all six (softmax bwd at 1536 rows, 196k: 32 -> 23 us), so batch-1 sampling
# (work ~ 500) never pays for it and every kernel at the GPT shapes does. With both cores
# taken by two other processes the medians stay at the serial ones' (TBB runs the loop on the
# calling thread) but some calls stall for milliseconds when a worker that took half the rows
# is descheduled (3072-row softmax fwd: median 379 us serial, 1002 us parallel); on a machine
# known to be busy, use one thread (numba.set_num_threads(1), `symgrad bench kernels
# --threads 1`).
PARALLEL_MIN = 200_000 if PRANGE_LAYER else None


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
    # the matrix products it calls, in the dims: (M, K, N, a transposed, b transposed, calls,
    # mode: "batch", "rows" or "", compiled/parallel.py); out[M, N] = op(a)[M, K] @ op(b)[K, N]
    # (the bench's GEMM floor, models/bench.py)
    products: list = field(default_factory=list)


def ident(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    if not s or s[0].isdigit():
        s = "_" + s
    if keyword.iskeyword(s) or s in RESERVED:
        s += "_"
    return s


def layer_key(d, dtype: str) -> str:
    """The cache key of a kernel file: a hash of everything the file is printed from.

    That is the whole forward graph, walked field by field (dims in their declared order, index
    extents, every attribute of every argument and binding, and any field added to Graph
    later), the backward program, which arguments get gradients, the text the docstrings quote,
    the dtype, the generator version, the BLAS the products call (compiled/blas.py: Numba's
    cache sees only the kernel's own file) and whether loops print as prange. An input the key
    misses loads a kernel printed for another definition: dims "C N" after "N C" (the dims were
    once left out) read x with the wrong strides and wrote past the end of dx.
    """
    h = hashlib.sha256()
    h.update(f"{GENERATOR_VERSION}|{BLAS_TAG}|{dtype}|prange:{PRANGE_LAYER}:{PARALLEL_MIN}|".encode())
    for part in (d.graph, d.program, list(d.grads), quoted(d)):
        h.update(canonical(part).encode() + b"|")
    return h.hexdigest()[:16]


def quoted(d) -> dict:
    """The derivation's text that a kernel module quotes in its docstrings."""
    return {"definition": [s.text for s in d.steps_of("definition")],
            "program": [f"{steps.text(lhs_of(n, idx))} = {steps.text(e)}" for n, idx, e in d.program],
            "simplified": [s.text for s in d.steps_of("simplified")]}


def pointwise(expr):
    """The value a kernel computes for expr at a point. SymPy differentiates Max, Min and Abs
    into Heaviside and sign into DiracDelta, distributions that have no Numba call:
    Heaviside(a, H0) is [a > 0] + H0*[a = 0] (H0, SymPy's value at 0, is 1/2 unless the
    definition gave one), DiracDelta is 0, its value everywhere but at 0 (so sign has the
    derivative autograd gives it)."""
    if not expr.has(sp.Heaviside, sp.DiracDelta):
        return expr
    return expr.replace(sp.DiracDelta, lambda *args: sp.S.Zero).replace(
        sp.Heaviside, lambda a, h0=sp.S.Half: Iverson(a > 0) + h0 * Iverson(sp.Eq(a, 0)))


class ModuleBuilder:
    """Builds the forward and backward kernels of one derivation for one dtype."""

    def __init__(self, d, dtype: str, blas: bool = True, parallel: bool = True):
        self.d, self.g, self.dtype, self.blas = d, d.graph, dtype, blas
        self.parallel_min = PARALLEL_MIN if parallel else None  # None: no prange loops at all
        self.quoted = quoted(d)  # the docstrings' text (part of the key)
        self.fname = ident(d.name)
        # float32: exp/tanh/erf print as compiled.elementary's vectorizable helpers
        self.calls = elementary.FLOAT32_CALLS if dtype == "float32" else None
        self.used = set()  # helpers the kernels call
        self.helpers = set()  # loop helpers (compiled.helpers.HELPERS) the kernels call
        self.parallel = False  # whether a kernel has a prange loop
        self.gemm = set()  # what the kernels call of compiled.blas: gemm

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
            expr = pointwise(b.expr)
            self.refuse_unprintable(b.name, expr)
            low.lower(b.name, tuple(b.indices), expr)
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
            return any(str(ix.base.label) == name for r in b.expr.atoms(*REDUCTIONS)
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
        program = [(name, idx, pointwise(sp.sympify(e))) for name, idx, e in d.program]
        # a gradient that is exactly 0 (an argument no output reads) has no program equation,
        # but the backward still returns it, filled with zeros
        listed = {name for name, _, _ in program}
        program += [(d.grad_name(a), tuple(d.grad_indices[a]), sp.S.Zero) for a in d.grads
                    if d.grad_name(a) not in listed]
        read = set()
        for _, _, e in program:
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
        for name, idx, expr in program:
            shape = g.tensor(d.gradient_of(name) or d.adjoint_of(name)).shape
            new_idx, ren = [], {}
            for i, s_ in zip(idx, shape):
                if i in extents and sp.simplify(extents[i] - s_) != 0:
                    # the same letter runs over another range elsewhere: a symbol of its own
                    ren[i] = sp.Dummy(str(i), integer=True)
                    i = ren[i]
                extents[i] = s_
                new_idx.append(i)
            eqs.append((name, tuple(new_idx), expr.xreplace(ren) if ren else expr, tuple(shape)))
        arrays = {p.name: tuple(p.shape) for p in spec.params if p.kind in ("array", "int_array")}
        temps = []
        for name, idx, expr, shape in eqs:
            arrays[name] = shape
            if d.gradient_of(name) is not None:
                if shape:
                    spec.params.append(Param(name, "out", shape))
                else:
                    spec.returns.append(name)
            else:
                temps.append((name, shape))
        low = Lowerer(extents, arrays, blas=self.blas)
        for name, idx, expr, shape in eqs:
            self.refuse_unprintable(name, expr)
            low.lower(name, idx if shape else (), expr)
        spec.source = self.emit(spec, low, temps)
        return spec

    def refuse_unprintable(self, term, expr):
        """A DeriveError naming the layer, the term and the function, before any source is
        printed, for a function no kernel can compute (erfinv, which derive's fold can bring
        in by inverting a saved erf: Numba has no implementation of it)."""
        bad = no_rule(expr)
        if bad:
            raise DeriveError(self.d.name, f"{term} needs {bad[0].func.__name__} ({bad[0]}), which "
                                           f"the Numba kernels cannot compute")

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
        w = KernelWriter(names, index_syms, low.extents, self.calls, self.used,
                         temps=[n for n, _ in temps] + [t.name for t in low.out.temps],
                         parallel_min=self.parallel_min, blas_one_thread=blas_backend() == "mkl")
        w.taken |= taken | RESERVED  # a loop index named pool_threads must not shadow the helper
        body = w.write(low.out.stmts)
        self.helpers |= w.helpers
        self.parallel |= w.parallel
        self.gemm |= w.gemms
        spec.products = w.products
        dims = {str(d): d for d in self.g.dims_}  # a dim's identifier steps aside for a tensor of its name
        args = ", ".join(names[dims[p.name]] if p.kind == "dim" else names[p.name] for p in spec.params)
        lines = [JIT_PARALLEL if w.parallel else JIT, f"def {spec.func}({args}):"]
        doc = self.docstring(spec)
        lines.append(f'    """{doc}"""')
        # a scalar temporary (the adjoint of a scalar binding) is a plain local the body
        # assigns; a row value is a local of its row loop: neither is allocated
        for name, shape in [*temps, *((t.name, t.shape) for t in low.out.temps)]:
            if name in w.scalarized or not shape:
                continue
            shp = ", ".join(w_index(s, names) for s in shape)
            lines.append(f"    {names[name]} = np.empty(({shp},), F)")
        lines.extend(body.render(1))
        for r in spec.returns:
            if not any(line.strip().startswith(f"{names[r]} ") for line in lines):
                lines.append(f"    {names[r]} = F(0)")
        if spec.returns:
            lines.append("    return (" + ", ".join(names[r] for r in spec.returns) + ",)")
        return "\n".join(lines) + "\n"

    def docstring(self, spec):
        if spec.func.endswith("forward"):
            text = self.quoted["definition"]
            head = f"Forward of {self.d.name}: every binding in order."
        else:
            text = self.quoted["program"]
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


def module_source(d, dtype: str, key: str, blas: bool = True, parallel: bool = True):
    """The full text of the generated module and its two kernel specs (`parallel=False`: serial
    loops only, which Numba compiles several times faster: compiled.second_order's kernels)."""
    mb = ModuleBuilder(d, dtype, blas, parallel)
    fwd = mb.forward()
    bwd = mb.backward()
    formulas = "\n".join(f"    {t}" for t in mb.quoted["simplified"]) or "    (no gradients)"
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
        "from numba import njit" + (", prange" if mb.parallel else ""),
        *sorted(set(elementary.imports(mb.used)) | set(helper_imports(mb.helpers))),
        *(["from numba.core.cpu_options import ParallelOptions"] if mb.parallel else []),
        *([f"from symgrad.compiled.blas import {', '.join(sorted(mb.gemm))}  # out = a @ b: {blas_backend()} "
           f"(compiled/blas.py)"] if mb.gemm else []),
        "",
        f"F = np.{dtype}",
        f"FAST = {FASTMATH}  # no nnan/ninf: isnan/isfinite stay correct",
        "# error_model=\"numpy\": x/0 gives inf or NaN as IEEE says (no ZeroDivisionError check, so",
        "# loops with a division vectorize)",
        *(["# parallel=PRANGE_ONLY: only the loops printed as prange run in threads (Numba's other",
           "# automatic conversions stay off); each runs when its call visits PARALLEL_MIN elements",
           "PRANGE_ONLY = ParallelOptions({'prange': True, 'comprehension': False, 'reduction': False,",
           "                               'inplace_binop': False, 'setitem': False, 'numpy': False,",
           "                               'stencil': False, 'fusion': False})",
           f"PARALLEL_MIN = {PARALLEL_MIN}  # compiled/build.py: where it was measured"]
          if mb.parallel else []),
        "",
        "",
        *(["# Loop helpers (compiled/helpers.py).", "", helper_source(mb.helpers)] if mb.helpers else []),
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
            "params": [[p.name, p.kind, [str(x) for x in p.shape], p.default] for p in spec.params],
            "products": [[str(M), str(K), str(N), ta, tb, str(n), mode]
                         for M, K, N, ta, tb, n, mode in spec.products]}


def spec_from_dict(data: dict, dims) -> KernelSpec:
    loc = {str(d): d for d in dims}
    params = [Param(n, k, tuple(sp.sympify(x, locals=loc) for x in shape), default)
              for n, k, shape, default in data["params"]]
    products = [(*(sp.sympify(x, locals=loc) for x in r[:3]), r[3], r[4], sp.sympify(r[5], locals=loc), r[6])
                for r in data["products"]]
    return KernelSpec(data["func"], params, list(data["returns"]), dict(data["alias"]), products=products)


__all__ = ["module_source", "layer_key", "KernelSpec", "Param", "ModuleBuilder"]
