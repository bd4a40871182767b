"""residual: y = a + b."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    return [("3x4", {"a": normal(rng, 3, 4), "b": normal(rng, 3, 4)})]


def forward(t):
    return {"y": t["a"] + t["b"]}


def residual_da(g, a):
    return np.ones_like(a) * g


def residual_db(g, b):
    return g + np.zeros_like(b)


def residual_half(g):
    return 0.5 * g  # mistake: splits the gradient between the branches


def residual_double(g):
    return 2 * g  # mistake: counts the skip path twice


RIGHT = [("a", residual_da, "identity"), ("b", residual_db, "identity")]
WRONG = [("a", residual_half, "gradient split in half"), ("b", residual_double, "skip counted twice")]
