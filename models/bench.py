"""`symgrad bench train`: ms per training step (forward + backward + AdamW) of the reference GPT,
symgrad against PyTorch peers (same model, same weights, same batch), same threads each.

    symgrad bench train [--peer eager|fused|compile|all] [--load [N]] [--threads N]
                        [--rounds R] [--steps S] [--profile] [--json]

Peers (`models.torch_gpt.PEERS`), each with its own copy of the weights:
  eager    PyTorch eager, SDPA attention, AdamW(foreach=True) (the default peer)
  fused    the same with AdamW(fused=True)
  compile  torch.compile of the eager module, AdamW(foreach=True); warmed up before the rounds
           and its warm-up time reported

Each side runs in a process of its own (`models.sides`: as its users run it, no thread pool of
the other side beside it) and the sides take turns in rounds; every ratio is reported per round
(median and min-max): these VMs change speed within seconds, so sequential timings do not
compare. Each round times symgrad, then each peer, then the GEMM floor (`models.floor`: the
step's matrix products alone, as its kernels run them, in a process of its own), then a large
sgemm whose best GFLOP/s over the run is the peak MFU is measured against. speedup is
peer_ms / symgrad_ms (above 1: symgrad is faster). MFU counts matmul FLOPs only (2*M*K*N per
GEMM in `floor_gemms`; the elementwise work is left out), divided by the step time and the
measured peak. Peak memory is each side process's peak-RSS growth from just before it built
its side (its imports done) to the end of the run.

`--load N` starts N busy processes (default one per core) for the whole run, killed at the end.

JSON: the fields below, with `peers: {NAME: {ms_per_step, tokens_per_s, speedup, speedup_min,
speedup_max, mfu, peak_mem_mib, ...}}`; the older top-level `torch_ms_per_step`,
`torch_tokens_per_s`, `speedup`, `speedup_min`, `speedup_max` and `torch` are those of the first
peer requested, so scripts reading them keep working.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np

from .floor import PEAK_SHAPE, build_floor, build_peak, floor_gemms, gemm_routine, matmul_flops
from .sides import Sides, memory_growth, memory_mark

PEERS = ("eager", "fused", "compile")
BATCH = 12
PEAK_CALLS = 5  # sgemm calls per round; the peak is the best single call of the run

LAST_LOAD: list = []  # the Popen objects of the last `--load` run (for tests: all ended afterwards)


def parse_peers(s: str) -> tuple:
    """'eager' | 'fused' | 'compile' | 'all', or a comma-separated list of the first three."""
    if s == "all":
        return PEERS
    names = tuple(dict.fromkeys(n.strip() for n in s.split(",") if n.strip()))
    bad = [n for n in names if n not in PEERS]
    if bad or not names:
        raise ValueError(f"unknown peer {', '.join(map(repr, bad)) or repr(s)}; "
                         f"one of: {', '.join(PEERS)}, all")
    return names


def _batch(cfg, batch):
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    return x, y


# --- the sides, each built in its own process (models.sides) -----------------------------------
def symgrad_side(cfg, x, y):
    """(model, step): symgrad's GPT and one training step of it. Swap this for a new API."""
    from .gpt import GPT
    from .optim import AdamW

    model = GPT(cfg, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3, wd=0.0)

    def step():
        model.zero_grad()
        model(x, y)
        model.backward()
        opt.step()

    return model, step


def symgrad_calls(cfg_dict, batch, threads, profile_steps):
    """symgrad's side: `step` on `threads` threads (the step picks 1..threads by measurement,
    models/threads.py), and the queries `weights` (the initial parameters, for the peers),
    `info` (the products its step calls among them), `profile` and `memory`."""
    from symgrad import compiled
    from . import threads as pool
    from .gpt import GPTConfig
    from .profile import profile

    compiled.set_threads(threads)
    pool.set_most(threads)
    cfg = GPTConfig(**cfg_dict)
    x, y = _batch(cfg, batch)
    memory_mark()
    model, step = symgrad_side(cfg, x, y)
    weights = {n: p.data.copy() for n, p in model.named_parameters()}  # before any step
    t0 = time.perf_counter()
    step()  # loads (or compiles) the kernels
    first = time.perf_counter() - t0
    for _ in range(20):  # its warm-up, as torch.compile's: the first calls try each thread count
        step()
        if model._last.tuner.settled:
            break

    def info():
        tuner = model._last.tuner  # the training step's own choice of threads
        return {"first_step_s": first, "gemms": floor_gemms(model, (batch, cfg.block_size)),
                "threads_chosen": tuner.best,
                "ms_by_threads": {str(n): t * 1000 for n, t in tuner.time.items()}}

    def profiled():
        profile.reset()
        profile.enabled = True
        for _ in range(profile_steps):
            step()
        profile.enabled = False
        return {k: s / profile_steps * 1000 for k, s, _ in profile.table()}

    return {"step": step, "weights": lambda: weights, "info": info, "profile": profiled, "memory": memory_growth}


