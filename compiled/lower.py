"""Lowering: index equations (`T[i,j] = expr`) -> kernel statements the writer prints.

A kernel is a list of equations. Each is lowered to

* `Dot`: a two-factor contraction that is a (batched) matrix product, sent to BLAS through
  `np.dot` on 2-D slices (batch indices looped over, grouped index sets reshaped);
* `Nest`: a loop nest that writes (or accumulates into) one array element per iteration. Its
  reductions (`Sum`, `MaxOver`) are laid out by the writer as accumulators, each hoisted to the
  loop depth where its free indices are bound (llm.c style: a per-row sum is computed once per
  row);
* temporaries (`Temp`) for a contraction whose result is read elementwise, for one operand
  group of a contraction that is not a plain array read (attention's dS = P*(dP - rowsum)), and
  for a reduction shared by several equations of one kernel. Identical temporaries are
  computed once per kernel (keyed by a canonical form, blind to index names).

Special forms:

* `Sum_n body * delta(ids[n], p)` (embedding's gradient) is a scatter-add: a loop over n that
  accumulates into row ids[n], not an O(V*N*C) loop with a test;
* `out[j] = Sum_n body` whose arrays keep n on an earlier axis than j (bias and layernorm
  parameter gradients) accumulates with n as the outer loop, reading rows contiguously.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from symgrad.derive.functions import REDUCTIONS, Iverson, MaxOver, limits_of, rename_bound


@dataclass
class Nest:
    """for order...: target[write] (=|+=) expr."""

    target: str
    write: tuple
    order: list  # [(var, lo, hi)]
    expr: sp.Expr
    accumulate: bool = False
    note: str = ""


@dataclass
class Dot:
    """out[batch, M, N] = sum_K a[...] b[...] through np.dot per batch element."""

    out: str
    out_idx: tuple
    a: str
    a_idx: tuple
    b: str
    b_idx: tuple
    batch: tuple
    M: tuple
    N: tuple
    K: tuple
    note: str = ""
    alpha: sp.Expr = sp.Integer(1)  # out = alpha * a @ b: a scalar factor of the sum (1/sqrt(D))


@dataclass(frozen=True)
class Product:
    """A sum that is a (batched) matrix product: coeff * sum_K A[batch, M, K] B[batch, K, N].

    `match` gives batch, M and N as sets (which indices, unordered); `plan` gives every group as
    a tuple, in the order the product's loops and reshapes take them."""

    coeff: sp.Expr  # the scalar factors (no index): the product's alpha
    A: sp.Expr  # the factors of the left operand
    B: sp.Expr  # the factors of the right operand
    batch: tuple | set  # indices both operands and the result carry (looped over)
    M: tuple | set  # the result's rows: A's free indices
    N: tuple | set  # the result's columns: B's free indices
    K: tuple  # the summed indices


@dataclass
class Temp:
    name: str
    shape: tuple  # extent expressions in the dims


@dataclass
class Lowered:
    temps: list = field(default_factory=list)
    stmts: list = field(default_factory=list)


def reductions(expr):
    """Outermost Sum / MaxOver nodes of expr (not those nested inside another)."""
    out = []

    def walk(e):
        if isinstance(e, REDUCTIONS):
            out.append(e)
            return
        if isinstance(e, (sp.Indexed, sp.IndexedBase)):
            return
        for a in e.args:
            walk(a)

    walk(expr)
    return out


