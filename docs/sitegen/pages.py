"""Markdown for the generated pages: one per layer, the layer index, one per optimizer.

Every formula comes from a Derivation's recorded steps (`Step.latex`), every plain-text line
from `Step.text`: the pages print the same records as `symgrad derive` (and, in the "Second
order" section, `symgrad derive --order 2`: derive.second_order's steps) and the kernel printer
read, so they cannot drift from the code. Nothing here knows any layer's gradient, and nothing
here derives, compiles or checks: the numbers and sources come from analysis.py (`LayerInfo`,
`OptimizerInfo`).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import sympy as sp

from . import costs
from .analysis import LayerInfo, OptimizerInfo, SecondOrderInfo

KIND_LABEL = {
    "definition": "Definition",
    "partial": "Local partial",
    "chain": "Chain rule",
    "inlined": "Inlined",
    "simplified": "Simplified",
    # derive.second_order's steps
    "tangent": "Tangent",
    "program": "Backward program",
    "hvp": "Tangent of the backward",
    "hessian": "Hessian",
}

_DOUBLE_SUB = re.compile(r"((?:\\[A-Za-z]+|[A-Za-z][A-Za-z0-9]*)_\{[^{}]*\})_\{")


def tex(s: str) -> str:
    """Make a Step.latex string valid TeX for MathJax.

    The chain-rule steps name accumulated gradients `g_x`, which SymPy prints as `g_{x}`; indexed,
    that becomes `g_{x}_{p,q}`, a double subscript that TeX rejects. Brace the base:
    `{g_{x}}_{p,q}`."""
    prev = None
    while prev != s:
        prev, s = s, _DOUBLE_SUB.sub(r"{\1}_{", s)
    return s


_TEXT_ESCAPES = {ord(c): f"&#{ord(c)};" for c in "&<>\\*_$[]`#|{}"}


def text(s: str) -> str:
    """Plain text (a docstring, a note) safe inside Markdown: no emphasis, links, tables or math."""
    return s.translate(_TEXT_ESCAPES)


def math_block(latex: str) -> str:
    return f"$$\n{tex(latex)}\n$$\n"


def inline(latex: str) -> str:
    return f"${tex(latex)}$"


def shape_tex(shape) -> str:
    if not shape:
        return r"\text{scalar}"
    return r" \times ".join(sp.latex(sp.sympify(s)) for s in shape)


def number(n: int) -> str:
    """1234567 -> '1 234 567' (thin spaces read well in tables)."""
    return f"{n:,}".replace(",", "\u2009")


def size(nbytes: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


def indent(s: str, n: int = 4) -> str:
    return textwrap.indent(s, " " * n)


# --- one layer ----------------------------------------------------------------------------

def function_source(source: str, func: str) -> str:
    """The `@njit(...)` / `def func(...)` block of a printed kernel module, decorator to the last
    line of its body (the whole source when there is no such function)."""
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"def {func}(")), None)
    if start is None:
        return source
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
        end += 1
    while start > 0 and lines[start - 1].startswith("@"):
        start -= 1
    return "\n".join(lines[start:end]).rstrip("\n") + "\n"


def _args_table(d) -> str:
    rows = ["| argument | role | shape | gradient |", "|---|---|---|---|"]
    for a in d.arguments:
        if a.role == "const":
            grad = f"constant, default `{a.default}`"
        elif a.name in d.grads:
            grad = f"`d{a.name}`, derived below"
        elif a.integer:
            grad = "none (integer)"
        else:
            grad = "none"
        rows.append(f"| `{a.name}` | {a.role} | {inline(shape_tex(a.shape))} | {grad} |")
    return "\n".join(rows) + "\n"


def plain_text(d) -> str:
    """The derivation as `symgrad derive NAME` prints it."""
    from symgrad.derive_cmd import render_text
    return render_text(d)


def plain_text_order2(so) -> str:
    """The second-order derivation as `symgrad derive NAME --order 2` prints it."""
    from symgrad.derive_cmd import render_text_order2
    return render_text_order2(so)


def steps_markdown(steps, start: int = 0, notes: dict | None = None) -> tuple[list, int]:
    """Each step as a numbered label (its kind, what it is about) and its formula, then its note
    (`notes[step.about]`, markdown, in place of the plain-text `Step.note`). Returns (the
    markdown blocks, the last number), so a later list can continue the numbering."""
    out, n = [], start
    for s in steps:
        n += 1
        out.append(f'<p class="symgrad-step-kind">{n}. {KIND_LABEL.get(s.kind, s.kind)} &middot; '
                   f'{text(s.about)}</p>\n')
        out.append(math_block(s.latex))
        note = (notes or {}).get(s.about)
        if note is None and s.note:
            note = text(s.note)
        if note:
            out.append(note + "\n")
    return out, n


def _derivation_section(d) -> str:
    out = []
    out.append("## Forward definition\n")
    out.append("Each named intermediate is a binding; the chain rule runs backwards over them.\n")
    for s in d.steps_of("definition"):
        out.append(math_block(s.latex))
    for note in d.graph.notes:
        out.append('!!! note "Numerically stable form"\n\n' + indent(text(note)) + "\n")

    ups = ", ".join(f"`{d.upstream(o.name)}` $= \\partial L / \\partial {sp.latex(sp.Symbol(o.name))}$"
                    for o in d.outputs)
    out.append("## Backward, step by step\n")
    out.append(f"The upstream gradient is {ups}. Each step below is a record of the derivation, "
               "in the order the chain rule produced it: a **local partial** of one binding, "
               "a **chain rule** product that sums the upstream gradient against it (`g_z` is "
               "the gradient reaching `z`), the gradient of an argument with the intermediate "
               "gradients **inlined**, and the **simplified** result, which reads the saved "
               "forward values.\n")
    out += steps_markdown([s for s in d.steps if s.kind != "definition"])[0]

    out.append("## Result\n")
    out.append('<div class="symgrad-result" markdown>\n')
    for s in d.steps_of("simplified"):
        out.append(math_block(s.latex))
    out.append("</div>\n")
    plain = plain_text(d)
    out.append(f'??? example "The same derivation as plain text (`symgrad derive {d.name}`)"\n\n'
               + indent("```text\n" + plain + "\n```") + "\n")
    return "\n".join(out)


def _kernel_section(info: LayerInfo) -> str:
    k = info.kernel
    out = ["## Generated kernel\n"]
    if k is not None and k.source is not None:
        out.append(f"Printed by `compiled/` from the derivation above (float64 build; the float32 "
                   f"kernels come from the same source). File: `{Path(k.path).name}`.\n")
        out.append('<div class="symgrad-kernel" markdown>\n')
        out.append("```python\n" + k.source.rstrip("\n") + "\n```\n")
        out.append("</div>\n")
    else:
        reason = k.reason if k is not None else "not looked up"
        out.append('<div class="symgrad-kernel-missing" markdown>\n')
        out.append('!!! warning "Kernel source not available in this build"\n\n'
                   + indent("The generated Numba kernel is shown here when `compiled.kernels("
                            f"\"{info.name}\", dtype=\"float64\").source_path` works. This build: "
                            + reason.replace("\n", " ")) + "\n")
        out.append("</div>\n")
    return "\n".join(out)


def _cost_section(info: LayerInfo) -> str:
    d = info.derivation
    out = ["## Cost\n"]
    if info.cost_error:
        out.append('!!! failure "Counting FLOPs failed"\n\n'
                   + indent("```text\n" + info.cost_error + "```") + "\n")
        return "\n".join(out)
    dims = costs.example_dims(d.graph.dims_)
    shape = ", ".join(f"{inline(sp.latex(k))} = {v}" for k, v in dims.items())
    out.append(f"Counted from the SymPy expressions (forward: the bindings; backward: the "
               f"simplified gradients), at the example shape {shape}. Memory is compulsory "
               f"traffic in float32 (4 bytes): each tensor read once and each result written "
               f"once. [How the counts are made](index.md#how-costs-are-counted).\n")
    out.append("| pass | FLOPs | at the example shape | read | written | FLOP/byte |")
    out.append("|---|---|---|---|---|---|")
    for label, c in (("forward", info.forward), ("backward", info.backward)):
        num = c.at(dims)
        rd, wr = c.bytes_at(dims, "float32")
        ai = f"{num['flops'] / (rd + wr):.2f}" if rd + wr else "&ndash;"
        out.append(f"| {label} | {inline(sp.latex(c.flops))} | {number(num['flops'])} | "
                   f"{size(rd)} | {size(wr)} | {ai} |")
    out.append("")
    rows = ["| result | FLOPs | at the example shape |", "|---|---|---|"]
    for label, c in (("forward", info.forward), ("backward", info.backward)):
        num = c.at(dims)["per_output"]
        for k, f in c.per_output.items():
            rows.append(f"| {label} `{k}` | {inline(sp.latex(f))} | {number(num[k])} |")
    reads = ", ".join(f"`{k}`" for k in info.backward.read)
    out.append('??? info "Per result, and what the backward reads"\n\n'
               + indent("\n".join(rows) + f"\n\nThe backward pass reads {reads or 'nothing'}.")
               + "\n")
    return "\n".join(out)


def _check_box(heading, error, raised, c, title, method, columns, name, derived) -> str:
    """A numeric check as the pages show it: a failure box when it raised, else the verdict box
    saying how it was run (`method`) and a table of the check's per-argument errors (`columns`:
    the header's first and fifth cells; `name(arg)`: the first column; `derived`: what the
    finite differences met)."""
    out = [heading]
    if error:
        out.append(f'!!! failure "{raised}"\n\n' + indent("```text\n" + error + "```") + "\n")
        return "\n".join(out)
    verdict, kind = ("passed", "success") if c.ok else ("FAILED", "failure")
    out.append(f'!!! {kind} "{title.format(verdict=verdict)} (float64, run when this site was built)"\n\n'
               + indent(method) + "\n")
    out.append(f"| {columns[0]} | shape | elements checked | max abs error | {columns[1]} | result |")
    out.append("|---|---|---|---|---|---|")
    for a in c.args:
        res = "ok" if a.ok else (f"**{a.failures} off**: at {a.worst_index} finite difference "
                                 f"{a.fd:.6g}, {derived} {a.derived:.6g}")
        shape = " &times; ".join(str(s) for s in a.shape) or "scalar"
        out.append(f"| `{name(a.arg)}` | {shape} | {a.checked} | {a.max_abs_err:.1e} | "
                   f"{a.max_rel_err:.1e} | {res} |")
    out.append("")
    return "\n".join(out)


def _dims_text(c) -> str:
    return ", ".join(f"{inline(sp.latex(sp.Symbol(k)))} = {v}" for k, v in c.dims.items()) if c else ""


def _check_section(info: LayerInfo) -> str:
    c = info.check
    return _check_box(
        "## Numeric gradient check\n", info.check_error, "The check raised", c, "Finite differences {verdict}",
        c and (f"Random arguments and upstream gradient (seed {c.seed}) at {_dims_text(c)}; central "
               f"differences with $h = 10^{{-6}}$ of $L = \\sum g \\cdot y$ against the "
               f"derived VJP evaluated by `derive.reference`, within "
               f"$10^{{-6}} + 10^{{-5}}\\,|\\text{{fd}}|$."),
        ("argument", "max rel error"), lambda a: f"d{a}", "derived")


def _names(mapping: dict) -> str:
    return ", ".join(f"`{v}`" for v in mapping.values())


def second_order_section(info: LayerInfo) -> str:
    s2, d = info.second, info.derivation
    if s2 is None:
        return ""
    out = ["## Second order\n"]
    if s2.error:
        out.append(f'!!! failure "derive.second_order(\\"{info.name}\\") raised"\n\n'
                   + indent("```text\n" + s2.error + "```") + "\n")
        return "\n".join(out)
    so = s2.so
    scalar = all(not o.shape for o in d.outputs)
    of = ("the loss itself (its upstream gradient is 1)" if scalar else
          "$\\sum g \\cdot y$, with the upstream gradient " + ", ".join(f"`{d.upstream(o.name)}`"
                                                                  for o in d.outputs) + " held fixed")
    out.append(f"`derive.second_order(\"{d.name}\")` takes tangents of the definition above and of "
               f"the backward program derived from it; nothing second-order is written for this "
               f"layer. A direction $v$ is one tangent per differentiable argument "
               f"({_names(so.tangent_inputs)}), all moved together. The **tangents** of the forward "
               f"bindings are the JVP, $\\dot y = J v$ ({_names(so.output_tangents)}); the **tangent "
               f"of the backward** (forward-over-reverse) is the Hessian-vector product $H v$ "
               f"({_names(so.hvp_outputs)}), where $H$ is the Hessian of {of}. "
               f"[Second order and Newton's method](../guides/second-order.md) walks through "
               f"cross-entropy.\n")
    out.append("### Tangents (JVP)\n")
    tangents = so.steps_of("tangent")
    if tangents:
        out.append("Each binding's tangent, by the rules of differentiation "
                   "($\\dot{u}$ is written `u_dot`):\n")
        blocks, n = steps_markdown(tangents)
        out += blocks
    else:
        n = 0
        out.append("No binding has a tangent of its own: the output is an argument's tangent "
                   "as it is.\n")
    out.append("### Hessian-vector product\n")
    out.append("The backward program derived above (what the backward kernel computes), then the "
               "tangent of each of its equations: the tangent of an argument's gradient is that "
               "argument's part of $H v$.\n")
    out += steps_markdown(so.steps_of("program") + so.steps_of("hvp"), n)[0]
    if so.hessians:
        out.append("### Hessian\n")
        out.append("Small enough to write in index form: $H v$ with every tangent inlined is "
                   "linear in $v$, so differentiating it by one element of $v$ gives Kronecker "
                   "deltas, eliminated as in the chain rule, and the result is folded onto the "
                   "saved values. A value read at two index positions gets a name of its own.\n")
        from symgrad.derive.steps import latex as steps_latex

        notes = {}
        for h in so.hessians.values():
            if h.where:
                notes[f"{h.a},{h.b}"] = "where " + ", ".join(
                    inline(f"{steps_latex(k)} = {steps_latex(v)}") for k, v in h.where) + "."
        out.append('<div class="symgrad-result" markdown>\n')
        out += steps_markdown(so.steps_of("hessian"), notes=notes)[0]
        out.append("</div>\n")
    out.append(f'??? example "The same as plain text (`symgrad derive {d.name} --order 2`)"\n\n'
               + indent("```text\n" + plain_text_order2(so) + "\n```") + "\n")

    out.append("### HVP kernel\n")
    k = s2.kernel
    if k is not None and k.source is not None:
        out.append(f"Printed by `compiled/` from the tangent program above as one forward kernel "
                   f"(`compiled.second_order.second_order_kernels(\"{d.name}\", \"float64\")`, "
                   f"serial loops; float32 from the same source). The function `{s2.kernel_func}` "
                   f"of `{Path(k.path).name}`:\n")
        out.append('<div class="symgrad-kernel" markdown>\n')
        out.append("```python\n" + function_source(k.source, s2.kernel_func).rstrip("\n") + "\n```\n")
        out.append("</div>\n")
    else:
        reason = k.reason if k is not None else "not looked up"
        out.append('!!! warning "HVP kernel source not available in this build"\n\n'
                   + indent(reason.replace("\n", " ")) + "\n")
    out.append(_hvp_check(s2))
    return "\n".join(out)


def _hvp_check(s2: SecondOrderInfo) -> str:
    c = s2.check
    return _check_box(
        "### Numeric check of H v\n", s2.check_error, "The HVP kernel or its check raised", c,
        "H v against finite differences of the gradient: {verdict}",
        c and (f"The HVP kernel at random arguments, direction $v$ and upstream gradient "
               f"(seed {c.seed}; 1 for a scalar output) at {_dims_text(c)}, against central "
               f"differences with $h = 10^{{-6}}$ of the derived gradient along $v$, "
               f"$(\\bar x(\\theta + h v) - \\bar x(\\theta - h v)) / 2h$, evaluated by "
               f"`derive.reference` (the gradient the check above verifies); within "
               f"$10^{{-6}} + 10^{{-5}}\\,|\\text{{fd}}|$ per element. The relative error "
               f"divides by the largest element of $H v$ over every argument "
               f"({c.scale:.3g})."),
        ("H v for", "relative error"), lambda a: a, "HVP kernel")


def layer_page(info: LayerInfo) -> str:
    name = info.name
    out = [f"# {name}\n"]
    if info.derivation is None:
        out.append(f'!!! failure "derive.layer(\\"{name}\\") raised"\n\n'
                   + indent("```text\n" + (info.error or "") + "```") + "\n")
        return "\n".join(out)
    d = info.derivation
    if d.doc:
        out.append(text(d.doc) + "\n")
    out.append(_args_table(d))
    outs = ", ".join(f"`{o.name}` ({inline(shape_tex(o.shape))})" for o in d.outputs)
    saved = ", ".join(f"`{t.name}`" for t in d.saved)
    out.append(f"Output: {outs}. Saved by the forward pass for the backward: {saved}.\n")
    if d.graph.uses:
        out.append("This derivation reuses " + ", ".join(_link(u) for u in d.graph.uses) + ".\n")
    if info.used_by:
        out.append("Used by " + ", ".join(_link(u) for u in info.used_by) + ".\n")
    out.append(_derivation_section(d))
    out.append(_kernel_section(info))
    out.append(_cost_section(info))
    out.append(_check_section(info))
    out.append(second_order_section(info))
    return "\n".join(out)


def _link(name: str) -> str:
    # A link to a page that is not generated is left for mkdocs --strict to report.
    return f"[{name}]({name}.md)"


def _hvp_verdict(s2: SecondOrderInfo | None) -> str:
    if s2 is None:
        return "&ndash;"
    if s2.check is not None:
        return (f"passed ({max((a.max_rel_err for a in s2.check.args), default=0.0):.0e})"
                if s2.check.ok else "**FAILED**")
    return "**error**"


HOW_COSTS = """\
## How costs are counted

