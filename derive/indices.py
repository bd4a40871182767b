"""Index bounds: every tensor read of a definition or a derived gradient provably in range.

The kernels index arrays without bounds checks, so `y[i,j] = x[i+1, j]` with i over all N rows
would read past the end of x (or, x being a view, the next row in memory). `check_reads` proves,
for every read t[e_0, e_1, ...], that each index expression e_a stays in [0, extent_a) for every
value of the index symbols in scope, or refuses with a DeriveError naming the layer, the tensor
and the index.

What is in scope, and over which range:

- the indices of the binding (or gradient) itself: 0..extent-1, the extent being any
  expression of the dims (a convolution's i over W - K + 1);
- the variable of an enclosing Sum or MaxOver: its limits, which may name outer indices (a
  causal sum over j = 0..i);
- an Iverson bracket multiplying the read, or a Piecewise condition guarding it, narrows those
  ranges (`g[p-1] [p >= 1]`: the printed kernel tests the bracket first and never reads g[-1]).

The proof: an index expression must be affine in the index symbols (its coefficients may be
expressions of the dims). To show e >= 0, the innermost symbol v is replaced by one of its lower
bounds where its coefficient is positive (an upper bound where negative) - e can only be larger
elsewhere in v's range - and so on outwards, trying each bound a symbol has. What is left is an
expression of the dims alone; it holds for every dims >= 1 when substituting d = 1 + d' leaves a
polynomial in the d' >= 0 with no negative coefficient, possibly after subtracting one of the
facts that every range in scope is nonempty (i over W - K + 1 gives W - K >= 0: where a range is
empty, nothing is read). A convolution x[n, c, i + k], i over W - K + 1 and k over K: the upper
bound W - 1 - (i + k) becomes W - K - i with k = K - 1, then 0 with i = W - K.

A read whose index is itself a read (an embedding's table[ids[n], c]) cannot be proved here: the
compiled kernels check the integer ids at run time. Anything else that cannot be proved (i*i, an
index over the wrong range) is refused. A symbol in an index or a limit that nothing binds (a
dangling index) is refused too.
"""

from __future__ import annotations

import sympy as sp

from .errors import DeriveError
from .functions import REDUCTIONS, Iverson, body_of, limits_of


def check_reads(layer: str, where: str, expr, free: dict, shapes: dict, known: set):
    """Prove every read in expr in range, or raise a DeriveError.

    `free`: the free index symbols and their extents (they run over 0..extent-1); `shapes`:
    tensor name -> shape, for every tensor expr may read (reads of other names are left to the
    caller); `known`: names of the other symbols expr may use (dims, scalars). `where` names the
    expression in messages ("binding 'y'", "the gradient dx")."""
    scope = _Scope((), {}, {})
    for i, extent in free.items():
        scope = scope.push(i, sp.Integer(0), sp.sympify(extent) - 1)
    _Checker(layer, where, shapes, known).visit(sp.sympify(expr), scope)


class _Scope:
    """Index symbols outermost first, each with the lower and upper bounds known for it."""

    def __init__(self, order, lo, hi):
        self.order, self.lo, self.hi = order, lo, hi

    def push(self, v, lo, hi) -> "_Scope":
        return _Scope(self.order + (v,), {**self.lo, v: (lo,)}, {**self.hi, v: (hi,)})

    def narrow(self, cond) -> "_Scope":
        """The scope where cond holds: a bound for each symbol with a unit coefficient in each
        affine inequality of cond (other conditions, on values like x > 0, narrow nothing)."""
        lo, hi = dict(self.lo), dict(self.hi)
        for e in _nonneg_forms(cond):
            if e.atoms(sp.Indexed) or not e.free_symbols & set(self.order):
                continue
            for v in self.order:
                c, rest = _split(e, v)
                if c is None or not c.is_Integer or c == 0:
                    continue
                if c > 0:
                    lo[v] = lo[v] + (-rest / c,)  # c v + rest >= 0: v >= -rest/c (a stride's 2 i + k - 1 >= 0)
                else:
                    hi[v] = hi[v] + (rest / -c,)  # rest - |c| v >= 0: v <= rest/|c|
        return _Scope(self.order, lo, hi)

    def key(self):
        return (self.order, tuple(self.lo[v] for v in self.order), tuple(self.hi[v] for v in self.order))

    def facts(self) -> list:
        """hi - lo >= 0 for every range in scope that is an expression of the dims alone."""
        out = []
        for v in self.order:
            for lo in self.lo[v]:
                for hi in self.hi[v]:
                    d = sp.expand(hi - lo)
                    if not d.free_symbols & set(self.order) and d != 0:
                        out.append(d)
        return out


