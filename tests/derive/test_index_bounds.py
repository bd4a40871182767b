"""Issue #11, item 2: an index expression (x[i+1, j], a convolution's x[n, c, i + k]) is proved
inside its axis from the declared extents, or the definition is refused with one line naming the
layer, the tensor and the index. The checker (derive.indices) is also tested on its own."""

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import DeriveError, Iverson, reference
from tests.derive.kernel_check import assert_kernels_match_finite_differences, random_args
from tests.gradcheck import assert_close, central_differences


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))


def _rows(extent, read):
    """y[i, j] = read(x, i, j) with i over `extent(N)` and x of shape (N, C)."""
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, j = G.indices(i=extent(N), j=C)
        G.output(G.bind("y", (i, j), read(x, i, j)))
    return build


def _conv(extent):
    """A valid 1-D convolution y[n, c, i] = sum_k x[n, c, i + k] w[c, k], i over extent(W, K)."""
    def build(G):
        N, C, W, K = G.dims("N C W K")
        x = G.input("x", (N, C, W))
        w = G.param("w", (C, K))
        n, c, i, k = G.indices(n=N, c=C, i=extent(W, K), k=K)
        G.output(G.bind("y", (n, c, i), G.sum(x[n, c, i + k] * w[c, k], k)))
    return build


def _reference_gradients_match_finite_differences(d, args, rng):
    outs = reference.forward(d, args)
    ups = {d.upstream(o.name): rng.standard_normal(np.shape(outs[o.name])) for o in d.outputs}
    got = reference.vjp(d, ups, args)

    def loss(a):
        f = reference.forward(d, a)
        return sum(float(np.sum(ups[d.upstream(o.name)] * f[o.name])) for o in d.outputs)

    for arg, value in got.items():
        assert_close(d.name, arg, value, central_differences(loss, args, arg), 1e-7, "central differences")


def test_offset_read_past_the_end_is_refused_naming_layer_tensor_and_index():
    with pytest.raises(DeriveError, match=r"^shift: binding 'y' reads x\[i \+ 1, j\]: index i \+ 1 "
                                          r"\(axis 0\) is not provably in \[0, N\)"):
        derive.define("shift", _rows(lambda N: N, lambda x, i, j: x[i + 1, j]))
    with pytest.raises(DeriveError, match=r"^back: binding 'y' reads x\[i - 1, j\]: index i - 1"):
        derive.define("back", _rows(lambda N: N, lambda x, i, j: x[i - 1, j]))


def test_offset_read_within_a_narrower_range_is_accepted_and_its_kernels_never_read_past_the_end():
    d = derive.define("diff_rows", _rows(lambda N: N - 1, lambda x, i, j: x[i + 1, j] - x[i, j]))
    rng = np.random.default_rng(0)
    # x is a view whose next row holds NaN: a read past the end would show
    big = np.full((5, 3), np.nan)
    big[:4] = rng.standard_normal((4, 3))
    from symgrad import compiled
    y = compiled.kernels(d, dtype="float64").forward(x=big[:4])["y"]
    np.testing.assert_allclose(y, np.diff(big[:4], axis=0), rtol=0, atol=1e-15)
    assert_kernels_match_finite_differences(d, {"x": rng.standard_normal((4, 3))}, rng)


def _prev_row():
    return derive.define("prev_row", _rows(lambda N: N,
                                           lambda x, i, j: x[i - 1, j] * Iverson(i >= 1) + x[i, j]))


def test_offset_read_guarded_by_an_iverson_bracket_is_accepted():
    d = _prev_row()
    rng = np.random.default_rng(1)
    _reference_gradients_match_finite_differences(d, {"x": rng.standard_normal((4, 3))}, rng)


def test_offset_read_guarded_by_an_iverson_bracket_compiles_to_a_correct_backward():
    rng = np.random.default_rng(1)
    assert_kernels_match_finite_differences(_prev_row(), {"x": rng.standard_normal((4, 3))}, rng)


def test_convolution_window_index_is_proved_in_range_from_symbolic_extents():
    d = derive.define("conv1d", _conv(lambda W, K: W - K + 1))
    rng = np.random.default_rng(2)
    args = random_args(d, {sp.Symbol(n, integer=True, positive=True): v
                           for n, v in {"N": 2, "C": 2, "W": 6, "K": 3}.items()}, rng)
    _reference_gradients_match_finite_differences(d, args, rng)
    assert_kernels_match_finite_differences(d, args, rng)


