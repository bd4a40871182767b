"""`symgrad kernels NAME [--dtype D] [--show]` and `symgrad bench kernels [--json]`.

`kernels` prints where a layer's generated kernel module lives (building it if needed) and, with
`--show`, its source. `bench kernels` times forward+backward of the compiled kernels against
PyTorch eager at the GPT reference shapes (B=12, T=64, C=128, 4 heads, vocab 65), 2 threads
each (the kernels' prange loops, the BLAS under them, PyTorch's intra-op pool), in interleaved
alternating rounds (these machines switch between a fast and a slow
2-thread regime for minutes at a time, so only a ratio measured within one round means
anything); it reports the median of the per-round ratios and their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

THREADS = 2


def kernels_main(argv) -> int:
    import derive  # the help names the built-in layers (as `symgrad derive --help` does)

    p = argparse.ArgumentParser(prog="symgrad kernels",
                                description="Where a layer's compiled kernel lives; --show prints it.")
    p.add_argument("name", help=f"a built-in layer: {', '.join(derive.layers())}")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--show", action="store_true", help="print the generated source")
    a = p.parse_args(argv)
    import compiled
    try:
        k = compiled.kernels(a.name, a.dtype)
    except (derive.DeriveError, compiled.KernelError) as e:
        print(f"symgrad kernels: {e}", file=sys.stderr)
        return 2
    if a.show:
        print(k.source, end="")
    else:
        print(k.source_path)
    return 0


# --- benchmark ------------------------------------------------------------------------------

def _limit_threads(threads=THREADS):
    """Both sides get `threads` threads: Numba's prange loops, and the BLAS under Numba's np.dot
    (SciPy's OpenBLAS reads OPENBLAS_NUM_THREADS when it loads, so this runs before any import
    of it). Numba's pool is limited with numba.set_num_threads, not NUMBA_NUM_THREADS: once a
    kernel has started the pool, a changed NUMBA_NUM_THREADS makes Numba refuse to compile."""
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(v, str(threads))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    import compiled  # OpenBLAS may be loaded already (derive imports SciPy): set it directly
    compiled.set_threads(threads)  # Numba's pool (numba.set_num_threads), OpenBLAS, MKL


def _cases(B=12, T=64, C=128, H=4, V=65):
    """(name, symgrad closure, torch closure) per kernel; each closure runs forward+backward."""
    import numpy as np
    import torch
    import torch.nn.functional as TF

    import compiled

    rng = np.random.default_rng(0)
    f32 = np.float32
    N = B * T
    out = []

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f32)

    def tt(a, grad=True):
        return torch.from_numpy(a.copy()).requires_grad_(grad)

    # linear C -> 4C (the MLP's first projection)
    k = compiled.kernels("linear", "float32")
    x, W, b, g = r(N, C), r(C, 4 * C, scale=0.05), r(4 * C), r(N, 4 * C)
    fo = {"y": np.empty((N, 4 * C), f32)}
    bo = {"x": np.empty_like(x), "W": np.empty_like(W), "b": np.empty_like(b)}

    def sg_linear():
        y = k.forward(x=x, W=W, b=b, out=fo)["y"]
        k.backward(g=g, x=x, W=W, b=b, y=y, out=bo)
    tx, tW, tb, tg = tt(x), tt(W), tt(b), torch.from_numpy(g)

    def th_linear():
        tx.grad = tW.grad = tb.grad = None
        torch.addmm(tb, tx, tW).backward(tg)
    out.append(("linear", sg_linear, th_linear))

    # gelu on the MLP hidden layer
    k_gelu = compiled.kernels("gelu", "float32")
    xg, gg = r(N, 4 * C), r(N, 4 * C)
    fog = {o.name: np.empty((N, 4 * C), f32) for o in k_gelu.derivation.saved}
    bog = {"x": np.empty_like(xg)}

    def sg_gelu():
        f = k_gelu.forward(x=xg, out=fog)
        k_gelu.backward(g=gg, x=xg, **f, out=bog)
    txg, tgg = tt(xg), torch.from_numpy(gg)

    def th_gelu():
        txg.grad = None
        TF.gelu(txg, approximate="tanh").backward(tgg)
    out.append(("gelu", sg_gelu, th_gelu))

    # softmax over attention rows: (B*H*T, T)
    k_sm = compiled.kernels("softmax", "float32")
    xs, gs = r(B * H * T, T, scale=2.0), r(B * H * T, T)
    fos, bos = {"s": np.empty_like(xs)}, {"x": np.empty_like(xs)}

    def sg_softmax():
        s = k_sm.forward(x=xs, out=fos)["s"]
        k_sm.backward(g=gs, s=s, out=bos)
    txs, tgs = tt(xs), torch.from_numpy(gs)

    def th_softmax():
        txs.grad = None
        torch.softmax(txs, -1).backward(tgs)
    out.append(("softmax", sg_softmax, th_softmax))

    # layernorm over C
    k_ln = compiled.kernels("layernorm", "float32")
    xl, gam, bet, gl = r(N, C), 1 + r(C, scale=0.1), r(C, scale=0.1), r(N, C)
    eps = next(a.default for a in k_ln.derivation.constants if a.name == "eps")
    fol = {}
    bol = {"x": np.empty_like(xl), "gamma": np.empty_like(gam), "beta": np.empty_like(bet)}

    def sg_layernorm():
        f = k_ln.forward(x=xl, gamma=gam, beta=bet)
        k_ln.backward(g=gl, x=xl, gamma=gam, beta=bet, **f, out=bol)
    txl, tgam, tbet, tgl = tt(xl), tt(gam), tt(bet), torch.from_numpy(gl)

    def th_layernorm():
        txl.grad = tgam.grad = tbet.grad = None
        TF.layer_norm(txl, (C,), tgam, tbet, eps=float(eps)).backward(tgl)
    out.append(("layernorm", sg_layernorm, th_layernorm))
    del fol

    # cross-entropy over the vocabulary
    k_ce = compiled.kernels("cross_entropy", "float32")
    ce_args = {a.name for a in k_ce.derivation.arguments}
    logits = r(N, V, scale=2.0)
    targets = rng.integers(0, V, N).astype(np.int64)
    tname = "targets" if "targets" in ce_args else next(a.name for a in k_ce.derivation.arguments if a.integer)
    boc = {"logits": np.empty_like(logits)}

    def sg_ce():
        f = k_ce.forward(logits=logits, **{tname: targets})
        k_ce.backward(g=1.0, logits=logits, **{tname: targets}, **f, out=boc)
    tlog, ttar = tt(logits), torch.from_numpy(targets)

    def th_ce():
        tlog.grad = None
        TF.cross_entropy(tlog, ttar).backward()
    out.append(("cross_entropy", sg_ce, th_ce))

    # causal attention per sequence, as the GPT runs it: q, k, v (B*H, T, D)
    D = C // H
    k_at = compiled.kernels("attention", "float32")
    qa, ka, va, ga = (r(B * H, T, D) for _ in range(4))
    foa = {"P": np.empty((B * H, T, T), f32), "y": np.empty_like(qa)}
    boa = {n: np.empty_like(qa) for n in ("q", "k", "v")}

    def sg_attention():
        f = k_at.forward(q=qa, k=ka, v=va, out=foa)
        k_at.backward(g=ga, q=qa, k=ka, v=va, P=f["P"], out=boa)
    tqa, tka, tva = (tt(a.reshape(B, H, T, D)) for a in (qa, ka, va))
    tga = torch.from_numpy(ga.reshape(B, H, T, D))

    def th_attention():
        tqa.grad = tka.grad = tva.grad = None
        TF.scaled_dot_product_attention(tqa, tka, tva, is_causal=True).backward(tga)
    out.append(("attention", sg_attention, th_attention))

    # causal multi-head attention with its projections
    k_mha = compiled.kernels("multihead_attention", "float32")
    xm, gm = r(B, T, C), r(B, T, C)
    mp = {n: r(C, H, D, scale=C ** -0.5) for n in ("Wq", "Wk", "Wv")}
    mp.update({n: r(H, D, scale=0.02) for n in ("bq", "bk", "bv")})
    mp["Wo"], mp["bo"] = r(H, D, C, scale=C ** -0.5), r(C, scale=0.02)

    def sg_mha():
        f = k_mha.forward(x=xm, **mp)
        k_mha.backward(g=gm, x=xm, **mp, **f)
    tp = {n: tt(v) for n, v in mp.items()}
    txm, tgm = tt(xm), torch.from_numpy(gm)

    def th_mha():
        txm.grad = None
        for v in tp.values():
            v.grad = None
        def proj(w, bb):
            y = txm @ tp[w].reshape(C, C) + tp[bb].reshape(C)
            return y.view(B, T, H, D).transpose(1, 2)
        q, kk, v = proj("Wq", "bq"), proj("Wk", "bk"), proj("Wv", "bv")
        o = TF.scaled_dot_product_attention(q, kk, v, is_causal=True)
        y = o.transpose(1, 2).reshape(B, T, C) @ tp["Wo"].reshape(C, C) + tp["bo"]
        y.backward(tgm)
    out.append(("multihead_attention", sg_mha, th_mha))

    # LeNet's first convolution and pooling: 32 images 28x28, 6 filters 5x5, then 2x2 max pooling
    Nc, Cc, Oc, S, K = 32, 1, 6, 28, 5
    k_cv = compiled.kernels("conv2d", "float32")
    xc, wc, bc, gc = r(Nc, Cc, S, S), r(Oc, Cc, K, K, scale=0.2), r(Oc), r(Nc, Oc, S - K + 1, S - K + 1)
    boc2 = {"x": np.empty_like(xc), "w": np.empty_like(wc), "b": np.empty_like(bc)}

    def sg_conv2d():
        f = k_cv.forward(x=xc, w=wc, b=bc)
        k_cv.backward(g=gc, x=xc, w=wc, b=bc, **f, out=boc2)
    txc, twc, tbc, tgc = tt(xc), tt(wc), tt(bc), torch.from_numpy(gc)

    def th_conv2d():
        txc.grad = twc.grad = tbc.grad = None
        TF.conv2d(txc, twc, tbc).backward(tgc)
    out.append(("conv2d", sg_conv2d, th_conv2d))

    k_mp = compiled.kernels("max_pool2d", "float32")
    S2 = S - K + 1
    xp, gp = r(Nc, Oc, S2, S2), r(Nc, Oc, S2 // 2, S2 // 2)
    bop = {"x": np.empty_like(xp)}

    def sg_max_pool2d():
        f = k_mp.forward(x=xp)
        k_mp.backward(g=gp, x=xp, **f, out=bop)
    txp, tgp = tt(xp), torch.from_numpy(gp)

    def th_max_pool2d():
        txp.grad = None
        TF.max_pool2d(txp, 2).backward(tgp)
    out.append(("max_pool2d", sg_max_pool2d, th_max_pool2d))
    return out


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def bench(rounds=7, target_s=0.05, only=None, threads=THREADS):
    import torch
    torch.set_num_threads(threads)
    results = []
    for name, sg, th in _cases():
        if only and name not in only:
            continue
        for _ in range(3):  # warm up (compile, allocator)
            sg()
            th()
        n = max(3, int(target_s / max(1e-6, _time(sg, 3) / 1e3)))
        sgs, ths, ratios = [], [], []
        for r in range(rounds):
            pair = [(sg, sgs), (th, ths)] if r % 2 == 0 else [(th, ths), (sg, sgs)]
            for fn, acc in pair:
                acc.append(_time(fn, n))
            ratios.append(ths[-1] / sgs[-1])
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        results.append({"kernel": name, "symgrad_ms": round(statistics.median(sgs), 4),
                        "torch_ms": round(statistics.median(ths), 4),
                        "speedup": round(statistics.median(ratios), 3),
                        "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3),
                        "speedup_iqr": [round(q[0], 3), round(q[2], 3)], "rounds": rounds,
                        "iterations_per_round": n, "threads": threads,
                        "threading_layer": _threading_layer()})
    return results


def _threading_layer():
    """The Numba threading layer the kernels' prange loops ran on ("-" if none ran)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel was called
        return "-"


