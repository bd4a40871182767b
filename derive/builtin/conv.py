"""Convolutions, NCW and NCHW: a sum over input channels and kernel taps, zero padding a bracket.

`y[n, o, i] = b[o] + sum_c sum_k w[o, c, k] x[n, c, s*i + d*k - p] [0 <= s*i + d*k - p < W]`

with stride s, padding p and dilation d the layer's integer constants (`conv2d_s2_p1_d2`: see
derive.registry). The bracket is the zero padding: a tap that falls outside the input reads
nothing (the kernels test it before the read), so no padded copy is written by hand or made at
run time; with p = 0 there is no bracket at all and the index checker proves every read in range.
The output size is PyTorch's: floor((W + 2p - d(K - 1) - 1) / s) + 1.

Nothing about the gradient is written here. Differentiating the definition gives dx as the
correlation of g with the flipped kernel (a transposed convolution: x's position r meets output
i through the tap k = r + p - s*i, so w is read backwards as i grows) and dw as the correlation of
x with g.
"""

import sympy as sp

from ..errors import DeriveError
from ..functions import Iverson
from ..registry import layer


def out_extent(size, kernel, stride, padding, dilation):
    """The number of output positions: floor((size + 2 padding - dilation (kernel - 1) - 1)/stride) + 1."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return span + 1 if stride == 1 else sp.floor(span / stride) + 1


def check_constants(G, **constants):
    """Refuse a configuration that is no convolution (stride 0, negative padding)."""
    for name, value in constants.items():
        least = 0 if name == "padding" else 1
        if not isinstance(value, int) or value < least:
            raise DeriveError(G.name, f"{name} must be an integer >= {least}, got {value!r}")


def inside(pos, size, padding):
    """The zero padding of one axis: [0 <= pos < size] (1 without padding: always inside)."""
    return Iverson(sp.And(pos >= 0, pos <= size - 1)) if padding else sp.Integer(1)


def _notes(G, stride, padding, dilation):
    G.notes.append(f"stride {stride}, padding {padding}, dilation {dilation}: each a constant of the "
                   "layer (conv2d_s2_p1_d2 names another configuration); the output size is "
                   "floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1, as in PyTorch.")
    if padding:
        G.notes.append("Zero padding is the bracket [0 <= position < size] in the definition: a tap "
                       "outside the input contributes 0 and is never read. Its derivative is 0, and "
                       "the same bracket keeps dx and dw from reading outside x.")
    G.notes.append("dx is the correlation of g with the flipped kernel (a transposed convolution): "
                   "the input position r meets output position i through the tap r + padding - "
                   "stride i, so w is read backwards as i grows. dw is the correlation of x with g. "
                   "Both come from differentiating the definition; neither is written anywhere.")


@layer(stride=1, padding=0, dilation=1)
def conv1d(G, stride, padding, dilation):
    """1-D convolution, NCW: y[n,o,i] = b[o] + sum_{c,k} w[o,c,k] x[n, c, s*i + d*k - p].

    Stride s, zero padding p (a tap outside x contributes 0), dilation d; w is (out, in, K)."""
    check_constants(G, stride=stride, padding=padding, dilation=dilation)
    N, C, O, W, K = G.dims("N C O W K")
    x = G.input("x", (N, C, W))
    w = G.param("w", (O, C, K))
    b = G.param("b", (O,))
    n, o, i, c, k = G.indices(n=N, o=O, i=out_extent(W, K, stride, padding, dilation), c=C, k=K)
    pos = stride * i + dilation * k - padding
    tap = w[o, c, k] * x[n, c, pos] * inside(pos, W, padding)
    G.output(G.bind("y", (n, o, i), G.sum(G.sum(tap, k), c) + b[o]))
    _notes(G, stride, padding, dilation)


@layer(stride=1, padding=0, dilation=1)
def conv2d(G, stride, padding, dilation):
    """2-D convolution, NCHW: y[n,o,i,j] = b[o] + sum_{c,kh,kw} w[o,c,kh,kw] x[n, c, s*i + d*kh - p, s*j + d*kw - p].

    Stride s, zero padding p (a tap outside x contributes 0), dilation d, the same on both axes;
    w is (out, in, KH, KW)."""
    check_constants(G, stride=stride, padding=padding, dilation=dilation)
    N, C, O, H, W, KH, KW = G.dims("N C O H W KH KW")
    x = G.input("x", (N, C, H, W))
    w = G.param("w", (O, C, KH, KW))
    b = G.param("b", (O,))
    n, o, i, j, c, kh, kw = G.indices(n=N, o=O, i=out_extent(H, KH, stride, padding, dilation),
                                      j=out_extent(W, KW, stride, padding, dilation), c=C, kh=KH, kw=KW)
    row = stride * i + dilation * kh - padding
    col = stride * j + dilation * kw - padding
    tap = w[o, c, kh, kw] * x[n, c, row, col] * inside(row, H, padding) * inside(col, W, padding)
    G.output(G.bind("y", (n, o, i, j), G.sum(G.sum(G.sum(tap, kw), kh), c) + b[o]))
    _notes(G, stride, padding, dilation)
