"""Layers: parameter holders that call the kernels printed from derive/'s derivations.

Each layer's `forward` calls its layer's forward kernel and keeps the returned context (the
arguments and saved bindings) for `backward`, which calls the backward kernel with the upstream
gradient, adds the parameter gradients into `Param.grad` and returns the input's gradient.
Nothing here computes a gradient itself: layers reshape arrays to the (N, C) layout the
derivations use and route the results.

Layers used several times in one forward pass (a recurrent cell over time) keep a stack of
contexts; `backward` pops them in reverse order.
"""

from __future__ import annotations

import numpy as np

import derive

from .kernels import Op
from .module import Module, Param


def _layer_name(*candidates):
    names = derive.layers()
    for c in candidates:
        if c in names:
            return c
    raise KeyError(f"none of the layers {candidates} is defined in derive/")


def normal(rng, shape, std, dtype):
    return (rng.standard_normal(shape) * std).astype(dtype)


class KernelLayer(Module):
    """A layer with a stack of saved contexts (one per forward call in training mode)."""

    def __init__(self, name, dtype):
        self.dtype = np.dtype(dtype)
        self._op = Op(name, self.dtype)
        self._ctx = []

    def _forward(self, **args):
        res, ctx = self._op(save=self.training, **args)
        if self.training:
            self._ctx.append(ctx)
        return res

    def _backward(self, **upstream):
        return self._op.backward(self._ctx.pop(), **upstream)

    def _accumulate(self, grads, **params):
        for name, p in params.items():
            p.grad += grads[name]

    def clear(self):
        """Drop saved contexts (after an aborted step)."""
        self._ctx.clear()


class Linear(KernelLayer):
    """y = x W + b over the last axis of x; W has shape (in, out)."""

    def __init__(self, n_in, n_out, rng, dtype="float32", std=None, bias=True):
        super().__init__("linear", dtype)
        std = (1.0 / np.sqrt(n_in)) if std is None else std
        self.W = Param(normal(rng, (n_in, n_out), std, self.dtype))
        self.b = Param(np.zeros(n_out, self.dtype))
        self.n_in, self.n_out = n_in, n_out

    def forward(self, x):
        lead = x.shape[:-1]
        res = self._forward(x=x.reshape(-1, self.n_in), W=self.W.data, b=self.b.data)
        return res["y"].reshape(*lead, self.n_out)

    def backward(self, g):
        lead = g.shape[:-1]
        d = self._backward(g=g.reshape(-1, self.n_out))
        self._accumulate(d, W=self.W, b=self.b)
        return d["x"].reshape(*lead, self.n_in)


class Elementwise(KernelLayer):
    """An activation applied elementwise (relu, tanh, sigmoid, gelu, gelu_erf)."""

    def __init__(self, name, dtype="float32"):
        name = _layer_name(name, name + "_") if name == "tanh" else name
        super().__init__(name, dtype)

    def forward(self, x):
        return self._forward(x=x.reshape(-1, x.shape[-1]))["y"].reshape(x.shape)

    def backward(self, g):
        return self._backward(g=g.reshape(-1, g.shape[-1]))["x"].reshape(g.shape)


class LayerNorm(KernelLayer):
    def __init__(self, n, dtype="float32", eps=1e-5):
        super().__init__("layernorm", dtype)
        self.gamma = Param(np.ones(n, self.dtype))
        self.beta = Param(np.zeros(n, self.dtype))
        self.eps = eps

    def forward(self, x):
        res = self._forward(x=x.reshape(-1, x.shape[-1]), gamma=self.gamma.data, beta=self.beta.data,
                            eps=self.eps)
        return res["y"].reshape(x.shape)

    def backward(self, g):
        d = self._backward(g=g.reshape(-1, g.shape[-1]))
        self._accumulate(d, gamma=self.gamma, beta=self.beta)
        return d["x"].reshape(g.shape)


class Embedding(KernelLayer):
    """rows = table[ids]; the gradient goes to the table only."""

    def __init__(self, n_vocab, n_dim, rng, dtype="float32", std=0.02):
        super().__init__("embedding", dtype)
        self.table = Param(normal(rng, (n_vocab, n_dim), std, self.dtype))

    def forward(self, ids):
        res = self._forward(ids=np.ascontiguousarray(ids.reshape(-1), dtype=np.int64),
                            table=self.table.data)
        return res["rows"].reshape(*ids.shape, self.table.shape[1])

    def backward(self, g):
        d = self._backward(g=g.reshape(-1, g.shape[-1]))
        self._accumulate(d, table=self.table)


class CausalAttention(KernelLayer):
    """Causal scaled dot-product attention on (B, T, D) q, k, v."""

    def __init__(self, dtype="float32"):
        super().__init__("attention", dtype)

    def forward(self, q, k, v):
        return self._forward(q=q, k=k, v=v)["y"]

    def backward(self, g):
        d = self._backward(g=g)
        return d["q"], d["k"], d["v"]


class CrossEntropy(KernelLayer):
    """Mean cross-entropy of integer targets under softmax(logits); a scalar."""

    def __init__(self, dtype="float32"):
        super().__init__("cross_entropy", dtype)

    def forward(self, logits, targets):
        V = logits.shape[-1]
        res = self._forward(logits=logits.reshape(-1, V),
                            targets=np.ascontiguousarray(targets.reshape(-1), dtype=np.int64))
        self._shape = logits.shape
        return float(res["loss"])

    def backward(self, g=1.0):
        d = self._backward(g=self.dtype.type(g))
        return d["logits"].reshape(self._shape)


class Softmax(KernelLayer):
    def __init__(self, dtype="float32"):
        super().__init__("softmax", dtype)

    def forward(self, x):
        return self._forward(x=x.reshape(-1, x.shape[-1]))["s"].reshape(x.shape)

    def backward(self, g):
        return self._backward(g=g.reshape(-1, g.shape[-1]))["x"].reshape(g.shape)
