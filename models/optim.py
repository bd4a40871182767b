"""Optimizers: each update rule is a SymPy definition (models/rules.py) printed into one kernel.

An optimizer holds its parameters' state vectors and, at `step()`, calls its rule's kernel once
per parameter with the outputs aliased to the inputs (an in-place fused update). Batch gradient
descent, SGD and mini-batch gradient descent share the `sgd` rule; they differ in the batches the
gradient is computed on (see `models.data.DataLoader`).
"""

from __future__ import annotations

import math

import numpy as np

from . import rules
from .kernels import Op
from .schedules import Constant, check_lr


def grad_norm(params) -> float:
    """Global L2 norm of the parameters' gradients (the `sumsq` rule's kernel per parameter)."""
    total = 0.0
    for p in params:
        op = _op("sumsq", p.grad.dtype)
        total += float(op.k.forward(grad=p.grad.reshape(-1))["s"])
    return math.sqrt(total)


def clip_grad_norm(params, max_norm: float) -> tuple[float, float]:
    """(norm, coefficient): the coefficient min(1, max_norm / (norm + 1e-6)) that clipping by global
    norm applies to every gradient. Optimizers apply it inside their update kernel."""
    norm = grad_norm(params)
    return norm, (min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else 1.0)


_OPS: dict = {}


def _op(rule, dtype):
    key = (rule, np.dtype(dtype).name)
    if key not in _OPS:
        _OPS[key] = Op(rules.rule(rule), np.dtype(dtype))
    return _OPS[key]


class Optimizer:
    rule = "sgd"
    defaults: dict = {}

    def __init__(self, params, lr=None, schedule=None, max_grad_norm=None, **hyper):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got no parameters")
        if schedule is None:
            schedule = Constant(self.defaults.get("lr", 0.01) if lr is None else lr)
        self.schedule = schedule
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no hyper-parameter {sorted(unknown)}")
        self.hyper = {k: float(v) for k, v in {**self.defaults, **hyper}.items() if k != "lr"}
        for k, v in self.hyper.items():
            if not math.isfinite(v):
                raise ValueError(f"{k} must be finite, got {v}")
        self.max_grad_norm = max_grad_norm
        self.t = 0
        self.state = {s: [np.zeros_like(p.data) for p in self.params] for s in rules.STATE[self.rule]}
        dtype = self.params[0].data.dtype
        self._op = _op(self.rule, dtype)
        self._consts = {c.name for c in self._op.derivation.constants}
        self.last_grad_norm = None

    @property
    def lr(self) -> float:
        return self.schedule(self.t)

    def step(self):
        lr = check_lr(self.schedule(self.t))
        self.t += 1
        clip = 1.0
        if self.max_grad_norm is not None:
            self.last_grad_norm, clip = clip_grad_norm(self.params, self.max_grad_norm)
        consts = {k: v for k, v in dict(self.hyper, lr=lr, clip=clip, t=float(self.t)).items()
                  if k in self._consts}
        k = self._op.k
        for i, p in enumerate(self.params):
            args = {"p": p.data.reshape(-1), "grad": p.grad.reshape(-1)}
            out = {"p_new": args["p"]}
            for s, bufs in self.state.items():
                args[s] = bufs[i].reshape(-1)
                out[f"{s}_new"] = args[s]
            k.forward(out=out, **args, **consts)

    def zero_grad(self):
        for p in self.params:
            p.grad.fill(0)

    def state_dict(self) -> dict:
        return {"t": self.t, "state": {s: [b.copy() for b in bufs] for s, bufs in self.state.items()}}

    def load_state_dict(self, sd: dict):
        for s, bufs in self.state.items():
            new = sd["state"][s]
            if len(new) != len(bufs) or any(np.shape(a) != b.shape for a, b in zip(new, bufs)):
                raise ValueError(f"optimizer state '{s}' does not match the parameters")
            for b, a in zip(bufs, new):
                b[...] = a
        self.t = int(sd["t"])


class SGD(Optimizer):
    """Gradient descent p <- p - lr (g + wd p): batch GD on the full data, SGD/mini-batch on batches."""
    rule = "sgd"
    defaults = {"lr": 0.01, "wd": 0.0}


BatchGD = SGD


class Momentum(Optimizer):
    rule = "momentum"
    defaults = {"lr": 0.01, "mu": 0.9, "wd": 0.0}


class Nesterov(Optimizer):
    rule = "nesterov"
    defaults = {"lr": 0.01, "mu": 0.9, "wd": 0.0}


class AdaGrad(Optimizer):
    rule = "adagrad"
    defaults = {"lr": 0.01, "eps": 1e-10}


class RMSprop(Optimizer):
    rule = "rmsprop"
    defaults = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8}


class Adam(Optimizer):
    rule = "adam"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "wd": 0.0}


class AdamW(Optimizer):
    rule = "adamw"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "wd": 0.01}


OPTIMIZERS = {"sgd": SGD, "gd": BatchGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params, **kw) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **kw)
