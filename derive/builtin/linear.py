"""The affine layer."""

from ..registry import layer


@layer
def linear(G):
    """Affine map: y[n,j] = sum_k x[n,k] W[k,j] + b[j]."""
    N, I, O = G.dims("N I O")
    x = G.input("x", (N, I))
    W = G.param("W", (I, O))
    b = G.param("b", (O,))
    n, j, k = G.indices(n=N, j=O, k=I)
    y = G.bind("y", (n, j), G.sum(x[n, k] * W[k, j], k) + b[j])
    G.output(y)
