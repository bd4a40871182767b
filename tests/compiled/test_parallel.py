"""compiled/: which loops are printed as prange, and that the parallel copy of a loop computes what
the serial copy does.

A generated kernel holds each independent outermost loop twice, `prange` behind
`if <work> >= PARALLEL_MIN` and `range` after `else`; these tests build the same source with
PARALLEL_MIN forced to 0 (every such loop parallel) and to a size no call reaches (all serial),
and compare both, in float64, with derive's reference evaluator.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
import sympy as sp

from symgrad import compiled
from symgrad import derive
from symgrad.compiled import build
from symgrad.derive import reference

pytestmark = pytest.mark.skipif(build.PARALLEL_MIN is None,
                                reason="no TBB threading layer: the kernels print no prange")

ALWAYS, NEVER = 0, 10 ** 15


def _with_threshold(k, threshold, tmp_path, tag):
    """The kernel module of k with PARALLEL_MIN replaced, imported from its own file."""
    src, n = re.subn(r"^PARALLEL_MIN = .*$", f"PARALLEL_MIN = {threshold}", k.source, flags=re.M)
    assert n == 1
    path = tmp_path / f"{k.name}_{tag}.py"
    path.write_text(src)
    name = f"symgrad_parallel_test_{k.name}_{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _call(module, func_spec, args, subs):
    """Call one generated function with the api's argument order (outputs allocated here, NaN
    filled, so an element the kernel does not write shows)."""
    call, outs = [], {}
    for p in func_spec.params:
        if p.kind == "dim":
            call.append(int(subs[next(x for x in subs if str(x) == p.name)]))
        elif p.kind == "out":
            shape = tuple(int(sp.sympify(x).subs(subs)) for x in p.shape)
            outs[p.name] = np.full(shape, np.nan)
            call.append(outs[p.name])
        elif p.kind == "const" and p.name not in args:
            call.append(np.float64(p.default))
        else:
            call.append(args[p.name])
    ret = getattr(module, func_spec.func)(*call)
    for n_, r in enumerate(func_spec.returns):
        outs[r] = float(ret[n_])
    return outs


def _loops(source, func):
    """{loop index: 'prange' | 'range'} of the outermost loops of one generated function, and
    the body text of each prange loop."""
    body = source.split(f"def {func}(")[1].split("\n\n\n")[0]
    par = re.findall(r"^        for (\w+) in prange\(", body, flags=re.M)
    return body, par


# --- where prange is printed ----------------------------------------------------------------

def test_row_loops_are_printed_as_prange_behind_a_size_test():
    for name, func, index in (("softmax", "softmax_forward", "i"), ("softmax", "softmax_backward", "i"),
                              ("layernorm", "layernorm_forward", "i"),
                              ("layernorm", "layernorm_backward", "i"),
                              ("cross_entropy", "cross_entropy_forward", "n1"),
                              ("cross_entropy", "cross_entropy_backward", "n")):
        src = compiled.kernels(name, "float32").source
        body, par = _loops(src, func)
        assert par == [index], f"{func}: prange loops {par}"
        assert "parallel=PRANGE_ONLY" in src.split(f"def {func}(")[0].splitlines()[-1]
        # the serial copy follows, behind the same test
        assert re.search(r"if .* >= PARALLEL_MIN and pool_threads\(\) > 1:.*\n"
                         r"        for \w+ in prange\(", body)
        assert re.search(r"\n    else:.*\n        for \w+ in range\(", body)


def test_attention_runs_each_sequence_on_one_thread_products_included():
    """A batch element's products and row loops run together on one thread: S[b] = q[b] k[b].T,
    its softmax rows and y[b] = P[b] v[b] inside one prange over b, each product on the calling
    thread (MKL is sequential); measured (48 x 64 x 64, 2 threads): forward 633 -> 464 us,
    backward 765 -> 469 us against per-b products on MKL's two threads between parallel row
    loops."""
    if compiled.blas.backend() != "mkl":
        pytest.skip("products on the calling thread need MKL (sequential)")
    src = compiled.kernels("attention", "float32").source
    for func, first, last in (("attention_forward", "gemm(q[b], k[b].T, S[b], alpha)", "gemm(P[b], v[b], y[b])"),
                              ("attention_backward", "gemm(g[b], v[b].T, mm0[b])", "gemm(P[b].T, g[b], dv[b])")):
        body, par = _loops(src, func)
        assert par == ["b"], f"{func}: prange loops {par}"
        loop = body.split("for b in prange(B):")[1].split("else:")[0]
        assert loop.strip().startswith(first) and loop.strip().endswith(last), loop
        assert body.count("gemm(") == 2 * loop.count("gemm("), body  # none outside the two copies


def test_linear_products_run_in_row_blocks_with_the_bias_add_inside():
    """A product with no batch index is split into row blocks of its output, one per thread,
    each product on the calling thread; the bias add runs over the rows its thread just
    computed; the backward's dx and dW, which read nothing of each other, share one loop."""
    if compiled.blas.backend() != "mkl":
        pytest.skip("products on the calling thread need MKL (sequential)")
    src = compiled.kernels("linear", "float32").source
    body, par = _loops(src, "linear_forward")
    assert par == ["block"], par
    block = body.split("for block in prange(threads):")[1].split("else:")[0]
    assert re.search(r"gemm\(x\[n_lo:n_hi\], W, y\[n_lo:n_hi\]\)\n\s+for n in range\(n_lo, n_hi\):\n.*\n"
                     r"\s+y\[n, j\] = b\[j\] \+ y\[n, j\]", block), block
    body, par = _loops(src, "linear_backward")
    assert par == ["block"], par
    block = body.split("for block in prange(threads):")[1].split("else:")[0]
    assert "gemm(g[n_lo:n_hi], W.T, dx[n_lo:n_hi])" in block, block
    assert re.search(r"gemm\(x\.T\[(\w+):(\w+)\], g, dW\[\1:\2\]\)", block), block


