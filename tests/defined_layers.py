"""Layers that exist only in the tests, defined by their forward expression alone: proof that
nothing about a gradient is written anywhere.

Imported by the tests and by the second process of the cache test, so both build the same
derivations (and so the same cache keys)."""

import sympy as sp

from symgrad import derive
def swish(G):
    """swish(x) = x * sigmoid(x)"""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    G.output(G.bind("y", (i, j), x[i, j] / (1 + sp.exp(-x[i, j]))))


def bilinear(G):
    """f[n] = sum_{a,b} x[n,a] A[a,b] y[n,b]"""
    N, P, Q = G.dims("N P Q")
    x, y = G.input("x", (N, P)), G.input("y", (N, Q))
    A = G.param("A", (P, Q))
    n, a, b = G.indices(n=N, a=P, b=Q)
    G.output(G.bind("f", (n,), G.sum(G.sum(x[n, a] * A[a, b] * y[n, b], b), a)))


def rmsnorm(G):
    """y = x / sqrt(mean(x^2) + eps) * w"""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    w = G.param("w", (C,))
    eps = G.const("eps", 1e-6)
    i, j, k = G.indices(i=N, j=C, k=C)
    r = G.bind("r", (i,), 1 / sp.sqrt(G.sum(x[i, k] ** 2, k) / C + eps), save=True, positive=True)
    G.output(G.bind("y", (i, j), x[i, j] * r[i] * w[j]))


def sgd_step(G):
    """p_new = p - lr * (grad + wd * p): an optimizer step, purely elementwise."""
    N = G.dims("N")[0]
    p = G.input("p", (N,))
    grad = G.input("grad", (N,))
    lr = G.const("lr", 0.1)
    wd = G.const("wd", 0.01)
    (i,) = G.indices(i=N)
    G.output(G.bind("p_new", (i,), p[i] - lr * (grad[i] + wd * p[i])))


BUILDERS = {"t_swish": swish, "t_bilinear": bilinear, "t_rmsnorm": rmsnorm}


def defined(name):
    return derive.define(name, BUILDERS[name])
