"""Printed lines, nested: a Block is one indentation level of a kernel's source."""

from __future__ import annotations

import sympy as sp

from .printer import print_index


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


def loop_range(lo, hi, names):
    hi1 = print_index(sp.sympify(hi) + 1, names)
    return f"range({hi1})" if lo == 0 else f"range({print_index(lo, names)}, {hi1})"