def bench_main(argv) -> int:
    p = argparse.ArgumentParser(prog="symgrad bench kernels",
                                description="Forward+backward of the compiled kernels vs PyTorch eager "
                                            "(B=12, T=64, C=128, 4 heads, vocab 65; conv2d and max_pool2d at LeNet's "
                                            "first layer: 32 x 1 x 28 x 28, 6 filters 5x5, 2x2 pooling; 2 threads each "
                                            "unless --threads).")
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", nargs="*", help="kernels to run (default: all)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="threads for each side (1 gives stable ratios on a busy machine)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be at least 1")
    _limit_threads(a.threads)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("symgrad bench kernels: PyTorch is needed as the peer (pip install torch==2.13.0)",
              file=sys.stderr)
        return 2
    res = bench(a.rounds, only=a.only, threads=a.threads)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{'kernel':22s} {'symgrad ms':>11s} {'torch ms':>9s} {'speedup':>8s}  spread (min..max over "
          f"{a.rounds} interleaved rounds, {a.threads} thread{'s' if a.threads > 1 else ''} each; "
          f"Numba threading layer {_threading_layer()})")
    for r in res:
        print(f"{r['kernel']:22s} {r['symgrad_ms']:11.3f} {r['torch_ms']:9.3f} {r['speedup']:7.2f}x  "
              f"{r['speedup_min']:.2f}..{r['speedup_max']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main(sys.argv[1:]))
