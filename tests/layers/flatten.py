"""flatten: y[n, :] = x[n] read row-major, (N, C, H, W) -> (N, C*H*W)."""

from __future__ import annotations

from tests.layers._shared import normal


def cases(rng):
    return [("N2 C3 2x4", {"x": normal(rng, 2, 3, 2, 4)}), ("batch1 1x1x1", {"x": normal(rng, 1, 1, 1, 1)})]


def forward(t):
    import torch
    return {"y": torch.flatten(t["x"], 1)}


def flatten_dx(g, x):
    return g.reshape(x.shape)


def flatten_dx_fortran(g, x):
    return g.reshape(x.shape, order="F")  # mistake: column-major


def flatten_dx_channels_last(g, x):
    N, C, H, W = x.shape
    return g.reshape(N, H, W, C).transpose(0, 3, 1, 2)  # mistake: as if flattened NHWC


RIGHT = [("x", flatten_dx, "reshape")]
WRONG = [("x", flatten_dx_fortran, "column-major reshape"),
         ("x", flatten_dx_channels_last, "channels-last order")]

# verify checks it at these shapes, as it checks the CNN's other layers (conv, pooling)
VERIFY_SHAPES = [{"N": 2, "C": 3, "H": 2, "W": 4}, {"N": 1, "C": 1, "H": 1, "W": 1}]
