"""`symgrad derive NAME [--format text|latex|json]`: print a layer's derivation steps."""

from __future__ import annotations

import argparse
import json

import derive
from derive.derivation import lhs_of
from derive.steps import KINDS, text

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


def render_latex(d) -> str:
    out = [f"% {d.name}"]
    for kind in KINDS:
        out += [f"% {_LABEL[kind]}\n{s.latex}" for s in d.steps_of(kind)]
    return "\n".join(out)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="symgrad derive", description=__doc__)
    p.add_argument("name", help=f"a built-in layer: {', '.join(derive.layers())}")
    p.add_argument("--format", choices=("text", "latex", "json"), default="text")
    p.add_argument("--json", dest="format", action="store_const", const="json")
    a = p.parse_args(argv)
    d = derive.layer(a.name)
    if a.format == "json":
        print(json.dumps(d.as_dict(), indent=2))
    elif a.format == "latex":
        print(render_latex(d))
    else:
        print(render_text(d))
    return 0
