"""Scalar losses: their upstream gradient g is a scalar (1 for a loss at the top of the graph)."""

from ..registry import layer
from .softmax import lse_graph


@layer
def cross_entropy(G):
    """Mean cross-entropy of integer targets under softmax(logits), in log-sum-exp form:
    loss = 1/N sum_n (lse[n] - logits[n, targets[n]])."""
    N, V = G.dims("N V")
    logits = G.input("logits", (N, V))
    targets = G.input("targets", (N,), integer=True)
    n, v, k = G.indices(n=N, v=V, k=V)
    lse = lse_graph(G, logits, n, k)
    loss = G.bind("loss", (), G.sum(lse[n] - logits[n, targets[n]], n) / N)
    G.output(loss)
    G.notes.append("-log softmax(logits)[n, t] = lse[n] - logits[n, t] with lse[n] = m[n] + log sum_k "
                   "exp(logits[n,k] - m[n]), m[n] the row max (stop-gradient): no exp overflows and no "
                   "log of an underflowed probability is taken.")


@layer
def mse(G):
    """Mean squared error over every element: loss = 1/(N C) sum_{i,j} (pred[i,j] - target[i,j])^2."""
    N, C = G.dims("N C")
    pred = G.input("pred", (N, C))
    target = G.input("target", (N, C))
    i, j = G.indices(i=N, j=C)
    loss = G.bind("loss", (), G.sum(G.sum((pred[i, j] - target[i, j]) ** 2, j), i) / (N * C))
    G.output(loss)
