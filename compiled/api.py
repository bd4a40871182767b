"""`kernels(name, dtype)`: the compiled forward and backward of a layer, checked at the boundary.

Every argument is checked in Python before the Numba function is called (dtype, rank, shape
consistency, C-contiguity, missing or unknown names), so a bad call raises `KernelError`
naming the kernel and the argument, never a Numba typing traceback.

NaN and inf are not checked (that would cost a pass over every array): they propagate as IEEE
arithmetic says. A NaN in a row of softmax/layernorm/cross-entropy input makes that row's
outputs and gradients NaN; other rows are unaffected, except in reductions across rows
(parameter gradients, a mean loss), which become NaN. The kernels are compiled without the
nnan/ninf fast-math flags, so `np.isnan` on their results is reliable.
A division by zero inside a kernel gives inf or NaN (Numba's "numpy" error model), never a
ZeroDivisionError. float32 kernels compute exp, tanh and erf with the vectorizable helpers of
`compiled.elementary` (relative error below 4e-7); float64 kernels call libm.

In-place updates: `out={"p_new": p}` may alias an input only where the forward is elementwise
for that pair (the binding reads the input only at the element it writes, and no later binding
reads the input); optimizer steps written as derive graphs are of that kind. Anything else
raises `KernelError`.
"""

from __future__ import annotations

import threading

import numpy as np
import sympy as sp

from . import cache
import json

from .build import layer_key, module_source, spec_from_dict

_DTYPES = {"float32": np.float32, "float64": np.float64}
_lock = threading.Lock()
_loaded: dict = {}


class KernelError(ValueError):
    """A bad call of a compiled kernel (names the kernel and the argument)."""


class _Shapes:
    """Reads a layer's dims off the argument arrays and checks every other axis against them."""

    def __init__(self, kernel, params, dims):
        self.kernel = kernel
        self.dims = [str(d) for d in dims]
        self.dimsyms = list(dims)
        self.first = {}  # dim -> (param, axis)
        self.checks = []  # (param, axis, fn(dims) -> extent, text)
        for p in params:
            for ax, s in enumerate(p.shape):
                s = sp.sympify(s)
                if s.is_Symbol and str(s) in self.dims and str(s) not in self.first:
                    self.first[str(s)] = (p.name, ax)
        for p in params:
            for ax, s in enumerate(p.shape):
                s = sp.sympify(s)
                if s.is_Symbol and self.first.get(str(s)) == (p.name, ax):
                    continue
                fn = sp.lambdify(self.dimsyms, s, "math") if s.free_symbols else (lambda *a, v=int(s): v)
                self.checks.append((p.name, ax, fn, str(s)))
        self.solved = {}
        for d in self.dimsyms:
            if str(d) in self.first:
                continue
            for p in params:
                for ax, s in enumerate(p.shape):
                    s = sp.sympify(s)
                    if d in s.free_symbols and (s.free_symbols - {d}) <= {x for x in self.dimsyms if str(x) in self.first}:
                        n = sp.Symbol("_n", positive=True, integer=True)
                        try:
                            sol = sp.solve(sp.Eq(s, n), d)
                        except NotImplementedError:  # floor(H/2): read H off another argument
                            continue
                        if len(sol) == 1:
                            self.solved[str(d)] = (p.name, ax, sp.lambdify([n] + self.dimsyms, sol[0], "math"))
                            break
                if str(d) in self.solved:
                    break

    def read(self, arrays: dict) -> dict:
        dims = {}
        for d, (pname, ax) in self.first.items():
            if pname in arrays:
                dims[d] = arrays[pname].shape[ax]
        for d, (pname, ax, fn) in self.solved.items():
            if d not in dims and pname in arrays:
                val = fn(arrays[pname].shape[ax], *[dims.get(x, 0) for x in self.dims])
                if val != int(val) or val < 1:
                    raise KernelError(f"{self.kernel}: argument '{pname}' has shape {arrays[pname].shape}, "
                                      f"which gives no whole value for {d}")
                dims[d] = int(val)
        missing = [d for d in self.dims if d not in dims]
        if missing:
            raise KernelError(f"{self.kernel}: cannot tell the size {', '.join(missing)} from the "
                              f"arguments given")
        vals = [dims[d] for d in self.dims]
        for pname, ax, fn, text in self.checks:
            if pname in arrays:
                want = int(fn(*vals))
                if arrays[pname].shape[ax] != want:
                    raise KernelError(f"{self.kernel}: inconsistent shapes: argument '{pname}' has shape "
                                      f"{arrays[pname].shape}, but its axis {ax} ({text}) should be "
                                      f"{want} given {self._show(dims)}")
        return dims

    @staticmethod
    def _show(dims):
        return ", ".join(f"{k}={v}" for k, v in dims.items())


