"""KernelWriter's parallel runs (a mixin of compiled/writer.py's KernelWriter).

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

import sympy as sp

from .block import Block, loop_range
from .nest import Dot, Nest
from .printer import print_index
from symgrad.derive.functions import REDUCTIONS, body_of, limits_of

# element functions that cost several plain passes each (for KernelWriter.work)
_COSTLY = {sp.exp, sp.log, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan, sp.erf}


def _costly_calls(e):
    """How many _COSTLY calls an element expression makes (those inside reductions not counted)."""
    if isinstance(e, REDUCTIONS):
        return 0
    own = 1 if isinstance(e, sp.Function) and e.func in _COSTLY else 0
    return own + sum(_costly_calls(a) for a in e.args)


class ParallelRuns:
    """Loops over independent rows or batch entries printed as prange runs, products as row
    blocks per thread; KernelWriter's state (names, extents, products, helpers) is theirs."""

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
        root.rest.append(f"for {self.name_index(v)} in {loop_range(lo, hi, self.names)}:")
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
