"""`symgrad bench train`: ms per training step (forward + backward + AdamW) of the reference GPT,
symgrad against PyTorch peers (same model, same weights, same batch), same threads each.

    symgrad bench train [--peer eager|fused|compile|all] [--load [N]] [--threads N]
                        [--rounds R] [--steps S] [--profile] [--json]

Peers (`models.torch_gpt.PEERS`), each with its own copy of the weights:
  eager    PyTorch eager, SDPA attention, AdamW(foreach=True) (the default peer)
  fused    the same with AdamW(fused=True)
  compile  torch.compile of the eager module, AdamW(foreach=True); warmed up before the rounds
           and its warm-up time reported

All sides alternate in rounds and every ratio is reported per round (median and min-max): these
VMs switch between fast and slow 2-thread regimes, so sequential timings do not compare. Each
round times symgrad, then each peer, then the GEMM floor (the step's matrix products alone, back
to back on preallocated buffers, through the matrix-product routine the kernels call), then a
large sgemm whose best GFLOP/s over the run is the peak MFU is measured against. speedup is
peer_ms / symgrad_ms (above 1: symgrad is faster). MFU counts matmul FLOPs only (2*M*K*N per
GEMM in `floor_gemms`; the elementwise work is left out), divided by the step time and the
measured peak. Peak memory is measured per side in a fresh subprocess (see `peak_memory`).

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

import compiled  # noqa: F401  (before torch: MKL's OpenMP threads must start first, compiled/blas.py)

PEERS = ("eager", "fused", "compile")
BATCH = 12
PEAK_SHAPE = (768, 512, 512)  # M, K, N of the sgemm the MFU peak is measured on
PEAK_CALLS = 5                # sgemm calls per round; the peak is the best single call of the run
MEMORY_STEPS = 3              # steps each peak-memory subprocess runs

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


# --- the GEMM floor ----------------------------------------------------------------------------
def floor_gemms(model, key) -> list:
    """The matrix products of one training step of `model` at configuration `key` ((B, T) for
    the GPT), read off its printed step: (label, M, K, N, trans_a, trans_b, count, mode),
    out[M, N] = op(a)[M, K] @ op(b)[K, N], op = transpose where the flag is set (the operand
    is stored transposed, as the kernels' `x.T` / `W.T` views are); mode: how the kernels run
    them ("batch": the count calls side by side, one per thread, as attention's per-sequence
    products; "rows": in row blocks of the output, one block per thread; "": one call). Each
    is one product a called kernel prints (`Plan.products`), so the list is the step's own,
    whatever the model."""
    return model.step_for(tuple(key), loss=True).plan.products()


def matmul_flops(gemms) -> int:
    return sum(2 * g[1] * g[2] * g[3] * g[6] for g in gemms)


def gemm_routine():
    """(gemm, name): the matrix product the kernels call (compiled/blas.py), the one switch."""
    from compiled import blas
    return blas.gemm, f"compiled.blas.gemm ({blas.backend()})"


MODES = {"": 0, "batch": 1, "rows": 2}
_FLOOR = None


def _floor_kernel():
    """The njit function doing a table's GEMMs back to back (compiled once per process), each
    run of products as the kernels run them: a "batch" run side by side, one product per
    thread; a "rows" product in row blocks, one per thread (compiled/writer.py)."""
    global _FLOOR
    if _FLOOR is None:
        import numba
        from compiled.blas import gemm

        @numba.njit
        def product(A, B, O, row, r0, r1):
            """Rows r0:r1 of the output of the product `row` describes."""
            M, K, N, ta, tb, oa, ob, oo = row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]
            a, b = A[oa:oa + M * K], B[ob:ob + K * N]
            out = O[oo:oo + M * N].reshape(M, N)[r0:r1]
            if ta == 0 and tb == 0:  # one call per layout: each operand's type stays contiguous
                gemm(a.reshape(M, K)[r0:r1], b.reshape(K, N), out)
            elif ta == 0:
                gemm(a.reshape(M, K)[r0:r1], b.reshape(N, K).T, out)
            elif tb == 0:
                gemm(a.reshape(K, M).T[r0:r1], b.reshape(K, N), out)
            else:
                gemm(a.reshape(K, M).T[r0:r1], b.reshape(N, K).T, out)

        @numba.njit(parallel=True)
        def floor(A, B, O, table, runs):
            nt = numba.get_num_threads()
            for r in range(runs.shape[0]):
                lo, hi, mode = runs[r, 0], runs[r, 1], runs[r, 2]
                if mode == 1 and nt > 1:
                    for i in numba.prange(lo, hi):
                        product(A, B, O, table[i], 0, table[i, 0])
                elif mode == 2 and nt > 1:
                    for i in range(lo, hi):
                        M = table[i, 0]
                        for t in numba.prange(nt):
                            product(A, B, O, table[i], t * M // nt, (t + 1) * M // nt)
                else:
                    for i in range(lo, hi):
                        product(A, B, O, table[i], 0, table[i, 0])

        _FLOOR = floor
    return _FLOOR


def build_floor(gemms, dtype="float32"):
    """A `run()` doing every GEMM in `gemms` once, back to back inside one njit function, on
    preallocated buffers (one set per call, as the step's activations are distinct arrays)."""
    kernel = _floor_kernel()
    rows, runs, sa, sb, so = [], [], 0, 0, 0
    for _, M, K, N, ta, tb, count, mode in gemms:
        runs.append((len(rows), len(rows) + count, MODES[mode]))
        for _ in range(count):
            rows.append((M, K, N, int(ta), int(tb), sa, sb, so))
            sa, sb, so = sa + M * K, sb + K * N, so + M * N
    table = np.array(rows, dtype=np.int64)
    runs = np.array(runs, dtype=np.int64)
    rng = np.random.default_rng(0)
    A = (rng.random(sa, dtype=np.float32) - 0.5).astype(dtype)
    B = (rng.random(sb, dtype=np.float32) - 0.5).astype(dtype)
    O = np.zeros(so, dtype=dtype)

    def run():
        kernel(A, B, O, table, runs)

    run.buffers = (A, B, O, table)  # for tests: the operands and results, flat, and the table
    run.nbytes = A.nbytes + B.nbytes + O.nbytes
    return run


def build_peak(dtype="float32"):
    """A `call()` returning the GFLOP/s of one PEAK_SHAPE GEMM through the kernels' routine, on
    every thread (row blocks, as the kernels split a large product)."""
    M, K, N = PEAK_SHAPE
    run = build_floor([("peak", M, K, N, False, False, 1, "rows")], dtype)

    def call():
        t0 = time.perf_counter()
        run()
        return 2 * M * K * N / (time.perf_counter() - t0) / 1e9

    return call


# --- the two kinds of side ---------------------------------------------------------------------
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


def torch_side(kind, model, x, y):
    """(step, description): a PyTorch peer (models.torch_gpt.make_peer) on the same batch."""
    import torch

    from .torch_gpt import make_peer

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    step, desc = make_peer(model, kind)
    return (lambda: step(tx, ty)), desc


def _batch(cfg, batch):
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    return x, y


def _set_threads(n):
    """torch gets n threads; symgrad's steps at most n (each step picks 1..n by measurement,
    models/threads.py), the floor and the peak run on n."""
    import torch

    import compiled
    from . import threads

    compiled.set_threads(n)
    threads.set_most(n)
    torch.set_num_threads(n)


# --- peak memory -------------------------------------------------------------------------------
def _maxrss_mib():
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _status_mib(field):
    """VmRSS / VmHWM of this process from /proc (Linux), MiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0: clear_refs 5), so that
    the imports' transient peak does not hide a smaller side; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmHWM") is not None
    except OSError:
        return False


def _memory_child(side, cfg_dict, batch, threads, steps):
    """Runs in the subprocess: the same imports for every side, then the baseline, then one side."""
    import numba  # noqa: F401
    import torch  # noqa: F401

    import compiled  # noqa: F401

    from . import gpt, optim, torch_gpt  # noqa: F401
    from .gpt import GPTConfig

    _set_threads(threads)
    cfg = GPTConfig(**cfg_dict)
    x, y = _batch(cfg, batch)
    if side != "symgrad":  # symgrad's model supplies the peer's weights: built before the baseline, kept
        model, _ = symgrad_side(cfg, x, y)
    reset = _reset_peak()
    base = _status_mib("VmRSS") if reset else _maxrss_mib()
    if side == "symgrad":
        _, step = symgrad_side(cfg, x, y)
    else:
        step, _ = torch_side(side, model, x, y)
    for _ in range(steps):
        step()
    peak = _status_mib("VmHWM") if reset else _maxrss_mib()
    return {"baseline_mib": base, "peak_mib": peak, "growth_mib": peak - base,
            "peak_reset": reset}


_CHILD = """import json, sys
sys.path.insert(0, {root!r})
from models import bench
print("@@" + json.dumps(bench._memory_child({side!r}, {cfg!r}, {batch}, {threads}, {steps})))
"""


def peak_memory(side, cfg, batch, threads, steps=MEMORY_STEPS, timeout=900):
    """Peak-RSS growth (MiB) of one side's `steps` training steps, in a fresh process.

    In one process both sides' allocations share one peak, so each side runs alone in a
    subprocess: it imports the same modules as every other side (numpy, numba, torch, compiled,
    models), takes its RSS as the baseline, builds the side (symgrad's model and optimizer, or a
    peer's; for a peer, the symgrad model its weights come from is built before the baseline
    and kept alive) and runs `steps` steps, then reads the peak RSS. On Linux the peak is reset to the current RSS at the baseline
    (/proc/self/clear_refs), so an import's transient peak does not hide the side; elsewhere it
    is getrusage's ru_maxrss before and after ("peak_reset": false), which can under-count. The
    growth is the side's weights, optimizer state, activations and workspace, plus what loading
    its code costs: Numba kernels loaded from the cache, or torch.compile's compilation. It is
    a process's high-water mark, not a per-tensor account; allocator caching counts in it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _CHILD.format(root=root, side=side, cfg=cfg.as_dict(), batch=batch, threads=threads, steps=steps)
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in r.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {r.returncode}: {tail}"}


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


def main(a, *, cfg=None, batch: int = BATCH, memory: bool = True) -> int:
    """`a`: the parsed options (threads, rounds, steps, profile, json, peer, load). cfg, batch
    and memory are for tests: a smaller model, a smaller batch, no peak-memory subprocesses."""
    peers = getattr(a, "peer", ("eager",))
    peers = parse_peers(peers) if isinstance(peers, str) else tuple(peers)
    n_load = getattr(a, "load", 0) or 0
    LAST_LOAD.clear()
    with busy_load(n_load) as procs:
        LAST_LOAD.extend(procs)
        res = _run(a, peers, n_load, cfg, batch, memory)
    _report(a, res)
    return 0


def _run(a, peers, n_load, cfg, batch, memory):
    from .gpt import GPTConfig
    from .profile import profile

    _set_threads(a.threads)
    reference = cfg is None
    cfg = GPTConfig() if cfg is None else cfg
    x, y = _batch(cfg, batch)
    model, ours = symgrad_side(cfg, x, y)
    sides = {}
    for p in peers:  # every peer copies the weights before symgrad's first step changes them
        sides[p] = torch_side(p, model, x, y)
    gemms = floor_gemms(model, (batch, cfg.block_size))
    flops = matmul_flops(gemms)
    from .threads import use
    floor_gemms_ = build_floor(gemms, cfg.dtype)
    peak_gemm = build_peak(cfg.dtype)

    def floor():  # always on all the threads asked for (a symgrad step may have chosen fewer)
        use(a.threads)
        floor_gemms_()

    def peak_call():
        use(a.threads)
        return peak_gemm()

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # warm-up: load / compile kernels; torch.compile compiles on its first calls
    first = {"symgrad": timed(ours)}
    ours()
    warmup = {}
    for p, (fn, _) in sides.items():
        t0 = time.perf_counter()
        first[p] = timed(fn)
        for _ in range(2 if p == "compile" else 1):
            fn()
        warmup[p] = time.perf_counter() - t0
    floor()
    peak_call()

    ms = {"symgrad": [], "floor": [], **{p: [] for p in peers}}
    gflops = []
    order = [("symgrad", ours)] + [(p, fn) for p, (fn, _) in sides.items()] + [("floor", floor)]
    for _ in range(a.rounds):
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            ms[name].append((time.perf_counter() - t0) / a.steps * 1000)
        gflops += [peak_call() for _ in range(PEAK_CALLS)]

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
           "symgrad_first_step_s": first["symgrad"],
           "peers": {},
           "floor_ms": fl, "floor_ms_per_round": ms["floor"], "floor_mfu": mfu(fl),
           "symgrad_over_floor": sg / fl, "floor_gemm": gemm_routine()[1],
           "floor_gemm_calls": sum(g[6] for g in gemms),
           "matmul_gflop_per_step": flops / 1e9,
           "sgemm_peak_gflops": peak, "sgemm_peak_shape": list(PEAK_SHAPE),
           "mfu_counts": "matmul FLOPs only (2*M*K*N per GEMM of floor_gemms), over the sgemm peak "
                         "measured in this run with the kernels' GEMM routine"}
    for p, (_, desc) in sides.items():
        t = statistics.median(ms[p])
        ratios = [tp / o for o, tp in zip(ms["symgrad"], ms[p])]
        med, lo, hi = _spread(ratios)
        res["peers"][p] = {"torch": desc, "ms_per_step": t, "tokens_per_s": tokens / t * 1000,
                           "speedup": med, "speedup_min": lo, "speedup_max": hi, "mfu": mfu(t),
                           "ms_per_round": ms[p], "first_step_s": first[p], "warmup_s": warmup[p]}
    tuner = model._last.tuner  # the training step's own choice of threads (models/threads.py)
    res["symgrad_threads"] = {"chosen": tuner.best, "ms_by_threads": {str(n): t * 1000 for n, t in tuner.time.items()}}
    p0 = res["peers"][peers[0]]
    res.update({"torch_ms_per_step": p0["ms_per_step"], "torch_tokens_per_s": p0["tokens_per_s"],
                "speedup": p0["speedup"], "speedup_min": p0["speedup_min"],
                "speedup_max": p0["speedup_max"], "torch": p0["torch"]})
    if a.profile:
        profile.reset()
        profile.enabled = True
        for _ in range(a.steps):
            ours()
        profile.enabled = False
        res["profile_ms_per_step"] = {k: s / a.steps * 1000 for k, s, _ in profile.table()}
    if memory:
        mem = {s: peak_memory(s, cfg, batch, a.threads) for s in ("symgrad",) + tuple(peers)}
        res["peak_mem"] = {"what": "peak-RSS growth of `steps` steps in a fresh process over its RSS after "
                                   "the same imports (peak reset there on Linux, else ru_maxrss); includes "
                                   "loading/compiling the side's code",
                           "steps": MEMORY_STEPS, **mem}
        res["symgrad_peak_mem_mib"] = mem["symgrad"].get("growth_mib")
        for p in peers:
            res["peers"][p]["peak_mem_mib"] = mem[p].get("growth_mib")
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
    mem = "peak_mem" in res
    line = (f"  {'symgrad':16s}{res['symgrad_ms_per_step']:9.1f} ms/step {res['symgrad_tokens_per_s']:9,.0f} tokens/s"
            f"  MFU {res['symgrad_mfu']:6.1%}")
    print(line + (_mem(res["symgrad_peak_mem_mib"]) if mem else ""))
    for p, r in res["peers"].items():
        line = (f"  {'torch ' + p:16s}{r['ms_per_step']:9.1f} ms/step {r['tokens_per_s']:9,.0f} tokens/s"
                f"  MFU {r['mfu']:6.1%}  speedup {r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})")
        print(line + (_mem(r["peak_mem_mib"]) if mem else ""))
    th = res["symgrad_threads"]
    print(f"  {'':16s}symgrad's step chose {th['chosen']} thread(s); recent ms by count: "
          + ", ".join(f"{n}: {v:.1f}" for n, v in sorted(th["ms_by_threads"].items())))
    print(f"  {'GEMM floor':16s}{res['floor_ms']:9.1f} ms/step {'':18s}  MFU {res['floor_mfu']:6.1%}"
          f"  symgrad/floor {res['symgrad_over_floor']:.2f}x  ({res['floor_gemm_calls']} GEMMs, {res['floor_gemm']})")
    print(f"  MFU counts matmul FLOPs only: {res['matmul_gflop_per_step']:.2f} GFLOP/step, over an sgemm peak of "
          f"{res['sgemm_peak_gflops']:.0f} GFLOP/s ({'x'.join(map(str, res['sgemm_peak_shape']))}, best call this run)")
    print(f"  speedup = torch ms / symgrad ms per round, median (min-max); peers: "
          + "; ".join(f"{p}: {r['torch']}" for p, r in res["peers"].items()))
    if "compile" in res["peers"]:
        c = res["peers"]["compile"]
        print(f"  torch.compile warm-up {c['warmup_s']:.1f} s (first step {c['first_step_s']:.1f} s), before the rounds")
    if mem:
        errs = [f"{s}: {v['error']}" for s, v in res["peak_mem"].items() if isinstance(v, dict) and "error" in v]
        print(f"  peak mem = peak-RSS growth of {res['peak_mem']['steps']} steps in a fresh process over the "
              f"same imports (includes loading the side's code)" + (f"; failed: {'; '.join(errs)}" if errs else ""))
    if res["load"]:
        print(f"  load average (1 min) at the end: {res.get('loadavg_1min', float('nan')):.2f} "
              f"on {res['cpu_count']} cores")
    for k, v in res.get("profile_ms_per_step", {}).items():
        print(f"    {k:28s} {v:8.2f} ms")