class _Checker:
    def __init__(self, layer, where, shapes, known):
        self.layer, self.where, self.shapes, self.known = layer, where, shapes, set(known)
        self.proved = {}  # (index, extent, scope key) -> bool

    def visit(self, e, scope):
        if isinstance(e, sp.Indexed):
            return self.read(e, scope)
        if isinstance(e, sp.Symbol):
            if e not in scope.order and e.name not in self.known:
                raise DeriveError(self.layer, f"{self.where} uses the index {e}, which no sum and no "
                                              f"index of its own binds")
            return
        if isinstance(e, REDUCTIONS):
            inner = scope
            for v, lo, hi in limits_of(e):
                self.visit(lo, inner)
                self.visit(hi, inner)
                inner = inner.push(v, lo, hi)
            return self.visit(body_of(e), inner)
        if isinstance(e, sp.Mul):
            brackets = [f for f in e.args if isinstance(f, Iverson)]
            inner = scope
            for b in brackets:
                self.visit(b.args[0], scope)
                inner = inner.narrow(b.args[0])
            for f in e.args:
                if not isinstance(f, Iverson):
                    self.visit(f, inner)
            return
        if isinstance(e, sp.Piecewise):
            for value, cond in e.args:
                self.visit(cond, scope)
                self.visit(value, scope.narrow(cond))
            return
        for a in e.args:
            if isinstance(a, sp.Basic):
                self.visit(a, scope)

    def read(self, ix, scope):
        name = str(ix.base.label)
        for i in ix.indices:
            self.visit(i, scope)
        shape = self.shapes.get(name)
        if shape is None:
            return
        for axis, (i, extent) in enumerate(zip(ix.indices, shape)):
            if i.atoms(sp.Indexed):
                continue  # a gather (table[ids[n], c]): the kernels check the ids at run time
            if not self.in_range(i, sp.sympify(extent), scope):
                ranges = ", ".join(f"{v} in {_text(scope, v)}" for v in scope.order if i.has(v))
                raise DeriveError(self.layer, f"{self.where} reads {name}[{', '.join(map(str, ix.indices))}]"
                                              f": index {i} (axis {axis}) is not provably in "
                                              f"[0, {extent})" + (f" for {ranges}" if ranges else ""))

    def in_range(self, i, extent, scope) -> bool:
        if i in scope.order and 0 in scope.lo[i] and extent - 1 in scope.hi[i]:
            return True  # a plain index over exactly the axis
        key = (i, extent, scope.key())
        if key not in self.proved:
            facts = scope.facts()
            self.proved[key] = _nonneg(i, scope, facts) and _nonneg(extent - 1 - i, scope, facts)
        return self.proved[key]


def _nonneg_forms(cond) -> list:
    """cond as expressions that are >= 0 where it holds (integer-valued sides: a < b is b-a-1 >= 0)."""
    if isinstance(cond, sp.And):
        return [f for a in cond.args for f in _nonneg_forms(a)]
    if isinstance(cond, (sp.GreaterThan, sp.StrictGreaterThan, sp.LessThan, sp.StrictLessThan)):
        big, small = (cond.lhs, cond.rhs) if isinstance(cond, (sp.GreaterThan, sp.StrictGreaterThan)) \
            else (cond.rhs, cond.lhs)
        strict = isinstance(cond, (sp.StrictGreaterThan, sp.StrictLessThan))
        return [sp.expand(big - small - (1 if strict else 0))]
    if isinstance(cond, sp.Eq):
        return [sp.expand(cond.lhs - cond.rhs), sp.expand(cond.rhs - cond.lhs)]
    return []


def _split(e, v):
    """(c, rest) with e = c*v + rest when e is affine in v, else (None, e)."""
    e = sp.expand(e)
    c = e.coeff(v)
    rest = sp.expand(e - c * v)
    if rest.has(v) or c.has(v):
        return None, e
    return c, rest


