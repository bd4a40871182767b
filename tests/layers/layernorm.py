"""layernorm: y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis (eps = 1e-5).
The hand derivation is the expanded textbook form, through dvar and dmean."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    near = 2.0 + 1e-3 * normal(rng, 2, 6)
    return [("3x5", {"x": normal(rng, 3, 5), "gamma": normal(rng, 5), "beta": normal(rng, 5)}),
            ("batch1", {"x": normal(rng, 1, 4), "gamma": normal(rng, 4), "beta": normal(rng, 4)}),
            ("near-constant rows", {"x": near, "gamma": normal(rng, 6), "beta": normal(rng, 6)})]


def forward(t):
    import torch.nn.functional as F
    return {"y": F.layer_norm(t["x"], t["x"].shape[-1:], t["gamma"], t["beta"], eps=1e-5)}


def _ln_parts(x, eps):
    C = x.shape[1]
    mu = x.sum(1, keepdims=True) / C
    xmu = x - mu
    var = (xmu ** 2).sum(1, keepdims=True) / C
    return C, mu, xmu, var


def layernorm_dx(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    std = np.sqrt(var + eps)
    dxhat = g * gamma
    dvar = np.sum(dxhat * xmu * -0.5 * (var + eps) ** -1.5, axis=1, keepdims=True)
    dmu = np.sum(-dxhat / std, axis=1, keepdims=True) + dvar * np.mean(-2 * xmu, axis=1, keepdims=True)
    return dxhat / std + dvar * 2 * xmu / C + dmu / C


def layernorm_dgamma(g, x, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    return np.sum(g * xmu / np.sqrt(var + eps), axis=0)


def layernorm_dbeta(g):
    return g.sum(axis=0)


def layernorm_dx_no_var_path(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    dxhat = g * gamma
    return (dxhat - dxhat.mean(1, keepdims=True)) / np.sqrt(var + eps)  # mistake: dropped d var/dx


def layernorm_dx_sums_not_means(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    rstd = 1 / np.sqrt(var + eps)
    xhat, dxhat = xmu * rstd, g * gamma
    # mistake: the 1/C of the means is missing
    return rstd * (dxhat - dxhat.sum(1, keepdims=True) - xhat * (dxhat * xhat).sum(1, keepdims=True))


def layernorm_dx_no_eps(g, x, gamma, eps):
    return layernorm_dx(g, x, gamma, 0.0)  # mistake: eps left out of rstd in the backward


def layernorm_dgamma_no_xhat(g, x, eps):
    return g.sum(axis=0)  # mistake: forgot the normalized input


RIGHT = [("x", layernorm_dx, "expanded textbook form through dvar, dmean"),
         ("gamma", layernorm_dgamma, "sum g xhat"), ("beta", layernorm_dbeta, "sum g")]
WRONG = [("x", layernorm_dx_no_var_path, "variance path dropped"),
         ("x", layernorm_dx_sums_not_means, "missing 1/C"),
         ("x", layernorm_dx_no_eps, "eps left out of the backward"),
         ("gamma", layernorm_dgamma_no_xhat, "xhat forgotten")]
