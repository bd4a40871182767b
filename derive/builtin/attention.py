"""Causal scaled dot-product attention, single- and multi-head."""

from sympy import sqrt

from ..registry import layer, part_of
from .softmax import softmax_graph


@part_of("attention")
def attention_graph(G, q, k, v, b, i, j, c, l, D, name="y", at=None):
    """Bind causal attention of q, k, v over (b, i|j, c) and return the output tensor.

    S = q k^T / sqrt(D); P = softmax of S over keys j <= i; y = P v. `at(b, t, c)` is where the
    element (batch b, position t, feature c) of q, k, v and y sits: (*b, t, c) unless given."""
    at = at or (lambda bt, t, col: (*bt, t, col))
    rows = tuple(b) + (i,)
    S = G.bind("S", (*rows, j), G.sum(q[at(b, i, c)] * k[at(b, j, c)], c) / sqrt(D))
    P = softmax_graph(G, S, rows, j, l, last=i, name="P")
    return G.bind(name, at(b, i, c), G.sum(P[(*rows, j)] * v[at(b, j, c)], j))


@layer
def attention(G):
    """Causal scaled dot-product attention: y = softmax(q k^T / sqrt(d), keys j <= i) v."""
    B, T, D = G.dims("B T D")
    q, k, v = (G.input(n, (B, T, D)) for n in "qkv")
    b, i, j, c, l = G.indices(b=B, i=T, j=T, c=D, l=T)
    G.output(attention_graph(G, q, k, v, (b,), i, j, c, l, D))
    G.notes.append("The mask is part of the definition: e[b,i,j] = exp((S[b,i,j] - m[b,i]) [j <= i]) [j <= i], "
                   "so future keys get probability exactly 0, the max m runs over j <= i only, and no "
                   "masked score is exponentiated (its overflow would give inf * 0 = NaN).")


@layer
def attention_heads(G):
    """Causal attention of H heads side by side, in the layout of a projection's output (rows are
    tokens, a head is D of a row's H*D columns): y[b,i,h] = softmax over keys j <= i of
    q[b,i,h] . k[b,j,h] / sqrt(D), times v[b,j,h]."""
    B, T, H, D = G.dims("B T H D")
    q, k, v = (G.input(n, (B, T, H, D)) for n in "qkv")
    b, h, i, j, c, l = G.indices(b=B, h=H, i=T, j=T, c=D, l=T)
    G.output(attention_graph(G, q, k, v, (b, h), i, j, c, l, D, at=lambda bt, t, col: (bt[0], t, bt[1], col)))
    G.notes.append("q, k, v and y keep the (B, T, H, D) layout of the projections around them, so a "
                   "model splits and merges heads as views, without copies: a head's rows are "
                   "q[b, :, h, :], D contiguous elements H*D apart, which the products read in place.")


@layer
def multihead_attention(G):
    """Multi-head causal self-attention: project x to q, k, v (heads are views of the C axis, Wq
    viewed as (C, H, D) with C = H*D), attend per head, merge, project with Wo (H, D, C)."""
    B, T, H, D = G.dims("B T H D")
    C = H * D
    x = G.input("x", (B, T, C))
    Wq, Wk, Wv = (G.param(n, (C, H, D)) for n in ("Wq", "Wk", "Wv"))
    bq, bk, bv = (G.param(n, (H, D)) for n in ("bq", "bk", "bv"))
    Wo = G.param("Wo", (H, D, C))
    bo = G.param("bo", (C,))
    b, h, i, j, c, l, a, f = G.indices(b=B, h=H, i=T, j=T, c=D, l=T, a=C, f=C)
    q = G.bind("q", (b, h, i, c), G.sum(x[b, i, a] * Wq[a, h, c], a) + bq[h, c], save=True)
    k = G.bind("k", (b, h, i, c), G.sum(x[b, i, a] * Wk[a, h, c], a) + bk[h, c], save=True)
    v = G.bind("v", (b, h, i, c), G.sum(x[b, i, a] * Wv[a, h, c], a) + bv[h, c], save=True)
    att = attention_graph(G, q, k, v, (b, h), i, j, c, l, D, name="att")
    G.binding(att.name).save = True
    y = G.bind("y", (b, i, f), G.sum(G.sum(att[b, h, i, c] * Wo[h, c, f], c), h) + bo[f])
    G.output(y)
