"""conv1d: y[n, o, i] = b[o] + sum_{c,k} w[o, c, k] x[n, c, s i + d k - p] (a cross-correlation;
configurations conv1d_s2_p1_d2 and the like set stride, padding, dilation). The hand
derivations, CS231n-style loops, are for the default: stride 1, no padding, dilation 1."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    return [("N2 C3 O2 W7 K3", {"x": normal(rng, 2, 3, 7), "w": normal(rng, 2, 3, 3), "b": normal(rng, 2)}),
            ("batch1 channel1 kernel1", {"x": normal(rng, 1, 1, 4), "w": normal(rng, 2, 1, 1), "b": normal(rng, 2)})]


def forward(t, stride, padding, dilation):
    import torch.nn.functional as F
    return {"y": F.conv1d(t["x"], t["w"], t["b"], stride=stride, padding=padding, dilation=dilation)}


def conv1d_dx(g, w):
    """Full correlation of g with the flipped kernel, one tap at a time."""
    K, Wo = w.shape[2], g.shape[2]
    dx = np.zeros((g.shape[0], w.shape[1], Wo + K - 1))
    for k in range(K):
        dx[:, :, k:k + Wo] += np.einsum("noi,oc->nci", g, w[:, :, k])
    return dx


def conv1d_dx_unflipped(g, w):
    return conv1d_dx(g, w[:, :, ::-1])  # mistake: the kernel is not flipped


def conv1d_dw(g, x):
    Wo = g.shape[2]
    return np.stack([np.einsum("noi,nci->oc", g, x[:, :, k:k + Wo]) for k in range(x.shape[2] - Wo + 1)], -1)


def conv1d_dw_batch_mean(g, x):
    return conv1d_dw(g, x) / x.shape[0]  # mistake: averaged over the batch


def conv1d_db(g):
    return g.sum((0, 2))


RIGHT = [("x", conv1d_dx, "full correlation, tap by tap"), ("w", conv1d_dw, "window by window"),
         ("b", conv1d_db, "sum over batch and positions")]
WRONG = [("x", conv1d_dx_unflipped, "kernel not flipped"), ("w", conv1d_dw_batch_mean, "averaged over the batch")]

# generated shapes could leave no output position (a kernel longer than its input)
VERIFY_SHAPES = [{"N": 2, "C": 3, "O": 2, "W": 7, "K": 3}, {"N": 1, "C": 1, "O": 1, "W": 3, "K": 1}]
