"""Lowering: index equations (`T[i,j] = expr`) -> kernel statements the writer prints.

A kernel is a list of equations; `Lowerer` lowers each, in order, to the statements of
compiled.nest:

* `Dot`: a two-factor contraction that is a (batched) matrix product, sent to BLAS through
  `np.dot` on 2-D slices (batch indices looped over, grouped index sets reshaped); which sums
  are products, and in what layout, is compiled.products;
* `Nest`: a loop nest that writes (or accumulates into) one array element per iteration. Its
  reductions (`Sum`, `MaxOver`) are laid out by the writer as accumulators, each hoisted to the
  loop depth where its free indices are bound (llm.c style: a per-row sum is computed once per
  row); a sum's brackets become its loop bounds first (compiled.bounds);
* temporaries (`Temp`) for a contraction whose result is read elementwise, for one operand
  group of a contraction that is not a plain array read (attention's dS = P*(dP - rowsum)), and
  for a reduction shared by several equations of one kernel. Identical temporaries are
  computed once per kernel (keyed by a canonical form, blind to index names).

Special forms (compiled.accumulations):

* `Sum_n body * delta(ids[n], p)` (embedding's gradient) is a scatter-add: a loop over n that
  accumulates into row ids[n], not an O(V*N*C) loop with a test;
* `out[j] = Sum_n body` whose arrays keep n on an earlier axis than j (bias and layernorm
  parameter gradients) accumulates with n as the outer loop, reading rows contiguously.

Here: the order of those attempts, the kernel's temporaries, products written straight into
their target (`direct_dot`), and the splits of one element loop (`split_delta`, `split_guard`).
"""

from __future__ import annotations

import itertools

import sympy as sp

from symgrad.derive.functions import Iverson, MaxOver, limits_of, rename_bound

from .accumulations import leading_axis_sum, scatter
from .bounds import affine_bound, affine_range, bound_sums
from .nest import Dot, Lowered, Nest, Temp, canon_bound, free_indices, reads
from .products import Product, full_axes, layout_ok, natural_order, plan


