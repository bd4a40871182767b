"""mse: loss = 1/(N C) sum (pred - target)^2."""

from __future__ import annotations

from tests.layers._shared import normal


def cases(rng):
    return [("3x4", {"pred": normal(rng, 3, 4), "target": normal(rng, 3, 4)}),
            ("batch1", {"pred": normal(rng, 1, 1), "target": normal(rng, 1, 1)})]


def forward(t):
    import torch.nn.functional as F
    return {"loss": F.mse_loss(t["pred"], t["target"])}


def mse_dpred(g, pred, target):
    return 2 * g * (pred - target) / pred.size


def mse_dtarget(g, pred, target):
    return 2 * g * (target - pred) / target.size


def mse_dpred_no_mean(g, pred, target):
    return 2 * g * (pred - target)  # mistake: missing 1/(N C)


def mse_dpred_per_row(g, pred, target):
    return 2 * g * (pred - target) / pred.shape[0]  # mistake: 1/N instead of 1/(N C)


def mse_dtarget_sign(g, pred, target):
    return 2 * g * (pred - target) / pred.size  # mistake: sign of the target's gradient


RIGHT = [("pred", mse_dpred, "2 (pred - target) / size"), ("target", mse_dtarget, "2 (target - pred) / size")]
WRONG = [("pred", mse_dpred_no_mean, "missing 1/(N C)"), ("pred", mse_dpred_per_row, "1/N instead of 1/(N C)"),
         ("target", mse_dtarget_sign, "sign error")]
