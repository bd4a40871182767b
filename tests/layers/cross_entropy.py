"""cross_entropy: loss = -1/N sum_n log softmax(logits[n])[targets[n]]."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal, one_hot, softmax


def cases(rng):
    return [("4x5", {"logits": normal(rng, 4, 5), "targets": rng.integers(0, 5, 4)}),
            ("batch1", {"logits": normal(rng, 1, 3), "targets": np.array([2])}),
            ("logits~1e3", {"logits": normal(rng, 3, 4) * 1e3, "targets": np.array([0, 3, 1])})]


def forward(t):
    import torch.nn.functional as F
    return {"loss": F.cross_entropy(t["logits"], t["targets"])}


def cross_entropy_dlogits(g, logits, targets):
    N, V = logits.shape
    return g * (softmax(logits) - one_hot(targets, V)) / N


def cross_entropy_no_mean(g, logits, targets):
    return g * (softmax(logits) - one_hot(targets, logits.shape[1]))  # mistake: missing 1/N


def cross_entropy_sign(g, logits, targets):
    return g * (one_hot(targets, logits.shape[1]) - softmax(logits)) / logits.shape[0]  # sign error


def cross_entropy_ignores_g(g, logits, targets):
    return (softmax(logits) - one_hot(targets, logits.shape[1])) / logits.shape[0]  # mistake: g = 1


RIGHT = [("logits", cross_entropy_dlogits, "(softmax - onehot) / N")]
WRONG = [("logits", cross_entropy_no_mean, "missing 1/N"), ("logits", cross_entropy_sign, "sign error"),
         ("logits", cross_entropy_ignores_g, "upstream g ignored")]
