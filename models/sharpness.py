"""Sharpness: the largest eigenvalue of the loss's Hessian, by Lanczos iteration over HVPs.

    lam, iters = top_eigenvalue(lambda v: model.hvp(v, x, y)[2], v0)
    lam = sharpness(model, x, y)                     # the same, from a seeded start

Lanczos builds an orthonormal Krylov basis q_1..q_k of H from products H q alone (models.hvp:
the derived layers' tangent and HVP kernels through the model graph) and the tridiagonal
T_k = Qᵀ H Q; T_k's largest eigenvalue converges to H's largest far faster than power
iteration's Rayleigh quotient does (Golub & Van Loan, ch. 10). The basis is re-orthogonalised
against every earlier vector (k is at most a few dozen), so no spurious copies of converged
eigenvalues appear. Arithmetic is float64 whatever the model's dtype.

`symgrad train gpt --sharpness-every N` records it on one fixed training batch during training
(models.tasks.GPTTask.sharpness), the curve "edge of stability" studies draw (Cohen et al. 2021:
with full-batch GD the sharpness rises to about 2/lr; Adam's preconditioned sharpness behaves
alike).
"""

from __future__ import annotations

import numpy as np

ITERS = 20  # Lanczos steps at most (HVPs) per measurement
RTOL = 1e-3  # stop when the top Ritz value moves by less than this, relatively


def top_eigenvalue(matvec, v0, iters: int = ITERS, rtol: float = RTOL) -> tuple[float, int]:
    """(largest eigenvalue estimate, HVPs used) of the symmetric operator `matvec` from v0."""
    q = np.asarray(v0, np.float64)
    q = q / np.linalg.norm(q)
    basis, alphas, betas = [q], [], []
    top = None
    for k in range(iters):
        w = np.asarray(matvec(q.astype(v0.dtype)), np.float64)
        a = float(q @ w)
        alphas.append(a)
        for b in basis:  # full re-orthogonalisation (twice is enough: Kahan)
            w -= (b @ w) * b
        for b in basis:
            w -= (b @ w) * b
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        new = float(np.linalg.eigvalsh(t)[-1])
        beta = float(np.linalg.norm(w))
        if top is not None and abs(new - top) <= rtol * abs(new) or beta <= 1e-10 * abs(new):
            return new, k + 1
        top = new
        betas.append(beta)
        q = w / beta
        basis.append(q)
    return top, iters


def sharpness(model, *batch, iters: int = ITERS, seed: int = 0) -> tuple[float, int]:
    """(top Hessian eigenvalue of the loss on `batch`, HVPs used), from a seeded random start."""
    rng = np.random.default_rng(seed)
    v0 = model.store.flat_like(rng.standard_normal)
    return top_eigenvalue(lambda v: model.hvp(v, *batch)[2], v0, iters)


__all__ = ["top_eigenvalue", "sharpness", "ITERS"]
