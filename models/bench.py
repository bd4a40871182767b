"""`symgrad bench train`: ms per training step (forward + backward + AdamW) of the reference GPT,
symgrad against PyTorch eager (same model, same weights, same batch), 2 threads each.

The two sides alternate in rounds and the ratio is reported per round (median and spread):
these VMs switch between fast and slow 2-thread regimes, so sequential timings do not compare.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np


def main(a) -> int:
    import numba
    import torch

    from .gpt import GPT, GPTConfig
    from .kernels import profile
    from .optim import AdamW
    from .torch_gpt import from_symgrad

    import compiled

    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    compiled.set_blas_threads(a.threads)  # SciPy's OpenBLAS, which np.dot inside the kernels uses
    torch.set_num_threads(a.threads)
    cfg = GPTConfig()
    model = GPT(cfg, seed=0)
    tm = from_symgrad(model)
    opt = AdamW(model.parameters(), lr=1e-3, wd=0.0)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=0.0, foreach=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (12, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (12, cfg.block_size))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def ours():
        model.zero_grad()
        model(x, y)
        model.backward()
        opt.step()

    def theirs():
        topt.zero_grad(set_to_none=True)
        tm(tx, ty).backward()
        topt.step()

    for _ in range(2):  # warm-up: compile / load kernels
        ours()
        theirs()
    ms_ours, ms_theirs = [], []
    for _ in range(a.rounds):
        for fn, acc in ((ours, ms_ours), (theirs, ms_theirs)):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            acc.append((time.perf_counter() - t0) / a.steps * 1000)
    ratios = [t / o for o, t in zip(ms_ours, ms_theirs)]
    tokens = 12 * cfg.block_size
    res = {"config": cfg.as_dict(), "threads": a.threads, "rounds": a.rounds, "steps_per_round": a.steps,
           "symgrad_ms_per_step": statistics.median(ms_ours), "torch_ms_per_step": statistics.median(ms_theirs),
           "symgrad_tokens_per_s": tokens / statistics.median(ms_ours) * 1000,
           "torch_tokens_per_s": tokens / statistics.median(ms_theirs) * 1000,
           "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
           "torch": f"{torch.__version__} eager, AdamW foreach"}
    if a.profile:
        profile.reset()
        profile.enabled = True
        for _ in range(a.steps):
            ours()
        profile.enabled = False
        res["profile_ms_per_step"] = {k: s / a.steps * 1000 for k, s, _ in profile.table()}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"reference GPT step (4 layers, 4 heads, 128 dims, block 64, batch 12), {a.threads} threads, "
              f"{a.rounds} interleaved rounds of {a.steps} steps")
        print(f"  symgrad  {res['symgrad_ms_per_step']:8.1f} ms/step  {res['symgrad_tokens_per_s']:10,.0f} tokens/s")
        print(f"  torch    {res['torch_ms_per_step']:8.1f} ms/step  {res['torch_tokens_per_s']:10,.0f} tokens/s")
        print(f"  speedup  {res['speedup']:.2f}x (per-round range {res['speedup_min']:.2f}-{res['speedup_max']:.2f})")
        for k, v in res.get("profile_ms_per_step", {}).items():
            print(f"    {k:28s} {v:8.2f} ms")
    return 0