class Lowerer:
    """Lowers the equations of one kernel; `extents` maps every free index symbol to its extent."""

    def __init__(self, extents: dict, arrays: dict, blas: bool = True):
        self.extents = dict(extents)
        self.arrays = arrays  # name -> symbolic shape of every array the kernel can read (args, saved, upstream)
        self.blas = blas
        self.out = Lowered()
        self.temp_keys = {}  # canonical key -> (temp name, order)
        self.counter = itertools.count()
        self.tmpvars = itertools.count()

    # --- index bookkeeping -----------------------------------------------------------------
    def is_index(self, s):
        return s in self.extents

    def ivars(self, expr):
        """Free index symbols of expr."""
        return {s for s in expr.free_symbols if s in self.extents}

    def add_limits(self, r):
        for v, lo, hi in limits_of(r):
            if v not in self.extents:
                self.extents[v] = hi - lo + 1 if lo == 0 or not (lo.free_symbols & set(self.extents)) \
                    else None

    def const_extent(self, v):
        e = self.extents.get(v)
        return e is not None and not (sp.sympify(e).free_symbols & set(self.extents))

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
        e = _canon_bound(expr.xreplace(sub))
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
        scat = self.scatter(target, idx, expr)
        if scat:
            return
        if self.swapped(target, idx, expr):
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
            bound = _affine_bound(guard, v) if isinstance(guard, Iverson) else None
            if bound is None or not bound[1].free_symbols & set(self.extents) <= set(before):
                continue
            upper, f = bound
            top, bottom = _affine_range(f, before)
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
                if len(pairs) == 1 or all(self.plan(p) is not None for _, p in pairs):
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
            return sp.Add(*parts) if all(self.plan(p) is not None for p in parts) else None

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

    def match(self, s):
        """Split Sum s into coeff * A * B, a batched matrix product; or None."""
        lims = limits_of(s)
        K = tuple(v for v, lo, hi in lims)
        for v, lo, hi in lims:
            if lo != 0 or not self.const_extent(v):
                return None
        coeff, factors = [], []
        for f in sp.Mul.make_args(s.function):
            (factors if self.ivars(f) else coeff).append(f)
        if len(factors) < 2 or len(factors) > 6:
            return None
        free = self.ivars(s) - set(K)
        if not all(self.const_extent(v) for v in free):
            return None
        if any(f.has(MaxOver) for f in factors):
            return None
        if any(isinstance(f, sp.KroneckerDelta) and f.atoms(sp.Indexed) for f in factors):
            return None  # delta(ids[n], p): a scatter-add, not a product with a one-hot matrix
        sets = [self.ivars(f) for f in factors]
        best = None
        for mask in range(2 ** (len(factors) - 1)):
            A = [factors[0]] + [f for n, f in enumerate(factors[1:]) if (mask >> n) & 1]
            B = [f for n, f in enumerate(factors[1:]) if not (mask >> n) & 1]
            if not B:
                continue
            av = set().union(*[sets[factors.index(f)] for f in A])
            bv = set().union(*[sets[factors.index(f)] for f in B])
            if not set(K) <= (av & bv):
                continue
            M, N = av - bv, bv - av
            if not M or not N:
                continue
            batch = (av & bv) - set(K)
            best = (A, B, batch, M, N)
            break
        if best is None:
            return None
        A, B, batch, M, N = best
        return Product(sp.Mul(*coeff), sp.Mul(*A), sp.Mul(*B), batch, M, N, K)

    def operand(self, f, batch, inner):
        """A plain array read usable as a BLAS operand, else a temporary; returns (name, idx)."""
        want = set(batch) | set(inner[0]) | set(inner[1])
        if isinstance(f, sp.Indexed) and all(isinstance(i, sp.Symbol) for i in f.indices) \
                and len(set(f.indices)) == len(f.indices) and set(f.indices) == want \
                and self.full_axes(f) and self.layout_ok(f.indices, batch, inner):
            return str(f.base.label), tuple(f.indices)
        order = natural_order(f, want, batch, inner)
        ref, _ = self.temp(f, order, "op")
        return str(ref.base.label), tuple(order)

    def full_axes(self, f):
        """Every index of the read runs over its whole axis (W[k,q,u] with k < I of an (H+I)-row
        W is a block, not the array: it is copied into a temporary instead)."""
        shape = self.arrays.get(str(f.base.label))
        if shape is None or len(shape) != len(f.indices):
            return False
        return all(sp.simplify(sp.sympify(self.extents[i]) - sp.sympify(s)) == 0
                   for i, s in zip(f.indices, shape))

    @staticmethod
    def layout_ok(idx, batch, groups):
        """idx = batch (in order) + one group + the other, each group contiguous; or, each group
        a single index, the batch indices anywhere: per batch element a strided 2-D slice (a
        head's rows q[b, :, h, :] of a (B, T, H, D) array, compiled/blas.py takes its row
        stride), no copy."""
        nb = len(batch)
        g0, g1 = tuple(groups[0]), tuple(groups[1])
        if tuple(idx[:nb]) == tuple(batch):
            # each group in the order of the product's own (the writer reshapes the two groups to
            # a matrix: a group stored in another order would be read as a different matrix)
            return tuple(idx[nb:]) in (g0 + g1, g1 + g0)
        rest = tuple(i for i in idx if i not in set(batch))
        return nb > 0 and len(g0) == len(g1) == 1 and rest in (g0 + g1, g1 + g0)

    def plan(self, s):
        """The product Sum s is (`match`), each group ordered: A the operand whose group leads the
        equation's own indices, the batch in the order a plain read keeps it; or None."""
        m = self.match(s)
        if m is None:
            return None
        A, B, batch, M, N = m.A, m.B, m.batch, m.M, m.N
        hint = [v for v in getattr(self, "hint", ()) if v in (batch | M | N)]
        if len(hint) == len(batch | M | N):
            rest = [v for v in hint if v not in batch]
            if rest and rest[0] in N:
                A, B, M, N = B, A, N, M
        # batch order from the first plain read that has them all
        border = None
        for ix in sorted(s.atoms(sp.Indexed), key=lambda x: -len(x.indices)):
            seq = [i for i in ix.indices if i in batch]
            if len(seq) == len(batch) and all(isinstance(i, sp.Symbol) for i in ix.indices):
                border = tuple(seq)
                break
        if border is None:
            border = tuple(sorted(batch, key=str))
        return Product(m.coeff, A, B, border, _ordered(A, M), _ordered(B, N), _ordered(A, m.K))

    def contraction_temp(self, s):
        plan = self.plan(s)
        if plan is None:
            return None
        order = tuple(plan.batch) + plan.M + plan.N
        key = self.canon(s, order)
        if key in self.temp_keys:
            name, _ = self.temp_keys[key]
            return sp.IndexedBase(name, real=True)[order]
        name = self.fresh("mm")
        self.temp_keys[key] = (name, order)
        self.out.temps.append(Temp(name, tuple(self.extents[v] for v in order)))
        self.arrays[name] = tuple(self.extents[v] for v in order)
        self.emit_dot(name, order, plan)
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
            reads = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Indexed)]
            if len(reads) == 1 and str(reads[0].base.label) in temps and not self.ivars(t / reads[0]) \
                    and self._writes_at(str(reads[0].base.label), reads[0].indices, idx):
                cands.append(reads[0])
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
        return self.layout_ok(tuple(idx), st.batch, (st.M, st.N))

    def _retarget(self, name, target, keep_key, idx):
        """Make the one product computing temp `name` write `target` at `idx` instead."""
        stmts = [st for st in self.out.stmts if isinstance(st, Dot) and st.out == name]
        if len(stmts) != 1 or name not in {t.name for t in self.out.temps}:
            return False
        if sum(1 for st in self.out.stmts if _reads(st, name)) > 0:
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

    # --- scatter-add -------------------------------------------------------------------------
    def scatter(self, target, idx, expr):
        if not isinstance(expr, sp.Sum) or not idx:
            return False
        deltas = [f for f in sp.Mul.make_args(expr.function) if isinstance(f, sp.KroneckerDelta)]
        K = [v for v, lo, hi in expr.limits]
        for d in deltas:
            a, b = d.args
            for p, val in ((a, b), (b, a)):
                if p in idx and not val.has(p) and (self.ivars(val) & set(K)) and \
                        not (self.ivars(val) & set(idx)):
                    body = sp.Mul(*[f for f in sp.Mul.make_args(expr.function) if f is not d])
                    body = body.xreplace({p: val})
                    for v, lo, hi in expr.limits:
                        self.extents.setdefault(v, hi - lo + 1)
                    order = [tuple(l) for l in expr.limits] + \
                            [(v, 0, self.extents[v] - 1) for v in idx if v != p]
                    write = tuple(val if v == p else v for v in idx)
                    self.out.stmts.append(Nest(target, write, order, body, accumulate=True,
                                               note="scatter-add"))
                    return True
        return False

    # --- reductions over a leading axis ------------------------------------------------------
    def merge_sums(self, expr):
        """c1*Sum(f1, lims) + c2*Sum(f2, lims') + ... -> Sum(c1*f1 + c2*f2', lims) when every term
        is a sum over the same ranges (dgamma = sum_n(g*x*rstd) - sum_n(g*mean*rstd))."""
        terms = sp.Add.make_args(expr)
        if len(terms) < 2:
            return expr
        parts = []
        for t in terms:
            sums = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Sum)]
            if len(sums) != 1:
                return expr
            c = t / sums[0]
            if self.ivars(c):
                return expr
            parts.append((c, sums[0]))
        lims0 = [tuple(l) for l in parts[0][1].limits]
        bodies = []
        for c, s in parts:
            lims = [tuple(l) for l in s.limits]
            if len(lims) != len(lims0) or any(l[1:] != l0[1:] for l, l0 in zip(lims, lims0)):
                return expr
            bodies.append(c * s.function.xreplace({l[0]: l0[0] for l, l0 in zip(lims, lims0)}))
        return sp.Sum(sp.Add(*bodies), *lims0)

    def swapped(self, target, idx, expr):
        expr = self.merge_sums(expr)
        coeff, s = sp.S.One, expr
        if isinstance(expr, sp.Mul):
            sums = [f for f in expr.args if isinstance(f, sp.Sum)]
            if len(sums) != 1 or self.ivars(expr / sums[0]):
                return False
            s, coeff = sums[0], expr / sums[0]
        if not isinstance(s, sp.Sum) or not idx:
            return False
        lims = [tuple(l) for l in s.limits]
        if any(lo != 0 or (hi.free_symbols & set(self.extents)) for v, lo, hi in lims):
            return False
        K = [v for v, lo, hi in lims]
        earlier = False
        for ix in s.function.atoms(sp.Indexed):
            pos = {i: n for n, i in enumerate(ix.indices)}
            kp = [pos[k] for k in K if k in pos]
            tp = [pos[t] for t in idx if t in pos]
            if kp and tp and min(kp) < max(tp):
                earlier = True
        if not earlier:
            return False
        for v, lo, hi in lims:
            self.extents.setdefault(v, hi - lo + 1)
        order = lims + [(v, 0, self.extents[v] - 1) for v in idx]
        body = coeff * s.function
        order = self.loop_order(order, body)
        self.out.stmts.append(Nest(target, tuple(idx), order, body, accumulate=True,
                                   note="reduction over a leading axis"))
        return True

    def loop_order(self, order, body):
        """The best order of an accumulation's loops (all over fixed ranges, so any order
        computes the same sum). Candidates: the given order, and each array read's index order
        followed by the other loops. Ranked by: fewest inner reductions recomputed under a loop
        they do not depend on (multi-head attention's dbq: a row sum over u inside the loop over
        j recomputed it T times), then most reads contiguous in the innermost loop, then most
        reads walked in row-major order."""
        by_var = {v: (v, lo, hi) for v, lo, hi in order}
        names = [v for v, _, _ in order]
        cands = [names]
        for ix in sorted(body.atoms(sp.Indexed), key=lambda x: (-len(x.indices), str(x.base.label))):
            seq = [i for i in ix.indices if i in by_var]
            seq = list(dict.fromkeys(seq))
            cand = seq + [v for v in names if v not in seq]
            if cand not in cands:
                cands.append(cand)
        reads = [[i for i in ix.indices if i in by_var] for ix in body.atoms(sp.Indexed)]
        reds = [self.ivars(r) & set(names) for r in reductions(body)]

        def rank(cand):
            pos = {v: n for n, v in enumerate(cand)}
            wasted = 0
            for free in reds:
                depth = max((pos[v] + 1 for v in free), default=0)
                wasted += depth - len(free)
            inner = sum(1 for r in reads if r and r[-1] == cand[-1])
            rowmajor = sum(1 for r in reads if r and [pos[i] for i in r] == sorted(pos[i] for i in r))
            return (wasted, -inner, -rowmajor)

        best = min(range(len(cands)), key=lambda n: (rank(cands[n]), n))
        return [by_var[v] for v in cands[best]]


