"""Softmax and log-softmax over the last axis, in their numerically stable forms."""

from sympy import exp, log

from ..functions import Iverson
from ..registry import layer, part_of


@part_of("softmax")
def softmax_graph(G, x, rows, j, k, last=None, name="s"):
    """Bind a max-subtracted softmax of x[rows..., j] over j and return its probabilities.

    With `last`, only j <= last takes part (a causal mask: masked entries get probability 0).
    Attention reuses this, so its derivation reads through the softmax VJP."""
    rows = tuple(rows)
    if last is None:
        m = G.bind("m", rows, G.max(x[(*rows, k)], k), stop_gradient=True)
        e = G.bind("e", (*rows, j), exp(x[(*rows, j)] - m[rows]))
    else:
        m = G.bind("m", rows, G.max(x[(*rows, k)], k, 0, last), stop_gradient=True)
        # the mask multiplies the exponent too: exp of a masked score could overflow, and inf*0 is NaN
        mask = Iverson(j <= last)
        e = G.bind("e", (*rows, j), exp((x[(*rows, j)] - m[rows]) * mask) * mask)
    z = G.bind("z", rows, G.sum(e[(*rows, k)], k))
    return G.bind(name, (*rows, j), e[(*rows, j)] / z[rows], save=True)


@part_of("log_softmax")
def lse_graph(G, x, i, k):
    """Bind lse[i] = log sum_k exp(x[i,k]) in its stable form m[i] + log sum_k exp(x[i,k] - m[i])
    (m the row max, stop-gradient) and return it; log_softmax and cross_entropy share it."""
    m = G.bind("m", (i,), G.max(x[i, k], k), stop_gradient=True)
    z = G.bind("z", (i,), G.sum(exp(x[i, k] - m[i]), k))
    return G.bind("lse", (i,), m[i] + log(z[i]), save=True)


@layer
def softmax(G):
    """Softmax over the last axis: s[i,j] = exp(x[i,j] - m[i]) / sum_k exp(x[i,k] - m[i])."""
    N, n = G.dims("N n")
    x = G.input("x", (N, n))
    i, j, k = G.indices(i=N, j=n, k=n)
    s = softmax_graph(G, x, (i,), j, k)
    G.output(s)
    G.notes.append("The row max m[i] is subtracted before exponentiating so that exp never "
                   "overflows; it cancels between numerator and denominator, so it is bound with "
                   "stop_gradient and contributes no gradient.")


@layer
def log_softmax(G):
    """Log-softmax over the last axis in log-sum-exp form: y[i,j] = x[i,j] - lse[i], lse[i] = m[i] + log sum_k exp(x[i,k] - m[i])."""
    N, n = G.dims("N n")
    x = G.input("x", (N, n))
    i, j, k = G.indices(i=N, j=n, k=n)
    lse = lse_graph(G, x, i, k)
    y = G.bind("y", (i, j), x[i, j] - lse[i])
    G.output(y)
    G.notes.append("log sum_k exp(x[i,k]) = m[i] + log sum_k exp(x[i,k] - m[i]) with m[i] the row "
                   "max: the log-sum-exp form never overflows. m is a stop-gradient binding.")
