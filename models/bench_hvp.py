"""`symgrad bench hvp`: the whole-model Hessian-vector product of the reference GPT (models.hvp)
against PyTorch's double backward of the same model, same weights, batch and direction.

Each side computes the loss, its gradient and H v for one random direction v over all
parameters: symgrad by the tangent forward and the tangent of the backward through the model
graph; PyTorch by `autograd.grad(loss, params, create_graph=True)` and then
`autograd.grad(sum(grad · v), params)` (SDPA on its math backend: the CPU's flash kernel has no
double backward). The two alternate in rounds and the ratio is reported per round (median and
min-max), as `symgrad bench train` does; speedup is torch_ms / symgrad_ms.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

BATCH = 4


def sides(cfg, batch, seed=0):
    """(symgrad call, torch call, check): both compute H v at the same point and direction;
    check() returns the largest |difference| relative to the largest |H v| element."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .bench import _batch
    from .gpt import GPT
    from .torch_gpt import from_symgrad, name_map

    model = GPT(cfg, seed=seed)
    x, y = _batch(cfg, batch)
    rng = np.random.default_rng(seed + 1)
    v = model.store.flat_like(rng.standard_normal)
    key, inputs = model.batch(x, y)
    hvp = model.hvp_at(key)
    out = {}

    def ours():
        out["symgrad"] = hvp(inputs, v)[2]

    tm = from_symgrad(model)
    params = dict(tm.named_parameters())
    names = name_map(cfg.n_layer)
    order = list(model.store.spec)
    ps = [params[names[n]] for n in order]
    vs = [torch.from_numpy(model.store.view(n, v).copy()) for n in order]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def theirs():
        with sdpa_kernel(SDPBackend.MATH):
            loss = tm(tx, ty)
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            out["torch"] = torch.autograd.grad(dot, ps)

    def check():
        worst, scale = 0.0, 0.0
        for n, h in zip(order, out["torch"]):
            a, b = model.store.view(n, out["symgrad"]), h.numpy()
            worst = max(worst, float(np.abs(a - b).max()))
            scale = max(scale, float(np.abs(b).max()))
        return worst / scale

    return ours, theirs, check


def run(a, cfg=None, batch=BATCH) -> dict:
    from .bench import _set_threads, _spread
    from .gpt import GPTConfig

    _set_threads(a.threads)
    cfg = GPTConfig() if cfg is None else cfg
    ours, theirs, check = sides(cfg, batch)
    t0 = time.perf_counter()
    ours()  # compiles (or loads) the layers' JVP and HVP kernels
    first = time.perf_counter() - t0
    theirs()
    rel = check()
    ms = {"symgrad": [], "torch": []}
    for _ in range(a.rounds):
        for name, fn in (("symgrad", ours), ("torch", theirs)):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            ms[name].append((time.perf_counter() - t0) / a.steps * 1000)
    ratio = [t / s for s, t in zip(ms["symgrad"], ms["torch"])]
    sg, th, r = _spread(ms["symgrad"]), _spread(ms["torch"]), _spread(ratio)
    return {"model": cfg.as_dict(), "batch": batch, "threads": a.threads, "rounds": a.rounds,
            "steps": a.steps, "symgrad_ms": sg[0], "symgrad_ms_min": sg[1], "symgrad_ms_max": sg[2],
            "torch_ms": th[0], "torch_ms_min": th[1], "torch_ms_max": th[2],
            "speedup": r[0], "speedup_min": r[1], "speedup_max": r[2],
            "max_rel_difference": rel, "first_call_s": first,
            "torch": "double backward, autograd.grad(create_graph=True), SDPA math backend"}


def report(res, as_json=False) -> str:
    if as_json:
        return json.dumps(res, indent=2)
    m = res["model"]
    return "\n".join([
        f"GPT Hessian-vector product (n_layer {m['n_layer']}, n_embd {m['n_embd']}, block {m['block_size']}, "
        f"batch {res['batch']}, {m['dtype']}, {res['threads']} threads; {res['rounds']} rounds x {res['steps']})",
        f"  symgrad (models.hvp)      {res['symgrad_ms']:8.1f} ms  ({res['symgrad_ms_min']:.1f}-{res['symgrad_ms_max']:.1f})",
        f"  torch double backward     {res['torch_ms']:8.1f} ms  ({res['torch_ms_min']:.1f}-{res['torch_ms_max']:.1f})",
        f"  speedup {res['speedup']:.2f}x (per round {res['speedup_min']:.2f}-{res['speedup_max']:.2f}); "
        f"max |H v difference| / max |H v| = {res['max_rel_difference']:.1e}; first call "
        f"{res['first_call_s']:.1f} s"])


__all__ = ["run", "report", "sides", "BATCH"]
