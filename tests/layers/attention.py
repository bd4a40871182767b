"""attention: causal scaled dot-product attention, y = softmax(q k^T / sqrt(D), masked) v, per batch."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal, softmax


def cases(rng):
    return [("B2 T4 d3", {n: normal(rng, 2, 4, 3) for n in "qkv"}),
            ("T1", {n: normal(rng, 1, 1, 2) for n in "qkv"}),
            ("large scores", {"q": normal(rng, 1, 3, 2, scale=8.0), "k": normal(rng, 1, 3, 2, scale=8.0),
                              "v": normal(rng, 1, 3, 2)})]


def forward(t):
    import torch.nn.functional as F
    return {"y": F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True)}


def attention_probs(q, k, v, causal=True, scale=True):
    """P = softmax(q k^T (/ sqrt(D)), causally masked): (B, T, T)."""
    B, T, D = q.shape
    S = q @ k.transpose(0, 2, 1)
    if scale:
        S = S / np.sqrt(D)
    if causal:
        S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
    P = softmax(S)
    return P


def attention_backward(g, q, k, v, causal=True, scale_fwd=True, scale_bwd=True, transpose_dk=True):
    """(dq, dk, dv) in matrix form; the keywords make the plausible mistakes."""
    D = q.shape[-1]
    P = attention_probs(q, k, v, causal, scale_fwd)
    dv = P.transpose(0, 2, 1) @ g
    dP = g @ v.transpose(0, 2, 1)
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    c = 1 / np.sqrt(D) if scale_bwd else 1.0
    dq = dS @ k * c
    dk = (dS.transpose(0, 2, 1) if transpose_dk else dS) @ q * c
    return dq, dk, dv


def attention_dq(g, q, k, v):
    return attention_backward(g, q, k, v)[0]


def attention_dk(g, q, k, v):
    return attention_backward(g, q, k, v)[1]


def attention_dv(g, q, k, v):
    return attention_backward(g, q, k, v)[2]


def attention_dq_no_scale(g, q, k, v):
    return attention_backward(g, q, k, v, scale_bwd=False)[0]  # mistake: 1/sqrt(D) left out


def attention_dv_no_mask(g, q, k, v):
    return attention_backward(g, q, k, v, causal=False)[2]  # mistake: causal mask ignored


def attention_dk_no_transpose(g, q, k, v):
    return attention_backward(g, q, k, v, transpose_dk=False)[1]  # mistake: dS instead of dS^T


RIGHT = [("q", attention_dq, "matrix form"), ("k", attention_dk, "matrix form"),
         ("v", attention_dv, "matrix form")]
WRONG = [("q", attention_dq_no_scale, "scale left out"), ("v", attention_dv_no_mask, "causal mask ignored"),
         ("k", attention_dk_no_transpose, "forgotten transpose")]
VERIFY_TRIALS = 2  # the reference is slow
