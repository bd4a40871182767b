"""avg_pool2d: y = the mean of each kernel x kernel window, windows stride apart (default 2x2,
stride 2; avg_pool2d_k3_s1 and the like configure them). The hand derivations are for the
default."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import POOL_SHAPES, unwindow
from tests.layers.max_pool2d import cases as max_pool2d_cases


def cases(rng):
    return max_pool2d_cases(rng)  # odd sizes (a last row and column in no window), a batch of one


def forward(t, kernel, stride):
    import torch.nn.functional as F
    return {"y": F.avg_pool2d(t["x"], kernel, stride)}


def avg_pool2d_dx(g, x):
    return unwindow(np.repeat(g[..., None], 4, -1) / 4, x.shape)


def avg_pool2d_dx_no_mean(g, x):
    return unwindow(np.repeat(g[..., None], 4, -1), x.shape)  # mistake: 1/4 forgotten


def avg_pool2d_dx_half(g, x):
    return unwindow(np.repeat(g[..., None], 4, -1) / 2, x.shape)  # mistake: 1/2 (one axis)


RIGHT = [("x", avg_pool2d_dx, "g / 4 on each window")]
WRONG = [("x", avg_pool2d_dx_no_mean, "1/4 forgotten"), ("x", avg_pool2d_dx_half, "1/2 instead of 1/4")]
VERIFY_SHAPES = POOL_SHAPES
