"""`symgrad bench hvp`: the whole-model Hessian-vector product of the reference GPT (models.hvp)
against PyTorch's double backward of the same model, same weights, batch and direction.

Each side computes the loss, its gradient and H v for one random direction v over all
parameters: symgrad by the tangent forward and the tangent of the backward through the model
graph; PyTorch by `autograd.grad(loss, params, create_graph=True)` and then
`autograd.grad(sum(grad · v), params)` (SDPA on its math backend: the CPU's flash kernel has no
double backward). Each side runs in a process of its own and the two take turns in rounds
(models.sides); the ratio is reported per round (median and min-max), as `symgrad bench train`
does; speedup is torch_ms / symgrad_ms.
"""

from __future__ import annotations

import json
import time

import numpy as np

BATCH = 4


def symgrad_calls(cfg_dict, batch, threads, seed=0):
    """symgrad's side (in its own process, models.sides): `hvp`, H v by the tangent forward and
    the tangent of the backward; the queries `weights` and `direction` (for the peer),
    `result` (the last H v by parameter name) and `first_call_s`."""
    from symgrad import compiled
    from .bench import _batch
    from .gpt import GPT, GPTConfig

    compiled.set_threads(threads)
    cfg = GPTConfig(**cfg_dict)
    model = GPT(cfg, seed=seed)
    x, y = _batch(cfg, batch)
    v = model.store.flat_like(np.random.default_rng(seed + 1).standard_normal)
    key, inputs = model.batch(x, y)
    hvp = model.hvp_at(key)
    out = {}

    def run():
        out["hv"] = hvp(inputs, v)[2]

    t0 = time.perf_counter()
    run()  # compiles (or loads) the layers' JVP and HVP kernels
    first = time.perf_counter() - t0

    def by_name(flat):
        return {n: model.store.view(n, flat).copy() for n in model.store.spec}

    return {"hvp": run, "weights": lambda: by_name(model.store.flat), "direction": lambda: by_name(v),
            "result": lambda: by_name(out["hv"]), "first_call_s": lambda: first}


def torch_calls(cfg_dict, weights, direction, batch, threads):
    """PyTorch's side: `hvp` by autograd.grad(loss, params, create_graph=True), then
    autograd.grad(sum(grad . v), params), SDPA on its math backend (the CPU's flash kernel has no
    double backward); the query `result`."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .bench import _batch
    from .gpt import GPTConfig
    from .torch_gpt import from_weights, name_map

    torch.set_num_threads(threads)
    cfg = GPTConfig(**cfg_dict)
    tm = from_weights(cfg, weights)
    params = dict(tm.named_parameters())
    names = name_map(cfg.n_layer)
    order = list(weights)
    ps = [params[names[n]] for n in order]
    vs = [torch.from_numpy(direction[n]) for n in order]
    tx, ty = (torch.from_numpy(a) for a in _batch(cfg, batch))
    out = {}

    def run():
        with sdpa_kernel(SDPBackend.MATH):
            loss = tm(tx, ty)
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            out["hv"] = torch.autograd.grad(dot, ps)

    run()
    return {"hvp": run, "result": lambda: {n: h.numpy() for n, h in zip(order, out["hv"])}}


def run(a, cfg=None, batch=BATCH) -> dict:
    from .bench import _spread
    from .gpt import GPTConfig
    from .sides import Sides

    cfg = GPTConfig() if cfg is None else cfg
    with Sides({"symgrad": ("symgrad.models.bench_hvp:symgrad_calls", (cfg.as_dict(), batch, a.threads))}) as sides:
        ours = sides["symgrad"]
        sides.add("torch", "symgrad.models.bench_hvp:torch_calls",
                  (cfg.as_dict(), ours.ask("weights"), ours.ask("direction"), batch, a.threads))
        ms = {"symgrad": [], "torch": []}
        for _ in range(a.rounds):
            for name in ("symgrad", "torch"):
                ms[name].append(sides[name].time("hvp", a.steps) * 1000)
        got, want = ours.ask("result"), sides["torch"].ask("result")
        first = ours.ask("first_call_s")
    worst = max(float(np.abs(got[n] - want[n]).max()) for n in want)
    rel = worst / max(float(np.abs(w).max()) for w in want.values())
    ratio = [t / s for s, t in zip(ms["symgrad"], ms["torch"])]
    sg, th, r = _spread(ms["symgrad"]), _spread(ms["torch"]), _spread(ratio)
    return {"model": cfg.as_dict(), "batch": batch, "threads": a.threads, "rounds": a.rounds,
            "steps": a.steps, "symgrad_ms": sg[0], "symgrad_ms_min": sg[1], "symgrad_ms_max": sg[2],
            "torch_ms": th[0], "torch_ms_min": th[1], "torch_ms_max": th[2],
            "speedup": r[0], "speedup_min": r[1], "speedup_max": r[2],
            "max_rel_difference": rel, "first_call_s": first,
            "torch": "double backward, autograd.grad(create_graph=True), SDPA math backend",
            "sides": "each in a process of its own, taking turns in rounds (models.sides)"}


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


__all__ = ["run", "report", "symgrad_calls", "torch_calls", "BATCH"]