def test_convolution_window_one_past_the_valid_range_is_refused():
    with pytest.raises(DeriveError, match=r"^conv_bad: binding 'y' reads x\[n, c, i \+ k\]: index i \+ k "
                                          r"\(axis 2\) is not provably in \[0, W\)"):
        derive.define("conv_bad", _conv(lambda W, K: W - K + 2))


def test_index_that_is_not_affine_is_refused():
    with pytest.raises(DeriveError, match=r"^squares: binding 'y' reads x\[i\*\*2, j\]"):
        derive.define("squares", _rows(lambda N: N, lambda x, i, j: x[i * i, j]))


def test_reversed_and_strided_and_causal_reads_are_proved_in_range():
    def build(G):
        N, T, W = G.dims("N T W")
        x = G.input("x", (N, T))
        z = G.input("z", (N, 2 * W))
        n, i, j, u = G.indices(n=N, i=T, j=T, u=W)
        G.bind("rev", (n, i), x[n, T - 1 - i])
        G.bind("pool", (n, u), z[n, 2 * u] + z[n, 2 * u + 1])
        G.output(G.bind("causal", (n, i), G.sum(x[n, i - j], j, 0, i)))
    derive.define("reads", build)


# --- the checker on its own -------------------------------------------------------------------

N, W, K = sp.symbols("N W K", integer=True, positive=True)
i, k, p = sp.symbols("i k p", integer=True)
x = sp.IndexedBase("x")


def _check(expr, free, shapes):
    from symgrad.derive import indices

    indices.check_reads("t", "expr", expr, free, shapes, {"N", "W", "K"})


def test_checker_proves_a_window_from_the_nonempty_range_of_the_outer_index():
    _check(sp.Sum(x[i + k], (k, 0, K - 1)), {i: W - K + 1}, {"x": (W,)})
    with pytest.raises(DeriveError, match=r"index i \+ k"):
        _check(sp.Sum(x[i + k], (k, 0, K)), {i: W - K + 1}, {"x": (W,)})


def test_checker_uses_iverson_and_piecewise_guards_only_where_they_guard_the_read():
    _check(x[p - 1] * Iverson(sp.And(p >= 1, p <= N)), {p: N + 1}, {"x": (N,)})
    _check(sp.Piecewise((x[p - 1], p >= 1), (0, True)), {p: N}, {"x": (N,)})
    with pytest.raises(DeriveError, match=r"index p - 1"):
        _check(x[p - 1] + Iverson(p >= 1), {p: N}, {"x": (N,)})


def test_checker_refuses_an_index_that_nothing_binds():
    stray = sp.Symbol("w_i_", integer=True)
    with pytest.raises(DeriveError, match=r"^t: expr uses the index w_i_, which no sum and no index"):
        _check(x[stray], {p: N}, {"x": (N,)})


def test_checker_leaves_a_gather_to_the_runtime_id_check():
    ids = sp.IndexedBase("ids")
    _check(x[ids[p]], {p: N}, {"x": (W,), "ids": (N,)})


def test_checker_proves_a_strided_window_over_a_floor_extent():
    """stride 2: i over floor((W - K)/2) + 1, read x[2 i + k] (floor(a) <= a bounds it)."""
    _check(sp.Sum(x[2 * i + k], (k, 0, K - 1)), {i: sp.floor((W - K) / 2) + 1}, {"x": (W,)})
    with pytest.raises(DeriveError, match=r"index 2\*i \+ k"):
        _check(sp.Sum(x[2 * i + k], (k, 0, K - 1)), {i: sp.floor((W - K) / 2) + 2}, {"x": (W,)})


def test_checker_narrows_by_a_guard_with_a_stride_coefficient():
    """Zero padding at stride 2: [0 <= 2 i + k - 1 <= W - 1] bounds k and, with 1/2, i."""
    pos = 2 * i + k - 1
    guard = Iverson(sp.And(pos >= 0, pos <= W - 1))
    _check(sp.Sum(x[pos] * guard, (k, 0, K - 1)), {i: sp.floor((W - K + 1) / 2) + 1}, {"x": (W,)})
    with pytest.raises(DeriveError, match=r"index 2\*i \+ k - 1"):
        _check(sp.Sum(x[pos] * Iverson(pos <= W - 1), (k, 0, K - 1)), {i: W}, {"x": (W,)})
