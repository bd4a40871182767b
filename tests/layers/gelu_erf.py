"""gelu_erf: the exact GELU, y = x Phi(x) (Phi the standard normal CDF), elementwise."""

from __future__ import annotations

import numpy as np
from scipy.special import erf, erfc

from tests.layers._shared import rows_off_the_kink

SQRT2PI = np.sqrt(2 * np.pi)


def cases(rng):
    return rows_off_the_kink(rng)


def forward(t):
    import torch.nn.functional as F
    return {"y": F.gelu(t["x"])}


def gelu_erf_dx(g, x):
    return g * (0.5 * erfc(-x / np.sqrt(2)) + x * np.exp(-x * x / 2) / SQRT2PI)  # Phi + x phi


def gelu_erf_dx_no_x_phi(g, x):
    return g * 0.5 * (1 + erf(x / np.sqrt(2)))  # mistake: dropped the x * phi(x) term


def gelu_erf_dx_unnormalized_phi(g, x):
    return g * (0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-x * x / 2))  # mistake: phi without 1/sqrt(2 pi)


RIGHT = [("x", gelu_erf_dx, "Phi(x) + x phi(x) via erfc")]
WRONG = [("x", gelu_erf_dx_no_x_phi, "x phi(x) dropped"),
         ("x", gelu_erf_dx_unnormalized_phi, "phi without 1/sqrt(2 pi)")]
