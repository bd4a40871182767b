"""2-D pooling, NCHW, over kernel x kernel windows moved by stride (both constants of the layer)."""

from ..registry import layer
from .conv import check_constants, out_extent


def _windows(G, kernel, stride):
    """x (N, C, H, W), the window's top-left corner (stride*i, stride*j) and its taps kh, kw."""
    check_constants(G, kernel=kernel, stride=stride)
    N, C, H, W = G.dims("N C H W")
    x = G.input("x", (N, C, H, W))
    n, c, i, j, kh, kw = G.indices(n=N, c=C, i=out_extent(H, kernel, stride, 0, 1),
                                   j=out_extent(W, kernel, stride, 0, 1), kh=kernel, kw=kernel)
    G.notes.append(f"kernel {kernel}, stride {stride}: constants of the layer ({G.name.split('_k')[0]}"
                   "_k3_s1 names another configuration); no padding; the output size is "
                   "floor((size - kernel) / stride) + 1, as in PyTorch.")
    return x, (n, c, i, j), x[n, c, stride * i + kh, stride * j + kw], kh, kw


@layer(kernel=2, stride=2)
def max_pool2d(G, kernel, stride):
    """Max pooling: y[n,c,i,j] = max_{kh} max_{kw} x[n, c, stride*i + kh, stride*j + kw]."""
    x, out, tap, kh, kw = _windows(G, kernel, stride)
    G.output(G.bind("y", out, G.max(G.max(tap, kw), kh)))
    G.notes.append("Ties: the gradient goes to one element of the window, the first maximal one in "
                   "scan order (rows top to bottom, each left to right), as PyTorch's max_pool2d does. "
                   "That is the derivative of max (derive.functions.MaxOver): the first arg-max over "
                   "kw within a row, and over kh the first row whose max is the window's.")


@layer(kernel=2, stride=2)
def avg_pool2d(G, kernel, stride):
    """Average pooling: y[n,c,i,j] = sum_{kh,kw} x[n, c, stride*i + kh, stride*j + kw] / kernel^2."""
    x, out, tap, kh, kw = _windows(G, kernel, stride)
    G.output(G.bind("y", out, G.sum(G.sum(tap, kw), kh) / kernel**2))