class Lowerer:
    """Lowers the equations of one kernel; `extents` maps every free index symbol to its extent."""

    def __init__(self, extents: dict, arrays: dict, blas: bool = True):
        self.extents = dict(extents)
        self.arrays = arrays  # name -> symbolic shape of every array the kernel can read (args, saved, upstream)
        self.blas = blas
        self.out = Lowered()
        self.temp_keys = {}  # canonical key -> (temp name, order)
        self.counter = itertools.count()
        self.hint = ()  # the indices of the equation being lowered: plan's choice of operand A

    # --- index bookkeeping -----------------------------------------------------------------
    def ivars(self, expr):
        """Free index symbols of expr."""
        return free_indices(expr, self.extents)

    def add_limits(self, r):
        for v, lo, hi in limits_of(r):
            if v not in self.extents:
                self.extents[v] = hi - lo + 1 if lo == 0 or not (lo.free_symbols & set(self.extents)) \
                    else None

    def unique_bound(self, expr):
        """Give every bound index its own symbol (derive reuses names like l for sums over
        different ranges) and record its extent."""
        def rename(v, lo, hi, state):
            nv = sp.Dummy(str(v).lstrip("_"), integer=True)
            self.extents[nv] = hi - lo + 1 if not ((lo.free_symbols | hi.free_symbols) & set(self.extents)) else None
            return nv, state

        return rename_bound(expr, rename)

    # --- temporaries ------------------------------------------------------------------------
    def fresh(self, stem):
        """A temporary's name no array of the kernel has: a saved binding named mm2 was
        overwritten by the product temporary mm2 (found by the fuzzer, seed 152452665)."""
        name = f"{stem}{next(self.counter)}"
        while name in self.arrays:
            name = f"{stem}{next(self.counter)}"
        return name

    def canon(self, expr, order):
        """A key for expr over free indices `order`, blind to the names of its indices."""
        sub = {v: sp.Symbol(f"_f{n}", integer=True) for n, v in enumerate(order)}
        e = canon_bound(expr.xreplace(sub))
        return (sp.srepr(e), tuple(sp.srepr(sp.sympify(self.extents[v])) for v in order))

    def temp(self, expr, order, stem):
        """A temporary array holding expr over `order`; returns its read at `order` (reused when an
        identical one exists)."""
        key = self.canon(expr, order)
        if key in self.temp_keys:
            name, _ = self.temp_keys[key]
            return sp.IndexedBase(name, real=True)[tuple(order)], False
        name = self.fresh(stem)
        self.temp_keys[key] = (name, tuple(order))
        self.out.temps.append(Temp(name, tuple(self.extents[v] for v in order)))
        self.arrays[name] = tuple(self.extents[v] for v in order)
        self.lower(name, tuple(order), expr)
        return sp.IndexedBase(name, real=True)[tuple(order)], True

    # --- one equation -----------------------------------------------------------------------
    def lower(self, target: str, idx: tuple, expr):
        """Emit statements computing target[idx] = expr (idx: index symbols; () for a scalar)."""
        self.hint = tuple(idx)
        expr = bound_sums(expr)
        expr = self.unique_bound(expr)
        expr = self.lower_contractions(expr)
        # a contraction term written straight into the target, the rest added in place
        expr = self.direct_dot(target, idx, expr)
        if expr is None:
            return
        acc = scatter(target, idx, expr, self.extents) or leading_axis_sum(target, idx, expr, self.extents)
        if acc is not None:
            self.out.stmts.append(acc)
            return
        order = [(v, 0, self.extents[v] - 1) for v in idx]
        for st in self.split_delta(Nest(target, tuple(idx), order, expr)):
            self.out.stmts += self.split_guard(st)

    def split_delta(self, st, most=8):
        """An element assignment whose expression tests an index of a small constant extent
        against constants, `dqkv[b, i, t, h, c] = delta(0, t) g_q[..] + delta(1, t) g_k[..] +
        delta(2, t) g_v[..]` (the gradient of a concatenation, a stack or a head split), as one
        loop per value of that index, each with the deltas evaluated: three copies instead of
        one loop reading all three inputs per element and multiplying two of them by 0."""
        for n, (v, lo, hi) in enumerate(st.order):
            if not (lo == 0 and sp.sympify(hi).is_Integer and int(hi) < most):
                continue
            tests = [dl for dl in st.expr.atoms(sp.KroneckerDelta) if v in dl.free_symbols
                     and all(a == v or a.is_Integer for a in dl.args)]
            if not tests:
                continue
            out = []
            for c in map(sp.Integer, range(int(hi) + 1)):
                write = tuple(c if w == v else w for w in st.write)
                out += self.split_delta(Nest(st.target, write, st.order[:n] + st.order[n + 1:],
                                             st.expr.subs(v, c), note=st.note), most)
            return out
        return [st]

    def split_guard(self, st):
        """An element assignment `y[.., j] = [j <= f] * rest`, the guard on its last index and f
        an affine function of the indices before it (a causal mask: [j <= i]), as two loops over
        the two parts of j's range: rest with the guard 1 where it holds, and 0 elsewhere. The
        mask then costs nothing per element, and what it zeroes is not computed at all
        (attention's e = [j <= i] * exp(...): half its exps; a `1 if j <= i else 0` select per
        element kept the loop from vectorizing: 303 us against 64 for the exps alone at 48 x 64
        x 64). Only where f provably stays within j's range; otherwise one loop, as written."""
        if not isinstance(st.expr, sp.Mul) or not st.order:
            return [st]
        v, lo, hi = st.order[-1]
        before = {u: self.extents[u] for u, _, _ in st.order[:-1]}
        for guard in st.expr.args:
            bound = affine_bound(guard, v) if isinstance(guard, Iverson) else None
            if bound is None or not bound[1].free_symbols & set(self.extents) <= set(before):
                continue
            upper, f = bound
            top, bottom = affine_range(f, before)
            if top is None or not (sp.simplify(hi - top).is_nonnegative and
                                   sp.simplify(bottom - lo).is_nonnegative):
                continue
            held = st.order[:-1] + [(v, lo, f) if upper else (v, f, hi)]
            rest = st.order[:-1] + [(v, f + 1, hi) if upper else (v, lo, f - 1)]
            return [Nest(st.target, st.write, held, st.expr.xreplace({guard: sp.Integer(1)}), note=st.note),
                    Nest(st.target, st.write, rest, sp.Integer(0), note=st.note)]
        return [st]

    # --- contractions to BLAS ---------------------------------------------------------------
    def normalize(self, expr):
        """Gather sums so contractions show: in each Add, move factors into a Sum beside them
        when that adds no free index to the Sum (-sum_j(P*k)*R[i] -> -sum_j(P*k*R[i])), then
        merge the Sums over the same ranges and free indices and factor their body
        (attention's dq becomes sum_j k * P*(dP - R): one dS shared with dk)."""
        def push(t):
            factors = list(sp.Mul.make_args(t))
            sums = [f for f in factors if isinstance(f, sp.Sum)]
            if not sums:
                return t
            main = max(sums, key=lambda s: len(self.ivars(s)))
            mv = self.ivars(main)
            inside, outside = [], []
            for f in factors:
                if f is main:
                    continue
                (inside if self.ivars(f) <= mv else outside).append(f)
            if not inside:
                return t
            bound = {l[0] for l in main.limits}
            clash = bound & set().union(*[f.free_symbols for f in inside])
            body, lims = main.function, [tuple(l) for l in main.limits]
            if clash:
                ren = {v: sp.Dummy(str(v), integer=True) for v in clash}
                body = body.xreplace(ren)
                lims = [(ren.get(v, v), lo, hi) for v, lo, hi in lims]
                for old, new in ren.items():
                    self.extents[new] = self.extents.get(old)
            return sp.Mul(*outside) * sp.Sum(body * sp.Mul(*inside), *lims)

        def merge(e):
            terms = list(sp.Add.make_args(e))
            groups, rest = {}, []
            for t in terms:
                p = push(t)
                if isinstance(p, sp.Sum):
                    sig = (tuple((lo, hi) for _, lo, hi in p.limits), frozenset(self.ivars(p)))
                    groups.setdefault(sig, []).append((t, p))
                else:
                    rest.append(t)
            out = list(rest)
            for sig, pairs in groups.items():
                if len(pairs) == 1 or all(plan(p, self.extents, self.hint) is not None for _, p in pairs):
                    # nothing to merge with, or each is a matrix product already: leave as was
                    out.extend(t for t, _ in pairs)
                    continue
                ts = [p for _, p in pairs]
                lims0 = [tuple(l) for l in ts[0].limits]
                bodies = [t.function.xreplace({l[0]: l0[0] for l, l0 in zip(t.limits, lims0)}) for t in ts]
                out.append(sp.Sum(sp.factor_terms(sp.Add(*bodies)), *lims0))
            return sp.Add(*out)

        def visit(e):
            if isinstance(e, (sp.Indexed, sp.IndexedBase)) or not e.args or isinstance(e, (Iverson, MaxOver)):
                return e
            if isinstance(e, sp.Sum):
                self.add_limits(e)
                split = split_products(e)
                if split is not None:
                    return split
            new = [visit(a) for a in e.args]
            e = e.func(*new) if new != list(e.args) else e
            if isinstance(e, sp.Add) and e.has(sp.Sum):
                return merge(e)
            return e

        def split_products(e):
            """sum_l (A B + C D) as sum_l A B + sum_l C D when each is a matrix product: a
            tangent's product rule (the linear layer's JVP, x_dot W + x W_dot) is two GEMMs."""
            terms = sp.Add.make_args(sp.expand(e.function)) if isinstance(e.function, sp.Add) else ()
            if len(terms) < 2:
                return None
            parts = [sp.Sum(t, *e.limits) for t in terms]
            return sp.Add(*parts) if all(plan(p, self.extents, self.hint) is not None for p in parts) else None

        return visit(expr)

    def lower_contractions(self, expr):
        """Replace every Sum that is a matrix product (with at least 2 free indices) by a
        temporary computed with BLAS; innermost first."""
        if not self.blas:
            return expr
        expr = self.normalize(expr)

        def visit(e):
            if isinstance(e, (sp.Indexed, sp.IndexedBase)) or not e.args:
                return e
            if isinstance(e, sp.Sum):
                self.add_limits(e)
                body = visit(e.function)
                e = sp.Sum(body, *e.limits) if body != e.function else e
                rep = self.contraction_temp(e)
                return rep if rep is not None else e
            if isinstance(e, MaxOver):
                self.add_limits(e)
                return e
            new = [visit(a) for a in e.args]
            return e.func(*new) if new != list(e.args) else e

        return visit(expr)

    def operand(self, f, batch, inner):
        """A plain array read usable as a BLAS operand, else a temporary; returns (name, idx)."""
        want = set(batch) | set(inner[0]) | set(inner[1])
        if isinstance(f, sp.Indexed) and all(isinstance(i, sp.Symbol) for i in f.indices) \
                and len(set(f.indices)) == len(f.indices) and set(f.indices) == want \
                and full_axes(f, self.arrays, self.extents) and layout_ok(f.indices, batch, inner):
            return str(f.base.label), tuple(f.indices)
        order = natural_order(f, want, batch, inner)
        ref, _ = self.temp(f, order, "op")
        return str(ref.base.label), tuple(order)

    def contraction_temp(self, s):
        p = plan(s, self.extents, self.hint)
        if p is None:
            return None
        order = tuple(p.batch) + p.M + p.N
        key = self.canon(s, order)
        if key in self.temp_keys:
            name, _ = self.temp_keys[key]
            return sp.IndexedBase(name, real=True)[order]
        name = self.fresh("mm")
        self.temp_keys[key] = (name, order)
        self.out.temps.append(Temp(name, tuple(self.extents[v] for v in order)))
        self.arrays[name] = tuple(self.extents[v] for v in order)
        self.emit_dot(name, order, p)
        return sp.IndexedBase(name, real=True)[order]

    def emit_dot(self, name, order, p: Product):
        an, ai = self.operand(p.A, p.batch, (p.M, p.K))
        bn, bi = self.operand(p.B, p.batch, (p.K, p.N))
        # a scalar factor is the product's alpha, not a pass of its own over the result
        self.out.stmts.append(Dot(name, tuple(order), an, ai, bn, bi, tuple(p.batch), p.M, p.N, p.K,
                                  alpha=sp.sympify(p.coeff)))

    def direct_dot(self, target, idx, expr):
        """If expr (after lowering) has a term that is a contraction temp read at idx, compute that
        contraction into the target instead; returns what is left to do in place (target[idx] +
        the other terms), or None when nothing is."""
        if not idx:
            return expr
        terms = sp.Add.make_args(expr)
        temps = {t.name for t in self.out.temps}
        cands = []
        for t in terms:
            ixs = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Indexed)]
            if len(ixs) == 1 and str(ixs[0].base.label) in temps and not self.ivars(t / ixs[0]) \
                    and self._writes_at(str(ixs[0].base.label), ixs[0].indices, idx):
                cands.append(ixs[0])
        for t in cands:
            ref = sp.IndexedBase(target, real=True)[tuple(idx)]
            rest = expr.xreplace({t: ref})
            scale = sp.simplify(rest / ref) if len(terms) == 1 else None  # expr = scale * product
            if scale is not None and scale != 1 and self._retarget(str(t.base.label), target, False, idx):
                dot = next(st for st in self.out.stmts if isinstance(st, Dot) and st.out == target)
                dot.alpha = dot.alpha * scale  # S = sum_c(q k)/sqrt(D): alpha, not a pass over S
                return None
            if self._retarget(str(t.base.label), target, rest == ref, idx):
                return None if rest == ref else rest
        return expr

    def _writes_at(self, name, read, idx):
        """Can the product computing temp `name`, read at `read`, write straight into a target
        at `idx`: the same indices, in the same order or (each of its groups a single index)
        with its batch indices anywhere (y[b, i, h, c] = sum_j P[b, h, i, j] v[b, j, h, c]: a
        head's rows of y, no copy)."""
        if tuple(read) == tuple(idx):
            return True
        if set(read) != set(idx) or len(set(idx)) != len(idx):
            return False
        dots = [st for st in self.out.stmts if isinstance(st, Dot) and st.out == name]
        if len(dots) != 1 or tuple(dots[0].out_idx) != tuple(read):
            return False
        st = dots[0]
        return layout_ok(tuple(idx), st.batch, (st.M, st.N))

    def _retarget(self, name, target, keep_key, idx):
        """Make the one product computing temp `name` write `target` at `idx` instead."""
        stmts = [st for st in self.out.stmts if isinstance(st, Dot) and st.out == name]
        if len(stmts) != 1 or name not in {t.name for t in self.out.temps}:
            return False
        if sum(1 for st in self.out.stmts if reads(st, name)) > 0:
            return False
        moved = tuple(stmts[0].out_idx) != tuple(idx)
        if moved and any(isinstance(st, Nest) and st.target == name for st in self.out.stmts):
            return False  # a loop also writes the temp, in its own order of indices
        # retarget: the dot writes the kernel's own output (in the output's order of indices)
        for st in self.out.stmts:
            if isinstance(st, Dot) and st.out == name:
                st.out, st.out_idx = target, tuple(idx)
            if isinstance(st, Nest) and st.target == name:
                st.target = target
                st.expr = st.expr.xreplace({sp.IndexedBase(name, real=True): sp.IndexedBase(target, real=True)})
        self.out.temps = [t for t in self.out.temps if t.name != name]
        for k, v in list(self.temp_keys.items()):
            if v[0] == name:
                if keep_key:
                    self.temp_keys[k] = (target, v[1])
                else:
                    del self.temp_keys[k]
        return True


__all__ = ["Lowerer"]
