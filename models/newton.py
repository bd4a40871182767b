"""Newton-CG (Hessian-free) training from the whole-model HVP, and how it compares.

Truncated Newton (Nocedal & Wright, Algorithm 7.1): at θ, solve H p = -∇L approximately by
conjugate gradients, using only Hessian-vector products (models.hvp: the derived layers' JVP and
HVP kernels through the model graph, so H is never formed), stopping at a relative residual
η = min(0.5, sqrt(|∇L|)) (superlinear convergence near the optimum) or at the first direction
of negative curvature (a non-convex model: the MLP), then backtracking (Armijo) along p.

Every evaluation over the full data set is one *pass*, counted by the `Objective`: a loss
(forward), a loss and gradient (forward and backward), or an HVP (forward, tangent forward,
backward and its tangent — two to three times a gradient's work; `compare` reports wall time
too, so that count does not flatter the HVP).

    obj = Objective(MLP([D, C], dtype="float64"), x, y)      # multinomial logistic regression
    res = newton_cg(obj, tol=1e-10)
    table = compare(lambda: Objective(...), gap=1e-8)          # Newton-CG, Adam, L-BFGS (SciPy)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

NAME = "newton-cg"  # the optimizer's name where one is chosen by name (symgrad train mlp --optimizer)


class Objective:
    """The full-batch loss of a graph model as a function of its flat parameter vector
    (`store.flat`'s layout; the padding between parameters stays zero)."""

    def __init__(self, model, *data):
        self.model, self.data = model, data
        self.passes = 0
        self.mask = model.store.flat_like(np.ones)
        key, self.inputs = model.batch(*data)
        self.hvp_pass = model.hvp_at(key)

    @property
    def theta(self) -> np.ndarray:
        return self.model.store.flat

    def _at(self, theta):
        if theta is not None and theta is not self.model.store.flat:
            self.model.store.flat[:] = theta * self.mask

    def loss(self, theta=None) -> float:
        self._at(theta)
        self.passes += 1
        self.model.eval()
        try:
            return float(self.model(*self.data)[-1])
        finally:
            self.model.train()

    def loss_grad(self, theta=None) -> tuple[float, np.ndarray]:
        """Loss and gradient from the planned training step."""
        self._at(theta)
        self.passes += 1
        loss = float(self.model(*self.data)[-1])
        self.model.backward()
        return loss, self.model.store.grad.copy()

    def hvp(self, v, theta=None) -> np.ndarray:
        self._at(theta)
        self.passes += 1
        return self.hvp_pass(self.inputs, v * self.mask)[2]


@dataclass
class Trace:
    """A run: (passes, loss) after each iteration, and the wall time in seconds; Newton-CG also
    keeps (iteration, loss, |gradient|, CG iterations that led there, step length) per iteration."""

    method: str
    points: list = field(default_factory=list)
    seconds: float = 0.0
    iterations: list = field(default_factory=list)

    def passes_to(self, target: float):
        """Passes until the loss first reached `target` (None: never)."""
        return next((p for p, l in self.points if l <= target), None)

    @property
    def final(self) -> float:
        return self.points[-1][1]


def conjugate_gradient(hvp, b, rtol: float, max_iters: int):
    """Approximately solve H p = b with H·v from `hvp`; stop at |r| <= rtol |b|, or at
    negative curvature (returning the last iterate, or b itself on the first step)."""
    p = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    rr = r @ r
    stop = (rtol ** 2) * rr
    for i in range(max_iters):
        hd = hvp(d)
        curv = d @ hd
        if curv <= 0:
            return (b.copy() if i == 0 else p), i + 1
        alpha = rr / curv
        p += alpha * d
        r -= alpha * hd
        rr_new = r @ r
        if rr_new <= stop:
            return p, i + 1
        d = r + (rr_new / rr) * d
        rr = rr_new
    return p, max_iters


def newton_cg(obj: Objective, *, tol: float = 1e-10, max_iters: int = 50, max_cg: int = 100,
              target: float | None = None, damping: float = 0.0, log=None) -> Trace:
    """Truncated Newton from the objective's current parameters (see the module docstring);
    stops at |∇L| <= tol, at the loss `target`, or after `max_iters` outer iterations.

    `damping` λ > 0 solves (H + λ I) p = -∇L instead, with λ adapted by Levenberg-Marquardt's rule
    as in Martens' Hessian-free training (times 3/2 when the loss fell by less than a quarter of
    what the quadratic model predicted, times 2/3 when by more than three quarters): for a
    non-convex model (the MLP), where H is indefinite away from a minimum."""
    tr = Trace("Newton-CG")
    t0 = time.perf_counter()
    theta = obj.theta.copy()
    loss, g = obj.loss_grad(theta)
    tr.points.append((obj.passes, loss))
    tr.iterations.append((0, loss, math.sqrt(g @ g), 0, 0.0))
    for it in range(max_iters):
        gn = math.sqrt(g @ g)
        if gn <= tol or (target is not None and loss <= target):
            break
        eta = min(0.5, gn)
        lam = damping
        p, n_cg = conjugate_gradient(lambda v: obj.hvp(v, theta) + lam * v, -g, eta, max_cg)
        slope = g @ p
        if slope >= 0:  # not a descent direction (cannot happen for CG from 0 unless H is indefinite)
            p, slope = -g, -(g @ g)
        step = 1.0
        while True:  # the gradient comes with each trial's loss: an accepted step costs one pass
            trial = theta + step * p
            new, g_new = obj.loss_grad(trial)
            if new <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        if damping:  # CG from 0 gives pᵀ(H + λI)p = -gᵀp: the model predicted a fall of -gᵀp/2
            rho = (new - loss) / (0.5 * slope * step)
            damping *= 1.5 if rho < 0.25 else (2 / 3 if rho > 0.75 else 1.0)
        theta, loss, g = trial, new, g_new
        tr.points.append((obj.passes, loss))
        tr.iterations.append((it + 1, loss, math.sqrt(g @ g), n_cg, step))
        if log:
            log(f"newton {it + 1:3d}  loss {loss:.12f}  |g| {math.sqrt(g @ g):.2e}  cg {n_cg:3d}  step {step:g}"
                + (f"  damping {damping:.3g}" if damping else "") + f"  passes {obj.passes}")
    tr.seconds = time.perf_counter() - t0
    return tr


def adam(obj: Objective, *, lr: float, max_passes: int, target: float | None = None) -> Trace:
    """Full-batch Adam (models.optim.Adam, the printed update rule), one pass per step."""
    from .optim import Adam
    tr = Trace(f"Adam (lr {lr:g})")
    t0 = time.perf_counter()
    opt = Adam(obj.model.parameters(), lr=lr)
    while obj.passes < max_passes:
        loss, _ = obj.loss_grad()  # leaves the gradient in store.grad
        tr.points.append((obj.passes, loss))
        if target is not None and loss <= target:
            break
        opt.step()
    tr.seconds = time.perf_counter() - t0
    return tr


def lbfgs(obj: Objective, *, max_passes: int, target: float | None = None) -> Trace:
    """SciPy's L-BFGS-B on the same loss and gradient (one pass per function evaluation)."""
    from scipy.optimize import minimize
    tr = Trace("L-BFGS (SciPy)")
    t0 = time.perf_counter()

    class Reached(Exception):
        pass

    def fun(theta):
        loss, g = obj.loss_grad(theta)
        tr.points.append((obj.passes, loss))
        if target is not None and loss <= target:
            raise Reached
        return loss, g

    try:
        minimize(fun, obj.theta.copy(), jac=True, method="L-BFGS-B",
                 options={"maxfun": max_passes, "maxiter": max_passes, "gtol": 0.0, "ftol": 0.0})
    except Reached:
        pass
    tr.seconds = time.perf_counter() - t0
    return tr


def compare(make, *, gap: float = 1e-8, max_passes: int = 5000, adam_lrs=(1e-2, 3e-2, 1e-1),
            log=None) -> dict:
    """Passes (and seconds) each method needs to reach the optimum's loss within `gap`, each
    from the same start (`make()` builds a fresh Objective). The optimum is Newton-CG run to
    |∇L| <= 1e-12 (checked against L-BFGS's best). Returns {"optimum", "rows": [...]}."""
    ref = newton_cg(make(), tol=1e-12, max_iters=100)
    optimum = ref.final
    best_lbfgs = lbfgs(make(), max_passes=max_passes)
    optimum = min(optimum, best_lbfgs.final)
    target = optimum + gap
    runs = [newton_cg(make(), target=target, max_iters=100, log=log),
            lbfgs(make(), max_passes=max_passes, target=target)]
    runs += [adam(make(), lr=lr, max_passes=max_passes, target=target) for lr in adam_lrs]
    rows = [{"method": r.method, "passes": r.passes_to(target), "final_gap": r.final - optimum,
             "seconds": r.seconds, "points": len(r.points)} for r in runs]
    return {"optimum": optimum, "gap": gap, "max_passes": max_passes, "rows": rows}


def logistic_data(n=2000, d=20, classes=4, decades=0.0, seed=0):
    """Gaussian classes that overlap (so the unregularised optimum is finite), the features
    scaled over `decades` orders of magnitude and then mixed by a random rotation: correlated
    features of unequal scale, as unstandardised data has. decades=2 makes the Hessian's
    condition number ~1e4 times that of decades=0."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    x = means[y] + 1.5 * rng.standard_normal((n, d))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (x * np.logspace(-decades / 2, decades / 2, d)) @ q, y


def logistic_regression(x, y, dtype="float64"):
    """Multinomial logistic regression as a graph model: one linear layer and cross-entropy."""
    from .mlp import MLP
    return MLP([x.shape[1], int(y.max()) + 1], seed=0, dtype=dtype)


def table(result: dict) -> str:
    lines = [f"optimum loss {result['optimum']:.12f}; passes to within {result['gap']:g} "
             f"(at most {result['max_passes']})",
             f"{'method':<22} {'passes':>7} {'final gap':>11} {'seconds':>8}"]
    for r in result["rows"]:
        passes = str(r["passes"]) if r["passes"] is not None else "not reached"
        lines.append(f"{r['method']:<22} {passes:>7} {r['final_gap']:>11.2e} {r['seconds']:>8.2f}")
    return "\n".join(lines)


__all__ = ["NAME", "Objective", "Trace", "conjugate_gradient", "newton_cg", "adam", "lbfgs", "compare", "table", "logistic_data",
           "logistic_regression"]
