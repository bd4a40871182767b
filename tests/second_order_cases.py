"""Second-order test material: the matrixcalculus.org examples as test-only layers, PyTorch
forwards for every test-only layer, inputs for them, and the torch.autograd oracle for JVPs
(torch.func.jvp) and Hessian-vector products (double backward, create_graph=True)."""

from __future__ import annotations

import numpy as np
import sympy as sp

from symgrad import derive
from tests import defined_layers, layers


def quadratic_form(G):
    """f = x^T A x (matrixcalculus.org: Hessian A + A^T)"""
    P = G.dims("P")[0]
    x = G.input("x", (P,))
    A = G.param("A", (P, P))
    a, b = G.indices(a=P, b=P)
    G.output(G.bind("f", (), G.sum(G.sum(x[a] * A[a, b] * x[b], b), a)))


def logistic_loss(G):
    """f = sum_n log(1 + exp(-y[n] (X w)[n])) (matrixcalculus.org: Hessian X^T diag(p(1-p)) X)"""
    N, K = G.dims("N K")
    X = G.input("X", (N, K))
    y = G.input("y", (N,))
    w = G.param("w", (K,))
    n, k = G.indices(n=N, k=K)
    G.output(G.bind("f", (), G.sum(sp.log(1 + sp.exp(-y[n] * G.sum(X[n, k] * w[k], k))), n)))


def low_rank(G):
    """f = ||T - U V^T||^2 (matrixcalculus.org: a matrix factorisation)"""
    M, N, R = G.dims("M N R")
    T = G.input("T", (M, N))
    U = G.param("U", (M, R))
    V = G.param("V", (N, R))
    i, j, r = G.indices(i=M, j=N, r=R)
    res = G.bind("res", (i, j), T[i, j] - G.sum(U[i, r] * V[j, r], r))
    G.output(G.bind("f", (), G.sum(G.sum(res[i, j] ** 2, j), i)))


MATRIXCALCULUS = {"mc_quadratic": quadratic_form, "mc_logistic": logistic_loss, "mc_lowrank": low_rank}
TEST_ONLY = [*defined_layers.BUILDERS, *MATRIXCALCULUS]
NAMES = [*layers.specified(), *TEST_ONLY]  # the built-in layers (those with a test spec), the test-only ones
_defined: dict = {}


def layer(name):
    """The Derivation of a built-in or test-only layer (each test-only one derived once)."""
    if name in derive.layers():
        return derive.layer(name)
    if name not in _defined:
        build = defined_layers.BUILDERS.get(name) or MATRIXCALCULUS[name]
        _defined[name] = derive.define(name, build)
    return _defined[name]


def cases(name, seed=0):
    if name in derive.layers():
        return layers.cases(name, seed)
    rng = np.random.default_rng(seed)
    r = rng.standard_normal
    if name == "t_swish":
        return [("3x4", {"x": r((3, 4))})]
    if name == "t_bilinear":
        return [("N3 P2 Q4", {"x": r((3, 2)), "y": r((3, 4)), "A": r((2, 4))})]
    if name == "t_rmsnorm":
        return [("3x5", {"x": r((3, 5)), "w": r(5)})]
    if name == "mc_quadratic":
        return [("P4", {"x": r(4), "A": r((4, 4))})]
    if name == "mc_logistic":
        return [("N6 K3", {"X": r((6, 3)), "y": rng.choice([-1.0, 1.0], 6), "w": r(3)})]
    if name == "mc_lowrank":
        return [("4x3 rank2", {"T": r((4, 3)), "U": r((4, 2)), "V": r((3, 2))})]
    raise KeyError(name)


def torch_forward(name, t):
    import torch

    if name in derive.layers():
        return layers.forward(name, t)
    if name == "t_swish":
        return {"y": t["x"] * torch.sigmoid(t["x"])}
    if name == "t_bilinear":
        return {"f": ((t["x"] @ t["A"]) * t["y"]).sum(1)}
    if name == "t_rmsnorm":
        x = t["x"]
        return {"y": x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-6) * t["w"]}
    if name == "mc_quadratic":
        return {"f": t["x"] @ t["A"] @ t["x"]}
    if name == "mc_logistic":
        return {"f": torch.log1p(torch.exp(-t["y"] * (t["X"] @ t["w"]))).sum()}
    if name == "mc_lowrank":
        return {"f": ((t["T"] - t["U"] @ t["V"].T) ** 2).sum()}
    raise KeyError(name)


def differentiable(d):
    return [a.name for a in d.arguments if a.differentiable]


def directions(d, args, upstream_outs, seed=1):
    """Random tangents for every differentiable argument and upstream gradients (1 for a scalar
    output: the Hessian of a loss)."""
    rng = np.random.default_rng(seed)
    tangents = {a: rng.standard_normal(np.shape(args[a])) for a in differentiable(d)}
    ups = {d.upstream(o.name): rng.standard_normal(np.shape(upstream_outs[o.name])) if o.shape else 1.0
           for o in d.outputs}
    return tangents, ups


def torch_jvp_hvp(name, d, args, tangents, ups):
    """({output: its tangent}, {argument: H v}) by torch.func.jvp and double backward, float64."""
    import torch

    diff = differentiable(d)
    fixed = {k: torch.tensor(v, dtype=torch.int64 if d.graph.tensor(k).integer else torch.float64)
             for k, v in args.items() if k not in diff}
    primals = tuple(torch.tensor(np.asarray(args[a], np.float64)) for a in diff)
    dirs = tuple(torch.tensor(np.asarray(tangents[a], np.float64)) for a in diff)

    def f(*xs):
        outs = torch_forward(name, {**fixed, **dict(zip(diff, xs))})
        return tuple(outs[o.name] for o in d.outputs)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention has no second-order AD
        _, touts = torch.func.jvp(f, primals, dirs)
        xs = [p.clone().requires_grad_(True) for p in primals]
        total = sum((torch.as_tensor(ups[d.upstream(o.name)], dtype=torch.float64) * y).sum()
                    for o, y in zip(d.outputs, f(*xs)))
        grads = torch.autograd.grad(total, xs, create_graph=True, allow_unused=True)
        dot = sum((gr * v).sum() for gr, v in zip(grads, dirs) if gr is not None and gr.requires_grad)
        hv = torch.autograd.grad(dot, xs, allow_unused=True) if torch.is_tensor(dot) else [None] * len(xs)
    return ({o.name: t.detach().numpy() for o, t in zip(d.outputs, touts)},
            {a: np.zeros(np.shape(args[a])) if h is None else h.numpy() for a, h in zip(diff, hv)})


def only(tangents, b):
    """The direction that moves argument b alone (an (a, b) block of the Hessian per argument a)."""
    return {a: v if a == b else np.zeros_like(v) for a, v in tangents.items()}
