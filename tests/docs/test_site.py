"""The site generator in docs/sitegen, the pictures (docs/figures.py, docs/trajectories.py) and `symgrad docs`: costs,
the gradient and HVP checks, page text (the "Second order" section of every layer page), the
Newton steps of the second-order guide (docs/newton_step.py), recorded loss curves, optimizer
trajectories.

The HVP kernels compile into the same kernel cache as the site build ($SYMGRAD_CACHE_DIR, else
~/.cache/symgrad), so whichever runs first compiles them for the other.

The whole-site build and the browser checks are in tests/docs/test_site_in_browser.py.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))

from symgrad import derive  # noqa: E402
import figures  # noqa: E402  (docs/figures.py)
import trajectories  # noqa: E402  (docs/trajectories.py)
import newton_step  # noqa: E402  (docs/newton_step.py)
import sitegen  # noqa: E402
from sitegen import analysis, costs, gradcheck, pages  # noqa: E402


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
    monkeypatch.setattr(gradcheck, "reference", fake)
    r = gradcheck.run(d)
    by = {a.arg: a for a in r.args}
    assert by["x"].ok and not by["w"].ok and not r.ok
    assert by["w"].failures == by["w"].checked
    assert abs(by["w"].derived - 1.01 * by["w"].fd) < 1e-6 * max(1, abs(by["w"].fd))


def test_hvp_check_passes_for_the_printed_kernel_of_a_layer_defined_only_by_its_forward():
    from symgrad.compiled.second_order import second_order_kernels

    d = derive.define("swish_for_docs_hvp", swish_layer)
    r = gradcheck.run_hvp(d, second_order_kernels(d, "float64").hvp)
    assert r.ok, r
    assert [a.arg for a in r.args] == ["x"] and r.args[0].checked == 12
    assert r.args[0].max_rel_err < 1e-8 and r.scale > 0


def test_hvp_check_reports_a_wrong_hessian_vector_product_with_the_element():
    from symgrad.derive import reference

    d = derive.define("swish_for_docs_hvp_wrong", swish_layer)

    def hvp(args, v, upstream):  # H v of swish with the second derivative 1 % too large
        h = 1e-4
        plus = reference.vjp(d, upstream, {**args, "x": args["x"] + h * v["x"]})["x"]
        minus = reference.vjp(d, upstream, {**args, "x": args["x"] - h * v["x"]})["x"]
        return {"x": 1.01 * (plus - minus) / (2 * h)}

    r = gradcheck.run_hvp(d, hvp)
    (a,) = r.args
    assert not r.ok and a.failures == a.checked == 12
    assert abs(a.derived - 1.01 * a.fd) < 1e-6 * max(1, abs(a.fd)) and a.max_rel_err > 1e-3


# --- page text --------------------------------------------------------------------------------

def test_tex_braces_double_subscripts_of_gradient_names():
    assert pages.tex(r"g_{x}_{p,q} = g_{\gamma}_{j} + a_{i}") == r"{g_{x}}_{p,q} = {g_{\gamma}}_{j} + a_{i}"
    assert pages.tex(r"\sum_{k=0}^{n - 1} e_{i,k}") == r"\sum_{k=0}^{n - 1} e_{i,k}"


def test_text_escapes_markdown_and_math_delimiters():
    out = pages.text("s[i,j] = a*b_c $x$ <t>")
    for ch in "[]*_$<>":
        assert ch not in out


def test_softmax_page_has_every_section_and_the_stable_form_note():
    info = analysis.analyse("softmax", derive)
    md = pages.layer_page(info)
    for heading in ("## Forward definition", "## Backward, step by step", "## Result",
                    "## Generated kernel", "## Cost", "## Numeric gradient check",
                    "## Second order", "### Tangents (JVP)", "### Hessian-vector product",
                    "### HVP kernel", "### Numeric check of H v"):
        assert heading in md
    assert md.index("## Numeric gradient check") < md.index("## Second order")
    assert "Numerically stable form" in md
    d = derive.layer("softmax")
    for step in d.steps_of("simplified"):
        assert pages.tex(step.latex) in md
    assert not info.warnings, info.warnings


@pytest.fixture(scope="module")
def second_order_of_every_layer():
    """analysis.second_order_info of every built-in layer, computed as the site build does (worker
    processes, the same kernel cache)."""
    names = derive.layers()
    with sitegen.SecondOrderPool(names) as s:
        return {n: s.result(n) for n in names}


@pytest.mark.parametrize("name", derive.layers())
def test_layer_page_has_a_second_order_section_with_hvp_steps_and_a_passing_numeric_check(
        name, second_order_of_every_layer):
    s2 = second_order_of_every_layer[name]
    assert not s2.warnings, f"{name}: " + "\n".join(s2.warnings)
    md = pages.second_order_section(analysis.LayerInfo(name, derivation=derive.layer(name), second=s2))
    assert md.startswith("## Second order"), md[:300]
    hvp_steps = s2.so.steps_of("hvp")
    assert hvp_steps, f"{name}: derive.second_order has no HVP step"
    for step in hvp_steps + s2.so.steps_of("tangent") + s2.so.steps_of("hessian"):
        assert pages.tex(step.latex) in md, f"{name}: the page lacks the {step.kind} step of {step.about}"
    assert f"def {s2.kernel_func}(" in md, f"{name}: the page does not show the HVP kernel"
    c = s2.check
    assert c is not None and c.ok, f"{name}: HVP check {c}"
    assert {a.arg for a in c.args} == set(derive.layer(name).grads)
    worst = max(c.args, key=lambda a: a.max_rel_err)
    assert worst.max_rel_err < 1e-6, \
        f"{name}: H v for {worst.arg} is off by {worst.max_rel_err:.1e} (relative)"
    assert "finite differences of the gradient: passed" in md and f"{worst.max_rel_err:.1e}" in md


def test_cross_entropy_page_shows_its_hessian_with_p_abbreviated():
    info = analysis.LayerInfo("cross_entropy", derivation=derive.layer("cross_entropy"),
                              second=analysis.second_order_of("cross_entropy"))
    md = pages.second_order_section(info)
    assert "### Hessian" in md and "where ${p}_{n,k} = e^{" in md
    assert "symgrad derive cross_entropy --order 2" in md


def test_a_failing_hvp_check_is_a_warning_and_a_failure_on_the_page(monkeypatch):
    def wrong(d, hvp, seed=0):
        r = gradcheck.CheckResult(d.name, {"N": 3}, seed, scale=1.0)
        r.args.append(gradcheck.compare("x", (1,), [(0,)], [1.0], [1.5], 1.0))
        return r

    monkeypatch.setattr(gradcheck, "run_hvp", wrong)
    s2 = analysis.second_order_of("softmax")
    assert s2.warnings and "HVP check FAILED" in s2.warnings[0] and "1.5" in s2.warnings[0]
    md = pages.second_order_section(analysis.LayerInfo("softmax", derivation=derive.layer("softmax"), second=s2))
    assert '!!! failure "H v against finite differences of the gradient: FAILED' in md and "**1 off**" in md


def test_kernel_section_explains_a_missing_kernel(monkeypatch):
    monkeypatch.setattr(analysis, "kernel_source",
                        lambda name, dtype="float64": analysis.Kernel(None, None, "`compiled` is not importable"))
    md = pages.layer_page(analysis.analyse("softmax", derive))
    assert "symgrad-kernel-missing" in md and "not importable" in md


def test_a_layer_that_fails_to_derive_is_a_warning_and_an_error_page():
    class Broken:
        @staticmethod
        def layer(name):
            raise RuntimeError("no such luck")

    info = analysis.analyse("broken", Broken)
    assert info.warnings and "no such luck" in info.warnings[0]
    md = pages.layer_page(info)
    assert "!!! failure" in md and "no such luck" in md


def test_generate_builds_pages_nav_and_cross_links(monkeypatch):
    monkeypatch.setenv("SYMGRAD_DOCS_JOBS", "1")  # two layers, kernels compiled above: no workers
    site = sitegen.generate(["softmax", "attention"])
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


# --- the Newton steps of the second-order guide ---------------------------------------------

def test_newton_guide_steps_lower_the_loss_to_a_stationary_point_quadratically():
    obj, tr = newton_step.run()
    rows = tr.iterations
    losses = [r[1] for r in rows]
    assert abs(losses[0] - math.log(3)) < 1e-12
    assert all(b <= a + 1e-15 for a, b in zip(losses, losses[1:])), losses
    assert rows[-1][2] <= 1e-10 and len(rows) <= 7, rows
    assert rows[-2][2] < 1e-4 and rows[-1][2] < 10 * rows[-2][2] ** 2, rows  # the norm squares
    assert all(0 < r[3] <= 9 for r in rows[1:])  # CG on 9 parameters: at most 9 products
    md = newton_step.report()
    assert md.count("\n| ") == len(rows) + 1 and "9 parameters" in md


# --- pictures: recorded loss curves ---------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["gpt", "mlp"])
def test_committed_loss_curve_data_is_a_whole_recorded_run(model):
    data = json.loads((ROOT / "docs" / "data" / f"{model}-loss.json").read_text())
    where = f"docs/data/{model}-loss.json"
    assert data["model"] == model and data["command"], where
    steps = [s for s, _ in data["train"]]
    assert steps == list(range(1, data["steps"] + 1)), f"{where}: train losses are not one per step"
    val_steps = [s for s, _ in data["val"]]
    assert len(val_steps) >= 3 and val_steps == sorted(val_steps) and val_steps[-1] == data["steps"], where
    losses = [v for _, v in data["train"] + data["val"]]
    assert all(math.isfinite(v) and v >= 0 for v in losses), where
    first, last = data["train"][0][1], np.mean([v for _, v in data["train"][-20:]])
    assert last < first, f"{where}: the loss did not fall ({first} -> {last})"


def test_record_mlp_writes_the_trainers_history_and_val_history(tmp_path):
    out = tmp_path / "mlp.json"
    assert figures.main(["record", "mlp", "--steps", "6", "--eval-interval", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [s for s, _ in data["train"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in data["val"]] == [0, 3, 6]
    assert data["steps"] == 6 and data["config"]["train"]["optimizer"] == "adam"


def test_record_reads_a_gpt_checkpoint_without_training(tmp_path):
    from symgrad.models import checkpoint

    meta = {"kind": "gpt", "step": 3, "config": {"model": {"n_layer": 1}, "vocab": ["a", "b"]},
            "history": [[1, 4.1234567], [2, 3.5], [3, 3.25]], "val_history": [[3, 3.3]]}
    checkpoint.save(tmp_path / "run" / "ckpt.npz", meta, {"w": np.zeros(2, np.float32)})
    out = tmp_path / "gpt.json"
    assert figures.main(["record", "gpt", "--from-checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["train"] == [[1, 4.1235], [2, 3.5], [3, 3.25]] and data["val"] == [[3, 3.3]]
    assert data["steps"] == 3 and "vocab" not in data["config"]  # the vocabulary is not worth a diff


def test_record_rejects_a_bad_step_count_and_unknown_model():
    with pytest.raises(SystemExit):
        figures.main(["record", "mlp", "--steps", "0"])
    with pytest.raises(SystemExit):
        figures.main(["record", "transformer"])


def test_loss_figure_is_a_png_and_the_same_data_gives_the_same_bytes():
    data = {"steps": 4, "train": [[1, 4.0], [2, 3.0], [3, 2.5], [4, 2.4]], "val": [[2, 3.1], [4, 2.6]]}
    a, b = figures.loss_figure(data, "t"), figures.loss_figure(data, "t")
    assert a.startswith(PNG) and a == b


def test_committed_sharpness_data_is_a_recorded_run_with_sharpness_every_25_steps():
    data = figures.load("sharpness")
    assert "--sharpness-every 25" in data["command"] and data["every"] == 25
    steps = [s for s, _ in data["sharpness"]]
    assert steps == list(range(25, data["steps"] + 1, 25)) and all(v > 0 for _, v in data["sharpness"])
    assert figures.sharpness_figure(data, "t").startswith(PNG)


def test_run_summary_names_the_command_and_the_losses(tmp_path):
    data = {"model": "mlp", "steps": 2, "command": "python3 -m docs.figures record mlp --steps 2",
            "config": {"seed": 0}, "train": [[1, 0.7], [2, 0.5]], "val": [[0, 0.71], [2, 0.52]]}
    path = tmp_path / "mlp-loss.json"
    figures.write(data, path)
    md = figures.run_summary("mlp", path)
    assert "record mlp --steps 2" in md and "0.71 at step 0, 0.52 at step 2" in md
    assert "failure" in figures.run_summary("mlp", tmp_path / "missing.json")


# --- pictures: optimizer trajectories --------------------------------------------------------

def test_rosenbrock_gradient_is_derived_and_matches_finite_differences():
    from symgrad.derive import reference

    d = derive.define("rosenbrock_for_test", trajectories.rosenbrock)
    x, y = np.array([-1.2, 0.3, 1.0]), np.array([1.0, -0.5, 1.0])
    f = lambda x_, y_: reference.forward(d, {"x": x_, "y": y_})["f"]  # noqa: E731
    got = reference.vjp(d, {"g": np.ones(3)}, {"x": x, "y": y})
    h = 1e-6
    fd_x = (f(x + h, y) - f(x - h, y)) / (2 * h)
    fd_y = (f(x, y + h) - f(x, y - h)) / (2 * h)
    np.testing.assert_allclose(got["x"], fd_x, rtol=1e-6, atol=1e-6, err_msg="rosenbrock dL/dx")
    np.testing.assert_allclose(got["y"], fd_y, rtol=1e-6, atol=1e-6, err_msg="rosenbrock dL/dy")
    assert np.allclose(got["x"][2], 0) and np.allclose(got["y"][2], 0)  # the minimum (1, 1)


def test_trajectories_run_each_optimizer_and_all_go_downhill():
    t = trajectories.trajectories(steps=200)
    assert set(t.paths) == {"gradient descent", "momentum", "RMSprop", "Adam"}
    X, Y, F = t.grid

    def f(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # only to score the result

    for name, path in t.paths.items():
        assert path.shape == (201, 2) and np.isfinite(path).all(), name
        assert np.allclose(path[0], trajectories.START), name
        assert f(path[-1]) < 0.5 * f(path[0]), f"{name} went from f={f(path[0])} to f={f(path[-1])}"
    assert F.shape == X.shape and np.isclose(F.min(), 0, atol=1e-3)
    # the first step of gradient descent is -lr * (the derived gradient at the start)
    from symgrad.derive import reference

    lr = trajectories.RUNS["gradient descent"][1]["lr"]
    step = (t.paths["gradient descent"][1] - t.paths["gradient descent"][0]) / -lr
    g = reference.vjp(derive.define("rosenbrock_start", trajectories.rosenbrock), {"g": np.ones(1)},
                      {"x": np.array([trajectories.START[0]]), "y": np.array([trajectories.START[1]])})
    assert np.allclose(step, [g["x"][0], g["y"][0]])


def test_trajectories_figure_is_a_png():
    assert figures.trajectories_figure(trajectories.trajectories(steps=20)).startswith(PNG)


# --- pages that show the pictures ------------------------------------------------------------

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page, figure", [
    ("guides/gradient-descent.md", "optimizer-trajectories.png"),
    ("guides/training.md", "gpt-loss.png"),
    ("guides/training.md", "mlp-loss.png"),
    ("guides/gpt.md", "gpt-loss.png"),
    ("guides/second-order.md", "gpt-sharpness.png"),
])
def test_page_shows_the_figure_with_alt_text(page, figure):
    md = (ROOT / "docs" / page).read_text()
    alts = [alt for alt, src in IMAGE.findall(md) if src == f"../{figures.FIGURES_DIR}/{figure}"]
    assert alts, f"docs/{page} does not show {figure}"
    assert all(len(a.split()) >= 10 for a in alts), f"docs/{page}: {figure} needs alt text saying what it shows"


def test_gpt_page_links_every_layer_the_gpt_calls():
    from symgrad import models
    from symgrad.models.graph import ParamStore

    cfg = models.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)
    g = models.gpt_graph(cfg, ParamStore(cfg.dtype), np.random.default_rng(0), 1, 4)
    used, todo = set(), [n.layer for n in g.nodes if n.layer in derive.layers()]
    while todo:  # and what they are built from: multihead_attention -> attention -> softmax
        n = todo.pop()
        if n not in used:
            used.add(n)
            todo += derive.layer(n).graph.uses
    assert {"embedding", "layernorm", "linear", "attention_heads", "attention", "softmax", "gelu_erf",
            "residual", "cross_entropy"} <= used
    md = (ROOT / "docs" / "guides" / "gpt.md").read_text()
    missing = [n for n in sorted(used) if f"](../layers/{n}.md)" not in md]
    assert not missing, f"docs/guides/gpt.md does not link the layer pages of {missing}"
    assert "<!-- symgrad:source symgrad.models.gpt:gpt_graph -->" in md and "<!-- symgrad:step gpt -->" in md


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


def test_contributing_names_the_module_of_every_model_and_every_training_task():
    md = (ROOT / "docs" / "contributing.md").read_text()
    section = md.split("## A model\n")[1].split("\n## ")[0]
    for path in sorted((ROOT / "models").glob("*.py")):
        source = path.read_text()
        if re.search(r"^class \w+\(GraphModel\)", source, re.M):
            assert f"`models/{path.name}`" in section, f"docs/contributing.md's 'A model' lacks models/{path.name}"
        for task in re.findall(r"^class (\w+)\(Task\)", source, re.M):
            assert f"`{task}`" in section, f"docs/contributing.md's 'A model' lacks {task} (models/{path.name})"


def test_contributing_lists_files_that_exist_and_where_every_layer_is_tested_and_listed():
    from tests import layers

    md = (ROOT / "docs" / "contributing.md").read_text()
    paths = set(re.findall(r"`((?:derive|compiled|models|symgrad|tests|docs)/[\w/.]+\.(?:py|md))`", md))
    assert len(paths) > 15 and "README.md" in md
    missing = [p for p in sorted(paths) if not (ROOT / p).is_file()]
    assert not missing, f"docs/contributing.md names files that do not exist: {missing}"
    assert "`tests/layers/<layer>.py`" in md, "docs/contributing.md does not say where a layer's test spec is"
    for name in layers.specified():  # a spec is read from the file the page names (a missing one
        # fails tests/derive/test_layer_specs.py)
        assert Path(layers.spec(name).__file__) == ROOT / "tests" / "layers" / f"{name}.py", name
    readme = (ROOT / "README.md").read_text()
    for name in derive.layers():
        assert f"`{name}`" in readme, f"README.md's list of built-in layers lacks {name}"
