"""KernelWriter: lowered statements -> the source of one `@njit` function.

Loop nests run over the index symbols (named as in the math); each reduction becomes an
accumulator initialised and filled at the loop depth where its free indices are all bound, so
softmax's `sum_k g[i,k]*s[i,k]` is computed once per row, before the loop over j. Consecutive
nests over the same leading index whose reads stay within that row are fused under one loop
(softmax's m, e, z, s: one pass per row); consecutive accumulations over the same loops share
them (layernorm's dgamma and dbeta: one pass over g). `sympy.cse` runs per element expression.

What a loop does not change is computed outside it: a row value such as softmax's m[i] or
layernorm's mean[i], written in the fused row loop and read later in the same row, is a local
(a temporary read nowhere else is not allocated at all), and each part of an element
expression that depends only on outer indices (a row's rstd[i]**2, 1/C, a target id) is
computed once at the loop where those indices are bound. A store into an array can alias
every later load, so LLVM could not move those loads itself, and a loop that reloads a value
through a possibly aliased pointer does not vectorize well.

A max-reduction calls `maximum` (llvm.maximum: IEEE maximum, NaN-propagating like np.max),
which LLVM vectorizes; Python's `max` is a compare-and-select it keeps scalar without the
nnan fast-math flag (softmax's row max: 126 us -> 24 us at 3072 x 64 float32).

An outermost loop whose iterations write disjoint elements (its index leads every write of
the loop and every read of what the loop writes) and accumulate nothing across iterations is
printed twice, as `prange` and as `range`, behind `if <work> >= PARALLEL_MIN and
pool_threads() > 1` (`work`: its element visits, from the extents at run time; PARALLEL_MIN
and the threading layer are set, with their measurements, in compiled/build.py): a call too
small to pay for waking the threads (batch-1 sampling), or made with one thread
(numba.set_num_threads(1)), never touches the thread pool.

Matrix products over a leading batch index and the row loops between them (attention's
S[b] = q[b] k[b].T, its softmax rows, y[b] = P[b] v[b]) are one such loop over b, each product
on the calling thread (MKL is sequential, compiled/blas.py): a sequence's whole work stays on
one core and in its cache.

A product with no batch index (a linear layer's x W, its dx = g W.T and dW = x.T g) is split
into row blocks of its output, one per thread, in one parallel loop with the products beside it
that read none of its results (dx and dW together) and the row loops after it that stay within
its rows (the bias add: each thread adds it to the rows it just computed, while they are in its
cache). Measured 2026-12-06 on the 2-vCPU AMD EPYC VM, the reference GPT's linear products:
MKL's own two threads 114 GFLOP/s, row blocks on Numba's pool 133 (median of 15 interleaved
rounds).
"""

from __future__ import annotations

import itertools

import sympy as sp

from .nest import Dot, Nest, canon_bound, reads, reductions
from .printer import print_index, print_value
from symgrad.derive.functions import REDUCTIONS, Iverson, MaxOver, body_of, limits_of

# Loop helpers a kernel may call, copied into its generated file (Numba's cache sees only that
# file): name -> (source, import lines).
HELPERS = {
    "maximum": ('''
@intrinsic
def maximum(typingctx, a, b):
    """max(a, b), NaN if either is NaN (IEEE-754 maximum, as np.max): llvm.maximum, which LLVM
    vectorizes as a reduction; Python's max is a compare-and-select it keeps scalar."""
    if a != b:
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)
    return a(a, b), codegen
''', ["from llvmlite import ir", "from numba.extending import intrinsic"]),
    "pool_threads": ('''
@intrinsic
def pool_threads(typingctx):
    """numba.get_num_threads(), read as Numba's own prange code reads it (a symbol of the
    threading layer): calling numba.get_num_threads here would stop the kernel from being
    cached. 1 after numba.set_num_threads(1): the serial copy of a loop runs, no thread pool."""
    def codegen(context, builder, signature, args):
        fn = builder.module.globals.get("get_num_threads") or \\
            ir.Function(builder.module, ir.FunctionType(ir.IntType(64), []), "get_num_threads")
        return builder.call(fn, [])
    return types.intp(), codegen
''', ["from llvmlite import ir", "from numba import types", "from numba.extending import intrinsic"]),
}


def helper_imports(used) -> list:
    return sorted({line for name in used for line in HELPERS[name][1]})


def helper_source(used) -> str:
    return "\n".join(HELPERS[name][0].strip("\n") + "\n\n" for name in sorted(used))


class Block:
    """Lines at one indentation level: `pre` (hoisted accumulators) before `rest` (loops)."""

    def __init__(self, flat=False):
        self.pre, self.rest = [], []
        self.flat = flat  # rendered at its parent's indentation (a statement inside a fused loop)

    def render(self, indent):
        out = []
        for item in self.pre + self.rest:
            if isinstance(item, Block):
                out.extend(item.render(indent if item.flat else indent + 1))
            else:
                out.append("    " * indent + item)
        return out


def _range(lo, hi, names):
    hi1 = print_index(sp.sympify(hi) + 1, names)
    return f"range({hi1})" if lo == 0 else f"range({print_index(lo, names)}, {hi1})"


