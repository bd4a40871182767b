"""softmax: s = exp(x) / sum exp(x) over the last axis."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal, rows, softmax


def cases(rng):
    return rows(rng) + [("logits~1e3", {"x": normal(rng, 3, 5) + 1e3 * rng.choice([-1, 1], (3, 5))})]


def forward(t):
    import torch
    return {"s": torch.softmax(t["x"], -1)}


def softmax_dx_jacobian(g, x):
    s = softmax(x)
    J = s[:, :, None] * (np.eye(x.shape[1])[None] - s[:, None, :])  # J[n, j, k] = ds_j/dx_k
    return np.einsum("nj,njk->nk", g, J)


def softmax_dx_no_cross_term(g, x):
    return g * softmax(x)  # mistake: only the diagonal of the Jacobian


def softmax_dx_unweighted_sum(g, x):
    s = softmax(x)
    return s * (g - g.sum(-1, keepdims=True))  # mistake: sum(g) instead of sum(g * s)


RIGHT = [("x", softmax_dx_jacobian, "explicit Jacobian")]
WRONG = [("x", softmax_dx_no_cross_term, "missing cross term"),
         ("x", softmax_dx_unweighted_sum, "sum(g) instead of sum(g s)")]
