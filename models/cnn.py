"""A small CNN on scikit-learn's 8x8 digits (1,797 images, bundled with the package: no download).

    x (N, 1, 8, 8) -> conv 3x3, padding 1 (1 -> C1) -> relu -> max_pool 2x2 -> (N, C1, 4, 4)
                   -> conv 3x3, padding 1 (C1 -> C2) -> relu -> max_pool 2x2 -> (N, C2, 2, 2)
                   -> flatten (a view) -> linear (4 C2 -> 10) -> cross-entropy

Declared forward only, as a graph of the derived conv2d / max_pool2d / relu / linear layers
(derive/builtin/conv.py, pooling.py); trained through its planned, printed step like every
other model. relu, a layer over rows, sees each conv output as the (N, C*H*W) view of it, and
flatten is a view too: neither is a copy, and their gradients are the same views.

`symgrad train cnn` (symgrad/train_small.py) trains it with Adam on a stratified 80/20 split of the
digits and reports held-out accuracy and time per epoch, against the same CNN in PyTorch eager
in the same run when torch is installed.
"""

from __future__ import annotations

import time

import numpy as np

from .graph import ModelGraph, normal
from .module import GraphModel

CHANNELS = (16, 32)  # the two convolutions' output channels (8, 16 reached 0.972 in 20 epochs; these 0.986)
CLASSES = 10


def _he(rng, fan_in):
    """He's initialisation for a relu layer of `fan_in` inputs: N(0, 2 / fan_in)."""
    return normal(rng, np.sqrt(2.0 / fan_in))


def cnn_graph(channels, dtype, store, rng, N, loss=True) -> ModelGraph:
    """The CNN at batch N (parameters from `store`, drawn from `rng` on first use)."""
    G = ModelGraph("cnn", dtype, store)
    h = G.input("x", (N, 1, 8, 8))
    c_in, side = 1, 8
    for i, c in enumerate(channels):
        p = f"conv{i + 1}"
        h = G.layer("conv2d_p1", p, x=h, w=G.param(p + ".w", (c, c_in, 3, 3), _he(rng, 9 * c_in)),
                    b=G.param(p + ".b", (c,)))
        h = G.view(G.layer("relu", f"relu{i + 1}", x=G.view(h, (N, c * side * side))), (N, c, side, side))
        h = G.layer("max_pool2d", f"pool{i + 1}", x=h)
        c_in, side = c, side // 2
    feat = c_in * side * side
    logits = G.layer("linear", "fc", x=G.view(h, (N, feat)),
                     W=G.param("fc.W", (feat, CLASSES), _he(rng, feat)), b=G.param("fc.b", (CLASSES,)))
    G.result("logits", logits)
    if loss:
        G.loss(G.layer("cross_entropy", "loss", logits=logits, targets=G.input("y", (N,), integer=True)))
    return G


class CNN(GraphModel):
    """conv-relu-pool x 2, linear, cross-entropy (see the module docstring)."""

    def __init__(self, channels=CHANNELS, seed=0, dtype="float32"):
        self.channels = tuple(channels)
        super().__init__(dtype, seed)
        self.declare((1,))

    def build(self, store, rng, N, loss=True):
        return cnn_graph(self.channels, self.dtype, store, rng, N, loss)

    def forward(self, x, y=None):
        x = np.asarray(x, dtype=self.dtype).reshape(-1, 1, 8, 8)
        inputs = {"x": x} if y is None else {"x": x, "y": np.asarray(y)}
        loss = self.run((x.shape[0],), inputs, loss=y is not None)
        logits = self.result("logits").copy()
        return logits if y is None else (logits, loss)

    def accuracy(self, x, y, batch=512) -> float:
        was = self.training
        self.eval()
        try:
            hits = sum(int((self(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                       for i in range(0, len(y), batch))
            return hits / len(y)
        finally:
            self.train(was)


def digits(seed=0, test_fraction=0.2):
    """(X_train, y_train, X_test, y_test): scikit-learn's 8x8 digits scaled to [0, 1], split per
    class (stratified) with `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits come with scikit-learn: pip install -e \".[cnn]\"") from None
    d = load_digits()
    X, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:int(round(test_fraction * len(idx)))]] = True
    return X[~test], y[~test], X[test], y[test]


def train_cnn(epochs=20, lr=3e-3, batch_size=32, seed=0, log=print, dtype="float32", peer=True):
    """Train the CNN with Adam; returns a dict: model, accuracy (held out), losses, and the
    seconds per epoch of symgrad and, with `peer` and torch installed, of the same CNN in
    PyTorch eager (same init, data order and optimizer), epochs alternating between the two."""
    from .optim import Adam

    Xtr, ytr, Xte, yte = digits(seed)
    model = CNN(seed=seed, dtype=dtype)
    opt = Adam(model.parameters(), lr=lr)
    torch_epoch = _torch_peer(model, lr) if peer else None
    rng = np.random.default_rng(seed)
    losses, ours, theirs = [], [], []
    for ep in range(epochs):
        order = rng.permutation(len(ytr))
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        t0 = time.perf_counter()
        for b in batches:
            model.zero_grad()
            _, loss = model(Xtr[b], ytr[b])
            model.backward()
            opt.step()
            losses.append(loss)
        ours.append(time.perf_counter() - t0)
        if torch_epoch is not None:
            theirs.append(torch_epoch(Xtr, ytr, batches))
        if (ep + 1) % max(1, epochs // 5) == 0 or ep + 1 == epochs:
            log(f"epoch {ep + 1:3d}  loss {np.mean(losses[-len(batches):]):.4f}  "
                f"held-out accuracy {model.accuracy(Xte, yte):.4f}  ({ours[-1] * 1e3:.0f} ms)")
    return {"model": model, "accuracy": model.accuracy(Xte, yte), "losses": losses,
            "epoch_s": ours, "torch_epoch_s": theirs, "batches_per_epoch": len(batches)}


def _torch_peer(model, lr):
    """One epoch of the same CNN in PyTorch eager (weights copied from `model`), or None
    without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    p = {n: torch.tensor(v.data, requires_grad=True) for n, v in model.named_parameters()}
    opt = torch.optim.Adam(list(p.values()), lr=lr)
    names = [f"conv{i + 1}" for i in range(len(model.channels))]

    def epoch(X, y, batches):
        t0 = time.perf_counter()
        for b in batches:
            h = torch.from_numpy(X[b])
            for n in names:
                h = F.max_pool2d(F.relu(F.conv2d(h, p[n + ".w"], p[n + ".b"], padding=1)), 2)
            loss = F.cross_entropy(h.flatten(1) @ p["fc.W"] + p["fc.b"], torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    return epoch


__all__ = ["CNN", "cnn_graph", "digits", "train_cnn"]
