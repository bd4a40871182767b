"""multihead_attention: x projected to H heads of q, k, v (Wq, bq, ...), causal attention per
head, the heads projected back by Wo, bo."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal
from tests.layers.attention import attention_backward, attention_probs


def cases(rng):
    B, T, H, D = 2, 3, 2, 2
    C = H * D
    return [("B2 T3 H2 D2", {"x": normal(rng, B, T, C),
                             **{w: normal(rng, C, H, D, scale=0.5) for w in ("Wq", "Wk", "Wv")},
                             **{bb: normal(rng, H, D) for bb in ("bq", "bk", "bv")},
                             "Wo": normal(rng, H, D, C, scale=0.5), "bo": normal(rng, C)})]


def forward(t):
    import torch.nn.functional as F

    x = t["x"]
    B, T, C = x.shape
    H, D = t["bq"].shape

    def heads(W, b):
        return (x @ W.reshape(C, C) + b.reshape(C)).view(B, T, H, D).transpose(1, 2)

    q, k, v = heads(t["Wq"], t["bq"]), heads(t["Wk"], t["bk"]), heads(t["Wv"], t["bv"])
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = att.transpose(1, 2).reshape(B, T, C) @ t["Wo"].reshape(C, C) + t["bo"]
    return {"y": y}


def _mha(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo, mistake=None):
    q = np.einsum("bia,ahc->bhic", x, Wq) + bq[None, :, None, :]
    k = np.einsum("bia,ahc->bhic", x, Wk) + bk[None, :, None, :]
    v = np.einsum("bia,ahc->bhic", x, Wv) + bv[None, :, None, :]
    B, H, T, D = q.shape
    flat = lambda a: a.reshape(B * H, T, D)  # noqa: E731
    P = attention_probs(flat(q), flat(k), flat(v))
    att = (P @ flat(v)).reshape(B, H, T, D)
    datt = np.einsum("bif,hcf->bhic", g, Wo)
    dq, dk, dv = (a.reshape(B, H, T, D) for a in attention_backward(
        flat(datt), flat(q), flat(k), flat(v), scale_bwd=mistake != "no_scale"))
    out = {"Wo": np.einsum("bhic,bif->hcf", att, g), "bo": g.sum((0, 1))}
    for n, d, W in (("q", dq, Wq), ("k", dk, Wk), ("v", dv, Wv)):
        out["W" + n] = np.einsum("bia,bhic->ahc", x, d)
        out["b" + n] = d.sum((0, 2))
    paths = [("q", dq, Wq)] if mistake == "q_path_only" else [("q", dq, Wq), ("k", dk, Wk), ("v", dv, Wv)]
    out["x"] = sum(np.einsum("bhic,ahc->bia", d, W) for _, d, W in paths)
    return out


def _mha_grad(name, mistake=None):
    def grad(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo):
        return _mha(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo, mistake)[name]
    grad.__name__ = f"multihead_attention_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


RIGHT = [(n, _mha_grad(n), "einsum per head") for n in ("x", "Wq", "Wk", "Wv", "bq", "bk", "bv", "Wo", "bo")]
WRONG = [("x", _mha_grad("x", "q_path_only"), "k and v paths missing"),
         ("Wq", _mha_grad("Wq", "no_scale"), "scale left out")]
VERIFY_TRIALS = 1  # the reference is slow
