"""Bad definitions raise a DeriveError naming the layer and the term; the CLI prints one line, exit 2.
The CLI shows the textbook forms."""

import json
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import DeriveError


def _elementwise(f):
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, j = G.indices(i=N, j=C)
        G.output(G.bind("y", (i, j), f(G, x, i, j)))
    return build


def test_undefined_function_is_named():
    f = sp.Function("mystery")
    with pytest.raises(DeriveError, match=r"bad1: .*undefined function mystery"):
        derive.define("bad1", _elementwise(lambda G, x, i, j: f(x[i, j])))


def test_inconsistent_shapes_are_named():
    def build(G):
        N, C, D = G.dims("N C D")
        x = G.input("x", (N, C))
        i, j = G.indices(i=N, j=D)
        G.output(G.bind("y", (i, j), x[i, j]))
    with pytest.raises(DeriveError, match=r"bad2: inconsistent shapes: in x\[i, j\]"):
        derive.define("bad2", build)


def test_wrong_rank_is_named():
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        (i,) = G.indices(i=N)
        G.output(G.bind("y", (i,), x[i]))
    with pytest.raises(DeriveError, match=r"bad3: 'x' has rank 2"):
        derive.define("bad3", build)


def test_max_without_stop_gradient_routes_the_gradient_to_the_first_maximum():
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, k = G.indices(i=N, k=C)
        G.output(G.bind("m", (i,), G.max(x[i, k], k)))
    d = derive.define("row_max", build)
    text = str(d.grads["x"])  # g[i] [x[i,k] >= m[i] and the max over j < k below m[i]]
    assert "g[i]" in text and "x[i, k] >= m[i]" in text and "(x[i, j]) < m[i]" in text
    from symgrad.derive import reference
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, 1.0, 5.0, 4.0]])
    dx = reference.vjp(d, {"g": np.array([1.0, 2.0, 3.0])}, {"x": x})["x"]
    np.testing.assert_array_equal(dx, [[0, 1, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]])  # ties: the first


def test_unknown_layer_lists_the_known_ones():
    with pytest.raises(DeriveError, match=r"nope: unknown layer; the built-in layers are: ") as e:
        derive.layer("nope")
    assert set(str(e.value).split(": ")[-1].split(", ")) == set(derive.layers())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "symgrad", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_unknown_layer_prints_one_line_and_exits_2():
    r = _cli("derive", "nope")
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "unknown layer" in r.stderr


def test_cli_softmax_reads_s_times_g_minus_sum_g_s():
    r = _cli("derive", "softmax")
    assert r.returncode == 0, r.stderr
    simplified = [line for line in r.stdout.splitlines() if "simplified" in line]
    assert simplified == ["  simplified  dx[i, j] = (-sum_k(g[i, k]*s[i, k]) + g[i, j])*s[i, j]"]


def test_layernorm_vjp_uses_saved_mean_and_rstd():
    d = derive.layer("layernorm")
    read = {str(ix.base.label) for ix in d.grads["x"].atoms(sp.Indexed)}
    assert read == {"x", "g", "gamma", "mean", "rstd"}
    assert not d.grads["x"].has(sp.sqrt(sp.Symbol("eps")))


def test_attention_vjp_reads_probabilities_and_matrix_products_not_exponentials():
    d = derive.layer("attention")
    for arg in "qkv":
        e = d.grads[arg]
        assert not e.has(sp.exp) and not e.atoms(derive.MaxOver), f"d{arg} recomputes the softmax"
        assert {str(ix.base.label) for ix in e.atoms(sp.Indexed)} <= {"q", "k", "v", "P", "g"}
    r = _cli("derive", "attention")
    assert "g_P[b, i, j] = sum_l(g[b, i, l]*v[b, j, l])" in r.stdout
    assert "g_S[b, i, j] = (-sum_l(P[b, i, l]*g_P[b, i, l]) + g_P[b, i, j])*P[b, i, j]" in r.stdout


def test_cli_json_gives_names_shapes_and_expressions():
    r = _cli("derive", "linear", "--format", "json")
    data = json.loads(r.stdout)
    assert [a["name"] for a in data["arguments"]] == ["x", "W", "b"]
    assert data["arguments"][1]["shape"] == ["I", "O"]
    assert set(data["grads"]) == {"x", "W", "b"}
    assert sp.sympify(0) == 0 and "Sum" in data["grads"]["W"]["srepr"]
    assert "\\sum" in data["grads"]["W"]["latex"]
