"""gelu: the tanh approximation, y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import rows_off_the_kink

_C = np.sqrt(2 / np.pi)


def cases(rng):
    return rows_off_the_kink(rng)


def forward(t):
    import torch.nn.functional as F
    return {"y": F.gelu(t["x"], approximate="tanh")}


def gelu_dx(g, x):
    u = _C * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return g * (0.5 * (1 + t) + 0.5 * x / np.cosh(u) ** 2 * _C * (1 + 3 * 0.044715 * x ** 2))


def gelu_dx_no_product_rule(g, x):
    return g * 0.5 * (1 + np.tanh(_C * (x + 0.044715 * x ** 3)))  # mistake: dropped x * dt/dx


def gelu_dx_inner_chain(g, x):
    u = _C * (x + 0.044715 * x ** 3)
    # mistake: d/dx (x + a x^3) written as 1 + a x^2 (the 3 is lost)
    return g * (0.5 * (1 + np.tanh(u)) + 0.5 * x / np.cosh(u) ** 2 * _C * (1 + 0.044715 * x ** 2))


RIGHT = [("x", gelu_dx, "product rule with sech^2")]
WRONG = [("x", gelu_dx_no_product_rule, "product rule term dropped"),
         ("x", gelu_dx_inner_chain, "factor 3 of the inner derivative lost")]