def floor_calls(gemms, dtype, threads):
    """The floor's side: `floor`, symgrad's step's products alone (models.floor), and `peak`
    (GFLOP/s of one large sgemm), both on all `threads` threads, as symgrad's kernels run them."""
    from symgrad import compiled
    compiled.set_threads(threads)
    floor, peak = build_floor(gemms, dtype), build_peak(dtype)
    floor()
    peak()
    return {"floor": floor, "peak": peak, "routine": lambda: gemm_routine()[1]}


def torch_calls(kind, cfg_dict, weights, batch, threads):
    """A PyTorch peer's side (models.torch_gpt.make_peer) on the same batch and weights: `step`,
    and the queries `info` (description, first step, warm-up) and `memory`."""
    import torch

    from .gpt import GPTConfig
    from .torch_gpt import make_peer

    torch.set_num_threads(threads)
    cfg = GPTConfig(**cfg_dict)
    x, y = (torch.from_numpy(a) for a in _batch(cfg, batch))
    memory_mark()
    step, desc = make_peer(cfg, weights, kind)
    t0 = time.perf_counter()
    step(x, y)  # torch.compile compiles on its first calls
    first = time.perf_counter() - t0
    for _ in range(2 if kind == "compile" else 1):
        step(x, y)
    warmup = time.perf_counter() - t0
    return {"step": lambda: step(x, y), "memory": memory_growth,
            "info": lambda: {"torch": desc, "first_step_s": first, "warmup_s": warmup}}


# --- load --------------------------------------------------------------------------------------
# A tight loop that also ends when its parent is gone (killed without running its finally).
_BUSY = "import os\np = os.getppid()\nwhile os.getppid() == p:\n    for _ in range(1000000): pass\n"


