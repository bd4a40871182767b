"""Optimizer trajectories on Rosenbrock's function, run at docs build time for the picture in
the gradient-descent guide (docs/figures.py draws them).

The function (`rosenbrock`) is a layer defined by its forward expression only; its gradient is
the backward kernel that derive/ and compiled/ make from it, and the steps are taken by the
optimizers of `models.optim` (the update rules of models/rules.py, printed into kernels). On a
warm kernel cache the runs take well under a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from symgrad import compiled, derive, models


def rosenbrock(G):
    """Rosenbrock's banana: f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, at N points (x[i], y[i]).
    The minimum, 0, is at (1, 1), at the bottom of a long curved valley."""
    (N,) = G.dims("N")
    x = G.input("x", (N,))
    y = G.input("y", (N,))
    (i,) = G.indices(i=N)
    G.output(G.bind("f", (i,), (1 - x[i]) ** 2 + 100 * (y[i] - x[i] ** 2) ** 2))


START = (-1.2, 1.0)
# name on the plot -> (models.optim class name, hyper-parameters), tuned by eye so that each
# shows its character in STEPS steps: GD crawls along the valley, momentum overshoots and
# swings, RMSprop and Adam take steps of about lr per coordinate whatever the gradient's size.
RUNS = {"gradient descent": ("SGD", {"lr": 1e-3}),
        "momentum": ("Momentum", {"lr": 5e-4, "mu": 0.9}),
        "RMSprop": ("RMSprop", {"lr": 1e-2, "alpha": 0.99}),
        "Adam": ("Adam", {"lr": 0.1, "beta1": 0.9, "beta2": 0.999})}
STEPS = 500


@dataclass
class Trajectories:
    paths: dict                  # name -> (STEPS + 1, 2) array of points
    grid: tuple                  # (X, Y, F) for the contour plot
    seconds: float = 0.0


def _gradient_fn(d):
    """(x, y) -> (df/dx, df/dy) from the derived backward of `d` (its compiled float64 kernel),
    and (X, Y) -> f on a grid from its forward kernel."""
    k = compiled.kernels(d, "float64")

    def grad(x, y):
        r = k.backward(g=np.ones(1), x=np.array([x]), y=np.array([y]))
        return float(r["x"][0]), float(r["y"][0])

    def value(X, Y):
        return k.forward(x=np.ascontiguousarray(X.ravel()), y=np.ascontiguousarray(Y.ravel()))["f"] \
            .reshape(X.shape)
    return grad, value


def trajectories(steps: int = STEPS, start=START, runs=None) -> Trajectories:
    """Run each optimizer of `runs` from `start` for `steps` steps on the Rosenbrock layer."""
    t0 = time.perf_counter()
    d = derive.define("rosenbrock", rosenbrock)
    grad, value = _gradient_fn(d)
    paths = {}
    for name, (cls, hyper) in (runs or RUNS).items():
        p = models.Param(np.array(start, dtype=np.float64))
        opt = getattr(models, cls)([p], **hyper)
        path = [p.data.copy()]
        for _ in range(steps):
            p.grad[:] = grad(*p.data)
            opt.step()
            path.append(p.data.copy())
        paths[name] = np.array(path)
    X, Y = np.meshgrid(np.linspace(-2, 2, 241), np.linspace(-1, 3, 241))
    F = value(X, Y)
    return Trajectories(paths, (X, Y, F), time.perf_counter() - t0)
