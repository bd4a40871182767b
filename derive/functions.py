"""The few SymPy nodes derive/ adds to SymPy's own: an Iverson bracket and a max-reduction.

`Iverson(cond)` is 1 where `cond` holds and 0 elsewhere (causal masks, ReLU's slope, index ranges).
Its derivative is 0 almost everywhere, which is what the chain rule needs.

`MaxOver(expr, var, lo, hi)` is max over var in [lo, hi] of expr (-inf over an empty range). Its
derivative routes the gradient to one arg-max, the first in scan order (what PyTorch's max_pool2d
and torch.max do with ties):

    d/ds max_k f(k) = Sum_k [f(k) >= M and max_{k' < k} f(k') < M] * df(k)/ds,   M = max_k f(k)

so exactly one k (the first maximal one) takes the gradient. Nested maxes (a 2-D pooling window,
kh outer, kw inner) compose to the first maximal element in row-major order: the first row that
holds the maximum, and in it the first column. Where the max only stabilises a sum that it
cancels from (softmax), bind it with `stop_gradient` and no derivative is taken.

A reduction is a `Sum` or a `MaxOver`; everything that walks one (renaming its bound indices,
checking its ranges, evaluating it, printing it as loops) reads it through `body_of`,
`limits_of` and `remake`, and renames its bound indices with `rename_bound`, the one walk.
"""

import sympy as sp


class Iverson(sp.Function):
    """[cond]: 1 if cond else 0."""

    nargs = 1

    @classmethod
    def eval(cls, cond):
        if cond is sp.true:
            return sp.Integer(1)
        if cond is sp.false:
            return sp.Integer(0)
        return None

    def fdiff(self, argindex=1):
        return sp.Integer(0)

    def _eval_derivative(self, s):
        return sp.Integer(0)

    def _eval_power(self, exponent):
        if exponent.is_positive:
            return self  # [c]^n = [c]
        return None

    def _latex(self, printer):
        return r"\left[%s\right]" % printer._print(self.args[0])

    def _sympystr(self, printer):
        return "[%s]" % printer._print(self.args[0])


class NoDerivative(Exception):
    """Raised when the chain rule meets a construct that has no derivative defined."""


class MaxOver(sp.Function):
    """max_{var=lo..hi} expr; its derivative goes to the first arg-max (see the module docstring)."""

    nargs = 4

    def fdiff(self, argindex=1):
        raise NoDerivative("MaxOver is differentiated by its own rule (first_argmax), not by argument")

    def _eval_derivative(self, s):
        expr, var, lo, hi = self.args
        inner = sp.diff(expr, s)
        if inner == 0:
            return sp.Integer(0)
        k = sp.Dummy(str(var).lstrip("_"), integer=True)
        return sp.Sum(self.first_argmax(k) * inner.xreplace({var: k}), (k, lo, hi))

    def first_argmax(self, k):
        """[k is the first arg-max]: f(k) reaches the max, and nothing before k does."""
        expr, var, lo, hi = self.args
        before = sp.Dummy(str(var).lstrip("_"), integer=True)
        earlier = MaxOver(expr.xreplace({var: before}), before, lo, k - 1)
        return Iverson(sp.And(expr.xreplace({var: k}) >= self, earlier < self))

    @property
    def free_symbols(self):
        expr, var, lo, hi = self.args
        return (expr.free_symbols - {var}) | lo.free_symbols | hi.free_symbols

    def _latex(self, printer):
        expr, var, lo, hi = self.args
        return r"\max_{%s=%s}^{%s} %s" % (printer._print(var), printer._print(lo), printer._print(hi),
                                          printer._print(expr))

    def _sympystr(self, printer):
        expr, var, lo, hi = self.args
        if _reads_an_index(lo) or _reads_an_index(hi):  # a range of its own (the taps before k)
            return "max_{%s=%s..%s}(%s)" % (printer._print(var), printer._print(lo), printer._print(hi),
                                            printer._print(expr))
        return "max_%s(%s)" % (printer._print(var), printer._print(expr))


def _reads_an_index(e) -> bool:
    """Whether a limit depends on an index (an integer symbol not known positive, unlike a dim)."""
    return any(s.is_integer and not s.is_positive for s in sp.sympify(e).free_symbols)


REDUCTIONS = (sp.Sum, MaxOver)


def body_of(r):
    """The expression a Sum or MaxOver reduces."""
    return r.function if isinstance(r, sp.Sum) else r.args[0]


def limits_of(r) -> list:
    """[(var, lo, hi), ...] of a Sum, outermost first; [(var, lo, hi)] of a MaxOver."""
    return [tuple(lim) for lim in r.limits] if isinstance(r, sp.Sum) else [tuple(r.args[1:])]


def remake(r, body, limits):
    """A reduction of r's kind over `limits` of `body`."""
    if isinstance(r, sp.Sum):
        return sp.Sum(body, *limits)
    (var, lo, hi), = limits
    return MaxOver(body, var, lo, hi)


def rename_bound(expr, rename, state=None):
    """expr with every bound index of its reductions renamed, outermost first: rename(var, lo, hi,
    state) -> (new symbol, state seen inside it). `state` goes down into a reduction, not across to
    its siblings (so sibling sums may reuse a readable name); a renaming that must be unique
    everywhere keeps its own counter instead."""
    if isinstance(expr, REDUCTIONS):
        body, limits = body_of(expr), []
        for v, lo, hi in limits_of(expr):
            nv, state = rename(v, lo, hi, state)
            body = body.xreplace({v: nv})
            limits.append((nv, lo, hi))
        return remake(expr, rename_bound(body, rename, state), limits)
    if expr.args and not isinstance(expr, (sp.Indexed, sp.IndexedBase)):
        return expr.func(*[rename_bound(a, rename, state) for a in expr.args])
    return expr
