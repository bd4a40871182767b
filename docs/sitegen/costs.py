"""FLOPs and memory traffic of a derived expression, counted from the SymPy expression itself.

The model (stated on every layer page):

- Each distinct subexpression is computed once per point of the loops it depends on (what a
  kernel with common-subexpression elimination and loop-invariant hoisting does). A node inside
  `Sum_k` that does not read `k` is not multiplied by k's extent; a triangular range such as
  `Sum_{k=0}^{i}` is counted exactly (summed over i), not as a full square.
- Operation counts per evaluation: `a+b+c` is 2 adds, `a*b*c` 2 multiplies, a factor `1/b` inside
  a product is one division, a negation `-x` is free, `x**k` for an integer k >= 2 is k-1
  multiplies, `x**-k` adds one division, any other power (sqrt, rsqrt) and every function call
  (exp, log, tanh, an Iverson bracket) is 1, `Sum` over an extent E is E-1 adds, `max` over an
  extent E is E-1 comparisons.
- Memory is compulsory traffic: every tensor the expression reads is read once, every result
  written once (a fused kernel with perfect cache reuse). Scalars (constants such as eps) are
  not counted.

Counts are exact symbolic polynomials in the layer's dims; `EXAMPLE_DIMS` gives the example shape
the pages report them at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

# The example shape of the reference workload (nanoGPT "baby shakespeare"): batch 12 x block 64
# rows, 128 channels, 4 heads. A dim not named here is taken as DEFAULT_DIM.
EXAMPLE_DIMS = {
    "N": 12 * 64,  # rows: batch_size * block_size
    "B": 12,       # batch_size
    "T": 64,       # block_size (sequence length)
    "H": 4,        # heads
    "D": 32,       # head size (n_embd / n_head)
    "hs": 32,
    "C": 128,      # channels (n_embd)
    "n": 128,
    "I": 128,
    "O": 128,
    "F": 512,      # MLP hidden width (4 * n_embd)
    "V": 65,       # tinyshakespeare's character vocabulary
}
DEFAULT_DIM = 128
ITEMSIZE = {"float32": 4, "float64": 8}


def example_dims(dims) -> dict:
    """{dim symbol: example value} for the dims of a layer (by name, DEFAULT_DIM otherwise)."""
    return {d: EXAMPLE_DIMS.get(str(d), DEFAULT_DIM) for d in dims}


def _is_neg_one(a) -> bool:
    return a == sp.S.NegativeOne


def _is_reciprocal(a) -> bool:
    return isinstance(a, sp.Pow) and a.exp == -1


def _local_ops(node, parent) -> sp.Expr:
    """Operations performed at `node` itself (its children are counted separately)."""
    from symgrad.derive.functions import MaxOver

    if isinstance(node, sp.Add):
        return sp.Integer(len(node.args) - 1)
    if isinstance(node, sp.Mul):
        factors = [a for a in node.args if not _is_neg_one(a)]
        return sp.Integer(max(len(factors) - 1, 0))
    if isinstance(node, sp.Pow):
        e = node.exp
        if e == -1:
            # b**-1 as a factor of a product is that product's division, counted there
            return sp.Integer(0 if isinstance(parent, sp.Mul) and len(parent.args) > 1 else 1)
        if e.is_Integer and e >= 2:
            return sp.Integer(int(e) - 1)
        if e.is_Integer and e <= -2:
            return sp.Integer(-int(e) - 1 + (0 if isinstance(parent, sp.Mul) else 1))
        return sp.Integer(1)
    if isinstance(node, sp.Sum):
        ops = sp.Integer(0)
        for _, lo, hi in node.limits:
            ops = ops + (hi - lo + 1)
        return ops - len(node.limits)
    if isinstance(node, MaxOver):
        _, _, lo, hi = node.args
        return hi - lo
    if isinstance(node, (sp.Indexed, sp.IndexedBase, sp.Idx, sp.Symbol, sp.Number, sp.Tuple,
                         sp.logic.boolalg.BooleanAtom)):
        return sp.Integer(0)
    if isinstance(node, sp.core.relational.Relational):
        return sp.Integer(1)
    if isinstance(node, sp.Function) or isinstance(node, sp.Piecewise):
        return sp.Integer(1)
    return sp.Integer(0)


def _children(node):
    """(child, loops the child runs inside) for each operand of node."""
    from symgrad.derive.functions import MaxOver

    if isinstance(node, sp.Sum):
        return [(node.function, tuple(tuple(l) for l in node.limits))]
    if isinstance(node, MaxOver):
        expr, var, lo, hi = node.args
        return [(expr, ((var, lo, hi),))]
    if isinstance(node, (sp.Indexed, sp.IndexedBase, sp.Symbol, sp.Number)):
        return []
    return [(a, ()) for a in node.args]


def _domain(loops, node_free) -> tuple:
    """The loops a node's value actually varies over: those whose variable it reads, plus (closed
    under) the loops that their limits depend on."""
    keep = [False] * len(loops)
    need = set(node_free)
    changed = True
    while changed:
        changed = False
        for n, (v, lo, hi) in enumerate(loops):
            if not keep[n] and v in need:
                keep[n] = True
                need |= (lo.free_symbols | hi.free_symbols)
                changed = True
    return tuple(l for l, k in zip(loops, keep) if k)


def _over(ops, domain) -> sp.Expr:
    """ops (which may depend on the loop variables, e.g. a triangular Sum) summed over domain."""
    if not domain:
        return ops
    return sp.expand(sp.Sum(ops, *reversed(domain)).doit())


def flop_count(expr, loops) -> sp.Expr:
    """FLOPs to evaluate `expr` at every point of `loops` ((var, lo, hi), outermost first).

    A symbolic polynomial in the dims (see the module docstring for the counting model)."""
    loops = tuple((v, sp.sympify(lo), sp.sympify(hi)) for v, lo, hi in loops)
    seen = set()
    total = sp.Integer(0)
    loop_vars = {l[0] for l in loops}
    stack = [(sp.sympify(expr), None, tuple(loops))]
    while stack:
        node, parent, ctx = stack.pop()
        ctx_vars = {l[0] for l in ctx}
        domain = _domain(ctx, node.free_symbols & (ctx_vars | loop_vars))
        key = (node, domain)
        if key in seen:
            continue
        seen.add(key)
        ops = _local_ops(node, parent)
        if ops != 0:
            total += _over(ops, domain)
        for child, inner in _children(node):
            stack.append((child, node, ctx + inner))
    return sp.expand(total)


def reads(expr) -> list[str]:
    """Names of the tensors an expression reads (indexed bases), in sorted order."""
    return sorted({str(ix.base.label) for ix in sp.sympify(expr).atoms(sp.Indexed)})


def elements(shape) -> sp.Expr:
    out = sp.Integer(1)
    for s in shape:
        out *= sp.sympify(s)
    return out


@dataclass
class Cost:
    """Cost of one pass (forward or backward) of a layer, symbolic and at the example shape."""

    flops: sp.Expr
    read: dict = field(default_factory=dict)      # tensor name -> element count (symbolic)
    written: dict = field(default_factory=dict)   # tensor name -> element count (symbolic)
    per_output: dict = field(default_factory=dict)  # result name -> FLOPs (symbolic)

    def at(self, dims: dict) -> dict:
        """Numbers at a shape: flops, elements read/written."""
        def n(e):
            return int(sp.sympify(e).subs(dims))
        return {"flops": n(self.flops),
                "read": {k: n(v) for k, v in self.read.items()},
                "written": {k: n(v) for k, v in self.written.items()},
                "per_output": {k: n(v) for k, v in self.per_output.items()}}

    def bytes_at(self, dims: dict, dtype: str = "float32") -> tuple[int, int]:
        num = self.at(dims)
        size = ITEMSIZE[dtype]
        return sum(num["read"].values()) * size, sum(num["written"].values()) * size


def _shape_of(d, name):
    """Shape of a tensor a derivation's expressions read: an argument, a binding or an upstream."""
    for o in d.outputs:
        if d.upstream(o.name) == name:
            return o.shape
    try:
        return d.graph.tensor(name).shape
    except KeyError:
        raise KeyError(f"{d.name}: an expression reads '{name}', which is neither an argument, "
                       f"a binding nor an upstream gradient of the layer") from None