def _stem(r):
    """A readable accumulator name from the tensors a reduction reads: sum_gs, max_x."""
    labels = []
    for ix in sorted(r.atoms(sp.Indexed), key=lambda x: str(x.base.label)):
        lab = str(ix.base.label)
        if lab not in labels:
            labels.append(lab)
    kind = "max" if isinstance(r, MaxOver) else "sum"
    body = "".join(labels)[:10] if labels else "c"
    return f"{kind}_{body}".replace("__", "_")


# element functions that cost several plain passes each (for KernelWriter.work)
_COSTLY = {sp.exp, sp.log, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.erf}


def _costly_calls(e):
    """How many _COSTLY calls an element expression makes (those inside reductions not counted)."""
    if isinstance(e, REDUCTIONS):
        return 0
    own = 1 if isinstance(e, sp.Function) and e.func in _COSTLY else 0
    return own + sum(_costly_calls(a) for a in e.args)


def _index_valued(e):
    """e is integer arithmetic on indices, dims and integer reads (p - j, targets[n] + 1): a
    local holding it is an int, printed in the index context."""
    return bool(e.is_integer) and not any(
        isinstance(f, sp.Function) and not isinstance(f, (sp.Mod, sp.floor))
        for f in sp.preorder_traversal(e)) and not e.has(sp.Piecewise, sp.core.relational.Relational)


def _guarded(e):
    """A conditional the printer prints as `value if cond else 0`: what is inside is computed
    only when cond holds (a read behind an index test, an exp behind a causal mask), so it is
    never moved out of it."""
    return isinstance(e, (sp.Piecewise, Iverson)) or \
        (isinstance(e, sp.Mul) and any(isinstance(f, Iverson) for f in e.args))


