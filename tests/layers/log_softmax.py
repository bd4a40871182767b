"""log_softmax: y = x - log sum exp(x) over the last axis."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import softmax
from tests.layers.softmax import cases as softmax_cases


def cases(rng):
    return softmax_cases(rng)  # softmax's inputs, logits around 1e3 included


def forward(t):
    import torch
    return {"y": torch.log_softmax(t["x"], -1)}


def log_softmax_dx_jacobian(g, x):
    s = softmax(x)
    J = np.eye(x.shape[1])[None] - s[:, None, :]  # dy_j/dx_k = delta_jk - s_k
    return np.einsum("nj,njk->nk", g, J)


def log_softmax_dx_elementwise(g, x):
    return g - softmax(x) * g  # mistake: g * s instead of s * sum(g)


def log_softmax_dx_no_sum(g, x):
    return g - softmax(x)  # mistake: assumed sum(g) = 1


RIGHT = [("x", log_softmax_dx_jacobian, "explicit Jacobian")]
WRONG = [("x", log_softmax_dx_elementwise, "s g instead of s sum(g)"),
         ("x", log_softmax_dx_no_sum, "assumes sum(g) = 1")]
