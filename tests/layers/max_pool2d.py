"""max_pool2d: y = the max of each kernel x kernel window, windows stride apart (default 2x2,
stride 2; max_pool2d_k3_s1 and the like configure them); at a tie the first maximum takes the
gradient, as in PyTorch. The hand derivations are for the default."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import POOL_SHAPES, normal, unwindow, windows


def cases(rng):
    # odd sizes: the last row and column fall outside every 2x2 window (gradient 0)
    return [("N2 C3 5x6", {"x": normal(rng, 2, 3, 5, 6)}), ("batch1 channel1 2x2", {"x": normal(rng, 1, 1, 2, 2)})]


def forward(t, kernel, stride):
    import torch.nn.functional as F
    return {"y": F.max_pool2d(t["x"], kernel, stride)}


def max_pool2d_dx(g, x):
    """The window's first maximum (np.argmax: row-major) takes g."""
    win = windows(x)
    mask = np.eye(4)[win.argmax(-1)]
    return unwindow(mask * g[..., None], x.shape)


def max_pool2d_dx_whole_window(g, x):
    return unwindow(np.repeat(g[..., None], 4, -1), x.shape)  # mistake: every element takes g


def max_pool2d_dx_ignores_g(g, x):
    return unwindow(np.eye(4)[windows(x).argmax(-1)], x.shape)  # mistake: the mask, not g


RIGHT = [("x", max_pool2d_dx, "one-hot of the window's argmax")]
WRONG = [("x", max_pool2d_dx_whole_window, "every element takes g"),
         ("x", max_pool2d_dx_ignores_g, "the mask without g")]
VERIFY_SHAPES = POOL_SHAPES
