"""KernelWriter: lowered statements -> the source of one `@njit` function.

Loop nests run over the index symbols (named as in the math); each reduction becomes an
accumulator initialised and filled at the loop depth where its free indices are all bound, so
softmax's `sum_k g[i,k]*s[i,k]` is computed once per row, before the loop over j. Consecutive
nests over the same leading index whose reads stay within that row are fused under one loop
(softmax's m, e, z, s: one pass per row); consecutive accumulations over the same loops share
them (layernorm's dgamma and dbeta: one pass over g). `sympy.cse` runs per element expression.

A max-reduction calls `maximum` (llvm.maximum: IEEE maximum, NaN-propagating like np.max),
which LLVM vectorizes; Python's `max` is a compare-and-select it keeps scalar without the
nnan fast-math flag (softmax's row max: 126 us -> 24 us at 3072 x 64 float32).

Hoisting out of loops is compiled/hoist.py; loops and products run in parallel, compiled/parallel.py;
the Numba helpers a kernel calls, compiled/helpers.py.
"""

from __future__ import annotations

import itertools

import sympy as sp

from .block import Block, loop_range
from .hoist import Hoisting
from .nest import Dot, Nest, reads
from .parallel import ParallelRuns
from .printer import print_index, print_value
from symgrad.derive.functions import REDUCTIONS, Iverson, limits_of


def _index_valued(e):
    """e is integer arithmetic on indices, dims and integer reads (p - j, targets[n] + 1): a
    local holding it is an int, printed in the index context."""
    return bool(e.is_integer) and not any(
        isinstance(f, sp.Function) and not isinstance(f, (sp.Mod, sp.floor))
        for f in sp.preorder_traversal(e)) and not e.has(sp.Piecewise, sp.core.relational.Relational)


class KernelWriter(ParallelRuns, Hoisting):
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
        self.row_loop(root, f"for {self.name_index(v)} in {loop_range(lo, hi, self.names)}:", v, group)

    def open_loop(self, blk, v, lo, hi) -> Block:
        """`for v in range(lo, hi + 1):` printed into blk; the Block of its body."""
        inner = Block()
        blk.rest += [f"for {self.name_index(v)} in {loop_range(lo, hi, self.names)}:", inner]
        return inner

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
            blk.rest.append(f"for {self.names[v]} in {loop_range(0, ext - 1, self.names)}:")
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
            inner = self.open_loop(blk, v, lo, hi)
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
def _t(m):
    return m[:-2] if m.endswith(".T") else f"{m}.T"


__all__ = ["KernelWriter"]