def bound_sums(expr):
    """Each sum whose body is multiplied by a bracket on its own variable, affine in it,
    `sum_j [0 <= r - 2 j <= 1] f(j)`, as a sum over the range the bracket allows,
    `sum_{j = max(0, ceil((r - 1)/2))}^{min(J - 1, floor(r/2))} f(j)` (an empty range is an empty
    loop). A convolution's dx and a pooling's backward visit each input's few windows instead of
    testing every output position against it (max_pool2d's dx: every window per element).
    Brackets that relate two variables of the same sum, or are not affine with integer
    coefficients, stay as they are. Only the printed loops change; the derived expression, which
    docs and the reference evaluator read, does not."""
    def visit(e):
        if isinstance(e, (sp.Indexed, sp.IndexedBase)) or not e.args:
            return e
        new = [visit(a) for a in e.args]
        e = e.func(*new) if new != list(e.args) else e
        if not isinstance(e, sp.Sum):
            return e
        body, limits, changed = e.function, [list(l) for l in e.limits], False
        for n, lim in enumerate(limits):
            v = lim[0]
            inner = {l[0] for l in limits[:n]}
            factors = list(sp.Mul.make_args(body))
            for f in [f for f in factors if isinstance(f, Iverson)]:
                kept, bounds = [], []
                for rel in _conjuncts(f.args[0]):
                    b = _bound_of(rel, v) if v in rel.free_symbols and not rel.free_symbols & inner else None
                    (kept if b is None else bounds).append(rel if b is None else b)
                if not bounds:
                    continue
                for upper, bnd in bounds:
                    lim[2 if upper else 1] = sp.Min(lim[2], bnd) if upper else sp.Max(lim[1], bnd)
                factors[factors.index(f)] = Iverson(sp.And(*kept)) if kept else sp.Integer(1)
                changed = True
            body = sp.Mul(*factors)
        return sp.Sum(body, *map(tuple, limits)) if changed else e

    return visit(expr)


