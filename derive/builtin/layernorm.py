"""Layer normalisation over the last axis (biased variance), saving mean and rstd."""

from sympy import sqrt

from ..registry import layer


@layer
def layernorm(G):
    """y[i,j] = (x[i,j] - mean[i]) * rstd[i] * gamma[j] + beta[j], rstd = 1/sqrt(var + eps)."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    gamma = G.param("gamma", (C,))
    beta = G.param("beta", (C,))
    eps = G.const("eps", 1e-5)
    i, j, k = G.indices(i=N, j=C, k=C)
    mean = G.bind("mean", (i,), G.sum(x[i, k], k) / C, save=True)
    xc = G.bind("xc", (i, j), x[i, j] - mean[i])
    var = G.bind("var", (i,), G.sum(xc[i, k] ** 2, k) / C)
    rstd = G.bind("rstd", (i,), 1 / sqrt(var[i] + eps), save=True, positive=True)
    y = G.bind("y", (i, j), xc[i, j] * rstd[i] * gamma[j] + beta[j])
    G.output(y)
