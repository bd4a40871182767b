"""The MLP classifier: Linear -> act -> ... -> Linear with a cross-entropy head, trained on two
interleaved spirals (`symgrad train mlp`, the docs' MLP loss curve).

A graph of derived layers declared forward only (`models.graph`), trained through its planned,
printed step; `MLPTask` is the run as a `models.trainer.Task`, `train_mlp` the command's loop
over it (or Newton-CG, `models.newton`, on the full set).
"""

from __future__ import annotations

import numpy as np

from .data import DataLoader, spirals
from .graph import ModelGraph, normal
from .module import GraphModel
from .trainer import Task, rng_state, set_rng_state


def mlp_graph(sizes, act, dtype, store, rng, N, loss=True) -> ModelGraph:
    """Linear -> act -> ... -> Linear on N rows, with a cross-entropy (log-loss) head."""
    G = ModelGraph("mlp", dtype, store)
    h = G.input("x", (N, sizes[0]))
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        name = f"layers.{2 * i}"
        h = G.layer("linear", name, x=h, W=G.param(name + ".W", (a, b), normal(rng, 1 / np.sqrt(a))),
                    b=G.param(name + ".b", (b,)))
        if i < len(sizes) - 2:
            h = G.layer(act, f"layers.{2 * i + 1}", x=h)
    G.result("logits", h)
    if loss:
        G.loss(G.layer("cross_entropy", "loss", logits=h, targets=G.input("y", (N,), integer=True)))
    return G


class MLP(GraphModel):
    """Linear -> act -> ... -> Linear, with a cross-entropy (log-loss) head."""

    def __init__(self, sizes, act="tanh", seed=0, dtype="float32"):
        self.sizes, self.act = list(sizes), act
        super().__init__(dtype, seed)
        self.declare((1,))

    def build(self, store, rng, N, loss=True):
        return mlp_graph(self.sizes, self.act, self.dtype, store, rng, N, loss)

    def batch(self, x, y=None):
        x = np.asarray(x)
        return (x.shape[0],), ({"x": x} if y is None else {"x": x, "y": np.asarray(y)})

    def forward(self, x, y=None):
        key, inputs = self.batch(x, y)
        loss = self.run(key, inputs, loss=y is not None)
        h = self.result("logits").copy()
        return h if y is None else (h, loss)

    def accuracy(self, x, y) -> float:
        was = self.training
        self.eval()
        try:
            return float((self(x).argmax(-1) == y).mean())
        finally:
            self.train(was)


class MLPTask(Task):
    """The MLP of `symgrad train mlp` on two spirals: steps on mini-batches of the training spirals
    (batch_size None: the whole set, one step an epoch), validation on held-out spirals (another
    seed)."""

    kind = "mlp"

    def __init__(self, seed=0, hidden=64, batch_size=None, dtype="float32"):
        self.seed, self.batch_size = seed, batch_size
        self.X, self.y = spirals(300, seed=seed)
        self.Xv, self.yv = spirals(300, seed=seed + 100)
        self.model = MLP([2, hidden, hidden, 2], "tanh", seed=seed, dtype=dtype)
        self.loader = DataLoader(self.X, self.y, batch_size=batch_size, seed=seed)
        self._batches = iter(())

    def train_step(self) -> float:
        batch = next(self._batches, None)
        if batch is None:  # the next epoch, in a new shuffled order
            self._batches = iter(self.loader)
            batch = next(self._batches)
        _, loss = self.model(*batch)
        self.model.backward()
        return float(loss)

    def val_loss(self) -> float:
        self.model.eval()
        try:
            return float(self.model(self.Xv, self.yv)[1])
        finally:
            self.model.train()

    def val_accuracy(self) -> float:
        return self.model.accuracy(self.Xv, self.yv)

    def rng_state(self):
        return rng_state(self.loader.rng)

    def set_rng_state(self, state):
        set_rng_state(self.loader.rng, state)

    def config(self):
        return {"model": {"sizes": self.model.sizes, "act": self.model.act},
                "data": "models.data.spirals(300, seed) / held-out seed + 100",
                "batch_size": self.batch_size or len(self.X), "seed": self.seed}


def train_mlp(steps=600, lr=0.01, optimizer="adam", batch_size=None, seed=0, hidden=64, log=print,
              dtype="float32"):
    """Train the MLP on two spirals; returns (model, accuracy on a held-out spiral set, losses).
    `optimizer="newton-cg"`: Newton-CG on the full set (models.newton), `steps` Newton iterations."""
    from . import newton
    from .optim import make_optimizer
    task = MLPTask(seed=seed, hidden=hidden, batch_size=batch_size, dtype=dtype)
    model = task.model
    if optimizer == newton.NAME:  # full batch; a step is one Newton iteration (CG on HVPs inside)
        trace = newton.newton_cg(newton.Objective(model, task.X, task.y), max_iters=steps, tol=0.0, damping=1.0,
                                 log=lambda line: log(f"{line}  accuracy {task.val_accuracy():.3f}"))
        return model, task.val_accuracy(), [loss for _, loss in trace.points]
    opt = make_optimizer(optimizer, model.parameters(), lr=lr)
    losses = []
    for step in range(1, steps + 1):
        model.zero_grad()
        losses.append(task.train_step())
        opt.step()
        if step % max(1, steps // 5) == 0:
            log(f"step {step:5d}  loss {losses[-1]:.4f}  accuracy {task.val_accuracy():.3f}")
    return model, task.val_accuracy(), losses


__all__ = ["MLP", "MLPTask", "mlp_graph", "train_mlp"]
