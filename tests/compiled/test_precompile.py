"""compiled.precompile: a printed step's dry run names exactly the kernels and argument types its
first call compiles, and worker processes compile those into Numba's cache, so the first call
only loads them; a worker that fails costs nothing but time."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from symgrad.compiled import precompile

# A fresh process with a fresh cache: a tiny GPT's first training step, sharded over 2 rows.
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from symgrad.compiled import precompile
    from symgrad.models import threads
    from symgrad.models.gpt import GPT, GPTConfig
    threads.set_most(2)
    m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dtype="float64"), seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))
    step = m.step_for((4, 8), loss=True)
    for s in step.steps:  # gradients a dry run must leave as they are
        s.grads[...] = rng.standard_normal(s.grads.shape)
    before = [s.grads.copy() for s in step.steps]
    calls = [c for s in step.steps for c in s.kernel_calls()]
    left = all((s.grads == b).all() for s, b in zip(step.steps, before))
    reports = []
    real = precompile.compile_ahead
    precompile.compile_ahead = lambda calls, n=None: reports.append(real(calls, n)) or reports[-1]
    logits, loss = m(x, y)
    m.backward()
    kernels = {id(d): d for d, _ in calls}
    print(json.dumps({
        "dry_run_left_grads": bool(left),
        "kernels": len({(id(d), s) for d, s in calls}),
        "exact": {(id(d), s) for d, s in calls} == {(k, s) for k, d in kernels.items() for s in d.overloads},
        "cache_hits": sum(sum(d.stats.cache_hits.values()) for d in kernels.values()),
        "cache_misses": sum(sum(d.stats.cache_misses.values()) for d in kernels.values()),
        "report": reports[0] if reports else None,
        "loss": float(loss),
    }))
""")


def _run(tmp_path, jobs):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(tmp_path), SYMGRAD_COMPILE_JOBS=str(jobs))
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "compile worker" not in run.stderr, run.stderr[-3000:]  # none failed, none refused
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_workers_compile_exactly_what_the_first_step_calls_and_the_next_process_loads_it(tmp_path):
    cold = _run(tmp_path, 2)  # an empty cache: the workers compile, this process loads
    assert cold["dry_run_left_grads"]
    assert cold["exact"], "the dry run's kernels and argument types differ from what the step called"
    assert cold["kernels"] >= 8  # embedding, residual, layernorm, linear, attention, gelu, ce fwd/bwd
    assert cold["report"]["missing"] == cold["kernels"] and cold["report"]["workers"] == 2
    assert cold["cache_misses"] == 0 and cold["cache_hits"] == cold["kernels"]  # loaded, not compiled
    warm = _run(tmp_path, 2)
    assert warm["report"] == {"missing": 0, "workers": 0, "seconds": 0.0}
    assert warm["cache_misses"] == 0 and warm["cache_hits"] == warm["kernels"] and warm["exact"]
    assert warm["loss"] == cold["loss"]
    alone = _run(tmp_path, 1)  # no workers: no dry run in the step; it loads what it calls
    assert alone["report"] is None and alone["exact"] and alone["dry_run_left_grads"]
    assert alone["cache_misses"] == 0 and alone["loss"] == cold["loss"]


TWO_KERNELS = "from numba import njit\n\n@njit(cache=True)\ndef k(x):\n    return x + 1\n\n" \
              "@njit(cache=True)\ndef h(x):\n    return x * 2\n"


def _two_kernels(tmp_path, stem):
    """Two cached kernels, k (two signatures) and h (one): two workers' shares, since the
    signatures of one kernel go to one worker."""
    from numba import types

    from symgrad.compiled import cache
    src = tmp_path / f"{stem}.py"
    src.write_text(TWO_KERNELS)
    mod = cache.import_file(src, f"symgrad_test_kernels.{stem}")
    calls = [(mod.k, (types.float64,)), (mod.k, (types.int64,)), (mod.h, (types.float64,))]
    return src, mod, calls


def test_one_kernels_signatures_go_to_one_worker():
    """Numba's cache file of a function takes one writer at a time (module docstring)."""
    from numba import types

    from symgrad.compiled import blas
    todo = [(blas._c_copy, (types.float64,)), (blas._storage, (types.int64,)), (blas._c_copy, (types.float32,))]
    shares = precompile._shares(todo, 2)
    assert len(shares) == 2
    assert sorted(len(task[3]) for share in shares for task in share) == [1, 2]


def test_a_failed_worker_leaves_the_compiling_to_this_process(tmp_path, capsys):
    src, mod, calls = _two_kernels(tmp_path, "kernel_gone")
    src.unlink()  # the workers cannot import it: each fails
    report = precompile.compile_ahead(calls, n=2)
    assert report["missing"] == 3 and report["workers"] == 2
    err = capsys.readouterr().err
    assert err.count("a compile worker failed") == 2 and "FileNotFoundError" in err
    assert all(s in d.overloads for d, s in calls)  # compiled here instead
    assert mod.k(1.5) == 2.5 and mod.h(1.5) == 3.0


def test_a_worker_importing_another_symgrad_build_compiles_nothing(tmp_path, capsys, monkeypatch):
    _, mod, calls = _two_kernels(tmp_path, "kernel_other")
    monkeypatch.setattr(precompile, "_build", lambda: ("/elsewhere/blas.py", "openblas.0"))
    report = precompile.compile_ahead(calls, n=2)  # the parent's build is not the workers'
    assert report["workers"] == 2
    err = capsys.readouterr().err
    assert err.count("a compile worker failed") == 2 and "its parent from /elsewhere/blas.py" in err
    for kernel in (mod.k, mod.h):  # nothing came from a worker: this process compiled them
        assert sum(kernel.stats.cache_hits.values()) == 0 and sum(kernel.stats.cache_misses.values()) >= 1


def test_compile_jobs_must_be_a_whole_number(monkeypatch):
    monkeypatch.setenv("SYMGRAD_COMPILE_JOBS", "two")
    with pytest.raises(ValueError, match="SYMGRAD_COMPILE_JOBS='two'"):
        precompile.jobs()
    monkeypatch.setenv("SYMGRAD_COMPILE_JOBS", "3")
    assert precompile.jobs() == 3


def test_an_interrupted_compile_leaves_no_worker_running(tmp_path, monkeypatch):
    import subprocess as sp

    src, mod, calls = _two_kernels(tmp_path, "kernel_slow")
    src.write_text("import time\ntime.sleep(120)\n")  # what the workers import: hangs
    started, real = [], sp.Popen

    def popen(*a, **kw):
        if started:  # the second worker cannot start (as Ctrl-C there would stop this)
            raise KeyboardInterrupt
        started.append(real(*a, **kw))
        return started[-1]
    monkeypatch.setattr(precompile.subprocess, "Popen", popen)
    with pytest.raises(KeyboardInterrupt):
        precompile.compile_ahead(calls, n=2)
    assert started and started[0].poll() is not None  # the first worker was stopped
