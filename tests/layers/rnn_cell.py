"""rnn_cell: h = tanh(x Wxh + h_prev Whh + bh), one time step."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    return [("N2 I3 H2", {"x": normal(rng, 2, 3), "h_prev": normal(rng, 2, 2), "Wxh": normal(rng, 3, 2),
                          "Whh": normal(rng, 2, 2), "bh": normal(rng, 2)}),
            ("batch1 H1", {"x": normal(rng, 1, 2), "h_prev": normal(rng, 1, 1), "Wxh": normal(rng, 2, 1),
                           "Whh": normal(rng, 1, 1), "bh": normal(rng, 1)})]


def forward(t):
    import torch
    return {"h": torch.tanh(t["x"] @ t["Wxh"] + t["h_prev"] @ t["Whh"] + t["bh"])}


def _rnn(g, x, h_prev, Wxh, Whh, bh, mistake=None):
    a = x @ Wxh + h_prev @ Whh + bh
    da = g if mistake == "no_tanh" else g / np.cosh(a) ** 2
    h = np.tanh(a)
    return {"x": da @ Wxh.T, "h_prev": da @ (Whh if mistake == "no_transpose" else Whh.T),
            "Wxh": x.T @ da, "Whh": (h if mistake == "new_h" else h_prev).T @ da, "bh": da.sum(0)}


def _rnn_grad(name, mistake=None):
    def grad(g, x, h_prev, Wxh, Whh, bh):
        return _rnn(g, x, h_prev, Wxh, Whh, bh, mistake)[name]
    grad.__name__ = f"rnn_cell_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


RIGHT = [(n, _rnn_grad(n), "matrix form, sech^2") for n in ("x", "h_prev", "Wxh", "Whh", "bh")]
WRONG = [("h_prev", _rnn_grad("h_prev", "no_transpose"), "forgotten transpose"),
         ("x", _rnn_grad("x", "no_tanh"), "tanh derivative forgotten"),
         ("Whh", _rnn_grad("Whh", "new_h"), "uses h instead of h_prev")]