def _conjuncts(cond):
    return list(cond.args) if isinstance(cond, sp.And) else [cond]


def _bound_of(rel, v):
    """(upper?, bound): `rel`, an affine relation c v + rest (<=, <, >=, >) 0 with c an integer,
    as v <= floor(-rest / c) or v >= ceiling(rest / -c); None otherwise."""
    kind = {sp.LessThan: (1, 0), sp.StrictLessThan: (1, 1), sp.GreaterThan: (-1, 0),
            sp.StrictGreaterThan: (-1, 1)}.get(type(rel))
    if kind is None:
        return None
    sign, strict = kind
    d = sp.expand(sign * (rel.lhs - rel.rhs) + strict)  # the relation is d <= 0 (integers)
    c = d.coeff(v)
    rest = sp.expand(d - c * v)
    if not c.is_Integer or c == 0 or v in rest.free_symbols or \
            not all(t.is_integer for t in rest.free_symbols):
        return None
    return (True, sp.floor(-rest / c)) if c > 0 else (False, sp.ceiling(rest / -c))


def _affine_bound(guard, v):
    """(upper?, f) when Iverson `guard` holds exactly for v <= f (upper) or v >= f, f free of v;
    None for any other condition."""
    cond = guard.args[0]
    rel = {sp.LessThan: (1, 0), sp.StrictLessThan: (1, 1), sp.GreaterThan: (-1, 0),
           sp.StrictGreaterThan: (-1, 1)}.get(type(cond))
    if rel is None:
        return None
    sign, strict = rel
    d = sp.expand(sign * (cond.lhs - cond.rhs) + strict)  # the condition is d <= 0
    c = d.coeff(v)
    rest = sp.expand(d - c * v)
    if c not in (1, -1) or v in rest.free_symbols:
        return None
    return (True, -rest) if c == 1 else (False, rest)


