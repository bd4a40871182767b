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
    calls = [c for s in step.steps for c in s.kernel_calls()]
    before = m.store.grad.copy()
    reports = []
    real = precompile.compile_ahead
    precompile.compile_ahead = lambda calls, n=None: reports.append(real(calls, n)) or reports[-1]
    logits, loss = m(x, y)
    m.backward()
    print(json.dumps({
        "dry_run_left_grads": bool((before == 0).all()),
        "kernels": len({(id(d), s) for d, s in calls}),
        "predicted": all(s in d.overloads for d, s in calls),
        "report": reports[0],
        "loss": float(loss),
    }))
""")


def _run(tmp_path, jobs):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(tmp_path), SYMGRAD_COMPILE_JOBS=str(jobs))
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_workers_compile_what_the_first_step_calls_and_a_second_process_finds_it_all_cached(tmp_path):
    cold = _run(tmp_path, 2)
    assert cold["predicted"], "the dry run named a kernel or argument types the step did not call"
    assert cold["dry_run_left_grads"]
    assert cold["kernels"] >= 8  # embedding, residual, layernorm, linear, attention, gelu, ce fwd/bwd
    assert cold["report"]["missing"] == cold["kernels"]
    assert cold["report"]["workers"] == 2
    warm = _run(tmp_path, 2)
    assert warm["report"] == {"missing": 0, "workers": 0, "seconds": 0.0}
    assert warm["loss"] == cold["loss"]


def test_one_job_compiles_in_the_first_call_as_before(tmp_path):
    got = _run(tmp_path, 1)
    assert got["predicted"]
    assert got["report"]["workers"] == 0 and got["report"]["missing"] == got["kernels"]


def test_a_failed_worker_leaves_the_compiling_to_the_first_call(tmp_path, capsys):
    from numba import types

    from symgrad.compiled import cache
    src = tmp_path / "kernel_k.py"
    src.write_text("from numba import njit\n\n@njit(cache=True)\ndef k(x):\n    return x + 1\n")
    k = cache.import_file(src, "symgrad_test_kernels.kernel_k").k
    src.unlink()  # the workers cannot import it: each fails
    sigs = [(types.float64,), (types.int64,), (types.float32,)]
    report = precompile.compile_ahead([(k, s) for s in sigs], n=2)
    assert report["missing"] == 3 and report["workers"] == 2
    assert capsys.readouterr().err.count("a compile worker failed") == 2
    assert all(s in k.overloads for s in sigs)  # compiled here instead
    assert k(1.5) == 2.5


def test_compile_jobs_must_be_a_whole_number(monkeypatch):
    monkeypatch.setenv("SYMGRAD_COMPILE_JOBS", "two")
    with pytest.raises(ValueError, match="SYMGRAD_COMPILE_JOBS='two'"):
        precompile.jobs()
    monkeypatch.setenv("SYMGRAD_COMPILE_JOBS", "3")
    assert precompile.jobs() == 3


def test_an_interrupted_compile_leaves_no_worker_running(tmp_path, monkeypatch):
    import subprocess as sp

    from numba import types

    from symgrad.compiled import cache
    src = tmp_path / "kernel_slow.py"
    src.write_text("from numba import njit\n\n@njit(cache=True)\ndef k(x):\n    return x + 1\n")
    k = cache.import_file(src, "symgrad_test_kernels.kernel_slow").k
    src.write_text("import time\ntime.sleep(120)\n")  # what the workers import: hangs
    started, real = [], sp.Popen

    def popen(*a, **kw):
        if started:  # the second worker cannot start (as Ctrl-C there would stop this)
            raise KeyboardInterrupt
        started.append(real(*a, **kw))
        return started[-1]
    monkeypatch.setattr(precompile.subprocess, "Popen", popen)
    sigs = [(types.float64,), (types.int64,), (types.float32,)]
    with pytest.raises(KeyboardInterrupt):
        precompile.compile_ahead([(k, s) for s in sigs], n=2)
    assert started and started[0].poll() is not None  # the first worker was stopped
