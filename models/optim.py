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
from .graph import ALIGN
from .plan import kernels_of
from .schedules import Constant, check_lr


def grad_norm(params) -> float:
    """Global L2 norm of the parameters' gradients (the `sumsq` rule's kernel: once over a
    model's flat gradient buffer, else once per parameter)."""
    params = list(params)
    flat = flat_span(params)
    vecs = [flat[1]] if flat is not None else [p.grad.reshape(-1) for p in params]
    total = 0.0
    for g in vecs:
        total += float(_kernels("sumsq", g.dtype).forward(grad=g)["s"])
    return math.sqrt(total)


def flat_span(params):
    """(values, gradients): two 1-D views covering every parameter, when the parameters are views
    of one flat buffer laid out in order (a graph model's `ParamStore`; the padding between
    them is zero and stays zero under every rule), else None."""
    if not params:
        return None
    base_d, base_g = params[0].data.base, params[0].grad.base
    if base_d is None or base_g is None or base_d.ndim != 1 or base_g.shape != base_d.shape:
        return None
    item = base_d.itemsize
    hi = None
    for p in params:
        if p.data.base is not base_d or p.grad.base is not base_g:
            return None
        o = (p.data.__array_interface__["data"][0] - base_d.__array_interface__["data"][0]) // item
        og = (p.grad.__array_interface__["data"][0] - base_g.__array_interface__["data"][0]) // item
        if o != og or (hi is not None and not 0 <= o - hi < ALIGN) or (hi is None and o >= ALIGN):
            return None  # not in order, or a parameter between them is not in the list
        hi = o + p.data.size
    if not 0 <= base_d.size - hi < ALIGN:
        return None
    return base_d, base_g


def clip_grad_norm(params, max_norm: float) -> tuple[float, float]:
    """(norm, coefficient): the coefficient min(1, max_norm / (norm + 1e-6)) that clipping by global
    norm applies to every gradient. Optimizers apply it inside their update kernel."""
    norm = grad_norm(params)
    return norm, (min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else 1.0)


def _kernels(rule, dtype):
    """The compiled kernel of update rule `rule` (derived once per process, cached on disk)."""
    return kernels_of(rules.rule(rule), dtype)


class _RuleDefaults:
    """An optimizer class's hyper-parameters and their defaults: the constants its update rule
    (models/rules.py) declares, less those set at every step. Their one home is the rule."""

    def __get__(self, obj, cls) -> dict:
        return {c.name: c.default for c in rules.rule(cls.rule).constants if c.name not in rules.PER_STEP}


class Optimizer:
    rule = "sgd"
    defaults = _RuleDefaults()

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
        # one fused update over a model's flat buffers when its parameters are views of them;
        # state is flat too, and `state` holds per-parameter views of it
        self._flat = flat_span(self.params)
        if self._flat is not None:
            self._flat_state = {s: np.zeros_like(self._flat[0]) for s in rules.STATE[self.rule]}
            self.state = {s: [buf[o:o + p.data.size].reshape(p.shape)
                              for o, p in zip(self._offsets(), self.params)]
                          for s, buf in self._flat_state.items()}
        else:
            self.state = {s: [np.zeros_like(p.data) for p in self.params] for s in rules.STATE[self.rule]}
        dtype = self.params[0].data.dtype
        self._k = _kernels(self.rule, dtype)
        self._consts = {c.name for c in self._k.derivation.constants}
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
        k = self._k
        if self._flat is not None:
            parts = [(self._flat[0], self._flat[1], self._flat_state)]
        else:
            parts = [(p.data.reshape(-1), p.grad.reshape(-1), {s: bufs[i].reshape(-1) for s, bufs in self.state.items()})
                     for i, p in enumerate(self.params)]
        for data, grad, state in parts:
            args = {"p": data, "grad": grad, **state}
            out = {"p_new": data, **{f"{s}_new": b for s, b in state.items()}}
            k.forward(out=out, **args, **consts)

    def _offsets(self):
        base = self._flat[0].__array_interface__["data"][0]
        return [(p.data.__array_interface__["data"][0] - base) // p.data.itemsize for p in self.params]

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


BatchGD = SGD


class Momentum(Optimizer):
    rule = "momentum"


class Nesterov(Optimizer):
    rule = "nesterov"


class AdaGrad(Optimizer):
    rule = "adagrad"


class RMSprop(Optimizer):
    rule = "rmsprop"


class Adam(Optimizer):
    rule = "adam"


class AdamW(Optimizer):
    rule = "adamw"


OPTIMIZERS = {"sgd": SGD, "gd": BatchGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params, **kw) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **kw)