def test_no_prange_where_a_reduction_crosses_iterations():
    ce = compiled.kernels("cross_entropy", "float32").source
    fwd = ce.split("def cross_entropy_forward(")[1].split("\n\n\n")[0]
    # the loss sums over rows into one scalar: it stays a plain loop after the parallel row loop
    tail = fwd.split("else:")[1]
    assert re.search(r"\n    for n in range\(N\):\n        sum_\w+ \+= ", tail), fwd
    assert "prange" not in tail
    ln = compiled.kernels("layernorm", "float32").source
    bwd = ln.split("def layernorm_backward(")[1].split("\n\n\n")[0]
    # dgamma[j], dbeta[j] sum over the rows: the loop over the rows accumulates, never prange
    acc = bwd[bwd.index("dgamma[:] = F(0)"):]
    assert "prange" not in acc and re.search(r"for \w+ in range\(N\):", acc)
    if "embedding" in derive.layers():
        try:
            emb = compiled.kernels("embedding", "float32").source
        except derive.DeriveError:
            emb = None
        if emb is not None:  # the scatter-add into rows ids[n] may collide across n
            assert "prange" not in emb.split("def embedding_backward(")[1]


def test_small_calls_never_enter_the_parallel_branch():
    """Batch-1 sampling sizes sit far below PARALLEL_MIN: the serial copy runs."""
    d = derive.layer("softmax")
    k = compiled.kernels(d, "float64")
    test = re.search(r"if (.*) >= PARALLEL_MIN and", k.source.split("def softmax_forward(")[1]).group(1)
    assert test.replace(" ", "") in ("N*n", "n*N") or "N" in test
    assert eval(test, {"N": 4, "n": 65}) < build.PARALLEL_MIN


# --- parallel copy == serial copy == reference ------------------------------------------------

