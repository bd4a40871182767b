"""tanh: y = tanh(x), elementwise."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import rows_off_the_kink


def cases(rng):
    return rows_off_the_kink(rng)


def forward(t):
    import torch
    return {"y": torch.tanh(t["x"])}


def tanh_dx(g, x):
    return g / np.cosh(x) ** 2  # sech^2, not 1 - y^2


def tanh_dx_no_square(g, x):
    return g * (1 - np.tanh(x))  # mistake: forgot the square


def tanh_dx_sign(g, x):
    return g * (1 + np.tanh(x) ** 2)  # mistake: sign error


RIGHT = [("x", tanh_dx, "g sech^2(x)")]
WRONG = [("x", tanh_dx_no_square, "square forgotten"), ("x", tanh_dx_sign, "sign error")]
