"""sigmoid: y = 1 / (1 + exp(-x)), elementwise."""

from __future__ import annotations

from tests.layers._shared import logistic, rows_off_the_kink


def cases(rng):
    return rows_off_the_kink(rng)


def forward(t):
    import torch
    return {"y": torch.sigmoid(t["x"])}


def sigmoid_dx(g, x):
    return g * logistic(x) * logistic(-x)  # s(x) (1 - s(x)) = s(x) s(-x)


def sigmoid_dx_no_complement(g, x):
    return g * logistic(x)  # mistake: forgot the (1 - s) factor


def sigmoid_dx_sign(g, x):
    s = logistic(x)
    return g * s * (1 + s)  # mistake: sign error


RIGHT = [("x", sigmoid_dx, "g s(x) s(-x)")]
WRONG = [("x", sigmoid_dx_no_complement, "(1 - s) forgotten"), ("x", sigmoid_dx_sign, "sign error")]
