"""Optimizer update rules, each written once as a SymPy definition and printed into one fused kernel.

A rule is a `derive.Graph` over one flat parameter vector: inputs `p` (the parameter), `grad` (its
gradient) and the optimizer state (`v`, `m`, ...), scalar constants (`lr`, `beta1`, `t`, ...),
and bindings that are the new values (`p_new`, `m_new`, ...). The optimizer calls the kernel
with the output buffers aliased to the inputs, so the update happens in place in one pass.

Every rule reads the gradient through `gs = clip * grad[i]`, where `clip` is the global-norm
clipping coefficient (1 when clipping is off), so clipping costs no extra pass.

Conventions follow PyTorch's `torch.optim` (momentum without dampening, Nesterov as
`g + mu * v_new`, AdamW's decoupled decay `p * (1 - lr * wd)`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from sympy import sqrt

from symgrad import derive
from symgrad.derive import cache as derivation_cache
def _start(G):
    (n,) = G.dims("n")
    p = G.input("p", (n,))
    g = G.input("grad", (n,))
    (i,) = G.indices(i=n)
    return n, p, g, i


def sgd(G):
    """Gradient descent: p <- p - lr * (g + wd * p)."""
    n, p, g, i = _start(G)
    lr, wd, clip = G.const("lr", 0.01), G.const("wd", 0.0), G.const("clip", 1.0)
    p_new = G.bind("p_new", (i,), p[i] - lr * (clip * g[i] + wd * p[i]))
    G.output(p_new)


def momentum(G):
    """Heavy-ball momentum: v <- mu * v + g;  p <- p - lr * v."""
    n, p, g, i = _start(G)
    v = G.input("v", (n,))
    lr, mu, wd, clip = G.const("lr", 0.01), G.const("mu", 0.9), G.const("wd", 0.0), G.const("clip", 1.0)
    v_new = G.bind("v_new", (i,), mu * v[i] + clip * g[i] + wd * p[i])
    p_new = G.bind("p_new", (i,), p[i] - lr * v_new[i])
    G.output(p_new, v_new)


def nesterov(G):
    """Nesterov momentum: v <- mu * v + g;  p <- p - lr * (g + mu * v)."""
    n, p, g, i = _start(G)
    v = G.input("v", (n,))
    lr, mu, wd, clip = G.const("lr", 0.01), G.const("mu", 0.9), G.const("wd", 0.0), G.const("clip", 1.0)
    gs = G.bind("gs", (i,), clip * g[i] + wd * p[i])
    v_new = G.bind("v_new", (i,), mu * v[i] + gs[i])
    p_new = G.bind("p_new", (i,), p[i] - lr * (gs[i] + mu * v_new[i]))
    G.output(p_new, v_new)


def adagrad(G):
    """AdaGrad: s <- s + g^2;  p <- p - lr * g / (sqrt(s) + eps)."""
    n, p, g, i = _start(G)
    s = G.input("s", (n,))
    lr, eps, clip = G.const("lr", 0.01), G.const("eps", 1e-10), G.const("clip", 1.0)
    gs = G.bind("gs", (i,), clip * g[i])
    s_new = G.bind("s_new", (i,), s[i] + gs[i] ** 2)
    p_new = G.bind("p_new", (i,), p[i] - lr * gs[i] / (sqrt(s_new[i]) + eps))
    G.output(p_new, s_new)


def rmsprop(G):
    """RMSprop: s <- alpha * s + (1 - alpha) * g^2;  p <- p - lr * g / (sqrt(s) + eps)."""
    n, p, g, i = _start(G)
    s = G.input("s", (n,))
    lr, alpha, eps, clip = G.const("lr", 0.01), G.const("alpha", 0.99), G.const("eps", 1e-8), G.const("clip", 1.0)
    gs = G.bind("gs", (i,), clip * g[i])
    s_new = G.bind("s_new", (i,), alpha * s[i] + (1 - alpha) * gs[i] ** 2)
    p_new = G.bind("p_new", (i,), p[i] - lr * gs[i] / (sqrt(s_new[i]) + eps))
    G.output(p_new, s_new)


def _adam(G, decoupled):
    n, p, g, i = _start(G)
    m = G.input("m", (n,))
    v = G.input("v", (n,))
    lr, b1, b2 = G.const("lr", 1e-3), G.const("beta1", 0.9), G.const("beta2", 0.999)
    # weight decay by default only where it is decoupled (AdamW: 0.01, PyTorch's default)
    eps, wd = G.const("eps", 1e-8), G.const("wd", 0.01 if decoupled else 0.0)
    t, clip = G.const("t", 1), G.const("clip", 1.0)
    gs = G.bind("gs", (i,), clip * g[i] + (0 if decoupled else wd * p[i]))
    m_new = G.bind("m_new", (i,), b1 * m[i] + (1 - b1) * gs[i])
    v_new = G.bind("v_new", (i,), b2 * v[i] + (1 - b2) * gs[i] ** 2)
    step = lr * (m_new[i] / (1 - b1**t)) / (sqrt(v_new[i] / (1 - b2**t)) + eps)
    decay = p[i] * (1 - lr * wd) if decoupled else p[i]
    p_new = G.bind("p_new", (i,), decay - step)
    G.output(p_new, m_new, v_new)


def adam(G):
    """Adam: m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  p <- p - lr * m^ / (sqrt(v^) + eps),
    with bias corrections m^ = m / (1 - b1^t), v^ = v / (1 - b2^t); wd adds wd * p to g (L2)."""
    _adam(G, decoupled=False)


def adamw(G):
    """AdamW: Adam with decoupled weight decay, p <- p (1 - lr wd) - lr * m^ / (sqrt(v^) + eps)."""
    _adam(G, decoupled=True)


def sumsq(G):
    """Sum of squares of a vector (the gradient's squared norm, for global-norm clipping)."""
    (n,) = G.dims("n")
    g = G.input("grad", (n,))
    (i,) = G.indices(i=n)
    s = G.bind("s", (), G.sum(g[i] ** 2, i))
    G.output(s)


RULES = {f.__name__: f for f in (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw, sumsq)}

# Constants the optimizer sets at every step (the others are hyper-parameters, defaults in the rules)
PER_STEP = ("t", "clip")

# State vectors each rule keeps per parameter (inputs besides p and g), and their binding names.
STATE = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("s",), "rmsprop": ("s",),
         "adam": ("m", "v"), "adamw": ("m", "v")}


@lru_cache(maxsize=None)
def rule(name: str):
    """The derivation of update rule `name`: derived once, then read from the derivation cache
    like a built-in layer's (keyed by this file's text and derive/'s; 1.4 s of SymPy for AdamW
    at every start before, the most of a warm start's 2.9 s)."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return derivation_cache.load_or_derive(f"rule-{name}-{key}", lambda: derive.define(name, RULES[name]))