def _nonneg(e, scope, facts) -> bool:
    return _eliminate(sp.expand(e), list(scope.order), scope, facts)


def _eliminate(e, order, scope, facts) -> bool:
    """Whether e >= 0 over the scope: see the module docstring."""
    while order:
        v = order.pop()  # the innermost symbol left
        if not e.has(v):
            continue
        c, rest = _split(e, v)
        if c is None or c.free_symbols & set(scope.order) or not (c.is_integer or c.is_Rational):
            return False  # not affine in the index symbols
        sign = 1 if c.is_positive else (-1 if c.is_negative else None)
        if sign is None:
            return False
        inner = set(scope.order) - set(order)  # v and every symbol already replaced
        for bound in scope.lo[v] if sign > 0 else scope.hi[v]:
            if not bound.free_symbols & inner and _eliminate(sp.expand(rest + c * bound), list(order),
                                                             scope, facts):
                return True
        return False
    return any(_dims_nonneg(e - f) for f in [sp.Integer(0)] + facts)


def _dims_nonneg(e) -> bool:
    """Whether e, an expression of the dims (integers >= 1), is >= 0 for all of them."""
    e = _without_floors(sp.expand(e))
    if e.is_number:
        return bool(e >= 0)
    if not all(s.is_integer and s.is_positive for s in e.free_symbols):
        return False
    shifted = {s: sp.Dummy(f"{s}_1", integer=True, nonnegative=True) for s in e.free_symbols}
    p = sp.expand(e.xreplace({s: d + 1 for s, d in shifted.items()}))
    try:
        coeffs = sp.Poly(p, *shifted.values()).coeffs()
    except sp.PolynomialError:
        return False
    return all(c.is_number and c >= 0 for c in coeffs)


def _without_floors(e):
    """e with each floor(A/q) (a strided extent: (W - K)//2 + 1) replaced by a bound that makes e
    no larger: A/q where its coefficient is negative (floor(a) <= a), (A - q + 1)/q where positive
    (A an integer, q a positive integer). None of e >= 0 is lost for a floor-free e."""
    for f in sorted(e.atoms(sp.floor), key=str):
        c, rest = _split(e, f)
        if c is None or not c.is_number:
            return e  # not affine in the floor: left for the polynomial test to refuse
        a = f.args[0]
        num, den = sp.fraction(sp.together(a))
        if c < 0:
            bound = a
        elif den.is_Integer and den > 0 and all(t.is_integer for t in sp.Add.make_args(sp.expand(num))):
            bound = (num - den + 1) / den
        else:
            bound = a - 1
        e = sp.expand(rest + c * bound)
    return e


def _text(scope, v) -> str:
    lo = ", ".join(map(str, scope.lo[v]))
    hi = ", ".join(map(str, scope.hi[v]))
    return f"[{lo}..{hi}]" if len(scope.lo[v]) == len(scope.hi[v]) == 1 else f"[max({lo})..min({hi})]"


def integer_ranges(d) -> dict:
    """Integer arguments of Derivation d -> the extent (an expression of the dims) of the axis
    they index: the range their values must lie in, which nothing here can prove (see the module
    docstring); the kernels check it at run time and verify draws ids inside it."""
    out = {}
    ints = {t.name for t in d.arguments if t.integer}
    if not ints:
        return out
    g = d.graph
    for b in g.bindings:
        for ix in b.expr.atoms(sp.Indexed):
            owner = g.tensor(str(ix.base.label)) if str(ix.base.label) in {t.name for t in g.tensors()} else None
            for axis, i in enumerate(ix.indices):
                for inner in sp.sympify(i).atoms(sp.Indexed):
                    name = str(inner.base.label)
                    if name in ints and owner is not None and name not in out:
                        out[name] = owner.shape[axis]
        for rel in b.expr.atoms(sp.KroneckerDelta, sp.Eq):
            sides = rel.args[:2]
            for a, c in (sides, sides[::-1]):
                names = [str(x.base.label) for x in sp.sympify(a).atoms(sp.Indexed)
                         if str(x.base.label) in ints]
                if names and c in g.extents and names[0] not in out:
                    out[names[0]] = g.extents[c]
    return out