class KernelWriter:
    """Prints the statements of one kernel; `names` maps symbols/labels to identifiers.

    `temps`: the arrays the kernel allocates itself (those it may print as locals instead; the
    ones it did are in `scalarized` afterwards). `parallel_min`: the element count from which
    an independent outermost loop runs as prange (None: never); `parallel` tells whether one
    was printed, `helpers` which loop helpers the code calls."""

    def __init__(self, names: dict, index_vars: set, extents: dict, calls: dict | None = None,
                 used: set | None = None, temps=(), parallel_min=None, blas_one_thread=False):
        self.extents = extents
        self.calls = calls  # sympy function -> helper call (float32: compiled.elementary)
        self.used = used if used is not None else set()  # helpers printed
        self.names = dict(names)
        self.index_vars = set(index_vars)
        self.taken = set(self.names.values())
        self.fresh = itertools.count()
        self.temps = set(temps)
        self.scalarized = set()
        self.parallel_min = parallel_min
        self.parallel = False
        self.helpers = set()
        self.gemms = set()  # what it calls of compiled/blas.py: gemm
        # each product printed: (M, K, N, a.T?, b.T?, calls, how it runs: "batch" (batch elements
        # side by side, one thread each), "rows" (row blocks, one per thread) or "" (one call))
        self.products = []
        self.blas_one_thread = blas_one_thread
        self.subst = {}  # Indexed row value -> the local holding it (within its fused loop)
        self.sym_free = {}  # local symbol -> the index symbols its value depends on
        self.hoisted = {}  # (expression, block id) -> local symbol computed in that block
        self.row_local = {}  # id(statement) -> (local symbol, also stored?) in the current loop

    def ident(self, stem):
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "t"
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}{n}"
        self.taken.add(name)
        return name

    def name_index(self, v):
        if v not in self.names:
            self.names[v] = self.ident(str(v).lstrip("_") or "k")
            self.index_vars.add(v)
        return self.names[v]

    # --- statements ------------------------------------------------------------------------
    def write(self, stmts) -> Block:
        stmts = self.inline_cheap(list(stmts))
        self.stmts = stmts
        root = Block()
        n = 0
        while n < len(stmts):
            st = stmts[n]
            own = Block(flat=True)  # this statement's code, hoisted accumulators included
            root.rest.append(own)
            run = self.batch_run(stmts, n)
            if run:  # products and row loops of one batch element, together
                self.batched(run, own)
                self.parallelize(run, own)
                self.subst = {}
                n += len(run)
                continue
            run = self.row_block_run(stmts, n)
            if run:  # products in row blocks, the row loops after them within each block
                self.row_blocks(run, own)
                n += len(run)
                continue
            if isinstance(st, Dot):
                self.dot(st, own)
                n += 1
                continue
            group = [st]
            self.row_local = {}
            while n + len(group) < len(stmts) and self.fusable(group, stmts[n + len(group)]):
                group.append(stmts[n + len(group)])
            if len(group) == 1:
                while n + len(group) < len(stmts) and self.same_loops(group, stmts[n + len(group)]):
                    group.append(stmts[n + len(group)])
                group = [group[0]] + [self.renamed(s, group[0]) for s in group[1:]]
                self.nest(group, own)
            else:
                self.fused(group, own)
            self.parallelize(group, own)
            self.subst = {}  # row values are locals of their own loop only
            n += len(group)
        return root

    def inline_cheap(self, stmts):
        """Temporaries that cost less to recompute than to store and load again (layernorm's
        xc = x - mean: one subtraction) are not stored: their readers compute them. Such a
        temporary is written once, elementwise over its whole shape (no reduction, no call, at
        most 3 operations), read only by loop nests (not as a BLAS operand), and nothing it reads
        is written after it."""
        out = list(stmts)
        n = 0
        while n < len(out):
            st = out[n]
            n += 1
            if not isinstance(st, Nest) or st.accumulate or st.note or st.target not in self.temps:
                continue
            e = st.expr
            if e.has(*REDUCTIONS, sp.Piecewise, Iverson) or e.atoms(sp.Function) or \
                    sp.count_ops(e) > 3:
                continue
            if not all(isinstance(i, sp.Symbol) for i in st.write) or len(set(st.write)) != len(st.write) \
                    or [v for v, _, _ in st.order] != list(st.write):
                continue
            later = out[n:]
            writes = lambda s: s.target if isinstance(s, Nest) else s.out  # noqa: E731
            if any(writes(s) == st.target for s in out if s is not st):
                continue
            if any(isinstance(s, Dot) and reads(s, st.target) for s in later):
                continue
            if any(any(str(ix.base.label) == writes(s) for ix in e.atoms(sp.Indexed)) for s in later):
                continue
            if any(str(ix.base.label) == st.target and len(ix.indices) != len(st.write)
                   for s in later if isinstance(s, Nest) for ix in s.expr.atoms(sp.Indexed)):
                continue
            for m, s in enumerate(later):
                if isinstance(s, Nest) and reads(s, st.target):
                    sub = {ix: e.xreplace(dict(zip(st.write, ix.indices)))
                           for ix in s.expr.atoms(sp.Indexed) if str(ix.base.label) == st.target}
                    out[n + m] = Nest(s.target, s.write, s.order, s.expr.xreplace(sub),
                                      s.accumulate, s.note)
            n -= 1
            del out[n]  # the statement that stored it
            self.scalarized.add(st.target)
        return out

    def fusable(self, group, st):
        first = group[0]
        if not isinstance(st, Nest) or st.accumulate or first.accumulate or not first.order \
                or not st.order or st.order[0] != first.order[0]:
            return False
        v = first.order[0][0]
        if any(g.write[:1] != (v,) for g in group) or st.write[:1] != (v,):
            return False
        targets = {g.target for g in group}
        for ix in st.expr.atoms(sp.Indexed):
            if str(ix.base.label) in targets and ix.indices[0] != v:
                return False
        # a reduction over a fused target must stay within the row too (checked above through
        # its reads); a reduction over v itself cannot be fused
        for r in st.expr.atoms(*REDUCTIONS):
            if any(lim[0] == v for lim in limits_of(r)):
                return False
        return True

    def batch_run(self, stmts, n):
        """The statements from n on that can run per element of one leading batch index b, all
        of one element's work on one thread: matrix products over b (attention's S[b] = q[b]
        k[b].T) and the loops between them that write [b, ...] and read what the run writes
        only at [b, ...]. At least one product and two statements; [] otherwise. Only with a
        BLAS whose product runs on the calling thread (MKL, sequential), as two thread pools
        would otherwise nest."""
        if not self.blas_one_thread or self.parallel_min is None:
            return []
        first = stmts[n]
        v = first.batch[0] if isinstance(first, Dot) and first.batch else \
            (first.order[0][0] if isinstance(first, Nest) and first.order else None)
        if v is None:
            return []
        run, targets = [], set()
        for st in stmts[n:]:
            if isinstance(st, Dot):
                ok = st.batch[:1] == (v,) and st.out_idx[:1] == (v,) and \
                    all(idx[:1] == (v,) for name, idx in ((st.a, st.a_idx), (st.b, st.b_idx))
                        if name in targets)
                target = st.out
            else:
                ok = not st.accumulate and st.order and st.order[0][0] == v and \
                    st.write[:1] == (v,) and not any(
                        lim[0] == v for r in st.expr.atoms(*REDUCTIONS) for lim in limits_of(r)) \
                    and all(ix.indices[:1] == (v,) for ix in st.expr.atoms(sp.Indexed)
                            if str(ix.base.label) in targets | {st.target})
                target = st.target
            if not ok:
                break
            run.append(st)
            targets.add(target)
        if len(run) < 2 or not any(isinstance(st, Dot) for st in run):
            return []
        return run

    def batched(self, run, root):
        """One loop over the run's batch index: each product on one thread, each row
        loop nest inside it (attention: S[b], its softmax rows, y[b] per b)."""
        st0 = run[0]
        v, ext = (st0.batch[0], self.extents[st0.batch[0]]) if isinstance(st0, Dot) else \
            (st0.order[0][0], None)
        lo, hi = (0, sp.sympify(ext) - 1) if ext is not None else st0.order[0][1:]
        body = Block()
        root.rest.append(f"for {self.name_index(v)} in {_range(lo, hi, self.names)}:")
        root.rest.append(body)
        self.row_local = {}
        for st in run:
            blk = Block(flat=True)
            body.rest.append(blk)
            if isinstance(st, Dot):
                self.dot(st, blk, bound=(v,), pre=root)
            else:
                self.nest([st], blk, outer=[(root, set()), (blk, {v})], order=st.order[1:])

    def row_block_run(self, stmts, n):
        """The statements from n on that run as row blocks, one per thread: products with no
        batch index that read no result of one another (a linear backward's dx = g W.T and
        dW = x.T g), and, after a single product whose output rows are one index v, the loops
        over all of v that write [v, ...] and read what the run writes only at [v, ...] (the
        bias add). [] when the first is not such a product, or without a BLAS that runs on the
        calling thread."""
        if not self.blas_one_thread or self.parallel_min is None:
            return []
        dots, targets = [], set()
        for st in stmts[n:]:
            if not isinstance(st, Dot) or st.batch or st.a in targets or st.b in targets or st.out in targets:
                break
            dots.append(st)
            targets.add(st.out)
        if len(dots) != 1:
            return dots
        v = self.row_index(dots[0])
        run = list(dots)
        for st in stmts[n + 1:]:
            if v is None or not isinstance(st, Nest) or st.accumulate or not st.order or \
                    tuple(st.order[0]) != (v, 0, sp.sympify(self.extents[v]) - 1) or st.write[:1] != (v,):
                break
            if any(lim[0] == v for r in st.expr.atoms(*REDUCTIONS) for lim in limits_of(r)):
                break
            if not all(ix.indices[:1] == (v,) for ix in st.expr.atoms(sp.Indexed)
                       if str(ix.base.label) in targets | {st.target}):
                break
            run.append(st)
            targets.add(st.target)
        return run

    @staticmethod
    def row_index(st: Dot):
        """The one index the printed product's output rows run over, or None (rows that are a
        group of several indices, reshaped)."""
        rest = tuple(st.out_idx[len(st.batch):])
        rows = st.M if rest[:len(st.M)] == tuple(st.M) else st.N
        return rows[0] if len(rows) == 1 else None

    def row_blocks(self, run, own):
        """The run twice behind a size test, like `parallelize`: as one prange loop over
        blocks of rows, one block a thread (each product on its block of output rows, then the
        row loops over those rows), and as the plain statements."""
        dots = [st for st in run if isinstance(st, Dot)]
        nests = [st for st in run if isinstance(st, Nest)]
        work = print_index(self.work(run), self.names)
        par, ser = Block(), Block()
        nt, blk = self.ident("threads"), self.ident("block")
        par.rest.append(f"{nt} = pool_threads()")
        par.rest.append(f"for {blk} in prange({nt}):  # one block of rows per thread")
        body = Block()
        par.rest.append(body)
        for st in dots:
            v = self.row_index(st)
            stem = self.names.get(v, "row") if v is not None else "row"
            r0, r1 = self.ident(f"{stem}_lo"), self.ident(f"{stem}_hi")
            rows = self.printed_rows(st)
            rows = print_index(rows, self.names) if rows.is_Atom else f"({print_index(rows, self.names)})"
            body.rest.append(f"{r0} = {blk} * {rows} // {nt}")
            body.rest.append(f"{r1} = ({blk} + 1) * {rows} // {nt}")
            self.dot(st, body, rows=(r0, r1), pre=par, mode="rows")
        if nests:
            v = self.row_index(dots[0])
            self.row_loop(body, f"for {self.name_index(v)} in range({r0}, {r1}):", v, nests)
        self.subst, self.row_local = {}, {}
        for st in dots:
            self.dot(st, ser, mode="rows")
        if nests:
            if len(nests) > 1 and all(self.fusable(nests[:m], nests[m]) for m in range(1, len(nests))):
                self.fused(nests, ser)
            else:
                for st in nests:
                    self.row_local = {}
                    self.nest([st], ser)
        self.subst = {}
        own.rest += [f"if {work} >= PARALLEL_MIN and pool_threads() > 1:  # row blocks in parallel",
                     par, "else:  # the same, serial: too small a call to wake the threads for", ser]
        self.parallel = True
        self.helpers.add("pool_threads")
        self.products[-2 * len(dots):-len(dots)] = []  # each product once: the serial copy's

    def printed_rows(self, st: Dot):
        """The number of rows of the product's output as printed (M, or N when stored N x M)."""
        rest = tuple(st.out_idx[len(st.batch):])
        rows = st.M if rest[:len(st.M)] == tuple(st.M) else st.N
        return sp.Mul(*[sp.sympify(self.extent_of(st, v)) for v in rows])

    def same_loops(self, group, st):
        """st accumulates over the same loops as the accumulations in group (layernorm's dgamma
        and dbeta: `for n, for j`), into another array none of them reads: one loop nest."""
        first = group[0]
        plain = ("", "reduction over a leading axis")  # not a scatter-add
        if not isinstance(st, Nest) or not (st.accumulate and first.accumulate) or \
                st.note not in plain or first.note not in plain or \
                len(st.order) != len(first.order) or not st.order:
            return False
        if any((lo, hi) != (lo0, hi0) for (_, lo, hi), (_, lo0, hi0) in zip(st.order, first.order)):
            return False
        ren = {v: v0 for (v, _, _), (v0, _, _) in zip(st.order, first.order)}
        if tuple(sp.sympify(i).xreplace(ren) for i in st.write) != tuple(first.write):
            return False  # the same element written per iteration: the same local-sum layout
        targets = {g.target for g in group} | {st.target}
        if len(targets) != len(group) + 1:
            return False
        return not any(str(ix.base.label) in targets for g in group + [st]
                       for ix in g.expr.atoms(sp.Indexed))

    def renamed(self, st, like):
        """st with its loop variables renamed to those of `like` (same_loops checked)."""
        ren = {v: v0 for (v, _, _), (v0, _, _) in zip(st.order, like.order)}
        return Nest(st.target, tuple(sp.sympify(i).xreplace(ren) for i in st.write), list(like.order),
                    st.expr.xreplace(ren), st.accumulate, st.note)

    def fused(self, group, root):
        v, lo, hi = group[0].order[0]
        self.row_loop(root, f"for {self.name_index(v)} in {_range(lo, hi, self.names)}:", v, group)

    def row_loop(self, root, header, v, group):
        """`header` (a loop over the row variable v) printed into root, holding each statement
        of group as a nest over its remaining loops: one pass over a row for all of them."""
        body = Block()
        root.rest += [header, body]
        self.row_locals(group)
        for st in group:
            blk = Block(flat=True)
            body.rest.append(blk)
            self.nest([st], blk, outer=[(root, set()), (blk, {v})], order=st.order[1:])

    def row_locals(self, group):
        """The row values of a fused loop (m[i], z[i], mean[i]: written at [i] alone) that later
        statements of the loop read: each becomes a local those statements read. A temporary
        read nowhere else is then not allocated at all; an output is still stored."""
        v = group[0].order[0][0]
        self.row_local = {}
        for n, st in enumerate(group):
            if st.accumulate or tuple(st.write) != (v,) or len(st.order) != 1:
                continue
            t = st.target
            writers = [s for s in self.stmts if (s.target if isinstance(s, Nest) else s.out) == t]
            if len(writers) != 1:
                continue
            outside = any(reads(s, t) for s in self.stmts if not any(s is g for g in group))
            if t in self.temps and not outside:
                name = self.names.get(t, t)  # the array is never allocated: its name is free
                self.scalarized.add(t)
            elif any(reads(s, t) for s in group[n + 1:]):
                name = self.ident(f"{self.names.get(t, t)}_{self.names[v]}")
            else:
                continue
            sym = sp.Symbol(f"_row{next(self.fresh)}", real=True)
            self.names[sym] = name
            self.sym_free[sym] = {v}
            self.row_local[id(st)] = (sym, t not in self.scalarized)

    def dot(self, st: Dot, root, bound=(), pre=None, rows=None, mode=""):
        """`gemm` per batch element (within a batched run, `bound`: its batch index, already
        looped over; its alpha computed in `pre`); with `rows` = (first, end), on those rows of
        the output alone. `mode` is how the product runs, for `products`."""
        for v in st.batch:
            self.name_index(v)
        alpha = ""
        if st.alpha != 1:
            alpha = self.ident("alpha")
            (pre.pre if pre is not None else root.rest).append(f"{alpha} = {self.value(st.alpha)}")
            alpha = f", {alpha}"
        self.gemms.add("gemm")
        blk = root
        for v in st.batch:
            if v in bound:
                continue
            inner = Block()
            ext = sp.sympify(self.extent_of(st, v))
            blk.rest.append(f"for {self.names[v]} in {_range(0, ext - 1, self.names)}:")
            blk.rest.append(inner)
            blk = inner

        def size(group):
            return print_index(sp.Mul(*[self.extent_of(st, v) for v in group]), self.names)

        def mat(name, idx, g0, g1):
            """name[batch] as a 2-D (g0, g1) matrix (a transposed view when stored (g1, g0)); with
            the batch indices not leading, the slice of one batch element, name[b, :, h, :]."""
            base = self.names.get(name, name)
            if tuple(idx[:len(st.batch)]) == tuple(st.batch):
                if st.batch:
                    base += "[" + ", ".join(self.names[v] for v in st.batch) + "]"
            else:
                base += "[" + ", ".join(self.names[v] if v in st.batch else ":" for v in idx) + "]"
            rest = _rest(idx)
            stored = (g0, g1) if rest[:len(g0)] == tuple(g0) else (g1, g0)
            if len(rest) != 2:
                base = f"{base}.reshape({size(stored[0])}, {size(stored[1])})"
            return base if stored[0] == tuple(g0) else f"{base}.T"

        def _rest(idx):
            return tuple(v for v in idx if v not in st.batch)

        a = mat(st.a, st.a_idx, st.M, st.K)
        b = mat(st.b, st.b_idx, st.K, st.N)
        o_rest = _rest(st.out_idx)
        M, K, N = (sp.Mul(*[sp.sympify(self.extent_of(st, v)) for v in g]) for g in (st.M, st.K, st.N))
        if o_rest[:len(st.M)] == tuple(st.M):
            o = mat(st.out, st.out_idx, st.M, st.N)
        else:
            o = mat(st.out, st.out_idx, st.N, st.M)
            a, b, M, N = _t(b), _t(a), N, M
        transposed = (a.endswith(".T"), b.endswith(".T"))
        if rows is not None:
            a, o = (f"{m}[{rows[0]}:{rows[1]}]" for m in (a, o))
        blk.rest.append(f"gemm({a}, {b}, {o}{alpha})")
        calls = sp.Mul(*[sp.sympify(self.extent_of(st, v)) for v in st.batch])
        self.products.append((M, K, N, *transposed, calls, "batch" if bound else mode))

    def extent_of(self, st, v):
        return self.extents[v]

    def nest(self, sts, root, outer=None, order=None):
        """The loops of sts (one statement, or accumulations sharing their loops) and their
        element assignments."""
        order = sts[0].order if order is None else order
        blocks = outer or [(root, set())]
        blk, bound = blocks[-1]
        lhs = {}
        for st in sts:
            if st.accumulate:
                root.rest.append(f"{self.names.get(st.target, st.target)}[:] = F(0)")
            lhs[id(st)] = self.names.get(st.target, st.target)
            if st.write:
                lhs[id(st)] += f"[{', '.join(print_index(i, self.names) for i in st.write)}]"
        # innermost loops that do not move the written element: sum them in a local first
        # (a += into the array would carry a memory dependence through every iteration)
        st = sts[0]
        written = set().union(*[sp.sympify(i).free_symbols for i in st.write]) if st.write else set()
        n_inner = 0
        if st.accumulate:
            while n_inner < len(order) and order[len(order) - 1 - n_inner][0] not in written:
                n_inner += 1
        acc = {}
        for depth, (v, lo, hi) in enumerate(order):
            if n_inner and depth == len(order) - n_inner:
                for s in sts:
                    acc[id(s)] = self.ident("acc")
                    blk.rest.append(f"{acc[id(s)]} = F(0)")
                outer_blk = blk
            inner = Block()
            blk.rest.append(f"for {self.name_index(v)} in {_range(lo, hi, self.names)}:")
            blk.rest.append(inner)
            bound = bound | {v}
            blocks = blocks + [(inner, bound)]
            blk = inner
        for st in sts:
            expr = st.expr.xreplace(self.subst) if self.subst else st.expr
            expr = self.place(expr, blocks, {}, {st.target})
            row = self.row_local.get(id(st))
            if row is not None:  # a row value: a local the rest of the row reads
                sym, store = row
                self.assign(blocks, self.names[sym], "=", expr, {st.target})
                if store:
                    blk.rest.append(f"{lhs[id(st)]} = {self.names[sym]}")
                for later in self.stmts:  # the reads of it in the rest of the row
                    for ix in later.expr.atoms(sp.Indexed) if isinstance(later, Nest) else ():
                        if str(ix.base.label) == st.target and tuple(ix.indices) == tuple(st.write):
                            self.subst[ix] = sym
                continue
            if id(st) not in acc:
                self.assign(blocks, lhs[id(st)], "+=" if st.accumulate else "=", expr, {st.target})
            else:
                self.assign(blocks, acc[id(st)], "+=", expr, {st.target})
                outer_blk.rest.append(f"{lhs[id(st)]} += {acc[id(st)]}")

    def assign(self, blocks, lhs, op, expr, protect=frozenset()):
        """`lhs op expr` in the innermost of blocks, the parts of expr that its inner loops do
        not change computed in the outer blocks (`hoist`), common subexpressions once."""
        blk = blocks[-1][0]
        expr = self.hoist(expr, blocks, protect)
        reps, (red,) = sp.cse(expr, symbols=(sp.Symbol(f"_cse{next(self.fresh)}") for _ in itertools.count()),
                              optimizations=None, order="none")
        retype = {}
        for sym, val in reps:
            val = val.xreplace(retype)
            if _index_valued(val):
                # index arithmetic shared by a subscript and its range test (w[p - j] behind
                # p - j >= 0) stays an int: a float subscript does not type in Numba
                retype[sym] = sp.Symbol(sym.name, integer=True)
                sym = retype[sym]
                text = print_index(val, self.names)
            else:
                text = self.value(val)
            self.names[sym] = self.ident("t")
            blk.rest.append(f"{self.names[sym]} = {text}")
        blk.rest.append(f"{lhs} {op} {self.value(red.xreplace(retype))}")

    def value(self, expr) -> str:
        return print_value(expr, self.names, self.calls, self.used)

    # --- loop-invariant parts ----------------------------------------------------------------
    def free_idx(self, e):
        """The loop indices e depends on (through the locals it reads, too)."""
        out = set()
        for s in e.free_symbols:
            if s in self.index_vars:
                out.add(s)
            elif s in self.sym_free:
                out |= self.sym_free[s]
        return out

    def hoist(self, expr, blocks, protect):
        """expr with each part that depends only on outer loop indices replaced by a local
        computed in the block of the loop binding those indices (once per row, not once per
        element): reads of arrays other than those in `protect` (what the loop writes), and
        arithmetic on them and on scalars (1/C, rstd[i]**2). Nothing inside a conditional
        (`_guarded`) moves."""
        if len(blocks) < 2:
            return expr
        inner = len(blocks) - 1
        chain = [id(b) for b, _ in blocks]
        bounds = [bound for _, bound in blocks]

        def depth(e):
            if any(str(ix.base.label) in protect for ix in e.atoms(sp.Indexed)):
                return inner
            free = self.free_idx(e)
            return next(d for d, b in enumerate(bounds) if free <= b)

        def worth(e, index=False):
            """Worth a line of its own: a read, or arithmetic beyond a sign or a cast (in an
            index: only what reads an array, targets[n], not i + 1)."""
            if isinstance(e, sp.Indexed):
                return True
            if e.is_Atom or isinstance(e, sp.IndexedBase):
                return False
            if index:
                return bool(e.atoms(sp.Indexed))
            if isinstance(e, sp.Mul) and len(e.args) == 2 and e.args[0].is_Number and \
                    e.args[1].is_Atom and not isinstance(e.args[1], sp.Indexed):
                return False
            return True

        def lift(e, d, index):
            """e (depth d < the loop it sits in) as a local of block d."""
            key = (sp.srepr(e), chain[d], index)  # an int local for a subscript, a float one else
            if key in self.hoisted:
                return self.hoisted[key]
            e2 = visit(e, d, index)
            if isinstance(e, sp.Indexed) and all(isinstance(i, sp.Symbol) for i in e.indices):
                stem = "_".join([self.names.get(str(e.base.label), str(e.base.label))] +
                                [self.names.get(i, str(i)) for i in e.indices])
            else:
                stem = "t"
            sym = sp.Symbol(f"_h{next(self.fresh)}", integer=True) if index else \
                sp.Symbol(f"_h{next(self.fresh)}", real=True)
            self.names[sym] = self.ident(stem)
            self.sym_free[sym] = self.free_idx(e)
            text = print_index(e2, self.names) if index else self.value(e2)
            blocks[d][0].pre.append(f"{self.names[sym]} = {text}")
            self.hoisted[key] = sym
            return sym

        def visit(e, d, index=False):
            if (e.is_Atom and not isinstance(e, sp.Indexed)) or isinstance(e, sp.IndexedBase):
                return e
            de = depth(e)
            if de < d and worth(e, index):
                if isinstance(e, sp.Mul) and e.args[0].is_Number and len(e.args) == 2:
                    return e.args[0] * lift(e.args[1], de, index)  # -mean[i]: hoist the read
                return lift(e, de, index)
            if _guarded(e):
                return e
            if isinstance(e, (sp.Add, sp.Mul)):
                outer = [a for a in e.args if depth(a) < d and not a.is_Number]
                # the invariant factors (terms) together: one local; when every one is
                # invariant, e itself was not worth a local (p + K - 1 in an index), and
                # visiting e again would recurse forever: its arguments are visited below
                if 1 < len(outer) < len(e.args):
                    part = e.func(*outer)
                    rest = [visit(a, d, index) for a in e.args if not any(a is o for o in outer)]
                    return e.func(visit(part, d, index), *rest)
            if isinstance(e, sp.Indexed):
                idx = [visit(i, d, True) for i in e.indices]
                return e if all(a is b for a, b in zip(idx, e.indices)) else e.base[tuple(idx)]
            sub_index = index or isinstance(e, (sp.KroneckerDelta, sp.core.relational.Relational))
            args = [visit(a, d, sub_index) for a in e.args]
            return e if all(a is b for a, b in zip(args, e.args)) else e.func(*args)

        return visit(expr, inner)

    def place(self, expr, blocks, cache, protect=frozenset()):
        """Hoist each reduction of expr to the shallowest block where its free indices are bound;
        returns expr with reductions replaced by their accumulators."""
        sub = {}
        chain = [id(b) for b, _ in blocks]
        for r in reductions(expr):
            key = sp.srepr(canon_bound(r))
            hit = cache.get(key)
            if hit is not None and hit[1] in chain:
                sub[r] = hit[0]
                continue
            free = self.free_idx(r)
            depth = next(d for d, (_, bound) in enumerate(blocks) if free <= bound)
            acc = sp.Symbol(f"_acc{next(self.fresh)}")
            self.names[acc] = self.ident(_stem(r))
            self.sym_free[acc] = free
            blk, bound = blocks[depth]
            code = []
            lines = Block()
            inner_blocks = blocks[:depth + 1]
            cur = lines
            for v, lo, hi in limits_of(r):
                self.name_index(v)
                nb = Block()
                cur.rest.append(f"for {self.names[v]} in {_range(lo, hi, self.names)}:")
                cur.rest.append(nb)
                bound = bound | {v}
                inner_blocks = inner_blocks + [(nb, bound)]
                cur = nb
            body = self.place(body_of(r), inner_blocks, cache, protect)
            name = self.names[acc]
            if isinstance(r, MaxOver):
                code.append(f"{name} = F(-np.inf)")
                self.assign(inner_blocks, "_m", "=", body, protect)
                cur.rest[-1] = cur.rest[-1].replace("_m = ", f"{name} = maximum({name}, ", 1) + ")"
                self.helpers.add("maximum")
            else:
                code.append(f"{name} = F(0)")
                self.assign(inner_blocks, name, "+=", body, protect)
            blk.pre.extend(code + lines.rest)
            cache[key] = (acc, id(blk))
            sub[r] = acc
        return expr.xreplace(sub) if sub else expr

    # --- threads -----------------------------------------------------------------------------
    def parallelize(self, group, own):
        """Print the outermost loop of group as prange, behind a size test, when its
        iterations are independent: its index leads every element the group writes (so each
        iteration writes its own), every read of an array the group writes is at that same
        index (so no iteration reads another's), and no statement writes a scalar or
        scatters into rows given by data (embedding's ids[n]). A batched run (`batch_run`, which
        checked the same of its products and loops) runs its products on one thread each."""
        if self.parallel_min is None or not group:
            return
        dots = [st for st in group if isinstance(st, Dot)]
        if dots:
            v = dots[0].batch[0]
        elif not group[0].order:
            return
        elif len(group) == 1 and not group[0].expr.has(*REDUCTIONS) and \
                not _costly_calls(group[0].expr):
            # one pass of plain arithmetic (a bias add, a copy): bound by
            # memory, it gained nothing from a second thread (linear's bias add beside its GEMM:
            # 1.03x slower), and each prange loop adds about 1.5 s to the first compile
            return
        else:
            v = group[0].order[0][0]
        targets = set() if dots else {st.target for st in group}
        for st in [] if dots else group:
            if not st.order or st.order[0][0] != v or not st.write or sp.sympify(st.write[0]) != v:
                return
            if any(not isinstance(sp.sympify(i), (sp.Symbol, sp.Integer)) for i in st.write):
                return  # a write at a computed position (a scatter); a constant one is its own
            for ix in st.expr.atoms(sp.Indexed):
                if str(ix.base.label) in targets and (not ix.indices or ix.indices[0] != v):
                    return
        head = f"for {self.names[v]} in "
        at = next((n for n, item in enumerate(own.rest) if isinstance(item, str)
                   and item.startswith(head)), None)
        if at is None or not isinstance(own.rest[at + 1], Block):
            return
        loop, body = own.rest[at], own.rest[at + 1]
        work = print_index(self.work(group), self.names)
        par, ser = Block(), Block()
        par.rest += [loop.replace(" in range(", " in prange(", 1), body]
        ser.rest += [loop, body]
        own.rest[at:at + 2] = [
            f"if {work} >= PARALLEL_MIN and pool_threads() > 1:  # rows in parallel",
            par, "else:  # the same loop, serial: too small a call to wake the threads for", ser]
        self.parallel = True
        self.helpers.add("pool_threads")

    def work(self, group):
        """The work of group's loops in element visits, roughly: each loop nest and each
        reduction counts its iterations (an extent product; a range that depends on an outer
        index, its largest), times 1 + 4 for each exp, log, tanh, erf... it calls per element
        (measured: an exp costs about what 4 plain passes over a row do)."""
        def ext(v):
            e = self.extents.get(v)
            return sp.Integer(1) if e is None else sp.sympify(e)

        def largest(e):  # a range that depends on an outer index: at most its whole extent
            return e.xreplace({s: ext(s) - 1 for s in e.free_symbols if s in self.extents})

        calls = _costly_calls

        total = sp.Integer(0)
        for st in group:
            if isinstance(st, Dot):  # a product: its multiply-adds
                total += sp.Mul(*[ext(v) for v in (*st.batch, *st.M, *st.N, *st.K)])
                continue
            loops = [v for v, _, _ in st.order]
            total += sp.Mul(*[ext(v) for v in loops]) * (1 + 4 * calls(st.expr))
            for r in st.expr.atoms(*REDUCTIONS):
                outer = [v for v in loops if v in self.free_idx(r)]
                lims = [largest(sp.sympify(hi) - lo + 1) for _, lo, hi in limits_of(r)]
                total += sp.Mul(*[ext(v) for v in outer], *lims) * (1 + 4 * calls(body_of(r)))
        # a term whose extents divide another's is no larger than it (extents are at least 1):
        # softmax's 2*N for its row values beside 8*N*n
        terms = sp.Add.make_args(sp.expand(total))
        mono = [t.as_coeff_Mul()[1] for t in terms]
        keep = [t for t, m in zip(terms, mono)
                if not any(o != m and sp.fraction(sp.cancel(o / m))[1] == 1 for o in mono)]
        return sp.Add(*keep)


def _t(m):
    return m[:-2] if m.endswith(".T") else f"{m}.T"


__all__ = ["KernelWriter", "Block", "HELPERS", "helper_imports", "helper_source"]
