"""KernelWriter: lowered statements -> the source of one `@njit` function.

Loop nests run over the index symbols (named as in the math); each reduction becomes an
accumulator initialised and filled at the loop depth where its free indices are all bound, so
softmax's `sum_k g[i,k]*s[i,k]` is computed once per row, before the loop over j. Consecutive
nests over the same leading index whose reads stay within that row are fused under one loop
(softmax's m, e, z, s: one pass per row). `sympy.cse` runs per element expression.
"""

from __future__ import annotations

import itertools

import sympy as sp

from .lower import Dot, Nest, red_body, red_limits, reductions, _canon_bound
from .printer import print_index, print_value
from derive.functions import MaxOver


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


class KernelWriter:
    """Prints the statements of one kernel; `names` maps symbols/labels to identifiers."""

    def __init__(self, names: dict, index_vars: set, extents: dict, calls: dict | None = None,
                 used: set | None = None):
        self.extents = extents
        self.calls = calls  # sympy function -> helper call (float32: compiled.elementary)
        self.used = used if used is not None else set()  # helpers printed
        self.names = dict(names)
        self.index_vars = set(index_vars)
        self.taken = set(self.names.values())
        self.fresh = itertools.count()

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
        root = Block()
        n = 0
        while n < len(stmts):
            st = stmts[n]
            own = Block(flat=True)  # this statement's code, hoisted accumulators included
            root.rest.append(own)
            if isinstance(st, Dot):
                self.dot(st, own)
                n += 1
                continue
            group = [st]
            while n + len(group) < len(stmts) and self.fusable(group, stmts[n + len(group)]):
                group.append(stmts[n + len(group)])
            if len(group) > 1:
                self.fused(group, own)
            else:
                self.nest(st, own)
            n += len(group)
        return root

    def fusable(self, group, st):
        first = group[0]
        if not isinstance(st, Nest) or st.accumulate or first.accumulate or not first.order \
                or not st.order or st.order[0] != first.order[0] or st.note == "scale":
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
        for r in st.expr.atoms(sp.Sum, MaxOver):
            if any(lim[0] == v for lim in red_limits(r)):
                return False
        return True

    def fused(self, group, root):
        v, lo, hi = group[0].order[0]
        body = Block()
        root.rest.append(f"for {self.name_index(v)} in {_range(lo, hi, self.names)}:")
        root.rest.append(body)
        for st in group:
            blk = Block(flat=True)
            body.rest.append(blk)
            self.nest(st, blk, outer=[(root, set()), (blk, {v})], order=st.order[1:])

    def dot(self, st: Dot, root):
        for v in st.batch:
            self.name_index(v)
        blk = root
        for v in st.batch:
            inner = Block()
            ext = sp.sympify(self.extent_of(st, v))
            blk.rest.append(f"for {self.names[v]} in {_range(0, ext - 1, self.names)}:")
            blk.rest.append(inner)
            blk = inner

        def size(group):
            return print_index(sp.Mul(*[self.extent_of(st, v) for v in group]), self.names)

        def mat(name, idx, g0, g1):
            """name[batch] as a 2-D (g0, g1) matrix (a transposed view when stored (g1, g0))."""
            base = self.names.get(name, name)
            if st.batch:
                base += "[" + ", ".join(self.names[v] for v in st.batch) + "]"
            rest = tuple(idx[len(st.batch):])
            stored = (g0, g1) if rest[:len(g0)] == tuple(g0) else (g1, g0)
            if len(rest) != 2:
                base = f"{base}.reshape({size(stored[0])}, {size(stored[1])})"
            return base if stored[0] == tuple(g0) else f"{base}.T"

        a = mat(st.a, st.a_idx, st.M, st.K)
        b = mat(st.b, st.b_idx, st.K, st.N)
        o_rest = tuple(st.out_idx[len(st.batch):])
        if o_rest[:len(st.M)] == tuple(st.M):
            o = mat(st.out, st.out_idx, st.M, st.N)
            blk.rest.append(f"np.dot({a}, {b}, {o})")
        else:
            o = mat(st.out, st.out_idx, st.N, st.M)
            blk.rest.append(f"np.dot({_t(b)}, {_t(a)}, {o})")

    def extent_of(self, st, v):
        return self.extents[v]

    def nest(self, st: Nest, root, outer=None, order=None):
        order = st.order if order is None else order
        blocks = outer or [(root, set())]
        blk, bound = blocks[-1]
        if st.accumulate:
            root.rest.append(f"{self.names.get(st.target, st.target)}[:] = F(0)")
        lhs = self.names.get(st.target, st.target)
        if st.write:
            lhs = f"{lhs}[{', '.join(print_index(i, self.names) for i in st.write)}]"
        # innermost loops that do not move the written element: sum them in a local first
        # (a += into the array would carry a memory dependence through every iteration)
        written = set().union(*[sp.sympify(i).free_symbols for i in st.write]) if st.write else set()
        n_inner = 0
        if st.accumulate:
            while n_inner < len(order) and order[len(order) - 1 - n_inner][0] not in written:
                n_inner += 1
        acc = None
        for depth, (v, lo, hi) in enumerate(order):
            if n_inner and depth == len(order) - n_inner:
                acc = self.ident("acc")
                blk.rest.append(f"{acc} = F(0)")
                outer_blk = blk
            inner = Block()
            blk.rest.append(f"for {self.name_index(v)} in {_range(lo, hi, self.names)}:")
            blk.rest.append(inner)
            bound = bound | {v}
            blocks = blocks + [(inner, bound)]
            blk = inner
        expr = self.place(st.expr, blocks, {})
        if acc is None:
            self.assign(blk, lhs, "+=" if st.accumulate else "=", expr)
        else:
            self.assign(blk, acc, "+=", expr)
            outer_blk.rest.append(f"{lhs} += {acc}")

    def assign(self, blk, lhs, op, expr):
        reps, (red,) = sp.cse(expr, symbols=(sp.Symbol(f"_cse{next(self.fresh)}") for _ in itertools.count()),
                              optimizations=None, order="none")
        for sym, val in reps:
            self.names[sym] = self.ident("t")
            blk.rest.append(f"{self.names[sym]} = {self.value(val)}")
        blk.rest.append(f"{lhs} {op} {self.value(red)}")

    def value(self, expr) -> str:
        return print_value(expr, self.names, self.calls, self.used)

    def place(self, expr, blocks, cache):
        """Hoist each reduction of expr to the shallowest block where its free indices are bound;
        returns expr with reductions replaced by their accumulators."""
        sub = {}
        chain = [id(b) for b, _ in blocks]
        for r in reductions(expr):
            key = sp.srepr(_canon_bound(r))
            hit = cache.get(key)
            if hit is not None and hit[1] in chain:
                sub[r] = hit[0]
                continue
            free = {s for s in r.free_symbols if s in self.index_vars}
            depth = next(d for d, (_, bound) in enumerate(blocks) if free <= bound)
            acc = sp.Symbol(f"_acc{next(self.fresh)}")
            self.names[acc] = self.ident(_stem(r))
            blk, bound = blocks[depth]
            code = []
            lines = Block()
            inner_blocks = blocks[:depth + 1]
            cur = lines
            for v, lo, hi in red_limits(r):
                self.name_index(v)
                nb = Block()
                cur.rest.append(f"for {self.names[v]} in {_range(lo, hi, self.names)}:")
                cur.rest.append(nb)
                bound = bound | {v}
                inner_blocks = inner_blocks + [(nb, bound)]
                cur = nb
            body = self.place(red_body(r), inner_blocks, cache)
            name = self.names[acc]
            if isinstance(r, MaxOver):
                code.append(f"{name} = F(-np.inf)")
                self.assign(cur, "_m", "=", body)
                cur.rest[-1] = cur.rest[-1].replace("_m = ", f"{name} = max({name}, ", 1) + ")"
            else:
                code.append(f"{name} = F(0)")
                self.assign(cur, name, "+=", body)
            blk.pre.extend(code + lines.rest)
            cache[key] = (acc, id(blk))
            sub[r] = acc
        return expr.xreplace(sub) if sub else expr


def _t(m):
    return m[:-2] if m.endswith(".T") else f"{m}.T"


__all__ = ["KernelWriter", "Block"]
