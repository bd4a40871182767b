"""linear: y = x W + b."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    return [("3x4->2", {"x": normal(rng, 3, 4), "W": normal(rng, 4, 2), "b": normal(rng, 2)}),
            ("batch1", {"x": normal(rng, 1, 3), "W": normal(rng, 3, 2), "b": normal(rng, 2)}),
            ("in1-out1", {"x": normal(rng, 2, 1), "W": normal(rng, 1, 1), "b": normal(rng, 1)})]


def forward(t):
    return {"y": t["x"] @ t["W"] + t["b"]}


def linear_dx(g, W):
    return np.einsum("nj,kj->nk", g, W)


def linear_dW(g, x):
    return sum(np.outer(x[n], g[n]) for n in range(x.shape[0]))  # one outer product per sample


def linear_db(g):
    return np.ones(g.shape[0]) @ g


def linear_db_mean(g):
    return g.mean(axis=0)  # mistake: averages over the batch (a spurious 1/N)


def linear_dW_outer_of_sums(g, x):
    return np.outer(x.sum(0), g.sum(0))  # mistake: sums the batch before the outer product


def linear_dx_sign(g, W):
    return -g @ W.T  # mistake: sign error


RIGHT = [("x", linear_dx, "einsum"), ("W", linear_dW, "sum of per-sample outer products"),
         ("b", linear_db, "ones @ g")]
WRONG = [("b", linear_db_mean, "spurious 1/N"), ("W", linear_dW_outer_of_sums, "outer product of sums"),
         ("x", linear_dx_sign, "sign error")]