def backward_cost(d) -> Cost:
    """FLOPs and traffic of the whole backward pass: every differentiable argument's VJP."""
    flops = sp.Integer(0)
    read, written, per = {}, {}, {}
    for arg, expr in d.grads.items():
        t = d.graph.tensor(arg)
        idx = d.grad_indices[arg]
        loops = tuple((i, sp.Integer(0), ext - 1) for i, ext in zip(idx, t.shape))
        f = flop_count(expr, loops)
        per[d.grad_name(arg)] = f
        flops += f
        for name in reads(expr):
            read[name] = elements(_shape_of(d, name))
        written[d.grad_name(arg)] = elements(t.shape)
    return Cost(sp.expand(flops), read, written, per)


def forward_cost(d) -> Cost:
    """FLOPs and traffic of the forward pass: every binding, reading the arguments, writing the
    bindings the backward pass saves (outputs included)."""
    flops = sp.Integer(0)
    per = {}
    bound = {b.name for b in d.graph.bindings}
    read = {}
    for b in d.graph.bindings:
        loops = tuple((i, sp.Integer(0), d.graph.extents[i] - 1) for i in b.indices)
        f = flop_count(b.expr, loops)
        per[b.name] = f
        flops += f
        for name in reads(b.expr):
            if name not in bound:
                read[name] = elements(d.graph.tensor(name).shape)
    written = {t.name: elements(t.shape) for t in d.saved}
    return Cost(sp.expand(flops), read, written, per)
