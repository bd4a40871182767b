"""relu: y = max(x, 0), elementwise."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import rows_off_the_kink


def cases(rng):
    return rows_off_the_kink(rng)


def forward(t):
    import torch
    return {"y": torch.relu(t["x"])}


def relu_dx(g, x):
    return np.where(x > 0, g, 0.0)


def relu_dx_no_mask(g, x):
    return g.copy()  # mistake: forgot the mask


def relu_dx_relu_of_g(g, x):
    return np.maximum(g, 0.0)  # mistake: applied relu to the gradient instead of masking by x


RIGHT = [("x", relu_dx, "where(x > 0, g, 0)")]
WRONG = [("x", relu_dx_no_mask, "mask forgotten"), ("x", relu_dx_relu_of_g, "relu of g")]
