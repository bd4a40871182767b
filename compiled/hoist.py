"""KernelWriter's hoisting (a mixin of compiled/writer.py's KernelWriter).

What a loop does not change is computed outside it: a row value such as softmax's m[i] or
layernorm's mean[i], written in the fused row loop and read later in the same row, is a local
(a temporary read nowhere else is not allocated at all), and each part of an element
expression that depends only on outer indices (a row's rstd[i]**2, 1/C, a target id) is
computed once at the loop where those indices are bound. A store into an array can alias
every later load, so LLVM could not move those loads itself, and a loop that reloads a value
through a possibly aliased pointer does not vectorize well.
"""

from __future__ import annotations

import sympy as sp

from .block import Block
from .nest import canon_bound, reductions
from .printer import print_index
from symgrad.derive.functions import Iverson, MaxOver, body_of, limits_of


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


def _guarded(e):
    """A conditional the printer prints as `value if cond else 0`: what is inside is computed
    only when cond holds (a read behind an index test, an exp behind a causal mask), so it is
    never moved out of it."""
    return isinstance(e, (sp.Piecewise, Iverson)) or \
        (isinstance(e, sp.Mul) and any(isinstance(f, Iverson) for f in e.args))


class Hoisting:
    """What a loop does not change, computed before it: accumulators and element-expression
    parts placed at the loop where their indices are bound."""

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
                nb = self.open_loop(cur, v, lo, hi)
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
