"""The MLP classifier: Linear -> act -> ... -> Linear with a cross-entropy head, trained on two
interleaved spirals (`symgrad train mlp`, the docs' MLP loss curve).

A graph of derived layers declared forward only (`models.graph`), trained through its planned,
printed step; `train_mlp` is the command's loop (or Newton-CG, `models.newton`, on the full set).
"""

from __future__ import annotations

import numpy as np

from .data import DataLoader, spirals
from .graph import ModelGraph, normal
from .module import GraphModel


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


def train_mlp(steps=600, lr=0.01, optimizer="adam", batch_size=None, seed=0, hidden=64, log=print,
              dtype="float32"):
    """Train the MLP on two spirals; returns (model, accuracy on a held-out spiral set, losses).
    `optimizer="newton-cg"`: Newton-CG on the full set (models.newton), `steps` Newton iterations."""
    from . import newton
    from .optim import make_optimizer
    X, y = spirals(300, seed=seed)
    Xt, yt = spirals(300, seed=seed + 100)
    model = MLP([2, hidden, hidden, 2], "tanh", seed=seed, dtype=dtype)
    if optimizer == newton.NAME:  # full batch; a step is one Newton iteration (CG on HVPs inside)
        trace = newton.newton_cg(newton.Objective(model, X, y), max_iters=steps, tol=0.0, damping=1.0,
                                 log=lambda line: log(f"{line}  accuracy {model.accuracy(Xt, yt):.3f}"))
        return model, model.accuracy(Xt, yt), [loss for _, loss in trace.points]
    opt = make_optimizer(optimizer, model.parameters(), lr=lr)
    loader = DataLoader(X, y, batch_size=batch_size, seed=seed)
    losses, step = [], 0
    while step < steps:
        for xb, yb in loader:
            model.zero_grad()
            _, loss = model(xb, yb)
            model.backward()
            opt.step()
            losses.append(loss)
            step += 1
            if step % max(1, steps // 5) == 0:
                log(f"step {step:5d}  loss {loss:.4f}  accuracy {model.accuracy(Xt, yt):.3f}")
            if step >= steps:
                break
    return model, model.accuracy(Xt, yt), losses


__all__ = ["MLP", "mlp_graph", "train_mlp"]