@contextmanager
def busy_load(n: int):
    """n competing busy processes for the duration of the `with`, always killed at its end
    (also on an exception or Ctrl-C, which also reaches them as they share the process group)."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", _BUSY], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


# --- the bench ---------------------------------------------------------------------------------
def _spread(v):
    return statistics.median(v), min(v), max(v)


def main(a, *, cfg=None, batch: int = BATCH) -> int:
    """`a`: the parsed options (threads, rounds, steps, profile, json, peer, load). cfg and batch
    are for tests: a smaller model, a smaller batch."""
    peers = getattr(a, "peer", ("eager",))
    peers = parse_peers(peers) if isinstance(peers, str) else tuple(peers)
    n_load = getattr(a, "load", 0) or 0
    LAST_LOAD.clear()
    with busy_load(n_load) as procs:
        LAST_LOAD.extend(procs)
        res = _run(a, peers, n_load, cfg, batch)
    _report(a, res)
    return 0


def _run(a, peers, n_load, cfg, batch):
    from .gpt import GPTConfig

    reference = cfg is None
    cfg = GPTConfig() if cfg is None else cfg
    with Sides({"symgrad": ("symgrad.models.bench:symgrad_calls", (cfg.as_dict(), batch, a.threads, a.steps))}) as sides:
        weights = sides["symgrad"].ask("weights")
        gemms = sides["symgrad"].ask("info")["gemms"]
        for p in peers:  # every peer starts from symgrad's initial weights
            sides.add(p, "symgrad.models.bench:torch_calls", (p, cfg.as_dict(), weights, batch, a.threads))
        floor = sides.add("floor", "symgrad.models.bench:floor_calls", (gemms, cfg.dtype, a.threads))
        ms = {"symgrad": [], "floor": [], **{p: [] for p in peers}}
        gflops = []
        for _ in range(a.rounds):
            for name in ("symgrad", *peers):
                ms[name].append(sides[name].time("step", a.steps) * 1000)
            ms["floor"].append(floor.time("floor", a.steps) * 1000)
            gflops += [floor.ask("peak") for _ in range(PEAK_CALLS)]
        info = {name: sides[name].ask("info") for name in ("symgrad", *peers)}
        mem = {name: sides[name].ask("memory") for name in ("symgrad", *peers)}
        prof = sides["symgrad"].ask("profile") if a.profile else None
        routine = floor.ask("routine")


    flops = matmul_flops(gemms)
    tokens = batch * cfg.block_size
    peak = max(gflops)

    def mfu(m):
        return flops / (m / 1000) / (peak * 1e9)

    sg = statistics.median(ms["symgrad"])
    fl = statistics.median(ms["floor"])
    res = {"config": cfg.as_dict(), "reference_config": reference, "batch": batch, "tokens_per_step": tokens,
           "threads": a.threads, "rounds": a.rounds, "steps_per_round": a.steps,
           "load": n_load, "cpu_count": os.cpu_count(),
           "symgrad_ms_per_step": sg, "symgrad_tokens_per_s": tokens / sg * 1000,
           "symgrad_mfu": mfu(sg), "symgrad_ms_per_round": ms["symgrad"],
           "symgrad_first_step_s": info["symgrad"]["first_step_s"],
           "peers": {},
           "floor_ms": fl, "floor_ms_per_round": ms["floor"], "floor_mfu": mfu(fl),
           "symgrad_over_floor": sg / fl, "floor_gemm": routine,
           "floor_gemm_calls": sum(g[6] for g in gemms),
           "matmul_gflop_per_step": flops / 1e9,
           "sgemm_peak_gflops": peak, "sgemm_peak_shape": list(PEAK_SHAPE),
           "mfu_counts": "matmul FLOPs only (2*M*K*N per GEMM of floor_gemms), over the sgemm peak "
                         "measured in this run with the kernels' GEMM routine",
           "sides": "each in a process of its own, taking turns in rounds (models.sides)"}
    for p in peers:
        t = statistics.median(ms[p])
        ratios = [tp / o for o, tp in zip(ms["symgrad"], ms[p])]
        med, lo, hi = _spread(ratios)
        res["peers"][p] = {"torch": info[p]["torch"], "ms_per_step": t, "tokens_per_s": tokens / t * 1000,
                           "speedup": med, "speedup_min": lo, "speedup_max": hi, "mfu": mfu(t),
                           "ms_per_round": ms[p], "first_step_s": info[p]["first_step_s"],
                           "warmup_s": info[p]["warmup_s"], "peak_mem_mib": mem[p]}
    res["symgrad_threads"] = {"chosen": info["symgrad"]["threads_chosen"],
                              "ms_by_threads": info["symgrad"]["ms_by_threads"]}
    p0 = res["peers"][peers[0]]
    res.update({"torch_ms_per_step": p0["ms_per_step"], "torch_tokens_per_s": p0["tokens_per_s"],
                "speedup": p0["speedup"], "speedup_min": p0["speedup_min"],
                "speedup_max": p0["speedup_max"], "torch": p0["torch"]})
    if prof is not None:
        res["profile_ms_per_step"] = prof
    res["symgrad_peak_mem_mib"] = mem["symgrad"]
    res["peak_mem"] = {"what": "peak-RSS growth of each side's process from just before it built its side "
                               "(imports done) to the end of the run: weights, optimizer state, activations, "
                               "workspace, and loading the side's code (Numba kernels, torch.compile)",
                       **mem}
    if hasattr(os, "getloadavg"):
        res["loadavg_1min"] = os.getloadavg()[0]
    return res


def _mem(v):
    return "  peak mem    n/a" if v is None else f"  peak mem {v:+6.0f} MiB"


def _report(a, res):
    if a.json:
        print(json.dumps(res))
        return
    cfg = res["config"]
    what = "reference GPT" if res["reference_config"] else "GPT"
    load = f", load: {res['load']} busy processes" if res["load"] else ""
    print(f"{what} step ({cfg['n_layer']} layers, {cfg['n_head']} heads, {cfg['n_embd']} dims, "
          f"block {cfg['block_size']}, batch {res['batch']}), {res['threads']} threads, "
          f"{res['rounds']} interleaved rounds of {res['steps_per_round']} steps{load}")
    line = (f"  {'symgrad':16s}{res['symgrad_ms_per_step']:9.1f} ms/step {res['symgrad_tokens_per_s']:9,.0f} tokens/s"
            f"  MFU {res['symgrad_mfu']:6.1%}")
    print(line + _mem(res["symgrad_peak_mem_mib"]))
    for p, r in res["peers"].items():
        line = (f"  {'torch ' + p:16s}{r['ms_per_step']:9.1f} ms/step {r['tokens_per_s']:9,.0f} tokens/s"
                f"  MFU {r['mfu']:6.1%}  speedup {r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})")
        print(line + _mem(r["peak_mem_mib"]))
    th = res["symgrad_threads"]
    print(f"  {'':16s}symgrad's step chose {th['chosen']} thread(s); recent ms by count: "
          + ", ".join(f"{n}: {v:.1f}" for n, v in sorted(th["ms_by_threads"].items())))
    print(f"  {'GEMM floor':16s}{res['floor_ms']:9.1f} ms/step {'':18s}  MFU {res['floor_mfu']:6.1%}"
          f"  symgrad/floor {res['symgrad_over_floor']:.2f}x  ({res['floor_gemm_calls']} GEMMs, {res['floor_gemm']})")
    print(f"  MFU counts matmul FLOPs only: {res['matmul_gflop_per_step']:.2f} GFLOP/step, over an sgemm peak of "
          f"{res['sgemm_peak_gflops']:.0f} GFLOP/s ({'x'.join(map(str, res['sgemm_peak_shape']))}, best call this run)")
    print("  speedup = torch ms / symgrad ms per round, median (min-max); peers: "
          + "; ".join(f"{p}: {r['torch']}" for p, r in res["peers"].items()))
    if "compile" in res["peers"]:
        c = res["peers"]["compile"]
        print(f"  torch.compile warm-up {c['warmup_s']:.1f} s (first step {c['first_step_s']:.1f} s), before the rounds")
    print("  peak mem = peak-RSS growth of each side's process from building its side to the end of the run; "
          "each side runs in a process of its own")
    if res["load"]:
        print(f"  load average (1 min) at the end: {res.get('loadavg_1min', float('nan')):.2f} "
              f"on {res['cpu_count']} cores")
    for k, v in res.get("profile_ms_per_step", {}).items():
        print(f"    {k:28s} {v:8.2f} ms")
