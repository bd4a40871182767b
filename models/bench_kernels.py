"""`symgrad bench kernels`: forward + backward of each compiled layer against its PyTorch op, at the
reference GPT's shapes (B=12, T=64, C=128, 4 heads, vocab 65; conv2d and max_pool2d at LeNet's
first layer: 32 x 1 x 28 x 28, 6 filters 5x5, 2x2 pooling), `threads` threads each side.

Each side runs in a process of its own (models.sides), built from the same seeded data; the
sides take turns in rounds, the order flipped every round, and each case reports the median of
its per-round ratios (torch ms / symgrad ms) with their spread. A symgrad case calls the layer
through `compiled.kernels(...).forward/backward`, the checked public API, into preallocated
outputs; a PyTorch case runs the op and its autograd backward.
"""

from __future__ import annotations

import statistics

import numpy as np

SHAPES = dict(B=12, T=64, C=128, H=4, V=65)
LENET = dict(N=32, C=1, O=6, S=28, K=5)


def _data(B, T, C, H, V):
    """The arrays of every case, drawn from one seed (the same in both sides' processes)."""
    rng = np.random.default_rng(0)
    f32 = np.float32

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f32)

    N, D = B * T, C // H
    d = {"linear": dict(x=r(N, C), W=r(C, 4 * C, scale=0.05), b=r(4 * C), g=r(N, 4 * C)),
         "gelu": dict(x=r(N, 4 * C), g=r(N, 4 * C)),
         "softmax": dict(x=r(B * H * T, T, scale=2.0), g=r(B * H * T, T)),
         "layernorm": dict(x=r(N, C), gamma=1 + r(C, scale=0.1), beta=r(C, scale=0.1), g=r(N, C)),
         "cross_entropy": dict(logits=r(N, V, scale=2.0), targets=rng.integers(0, V, N).astype(np.int64)),
         "attention": dict(q=r(B * H, T, D), k=r(B * H, T, D), v=r(B * H, T, D), g=r(B * H, T, D))}
    mha = dict(x=r(B, T, C), g=r(B, T, C))
    mha.update({n: r(C, H, D, scale=C ** -0.5) for n in ("Wq", "Wk", "Wv")})
    mha.update({n: r(H, D, scale=0.02) for n in ("bq", "bk", "bv")})
    mha["Wo"], mha["bo"] = r(H, D, C, scale=C ** -0.5), r(C, scale=0.02)
    d["multihead_attention"] = mha
    L = LENET
    S2 = L["S"] - L["K"] + 1
    d["conv2d"] = dict(x=r(L["N"], L["C"], L["S"], L["S"]), w=r(L["O"], L["C"], L["K"], L["K"], scale=0.2),
                       b=r(L["O"]), g=r(L["N"], L["O"], S2, S2))
    d["max_pool2d"] = dict(x=r(L["N"], L["O"], S2, S2), g=r(L["N"], L["O"], S2 // 2, S2 // 2))
    return d


NAMES = ("linear", "gelu", "softmax", "layernorm", "cross_entropy", "attention", "multihead_attention",
         "conv2d", "max_pool2d")


def symgrad_calls(threads, only=None):
    """symgrad's side: one closure per case, forward then backward of the compiled layer."""
    from symgrad import compiled
    compiled.set_threads(threads)
    d = _data(**SHAPES)
    calls = {}
    for name in only or NAMES:
        k = compiled.kernels(name, "float32")
        a = dict(d[name])
        g = a.pop("g", None)
        f = k.forward(**a)  # the outputs' shapes; then preallocated, as a training step's are
        fwd = {n: np.empty_like(v) for n, v in f.items() if isinstance(v, np.ndarray)}
        bwd = {n: np.empty_like(v) for n, v in a.items() if n in k.derivation.grads}
        up = {k.derivation.upstream(o.name): (g if g is not None else 1.0) for o in k.derivation.outputs}

        def case(k=k, a=a, fwd=fwd, bwd=bwd, up=up):
            f = k.forward(**a, out=fwd)
            k.backward(**up, **a, **f, out=bwd)
        calls[name] = case
    calls["threading_layer"] = _threading_layer
    return calls


def torch_calls(threads, only=None):
    """PyTorch's side: one closure per case, the op forward and its autograd backward."""
    import torch
    import torch.nn.functional as TF

    torch.set_num_threads(threads)
    d = _data(**SHAPES)
    B, T, C, H = SHAPES["B"], SHAPES["T"], SHAPES["C"], SHAPES["H"]
    D = C // H
    t = {name: {n: torch.from_numpy(v.copy()) for n, v in arrays.items()} for name, arrays in d.items()}
    for name, arrays in t.items():
        for n, v in arrays.items():
            if n not in ("g", "targets"):
                v.requires_grad_(True)

    def clear(name):
        for n, v in t[name].items():
            v.grad = None
        return t[name]

    def linear():
        a = clear("linear")
        torch.addmm(a["b"], a["x"], a["W"]).backward(a["g"])

    def gelu():
        a = clear("gelu")
        TF.gelu(a["x"], approximate="tanh").backward(a["g"])

    def softmax():
        a = clear("softmax")
        torch.softmax(a["x"], -1).backward(a["g"])

    def layernorm():
        a = clear("layernorm")
        TF.layer_norm(a["x"], (C,), a["gamma"], a["beta"], eps=1e-5).backward(a["g"])

    def cross_entropy():
        a = clear("cross_entropy")
        TF.cross_entropy(a["logits"], a["targets"]).backward()

    def attention():
        a = clear("attention")
        q, k, v = (a[n].view(B, H, T, D) for n in "qkv")
        TF.scaled_dot_product_attention(q, k, v, is_causal=True).backward(a["g"].view(B, H, T, D))

    def multihead_attention():
        a = clear("multihead_attention")

        def proj(w, bb):
            y = a["x"] @ a[w].reshape(C, C) + a[bb].reshape(C)
            return y.view(B, T, H, D).transpose(1, 2)
        o = TF.scaled_dot_product_attention(proj("Wq", "bq"), proj("Wk", "bk"), proj("Wv", "bv"), is_causal=True)
        (o.transpose(1, 2).reshape(B, T, C) @ a["Wo"].reshape(C, C) + a["bo"]).backward(a["g"])

    def conv2d():
        a = clear("conv2d")
        TF.conv2d(a["x"], a["w"], a["b"]).backward(a["g"])

    def max_pool2d():
        a = clear("max_pool2d")
        TF.max_pool2d(a["x"], 2).backward(a["g"])

    cases = dict(linear=linear, gelu=gelu, softmax=softmax, layernorm=layernorm, cross_entropy=cross_entropy,
                 attention=attention, multihead_attention=multihead_attention, conv2d=conv2d,
                 max_pool2d=max_pool2d)
    return {n: cases[n] for n in only or NAMES}


def _threading_layer():
    """The Numba threading layer the kernels' prange loops ran on ("-" if none ran)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel was called
        return "-"


def run(rounds=7, target_s=0.05, only=None, threads=2) -> list:
    """Per case: the two sides' median ms per call and the ratio's median and spread."""
    from .sides import Sides

    only = tuple(only) if only else NAMES
    bad = [n for n in only if n not in NAMES]
    if bad:
        raise ValueError(f"unknown kernel(s) {', '.join(bad)}; one of: {', '.join(NAMES)}")
    results = []
    with Sides({"symgrad": ("symgrad.models.bench_kernels:symgrad_calls", (threads, only)),
                "torch": ("symgrad.models.bench_kernels:torch_calls", (threads, only))}) as sides:
        layer = None
        for name in only:
            for side in sides.values():  # warm up (allocator, first calls)
                side.time(name, 3)
            n = max(3, int(target_s / max(1e-6, sides["symgrad"].time(name, 3))))
            ms = {"symgrad": [], "torch": []}
            for r in range(rounds):
                order = ("symgrad", "torch") if r % 2 == 0 else ("torch", "symgrad")
                for side in order:
                    ms[side].append(sides[side].time(name, n) * 1e3)
            ratios = [t / s for s, t in zip(ms["symgrad"], ms["torch"])]
            layer = layer or sides["symgrad"].ask("threading_layer")
            results.append({"kernel": name, "symgrad_ms": round(statistics.median(ms["symgrad"]), 4),
                            "torch_ms": round(statistics.median(ms["torch"]), 4),
                            "speedup": round(statistics.median(ratios), 3),
                            "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3),
                            "rounds": rounds, "iterations_per_round": n, "threads": threads,
                            "threading_layer": layer,
                            "sides": "each in a process of its own, taking turns in rounds (models.sides)"})
    return results


__all__ = ["run", "symgrad_calls", "torch_calls", "NAMES", "SHAPES"]
