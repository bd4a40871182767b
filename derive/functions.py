"""The few SymPy nodes derive/ adds to SymPy's own: an Iverson bracket and a max-reduction.

`Iverson(cond)` is 1 where `cond` holds and 0 elsewhere (causal masks, ReLU's slope, index ranges).
Its derivative is 0 almost everywhere, which is what the chain rule needs.

`MaxOver(expr, var, lo, hi)` is max over var in [lo, hi] of expr. It has no derivative: it may
appear only in a `stop_gradient` binding (the max subtracted for a stable softmax cancels).
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
    """max_{var=lo..hi} expr; only for stop-gradient bindings."""

    nargs = 4

    def fdiff(self, argindex=1):
        raise NoDerivative("MaxOver has no derivative; bind it with stop_gradient=True")

    def _eval_derivative(self, s):
        if sp.diff(self.args[0], s) != 0:
            raise NoDerivative("MaxOver has no derivative; bind it with stop_gradient=True")
        return sp.Integer(0)

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
        return "max_%s(%s)" % (printer._print(var), printer._print(expr))
