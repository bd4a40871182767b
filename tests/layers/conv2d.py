"""conv2d: y[n, o, i, j] = b[o] + sum_{c,kh,kw} w[o, c, kh, kw] x[n, c, s i + d kh - p, s j + d kw - p]
(a cross-correlation; configurations conv2d_s2_p1 and the like set stride, padding, dilation).
The hand derivations, CS231n-style loops, are for the default: stride 1, no padding, dilation 1."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal


def cases(rng):
    return [("N2 C2 O3 5x6 K3x2", {"x": normal(rng, 2, 2, 5, 6), "w": normal(rng, 3, 2, 3, 2), "b": normal(rng, 3)}),
            ("batch1 channel1 kernel1", {"x": normal(rng, 1, 1, 3, 4), "w": normal(rng, 2, 1, 1, 1),
                                         "b": normal(rng, 2)})]


def forward(t, stride, padding, dilation):
    import torch.nn.functional as F
    return {"y": F.conv2d(t["x"], t["w"], t["b"], stride=stride, padding=padding, dilation=dilation)}


def conv2d_dx(g, w):
    KH, KW = w.shape[2:]
    Ho, Wo = g.shape[2:]
    dx = np.zeros((g.shape[0], w.shape[1], Ho + KH - 1, Wo + KW - 1))
    for kh in range(KH):
        for kw in range(KW):
            dx[:, :, kh:kh + Ho, kw:kw + Wo] += np.einsum("noij,oc->ncij", g, w[:, :, kh, kw])
    return dx


def conv2d_dx_unflipped(g, w):
    return conv2d_dx(g, w[:, :, ::-1, ::-1])  # mistake: the kernel is not flipped


def conv2d_dw(g, x):
    Ho, Wo = g.shape[2:]
    KH, KW = x.shape[2] - Ho + 1, x.shape[3] - Wo + 1
    dw = np.zeros((g.shape[1], x.shape[1], KH, KW))
    for kh in range(KH):
        for kw in range(KW):
            dw[:, :, kh, kw] = np.einsum("noij,ncij->oc", g, x[:, :, kh:kh + Ho, kw:kw + Wo])
    return dw


def conv2d_dw_transposed_window(g, x):
    Ho, Wo = g.shape[2:]
    KH, KW = x.shape[2] - Ho + 1, x.shape[3] - Wo + 1
    dw = np.zeros((g.shape[1], x.shape[1], KH, KW))
    for kh in range(KH):
        for kw in range(KW):  # mistake: the window of tap (kh, kw) taken at (KH-1-kh, KW-1-kw)
            a, b = KH - 1 - kh, KW - 1 - kw
            dw[:, :, kh, kw] = np.einsum("noij,ncij->oc", g, x[:, :, a:a + Ho, b:b + Wo])
    return dw


def conv2d_db(g):
    return g.sum((0, 2, 3))


def conv2d_db_no_batch(g):
    return g[0].sum((1, 2))  # mistake: the first sample only


RIGHT = [("x", conv2d_dx, "full correlation, tap by tap"), ("w", conv2d_dw, "window by window"),
         ("b", conv2d_db, "sum over batch and positions")]
WRONG = [("x", conv2d_dx_unflipped, "kernel not flipped"),
         ("w", conv2d_dw_transposed_window, "each tap's window taken from the opposite corner"),
         ("b", conv2d_db_no_batch, "first sample only")]

# generated shapes could leave no output position (a kernel larger than its input)
VERIFY_SHAPES = [{"N": 2, "C": 2, "O": 3, "H": 5, "W": 6, "KH": 3, "KW": 2},
                 {"N": 1, "C": 1, "O": 2, "H": 3, "W": 4, "KH": 1, "KW": 1}]
