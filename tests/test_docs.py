"""The site generator in docs/sitegen and `symgrad docs`: costs, the gradient check, page text.

The whole-site build and the browser checks are in tests/test_docs_browser.py.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import sympy as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import derive  # noqa: E402
from sitegen import costs, gradcheck, pages  # noqa: E402


def scale_layer(G):
    """y[i,j] = x[i,j] * w[j]"""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    w = G.param("w", (C,))
    i, j = G.indices(i=N, j=C)
    G.output(G.bind("y", (i, j), x[i, j] * w[j]))


def swish_layer(G):
    """swish(x) = x * sigmoid(x), defined only here."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    G.output(G.bind("y", (i, j), x[i, j] / (1 + sp.exp(-x[i, j]))))


# --- FLOP counting -----------------------------------------------------------------------------

i, j, k = sp.symbols("i j k", integer=True)
N, C, T = sp.symbols("N C T", integer=True, positive=True)
x, g, s = sp.IndexedBase("x"), sp.IndexedBase("g"), sp.IndexedBase("s")
ROWS = ((i, 0, N - 1), (j, 0, C - 1))


def test_flop_count_of_an_elementwise_product_is_one_per_element():
    assert costs.flop_count(g[i, j] * x[i, j], ROWS) == N * C


def test_flop_count_computes_a_row_sum_once_per_row_not_once_per_element():
    # s * (g - sum_k g*s): N*C muls + N*(C-1) adds for the sum, then N*C subtracts, N*C muls
    expr = s[i, j] * (g[i, j] - sp.Sum(g[i, k] * s[i, k], (k, 0, C - 1)))
    assert sp.expand(costs.flop_count(expr, ROWS) - (4 * N * C - N)) == 0


def test_flop_count_of_a_triangular_sum_is_exact():
    # sum_{k<=i} x[i,k]: i adds for row i, summed over i < T
    expr = sp.Sum(x[i, k], (k, 0, i))
    assert sp.expand(costs.flop_count(expr, ((i, 0, T - 1),)) - T * (T - 1) / 2) == 0


def test_flop_count_counts_a_division_once_and_a_negation_as_free():
    assert costs.flop_count(x[i, j] / g[i, j], ROWS) == N * C
    assert costs.flop_count(-x[i, j] * g[i, j], ROWS) == N * C
    assert costs.flop_count(sp.exp(x[i, j]) + 1, ROWS) == 2 * N * C
    assert costs.flop_count(x[i, j] ** 3, ROWS) == 2 * N * C


def test_costs_of_a_layer_defined_in_the_test_name_what_it_reads_and_writes():
    d = derive.define("scale_for_cost", scale_layer)
    back = costs.backward_cost(d)
    Nd, Cd = d.graph.dims_
    assert set(back.written) == {"dx", "dw"}
    assert back.written["dw"] == Cd and back.written["dx"] == Nd * Cd
    assert set(back.read) >= {"g"} and "y" not in back.read
    at = back.at({Nd: 10, Cd: 3})
    # dx = g*w (1 per element); dw = sum_i g*x (N*C muls, (N-1)*C adds)
    assert at["flops"] == 30 + 30 + 27
    fwd = costs.forward_cost(d)
    assert fwd.at({Nd: 10, Cd: 3})["flops"] == 30 and set(fwd.read) == {"x", "w"}


def test_example_dims_are_the_reference_workload_shape():
    a, b, z = sp.symbols("N C Zq", integer=True, positive=True)
    assert costs.example_dims([a, b, z]) == {a: 768, b: 128, z: costs.DEFAULT_DIM}


# --- the numeric gradient check ---------------------------------------------------------------

def test_gradient_check_passes_for_a_layer_defined_only_by_its_forward():
    pytest.importorskip("derive.reference")
    d = derive.define("swish_for_docs", swish_layer)
    r = gradcheck.run(d)
    assert r.ok, r
    assert [a.arg for a in r.args] == ["x"] and r.args[0].checked == 12
    assert r.args[0].max_abs_err < 1e-7


def test_gradient_check_reports_a_wrong_gradient_with_the_element(monkeypatch):
    d = derive.define("scale_wrong", scale_layer)

    def forward(d_, args):
        return {"y": args["x"] * args["w"]}

    def vjp(d_, upstream, args):
        G = upstream["g"]
        return {"x": G * args["w"], "w": (G * args["x"]).sum(0) * 1.01}  # dw off by 1 %

    fake = types.SimpleNamespace(forward=forward, vjp=vjp)
    monkeypatch.setattr(gradcheck, "_reference", lambda: fake)
    r = gradcheck.run(d)
    by = {a.arg: a for a in r.args}
    assert by["x"].ok and not by["w"].ok and not r.ok
    assert by["w"].failures == by["w"].checked
    assert abs(by["w"].vjp - 1.01 * by["w"].fd) < 1e-6 * max(1, abs(by["w"].fd))


