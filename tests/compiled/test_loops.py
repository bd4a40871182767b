"""compiled/writer.py's loop layout: a row's values are locals of its loop, what an inner loop
does not change is computed outside it, cheap temporaries are recomputed instead of stored, and
a max-reduction is IEEE maximum (NaN-propagating, as np.max and derive's reference)."""

from __future__ import annotations

import re

import numpy as np

from symgrad import compiled
from symgrad import derive
from symgrad.derive import reference


def _func(source, name):
    """The code of one generated function, its docstring (the derivation's text) left out."""
    text = source.split(f"def {name}(")[1].split("\n\n\n")[0]
    return text.split('"""')[2] if '"""' in text else text


def test_row_values_are_locals_not_arrays():
    fwd = _func(compiled.kernels("softmax", "float32").source, "softmax_forward")
    # m[i] and z[i] are never allocated nor indexed: locals of the row loop
    assert not re.search(r"\bm = np\.empty|\bz = np\.empty|\bm\[|\bz\[", fwd), fwd
    assert re.search(r"^\s+m = max_x$", fwd, flags=re.M)
    ln = _func(compiled.kernels("layernorm", "float32").source, "layernorm_forward")
    # mean and rstd are outputs: stored once per row, read back as the row's local
    assert re.search(r"^\s+mean\[i\] = mean_i$", ln, flags=re.M)
    assert "rstd[i]" not in ln.split("rstd[i] = rstd_i")[1]


def test_cheap_temporary_is_recomputed_not_stored():
    ln = _func(compiled.kernels("layernorm", "float32").source, "layernorm_forward")
    assert "xc" not in ln and "np.empty" not in ln, ln  # the docstring still shows xc


def test_inner_loops_do_not_reload_row_values_or_divide():
    ce = _func(compiled.kernels("cross_entropy", "float32").source, "cross_entropy_backward")
    inner = ce.split("for k in range(V):")[1].splitlines()[1]
    # lse[n] and targets[n] are read once per row; g/N once per call
    assert "lse[" not in inner and "targets[" not in inner and "/" not in inner, inner
    sm = _func(compiled.kernels("softmax", "float32").source, "softmax_forward")
    last = [line for line in sm.splitlines() if line.strip().startswith("s[i, j] =")]
    assert last and all("/" not in line for line in last), last  # e/z: a reciprocal per row


def test_max_reduction_is_vectorizable_maximum_and_propagates_nan():
    src = compiled.kernels("softmax", "float32").source
    assert "maximum(max_x, x[i, k" in src and "llvm.maximum" in src

    def rowmax(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, k = G.indices(i=N, k=C)
        m = G.bind("m", (i,), G.max(x[i, k], k), stop_gradient=True)
        G.output(G.bind("y", (i,), m[i] * 1))

    d = derive.define("t_rowmax", rowmax)
    x = np.array([[1.0, 5.0, 2.0], [np.nan, 1.0, 2.0], [1.0, 2.0, np.nan], [-3.0, -1.0, -2.0]])
    want = reference.forward(d, {"x": x})["y"]
    for dtype in ("float64", "float32"):
        got = compiled.kernels(d, dtype).forward(x=x.astype(dtype))["y"]
        np.testing.assert_array_equal(got, want.astype(dtype))
    assert np.isnan(want[1]) and np.isnan(want[2])  # as np.max: Python's max would drop them


def test_accumulations_over_the_same_loops_share_them():
    ln = _func(compiled.kernels("layernorm", "float32").source, "layernorm_backward")
    tail = ln[ln.index("dgamma[:] = F(0)"):]
    assert tail.count("for ") == 2, tail  # one nest over (row, column) fills dgamma and dbeta


def test_chained_cheap_temporaries_are_recomputed_and_match_the_reference():
    """a = x + 1, b = a * x, y = b - a: a and b are both recomputed where read (b's reader
    sees a's expression already substituted), forward and backward as derive's reference."""
    from tests.compiled.test_kernels import _random_cases, check_layer

    def chained(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, j = G.indices(i=N, j=C)
        a = G.bind("a", (i, j), x[i, j] + 1)
        b = G.bind("b", (i, j), a[i, j] * x[i, j])
        G.output(G.bind("y", (i, j), b[i, j] - a[i, j]))

    d = derive.define("t_chained", chained)
    fwd = _func(compiled.kernels(d, "float64").source, "t_chained_forward")
    assert "np.empty" not in fwd and "a[" not in fwd and "b[" not in fwd, fwd
    check_layer(d, _random_cases(d, np.random.default_rng(4)))


def test_causal_mask_splits_the_row_instead_of_testing_each_element():
    """attention's e = [j <= i] * exp(S - m): the exps run over j <= i only, the rest of the row
    is zeroed by a loop of its own, and no element tests the mask."""
    fwd = _func(compiled.kernels("attention", "float32").source, "attention_forward")
    assert re.search(r"for (\w+) in range\(1 \+ i\):\n\s+e\[b, i, \1\] = exp32\(", fwd), fwd
    assert re.search(r"for (\w+) in range\(1 \+ i, T\):\n\s+e\[b, i, \1\] = F\(0\)", fwd), fwd
    assert "<= i" not in fwd, fwd

    def banded(G):  # the mirrored guard: j >= i
        N, = G.dims("N")
        x = G.input("x", (N, N))
        i, j = G.indices(i=N, j=N)
        G.output(G.bind("y", (i, j), derive.Iverson(j >= i) * x[i, j] ** 2))

    d = derive.define("t_upper_square", banded)
    x = np.random.default_rng(0).standard_normal((5, 5))
    src = _func(compiled.kernels(d, "float64").source, "t_upper_square_forward")
    assert ">= i" not in src and "range(i, N)" in src, src
    assert np.array_equal(compiled.kernels(d, "float64").forward(x=x)["y"], np.triu(x) ** 2)
