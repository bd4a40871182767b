"""Compiling the kernels a printed step is about to call, ahead of its first call, in worker
processes: one per core.

Numba compiles a kernel on its first call, and one at a time: its compiler holds a lock for the
whole process. On a cold cache the reference GPT's first training step compiled 12 kernels one
after another, 20 s on one core while the other idled (measured 2026-12-07 on the 2-vCPU Xeon
VM). The calls a step makes are known before it runs: a dry run of the printed step (each kernel
replaced by a recorder, `models.step`) gives every kernel and its argument types. Here the ones
not yet in Numba's on-disk cache are compiled by worker processes, each compiling its share and
writing it to the cache (kernels are `njit(cache=True)`); this process then loads them, as a warm
start does.

All the signatures of one kernel go to one worker: Numba's cache file of a function is an index
plus numbered data files, and two processes saving into it at once could both take the same
data file, leaving an index entry that points at the other signature's machine code.

Nothing depends on the workers: a kernel a worker did not compile (it failed, was killed, could
not start, or found another build of symgrad than this process's) is compiled here afterwards,
with one `symgrad:` line. `SYMGRAD_COMPILE_JOBS=1` turns the workers off.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from numba.core.dispatcher import Dispatcher

from . import cache
from .threads import cores

MIN_MISSING = 3  # fewer kernels to compile than this: not worth starting a process for
MOST_WORKERS = 8  # past a few, each worker's start (~1 s) and shared callees outweigh its share


def jobs() -> int:
    """Worker processes to compile in: SYMGRAD_COMPILE_JOBS, else one per core this process may
    use (its CPU affinity), at most MOST_WORKERS; 1 means none."""
    env = os.environ.get("SYMGRAD_COMPILE_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"SYMGRAD_COMPILE_JOBS={env!r}: expected a whole number of processes") from None
    return min(cores(), MOST_WORKERS)


def is_cached(disp: Dispatcher, sig: tuple) -> bool:
    """Whether Numba's on-disk cache holds `disp` compiled for argument types `sig` (read from
    the function's index file, as Numba's first call reads it)."""
    if sig in disp.overloads:
        return True
    c = getattr(disp, "_cache", None)
    if c is None or not hasattr(c, "_cache_file"):
        return False  # not a cached kernel: nothing a worker could hand over
    try:
        key = c._index_key(sig, disp.targetctx.codegen())
        return key in c._cache_file._load_index()
    except Exception:  # an unreadable index reads as absent, as in SealedCacheFile
        return False


def missing(calls) -> list:
    """The (dispatcher, argument types) of `calls` that neither this process nor the disk cache
    holds, each once (only cached Numba kernels: a profiler's timing wrapper is passed over)."""
    out, seen = [], set()
    for disp, sig in calls:
        if not isinstance(disp, Dispatcher) or not hasattr(disp._cache, "_cache_file"):
            continue
        if (id(disp), sig) not in seen:
            seen.add((id(disp), sig))
            if not is_cached(disp, sig):
                out.append((disp, sig))
    return out


def _task(disp: Dispatcher, sigs: list) -> tuple:
    """What a worker needs to compile one kernel: its file, module name, function, the argument
    types of each signature."""
    mod = sys.modules[disp.py_func.__module__]
    return (mod.__file__, mod.__name__, disp.py_func.__name__, sigs)


def _cost(disp: Dispatcher) -> int:
    """A kernel's compile time, estimated by its bytecode's length (attention: the longest)."""
    return len(disp.py_func.__code__.co_code) + 200  # every compile has a fixed part


def _shares(todo: list, n: int) -> list:
    """todo split into at most n lists of about equal estimated cost, every signature of a kernel
    in the same list (the module docstring says why); longest first, each to the lightest list."""
    kernels: dict = {}
    for disp, sig in todo:
        kernels.setdefault(id(disp), (disp, []))[1].append(sig)
    shares = [[] for _ in range(n)]
    load = [0] * n
    for disp, sigs in sorted(kernels.values(), key=lambda ks: -_cost(ks[0]) * len(ks[1])):
        i = load.index(min(load))
        shares[i].append(_task(disp, sigs))
        load[i] += _cost(disp) * len(sigs)
    return [s for s in shares if s]


def _build() -> tuple:
    """What makes a worker's kernels this process's: the symgrad it imports (a worker started as
    `python -m` finds the installed one) and the GEMM backend of compiled.blas."""
    from . import blas
    return (str(Path(blas.__file__).resolve()), blas.CACHE_TAG)


def _start(share: list):
    """A worker process given its share, or None (and one line said) if it could not start."""
    try:
        p = subprocess.Popen([sys.executable, "-m", "symgrad.compiled.precompile"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as e:
        print(f"symgrad: a compile worker could not start ({e}); compiling its kernels here",
              file=sys.stderr)
        return None
    try:
        p.stdin.write(pickle.dumps((_build(), share)))
        p.stdin.close()
    except OSError:  # it died before reading its share: its exit status says why, below
        pass
    return p


def compile_ahead(calls, n: int | None = None) -> dict:
    """Compile the kernels of `calls` ([(dispatcher, argument types)]) that are not cached, in
    up to n worker processes (default `jobs()`), then load them into this process. Returns
    {"missing": kernels not cached before, "workers": processes started, "seconds": wall}."""
    t0 = time.perf_counter()
    todo = missing(calls)
    n = jobs() if n is None else n
    report = {"missing": len(todo), "workers": 0, "seconds": 0.0}
    if n < 2 or len(todo) < MIN_MISSING:
        return report
    shares = _shares(todo, n)
    below_a_bar = "\n" if sys.stderr.isatty() else ""  # a progress bar may hold the terminal's line
    print(f"{below_a_bar}symgrad: compiling {len(todo)} kernels in {len(shares)} processes (once: "
          f"the cache keeps them)", file=sys.stderr, flush=True)
    procs = []
    try:
        for share in shares:
            p = _start(share)
            if p is not None:
                procs.append(p)
        report["workers"] = len(procs)
        for p in procs:
            err = p.stderr.read()
            if p.wait() != 0:  # what this worker left is compiled below: say so, go on
                last = err.decode(errors="replace").strip().splitlines()[-1:] or ["(no message)"]
                print(f"symgrad: a compile worker failed ({last[0]}); compiling its kernels here",
                      file=sys.stderr)
    finally:  # interrupted (Ctrl-C): no worker outlives this process
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for disp, sig in todo:  # load what the workers wrote (compiles what they did not)
        disp.compile(sig)
    report["seconds"] = time.perf_counter() - t0
    return report


def _worker(stream) -> int:
    """A worker: compile each (file, module name, function, signatures) read from `stream`,
    writing Numba's cache beside the file; nothing if its symgrad build is not the parent's.
    Exits 1 naming the first failure, after trying every kernel."""
    build, share = pickle.load(stream)
    if _build() != build:
        print(f"this worker imports symgrad from {_build()[0]} ({_build()[1]}), its parent from "
              f"{build[0]} ({build[1]})", file=sys.stderr)
        return 1
    failed = []
    for path, name, func, sigs in share:
        try:
            kernel = getattr(cache.import_file(Path(path), name), func)
            for sig in sigs:
                kernel.compile(sig)
        except Exception as e:  # the others still compile; the parent compiles this one
            failed.append(f"{func}: {type(e).__name__}: {e}".splitlines()[0])
    if failed:
        print(f"{len(failed)} of {len(share)} kernels failed, the first {failed[0]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_worker(sys.stdin.buffer))
