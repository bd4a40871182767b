"""Flatten: NCHW to (N, C*H*W), row-major, as torch.flatten(x, 1)."""

import sympy as sp

from ..registry import layer


@layer
def flatten(G):
    """y[n, f] = x[n, c, h, w] at f = c*H*W + h*W + w: a sum over (c, h, w) of x times
    delta(f, c*H*W + h*W + w), which picks the one element that lands at f."""
    N, C, H, W = G.dims("N C H W")
    x = G.input("x", (N, C, H, W))
    n, f, c, h, w = G.indices(n=N, f=C * H * W, c=C, h=H, w=W)
    pick = x[n, c, h, w] * sp.KroneckerDelta(f, c * H * W + h * W + w)
    G.output(G.bind("y", (n, f), sp.Sum(pick, (w, 0, W - 1), (h, 0, H - 1), (c, 0, C - 1))))
    G.notes.append("One sum over the three input axes (not three nested sums): the kernels write "
                   "it as one pass over x that stores each element at its flat position.")