def test_gradient_check_says_when_the_reference_evaluator_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "derive.reference", None)
    monkeypatch.delattr(derive, "reference", raising=False)
    with pytest.raises(gradcheck.ReferenceMissing):
        gradcheck._reference()


# --- page text --------------------------------------------------------------------------------

def test_tex_braces_double_subscripts_of_gradient_names():
    assert pages.tex(r"g_{x}_{p,q} = g_{\gamma}_{j} + a_{i}") == r"{g_{x}}_{p,q} = {g_{\gamma}}_{j} + a_{i}"
    assert pages.tex(r"\sum_{k=0}^{n - 1} e_{i,k}") == r"\sum_{k=0}^{n - 1} e_{i,k}"


def test_text_escapes_markdown_and_math_delimiters():
    out = pages.text("s[i,j] = a*b_c $x$ <t>")
    for ch in "[]*_$<>":
        assert ch not in out


def test_softmax_page_has_every_section_and_the_stable_form_note():
    info = pages.analyse("softmax", derive)
    md = pages.layer_page(info, {"softmax"})
    for heading in ("## Forward definition", "## Backward, step by step", "## Result",
                    "## Generated kernel", "## Cost", "## Numeric gradient check"):
        assert heading in md
    assert "Numerically stable form" in md
    d = derive.layer("softmax")
    for step in d.steps_of("simplified"):
        assert pages.tex(step.latex) in md
    assert not info.warnings, info.warnings


def test_kernel_section_explains_a_missing_kernel(monkeypatch):
    monkeypatch.setattr(pages, "kernel_source",
                        lambda name, dtype="float64": pages.Kernel(None, None, "`compiled` is not importable"))
    md = pages.layer_page(pages.analyse("softmax", derive), {"softmax"})
    assert "symgrad-kernel-missing" in md and "not importable" in md


def test_a_layer_that_fails_to_derive_is_a_warning_and_an_error_page():
    class Broken:
        @staticmethod
        def layer(name):
            raise RuntimeError("no such luck")

    info = pages.analyse("broken", Broken)
    assert info.warnings and "no such luck" in info.warnings[0]
    md = pages.layer_page(info, set())
    assert "!!! failure" in md and "no such luck" in md


def test_generate_builds_pages_nav_and_cross_links():
    site = __import__("sitegen").generate(["softmax", "attention"])
    assert {"layers/softmax.md", "layers/attention.md", "layers/index.md",
            "optimizers/index.md"} <= set(site.pages)
    assert site.layer_nav == [{"softmax": "layers/softmax.md"}, {"attention": "layers/attention.md"}]
    if "softmax" in derive.layer("attention").graph.uses:
        assert "[softmax](softmax.md)" in site.pages["layers/attention.md"]
        assert "Used by [attention](attention.md)" in site.pages["layers/softmax.md"]
    assert not site.warnings, site.warnings


def test_optimizer_index_says_why_there_are_no_pages():
    md = pages.optimizer_index([], "models.optimizers: ModuleNotFoundError: nope")
    assert "No optimizer pages" in md and "nope" in md


# --- symgrad docs -----------------------------------------------------------------------------

def test_docs_command_rejects_a_missing_or_unknown_action(capsys):
    from symgrad import docs_cmd

    assert docs_cmd.main([]) == 2
    assert docs_cmd.main(["publish"]) == 2
    assert "symgrad docs" in capsys.readouterr().err


def test_docs_command_runs_mkdocs_strict_on_the_repository_config():
    from symgrad import docs_cmd

    cmd = docs_cmd.mkdocs_command("build", site_dir="out")
    assert cmd[1:4] == ["-m", "mkdocs", "build"] and "--strict" in cmd
    assert str(ROOT / "mkdocs.yml") in cmd and str((Path("out")).resolve()) in cmd
    assert "--strict" not in docs_cmd.mkdocs_command("build", strict=False)
    assert docs_cmd.mkdocs_command("serve", dev_addr="127.0.0.1:9000")[-2:] == ["-a", "127.0.0.1:9000"]