class _Shape:
    """Stands for an array of this shape in a shape check."""

    def __init__(self, shape):
        self.shape = shape


class _Kernel:
    """One generated function and the Python-side checks around it."""

    def __init__(self, owner, spec, func, dtype):
        self.owner, self.spec, self.func, self.dtype = owner, spec, func, dtype
        self.name = f"{owner.name}.{spec.func.rsplit('_', 1)[-1]}"
        self.inputs = [p for p in spec.params if p.kind in ("array", "int_array", "scalar", "const")]
        self.outs = [p for p in spec.params if p.kind == "out"]
        dims = owner.derivation.graph.dims_
        shaped = [p for p in spec.params if p.kind in ("array", "int_array", "out")]
        self.shapes = _Shapes(self.name, [p for p in shaped if p.kind != "out"], dims)
        self.out_shapes = {p.name: [sp.lambdify(list(dims), sp.sympify(s), "math") if sp.sympify(s).free_symbols
                                    else (lambda *a, v=int(s): v) for s in p.shape] for p in self.outs}
        self.dim_names = [str(d) for d in dims]
        self.known = {p.name for p in spec.params if p.kind != "dim"}

    def __call__(self, kwargs: dict, out, extra_ok=()):
        dt = self.dtype
        for k in kwargs:
            if k not in self.known and k not in extra_ok:
                raise KernelError(f"{self.name}: unknown argument '{k}' (expected "
                                  f"{', '.join(p.name for p in self.inputs)})")
        arrays, call, ids = {}, [], {}
        for p in self.inputs:
            if p.name not in kwargs:
                if p.kind == "const":
                    call.append(dt(p.default))
                    continue
                raise KernelError(f"{self.name}: missing argument '{p.name}'")
            v = kwargs[p.name]
            if p.kind in ("scalar", "const"):
                if isinstance(v, np.ndarray) and v.ndim != 0:
                    raise KernelError(f"{self.name}: argument '{p.name}' must be a scalar, got an array "
                                      f"of shape {v.shape}")
                try:
                    call.append(dt(v))
                except (TypeError, ValueError):
                    raise KernelError(f"{self.name}: argument '{p.name}' must be a number, got "
                                      f"{type(v).__name__}") from None
                continue
            if not isinstance(v, np.ndarray):
                raise KernelError(f"{self.name}: argument '{p.name}' must be a numpy array, got "
                                  f"{type(v).__name__}")
            if v.ndim != len(p.shape):
                raise KernelError(f"{self.name}: argument '{p.name}' must have rank {len(p.shape)} "
                                  f"{tuple(str(s) for s in p.shape)}, got shape {v.shape}")
            if p.kind == "int_array":
                ids[p.name] = v  # range-checked as given: the int64 cast wraps uint64 past 2**63
                if v.dtype != np.int64:
                    if v.dtype.kind not in "iu":
                        raise KernelError(f"{self.name}: argument '{p.name}' must hold integers, got "
                                          f"dtype {v.dtype}")
                    v = v.astype(np.int64)
            elif v.dtype != dt:
                raise KernelError(f"{self.name}: argument '{p.name}' has dtype {v.dtype}, but this "
                                  f"kernel is {np.dtype(dt).name}")
            if not v.flags.c_contiguous:
                raise KernelError(f"{self.name}: argument '{p.name}' is not C-contiguous "
                                  f"(use np.ascontiguousarray)")
            arrays[p.name] = v
            call.append(v)
        dims = self.shapes.read(arrays)
        for p in self.inputs:
            if p.kind == "int_array" and arrays[p.name].size:
                self.check_ids(p, ids[p.name], dims)
        dvals = [dims[d] for d in self.dim_names]
        call.extend(dvals)
        outs = {}
        out = out or {}
        for k in out:
            if k not in {p.name for p in self.outs}:
                raise KernelError(f"{self.name}: out= names '{k}', which is not one of its outputs "
                                  f"({', '.join(p.name for p in self.outs)})")
        for p in self.outs:
            shape = tuple(int(f(*dvals)) for f in self.out_shapes[p.name])
            if any(n < 1 and not sp.sympify(e).is_Symbol for n, e in zip(shape, p.shape)):
                # an extent such as H - KH + 1 below 1: a window larger than its input (conv2d)
                raise KernelError(f"{self.name}: these argument shapes leave no element for '{p.name}': "
                                  f"its shape {tuple(str(s) for s in p.shape)} is {shape} given "
                                  f"{_Shapes._show(dims)}")
            if p.name in out:
                o = out[p.name]
                if not isinstance(o, np.ndarray) or o.dtype != dt or o.shape != shape or not o.flags.c_contiguous \
                        or not o.flags.writeable:
                    raise KernelError(f"{self.name}: out['{p.name}'] must be a writeable C-contiguous "
                                      f"{np.dtype(dt).name} array of shape {shape}")
                for a, arr in arrays.items():
                    if np.may_share_memory(o, arr) and a not in self.spec.elementwise_alias.get(p.name, ()):
                        raise KernelError(f"{self.name}: out['{p.name}'] overlaps argument '{a}', which is "
                                          f"not safe here (only elementwise updates may work in place)")
            else:
                o = np.empty(shape, dt)
            outs[p.name] = o
            call.append(o)
        ret = self.func(*call)
        for n, r in enumerate(self.spec.returns):
            outs[r] = float(ret[n])
        return outs

    def check_ids(self, p, v, dims):
        """An index array must index in range: find which axis it indexes through the graph."""
        bound = self.owner.id_bounds.get(p.name)
        if bound is None:
            return
        n = int(bound(*[dims[d] for d in self.dim_names]))
        lo_v, hi_v = int(v.min()), int(v.max())  # Python ints: exact for any integer dtype
        if lo_v < 0 or hi_v >= n:
            where = f"outside [0, {n - 1}]" if n > 0 else "but the axis they index is empty"
            raise KernelError(f"{self.name}: argument '{p.name}' holds indices in [{lo_v}, {hi_v}], {where}")