FLOPs are counted from the SymPy expression of each forward binding and each simplified gradient,
as a kernel with common-subexpression elimination would evaluate it:

- each distinct subexpression is computed once per point of the loops it depends on, so a row sum
  inside an elementwise expression counts once per row, and a triangular (causal) range counts
  exactly;
- $a+b$, $a\\cdot b$ and $a/b$ are one FLOP each, a negation is free, $x^k$ is $k-1$
  multiplications, any other power, `exp`, `log`, `tanh` or comparison is one, a sum over $E$
  terms is $E-1$ additions, a max over $E$ terms is $E-1$ comparisons.

Memory is compulsory traffic: each tensor the expressions read is read once and each result
written once, in float32. The example shape is the reference workload's (nanoGPT "baby
shakespeare" on a CPU): {dims}; any other dim is {default}.
"""


def index_page(infos: list[LayerInfo]) -> str:
    out = ["# Layers\n",
           "One page per built-in layer, generated when this site was built from the layer's "
           "`derive/` definition: the forward definition, every step of the chain rule, the "
           "simplified gradient, the Numba kernel printed from it, its cost, a numeric "
           "gradient check, and its second order: the JVP, the Hessian-vector product (and, for "
           "small layers, the Hessian) derived from the same definition, the HVP kernel and a "
           "numeric check of it.\n",
           "| layer | what it computes | backward FLOPs (example shape) | gradient check | HVP check |",
           "|---|---|---|---|---|"]
    for info in infos:
        if info.derivation is None:
            out.append(f"| [{info.name}]({info.name}.md) | **derive.layer raised** | | | |")
            continue
        fl = "&ndash;"
        if info.backward is not None:
            fl = number(info.backward.at(costs.example_dims(info.derivation.graph.dims_))["flops"])
        if info.check is not None:
            chk = "passed" if info.check.ok else "**FAILED**"
        else:
            chk = "**error**"
        out.append(f"| [{info.name}]({info.name}.md) | {text(info.summary)} | {fl} | {chk} | "
                   f"{_hvp_verdict(info.second)} |")
    out.append("")
    dims = ", ".join(f"{k} = {v}" for k, v in costs.EXAMPLE_DIMS.items())
    out.append(HOW_COSTS.format(dims=dims, default=costs.DEFAULT_DIM))
    return "\n".join(out)


# --- optimizers ---------------------------------------------------------------------------

def optimizer_page(info: OptimizerInfo) -> str:
    cls = info.cls
    out = [f"# {cls.__name__}\n"]
    names = ", ".join(f"`{n}`" for n in info.names)
    out.append(f"`models.{cls.__name__}`; by name: {names}.\n")
    if cls.__doc__:  # its own (a class's __doc__ is not inherited)
        out.append(text(cls.__doc__.strip()) + "\n")
    if cls.defaults:
        out.append("| hyper-parameter | default |\n|---|---|")
        out.append("\n".join(f"| `{k}` | `{v}` |" for k, v in cls.defaults.items()) + "\n")
    if info.error:
        out.append('!!! failure "Deriving the update rule raised"\n\n'
                   + indent("```text\n" + info.error + "```") + "\n")
    elif info.derivation is not None:
        d = info.derivation
        out.append("## Update rule\n")
        out.append(f"The rule `{info.rule}` is a SymPy definition over one flat parameter vector "
                   f"(`models/rules.py`), printed into one fused kernel that updates the parameter "
                   f"and the state in place.\n")
        if d.doc:
            out.append(text(d.doc) + "\n")
        for s in d.steps_of("definition"):
            out.append(math_block(s.latex))
        consts = [a for a in d.arguments if a.role == "const"]
        if consts:
            out.append("Constants of the rule: " + ", ".join(
                f"{inline(sp.latex(a.symbol))} (`{a.name}`)" for a in consts) + ".\n")
    return "\n".join(out)


def optimizer_index(infos: list[OptimizerInfo], reason: str | None) -> str:
    out = ["# Optimizers\n"]
    if reason is not None:
        out.append('!!! info "No optimizer pages in this build"\n\n'
                   + indent("The pages are generated from `models.optim`, which could not be "
                            f"imported: {text(reason)}") + "\n")
        out.append("The update rules are described in [Gradient descent and its variants]"
                   "(../guides/gradient-descent.md).\n")
        return "\n".join(out)
    out.append("One page per optimizer, generated from its update rule's SymPy definition. "
               "[Gradient descent and its variants](../guides/gradient-descent.md) explains them "
               "side by side.\n")
    out.append("| optimizer | names | rule |\n|---|---|---|")
    for i in infos:
        out.append(f"| [{i.cls.__name__}]({i.slug}.md) | {', '.join(f'`{n}`' for n in i.names)} | "
                   f"`{i.rule}` |")
    out.append("")
    return "\n".join(out)
