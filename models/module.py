"""Parameters and modules: NumPy arrays with their gradients, in a tree of modules.

Conventions follow PyTorch where they fit: `parameters()`, `named_parameters()`, `zero_grad()`,
`train()`/`eval()`, `state_dict()`/`load_state_dict()`. Every model is a `GraphModel`: declared
as a graph of derived layers, run through its planned, printed step; `backward()` (no
arguments) writes the gradients of the last forward's loss into every `Param.grad`.
"""

from __future__ import annotations

import numpy as np


class Param:
    """A parameter: `data` and `grad`, two contiguous arrays of one shape and dtype."""

    __slots__ = ("data", "grad")

    def __init__(self, data, grad=None):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data) if grad is None else grad

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Param(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: children and parameters are found among the attributes, in definition order."""

    training = True

    def _children(self):
        for name, v in vars(self).items():
            if isinstance(v, (Param, Module)):
                yield name, v
            elif isinstance(v, (list, tuple)) and v and all(isinstance(e, Module) for e in v):
                for i, e in enumerate(v):
                    yield f"{name}.{i}", e

    def named_parameters(self, prefix=""):
        for name, v in self._children():
            full = f"{prefix}{name}"
            if isinstance(v, Param):
                yield full, v
            else:
                yield from v.named_parameters(full + ".")

    def parameters(self) -> list[Param]:
        return [p for _, p in self.named_parameters()]

    def grads(self) -> list[np.ndarray]:
        return [p.grad for p in self.parameters()]

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad.fill(0)

    def modules(self):
        yield self
        for _, v in self._children():
            if isinstance(v, Module):
                yield from v.modules()

    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self) -> dict:
        return {n: p.data.copy() for n, p in self.named_parameters()}

    def load_state_dict(self, state: dict):
        mine = dict(self.named_parameters())
        missing, extra = set(mine) - set(state), set(state) - set(mine)
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")
        for n, p in mine.items():
            a = np.asarray(state[n])
            if a.shape != p.data.shape:
                raise ValueError(f"state dict entry '{n}' has shape {a.shape}, the model's is {p.data.shape}")
            p.data[...] = a

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class GraphModel(Module):
    """A model declared as a graph of derived layers (`models.graph`): its parameters are views
    of one flat buffer (and their gradients of a twin), and each configuration it runs at
    (batch, sequence length; training step or forward only) is planned and printed once
    (`models.step.Step`), then called. Subclasses define `build(store, rng, *key, loss=...)`,
    returning the `ModelGraph` at that configuration, and call `self.declare(key)` once."""

    def __init__(self, dtype, seed=0):
        from .graph import ParamStore
        self.dtype = np.dtype(dtype)
        self.store = ParamStore(self.dtype)
        self._rng = np.random.default_rng(seed)
        self._steps: dict = {}
        self._last = None  # the step of the last forward call
        self._params: dict = {}
        self._hvps: dict = {}

    def build(self, store, rng, *key, loss=True):
        raise NotImplementedError

    def declare(self, key):
        """Declare (and initialise) the parameters by building the graph at one configuration."""
        self.step_for(tuple(key), loss=False)
        self._params = {n: Param(self.store.view(n), self.store.view(n, self.store.grad))
                        for n in self.store.spec}

    # The batch (key[0] rows) is independent rows with the loss their mean: a step on n threads
    # may run as n shards of rows, one a thread (models.shards). A subclass that says so must
    # take each input's rows along its leading axis, in proportion to key[0].
    splits_by_rows = False

    def step_for(self, key, loss: bool):
        from . import threads
        from .shards import ShardedStep
        from .step import Step
        train = self.training and loss
        n = threads.most() if self.splits_by_rows and key[0] >= 2 else 1
        n = min(n, key[0])
        sk = (tuple(key), loss, train, n)
        step = self._steps.get(sk)
        if step is None:
            if n > 1:
                step = ShardedStep(self, tuple(key), n, train=train, loss=loss)
            else:
                step = Step(self.build(self.store, self._rng, *key, loss=loss), train=train)
            self._steps[sk] = step
        return step

    def run(self, key, inputs: dict, loss: bool):
        """One forward call at configuration `key`; returns the loss (0.0 without one)."""
        step = self.step_for(key, loss)
        self._last = step
        return step.forward(**inputs)

    def result(self, name):
        return self._last.results[name]

    def backward(self):
        """Gradients of the last forward's loss into every Param.grad (they are overwritten:
        zero_grad is not needed between steps)."""
        if self._last is None or self._last.plan.train is False:
            raise RuntimeError("backward() needs a forward call with targets, in training mode")
        self._last.backward()

    def clear(self):
        self._last = None

    def batch(self, *data) -> tuple:
        """(configuration key, graph inputs by name) of one batch, as `forward(*data)` takes it."""
        raise NotImplementedError

    def hvp(self, v, *data):
        """(loss, gradient, H v) of the loss on one batch (`forward`'s arguments, targets
        included) at the current parameters, for a direction `v` flat like `store.flat`: the
        whole-model Hessian-vector product of models.hvp, planned once per configuration."""
        key, inputs = self.batch(*data)
        return self.hvp_at(key)(inputs, v)

    def hvp_at(self, key):
        """The models.hvp.ModelHVP of the loss at configuration `key`, built once."""
        from .hvp import ModelHVP
        if key not in self._hvps:
            self._hvps[key] = ModelHVP(self.build(self.store, self._rng, *key, loss=True))
        return self._hvps[key]

    def named_parameters(self, prefix=""):
        for name, p in self._params.items():
            yield prefix + name, p

    def zero_grad(self):
        self.store.grad.fill(0)

    @property
    def source_path(self):
        """The printed step file of the last configuration run."""
        return self._last.source_path if self._last is not None else None
