"""The fuzzer's CLI: seeds until the budget is spent, each case in this process or its own
(`python -m tests.fuzz`, see tests/fuzz/__init__.py); the counts per class and every failing seed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .checker import Result, check
from .generator import generate


KINDS = ("ok", "refused", "crash", "disagree")


def check_isolated(seed: int, timeout: float) -> Result:
    """check(generate(seed)) in a fresh interpreter: a segfault or a hang is a crash, not the end."""
    cmd = [sys.executable, "-m", "tests.fuzz", "--one", "--seed", str(seed), "--json",
           "--timeout", str(timeout)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return Result(seed, "crash", f"subprocess: no answer after {timeout + 60:g} s",
                      seconds=time.perf_counter() - t0)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return Result(**json.loads(line))
    why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}"
    tail = (p.stderr.strip().splitlines() or [""])[-1]
    return Result(seed, "crash", f"subprocess: {why}: {tail}"[:300], seconds=time.perf_counter() - t0,
                  detail=p.stderr[-4000:])


def run(seeds, budget: float, isolate=False, timeout=120.0, progress=None) -> list[Result]:
    """Check seeds in order until the budget (seconds) is spent; returns the results."""
    out, t0 = [], time.perf_counter()
    for seed in seeds:
        if time.perf_counter() - t0 >= budget:
            break
        r = check_isolated(seed, timeout) if isolate else check(generate(seed), timeout)
        out.append(r)
        if progress:
            progress(r)
    return out


def summary(results, elapsed) -> str:
    counts = {k: sum(r.kind == k for r in results) for k in KINDS}
    times = np.array([r.seconds for r in results]) if results else np.zeros(1)
    seeds = f", seeds {results[0].seed}..{results[-1].seed}" if results else ""
    lines = ["  ".join(f"{k} {counts[k]}" for k in KINDS) +
             f"   ({len(results)} definitions in {elapsed:.0f} s, {60 * len(results) / max(elapsed, 1e-9):.1f}/min{seeds})",
             f"time per definition: median {np.median(times):.2f} s, p99 {np.percentile(times, 99):.2f} s"]
    for st in ("define", "compile", "forward", "backward", "differences", "torch"):
        ts = [r.stages[st] for r in results if st in r.stages]
        if ts:
            lines[-1] += f"; {st} {np.median(ts):.2f}"
    refusals = {}
    for r in results:
        if r.kind == "refused":
            refusals.setdefault(r.reason.split(":", 2)[-1].strip()[:120], []).append(r.seed)
    for why, seeds in sorted(refusals.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"refused  x{len(seeds)}  seeds {seeds[:5]}  {why}")
    for r in results:
        if r.kind in ("crash", "disagree"):
            lines.append(f"{r.kind:8s} seed {r.seed}  [{r.family}]  {r.reason}")
    if any(r.kind in ("crash", "disagree") for r in results):
        lines.append("reproduce one: python -m tests.fuzz --seed SEED --one")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=_package_doc().split("\n\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="seconds to run (default 60)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    p.add_argument("--one", action="store_true", help="check only --seed, print its source and verdict")
    p.add_argument("--isolate", action="store_true", help="each case in its own subprocess")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case (default 120)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --one's answer to --isolate
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time() * 1000) % 10 ** 9
    own_cache = None
    if not os.environ.get("SYMGRAD_CACHE_DIR"):
        own_cache = tempfile.mkdtemp(prefix="symgrad-fuzz-")
        os.environ["SYMGRAD_CACHE_DIR"] = own_cache
    try:
        if a.one:
            case = generate(seed)
            r = check(case, a.timeout)
            if a.json:
                print(json.dumps(r.as_dict()))
            else:
                print(case.source)
                print(f"sizes {case.sizes}" + (f", positive inputs {list(case.positive)}" if case.positive else ""))
                print(f"{r.kind}: {r.reason}" if r.reason else r.kind)
                print(f"{r.seconds:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items()) + ")")
                if r.detail:
                    print(r.detail)
            return 0 if r.kind in ("ok", "refused") else 1
        print(f"fuzz: seeds {seed}.., budget {a.budget:g} s{', isolated' if a.isolate else ''}, "
              f"kernel cache {os.environ['SYMGRAD_CACHE_DIR']}", flush=True)
        t0 = time.perf_counter()

        def progress(r):
            mark = {"ok": ".", "refused": "r", "crash": "C", "disagree": "D"}[r.kind]
            print(mark, end="", flush=True)

        results = run(range(seed, seed + 10 ** 9), a.budget, a.isolate, a.timeout, progress)
        print()
        print(summary(results, time.perf_counter() - t0))
        return 1 if any(r.kind in ("crash", "disagree") for r in results) else 0
    finally:
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)



def _package_doc() -> str:
    """The package's docstring (its first paragraph is the CLI's description)."""
    return sys.modules[__package__].__doc__
