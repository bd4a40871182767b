"""lstm_cell: one LSTM step; gates i, f, o, g from [x, h_prev] W + b, c = f c_prev + i g,
h = o tanh(c). Two outputs, so a candidate gets g_h and g_c."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import logistic, normal


def cases(rng):
    return [("N2 I3 H2", {"x": normal(rng, 2, 3), "h_prev": normal(rng, 2, 2), "c_prev": normal(rng, 2, 2),
                          "W": normal(rng, 5, 4, 2), "b": normal(rng, 4, 2)}),
            ("batch1 H1", {"x": normal(rng, 1, 1), "h_prev": normal(rng, 1, 1), "c_prev": normal(rng, 1, 1),
                           "W": normal(rng, 2, 4, 1), "b": normal(rng, 4, 1)})]


def forward(t):
    import torch

    xh = torch.cat([t["x"], t["h_prev"]], dim=1)
    H = t["h_prev"].shape[1]
    z = xh @ t["W"].reshape(-1, 4 * H) + t["b"].reshape(4 * H)
    i, f, o, g = z.split(H, dim=1)
    c = torch.sigmoid(f) * t["c_prev"] + torch.sigmoid(i) * torch.tanh(g)
    return {"h": torch.sigmoid(o) * torch.tanh(c), "c": c}


def _lstm(g_h, g_c, x, h_prev, c_prev, W, b, mistake=None):
    I = x.shape[1]
    xh = np.concatenate([x, h_prev], axis=1)
    z = np.einsum("nk,kqu->nqu", xh, W) + b
    i, f, o, cc = logistic(z[:, 0]), logistic(z[:, 1]), logistic(z[:, 2]), np.tanh(z[:, 3])
    c = f * c_prev + i * cc
    tc = np.tanh(c)
    dtanh = 1.0 if mistake == "no_tanh_grad" else 1 - tc ** 2
    dc = (0.0 if mistake == "ignore_g_c" else g_c) + g_h * o * dtanh
    dz = np.stack([dc * cc * i * (1 - i), dc * c_prev * f * (1 - f), g_h * tc * o * (1 - o),
                   dc * i * (1 - cc ** 2)], axis=1)
    dxh = np.einsum("nqu,kqu->nk", dz, W)
    return {"x": dxh[:, :I], "h_prev": dxh[:, I:], "c_prev": dc * f,
            "W": np.einsum("nk,nqu->kqu", xh, dz), "b": dz.sum(0)}


def _lstm_grad(name, mistake=None):
    def grad(g_h, g_c, x, h_prev, c_prev, W, b):
        return _lstm(g_h, g_c, x, h_prev, c_prev, W, b, mistake)[name]
    grad.__name__ = f"lstm_cell_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


RIGHT = [(n, _lstm_grad(n), "gate by gate") for n in ("x", "h_prev", "c_prev", "W", "b")]
WRONG = [("c_prev", _lstm_grad("c_prev", "ignore_g_c"), "cell state's own upstream ignored"),
         ("h_prev", _lstm_grad("h_prev", "no_tanh_grad"), "tanh'(c) forgotten")]
VERIFY_TRIALS = 2  # the reference is slow