CASES = {
    "softmax": {"x": (600, 70)},
    "log_softmax": {"x": (600, 70)},
    "layernorm": {"x": (500, 96), "gamma": (96,), "beta": (96,)},
    "cross_entropy": {"logits": (700, 65)},
    "attention": {"q": (6, 16, 8), "k": (6, 16, 8), "v": (6, 16, 8)},  # products on one thread each
    "linear": {"x": (37, 20), "W": (20, 13), "b": (13,)},  # row blocks of uneven sizes
    # dW's rows are H + I: a block's first row is block * (H + I) // threads (printed without the
    # parentheses once, which wrote past dW)
    "lstm_cell": {"x": (37, 5), "h_prev": (37, 6), "c_prev": (37, 6), "W": (11, 4, 6), "b": (4, 6)},
}


@pytest.mark.parametrize("name", [n for n in CASES if n in derive.layers()])
def test_parallel_copy_matches_serial_copy_and_reference_in_float64(name, tmp_path):
    d = derive.layer(name)
    k = compiled.kernels(d, "float64")
    if "prange(" not in k.source:
        pytest.skip(f"{name}: no prange loop")
    rng = np.random.default_rng(7)
    args = {}
    for a in d.arguments:
        if a.role == "const":
            continue
        if a.integer:
            rows, vocab = CASES[name]["logits"]
            args[a.name] = rng.integers(0, vocab, rows).astype(np.int64)
        else:
            args[a.name] = rng.standard_normal(CASES[name][a.name]) * 2.0
    subs = {}
    for a in d.arguments:
        if a.name in args and not a.integer:
            for s_, n in zip(a.shape, args[a.name].shape):
                if sp.sympify(s_).is_Symbol:
                    subs[sp.sympify(s_)] = n
    ref = reference.forward(d, args)
    ups = {d.upstream(o.name): (rng.standard_normal(np.shape(ref[o.name])) if np.ndim(ref[o.name])
                                else 0.7) for o in d.outputs}
    want = reference.vjp(d, ups, args)
    fwd_spec, bwd_spec = k._fwd.spec, k._bwd.spec

    def run(mod):
        f = _call(mod, fwd_spec, args, subs)
        g = _call(mod, bwd_spec, {**args, **ups, **f}, subs)
        return f, g

    fp, gp = run(_with_threshold(k, ALWAYS, tmp_path, "par"))
    fs, gs = run(_with_threshold(k, NEVER, tmp_path, "ser"))
    for b in fp:
        np.testing.assert_allclose(fp[b], fs[b], rtol=1e-13, atol=1e-13, err_msg=f"{name} forward {b}")
        np.testing.assert_allclose(fp[b], ref[b], rtol=1e-12, atol=1e-12, err_msg=f"{name} forward {b}")
    for a in want:
        got_p, got_s = gp["d" + a], gs["d" + a]
        np.testing.assert_allclose(got_p, got_s, rtol=1e-13, atol=1e-13, err_msg=f"{name} d{a}")
        np.testing.assert_allclose(got_p, want[a], rtol=1e-12, atol=1e-12, err_msg=f"{name} d{a}")


def test_a_call_above_the_threshold_goes_through_the_parallel_copy_and_matches():
    """The real threshold, through compiled.kernels: a softmax big enough for the threads, with
    two threads and with one (numba.set_num_threads(1): the serial copy)."""
    import numba
    before = numba.get_num_threads()
    try:
        for n in (min(2, numba.config.NUMBA_NUM_THREADS), 1):
            numba.set_num_threads(n)
            _big_softmax()
    finally:
        numba.set_num_threads(before)


def _big_softmax():
    k = compiled.kernels("softmax", "float64")
    rows = build.PARALLEL_MIN // 64 + 8
    x = np.random.default_rng(1).standard_normal((rows, 64)) * 3
    s = k.forward(x=x)["s"]
    want = np.exp(x - x.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(s, want, rtol=1e-13, atol=1e-15)
    g = np.random.default_rng(2).standard_normal(x.shape)
    dx = k.backward(g=g, s=s)["x"]
    np.testing.assert_allclose(dx, (g - (g * s).sum(1, keepdims=True)) * s, rtol=1e-12, atol=1e-14)
