"""Concrete inputs for every built-in layer, edge cases included: batch of one, feature size
one, logits around 1e3, near-constant rows, a single time step."""

from __future__ import annotations

import numpy as np


def _r(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def cases(name: str, seed: int = 0) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    elementwise = [("3x4", {"x": _r(rng, 3, 4)}), ("batch1", {"x": _r(rng, 1, 5)}),
                   ("feature1", {"x": _r(rng, 4, 1)})]
    if name in ("relu", "tanh", "sigmoid", "gelu", "gelu_erf"):
        # keep ReLU's inputs away from its kink, where finite differences are meaningless
        return [(label, {"x": np.where(np.abs(a["x"]) < 0.05, 0.3, a["x"])}) for label, a in elementwise]
    if name == "softmax" or name == "log_softmax":
        return elementwise + [("logits~1e3", {"x": _r(rng, 3, 5) + 1e3 * rng.choice([-1, 1], (3, 5))})]
    if name == "linear":
        return [("3x4->2", {"x": _r(rng, 3, 4), "W": _r(rng, 4, 2), "b": _r(rng, 2)}),
                ("batch1", {"x": _r(rng, 1, 3), "W": _r(rng, 3, 2), "b": _r(rng, 2)}),
                ("in1-out1", {"x": _r(rng, 2, 1), "W": _r(rng, 1, 1), "b": _r(rng, 1)})]
    if name == "cross_entropy":
        return [("4x5", {"logits": _r(rng, 4, 5), "targets": rng.integers(0, 5, 4)}),
                ("batch1", {"logits": _r(rng, 1, 3), "targets": np.array([2])}),
                ("logits~1e3", {"logits": _r(rng, 3, 4) * 1e3, "targets": np.array([0, 3, 1])})]
    if name == "mse":
        return [("3x4", {"pred": _r(rng, 3, 4), "target": _r(rng, 3, 4)}),
                ("batch1", {"pred": _r(rng, 1, 1), "target": _r(rng, 1, 1)})]
    if name == "layernorm":
        near = 2.0 + 1e-3 * _r(rng, 2, 6)
        return [("3x5", {"x": _r(rng, 3, 5), "gamma": _r(rng, 5), "beta": _r(rng, 5)}),
                ("batch1", {"x": _r(rng, 1, 4), "gamma": _r(rng, 4), "beta": _r(rng, 4)}),
                ("near-constant rows", {"x": near, "gamma": _r(rng, 6), "beta": _r(rng, 6)})]
    if name == "embedding":
        return [("ids with repeats", {"ids": np.array([0, 2, 2, 1, 0]), "table": _r(rng, 4, 3)}),
                ("batch1", {"ids": np.array([1]), "table": _r(rng, 2, 1)})]
    if name == "attention":
        return [("B2 T4 d3", {n: _r(rng, 2, 4, 3) for n in "qkv"}),
                ("T1", {n: _r(rng, 1, 1, 2) for n in "qkv"}),
                ("large scores", {"q": _r(rng, 1, 3, 2, scale=8.0), "k": _r(rng, 1, 3, 2, scale=8.0),
                                  "v": _r(rng, 1, 3, 2)})]
    if name == "attention_heads":  # (B, T, H, D): heads side by side in each row
        return [("B2 T4 H2 D3", {n: _r(rng, 2, 4, 2, 3) for n in "qkv"}),
                ("T1 H1", {n: _r(rng, 1, 1, 1, 2) for n in "qkv"}),
                ("large scores", {"q": _r(rng, 1, 3, 2, 2, scale=8.0), "k": _r(rng, 1, 3, 2, 2, scale=8.0),
                                  "v": _r(rng, 1, 3, 2, 2)})]
    if name == "multihead_attention":
        B, T, H, D = 2, 3, 2, 2
        C = H * D
        return [("B2 T3 H2 D2", {"x": _r(rng, B, T, C), **{w: _r(rng, C, H, D, scale=0.5) for w in ("Wq", "Wk", "Wv")},
                                 **{bb: _r(rng, H, D) for bb in ("bq", "bk", "bv")},
                                 "Wo": _r(rng, H, D, C, scale=0.5), "bo": _r(rng, C)})]
    if name == "rnn_cell":
        return [("N2 I3 H2", {"x": _r(rng, 2, 3), "h_prev": _r(rng, 2, 2), "Wxh": _r(rng, 3, 2),
                              "Whh": _r(rng, 2, 2), "bh": _r(rng, 2)}),
                ("batch1 H1", {"x": _r(rng, 1, 2), "h_prev": _r(rng, 1, 1), "Wxh": _r(rng, 2, 1),
                               "Whh": _r(rng, 1, 1), "bh": _r(rng, 1)})]
    if name == "lstm_cell":
        return [("N2 I3 H2", {"x": _r(rng, 2, 3), "h_prev": _r(rng, 2, 2), "c_prev": _r(rng, 2, 2),
                              "W": _r(rng, 5, 4, 2), "b": _r(rng, 4, 2)}),
                ("batch1 H1", {"x": _r(rng, 1, 1), "h_prev": _r(rng, 1, 1), "c_prev": _r(rng, 1, 1),
                               "W": _r(rng, 2, 4, 1), "b": _r(rng, 4, 1)})]
    if name == "residual":
        return [("3x4", {"a": _r(rng, 3, 4), "b": _r(rng, 3, 4)})]
    if name == "conv1d":
        return [("N2 C3 O2 W7 K3", {"x": _r(rng, 2, 3, 7), "w": _r(rng, 2, 3, 3), "b": _r(rng, 2)}),
                ("batch1 channel1 kernel1", {"x": _r(rng, 1, 1, 4), "w": _r(rng, 2, 1, 1), "b": _r(rng, 2)})]
    if name == "conv2d":
        return [("N2 C2 O3 5x6 K3x2", {"x": _r(rng, 2, 2, 5, 6), "w": _r(rng, 3, 2, 3, 2), "b": _r(rng, 3)}),
                ("batch1 channel1 kernel1", {"x": _r(rng, 1, 1, 3, 4), "w": _r(rng, 2, 1, 1, 1),
                                             "b": _r(rng, 2)})]
    if name in ("max_pool2d", "avg_pool2d"):
        # odd sizes: the last row and column fall outside every 2x2 window (gradient 0)
        return [("N2 C3 5x6", {"x": _r(rng, 2, 3, 5, 6)}), ("batch1 channel1 2x2", {"x": _r(rng, 1, 1, 2, 2)})]
    if name == "flatten":
        return [("N2 C3 2x4", {"x": _r(rng, 2, 3, 2, 4)}), ("batch1 1x1x1", {"x": _r(rng, 1, 1, 1, 1)})]
    raise KeyError(f"no test inputs for layer '{name}': add them to tests/layer_cases.py")
