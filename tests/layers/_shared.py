"""What several specs share: random inputs, and small pieces of the math in NumPy."""

from __future__ import annotations

import numpy as np


def normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def rows(rng) -> list[tuple[str, dict]]:
    """Inputs x of an elementwise or row-wise layer: 3x4, a batch of one, a feature size of one."""
    return [("3x4", {"x": normal(rng, 3, 4)}), ("batch1", {"x": normal(rng, 1, 5)}),
            ("feature1", {"x": normal(rng, 4, 1)})]


def rows_off_the_kink(rng) -> list[tuple[str, dict]]:
    """`rows`, each value at least 0.05 from 0: ReLU's kink, where finite differences are
    meaningless, is kept out of every activation's inputs."""
    return [(label, {"x": np.where(np.abs(a["x"]) < 0.05, 0.3, a["x"])}) for label, a in rows(rng)]


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logistic(x):
    return 0.5 * (1 + np.tanh(x / 2))  # = 1/(1+exp(-x)), without overflow


def one_hot(ids, n):
    out = np.zeros((len(ids), n))
    out[np.arange(len(ids)), ids] = 1.0
    return out


def windows(x):
    """x's 2x2 stride-2 windows as (N, C, Ho, Wo, 4), each row-major (kh, kw)."""
    N, C, H, W = x.shape
    Ho, Wo = H // 2, W // 2
    v = x[:, :, :2 * Ho, :2 * Wo].reshape(N, C, Ho, 2, Wo, 2)
    return v.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, 4)


def unwindow(d, shape):
    """The inverse of `windows` into an array of `shape` (0 where no window reaches)."""
    N, C, Ho, Wo, _ = d.shape
    out = np.zeros(shape)
    out[:, :, :2 * Ho, :2 * Wo] = d.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, 2 * Ho, 2 * Wo)
    return out


# the 2x2 pools' shapes for verify: odd sizes leave the last row and column in no window
POOL_SHAPES = [{"N": 2, "C": 3, "H": 5, "W": 6}, {"N": 1, "C": 1, "H": 2, "W": 2}]
