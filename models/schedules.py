"""Learning-rate schedules: callables from the step index (0-based) to the learning rate."""

from __future__ import annotations

import math


def check_lr(lr) -> float:
    """The learning rate as a float; ValueError for a negative, NaN or infinite one."""
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"learning rate must be a number, got {lr!r}") from None
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr}")
    return lr


class Constant:
    def __init__(self, lr):
        self.lr = check_lr(lr)

    def __call__(self, step: int) -> float:
        return self.lr


class StepDecay:
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr, step_size: int, gamma: float = 0.1):
        self.lr, self.step_size, self.gamma = check_lr(lr), int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class CosineWarmup:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_lr` at `total` steps."""

    def __init__(self, lr, warmup: int, total: int, min_lr: float = 0.0):
        self.lr, self.warmup, self.total, self.min_lr = check_lr(lr), int(warmup), int(total), check_lr(min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if step >= self.total:
            return self.min_lr
        frac = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (self.lr - self.min_lr)


SCHEDULES = ("constant", "step", "cosine")


def make_schedule(name: str, lr: float, steps: int):
    """A schedule by name for a run of `steps` steps: constant, step (x0.1 at 2/3), cosine (10% warm-up)."""
    if name == "constant":
        return Constant(lr)
    if name == "step":
        return StepDecay(lr, max(1, (2 * steps) // 3), 0.1)
    if name == "cosine":
        return CosineWarmup(lr, max(1, steps // 10), steps, lr / 10)
    raise ValueError(f"unknown schedule '{name}'; choose one of: {', '.join(SCHEDULES)}")
