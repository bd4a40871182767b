"""attention_heads: causal attention of H heads side by side, q, k, v and y in the (B, T, H, D)
layout of a projection's output; per head, attention's y = softmax(q k^T / sqrt(D), masked) v."""

from __future__ import annotations

from tests.layers._shared import normal
from tests.layers.attention import attention_backward


def cases(rng):
    return [("B2 T4 H2 D3", {n: normal(rng, 2, 4, 2, 3) for n in "qkv"}),
            ("T1 H1", {n: normal(rng, 1, 1, 1, 2) for n in "qkv"}),
            ("large scores", {"q": normal(rng, 1, 3, 2, 2, scale=8.0), "k": normal(rng, 1, 3, 2, 2, scale=8.0),
                              "v": normal(rng, 1, 3, 2, 2)})]


def forward(t):
    import torch.nn.functional as F
    q, k, v = (t[n].transpose(1, 2) for n in "qkv")  # SDPA takes (B, H, T, D)
    return {"y": F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)}


def heads_grad(name, **mistake):
    """d q|k|v by attention's per-sequence backward, the heads moved to the front and back
    ((B, T, H, D) <-> (B*H, T, D)); the keywords make attention's plausible mistakes."""
    def grad(g, q, k, v):
        B, T, H, D = q.shape
        flat = lambda a: a.transpose(0, 2, 1, 3).reshape(B * H, T, D)  # noqa: E731
        d = attention_backward(flat(g), flat(q), flat(k), flat(v), **mistake)["qkv".index(name)]
        return d.reshape(B, H, T, D).transpose(0, 2, 1, 3)
    grad.__name__ = f"attention_heads_d{name}" + "".join(f"_{k}" for k in mistake)
    return grad


RIGHT = [(n, heads_grad(n), "per sequence, heads transposed") for n in "qkv"]
WRONG = [("q", heads_grad("q", scale_bwd=False), "scale left out"),
         ("v", heads_grad("v", causal=False), "causal mask ignored")]
VERIFY_TRIALS = 2  # the reference is slow
