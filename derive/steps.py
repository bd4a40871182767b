"""A derivation step as data, and the two ways it is printed: plain text and LaTeX.

Docs, the CLI and `--format json` all print from these records, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.printing.latex import LatexPrinter, greek_letters_set
from sympy.printing.str import StrPrinter

KINDS = ("definition", "partial", "chain", "inlined", "simplified")  # a Derivation's steps
# (a Derivation's `program` is printed with the kind "program")


class TextPrinter(StrPrinter):
    """Index notation for a terminal: x[i,j], sum_k(...), delta(i,p)."""

    def _print_Indexed(self, e):
        return "%s[%s]" % (self._print(e.base.label), ",".join(self._print(i) for i in e.indices))

    def _print_Sum(self, e):
        vars_ = ",".join(self._print(lim[0]) for lim in e.limits)
        ranges = [lim for lim in e.limits if not (lim[1] == 0)]
        body = self._print(e.function)
        cond = "".join(f" for {self._print(v)}={self._print(lo)}..{self._print(hi)}" for v, lo, hi in ranges)
        return f"sum_{vars_}({body}{cond})"

    def _print_KroneckerDelta(self, e):
        return "delta(%s,%s)" % (self._print(e.args[0]), self._print(e.args[1]))

    def _print_Dummy(self, e):
        return e.name

    def _print_Derivative(self, e):
        return "d%s/d%s" % (self._print(e.expr), self._print(e.variables[0]))


def tex_name(name: str) -> str:
    """x -> x, rstd -> \\mathit{rstd}, g_x -> g_{x}, m_new -> m_{\\mathrm{new}}: a tensor name as one
    TeX atom, so that an index subscript can follow it."""
    head, _, tail = name.partition("_")
    if head in greek_letters_set:
        head = "\\" + head
    elif len(head) > 1:
        head = r"\mathit{%s}" % head
    if not tail:
        return head
    return "%s_{%s}" % (head, tail if len(tail) == 1 else r"\mathrm{%s}" % tail.replace("_", r"\_"))


class TexPrinter(LatexPrinter):
    def _print_Indexed(self, e):
        return "{%s}_{%s}" % (tex_name(str(e.base.label)), ",".join(self._print(i) for i in e.indices))

    def _print_Symbol(self, e, style="plain"):
        if len(e.name) > 1 and e.name.isidentifier() and not e.name[-1].isdigit():
            return "{%s}" % tex_name(e.name)
        return super()._print_Symbol(e)

    def _print_Dummy(self, e):
        return e.name

    def _print_Derivative(self, e):
        return r"\frac{\partial %s}{\partial %s}" % (self._print(e.expr), self._print(e.variables[0]))


def text(expr) -> str:
    return TextPrinter({"order": "none"}).doprint(expr)


def latex(expr) -> str:
    return TexPrinter({"mul_symbol": None}).doprint(expr)


@dataclass(frozen=True)
class Step:
    """One line of a derivation: `lhs = rhs`, of a given kind, about one tensor."""

    kind: str  # one of KINDS
    about: str  # the binding or argument the step is about
    lhs: sp.Basic
    rhs: sp.Basic
    note: str = ""

    @property
    def text(self) -> str:
        return f"{text(self.lhs)} = {text(self.rhs)}"

    @property
    def latex(self) -> str:
        return f"{latex(self.lhs)} = {latex(self.rhs)}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "about": self.about, "text": self.text, "latex": self.latex,
                "note": self.note, "srepr": sp.srepr(self.rhs)}
