"""NumbaPrinter: one SymPy element expression -> one Python expression for a Numba kernel.

In the spirit of SymPy's printers: one class, one `_print_X` method per node type. It prints a
single *element* expression; loops, accumulators and BLAS calls are laid out by
`compiled.writer`, which hands this printer expressions whose reductions were already replaced
by accumulator symbols.

Two contexts: *value* expressions (the float math; every number is wrapped as `F(...)` so that a
float32 kernel stays float32: Numba widens float32 * int64 or float32 * 0.5 to float64) and
*index* expressions (subscripts, loop bounds, conditions on indices: plain Python ints).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import precedence
from sympy.printing.str import StrPrinter

from symgrad.derive.functions import Iverson, MaxOver

# sympy function -> the Numba-supported call that prints it (np.* keeps float32 as float32).
_CALLS = {
    sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.sinh: "np.sinh",
    sp.cosh: "np.cosh", sp.sin: "np.sin", sp.cos: "np.cos", sp.atan: "np.arctan",
    sp.Abs: "np.abs", sp.sign: "np.sign", sp.erf: "math.erf", sp.sqrt: "np.sqrt",
    # atan2(0, u): the derivative of Abs(sqrt(u)) for a real u (np.arctan2 does not vectorize, but
    # it is exact and keeps float32)
    sp.atan2: "np.arctan2",
}


class PrintError(ValueError):
    """An expression node that the kernel printer cannot print."""


class NumbaPrinter(StrPrinter):
    """Prints an element expression as Numba-compatible Python source.

    `names` maps SymPy symbols (indices, dims, scalar tensors, accumulators) and tensor labels
    (strings) to the Python identifiers the kernel uses.
    """

    printmethod = "_numbacode"

    def __init__(self, names: dict, index: bool = False, calls: dict | None = None,
                 used: set | None = None):
        super().__init__({"order": "none"})
        self.names = names
        self.index = index
        # sympy function -> call, overriding _CALLS (float32 kernels: compiled.elementary's
        # vectorizable helpers); `used` collects the overrides printed
        self.calls = calls or {}
        self.used = used if used is not None else set()

    # --- context helpers -------------------------------------------------------------------
    def _index(self, e) -> str:
        return NumbaPrinter(self.names, True, self.calls, self.used).doprint(e)

    def _value(self, e) -> str:
        return NumbaPrinter(self.names, False, self.calls, self.used).doprint(e)

    # --- atoms -----------------------------------------------------------------------------
    def _print_Symbol(self, e):
        if e in self.names:
            name = self.names[e]
        elif e.name in self.names:
            name = self.names[e.name]
        else:
            raise PrintError(f"no name for symbol {e!r} in the kernel")
        # a dim or an index used as a number: keep float32 arithmetic float32
        return f"F({name})" if e.is_integer and not self.index else name

    _print_Dummy = _print_Symbol

    def _print_Integer(self, e):
        return str(int(e)) if self.index else f"F({int(e)})"

    def _print_Rational(self, e):
        if self.index:
            raise PrintError(f"non-integer {e} used as an index")
        return f"F({float(e)!r})"

    def _print_Float(self, e):
        return f"F({float(e)!r})" if not self.index else str(int(e))

    def _print_Half(self, e):
        return self._print_Rational(e)

    def _print_One(self, e):
        return self._print_Integer(e)

    def _print_NegativeOne(self, e):
        return self._print_Integer(e)

    def _print_Zero(self, e):
        return self._print_Integer(e)

    def _print_Pi(self, e):
        return "F(np.pi)"

    def _print_Exp1(self, e):
        return "F(np.e)"

    def _print_Infinity(self, e):
        return "F(np.inf)"

    def _print_NegativeInfinity(self, e):
        return "F(-np.inf)"

    def _print_BooleanTrue(self, e):
        return "True"

    def _print_BooleanFalse(self, e):
        return "False"

    # --- tensors ---------------------------------------------------------------------------
    def _print_Indexed(self, e):
        label = str(e.base.label)
        name = self.names.get(label, label)
        return "%s[%s]" % (name, ", ".join(self._index(i) for i in e.indices))

    def _print_IndexedBase(self, e):
        return self.names.get(str(e.label), str(e.label))

    # --- arithmetic ------------------------------------------------------------------------
    def _print_Pow(self, e, rational=False):
        base, ex = e.as_base_exp()
        b = self.parenthesize(base, precedence(e), strict=False)
        if self.index:
            return f"{b}**{self._index(ex)}"
        if ex == sp.S.Half:
            return f"np.sqrt({self._print(base)})"
        if ex == -sp.S.Half:
            return f"(F(1) / np.sqrt({self._print(base)}))"
        if ex.is_Integer and 1 <= abs(int(ex)) <= 4:
            prod = "*".join([self.parenthesize(base, precedence(sp.Mul(2, sp.Symbol("z"))))] *
                            abs(int(ex)))
            if int(ex) > 0:
                return f"({prod})"
            return f"(F(1) / {prod})" if int(ex) == -1 else f"(F(1) / ({prod}))"
        return f"{b} ** {self.parenthesize(ex, precedence(e), strict=True)}"

    def _print_Mod(self, e):
        if not self.index:
            raise PrintError(f"Mod outside an index: {e}")
        return f"({self._index(e.args[0])} % {self._index(e.args[1])})"

    def _print_floor(self, e):
        a = e.args[0]
        if self.index:  # floor((W - K)/2): a strided extent, in integer division
            num, den = sp.together(a).as_numer_denom()
            return f"(({self._index(num)}) // ({self._index(den)}))"
        return f"np.floor({self._print(a)})"

    def _print_ceiling(self, e):
        if not self.index:
            raise PrintError(f"ceiling outside an index: {e}")
        num, den = sp.together(e.args[0]).as_numer_denom()  # a sum's lower bound: ceil(a/b) = -(-a // b)
        return f"(-((-({self._index(num)})) // ({self._index(den)})))"

    def _print_Function(self, e):
        if e.func in self.calls or e.func in _CALLS:
            if self.index:
                raise PrintError(f"function {e.func.__name__} used in an index")
            call = self.calls.get(e.func)
            if call is not None:
                self.used.add(call)
            else:
                call = _CALLS[e.func]
            return "%s(%s)" % (call, ", ".join(self._print(a) for a in e.args))
        raise PrintError(f"the kernel printer has no rule for {e.func.__name__}: {e}")

    def _print_Max(self, e):
        return self._minmax("max", e.args)

    def _print_Min(self, e):
        return self._minmax("min", e.args)

    def _minmax(self, fn, args):
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    def _print_Mul(self, e):
        """A product with an indicator is a conditional: the masked value is never computed
        (no exp overflow behind a causal mask turning 0 into inf*0 = NaN)."""
        brackets = [f for f in e.args if isinstance(f, Iverson)]
        if brackets and not self.index:
            rest = sp.Mul(*[f for f in e.args if not isinstance(f, Iverson)])
            cond = sp.And(*[b.args[0] for b in brackets])
            return f"({self._print(rest)} if {self._index(cond)} else F(0))"
        return super()._print_Mul(e)

    # --- indicators, conditions ------------------------------------------------------------
    def _print_Iverson(self, e):
        return f"(F(1) if {self._index(e.args[0])} else F(0))"

    def _print_KroneckerDelta(self, e):
        a, b = e.args
        return f"(F(1) if {self._index(a)} == {self._index(b)} else F(0))"

    def _print_Piecewise(self, e):
        out = None
        for val, cond in reversed(e.args):
            v = self._print(val)
            out = v if out is None else f"({v} if {self._index(cond)} else {out})"
        return out

    def _print_Relational(self, e):
        return "(%s %s %s)" % (self._index(e.lhs), e.rel_op, self._index(e.rhs))

    def _print_And(self, e):
        return "(" + " and ".join(self._index(a) for a in e.args) + ")"

    def _print_Or(self, e):
        return "(" + " or ".join(self._index(a) for a in e.args) + ")"

    def _print_Not(self, e):
        return f"(not {self._index(e.args[0])})"

    # --- reductions must have been laid out as loops -----------------------------------------
    def _print_Sum(self, e):
        raise PrintError(f"unlowered Sum reached the element printer: {e}")

    def _print_MaxOver(self, e):
        raise PrintError(f"unlowered max reached the element printer: {e}")

    def emptyPrinter(self, e):
        raise PrintError(f"the kernel printer has no rule for {type(e).__name__}: {e}")


def _no_rule(self, e, *args, **kwargs):
    return self.emptyPrinter(e)  # a PrintError


# StrPrinter prints many nodes as SymPy text (Heaviside, Derivative, Integral, nan, I), which is
# Python only in looks: a NameError at the kernel's first call. Of its rules the kernel printer
# keeps Add alone; every other node needs a rule of its own above, or is a PrintError.
for _rule in dir(StrPrinter):
    if _rule.startswith("_print_") and _rule not in vars(NumbaPrinter) and _rule != "_print_Add":
        setattr(NumbaPrinter, _rule, _no_rule)


def no_rule(expr) -> list:
    """The functions in expr that the printer has no rule for (erfinv: Numba has none), so
    that a kernel is refused before its source is printed, naming what it cannot compute."""
    out = []
    for f in sp.preorder_traversal(expr):
        if not isinstance(f, sp.Function):
            continue
        rule = next(getattr(NumbaPrinter, m) for m in
                    (f"_print_{c.__name__}" for c in type(f).__mro__) if hasattr(NumbaPrinter, m))
        if rule is _no_rule or (rule is NumbaPrinter._print_Function and f.func not in _CALLS):
            out.append(f)
    return out


def print_value(expr, names, calls=None, used=None) -> str:
    return NumbaPrinter(names, calls=calls, used=used).doprint(expr)


def print_index(expr, names) -> str:
    return NumbaPrinter(names, index=True).doprint(expr)


__all__ = ["NumbaPrinter", "PrintError", "no_rule", "print_value", "print_index", "Iverson", "MaxOver"]