class Kernels:
    """The compiled forward and backward of one layer for one dtype.

    `forward(**args, out=None)` returns every saved binding (outputs included) by name: arrays,
    or Python floats for scalars. `backward(**upstream, **args, **saved, out=None)` returns the
    gradient of each differentiable argument, keyed by the argument's name. `out` maps names to
    preallocated arrays to write into (a training loop need not allocate).
    """

    def __init__(self, derivation, dtype, path, source, module, fwd_spec, bwd_spec):
        self.derivation = derivation
        self.name = derivation.name
        self.dtype = dtype
        self.source_path = str(path)
        self.source = source
        self.module = module
        np_dt = _DTYPES[dtype]
        self.id_bounds = _id_bounds(derivation)
        self.forward_dispatcher = getattr(module, fwd_spec.func)
        self.backward_dispatcher = getattr(module, bwd_spec.func)
        self._fwd = _Kernel(self, fwd_spec, self.forward_dispatcher, np_dt)
        self._bwd = _Kernel(self, bwd_spec, self.backward_dispatcher, np_dt)
        g = derivation.graph
        self._fwd_extra = set()
        self._bwd_extra = {t.name for t in g.tensors()} | {derivation.upstream(o.name) for o in g.outputs}
        self.grad_names = {derivation.grad_name(a): a for a in derivation.grads}  # kernel name -> arg
        self._grad_of = {a: n for n, a in self.grad_names.items()}

    @property
    def dispatchers(self):
        return [self.forward_dispatcher, self.backward_dispatcher]

    @property
    def forward_spec(self):
        """How the forward function is called: its parameters in order (see build.KernelSpec)."""
        return self._fwd.spec

    @property
    def backward_spec(self):
        return self._bwd.spec

    def call_shapes(self, shapes: dict) -> tuple[dict, dict]:
        """(dims, {saved binding: shape}) of a forward call with arguments of these shapes,
        checked as a call is (a planner's shapes fail here with the same KernelError)."""
        arrays = {n: _Shape(tuple(s)) for n, s in shapes.items()}
        dims = self._fwd.shapes.read(arrays)
        vals = [dims[d] for d in self._fwd.dim_names]
        outs = {p.name: tuple(int(f(*vals)) for f in self._fwd.out_shapes[p.name]) for p in self._fwd.outs}
        outs.update({r: () for r in self._fwd.spec.returns})
        return dims, outs

    @staticmethod
    def _split_out(args):
        """`out=` is the dict of preallocated outputs, unless the layer has a tensor named
        'out' and an array was passed for it."""
        o = args.get("out")
        if o is None or isinstance(o, dict):
            args.pop("out", None)
            return o
        return None

    def forward(self, /, **args):  # /: a layer may have an argument named self
        out = self._split_out(args)
        return self._fwd(args, out, self._fwd_extra)

    def backward(self, /, **args):
        out = self._split_out(args)
        if out:
            out = {self._grad_of.get(k, k): v for k, v in out.items()}  # out= is keyed by argument
        res = self._bwd(args, out, self._bwd_extra)
        return {self.grad_names[k]: v for k, v in res.items()}

    def __repr__(self):
        return f"<Kernels {self.name} {self.dtype} at {self.source_path}>"


