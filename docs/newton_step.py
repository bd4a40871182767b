"""The Newton run of docs/guides/second-order.md: models.newton's Newton-CG on a tiny multinomial
logistic regression (a linear layer and cross-entropy, as a graph model), its H v products the
whole-model HVP of models.hvp. Nothing here computes a derivative.

    report()    # the guide's table (docs/hooks.py: <!-- symgrad:newton -->)

Part of the docs, not of the product.
"""

from __future__ import annotations

import numpy as np


def data(n: int = 60, d: int = 2, classes: int = 3, seed: int = 0):
    """Three overlapping Gaussian blobs in the plane (overlapping: the loss has a finite minimum)."""
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return centres[y] + rng.standard_normal((n, d)), y


def run(steps: int = 8):
    """Newton-CG from zero weights to |gradient| <= 1e-10 (float64 rounding sits near 1e-11 here);
    returns the Objective and the Trace."""
    from symgrad.models import newton

    x, y = data()
    model = newton.logistic_regression(x, y)
    model.store.flat[:] = 0.0
    obj = newton.Objective(model, x, y)
    return obj, newton.newton_cg(obj, tol=1e-10, max_iters=steps)


def report(steps: int = 8) -> str:
    """The guide's table: the loss and gradient norm after each Newton step."""
    obj, tr = run(steps)
    x, y = obj.data
    n_params = sum(int(np.prod(s)) for _, s in obj.model.store.spec.values())
    out = [f"Computed when this site was built: {len(y)} points, {x.shape[1]} features, {int(y.max()) + 1} "
           f"classes ({n_params} parameters), from zero weights.\n",
           "| Newton step | loss | gradient norm | H v products (CG iterations) | step length |",
           "|---|---|---|---|---|"]
    for it, loss, gnorm, n_cg, step in tr.iterations:
        out.append(f"| {it} | {loss:.10f} | {gnorm:.2e} | {n_cg or ''} | {step or ''} |")
    out.append(f"\n{obj.passes} passes over the data in all (each loss-and-gradient and each H v is one).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(report())