def _affine_range(f, extents):
    """(max, min) of f over indices u in [0, extent_u - 1]; (None, None) unless f is affine
    with numeric coefficients in them."""
    top = bottom = f
    for u, ext in extents.items():
        c = sp.expand(f).coeff(u)
        if not c.is_Number or sp.expand(f - c * u).has(u):
            return None, None
        hi_u = sp.sympify(ext) - 1
        top = top.xreplace({u: hi_u if c > 0 else 0})
        bottom = bottom.xreplace({u: 0 if c > 0 else hi_u})
    return sp.expand(top), sp.expand(bottom)


def _reads(st, name):
    if isinstance(st, Dot):
        return st.a == name or st.b == name
    return any(str(ix.base.label) == name for ix in st.expr.atoms(sp.Indexed))


def _ordered(expr, vars_):
    """vars_ in the order they appear in expr's highest-rank plain reads."""
    seen = []
    for ix in sorted(expr.atoms(sp.Indexed), key=lambda x: (-len(x.indices), str(x.base.label))):
        for i in ix.indices:
            if i in vars_ and i not in seen:
                seen.append(i)
    for v in sorted(vars_, key=str):
        if v not in seen:
            seen.append(v)
    return tuple(seen)


def natural_order(f, want, batch, groups):
    """Index order for materializing operand f: batch first, then its groups in the order its
    reads keep them (so two kernels needing the same operand share one temporary)."""
    seq = _ordered(f, want)
    rest = [i for i in seq if i not in batch]
    first, second = (groups[0], groups[1]) if rest and rest[0] in set(groups[0]) else (groups[1], groups[0])
    # within a group, the product's own order (a convolution's x[n, c, i + kh, j + kw] names
    # (n, i, j) in no plain read: sorted by name they were (n, j, i), and read as another matrix)
    return tuple(batch) + tuple(first) + tuple(second)


def _canon_bound(expr):
    """Rename bound indices to _b0, _b1, ... in traversal order."""
    counter = itertools.count()
    return rename_bound(expr, lambda v, lo, hi, st: (sp.Symbol(f"_b{next(counter)}", integer=True), st))


__all__ = ["Nest", "Dot", "Temp", "Lowered", "Lowerer", "reductions", "Iverson"]