def _id_bounds(d):
    """For each integer argument, the extent of the axis it indexes, as a function of the dims
    (derive.indices.integer_ranges: the range check at each call)."""
    from symgrad.derive.indices import integer_ranges
    dims = list(d.graph.dims_)
    return {name: sp.lambdify(dims, sp.sympify(extent), "math") for name, extent in integer_ranges(d).items()}


def kernels(name_or_derivation, dtype: str = "float32", blas: bool = True, parallel: bool = True) -> Kernels:
    """The compiled kernels of a built-in layer (by name) or of any `derive.define` derivation
    (`parallel=False`: no prange loops; see compiled.build.module_source)."""
    if isinstance(dtype, type) or isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype).name
    if dtype not in _DTYPES:
        raise KernelError(f"kernels: dtype must be 'float32' or 'float64', got {dtype!r}")
    from symgrad import derive
    d = derive.resolve(name_or_derivation)
    key = layer_key(d, dtype + ("" if blas else "-noblas") + ("" if parallel else "-serial"))
    with _lock:
        hit = _loaded.get(key)
        if hit is not None:
            return hit
        stem = f"{_safe(d.name)}_{dtype}_{key}"
        path = cache.cache_dir() / f"{stem}.py"
        built = {}

        def make():
            src, fwd, bwd = module_source(d, dtype, key, blas, parallel)
            built["specs"] = (fwd, bwd)
            return src

        source, _ = cache.ensure(path, make)
        module = cache.import_file(path, f"symgrad_kernels.{stem}")
        if "specs" in built:
            fwd, bwd = built["specs"]
        else:  # warm: the file says how to call it
            fwd, bwd = (spec_from_dict(s, d.graph.dims_) for s in json.loads(module.SPECS))
        k = Kernels(d, dtype, path, source, module, fwd, bwd)
        _loaded[key] = k
        return k


def _safe(name):
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


__all__ = ["kernels", "Kernels", "KernelError"]
