"""`symgrad derive NAME [--format text|latex|json] [--order 2]`: print a layer's derivation steps
(`--order 2`: its JVP, the HVP of its backward and, for small layers, its Hessian: derive.second_order)."""

from __future__ import annotations

import argparse
import json

from symgrad import derive
from symgrad.derive.derivation import lhs_of
from symgrad.derive.steps import KINDS, text

_LABEL = {"definition": "definition", "partial": "partial", "chain": "chain rule",
          "inlined": "deltas", "simplified": "simplified"}


def render_text(d) -> str:
    lines = [f"{d.name}: {d.doc.splitlines()[0] if d.doc else ''}"]
    for kind in KINDS:
        for s in d.steps_of(kind):
            lines.append(f"  {_LABEL[kind]:<11} {s.text}")
    if any(d.gradient_of(name) is None for name, _, _ in d.program):  # intermediates are kept
        for name, idx, expr in d.program:
            lines.append(f"  kernel      {text(lhs_of(name, idx))} = {text(expr)}")
    for note in d.graph.notes:
        lines.append(f"  note        {note}")
    return "\n".join(lines)


def _latex(title, steps_of, kinds, labels) -> str:
    """Each recorded step's LaTeX under a comment naming its kind."""
    out = [f"% {title}"]
    for kind in kinds:
        out += [f"% {labels[kind]}\n{s.latex}" for s in steps_of(kind)]
    return "\n".join(out)


def render_latex(d) -> str:
    return _latex(d.name, d.steps_of, KINDS, _LABEL)


_LABEL2 = {"definition": "definition", "tangent": "tangent", "program": "backward", "hvp": "hvp",
           "hessian": "hessian"}


def render_text_order2(so) -> str:
    from symgrad.derive.second_order import KINDS as KINDS2

    d = so.first
    lines = [f"{d.name} (second order): {d.doc.splitlines()[0] if d.doc else ''}"]
    for kind in KINDS2:
        for s in so.steps_of(kind):
            lines.append(f"  {_LABEL2[kind]:<11} {s.text}")
            if s.note:
                lines.append(f"  {'':<11}   {s.note}")
    return "\n".join(lines)


def render_latex_order2(so) -> str:
    from symgrad.derive.second_order import KINDS as KINDS2

    return _latex(f"{so.name} (second order)", so.steps_of, KINDS2, _LABEL2)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="symgrad derive", description=__doc__)
    p.add_argument("name", help=f"a built-in layer: {', '.join(derive.layers())}")
    p.add_argument("--format", choices=("text", "latex", "json"), default="text")
    p.add_argument("--json", dest="format", action="store_const", const="json")
    p.add_argument("--order", type=int, choices=(1, 2), default=1,
                   help="2: the JVP, the HVP of the backward (forward-over-reverse) and the Hessian")
    a = p.parse_args(argv)
    if a.order == 2:
        from symgrad.derive.second_order import second_order

        so = second_order(a.name)
        print(json.dumps(so.as_dict(), indent=2) if a.format == "json" else
              render_latex_order2(so) if a.format == "latex" else render_text_order2(so))
        return 0
    d = derive.layer(a.name)
    if a.format == "json":
        print(json.dumps(d.as_dict(), indent=2))
    elif a.format == "latex":
        print(render_latex(d))
    else:
        print(render_text(d))
    return 0
